"""Rendering of a report: console table, report.md, report.csv, report.json.

Nothing here computes a figure; every number comes from `test_case.report.metrics` (per run),
`test_case.report.compare` (across runs) or a preflight's own JSON (`test_case.preflight.records`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from test_case.preflight.records import PreflightReport
from test_case.report.figures import definitions
from test_case.report.metrics import SHARE_ERRORS, describe_stream_shares
from test_case.report.records import GOODPUT_PARTS, JobWithoutTraining, RunSummary, ScalingGroup, Verdict

SCHEMA_VERSION = 2


SIGNIFICANT_DIGITS = 3  # a number too small for its column's decimals keeps this many (never 0.0 for 0.0118)
DECIMALS = re.compile(r"\.(\d+)f$")


def _num(value: float | int | None, fmt: str) -> str:
    """``value`` in ``fmt`` (e.g. ``",.1f"``), or ``-`` for None; a non-zero float that ``fmt`` would
    show with fewer than `SIGNIFICANT_DIGITS` significant digits gets as many decimals as they need."""
    if value is None:
        return "-"
    if isinstance(value, float) and value and math.isfinite(value) and fmt.endswith("f"):
        m = DECIMALS.search(fmt)
        decimals = int(m.group(1)) if m else 6
        if abs(value) < 10 ** (SIGNIFICANT_DIGITS - 1 - decimals):
            places = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
            return format(value, f"{',' if ',' in fmt else ''}.{places}f")
    return format(value, fmt)


def _pct(value: float | None) -> str:
    return "-" if value is None else _num(100 * value, ".1f") + "%"


def _in_log(line: int) -> str:
    """Where a failure line is: ``failure_line`` is a line number of the log."""
    return f"line {line} of the log"


def _final_eval_loss(r: RunSummary) -> str:
    """The unlabelled eval loader's last loss; a mixture's labelled loaders are listed by domain."""
    if r.final_eval_loss is None and r.eval_loss_by_domain:
        return "by domain"
    return _num(r.final_eval_loss, ".4f")


Column = tuple[str, Callable[[RunSummary], str]]
COLUMNS: list[Column] = [
    ("run", lambda r: r.name),
    ("status", lambda r: r.status),
    ("model", lambda r: r.model or "-"),
    ("gpu", lambda r: r.gpu or "-"),
    ("nodes", lambda r: _num(r.nodes, "d")),
    ("world", lambda r: _num(r.world_size, "d")),
    ("batches", lambda r: "-" if r.last_batch is None else f"{r.last_batch}/{r.max_duration}"),
    ("final train loss", lambda r: _num(r.final_train_loss, ".4f")),
    ("final eval loss", _final_eval_loss),
    ("tokens/s", lambda r: _num(r.tokens_per_sec, ",.0f")),
    ("tokens/s/dev", lambda r: _num(r.tokens_per_sec_per_device, ",.0f")),
    ("step s", lambda r: _num(r.step_time_median_s, ".3f")),
    ("TFLOP/s/dev", lambda r: _num(r.tflops_per_device, ".1f")),
    ("MFU", lambda r: _pct(r.mfu)),
    ("MFU logged", lambda r: _pct(r.mfu_logged)),
]
DETAIL_COLUMNS: list[Column] = [
    ("job", lambda r: r.job_id or "-"),
    ("restarts", lambda r: str(r.restarts)),
    ("params", lambda r: _num(r.n_params, ",d")),
    ("precision", lambda r: r.precision or "-"),
    ("seq model/data", lambda r: f"{_num(r.max_seq_len, 'd')}/{_num(r.dataset_sample_tokens, 'd')}"),
    ("data tokenizer", lambda r: r.dataset_tokenizer or "-"),
    ("samples/s", lambda r: _num(r.samples_per_sec, ",.1f")),
    (
        "step p10-p90 s",
        lambda r: "-" if r.step_time_p10_s is None else f"{r.step_time_p10_s:.3f}-{r.step_time_p90_s:.3f}",
    ),
    ("HFU", lambda r: _pct(r.hfu)),
    ("loss first/min", lambda r: f"{_num(r.loss_first, '.3f')}/{_num(r.loss_min, '.3f')}"),
    ("peak mem GB", lambda r: _num(r.peak_mem_reserved_gb, ".1f")),
    ("window", lambda r: "-" if not r.window_batches else f"{r.window_batches[0]}-{r.window_batches[1]}"),
    ("hours to 1T tokens", lambda r: _num(r.hours_to_1t_tokens, ",.1f")),
    ("GPU-hours to 1T tokens", lambda r: _num(r.gpu_hours_to_1t_tokens, ",.0f")),
]


def _table(columns: list[Column], runs: list[RunSummary], markdown: bool = False) -> str:
    rows = [[name for name, _ in columns]] + [[cell(r) for _, cell in columns] for r in runs]
    if markdown:
        head = "| " + " | ".join(rows[0]) + " |"
        rule = "|" + "|".join("---" for _ in columns) + "|"
        return "\n".join([head, rule] + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    out = io.StringIO()
    for n, row in enumerate(rows):
        cells = (c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        out.write("  ".join(cells).rstrip() + "\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    return out.getvalue()


def _scaling_lines(scaling: list[ScalingGroup]) -> list[str]:
    lines = []
    for group in scaling:
        lines.append(f"scaling {scaling_title(group)}:")
        for p in group.points:
            lines.append(
                f"  {p.world_size:>5} devices  {p.tokens_per_sec_per_device:>12,.0f} tokens/s/dev  "
                f"efficiency {100 * p.efficiency:5.1f}%  ({p.run})"
            )
    return lines


def scaling_title(group: ScalingGroup) -> str:
    """What a scaling group compares, in words: never ``?`` or ``None``."""
    where = group.gpu or "an unknown GPU"
    facts = [
        f"{group.procs_per_node} per node" if group.procs_per_node else None,
        group.precision,
        f"seq {group.max_seq_len}" if group.max_seq_len else None,
        {"slurm": "Slurm jobs", "local": "runs without Slurm"}.get(group.scheduler or ""),
        f"global batch {group.global_batch_size}: strong scaling" if group.global_batch_size else None,
        f"{group.batch_per_device:g} samples per device: weak scaling" if group.batch_per_device else None,
        f"sweep {group.sweep_id}" if group.sweep_id else None,
    ]
    return f"{group.model or 'unknown model'} on {where} ({', '.join(f for f in facts if f)})"


def _jobs_lines(jobs: list[JobWithoutTraining]) -> list[str]:
    return [
        f"did not train: job {j.job_id or '(no id)'} ({j.log_file}): "
        + (f"{j.failure} ({_in_log(j.failure_line)})" if j.failure_line else j.failure or "no error line in the log")
        for j in jobs
    ]


def _baseline_lines(runs: list[RunSummary]) -> list[str]:
    lines = []
    for r in runs:
        b = r.baseline
        if b is None:
            continue
        if b.status in ("no-match", "not-compared"):
            lines.append(f"baseline {r.name}: {b.status} ({b.reason})")
        else:
            lines.append(
                f"baseline {r.name}: {b.status.upper()} {100 * (b.ratio or 0):.1f}% of "
                f"{b.tokens_per_sec_per_gpu or 0:,.0f} tokens/s/GPU published for {b.gpu} x{b.n_gpus} "
                f"(MFU {b.mfu_pct or 0:.1f}%), tolerance {100 * (b.tolerance or 0):.0f}%"
            )
    return lines


def _setup_lines(runs: list[RunSummary]) -> list[str]:
    """Per run, what ran: precision, microbatch, activation checkpointing, FSDP, attention (its kernel,
    ALiBi, flash-attn's version); "not in the log" for what the log does not say."""

    def said(value: object, shown: str | None = None) -> str:
        return "not in the log" if value is None else (shown if shown is not None else str(value))

    lines = []
    for r in runs:
        fsdp = (
            f"{said(r.fsdp_sharding)} / {said(r.fsdp_mixed_precision)}"
            if r.fsdp_sharding or r.fsdp_mixed_precision
            else "none"
        )
        alibi = "" if r.alibi is None else (" with ALiBi" if r.alibi else " without ALiBi")
        flash = f", flash-attn {r.flash_attn}" if r.flash_attn else ""
        stack = [
            f"{name} {value}" for name, value in (("driver", r.driver), ("CUDA", r.cuda), ("NCCL", r.nccl)) if value
        ]
        lines.append(
            f"setup {r.name}: precision {said(r.precision)}, microbatch {said(r.microbatch)}, activation "
            f"checkpointing {'on' if r.activation_checkpointing else 'off'}, FSDP {fsdp}, attention "
            f"{said(r.attn_impl)}{alibi}{flash}" + (f"; {', '.join(stack)}" if stack else "")
        )
    return lines


def _restart_lines(runs: list[RunSummary]) -> list[str]:
    """Per run, each restart and why (``restart`` events), then the stop when the job gave up."""
    lines = []
    for r in runs:
        for e in r.restart_events:
            if e.kind == "restart":
                lines.append(f"restart {r.name}: start {e.start} at {e.time}: {e.cause}")
            elif e.action == "stop":
                where = f" on {e.node}" if e.node else ""
                lines.append(
                    f"stopped {r.name}: start {e.start} failed{where} ({e.failures_in_a_row} in a row without "
                    f"a new checkpoint, MAX_RESTARTS={e.max_restarts}): {e.cause}"
                )
    return lines


def _straggler_lines(runs: list[RunSummary]) -> list[str]:
    """Per run with rank timing: the slowest node, and each straggler rank."""
    lines = []
    for r in runs:
        if not r.node_compute:
            continue
        slowest = r.node_compute[0]
        lines.append(
            f"rank timing {r.name}: slowest node {slowest.node}, compute {slowest.median_compute_s:.4f} s/batch, "
            f"{slowest.ratio_to_median:.2f}x the median rank; "
            + (f"{len(r.stragglers)} straggler rank(s)" if r.stragglers else "no straggler")
            + f" (threshold {r.straggler_threshold:.2f}x)"
        )
        lines += [
            f"straggler {r.name}: rank {s.rank} on {s.node}: {s.median_compute_s:.4f} s/batch, "
            f"{s.ratio_to_median:.2f}x the median rank"
            for s in r.stragglers
        ]
    return lines


def _goodput_lines(runs: list[RunSummary]) -> list[str]:
    lines = []
    for r in runs:
        if (g := r.goodput) is None:
            continue
        parts = ", ".join(f"{name} {_num(getattr(g, key), '.1f')}" for name, key in GOODPUT_PARTS if getattr(g, key))
        lost = f", {g.lost_progress_batches} batch(es) trained twice" if g.lost_progress_batches else ""
        lines.append(
            f"goodput {r.name}: {_pct(g.goodput)} of {_num(g.total_s, '.1f')} s over {g.starts} start(s) "
            f"({parts} s{lost})"
        )
    return lines


def _domain_eval_lines(runs: list[RunSummary]) -> list[str]:
    return [
        f"eval loss by domain {r.name}: "
        + ", ".join(f"{d} {_num(v, '.4f')}" for d, v in sorted(r.eval_loss_by_domain.items()))
        for r in runs
        if r.eval_loss_by_domain
    ]


def _stream_share_lines(runs: list[RunSummary]) -> list[str]:
    return [
        f"drawn by stream {r.name}: {describe_stream_shares(r.stream_shares)}: "
        f"{'within' if r.stream_shares_within_error else 'NOT within'} {SHARE_ERRORS} sampling errors"
        for r in runs
        if r.stream_shares
    ]


def _stream_share_markdown(runs: list[RunSummary]) -> list[str]:
    """One row per run and stream of a mixture: the share drawn against the share planned."""
    rows = [(r.name, s) for r in runs for s in r.stream_shares]
    if not rows:
        return []
    parts = [
        "## Drawn by stream",
        "",
        "Samples the train loader read from each stream (all ranks, the last start), against the share the "
        "dataset planned; the error is the binomial standard error of the drawn share.",
        "",
        f"| run | stream | samples | drawn | planned | sampling error | within {SHARE_ERRORS} errors |",
        "|---|---|---|---|---|---|---|",
    ]
    parts += [
        f"| {name} | {s.name} | {s.drawn_samples:,} | {100 * s.drawn:.1f}% | {100 * s.planned:.1f}% | "
        f"{100 * s.sampling_error:.1f}% | {'yes' if s.within_error else 'no'} |"
        for name, s in rows
    ]
    return [*parts, ""]


def _domain_eval_markdown(runs: list[RunSummary]) -> list[str]:
    """One row per run and labelled eval loader (a mixture's streams): its last eval loss."""
    rows = [(r.name, d, v) for r in runs for d, v in sorted(r.eval_loss_by_domain.items())]
    if not rows:
        return []
    parts = ["## Eval loss by domain", "", "| run | domain (eval loader label) | eval loss |", "|---|---|---|"]
    parts += [f"| {name} | {domain} | {_num(value, '.4f')} |" for name, domain, value in rows]
    return [*parts, ""]


def _timing_markdown(runs: list[RunSummary]) -> list[str]:
    """Per node compute time and stragglers; the goodput table, one row per run."""
    parts: list[str] = []
    timed = [r for r in runs if r.node_compute]
    if timed:
        parts += ["## Rank timing", ""]
        for r in timed:
            parts += [f"{r.name}: threshold {r.straggler_threshold:.2f}x the median rank", ""]
            parts += [
                "| node | ranks | median compute s/batch | ratio to median rank | straggler |",
                "|---|---|---|---|---|",
            ]
            for n in r.node_compute:
                flagged = ", ".join(
                    f"rank {s.rank} ({s.ratio_to_median:.2f}x)" for s in r.stragglers if s.node == n.node
                )
                parts.append(
                    f"| {n.node} | {n.ranks} | {n.median_compute_s:.4f} | {n.ratio_to_median:.2f} | {flagged or '-'} |"
                )
            parts.append("")
    measured = [r for r in runs if r.goodput is not None]
    if measured:
        head = " | ".join(f"{name} s" for name, _ in GOODPUT_PARTS)
        parts += ["## Goodput", "", f"| run | starts | total s | {head} | lost batches | goodput |"]
        parts.append("|---" * (len(GOODPUT_PARTS) + 5) + "|")
        for r in measured:
            g = r.goodput
            assert g is not None
            cells = " | ".join(_num(getattr(g, key), ".1f") for _, key in GOODPUT_PARTS)
            parts.append(
                f"| {r.name} | {g.starts} | {_num(g.total_s, '.1f')} | {cells} | {g.lost_progress_batches} "
                f"| {_pct(g.goodput)} |"
            )
        parts.append("")
    return parts


def _verdict_lines(verdict: Verdict | None) -> list[str]:
    """The sweep's verdict: the status, then every reason."""
    if verdict is None:
        return []
    jobs = len(verdict.jobs)
    done = sum(j.status == "completed" for j in verdict.jobs)
    lines = [f"acceptance sweep {verdict.sweep_id}: {verdict.status} ({done}/{jobs} training jobs completed)"]
    return lines + [f"  FAIL: {reason}" for reason in verdict.reasons] + [f"  note: {note}" for note in verdict.notes]


def _verdict_markdown(verdict: Verdict | None) -> list[str]:
    """The verdict section: status, reasons, nodes, fabric, one row per training job."""
    if verdict is None:
        return []
    parts = ["## Acceptance verdict", "", f"Sweep {verdict.sweep_id}: **{verdict.status}**", ""]
    parts += [f"- {reason}" for reason in verdict.reasons] + ([""] if verdict.reasons else [])
    parts += [f"- note: {note}" for note in verdict.notes] + ([""] if verdict.notes else [])
    if verdict.nodes:
        parts += ["| node | status (preflight, or straggler) |", "|---|---|"]
        parts += [*[f"| {n} | {s} |" for n, s in verdict.nodes.items()], ""]
    if verdict.fabric:
        parts += ["| collective | scope | peak busbw GB/s | expected GB/s |", "|---|---|---|---|"]
        for f in verdict.fabric:
            parts.append(
                f"| {f['collective']} | {f['scope']} | {f['peak_busbw_gbps']} | {f['expected_busbw_gbps'] or '-'} |"
            )
        parts.append("")
    parts += [
        "| job | model | nodes | status | tokens/s/dev | MFU | baseline | scaling eff. | stragglers | goodput "
        "| restarts |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for j in verdict.jobs:
        status = j.status + (f" ({j.slurm_state})" if j.slurm_state else "")
        parts.append(
            f"| {j.job_id} | {j.model or '-'} | {j.nodes} | {status} | {_num(j.tokens_per_sec_per_device, ',.0f')} | "
            f"{_pct(j.mfu)} | {j.baseline or '-'} | {_num(j.scaling_efficiency, '.2f')} | "
            f"{', '.join(j.stragglers) or '-'} | {_pct(j.goodput)} | {j.restarts} |"
        )
    return [*parts, ""]


def _notes(runs: list[RunSummary]) -> list[str]:
    notes = []
    for r in runs:
        if r.mfu is None and r.mfu_note:
            notes.append(f"{r.name}: {r.mfu_note}")
        notes += [f"warning: {r.name}: {w}" for w in r.warnings]
    return notes


def format_table(
    runs: list[RunSummary],
    scaling: list[ScalingGroup],
    jobs: list[JobWithoutTraining],
    preflights: Sequence[PreflightReport] = (),
    verdict: Verdict | None = None,
) -> str:
    """The console report: main table, scaling, baseline verdicts, jobs that did not train, notes,
    preflight verdicts, the acceptance verdict."""
    parts = [_table(COLUMNS, runs)] if runs else []
    extra = _setup_lines(runs) + _scaling_lines(scaling) + _baseline_lines(runs) + _jobs_lines(jobs)
    extra += _restart_lines(runs)
    extra += (
        _straggler_lines(runs)
        + _goodput_lines(runs)
        + _domain_eval_lines(runs)
        + _stream_share_lines(runs)
        + _notes(runs)
    )
    extra += _preflight_console(preflights) + _verdict_lines(verdict)
    return "".join(parts) + "".join(line + "\n" for line in extra)


def _preflight_console(preflights: Sequence[PreflightReport]) -> list[str]:
    lines = []
    for pf in preflights:
        bad = sorted({f.node for f in pf.failures})
        lines.append(
            f"preflight job {pf.job_id}: {pf.status.upper()}, {len(pf.nodes)} node(s)"
            + (f"; failed: {', '.join(bad)}" if bad else "")
        )
    return lines


def _preflight_markdown(preflights: Sequence[PreflightReport]) -> list[str]:
    """Per preflight job: one row per node (status, what failed: measured against expected)."""
    parts = ["## Preflight", ""]
    for pf in preflights:
        wall = f", {pf.wall_s:.0f} s" if pf.wall_s is not None else ""
        parts += [f"Job {pf.job_id}: **{pf.status}** ({len(pf.nodes)} nodes{wall})", ""]
        parts += ["| node | status | matmul TFLOP/s | pairs busbw GB/s | failed checks (measured, expected) |"]
        parts += ["|---|---|---|---|---|"]
        for host, node in pf.nodes.items():
            failed = [
                f"{name}: {c.measured} (expected {c.expected})" for name, c in node.checks.items() if c.status == "fail"
            ]
            matmul, pairs = node.checks.get("matmul"), node.checks.get("fabric.pairs")
            parts.append(
                f"| {host} | {node.status} | {matmul.measured if matmul else '-'} | {pairs.measured if pairs else '-'} "
                f"| {'; '.join(failed) or '-'} |"
            )
        parts.append("")
        for f in pf.failures:
            parts.append(f"- {f.node}, {f.check}: {f.action}")
        parts.append("")
    return parts


def format_markdown(
    runs: list[RunSummary],
    scaling: list[ScalingGroup],
    jobs: list[JobWithoutTraining],
    plots: list[Path],
    preflights: Sequence[PreflightReport] = (),
    verdict: Verdict | None = None,
) -> str:
    """report.md: the acceptance verdict, both tables, comparisons, the definition of every figure,
    plots, warnings."""
    parts = ["# MPT benchmark report", "", *_verdict_markdown(verdict)]
    if runs:
        parts += [_table(COLUMNS, runs, markdown=True), "## Details", "", _table(DETAIL_COLUMNS, runs, markdown=True)]
    if runs:
        parts += ["## Setup", "", *[f"- {line}" for line in _setup_lines(runs)], ""]
    if scaling:
        parts += ["## Scaling", "", "```", *_scaling_lines(scaling), "```", ""]
    if any(r.baseline for r in runs):
        parts += ["## Baseline", "", *[f"- {line}" for line in _baseline_lines(runs)], ""]
    if jobs:
        parts += ["## Jobs that did not train", "", "| job | log | why |", "|---|---|---|"]
        for j in jobs:
            why = j.failure or "no error line in the log"
            where = f" ({_in_log(j.failure_line)})" if j.failure_line else ""
            parts.append(f"| {j.job_id or '-'} | {j.log_file} | `{why}`{where} |")
        parts.append("")
    if restarts := _restart_lines(runs):
        parts += ["## Restarts", "", *[f"- {line}" for line in restarts], ""]
    parts += _timing_markdown(runs)
    parts += _domain_eval_markdown(runs)
    parts += _stream_share_markdown(runs)
    if preflights:
        parts += _preflight_markdown(preflights)
    parts += ["## How each figure is computed", "", definitions()]
    if plots:
        parts += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    notes = _notes(runs)
    if notes:
        parts += ["## Notes and warnings", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(parts)


# report.csv's columns after the first ones (every scalar field of a run, in report.json's order): new
# columns are appended, never inserted or renamed, so that scripts reading the CSV keep working
CSV_APPENDED = (  # columns added since, at the end: a script that reads the CSV by position keeps working
    "final_eval_loss",
    "stream_shares_within_error",
    "sweep_id",
    "nodelist",
    "log_ends_at",
    "eval_data_overlap",
)
STREAM_SHARE_COLUMNS = ("drawn_samples", "drawn", "planned", "sampling_error", "within_error")


def csv_row(run: RunSummary) -> dict[str, Any]:
    """A run's report.csv row: its scalar report.json fields by name; ``goodput`` the goodput (a fraction)
    and ``goodput.<part>`` its parts; ``eval_loss_by_domain.<label>``; ``stream_shares.<stream>.<field>``
    (`STREAM_SHARE_COLUMNS`): a nested report.json field is the column named by its path."""
    record = run.to_dict()
    row = {k: v for k, v in record.items() if not isinstance(v, list | dict) and k not in ("baseline", "goodput")}
    row["goodput"] = None if run.goodput is None else run.goodput.goodput
    if run.goodput is not None:
        row |= {f"goodput.{k}": v for k, v in run.goodput.to_dict().items() if k != "goodput"}
    row |= {f"eval_loss_by_domain.{label}": v for label, v in sorted(run.eval_loss_by_domain.items())}
    for share in record["stream_shares"]:
        row |= {f"stream_shares.{share['name']}.{k}": share[k] for k in STREAM_SHARE_COLUMNS}
    return row


def format_csv(runs: list[RunSummary]) -> str:
    """report.csv: one row per run (`csv_row`); the columns of every run, the first ones in the order of
    report.json, then `CSV_APPENDED`, then the nested fields in the order first met."""
    rows = [csv_row(r) for r in runs]
    seen = dict.fromkeys(k for row in rows for k in row)
    first = [k for k in seen if k not in CSV_APPENDED and "." not in k]
    fields = first + [k for k in CSV_APPENDED if k in seen] + [k for k in seen if "." in k]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def json_safe(value: Any) -> Any:
    """Non-finite floats become null (JSON has no nan/inf; ``has_nan`` records them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def report_document(
    runs: list[RunSummary],
    scaling: list[ScalingGroup],
    inputs: list[str],
    empty_files: list[str],
    jobs: list[JobWithoutTraining],
    preflights: Sequence[PreflightReport] = (),
    verdict: Verdict | None = None,
) -> dict[str, Any]:
    """report.json's content (schema: docs/report.md, "report.json")."""
    return json_safe(
        {
            "schema_version": SCHEMA_VERSION,
            "inputs": inputs,
            "files_without_runs": empty_files,
            "jobs_without_training": [j.to_dict() for j in jobs],
            "runs": [r.to_dict() for r in runs],
            "scaling": [g.to_dict() for g in scaling],
            "preflight": [asdict(pf) for pf in preflights],
            "verdict": verdict.to_dict() if verdict is not None else None,
        }
    )


def write_reports(
    out_dir: Path,
    runs: list[RunSummary],
    scaling: list[ScalingGroup],
    jobs: list[JobWithoutTraining],
    document: dict[str, Any],
    plots: list[Path],
    preflights: Sequence[PreflightReport] = (),
    verdict: Verdict | None = None,
) -> list[Path]:
    """Write report.md, report.csv and report.json into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.md": format_markdown(runs, scaling, jobs, plots, preflights, verdict),
        "report.csv": format_csv(runs),
        "report.json": json.dumps(document, indent=2, allow_nan=False, default=str) + "\n",
    }
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
