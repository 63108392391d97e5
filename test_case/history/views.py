"""What ``history`` shows: the latest figure of every series against its baseline, the regressions,
the latest verdict, as one typed `History`, formatted as console text, history.md and the
self-contained history.html (the PNGs inlined: it opens from a shared folder or an e-mail, with no
server and no network).

Every figure here is computed in `trends`; this module only lays them out. The HTML marks each key
figure with ``data-figure="<subject>|<metric>"`` so that a test (or a script) reads it back from
the rendered page.
"""

from __future__ import annotations

import base64
import html
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from test_case.history.trends import Regression, Series, Settings, baseline_of, judge_all


@dataclass(frozen=True)
class Row:
    """One series' latest result against its baseline."""

    series: Series
    latest: float
    baseline: float | None  # median of the last N passing results before the latest
    change: float | None  # fraction worse than the baseline
    results: int
    versions: str  # the latest result's driver / torch / ...
    regression: Regression | None


@dataclass
class History:
    cluster: str
    settings: Settings
    rows: list[Row] = field(default_factory=list)
    verdict: dict[str, Any] | None = None  # the newest sweep's stored verdict
    preflights: int = 0
    runs: int = 0
    plots: list[Path] = field(default_factory=list)

    @property
    def regressions(self) -> list[Regression]:
        return [r.regression for r in self.rows if r.regression is not None]


def build(cluster: str, series: list[Series], settings: Settings, **counts: Any) -> History:
    rows = []
    series = [s for s in series if s.points]
    for s, regression in zip(series, judge_all(series, settings), strict=True):
        base = baseline_of(s.points[:-1], settings.last_n)
        med = statistics.median(p.value for p in base) if base else None
        change = None
        if med:
            change = (med - s.points[-1].value) / abs(med)
            if not s.info.higher_is_better:
                change = -change
        versions = s.points[-1].versions
        shown = ", ".join(f"{k} {versions[k]}" for k in ("driver", "cuda", "nccl", "torch") if versions.get(k))
        rows.append(Row(s, s.points[-1].value, med, change, len(s.points), shown, regression))
    return History(cluster, settings, rows, **counts)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


def _pct(change: float | None) -> str:
    return "-" if change is None else f"{-change:+.1%}"


TABLE_HEAD = ("subject", "figure", "latest", "baseline median", "change", "results", "versions", "regression")


def _table_rows(history: History) -> list[tuple[str, ...]]:
    return [
        (
            r.series.subject,
            r.series.info.label,
            _num(r.latest),
            _num(r.baseline),
            _pct(r.change),
            str(r.results),
            r.versions or "-",
            ("yes: " + r.regression.rule) if r.regression else "",
        )
        for r in history.rows
    ]


def settings_line(s: Settings) -> str:
    return (
        f"baseline: the median of the last {s.last_n} passing results (at least {s.min_history}); named: the latest "
        f"result {s.threshold:.0%} and {s.z:g} sigmas worse, or the median of the last {s.window} results "
        f"{s.drift_threshold:.0%} and {s.z:g} standard errors worse (sigma = 1.4826 x MAD)"
    )


def _verdict_line(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "no acceptance verdict stored"
    reasons = "; ".join(verdict["reasons"]) if verdict["reasons"] else "every check passed"
    return f"latest acceptance verdict: sweep {verdict['sweep_id']}: {verdict['status']} ({reasons})"


def console_text(history: History) -> str:
    lines = [
        f"history of cluster {history.cluster}: {history.preflights} preflight(s), {history.runs} run start(s)",
        _verdict_line(history.verdict),
        settings_line(history.settings),
    ]
    if history.regressions:
        lines.append(f"{len(history.regressions)} regression(s):")
        lines += [f"  {r.message}" for r in history.regressions]
    else:
        lines.append("no regression against the cluster's own past")
    rows = [TABLE_HEAD, *_table_rows(history)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEAD))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def markdown_text(history: History) -> str:
    out = [
        f"# History of cluster {history.cluster}",
        "",
        _verdict_line(history.verdict),
        "",
        settings_line(history.settings),
    ]
    out += ["", "## Regressions", ""]
    out += [f"- {r.message}" for r in history.regressions] or ["none"]
    out += ["", "## Latest figures", "", "| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    out += ["| " + " | ".join(row) + " |" for row in _table_rows(history)]
    out += ["", *[f"![{p.stem}]({p.name})" for p in history.plots]]
    return "\n".join(out) + "\n"


CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}
.bad{background:#fdd}.FAIL{color:#b00;font-weight:bold}.PASS{color:#070;font-weight:bold}img{max-width:100%}"""


def html_page(history: History) -> str:
    """history.html: one file, the plots inlined as data: URIs, no script, no external resource."""
    e = html.escape
    verdict = history.verdict
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>History of cluster {e(history.cluster)}</title><style>{CSS}</style></head><body>",
        f"<h1>History of cluster {e(history.cluster)}</h1>",
        f"<p>{history.preflights} preflight(s), {history.runs} run start(s). {e(settings_line(history.settings))}</p>",
    ]
    if verdict is not None:
        parts.append(
            f'<p id="verdict">Latest acceptance verdict: sweep {e(str(verdict["sweep_id"]))}: '
            f'<span class="{e(verdict["status"])}" data-figure="verdict|status">{e(verdict["status"])}</span> '
            f"{e('; '.join(verdict['reasons']))}</p>"
        )
    else:
        parts.append('<p id="verdict">No acceptance verdict stored.</p>')
    parts.append(f'<h2>Regressions</h2><ul id="regressions" data-count="{len(history.regressions)}">')
    parts += [f'<li data-subject="{e(r.series.subject)}">{e(r.message)}</li>' for r in history.regressions]
    parts.append("</ul>" if history.regressions else "<li>none</li></ul>")
    parts.append('<h2>Latest figures</h2><table id="latest"><tr>' + "".join(f"<th>{e(h)}</th>" for h in TABLE_HEAD))
    for row, cells in zip(history.rows, _table_rows(history), strict=True):
        key = e(f"{row.series.subject}|{row.series.metric}")
        tds = [f"<td>{e(c)}</td>" for c in cells]
        tds[2] = f'<td data-figure="{key}">{e(cells[2])}</td>'
        parts.append(f'<tr class="{"bad" if row.regression else ""}">' + "".join(tds) + "</tr>")
    parts.append("</table>")
    for plot in history.plots:
        data = base64.b64encode(plot.read_bytes()).decode()
        parts.append(f'<h3>{e(plot.stem)}</h3><img alt="{e(plot.stem)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
