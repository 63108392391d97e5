"""Comparisons across runs: scaling efficiency over node counts, and a gate against published baselines.

* Scaling: completed runs of the same model, GPU type (or cpu), precision, sequence length,
  processes per node and scheduler (Slurm or the script run without it) at different world sizes.
  ``efficiency = tokens_per_sec_per_device / tokens_per_sec_per_device of the smallest run``
  (1.0 is perfect linear scaling). The one definition of the figure: the acceptance verdict reads a
  job's from here (`scaling_point`).
* Baseline: the row of a CSV in the format of ``reference/llm-foundry-mpt-benchmarks.csv``
  (`test_case.published_runs` reads it: every row of llm-foundry's published MPT table, with the
  configuration each ran) of the same GPU type, model, number of GPUs and sequence length, and of
  the same configuration: precision, microbatch, activation checkpointing, FSDP sharding and
  mixed precision ("MP Mode"). A run of another configuration is not compared ("no comparable
  row", naming what differs): recomputing the forward alone costs about a third of the throughput.
  ``ratio = tokens_per_sec_per_device / published_tokens_per_sec_per_gpu`` (that row's
  ``tokens_per_sec_per_gpu``); a run passes when ``ratio >= 1 - tolerance``. A run that did not
  complete is not compared (``not-compared``).
  A CSV without the configuration columns (an older one of yours) is compared on the first five.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from test_case.gpu_peaks import BASELINE_NAME
from test_case.published_runs import BaselineRow, setup_text, shown
from test_case.report.records import BaselineVerdict, RunSummary, ScalingGroup, ScalingPoint


def run_setup(run: RunSummary) -> dict[str, object]:
    """The run's configuration by the names of `BaselineRow.setup` (None: not in its log)."""
    return {
        "precision": run.precision,
        "microbatch": run.microbatch,
        "activation checkpointing": run.activation_checkpointing,
        "FSDP sharding": run.fsdp_sharding,
        "FSDP mixed precision": run.fsdp_mixed_precision,
    }


def differences(row: BaselineRow, run: RunSummary, source: str = "published") -> list[str]:
    """What of the row's stated configuration the run did otherwise (a setting the row does not
    state is not compared; one the run's log does not state differs)."""
    ours = run_setup(run)
    return [
        f"{name} {shown(value)} {source}, {shown(ours[name])} here"
        for name, value in row.setup().items()
        if value is not None and value != ours[name]
    ]


def compare_to_baseline(
    run: RunSummary, rows: list[BaselineRow], tolerance: float, source: str = "published"
) -> BaselineVerdict:
    """The comparable row and the verdict for one run (``status``: ok, below, no-match, not-compared).
    ``source`` names where the rows come from in the reasons (the cluster's own: `test_case.history.baseline`)."""
    gpu = BASELINE_NAME.get(run.device_type or "", run.device_type or "")
    candidates = [
        r
        for r in rows
        if r.gpu == gpu
        and r.model == run.model
        and r.n_gpus == run.world_size
        and (run.max_seq_len is None or r.seq_len == run.max_seq_len)
    ]
    if run.status != "completed":
        return BaselineVerdict("not-compared", reason=f"the run {run.status}: only completed runs are compared")
    if not candidates or run.tokens_per_sec_per_device is None:
        why = "no throughput" if run.tokens_per_sec_per_device is None else "no row"
        return BaselineVerdict(
            "no-match",
            reason=f"{why} for gpu={gpu or '?'} model={run.model} n_gpus={run.world_size} seq_len={run.max_seq_len}",
        )
    comparable = [r for r in candidates if not differences(r, run)]
    if not comparable:
        nearest = min(candidates, key=lambda r: len(differences(r, run)))
        return BaselineVerdict(
            "no-match",
            reason=f"no comparable row: the {source} {run.model} on {nearest.n_gpus} {nearest.gpu} ran "
            f"{setup_text(nearest.setup())}; this run differs: {'; '.join(differences(nearest, run, source))}",
        )
    row = comparable[0]
    ratio = run.tokens_per_sec_per_device / row.tokens_per_sec_per_gpu
    return BaselineVerdict(
        "ok" if ratio >= 1 - tolerance else "below",
        gpu=row.gpu,
        n_gpus=row.n_gpus,
        global_batch_size=row.global_batch_size,
        published_tokens_per_sec_per_gpu=row.tokens_per_sec_per_gpu,
        published_mfu_pct=row.mfu_pct,
        ratio=ratio,
        tolerance=tolerance,
    )


OWN_SOURCE = "cluster's own"  # how reasons name the rows of `test_case.history.baseline`


def own_rows_for(run: RunSummary, rows: list[BaselineRow]) -> list[BaselineRow]:
    """The cluster's own rows of the run's global batch (its own past ran every batch it was given, the
    published table one per row, so the batch is matched here besides the gate's columns), the one that
    states most of the run's configuration first: a row of older runs whose logs did not state a setting
    matches any run, and must not stand in for the run's own configuration."""
    ours = run_setup(run)
    same = [r for r in rows if r.global_batch_size == run.global_batch_size]
    return sorted(same, key=lambda r: -sum(v is not None and v == ours[k] for k, v in r.setup().items()))


# (model, gpu, precision, seq, processes per node, scheduler, sweep, what is held: "global" or
# "per device", its value)
GroupKey = tuple[str | None, str | None, str | None, int | None, int | None, str | None, str | None, str, float | None]


def scaling_groups(runs: list[RunSummary]) -> list[ScalingGroup]:
    """Series of completed runs of one model, gpu, precision, seq, processes per node, scheduler and
    sweep at two or more world sizes that hold one batch figure: the global batch (strong scaling)
    or the batch per device (weak scaling); at each size the run with the highest tokens/s per
    device stands for it. Only like is compared with like: a run of the script without Slurm (one
    node, the whole machine) is never a point of a Slurm series, nor a run of 8 GPUs per node one of
    4, nor two sweeps' runs one series, nor a run of another batch (a 2-node run of 16 samples per
    device and a 1-node run of 8 are neither). Two runs at different world sizes cannot share both
    figures, so no pair is in two series."""
    groups: dict[GroupKey, dict[int, RunSummary]] = {}
    for run in runs:
        if run.status != "completed" or not (run.tokens_per_sec_per_device and run.world_size):
            continue
        like = (
            run.model,
            run.device_type,
            run.precision,
            run.max_seq_len,
            run.procs_per_node,
            run.scheduler,
            run.sweep_id,
        )
        per_device = run.global_batch_size / run.world_size if run.global_batch_size else None
        held: list[tuple[str, float | None]] = (
            [("global", float(run.global_batch_size or 0)), ("per device", per_device)] if per_device else [("", None)]
        )
        for kind, value in held:
            by_size = groups.setdefault((*like, kind, value), {})
            best = by_size.get(run.world_size)
            if best is None or run.tokens_per_sec_per_device > (best.tokens_per_sec_per_device or 0):
                by_size[run.world_size] = run
    out = []
    for (model, gpu, precision, seq, procs, scheduler, sweep, kind, value), by_size in groups.items():
        if len(by_size) < 2:
            continue
        sizes = sorted(by_size)
        base = by_size[sizes[0]].tokens_per_sec_per_device or 1.0
        points = tuple(
            ScalingPoint(
                world_size=n,
                nodes=by_size[n].nodes,
                run=by_size[n].name,
                tokens_per_sec_per_device=by_size[n].tokens_per_sec_per_device or 0.0,
                efficiency=(by_size[n].tokens_per_sec_per_device or 0.0) / base,
            )
            for n in sizes
        )
        out.append(
            ScalingGroup(
                model,
                gpu,
                precision,
                seq,
                procs,
                scheduler,
                points,
                global_batch_size=int(value) if kind == "global" and value else None,
                batch_per_device=value if kind == "per device" else None,
                sweep_id=sweep,
            )
        )
    return out


def scaling_point(
    run: RunSummary, scaling: Sequence[ScalingGroup], kind: Literal["weak", "strong"]
) -> ScalingPoint | None:
    """The run's point in the series of ``kind`` (``strong``: one global batch; ``weak``: one batch per
    device) that holds it, or None where it is none: no other world size of its kind, or a faster run
    of its kind at its size stands for that size."""
    for group in scaling:
        if (group.global_batch_size if kind == "strong" else group.batch_per_device) is None:
            continue
        for point in group.points:
            if point.run == run.name:
                return point
    return None
