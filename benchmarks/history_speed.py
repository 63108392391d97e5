"""Benchmark: the results store's speed (targets: a report of 100 runs stored in under 2 s; the history
view of 1,000 stored runs and 64 nodes in under 5 s).

    python -m benchmarks.history_speed [--repeats 3] [--postgres URL] [--workdir DIR]

The inputs are shaped from real outputs, only the numbers generated:

* runs: the record of a real run (report.py on the real requeued 2-node log,
  tests/data/slurm-2node-requeued-usr1.out.gz: two starts, evals, per-node compute), copied with new
  job ids, start times, tokens/s, each node's compute time per batch (the rank-timing figures a GPU run
  has) and four model configurations (1, 2, 4 and 8 nodes);
* preflights: a real 3-node preflight (tests/data/preflight-3node-healthy.json.gz) grown to 64 nodes
  of 8 GPUs each: every node's checks as the real node1's, its own matmul per device and GPU serials,
  an all_reduce within each node and the five all-node collectives, as 0.preflight.sbatch writes for
  64 nodes (group testing, no pairs above 8 nodes).

Measured, each ``--repeats`` times, median printed:

1. ``report.py --store`` of a report.json holding 100 runs (`extract.batch_of_report` and one
   `Store.write`: the part ``--store`` adds to a report), into a store already holding 1,000 runs;
2. ``python -m test_case.history show`` over 1,300 stored runs and 100 preflights of 64 nodes (106,650
   node figures), as a user runs it (a new process: imports, queries, judging, history.md/html,
   exports), with its PNGs and with ``--no-plots``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from test_case.history.extract import batch_of_preflight, batch_of_report
from test_case.history.records import Batch
from test_case.history.store import open_store

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"


def real_run(workdir: Path) -> dict[str, Any]:
    """The real requeued run's report.json record."""
    log = workdir / "mpt-train-4.out"
    log.write_bytes(gzip.decompress((DATA / "slurm-2node-requeued-usr1.out.gz").read_bytes()))
    out = workdir / "real-report"
    subprocess.run(
        [sys.executable, "report.py", str(log), "--out", str(out), "--no-plots"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    return run


def runs_report(template: dict[str, Any], first_job: int, count: int, rng: random.Random) -> dict[str, Any]:
    runs = []
    for i in range(count):
        job = first_job + i
        run = copy.deepcopy(template)
        nodes = (1, 2, 4, 8)[i % 4]
        run.update(
            name=f"mpt-train-{job}",
            job_id=str(job),
            cluster="bench",
            nodes=nodes,
            world_size=nodes * 8,
            model="mpt-7b",
            device_type="h100-sxm",
            started_at=f"2026-{1 + (job // 2000) % 12:02d}-{1 + (job // 80) % 28:02d}T{job % 24:02d}:00:00+00:00",
            tokens_per_sec_per_device=3000 * (1 + rng.gauss(0, 0.01)),
            mfu=0.45 * (1 + rng.gauss(0, 0.01)),
            node_compute=[
                {
                    "ranks": 8,
                    "ratio_to_median": 1.0,
                    "straggler": False,
                    "node": f"node{n:02d}",
                    "median_compute_s": 0.5 * (1 + rng.gauss(0, 0.01)),
                }
                for n in range(nodes)
            ],
        )
        runs.append(run)
    return {"schema_version": 2, "runs": runs, "preflight": [], "verdict": None}


def preflight_64(template: dict[str, Any], job: int, rng: random.Random) -> dict[str, Any]:
    doc = copy.deepcopy(template)
    node = template["nodes"]["node1"]
    doc["job_id"] = str(job)
    doc["measured_at"] = f"2026-{1 + (job // 28) % 12:02d}-{1 + job % 28:02d}T06:00:00+00:00"
    doc["cluster"] = "bench"
    nodes = {}
    for n in range(64):
        entry = copy.deepcopy(node)
        devices = [400 * (1 + rng.gauss(0, 0.01)) for _ in range(8)]
        entry["matmul_tflops"] = devices
        entry["checks"]["matmul"]["measured"] = statistics.median(devices)
        entry["facts"]["gpu_serials"] = ",".join(f"16509240{n:03d}{d}" for d in range(8))
        nodes[f"node{n:02d}"] = entry
    doc["nodes"] = nodes
    all_nodes = [c for c in template["bandwidth"] if c["scope"] == "all nodes"]
    within = next(c for c in all_nodes if c["collective"] == "all_reduce")
    doc["bandwidth"] = all_nodes + [
        {
            **within,
            "scope": f"within node{n:02d}",
            "ranks": 8,
            "points": [{**p, "busbw_gbps": p["busbw_gbps"] * (1 + rng.gauss(0, 0.01))} for p in within["points"]],
        }
        for n in range(64)
    ]
    doc["failures"] = []
    doc["status"] = "pass"
    return doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--postgres", default=None, help="also measure a PostgreSQL store at this URL (an empty database)")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="history-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    template = real_run(workdir)
    preflight = json.loads(gzip.decompress((DATA / "preflight-3node-healthy.json.gz").read_bytes()))
    targets = [("sqlite", str(workdir / "results.sqlite"))] + ([("postgresql", args.postgres)] if args.postgres else [])
    for backend, url in targets:
        store = open_store(url)
        t0 = time.perf_counter()
        history = Batch()
        history += batch_of_report(runs_report(template, 100_000, 1000, rng))
        for job in range(100):
            history += batch_of_preflight(preflight_64(preflight, 5000 + job, rng))
        store.write(history)
        filled = time.perf_counter() - t0
        counts = history.counts()
        print(
            f"{backend}: filled with {counts['runs']} runs, {counts['preflights']} preflights of 64 nodes, "
            f"{counts['figures']:,} node figures in {filled:.1f} s"
        )
        seconds = []
        for r in range(args.repeats):
            doc = runs_report(template, 200_000 + 1000 * r, 100, rng)
            t0 = time.perf_counter()
            store.write(batch_of_report(doc))
            seconds.append(time.perf_counter() - t0)
        store.close()
        print(
            f"{backend}: a report of 100 runs stored in {statistics.median(seconds):.3f} s "
            f"(median of {args.repeats}: {', '.join(f'{s:.3f}' for s in seconds)}; target < 2 s)"
        )
        for plots in (True, False):
            seconds = []
            for _ in range(args.repeats):
                cmd = [
                    sys.executable,
                    "-m",
                    "test_case.history",
                    "show",
                    "--store",
                    url,
                    "--cluster",
                    "bench",
                    "--out",
                    str(workdir / "history"),
                ] + ([] if plots else ["--no-plots"])
                t0 = time.perf_counter()
                done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                seconds.append(time.perf_counter() - t0)
                if done.returncode not in (0, 3):
                    raise SystemExit(done.stderr)
            pngs = len(list((workdir / "history").glob("*.png")))
            what = f"with its {pngs} PNGs" if plots else "--no-plots"
            print(
                f"{backend}: history show of 1,300 runs and 64 nodes, {what}: {statistics.median(seconds):.2f} s "
                f"(median of {args.repeats}: {', '.join(f'{s:.2f}' for s in seconds)}; target < 5 s)"
            )


if __name__ == "__main__":
    main()
