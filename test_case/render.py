"""Rendering of `RunSummary` lists: console table, report.md, report.csv, report.json.

Nothing here computes a figure; every number comes from `test_case.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from test_case.metrics import RunSummary


def _num(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS: list[tuple[str, Callable[[RunSummary], str]]] = [
    ("run", lambda r: r.name),
    ("job", lambda r: r.job_id or "-"),
    ("model", lambda r: r.model or "-"),
    ("world", lambda r: _num(r.world_size, "d")),
    ("batches", lambda r: "-" if r.last_batch is None else f"{r.last_batch}/{r.max_duration}"),
    ("final loss", lambda r: _num(r.final_train_loss, ".4f")),
    ("tokens/s", lambda r: _num(r.tokens_per_sec, ",.0f")),
    ("tokens/s/device", lambda r: _num(r.tokens_per_sec_per_device, ",.0f")),
    ("step s", lambda r: _num(r.step_time_median_s, ".3f")),
    ("window", lambda r: "-" if not r.window_batches else f"{r.window_batches[0]}-{r.window_batches[1]}"),
]

DEFINITIONS = """\
- **batches**: N/T of the last `[batch=N/T]` block Composer printed.
- **final loss**: `loss/train/total` of that last block.
- **window**: the batches whose blocks carry `throughput/tokens_per_sec` (Composer's SpeedMonitor
  logs it once its window has filled), minus the first `--warmup` of them.
- **tokens/s**: median over the window of Composer's `throughput/tokens_per_sec` (all ranks).
- **tokens/s/device**: tokens/s divided by the world size (run header, else Composer's ratio).
- **step s**: median over the window of `1 / throughput/batches_per_sec`.
"""


def format_table(runs: list[RunSummary]) -> str:
    """Fixed-width console table, one row per run, then warnings."""
    rows = [[name for name, _ in COLUMNS]] + [[cell(r) for _, cell in COLUMNS] for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    out = io.StringIO()
    for n, row in enumerate(rows):
        out.write(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        out.write("\n")
        if n == 0:
            out.write("  ".join("-" * w for w in widths) + "\n")
    for r in runs:
        for warning in r.warnings:
            out.write(f"warning: {r.name}: {warning}\n")
    return out.getvalue()


def format_markdown(runs: list[RunSummary]) -> str:
    """report.md: the table and the definition of every column."""
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |" for r in runs]
    warn = [f"- {r.name}: {w}" for r in runs for w in r.warnings]
    parts = ["# MPT benchmark report", "", head, rule, *body, "", "## How each figure is computed", "", DEFINITIONS]
    if warn:
        parts += ["## Warnings", "", *warn, ""]
    return "\n".join(parts)


def format_csv(runs: list[RunSummary]) -> str:
    """report.csv: one row per run, scalar fields of report.json."""
    dicts = [r.to_dict() for r in runs]
    fields = [k for k, v in (dicts[0] if dicts else {}).items() if not isinstance(v, list | dict)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(dicts)
    return out.getvalue()


def report_document(runs: list[RunSummary], inputs: list[str], empty_files: list[str]) -> dict[str, Any]:
    """report.json's content."""
    return {
        "schema_version": 1,
        "inputs": inputs,
        "files_without_runs": empty_files,
        "runs": [r.to_dict() for r in runs],
    }


def write_reports(out_dir: Path, runs: list[RunSummary], document: dict[str, Any]) -> list[Path]:
    """Write report.md, report.csv and report.json into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "report.md": format_markdown(runs),
        "report.csv": format_csv(runs),
        "report.json": json.dumps(document, indent=2, allow_nan=False, default=str) + "\n",
    }
    for name, text in files.items():
        (out_dir / name).write_text(text)
    return [out_dir / name for name in files]
