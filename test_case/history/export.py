"""The latest figures for the tools people already watch: JSON lines (`jsonl`) and Prometheus' text
exposition format (`prometheus`, for node_exporter's textfile collector or a Pushgateway).

One record per series (`views.Row`): the latest value, its baseline median, whether a regression is
named, and when it was measured. Prometheus' format, as its documentation gives it: ``# HELP`` and
``# TYPE`` once per metric name, then ``name{label="value",...} value``; label values escape
backslash, double quote and newline.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from test_case.history.views import History, Row

PREFIX = "mpt_suite_"


def records(history: History) -> list[dict[str, Any]]:
    out = []
    for row in history.rows:
        last = row.series.points[-1]
        out.append(
            {
                "cluster": history.cluster,
                "kind": row.series.kind,
                "subject": row.series.subject,
                "metric": row.series.metric,
                "unit": row.series.info.unit,
                "value": row.latest,
                "baseline_median": row.baseline,
                "change": row.change,
                "results": row.results,
                "measured_at": last.at or None,
                "job_id": last.job_id,
                "versions": dict(last.versions),
                "regression": row.regression.message if row.regression else None,
            }
        )
    return out


def jsonl(history: History) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records(history))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _name(metric: str) -> str:
    return PREFIX + re.sub(r"[^a-zA-Z0-9_:]", "_", metric)


def _seconds(at: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 time (one without a zone is UTC, as the suite writes them)."""
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def prometheus(history: History) -> str:
    """Gauges ``mpt_suite_<metric>`` (the latest value), ``mpt_suite_measured_at_seconds`` (when: Unix
    time) and ``mpt_suite_regression`` (0 or 1), labelled by cluster, kind, subject (and metric). No sample
    timestamps: node_exporter's textfile collector refuses a file that has them, a Pushgateway refuses
    them too, and Prometheus drops samples older than about an hour."""
    by_name: dict[str, list[Row]] = {}
    for row in history.rows:
        by_name.setdefault(_name(row.series.metric), []).append(row)
    lines: list[str] = []

    def labels(row: Row, metric: bool) -> str:
        out = f'cluster="{_label(history.cluster)}",kind="{row.series.kind}",subject="{_label(row.series.subject)}"'
        return out + (f',metric="{_label(row.series.metric)}"' if metric else "")

    for name, rows in sorted(by_name.items()):
        info = rows[0].series.info
        lines += [f"# HELP {name} {info.label} ({info.unit or 'ratio'}), latest result", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels(row, False)}}} {row.latest!r}" for row in rows]
    name = PREFIX + "measured_at_seconds"
    lines += [f"# HELP {name} when the latest result was measured (Unix time)", f"# TYPE {name} gauge"]
    for row in history.rows:
        if (seconds := _seconds(row.series.points[-1].at)) is not None:
            lines.append(f"{name}{{{labels(row, True)}}} {seconds:.0f}")
    name = PREFIX + "regression"
    lines += [f"# HELP {name} 1 where a regression against the cluster's own baseline is named", f"# TYPE {name} gauge"]
    lines += [f"{name}{{{labels(row, True)}}} {1 if row.regression else 0}" for row in history.rows]
    return "\n".join(lines) + "\n"
