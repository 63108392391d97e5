"""Every section of the report, each written once from the typed `Report`: what the console prints
and what report.md holds (`test_case.report.layout` formats both).

`sections` gives them in report.md's order; `CONSOLE_ORDER` is the console's (the verdict last,
the notes before the preflight). Nothing here computes a figure: every number is a field of a
record (`test_case.report.records`) shown by `test_case.report.cells`.
"""

from __future__ import annotations

from test_case.report.cells import COLUMNS, DETAIL_COLUMNS, Column, in_log, num, pct, scaling_title
from test_case.report.drains import suggested_drains
from test_case.report.figures import definitions
from test_case.report.layout import Block, Bullets, Code, Section, Table
from test_case.report.metrics import SHARE_ERRORS, describe_stream_shares
from test_case.report.records import GOODPUT_PARTS, Report, RunSummary

TITLE = "MPT benchmark report"
CONSOLE_ORDER = (
    *("runs", "setup", "scaling", "baseline", "jobs", "restarts", "rank timing", "goodput"),
    *("eval by domain", "streams", "notes", "preflight", "nodes", "verdict"),
)


def _table(columns: list[Column], runs: list[RunSummary]) -> Table:
    return Table(tuple(name for name, _ in columns), tuple(tuple(cell(r) for _, cell in columns) for r in runs))


def runs_table(report: Report) -> Section:
    """The main table, one row per run (`cells.COLUMNS`)."""
    table = _table(COLUMNS, report.runs)
    return Section("runs", console=(table,) if report.runs else (), body=(table,) if report.runs else ())


def details(report: Report) -> Section:
    """report.md's second table (`cells.DETAIL_COLUMNS`)."""
    return Section("details", "Details", body=(_table(DETAIL_COLUMNS, report.runs),) if report.runs else ())


def setup(report: Report) -> Section:
    """Per run, what ran: precision, microbatch, activation checkpointing, FSDP, attention (its kernel,
    ALiBi, flash-attn's version); "not in the log" for what the log does not say."""

    def said(value: object, shown: str | None = None) -> str:
        return "not in the log" if value is None else (shown if shown is not None else str(value))

    lines = []
    for r in report.runs:
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
        network = f"; NCCL network {r.nccl_network}" if r.nccl_network else ""
        lines.append(
            f"setup {r.name}: precision {said(r.precision)}, microbatch {said(r.microbatch)}, activation "
            f"checkpointing {'on' if r.activation_checkpointing else 'off'}, FSDP {fsdp}, attention "
            f"{said(r.attn_impl)}{alibi}{flash}" + (f"; {', '.join(stack)}" if stack else "") + network
        )
    return Section("setup", "Setup", tuple(lines))


def scaling(report: Report) -> Section:
    """Each scaling group: its points' tokens/s per device and efficiency."""
    lines = []
    for group in report.scaling:
        lines.append(f"scaling {scaling_title(group)}:")
        for p in group.points:
            lines.append(
                f"  {p.world_size:>5} devices  {p.tokens_per_sec_per_device:>12,.0f} tokens/s/dev  "
                f"efficiency {100 * p.efficiency:5.1f}%  ({p.run})"
            )
    return Section("scaling", "Scaling", tuple(lines), (Code(tuple(lines)),) if lines else ())


def baseline(report: Report) -> Section:
    """Per run compared with --baseline: its verdict against the published row; with --own-baseline,
    against the cluster's own past."""
    lines = []
    for r in report.runs:
        if (b := r.baseline) is None:
            continue
        if b.status in ("no-match", "not-compared"):
            lines.append(f"baseline {r.name}: {b.status} ({b.reason})")
        else:
            lines.append(
                f"baseline {r.name}: {b.status.upper()} {100 * (b.ratio or 0):.1f}% of "
                f"{b.published_tokens_per_sec_per_gpu or 0:,.0f} tokens/s/GPU published for {b.gpu} x{b.n_gpus} "
                f"(MFU {b.published_mfu_pct or 0:.1f}%), tolerance {100 * (b.tolerance or 0):.0f}%"
            )
    for r in report.runs:
        if (b := r.own_baseline) is None:
            continue
        if b.status in ("no-match", "not-compared"):
            lines.append(f"own baseline {r.name}: {b.status} ({b.reason})")
        else:
            lines.append(
                f"own baseline {r.name}: {b.status.upper()} {100 * (b.ratio or 0):.1f}% of "
                f"{b.published_tokens_per_sec_per_gpu or 0:,.0f} tokens/s/GPU, the median of the cluster's last "
                f"passing runs of this configuration ({b.gpu} x{b.n_gpus}, batch {b.global_batch_size}), "
                f"tolerance {100 * (b.tolerance or 0):.0f}%"
            )
    return Section("baseline", "Baseline", tuple(lines))


def jobs(report: Report) -> Section:
    """Training jobs whose logs hold no train metrics, with the line that says why."""
    found = report.jobs_without_training
    lines = tuple(
        f"did not train: job {j.job_id or '(no id)'} ({j.log_file}): "
        + (
            f"{j.failure} ({in_log(j.failure_line_number)})"
            if j.failure_line_number
            else j.failure or "no error line in the log"
        )
        for j in found
    )
    rows = tuple(
        (
            j.job_id or "-",
            j.log_file,
            f"`{j.failure or 'no error line in the log'}`"
            + (f" ({in_log(j.failure_line_number)})" if j.failure_line_number else ""),
        )
        for j in found
    )
    return Section("jobs", "Jobs that did not train", lines, (Table(("job", "log", "why"), rows),) if found else ())


def restarts(report: Report) -> Section:
    """Per run, each restart and why (``restart`` events), then the stop when the job gave up."""
    lines = []
    for r in report.runs:
        for e in r.restart_events:
            if e.kind == "restart":
                lines.append(f"restart {r.name}: start {e.start} at {e.time}: {e.cause}")
            elif e.action == "stop":
                where = f" on {e.node}" if e.node else ""
                lines.append(
                    f"stopped {r.name}: start {e.start} failed{where} ({e.failures_in_a_row} in a row without "
                    f"a new checkpoint, MAX_RESTARTS={e.max_restarts}): {e.cause}"
                )
    return Section("restarts", "Restarts", tuple(lines))


def rank_timing(report: Report) -> Section:
    """Per run with rank timing: the slowest node and each straggler rank; report.md a table per node."""
    lines: list[str] = []
    body: list[str | Table] = []
    for r in (r for r in report.runs if r.node_compute):
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
        header = ("node", "ranks", "median compute s/batch", "ratio to median rank", "straggler")
        rows = tuple(
            (
                n.node,
                str(n.ranks),
                f"{n.median_compute_s:.4f}",
                f"{n.ratio_to_median:.2f}",
                ", ".join(f"rank {s.rank} ({s.ratio_to_median:.2f}x)" for s in r.stragglers if s.node == n.node) or "-",
            )
            for n in r.node_compute
        )
        body += [f"{r.name}: threshold {r.straggler_threshold:.2f}x the median rank", Table(header, rows)]
    return Section("rank timing", "Rank timing", tuple(lines), tuple(body))


def goodput(report: Report) -> Section:
    """Per run with rank timing: where its wall time went (`records.GOODPUT_PARTS`)."""
    lines, rows = [], []
    for r in report.runs:
        if (g := r.goodput) is None:
            continue
        shown = ", ".join(f"{name} {num(getattr(g, key), '.1f')}" for name, key in GOODPUT_PARTS if getattr(g, key))
        lost = f", {g.lost_progress_batches} batch(es) trained twice" if g.lost_progress_batches else ""
        lines.append(
            f"goodput {r.name}: {pct(g.goodput)} of {num(g.total_s, '.1f')} s over {g.starts} start(s) "
            f"({shown} s{lost})"
        )
        parts = tuple(num(getattr(g, key), ".1f") for _, key in GOODPUT_PARTS)
        rows.append(
            (r.name, str(g.starts), num(g.total_s, ".1f"), *parts, str(g.lost_progress_batches), pct(g.goodput))
        )
    header = ("run", "starts", "total s", *(f"{name} s" for name, _ in GOODPUT_PARTS), "lost batches", "goodput")
    return Section("goodput", "Goodput", tuple(lines), (Table(header, tuple(rows)),) if rows else ())


def eval_by_domain(report: Report) -> Section:
    """Per run and labelled eval loader (a mixture's streams): its last eval loss."""
    runs = [r for r in report.runs if r.eval_loss_by_domain]
    lines = tuple(
        f"eval loss by domain {r.name}: "
        + ", ".join(f"{d} {num(v, '.4f')}" for d, v in sorted(r.eval_loss_by_domain.items()))
        for r in runs
    )
    rows = tuple((r.name, d, num(v, ".4f")) for r in runs for d, v in sorted(r.eval_loss_by_domain.items()))
    header = ("run", "domain (eval loader label)", "eval loss")
    return Section("eval by domain", "Eval loss by domain", lines, (Table(header, rows),) if rows else ())


def streams(report: Report) -> Section:
    """Per run and stream of a mixture: the share drawn against the share planned."""
    runs = [r for r in report.runs if r.stream_shares]
    lines = tuple(
        f"drawn by stream {r.name}: {describe_stream_shares(r.stream_shares)}: "
        f"{'within' if r.stream_shares_within_error else 'NOT within'} {SHARE_ERRORS} sampling errors"
        for r in runs
    )
    header = ("run", "stream", "samples", "drawn", "planned", "sampling error", f"within {SHARE_ERRORS} errors")
    rows = tuple(
        (
            r.name,
            s.name,
            f"{s.drawn_samples:,}",
            f"{100 * s.drawn:.1f}%",
            f"{100 * s.planned:.1f}%",
            f"{100 * s.sampling_error:.1f}%",
            "yes" if s.within_error else "no",
        )
        for r in runs
        for s in r.stream_shares
    )
    intro = (
        "Samples the train loader read from each stream (all ranks, the last start), against the share the "
        "dataset planned; the error is the binomial standard error of the drawn share."
    )
    return Section("streams", "Drawn by stream", lines, (intro, Table(header, rows)) if rows else ())


def preflight(report: Report) -> Section:
    """Per preflight job: its verdict; report.md one row per node (what failed: measured against expected),
    then each failure with its finding class, action and evidence, each slow link, and each finding of
    class monitor (``health.<reader>[<part>]``: shown, failing nothing)."""
    lines: list[str] = []
    body: list[Block] = []
    for pf in report.preflight:
        bad = sorted({f.node for f in pf.failures})
        links = [f"{link.a} - {link.b}" for link in pf.slow_links]
        lines.append(
            f"preflight job {pf.job_id}: {pf.status.upper()}, {len(pf.nodes)} node(s)"
            + (f"; failed: {', '.join(bad)}" if bad else "")
            + (f"; slow link(s): {', '.join(links)}" if links else "")
        )
        wall = f", {pf.wall_s:.0f} s" if pf.wall_s is not None else ""
        rows = []
        for host, node in pf.nodes.items():
            failed = [
                f"{name}: {c.measured} (expected {c.expected})" for name, c in node.checks.items() if c.status == "fail"
            ]
            matmul, pairs = node.checks.get("matmul"), node.checks.get("fabric.pairs")
            measured = (str(matmul.measured) if matmul else "-", str(pairs.measured) if pairs else "-")
            rows.append((host, node.status, *measured, "; ".join(failed) or "-"))
        header = ("node", "status", "matmul TFLOP/s", "pairs busbw GB/s", "failed checks (measured, expected)")
        body += [
            f"Job {pf.job_id}: **{pf.status}** ({len(pf.nodes)} nodes{wall})",
            Table(header, tuple(rows)),
            Bullets(
                tuple(
                    f"{f.node}, {f.check}: "
                    + (f"[{f.finding_class}] " if f.finding_class else "")
                    + f.action
                    + (f" (evidence: `{f.evidence}`)" if f.evidence else "")
                    for f in pf.failures
                )
                + tuple(f"link {link.a} - {link.b} ({link.how}): {link.action}" for link in pf.slow_links)
                + tuple(  # findings that fail nothing but are watched: class monitor, with what they rest on
                    f"{host}, {name}: [monitor] {c.detail}" + (f" (evidence: `{c.evidence}`)" if c.evidence else "")
                    for host, node in pf.nodes.items()
                    for name, c in node.checks.items()
                    if c.finding_class == "monitor" and "[" in name
                )
            ),
        ]
    return Section("preflight", "Preflight", tuple(lines), tuple(body))


def verdict(report: Report) -> Section:
    """The sweep's verdict: the status and every reason; report.md its nodes, fabric and one row per job."""
    if (v := report.verdict) is None:
        return Section("verdict", "Acceptance verdict", body=())
    done = sum(j.status == "completed" for j in v.jobs)
    lines = [f"acceptance sweep {v.sweep_id}: {v.status} ({done}/{len(v.jobs)} training jobs completed)"]
    lines += [f"  FAIL: {reason}" for reason in v.reasons] + [f"  note: {note}" for note in v.notes]
    body: list[str | Table | Bullets] = [f"Sweep {v.sweep_id}: **{v.status}**"]
    body += [Bullets(tuple(v.reasons))] if v.reasons else []
    body += [Bullets(tuple(f"note: {note}" for note in v.notes))] if v.notes else []
    if v.nodes:
        body.append(Table(("node", "status (preflight, or straggler)"), tuple(v.nodes.items())))
    if v.fabric:
        cells = ("collective", "scope", "peak_busbw_gbps")
        rows = tuple((*(str(f[k]) for k in cells), str(f["expected_busbw_gbps"] or "-")) for f in v.fabric)
        body.append(Table(("collective", "scope", "peak busbw GB/s", "expected GB/s"), rows))
    header = ("job", "model", "nodes", "status", "tokens/s/dev", "MFU", "baseline", "scaling eff.", "stragglers")
    jobs = tuple(
        (
            j.job_id,
            j.model or "-",
            str(j.nodes),
            j.status + (f" ({j.slurm_state})" if j.slurm_state else ""),
            num(j.tokens_per_sec_per_device, ",.0f"),
            pct(j.mfu),
            j.baseline or "-",
            num(j.scaling_efficiency, ".2f"),
            ", ".join(j.stragglers) or "-",
            pct(j.goodput),
            str(j.restarts),
        )
        for j in v.jobs
    )
    body.append(Table((*header, "goodput", "restarts"), jobs))
    return Section("verdict", "Acceptance verdict", tuple(lines), tuple(body))


def nodes(report: Report) -> Section:
    """Nodes a failed start, a straggler or the preflight named, each with why and the command that would
    drain it (`test_case.report.drains`; run by hand, never by the report)."""
    lines: list[str] = []
    for d in suggested_drains(report):
        lines += [f"node {d.node}: {reason}" for reason in d.reasons]
        lines.append(f"  to take it out: {d.command}")
    return Section("nodes", "Nodes to look at", tuple(lines), (Code(tuple(lines)),) if lines else ())


def notes(report: Report) -> Section:
    """Why MFU is missing, and every run's warnings."""
    lines = []
    for r in report.runs:
        if r.mfu is None and r.mfu_note:
            lines.append(f"{r.name}: {r.mfu_note}")
        lines += [f"warning: {r.name}: {w}" for w in r.warnings]
    return Section("notes", "Notes and warnings", tuple(lines))


def figures(report: Report) -> Section:
    """How each figure is computed (`test_case.report.figures`)."""
    return Section("figures", "How each figure is computed", body=(definitions().removesuffix("\n"),))


def plots(report: Report) -> Section:
    """The PNGs beside report.md."""
    images = "\n".join(f"![{p.stem}]({p.name})" for p in report.plots)
    return Section("plots", "Plots", body=(images,) if report.plots else ())


def sections(report: Report) -> list[Section]:
    """Every section, in report.md's order."""
    builders = (verdict, runs_table, details, setup, scaling, baseline, jobs, restarts, rank_timing, goodput)
    return [build(report) for build in (*builders, eval_by_domain, streams, preflight, nodes, figures, plots, notes)]
