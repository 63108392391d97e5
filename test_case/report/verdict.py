"""The acceptance verdict: one PASS or FAIL for a sweep, with every reason.

Given the sweep's manifest (`test_case.acceptance.manifest`, found beside the logs), the runs,
the jobs that did not train and the preflight reports the report has read, and each job's Slurm
state where ``scontrol`` can still tell (`slurm_state`). The sweep FAILs for each of:

* the preflight: no result (its job never ran, or died: its Slurm state is quoted), or a failed
  check (the node, the check, measured against expected, and what to do);
* each training job of the manifest: no log (never ran: its Slurm state; a job Slurm cancelled
  because the preflight failed says so), no train metrics (the error line), a run that did not
  complete, a restart during the sweep (its cause), a straggler rank (its node), throughput more
  than the manifest's ``tolerance`` below the published baseline (`compare_to_baseline`; a run
  without a published row of its configuration is not judged on it, and the verdict's ``notes`` say
  "throughput not compared" with why), scaling efficiency below the manifest's ``scaling_threshold``.

Scaling efficiency is the report's one figure (`test_case.report.compare.scaling_groups`): the job's
point in the series of the sweep's kind (weak: one batch per device; strong: one global batch) of
like runs (model, GPU, precision, sequence length, processes per node, scheduler, sweep), the
fastest run at each size standing for it, against the smallest size. A job that is no point of such
a series (the only size of its kind, or a faster job at its size) has none and is not judged on it.

Everything else it reports without judging: tokens/s per device, MFU, goodput, the fabric's peak
bus bandwidth against expectation.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from test_case.acceptance.manifest import SweepJob, SweepManifest
from test_case.preflight.records import PreflightReport
from test_case.published_runs import BaselineRow
from test_case.report.compare import OWN_SOURCE, compare_to_baseline, own_rows_for, scaling_groups, scaling_point
from test_case.report.records import JobWithoutTraining, RunSummary, ScalingGroup, Verdict, VerdictJob

SlurmState = Callable[[str], str | None]


def slurm_state(job_id: str) -> str | None:
    """``JobState`` and ``Reason`` of a job as ``scontrol`` tells (``CANCELLED (DependencyNeverSatisfied)``),
    or None where there is no scontrol or Slurm no longer knows the job."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", out.stdout)) if out.returncode == 0 else {}
    if "JobState" not in fields:
        return None
    reason = fields.get("Reason", "None")
    return fields["JobState"] + (f" ({reason})" if reason not in ("None", "") else "")


def slurm_restarts(job_id: str) -> int | None:
    """``Restarts`` of a job as ``scontrol`` tells (the requeues Slurm counted), or None where it cannot."""
    if shutil.which("scontrol") is None:
        return None
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    restarts = dict(re.findall(r"(\w+)=(\S*)", out.stdout)).get("Restarts", "") if out.returncode == 0 else ""
    return int(restarts) if restarts.isdigit() else None


def _describe(job: SweepJob) -> str:
    return f"job {job.job_id} ({job.model} on {job.nodes} node(s))"


def _preflight_reasons(
    manifest: SweepManifest, preflights: Sequence[PreflightReport], state: SlurmState
) -> tuple[list[str], dict[str, str], list[dict[str, object]]]:
    """Reasons, per-node status and the fabric's figures of the sweep's preflight."""
    if manifest.preflight_job_id is None:
        return [], {}, []
    found = [p for p in preflights if p.job_id == manifest.preflight_job_id]
    if not found:
        where = state(manifest.preflight_job_id)
        return [f"preflight job {manifest.preflight_job_id} wrote no result (Slurm: {where or 'unknown'})"], {}, []
    pf = found[-1]
    reasons = [
        f"preflight: {f.node}: {f.check}: measured {f.measured}, expected {f.expected}: {f.action}" for f in pf.failures
    ]
    nodes: dict[str, str] = {host: node.status for host, node in pf.nodes.items()}
    fabric: list[dict[str, object]] = [
        {
            "collective": b.collective,
            "scope": b.scope,
            "peak_busbw_gbps": round(b.peak_busbw_gbps, 3),
            "expected_busbw_gbps": b.expected_busbw_gbps,
        }
        for b in pf.bandwidth
        if b.scope == "all nodes" or b.expected_busbw_gbps is not None
    ]
    return reasons, nodes, fabric


def judge_sweep(
    manifest: SweepManifest,
    runs: Sequence[RunSummary],
    jobs: Sequence[JobWithoutTraining],
    preflights: Sequence[PreflightReport],
    baseline: list[BaselineRow],
    state: SlurmState = slurm_state,
    slurm_restarts: Callable[[str], int | None] = slurm_restarts,
    scaling: Sequence[ScalingGroup] | None = None,
    own_rows: list[BaselineRow] | None = None,
) -> Verdict:
    """The verdict (module docstring); ``scaling`` the report's scaling groups of ``runs`` (made here
    when not given); ``own_rows`` the cluster's own baseline (`test_case.history.baseline`), judged
    besides the published table when given."""
    scaling = scaling_groups(list(runs)) if scaling is None else scaling
    reasons, nodes, fabric = _preflight_reasons(manifest, preflights, state)
    preflight_failed = bool(reasons)
    by_job = {r.job_id: r for r in runs}
    untrained = {j.job_id: j for j in jobs}
    out: list[VerdictJob] = []
    notes: list[str] = []
    for job in sorted(manifest.train_jobs, key=lambda j: (j.model or "", j.nodes)):
        run = by_job.get(job.job_id)
        record = VerdictJob(job.job_id, job.model, job.nodes, "never ran" if run is None else run.status)
        out.append(record)
        # what Slurm shows, for every job (None where it no longer knows it), and the restarts it counted
        record.slurm_state = where = state(job.job_id)
        logged = run.restarts if run is not None else untrained[job.job_id].restarts if job.job_id in untrained else 0
        record.restarts = max(logged, slurm_restarts(job.job_id) or 0)
        if run is None:
            if job.job_id in untrained:
                failure = untrained[job.job_id].failure or "no error line in the log"
                record.status = "did not train"
                restarted = f" (after {record.restarts} restart(s))" if record.restarts else ""
                record.reasons.append(f"{_describe(job)} did not train{restarted}: {failure}")
            else:
                why = " because the preflight failed" if preflight_failed and where and "Dependency" in where else ""
                record.reasons.append(f"{_describe(job)} never ran{why} (Slurm: {where or 'unknown'})")
            continue
        record.tokens_per_sec_per_device, record.mfu = run.tokens_per_sec_per_device, run.mfu
        record.goodput = run.goodput.goodput if run.goodput else None
        record.stragglers = [s.node for s in run.stragglers]
        if run.status != "completed":
            record.reasons.append(f"{_describe(job)} {run.status}: {run.failure or '; '.join(run.warnings)}")
            continue
        if record.restarts:
            causes = [e.cause for e in run.restart_events if e.kind == "restart"]
            record.reasons.append(
                f"{_describe(job)} restarted {record.restarts} time(s): {'; '.join(causes) or 'requeued'}"
            )
        for s in run.stragglers:
            record.reasons.append(
                f"{_describe(job)}: straggler rank {s.rank} on {s.node}: compute {s.ratio_to_median:.2f}x the "
                f"median rank (threshold {run.straggler_threshold:.2f}x): check {s.node} (0.preflight.sbatch), "
                f"or leave it out (sbatch --exclude={s.node})"
            )
        verdict = compare_to_baseline(run, baseline, manifest.tolerance)
        record.baseline, record.baseline_ratio = verdict.status, verdict.ratio
        if verdict.status == "no-match":
            notes.append(f"{_describe(job)}: throughput not compared: {verdict.reason}")
        if verdict.status == "below":
            record.reasons.append(
                f"{_describe(job)}: {100 * (verdict.ratio or 0):.1f}% of the published "
                f"{verdict.published_tokens_per_sec_per_gpu or 0:,.0f} tokens/s/GPU, "
                f"more than {100 * manifest.tolerance:.0f}% below"
            )
        if own_rows is not None:
            own = compare_to_baseline(run, own_rows_for(run, own_rows), manifest.tolerance, OWN_SOURCE)
            record.own_baseline, record.own_baseline_ratio = own.status, own.ratio
            if own.status == "no-match":
                notes.append(f"{_describe(job)}: not compared with the cluster's own past: {own.reason}")
            if own.status == "below":
                record.reasons.append(
                    f"{_describe(job)}: {100 * (own.ratio or 0):.1f}% of the cluster's own "
                    f"{own.published_tokens_per_sec_per_gpu or 0:,.0f} tokens/s/GPU (the median of its last passing "
                    f"runs of this configuration), more than {100 * manifest.tolerance:.0f}% below"
                )
        if (point := scaling_point(run, scaling, manifest.scaling)) is not None:
            record.scaling_efficiency = round(point.efficiency, 4)
            if record.scaling_efficiency < manifest.scaling_threshold:
                record.reasons.append(
                    f"{_describe(job)}: scaling efficiency {record.scaling_efficiency:.2f} against its smallest node "
                    f"count, below {manifest.scaling_threshold:.2f}"
                )
    for record in out:
        reasons += record.reasons
        for node in record.stragglers:
            nodes[node] = "straggler"
    return Verdict(manifest.sweep_id, "FAIL" if reasons else "PASS", reasons, out, nodes, fabric, notes)
