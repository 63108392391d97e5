"""``python -m test_case.history``: the cluster's memory (docs/history.md).

``ingest --store S PATH...`` stores report.json and preflight_<job-id>.json files (named, or found
in folders), one transaction per file; ``python report.py --store S`` stores each report as it is
written. ``show --store S`` judges every stored series against the cluster's own past (`trends`)
and writes history.md, history.html (self-contained), history.jsonl, history.prom and the trend
PNGs. A store is a SQLite file path or a ``postgresql://`` URL.

Exit codes: 0 done, no regression; 2 bad arguments, a store or file that cannot be used (each
named with what to do; the other files are still stored); 3 ``show`` named a regression.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from test_case.history import export, extract, trends, views
from test_case.history.records import Batch
from test_case.history.store import Store, StoreError, open_store, shown_target

PROG = "python -m test_case.history"


def store_argument(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--store",
        required=required,
        help="the results store: a SQLite file (on a local disk) or a postgresql://user@host/db URL",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="the cluster's name where the reports do not give one (run headers and preflights record "
        "SLURM_CLUSTER_NAME); show: which cluster, where the store holds several",
    )
    p.add_argument(
        "--store-timeout", type=float, default=30.0, help="seconds to wait for another writer or the server (30)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="The cluster's memory: store reports, show trends and regressions."
    )
    sub = p.add_subparsers(dest="action", required=True)
    ingest = sub.add_parser("ingest", help="store report.json and preflight_<job-id>.json files")
    store_argument(ingest)
    ingest.add_argument("paths", nargs="+", type=Path, help="files, or folders searched for them")
    show = sub.add_parser("show", help="trends and regressions against the cluster's own past")
    store_argument(show)
    show.add_argument("--out", type=Path, default=Path("history"), help="folder for history.* and PNGs (./history)")
    d = trends.Settings()
    show.add_argument("--last", type=int, default=d.last_n, help=f"passing results in a baseline ({d.last_n})")
    show.add_argument(
        "--threshold",
        type=float,
        default=d.threshold,
        help=f"the latest result worse by more than this ({d.threshold})",
    )
    show.add_argument("--window", type=int, default=d.window, help=f"results in a drift's median ({d.window})")
    show.add_argument(
        "--drift-threshold",
        type=float,
        default=d.drift_threshold,
        help=f"the window's median worse by more than this ({d.drift_threshold})",
    )
    show.add_argument(
        "--z", type=float, default=d.z, help=f"and by more than this many sigmas or standard errors ({d.z})"
    )
    show.add_argument(
        "--min-history", type=int, default=d.min_history, help=f"baseline results a series needs ({d.min_history})"
    )
    show.add_argument("--no-plots", action="store_true", help="skip the PNGs (and their place in history.html)")
    show.add_argument("--json", action="store_true", help="print history.jsonl to stdout instead of the table")
    return p


def find_files(paths: list[Path]) -> list[Path]:
    """report.json and preflight_*.json files named, or found in the folders given."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*.json") if p.name == "report.json" or p.name.startswith("preflight_")]
        else:
            found.append(path)
    return sorted(dict.fromkeys(found))


def describe(counts: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{table} {added} added, {replaced} replaced" for table, (added, replaced) in counts.items())


def store_batch(store: Store, batch: Batch, what: str) -> str:
    """Write one report's rows; the line that says what was stored."""
    return f"stored {what} in {store.target}: {describe(store.write(batch))}"


def ingest(args: argparse.Namespace) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"{PROG}: error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    files = find_files(args.paths)
    if not files:
        print(
            f"{PROG}: error: no report.json or preflight_*.json in {', '.join(map(str, args.paths))}", file=sys.stderr
        )
        return 2
    status = 0
    with _opened(args) as store:
        for path in files:
            try:
                batch = extract.batch_of_file(path, args.cluster)
                print(store_batch(store, batch, str(path)))
            except (extract.ReportFileError, StoreError) as err:  # this file not stored; the others still are
                print(f"{PROG}: error: {err}", file=sys.stderr)
                status = 2
    return status


class _opened:
    def __init__(self, args: argparse.Namespace, create: bool = True) -> None:
        self.store = open_store(
            args.store,
            args.store_timeout,
            warn=lambda m: print(f"{PROG}: warning: {m}", file=sys.stderr),
            create=create,
        )

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def show(args: argparse.Namespace) -> int:
    if args.last < 1 or args.window < 1 or args.min_history < 1 or not 0 <= args.threshold < 1 or args.z < 0:
        print(f"{PROG}: error: --last, --window, --min-history >= 1; --threshold in [0, 1); --z >= 0", file=sys.stderr)
        return 2
    settings = trends.Settings(args.last, args.threshold, args.window, args.drift_threshold, args.z, args.min_history)
    with _opened(args, create=False) as store:  # only read: a mistyped path is an error, not a new store
        clusters = store.clusters()
        cluster = args.cluster
        if cluster is None:
            if len(clusters) > 1:
                print(
                    f"{PROG}: error: the store holds clusters {', '.join(clusters)}: name one with --cluster",
                    file=sys.stderr,
                )
                return 2
            cluster = clusters[0] if clusters else extract.DEFAULT_CLUSTER
        tables = store.snapshot(cluster)  # one read transaction: a writer meanwhile is seen whole or not at all
    figures, runs, preflights, verdicts = (tables[t] for t in ("node_figures", "runs", "preflights", "verdicts"))
    if not (runs or preflights):
        print(f"{PROG}: nothing stored for cluster {cluster} in {shown_target(args.store)}: store reports first")
        return 0
    series = trends.node_series(figures) + trends.model_series(runs)
    verdict = max(verdicts, key=lambda v: (v["decided_at"] or "", v["stored_at"]), default=None)
    history = views.build(cluster, series, settings, verdict=verdict, preflights=len(preflights), runs=len(runs))
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not args.no_plots:
            from test_case.history.plots import plot_history

            history.plots = plot_history(history, out)
        files = {
            "history.md": views.markdown_text(history),
            "history.html": views.html_page(history),
            "history.jsonl": export.jsonl(history),
            "history.prom": export.prometheus(history),
        }
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as err:
        print(
            f"{PROG}: error: --out {out}: cannot be written ({err.strerror or err}): name a writable folder",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(export.records(history), indent=2))
    else:
        print(views.console_text(history), end="")
        print(
            f"wrote {', '.join(str(out / n) for n in files)}"
            + (f" and {len(history.plots)} PNGs" if history.plots else "")
        )
    return 3 if history.regressions else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return ingest(args) if args.action == "ingest" else show(args)
    except StoreError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
