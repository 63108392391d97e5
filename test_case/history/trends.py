"""Trends and regressions against the cluster's own past: the one definition of "slower than it was".

A `Series` is one figure of one subject over time: a node's matmul or bus bandwidth (preflights), a
GPU's matmul followed by its serial wherever it moved, a model configuration's tokens/s per device
and MFU (runs). `judge` names a regression with two rules, both against the **baseline**: the last
``last_n`` results before the ones judged that passed (their check passed; a run completed without
straggler), summarised by their median and their robust spread sigma = 1.4826 x MAD (at least
`MIN_SIGMA` of the median, so a flat history does not flag rounding):

* **the latest result** is named when it is worse than the baseline median by more than
  ``threshold`` and by more than ``z`` sigmas: a node slowed hard since its last preflight;
* **a drift**: the median of the last ``window`` results is worse than the baseline median by more
  than ``drift_threshold`` and by more than ``z`` standard errors of that difference (of two medians:
  1.2533 sigma sqrt(1/window + 1/baseline results)): a few percent lost for good, which single
  results of the same size on a healthy node (noise) do not reach, since their median does not move.

sigma is at least the median relative sigma of the series' peers (the other nodes' same figure,
`judge_all`): ten results estimate one node's noise poorly, 64 nodes' together well.
A series needs ``min_history`` baseline results to be judged. Each regression says which software
versions changed between the last baseline result and the first result judged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MIN_SIGMA = 0.0025  # of the baseline median
LAST_N = 10
THRESHOLD = 0.05
DRIFT_WINDOW = 6
DRIFT_THRESHOLD = 0.02
Z = 3.5
MIN_HISTORY = 3


@dataclass(frozen=True)
class Metric:
    """A trended figure: how to label it and which way is better."""

    label: str
    unit: str
    higher_is_better: bool = True


def metric_of(name: str) -> Metric | None:
    """The trended metrics (docs/history.md, "Figures"): matmul, bus bandwidth, tokens/s, MFU; else None."""
    if name == "matmul_tflops":
        return Metric("matmul", "TFLOP/s")
    if name.startswith("busbw_gbps."):
        _, collective, scope = name.split(".", 2)
        return Metric(f"{collective} busbw ({scope.replace('_', ' ')})", "GB/s")
    if name == "tokens_per_sec_per_device":
        return Metric("tokens/s per device", "tokens/s")
    if name == "mfu":
        return Metric("MFU", "")
    return None


@dataclass(frozen=True)
class Point:
    """One result of a series."""

    at: str  # when it was measured (UTC ISO 8601; "" when the report did not say)
    value: float
    passed: bool
    job_id: str
    versions: Mapping[str, str]
    where: str = ""  # for a GPU: the node (and device) it was in


@dataclass(frozen=True)
class Series:
    kind: Literal["node", "gpu", "model"]
    subject: str  # a node, "GPU <serial>", or a model configuration
    metric: str
    points: tuple[Point, ...]  # oldest first

    @property
    def info(self) -> Metric:
        return metric_of(self.metric) or Metric(self.metric, "")


@dataclass(frozen=True)
class Settings:
    """What `judge` compares with: every value stated in docs/history.md and overridable on the command line."""

    last_n: int = LAST_N
    threshold: float = THRESHOLD
    window: int = DRIFT_WINDOW
    drift_threshold: float = DRIFT_THRESHOLD
    z: float = Z
    min_history: int = MIN_HISTORY


@dataclass(frozen=True)
class Regression:
    series: Series
    rule: Literal["latest", "drift"]
    value: float  # the latest result, or the median of the window
    baseline: float  # the baseline median
    change: float  # fraction worse than the baseline (positive: worse)
    baseline_results: int
    window: int  # results judged (1 for the latest rule)
    since: list[str] = field(default_factory=list)  # "driver 570.86 -> 575.51"

    @property
    def message(self) -> str:
        info = self.series.info
        unit = f" {info.unit}" if info.unit else ""
        where = f" (in {self.series.points[-1].where})" if self.series.kind == "gpu" else ""
        what = (
            f"{info.label} {_fmt(self.value)}{unit}"
            if self.rule == "latest"
            else f"{info.label} {_fmt(self.value)}{unit} (median of the last {self.window} results)"
        )
        worse = "below" if info.higher_is_better else "above"
        text = (
            f"{self.series.subject}{where}: {what}, {self.change:.1%} {worse} its median of the "
            f"{self.baseline_results} passing results before ({_fmt(self.baseline)})"
        )
        moved = _moves(self.series)
        if moved:
            text += f"; moved: {moved}"
        return text + (f", since {', '.join(self.since)}" if self.since else "")


def _fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def _moves(series: Series) -> str:
    """For a GPU: the nodes it was in, in order, when it moved."""
    if series.kind != "gpu":
        return ""
    places: list[str] = []
    for p in series.points:
        node = p.where.split()[0] if p.where else ""
        if node and (not places or places[-1] != node):
            places.append(node)
    return " -> ".join(places) if len(places) > 1 else ""


def changed_versions(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return [f"{k} {before[k]} -> {after[k]}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]


def _worse(baseline: float, value: float, higher_is_better: bool) -> float:
    """The fraction ``value`` is worse than ``baseline`` (negative: better)."""
    if baseline == 0:
        return 0.0
    return (baseline - value) / abs(baseline) if higher_is_better else (value - baseline) / abs(baseline)


def baseline_of(points: Iterable[Point], last_n: int) -> list[Point]:
    return [p for p in points if p.passed][-last_n:]


def spread(values: list[float]) -> float:
    """sigma from the median absolute deviation (1.4826 x MAD), at least `MIN_SIGMA` of the median."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return max(1.4826 * mad, MIN_SIGMA * abs(med))


def relative_spread(series: Series, settings: Settings) -> float | None:
    """sigma / |median| of the series' baseline before its latest result (None below ``min_history``)."""
    base = baseline_of(series.points[:-1], settings.last_n)
    if len(base) < settings.min_history:
        return None
    med = statistics.median(p.value for p in base)
    return spread([p.value for p in base]) / abs(med) if med else None


def judge(series: Series, settings: Settings | None = None, peer_spread: float = 0.0) -> Regression | None:
    """The series' regression by the latest result or by a drift (module docstring), else None.
    ``peer_spread``: the relative sigma of its peers (`judge_all`), a floor under its own."""
    settings = settings or Settings()
    points = series.points
    higher = series.info.higher_is_better
    found: list[Regression] = []

    def sigma_of(base: list[Point], med: float) -> float:
        return max(spread([p.value for p in base]), peer_spread * abs(med))

    # the latest result against the passing ones before it
    base = baseline_of(points[:-1], settings.last_n)
    if points and len(base) >= settings.min_history:
        med = statistics.median(p.value for p in base)
        change = _worse(med, points[-1].value, higher)
        if change > settings.threshold and change * abs(med) > settings.z * sigma_of(base, med):
            found.append(
                Regression(
                    series,
                    "latest",
                    points[-1].value,
                    med,
                    change,
                    len(base),
                    1,
                    changed_versions(base[-1].versions, points[-1].versions),
                )
            )
    # the last `window` results against the passing ones before them
    if len(points) > settings.window:
        window = points[-settings.window :]
        base = baseline_of(points[: -settings.window], settings.last_n)
        if len(base) >= settings.min_history:
            med = statistics.median(p.value for p in base)
            value = statistics.median(p.value for p in window)
            change = _worse(med, value, higher)
            # the standard error of the difference of two medians (of the window and of the baseline)
            stderr = 1.2533 * sigma_of(base, med) * math.sqrt(1 / settings.window + 1 / len(base))
            if change > settings.drift_threshold and change * abs(med) > settings.z * stderr:
                found.append(
                    Regression(
                        series,
                        "drift",
                        value,
                        med,
                        change,
                        len(base),
                        settings.window,
                        changed_versions(base[-1].versions, window[0].versions),
                    )
                )
    return max(found, key=lambda r: r.change, default=None)


def judge_all(series: list[Series], settings: Settings | None = None) -> list[Regression | None]:
    """`judge` for each series, with the median relative sigma of the series of the same kind and figure
    as a floor under each one's own: ten results estimate a node's noise poorly (MAD's error is about
    a third), its peers' together well; a noisier node keeps its own."""
    settings = settings or Settings()
    spreads: dict[tuple[str, str], list[float]] = {}
    for s in series:
        if (rel := relative_spread(s, settings)) is not None:
            spreads.setdefault((s.kind, s.metric), []).append(rel)
    peer = {k: statistics.median(v) for k, v in spreads.items()}
    return [judge(s, settings, peer.get((s.kind, s.metric), 0.0)) for s in series]


def _order(at: str | None, job_id: str) -> tuple[str, int, str]:
    return (at or "", int(job_id) if job_id.isdigit() else -1, job_id)


def node_series(figures: list[dict[str, Any]]) -> list[Series]:
    """Per node, each trended preflight figure (`metric_of`); per GPU (by serial), its matmul."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for f in figures:
        if f["source"] != "preflight" or metric_of(f["metric"]) is None:
            continue
        if f["device"]:
            if f["device_id"].startswith(f"{f['node']}/"):  # no serial: not followed across nodes
                continue
            groups.setdefault(("gpu", f"GPU {f['device_id']}", f["metric"]), []).append(f)
        else:
            groups.setdefault(("node", f["node"], f["metric"]), []).append(f)
    out = []
    for (kind, subject, metric), rows in sorted(groups.items()):
        rows.sort(key=lambda f: _order(f["measured_at"], f["job_id"]))
        points = tuple(
            Point(
                f["measured_at"] or "",
                float(f["value"]),
                bool(f["passed"]),
                f["job_id"],
                f["versions"],
                f"{f['node']} {f['device']}" if kind == "gpu" else "",
            )
            for f in rows
        )
        out.append(Series(kind, subject, metric, points))  # type: ignore[arg-type]
    return out


def model_series(runs: list[dict[str, Any]]) -> list[Series]:
    """Per configuration (`configuration.describe`), tokens/s per device and MFU of its completed runs (a
    job's last start)."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        key = (r["cluster"], r["job_id"])
        if key not in last or r["start"] > last[key]["start"]:
            last[key] = r
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in last.values():
        if r["status"] != "completed" or not r["configuration"]:
            continue
        for metric in ("tokens_per_sec_per_device", "mfu"):
            if r[metric] is not None:
                groups.setdefault((r["configuration"], metric), []).append(r)
    out = []
    for (subject, metric), rows in sorted(groups.items()):
        rows.sort(key=lambda r: _order(r["started_at"], r["job_id"]))
        points = tuple(
            Point(r["started_at"] or "", float(r[metric]), bool(r["passed"]), r["job_id"], r["versions"]) for r in rows
        )
        out.append(Series("model", subject, metric, points))
    return out
