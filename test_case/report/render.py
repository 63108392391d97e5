"""The report's outputs, each formatted from the one typed `Report` (`test_case.report.records`):
the console (`format_table`), report.md (`format_markdown`), report.csv (`format_csv`) and
report.json (`report_document`); `write_reports` writes the three files.

The console and report.md are the same sections (`test_case.report.sections`, each written once)
laid out by `test_case.report.layout`; report.csv and report.json are the records' fields. Nothing
here computes a figure.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from test_case.report.layout import console_text, markdown_text
from test_case.report.records import Report, RunSummary
from test_case.report.sections import CONSOLE_ORDER, TITLE, sections


def format_table(report: Report) -> str:
    """The console report: main table, setup, scaling, baseline verdicts, jobs that did not train,
    restarts, rank timing, goodput, mixtures, notes, preflight verdicts, the acceptance verdict."""
    return console_text(sections(report), CONSOLE_ORDER)


def format_markdown(report: Report) -> str:
    """report.md: the acceptance verdict, both tables, comparisons, the definition of every figure,
    plots, warnings."""
    return markdown_text(TITLE, sections(report))


# report.csv's columns after the first ones (every scalar field of a run, in report.json's order): new
# columns are appended, never inserted or renamed, so that scripts reading the CSV keep working
CSV_APPENDED = (  # columns added since, at the end: a script that reads the CSV by position keeps working
    "final_eval_loss",
    "stream_shares_within_error",
    "sweep_id",
    "nodelist",
    "log_ends_at",
    "eval_data_overlap",
    "failure_line_number",  # failure_line's new name (records.RENAMED_FIELDS): the old column stays where it was
    "device_type",  # gpu's new name
    "nccl_network",
    "cluster",
    "started_at",
    "torch",
    "composer",
    "llm_foundry",
    "image",
    "git_commit",
)
STREAM_SHARE_COLUMNS = ("drawn_samples", "drawn", "planned", "sampling_error", "within_error")


def csv_row(run: RunSummary) -> dict[str, Any]:
    """A run's report.csv row: its scalar report.json fields by name; ``goodput`` the goodput (a fraction)
    and ``goodput.<part>`` its parts; ``eval_loss_by_domain.<label>``; ``stream_shares.<stream>.<field>``
    (`STREAM_SHARE_COLUMNS`): a nested report.json field is the column named by its path."""
    record = run.to_dict()
    row = {
        k: v
        for k, v in record.items()
        if not isinstance(v, list | dict) and k not in ("baseline", "own_baseline", "goodput")
    }
    row["goodput"] = None if run.goodput is None else run.goodput.goodput
    if run.goodput is not None:
        row |= {f"goodput.{k}": v for k, v in run.goodput.to_dict().items() if k != "goodput"}
    row |= {f"eval_loss_by_domain.{label}": v for label, v in sorted(run.eval_loss_by_domain.items())}
    for share in record["stream_shares"]:
        row |= {f"stream_shares.{share['name']}.{k}": share[k] for k in STREAM_SHARE_COLUMNS}
    return row


def format_csv(report: Report) -> str:
    """report.csv: one row per run (`csv_row`); the columns of every run, the first ones in the order of
    report.json, then `CSV_APPENDED`, then the nested fields in the order first met."""
    rows = [csv_row(r) for r in report.runs]
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


def report_document(report: Report) -> dict[str, Any]:
    """report.json's content (schema: docs/report.md, "report.json")."""
    return json_safe(report.to_dict())


def write_reports(out_dir: Path, report: Report) -> list[Path]:
    """Write report.md, report.csv and report.json into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.md": format_markdown(report),
        "report.csv": format_csv(report),
        "report.json": json.dumps(report_document(report), indent=2, allow_nan=False, default=str) + "\n",
    }
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
