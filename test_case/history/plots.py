"""The trend PNGs of ``history``: one per node figure (a line per node), one of the GPUs' matmul (a line
per serial) and one per model configuration (tokens/s per device and MFU). A series with a
regression is drawn in red and named; the others grey. A dotted vertical line marks each result
where the software versions changed, labelled with what changed.

Imported only when plots are drawn: matplotlib is slow to load.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from test_case.history.trends import Series, changed_versions
from test_case.history.views import History


def _xs(series: Series, days: dict[str, float]) -> list[float]:
    """Matplotlib's date numbers of the points' times (their order where a time is missing); ``days``
    caches them (the nodes of one preflight share its time)."""
    try:
        for p in series.points:
            if p.at not in days:
                days[p.at] = float(mdates.date2num(datetime.fromisoformat(p.at)))
        return [days[p.at] for p in series.points]
    except ValueError:
        return [float(i) for i in range(len(series.points))]


def _slug(text: str) -> str:
    """A file name part: the text's letters and digits, cut, and a hash of the whole (no two alike)."""
    short = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60]
    return f"{short}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _draw(ax: plt.Axes, series: list[Series], regressed: set[tuple[str, str]]) -> None:
    marked: set[tuple[float, str]] = set()
    days: dict[str, float] = {}
    grey_x: list[float] = []  # the series drawn unnamed, as one line broken by NaN (hundreds of GPUs: one call)
    grey_y: list[float] = []
    for s in series:
        bad = (s.subject, s.metric) in regressed
        xs = _xs(s, days)
        named = bad or s.subject == "all nodes" or len(series) <= 8
        if named:
            ax.plot(
                xs,
                [p.value for p in s.points],
                marker="o",
                markersize=3,
                linewidth=1.6 if bad else 0.8,
                color="tab:red" if bad else ("tab:blue" if s.subject == "all nodes" else "0.6"),
                label=s.subject,
                zorder=3 if bad else 2,
            )
        else:
            grey_x += [*xs, math.nan]
            grey_y += [*(p.value for p in s.points), math.nan]
        for prev, point, x in zip(s.points, s.points[1:], xs[1:], strict=False):
            change = ", ".join(changed_versions(prev.versions, point.versions))
            if change and (x, change) not in marked:
                marked.add((x, change))
                ax.axvline(x, color="0.3", linestyle=":", linewidth=0.8)
                ax.annotate(change, (x, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top")
    if grey_x:
        ax.plot(grey_x, grey_y, marker="o", markersize=2, linewidth=0.6, color="0.65", zorder=1)
    if series and series[0].points and series[0].points[0].at:
        ax.xaxis_date()
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)


def plot_history(history: History, out_dir: Path) -> list[Path]:
    """Write the PNGs into ``out_dir``; return their paths."""
    regressed = {(r.series.subject, r.series.metric) for r in history.regressions}
    by_figure: dict[tuple[str, str], list[Series]] = {}
    for row in history.rows:
        s = row.series
        key = (s.metric, s.kind) if s.kind != "model" else (s.subject, "model")
        by_figure.setdefault(key, []).append(s)
    written = []
    for (name, kind), series in sorted(by_figure.items()):
        if kind == "model":
            fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
            for ax, metric in zip(axes, ("tokens_per_sec_per_device", "mfu"), strict=True):
                chosen = [s for s in series if s.metric == metric]
                _draw(ax, chosen, regressed)
                ax.set_ylabel(chosen[0].info.label if chosen else metric)
            axes[0].set_title(f"{history.cluster}: {name}", fontsize=9)
            path = out_dir / f"history-model-{_slug(name)}.png"
        else:
            fig, ax = plt.subplots(figsize=(9, 4.5))
            _draw(ax, series, regressed)
            info = series[0].info
            who = "per GPU (by serial)" if kind == "gpu" else "per node"
            ax.set_title(f"{history.cluster}: {info.label} {who}", fontsize=9)
            ax.set_ylabel(info.unit)
            path = out_dir / f"history-{kind}-{_slug(name)}.png"
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
