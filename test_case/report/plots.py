"""PNG plots of a report: loss and throughput against batch per run, scaling per model, where each
run's wall time went (goodput), and the bus bandwidth of a preflight's collectives against message size."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from test_case.preflight.records import PreflightReport
from test_case.report.cells import scaling_title
from test_case.report.records import GOODPUT_PARTS, RunSummary, ScalingGroup


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]


def plot_run(run: RunSummary, out_dir: Path) -> Path:
    """``<run>.png``: train (and eval) loss, and tokens/s per device, against batch."""
    fig, (ax_loss, ax_tps) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps, loss = run.series.get("loss", ([], []))
    if len(steps):
        ax_loss.plot(steps, loss, label="train loss", lw=1)
    for name, (steps, evals) in run.series.items():
        if len(steps) and (name == "eval_loss" or name.startswith("eval_loss/")):
            label = name.partition("/")[2]  # a labelled eval loader: a mixture's stream
            ax_loss.plot(steps, evals, "o", label=f"eval loss ({label})" if label else "eval loss")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    steps, tps = run.series.get("tokens_per_sec_per_device", ([], []))
    if len(steps):
        ax_tps.plot(steps, tps, lw=1)
    if run.window_batches:
        ax_tps.axvspan(run.window_batches[0], run.window_batches[1], alpha=0.15, label="steady-state window")
        ax_tps.legend(loc="lower right")
    ax_tps.set_ylabel("tokens/s per device")
    ax_tps.set_xlabel("batch")
    title = f"{run.name} ({run.model or 'unknown model'}, world size {run.world_size or 'unknown'})"
    if run.status != "completed":
        where = f" at batch {run.last_batch}/{run.max_duration}" if run.last_batch is not None else ""
        title += f": {run.status.upper()}{where}"
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / f"{_safe(run.name)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_goodput(runs: list[RunSummary], out_dir: Path) -> Path | None:
    """``goodput.png``: one stacked bar per run with goodput, its wall time in the parts of
    `test_case.report.goodput`; None when no run has one."""
    measured = [r for r in runs if r.goodput is not None]
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(9, 2.2 + 0.5 * len(measured)))
    names = [r.name for r in measured]
    left = [0.0] * len(measured)
    for label, key in GOODPUT_PARTS:
        widths = [float(getattr(r.goodput, key)) for r in measured]
        ax.barh(names, widths, left=left, label=label)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, r in enumerate(measured):
        assert r.goodput is not None
        share = r.goodput.goodput
        ax.text(left[i], i, f" {100 * share:.0f}%" if share is not None else "", va="center")
    ax.set_xlabel("seconds of the job's wall time")
    ax.set_title("goodput: where each run's wall time went")
    ax.invert_yaxis()
    ax.legend(loc="center left", bbox_to_anchor=(1.08, 0.5), fontsize=8)
    fig.tight_layout()
    path = out_dir / "goodput.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def scaling_file_name(group: ScalingGroup, detail: int = 0) -> str:
    """``scaling-<model>-<gpu>[-<processes per node>pn][-local].png``; with ``detail`` 1 the series'
    batch is added (``-gbs<N>`` or ``-<N>perdev``), with 2 also its sweep, precision and sequence
    length: the report names each series with the least detail that tells it from the others."""
    parts = [group.model or "model", group.device_type or "unknown-gpu"]
    if group.procs_per_node:
        parts.append(f"{group.procs_per_node}pn")
    if group.scheduler == "local":
        parts.append("local")
    if detail >= 1 and group.global_batch_size:
        parts.append(f"gbs{group.global_batch_size}")
    elif detail >= 1 and group.batch_per_device:
        parts.append(f"{group.batch_per_device:g}perdev")
    if detail >= 2:
        parts += [f"sweep{group.sweep_id or '-none'}", str(group.precision), f"seq{group.max_seq_len}"]
    return f"scaling-{_safe('-'.join(parts))}.png"


def scaling_file_names(groups: list[ScalingGroup]) -> list[str]:
    """Each series' file name (`scaling_file_name`), distinct within the report."""
    for detail in (0, 1, 2):
        names = [scaling_file_name(g, detail) for g in groups]
        if len(set(names)) == len(names):
            return names
    return [name.replace(".png", f"-{i}.png") for i, name in enumerate(names, start=1)]


def plot_scaling(group: ScalingGroup, out_dir: Path, name: str | None = None) -> Path:
    """``name`` (`scaling_file_names`, by default `scaling_file_name`): tokens/s per device and
    efficiency against world size, with the ideal of linear scaling (the smallest run's rate per device)."""
    points = group.points
    sizes = [p.world_size for p in points]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sizes, [p.tokens_per_sec_per_device for p in points], "o-", label="tokens/s per device")
    ideal = points[0].tokens_per_sec_per_device  # linear scaling keeps the smallest run's rate per device
    ax.plot(sizes, [ideal] * len(sizes), ":", color="gray", label="ideal (linear scaling)")
    ax.set_ylim(0, 1.15 * max(ideal, *(p.tokens_per_sec_per_device for p in points)))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("devices (world size)")
    ax.set_ylabel("tokens/s per device")
    ax2 = ax.twinx()
    ax2.plot(sizes, [100 * p.efficiency for p in points], "s--", color="tab:orange", label="efficiency %")
    ax2.set_ylabel("scaling efficiency %")
    ax2.set_ylim(0, 110)
    fig.suptitle(f"Scaling of {scaling_title(group)}")
    fig.legend(loc="lower left")
    fig.tight_layout()
    path = out_dir / (name or scaling_file_name(group))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_preflight(report: PreflightReport, out_dir: Path) -> Path:
    """``preflight_<job>-busbw.png``: busbw against message size, one line per collective and scope
    (pairs of nodes as points at their size), the published figure as a dashed line where known."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for b in report.bandwidth:
        sizes, busbw = [p.bytes for p in b.points], [p.busbw_gbps for p in b.points]
        style = "o" if len(sizes) == 1 else "o-"
        (line,) = ax.plot(sizes, busbw, style, label=f"{b.collective}, {b.scope} ({b.ranks} ranks)", ms=4)
        if b.expected_busbw_gbps:
            ax.axhline(
                b.expected_busbw_gbps,
                ls="--",
                color=line.get_color(),
                lw=1,
                label=f"expected: {b.expected_source}"[:80],
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message size (bytes)")
    ax.set_ylabel("bus bandwidth (GB/s)")
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Preflight job {report.job_id}: {report.status.upper()}, {len(report.nodes)} nodes")
    fig.tight_layout()
    path = out_dir / f"preflight_{_safe(report.job_id)}-busbw.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
