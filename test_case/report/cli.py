"""The command behind ``python report.py PATH [PATH ...]``: tables, report files and plots from Composer logs.

PATH is a log file or a folder searched recursively for ``*.out``/``*.log``/``*.txt``/``*.err``.
Files are grouped into runs by their run name (one Slurm job writes one file, appended to across
requeues; `group_runs`). Parsing lives in `log_lines` (read fast by `log_reading`), per-run arithmetic in `metrics`,
comparisons in `compare`; the whole report is one `records.Report`, formatted per output by `render`
(console, report.md, report.csv, report.json) and drawn by `plots` (all in `test_case.report`).

``preflight_<job-id>.json`` files of 0.preflight.sbatch found there are reported too (per-node
table, bus bandwidth plot), and an ``acceptance_<sweep-id>.json`` manifest of 3.acceptance.sh
adds the sweep's verdict (`verdict`; the newest sweep where there are several).

Exit codes: 0 report written; 1 no run, no preflight and no sweep found; 2 bad arguments or
unreadable input, or ``--store`` could not store the report (written all the same); 3 ``--baseline``
or ``--own-baseline`` given and a run is below it by more than ``--tolerance``; 4 an acceptance
sweep's verdict is FAIL. 4 comes before 1, 3 and a failed store, 1 and 3 before a failed store.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from test_case.acceptance.manifest import PREFIX as MANIFEST_PREFIX
from test_case.acceptance.manifest import SweepManifest
from test_case.gpu_peaks import PEAK_TFLOPS
from test_case.preflight.records import PreflightReport
from test_case.published_runs import DEFAULT_BASELINE, BaselineError, BaselineRow, load_baseline
from test_case.report.compare import OWN_SOURCE, compare_to_baseline, own_rows_for, scaling_groups
from test_case.report.liveness import refine
from test_case.report.log_lines import ParsedLog
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import USED_TRAIN_KEYS, job_without_training, summarise_run
from test_case.report.records import JobWithoutTraining, Report, RunSummary
from test_case.report.render import format_table, report_document, write_reports
from test_case.report.stragglers import STRAGGLER_RATIO
from test_case.report.verdict import judge_sweep

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


def find_preflights(paths: list[Path]) -> list[Path]:
    """``preflight_<job-id>.json`` files (0.preflight.sbatch) named or found in the folders given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("preflight_*.json") if p.is_file()]
        elif path.name.startswith("preflight_") and path.suffix == ".json":
            found.append(path)
    return sorted(dict.fromkeys(found))


def find_manifests(paths: list[Path]) -> list[Path]:
    """``acceptance_<sweep-id>.json`` files (3.acceptance.sh) named or found in the folders given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob(f"{MANIFEST_PREFIX}*.json") if p.is_file()]
        elif path.name.startswith(MANIFEST_PREFIX) and path.suffix == ".json":
            found.append(path)
    return sorted(dict.fromkeys(found))


def newest_manifest(paths: list[Path]) -> SweepManifest | None:
    """The manifest of the newest sweep (highest numeric sweep id) among ``paths``."""
    manifests = [SweepManifest.read(p) for p in paths]
    return max(manifests, key=lambda m: (int(m.sweep_id) if m.sweep_id.isdigit() else -1, m.submitted), default=None)


def is_preflight_log(path: Path) -> bool:
    """The job log of a preflight (its figures are in the JSON beside it), not a training log."""
    return path.name.startswith("preflight_") and path.with_suffix(".json").is_file()


def group_runs(parsed: list[ParsedLog]) -> list[ParsedLog]:
    """One log per declared run name (`ParsedLog.declared_run_name`; a log without one is a run of
    its own): where several files share a name (e.g. per-rank files), keep the one whose reporting
    rank is lowest and has the most blocks, filling its header and config from the others."""
    by_name: dict[str, list[ParsedLog]] = {}
    for log in parsed:
        by_name.setdefault(log.declared_run_name or f"file:{log.path}", []).append(log)
    chosen = []
    for logs in by_name.values():
        logs.sort(key=lambda lg: (lg.reporting_rank if lg.reporting_rank is not None else -1, -len(lg.train_blocks)))
        main = logs[0]
        for other in logs[1:]:
            main.header_fields = other.header_fields | main.header_fields
            main.config = other.config | main.config
        chosen.append(main)
    return chosen


def run_order(run: RunSummary) -> tuple[int, int, str]:
    """Runs in the order of their Slurm job ids as numbers; runs without a numeric id after them."""
    job = run.job_id or ""
    return (0, int(job), run.name) if job.isdigit() else (1, 0, f"{job} {run.name}")


def default_out_dir(paths: list[Path]) -> Path:
    """Where the report goes without ``--out``: the first folder given, else ``./report`` (never the
    folder of a file that was named, which may be the repository root)."""
    return next((p for p in paths if p.is_dir()), Path("report"))


def build_parser() -> argparse.ArgumentParser:
    """The command line, as documented in docs/report.md."""
    p = argparse.ArgumentParser(
        prog="report.py", description="Tables, report files and plots from Composer training logs."
    )
    p.add_argument("paths", nargs="+", type=Path, help="log files or folders")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.* and plots (default: the first folder given, else ./report)",
    )
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", help=f"GPU type for MFU when the log does not say ({', '.join(PEAK_TFLOPS)})")
    gpu.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s per device to compute MFU against")
    p.add_argument(
        "--baseline",
        type=Path,
        nargs="?",
        const=DEFAULT_BASELINE,
        default=None,
        help=f"compare with published throughput (default CSV: {DEFAULT_BASELINE.name}); exit 3 if below",
    )
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed shortfall against --baseline (0.10)")
    p.add_argument("--warmup", type=int, default=0, help="measured blocks to skip at the start of the window")
    p.add_argument(
        "--straggler-threshold",
        type=float,
        default=STRAGGLER_RATIO,
        help=f"flag a rank whose compute time is above this times the median rank's ({STRAGGLER_RATIO})",
    )
    p.add_argument(
        "--store",
        default=None,
        help="also store the report in the cluster's results store: a SQLite file or a postgresql:// URL "
        "(docs/history.md)",
    )
    p.add_argument(
        "--own-baseline",
        default=None,
        metavar="STORE",
        help="also compare each run with the median of the cluster's own last 10 passing runs of its configuration "
        "in this results store (docs/history.md); exit 3 if more than --tolerance below",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="--store: the cluster's name where the logs do not give one (SLURM_CLUSTER_NAME)",
    )
    p.add_argument("--json", action="store_true", help="print report.json to stdout instead of the table")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--workers",
        "--jobs",  # its old name, kept as an alias: it never meant Slurm jobs
        dest="workers",
        type=int,
        default=None,
        help="processes that parse a large log together (default: all CPUs; --jobs is its old name)",
    )
    return p


def draw_plots(report: Report, out_dir: Path) -> list[Path]:
    """The PNGs of the report (`test_case.report.plots`, imported only here: matplotlib is slow to load)."""
    if not (report.runs or report.preflight):
        return []
    from test_case.report.plots import plot_goodput, plot_preflight, plot_run, plot_scaling, scaling_file_names

    plots = [plot_run(run, out_dir) for run in report.runs]
    plots += [
        plot_scaling(g, out_dir, name)
        for g, name in zip(report.scaling, scaling_file_names(report.scaling), strict=True)
    ]
    if report.runs and (bars := plot_goodput(report.runs, out_dir)) is not None:
        plots.append(bars)
    return plots + [plot_preflight(pf, out_dir) for pf in report.preflight if pf.bandwidth]


def own_baseline(target: str, cluster: str | None, runs: list[RunSummary], create: bool) -> list[BaselineRow]:
    """The cluster's own baseline rows from the store (`test_case.history.baseline`), the runs being
    judged left out; the cluster is the one the runs' headers name, else ``cluster``, else ``default``.
    ``create``: the store is also the one --store writes, so a first report may start it (an empty
    baseline: every run "no-match"); else a store that does not exist is an error."""
    from test_case.history.baseline import own_baseline_rows
    from test_case.history.extract import DEFAULT_CLUSTER
    from test_case.history.store import open_store

    name = next((r.cluster for r in runs if r.cluster), None) or cluster or DEFAULT_CLUSTER
    store = open_store(target, create=create)  # only read: a mistyped path is an error, not a new empty store
    try:
        rows, _ = own_baseline_rows(store, name, exclude_jobs={r.job_id or r.name for r in runs})
    finally:
        store.close()
    return rows


def store_report(report: Report, target: str, cluster: str | None, out: TextIO = sys.stdout) -> int:
    """Add the report to the results store (`test_case.history`): 0, or 2 with one line saying why not."""
    from test_case.history.cli import store_batch
    from test_case.history.extract import ReportFileError, batch_of_report
    from test_case.history.store import StoreError, open_store

    try:
        batch = batch_of_report(report_document(report), cluster)
        store = open_store(target, warn=lambda m: print(f"report.py: warning: {m}", file=sys.stderr))
        try:
            line = store_batch(store, batch, "the report")
        finally:
            store.close()
    except (StoreError, ReportFileError) as err:
        print(f"report.py: error: store: {err} (the report files are written)", file=sys.stderr)
        return 2
    print(line, file=out)  # stderr with --json: stdout is the document
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse, compute, compare, render; see the module docstring for exit codes."""
    args = build_parser().parse_args(argv)
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"report.py: error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if (
        args.warmup < 0
        or not 0 <= args.tolerance < 1
        or (args.workers is not None and args.workers < 1)
        or args.straggler_threshold <= 1
    ):
        print(
            "report.py: error: --warmup must be >= 0, --tolerance in [0, 1), --workers >= 1, --straggler-threshold > 1",
            file=sys.stderr,
        )
        return 2
    baseline_rows = None
    if args.baseline is not None:
        try:
            baseline_rows = load_baseline(args.baseline)
        except (OSError, BaselineError) as err:
            print(f"report.py: error: baseline: {err}", file=sys.stderr)
            return 2

    preflights: list[PreflightReport] = []
    for path in find_preflights(args.paths):
        try:
            preflights.append(PreflightReport.read(path))
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(
                f"report.py: error: {path}: not a preflight report ({err}): rerun 0.preflight.sbatch", file=sys.stderr
            )
            return 2
    try:
        manifest_files = find_manifests(args.paths)
        manifest = newest_manifest(manifest_files)
        sweep_of = {job.job_id: m.sweep_id for m in map(SweepManifest.read, manifest_files) for job in m.jobs}
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"report.py: error: an acceptance manifest cannot be read ({err}): resubmit the sweep", file=sys.stderr)
        return 2
    logs = [p for p in find_logs(args.paths) if not is_preflight_log(p)]
    if not logs and not preflights and manifest is None:
        names = ", ".join(str(p) for p in args.paths)
        print(f"report.py: no log files (*{', *'.join(sorted(LOG_SUFFIXES))}) in {names}: nothing written")
        return 1
    parsed: list[ParsedLog] = []
    empty: list[str] = []
    jobs: list[JobWithoutTraining] = []
    for path in logs:
        log = parse_log_file(path, keep=USED_TRAIN_KEYS, jobs=args.workers)
        if log.train_blocks:
            parsed.append(log)
        else:
            empty.append(str(path))
            if (job := job_without_training(log)) is not None:
                jobs.append(job)
    runs: list[RunSummary] = sorted(
        (
            summarise_run(log, args.warmup, args.gpu, args.peak_tflops, args.straggler_threshold)
            for log in group_runs(parsed)
        ),
        key=run_order,
    )
    for run in runs:
        run.sweep_id = sweep_of.get(run.job_id or "")
    jobs = refine(runs, jobs)  # unfinished: still running, or killed? (Slurm, this host's processes)
    if baseline_rows is not None:
        for run in runs:
            run.baseline = compare_to_baseline(run, baseline_rows, args.tolerance)
    own_rows = None
    if args.own_baseline is not None:
        from test_case.history.store import StoreError  # SQLAlchemy only where a store is named

        try:
            own_rows = own_baseline(args.own_baseline, args.cluster, runs, create=args.own_baseline == args.store)
        except StoreError as err:
            print(f"report.py: error: --own-baseline: {err}", file=sys.stderr)
            return 2
        for run in runs:
            run.own_baseline = compare_to_baseline(run, own_rows_for(run, own_rows), args.tolerance, OWN_SOURCE)
    scaling = scaling_groups(runs)
    verdict = None
    if manifest is not None:
        rows = baseline_rows if baseline_rows is not None else load_baseline(DEFAULT_BASELINE)
        verdict = judge_sweep(manifest, runs, jobs, preflights, rows, scaling=scaling, own_rows=own_rows)

    report = Report([str(p) for p in args.paths], empty, jobs, runs, scaling, preflights, verdict)
    out_dir = args.out or default_out_dir(args.paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        report.plots = draw_plots(report, out_dir)
    written = write_reports(out_dir, report)
    if args.json:
        print(json.dumps(report_document(report), indent=2))
    else:
        print(format_table(report), end="")
        listed_as_jobs = {j.log_file for j in jobs}
        for name in empty:
            if name not in listed_as_jobs:
                print(f"no runs in {name}")
        print(f"wrote {', '.join(str(p) for p in written + report.plots)}")
    stored = (
        0
        if args.store is None
        else store_report(report, args.store, args.cluster, sys.stderr if args.json else sys.stdout)
    )
    if verdict is not None and verdict.status == "FAIL":
        return 4  # before a store that failed (2): the verdict is what the caller gates on
    if not runs and not preflights and verdict is None:
        return 1
    if any(b and b.status == "below" for r in runs for b in (r.baseline, r.own_baseline)):
        return 3
    return stored
