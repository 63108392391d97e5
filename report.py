"""`python report.py PATH [PATH ...]`: tables and report files from Composer training logs.

PATH is a log file or a folder searched recursively for ``*.out``/``*.log``/``*.txt``. Each file
with metric blocks is one run (one Slurm job writes one file). Parsing lives in
`test_case.log_parser`, arithmetic in `test_case.metrics`, output in `test_case.render`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from test_case.log_parser import parse_log_file
from test_case.metrics import RunSummary, summarise_run
from test_case.render import format_table, report_document, write_reports

LOG_SUFFIXES = {".out", ".log", ".txt", ".err"}


def find_logs(paths: list[Path]) -> list[Path]:
    """Log files named directly, plus those found recursively in folders, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file() and p.suffix in LOG_SUFFIXES]
        else:
            found.append(path)
    return sorted(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    """Parse, compute, render; exit 1 when no run was found."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("paths", nargs="+", type=Path, help="log files or folders")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.* (default: first PATH's folder)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="measured blocks to skip at the start of the steady-state window"
    )
    parser.add_argument("--json", action="store_true", help="print report.json to stdout instead of the table")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"report.py: error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    runs: list[RunSummary] = []
    empty: list[str] = []
    for log in find_logs(args.paths):
        parsed = parse_log_file(log)
        if parsed.train_blocks:
            runs.append(summarise_run(parsed, args.warmup))
        else:
            empty.append(str(log))
    first = args.paths[0]
    out_dir = args.out or (first if first.is_dir() else first.parent)
    document = report_document(runs, [str(p) for p in args.paths], empty)
    written = write_reports(out_dir, runs, document)
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    else:
        print(format_table(runs), end="")
        for name in empty:
            print(f"no runs in {name}")
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0 if runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
