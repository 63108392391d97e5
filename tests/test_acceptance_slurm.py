"""Acceptance sweeps end to end on the 2-node default partition of the local Slurm cluster
(tests/local_slurm.py).

``slurm-scripts/3.acceptance.sh`` submits the tiny model over 1 and 2 nodes, and ``report.py``
judges the sweep from its manifest: a healthy cluster PASSes with every job accounted for; with
node2 given a quarter of a core once the 2-node job trains (a sweep of that job alone, no preflight) the sweep FAILs
naming node2, and the 2-node run's own rank timing names node2 as its straggler (the per-node
table); with node2's ``/dev/shm`` nearly full the preflight fails, Slurm cancels every training job, and the verdict
says why. The emulated nodes share this machine's two cores, so a 2-node run gets less of a core
per rank than the 1-node run: the sweeps pass ``--scaling-threshold 0.5`` (the default, 0.90, is
for real nodes), and each rank runs one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from test_case.acceptance.manifest import SweepManifest
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import summarise_run
from test_case.report.stragglers import STRAGGLER_RATIO
from test_case.timing_events import RankTimes
from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SWEEP = ["--models", "mpt-tiny-cpu", "--scaling-threshold", "0.5"]
BOTH = ["--nodes", "1,2"]  # the slow-node sweep runs the 2-node job alone: its straggler needs no 1-node run
OVERRIDES = [
    "--override",
    "max_duration=30ba",
    "--override",
    "eval_interval=1000ba",
    "--override",
    "save_interval=1000ba",
]


@pytest.fixture
def settings(mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path) -> dict[str, str]:
    expectations = tmp_path / "expectations.json"
    expectations.write_text(json.dumps({"save_root_min_free_gb": 1}))  # this machine's disk is small
    (tmp_path / "logs").mkdir()
    return {
        "LOG_DIR": str(tmp_path / "logs"),
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(demo_assets[1]),
        "SAVE_ROOT": str(tmp_path / "ckpt"),
        # the emulated nodes share two cores: healthy peers' matmuls contend (tests/test_preflight_slurm.py)
        "PREFLIGHT_ARGS": f"--expectations {expectations} --timeout 120 --peer-tolerance 0.4",
        "OMP_NUM_THREADS": "1",
    }


def throttled_once_training(
    cluster: LocalSlurmCluster, logs: Path, manifest: SweepManifest, node: str, fraction: float
) -> contextlib.AbstractContextManager[None]:
    """Wait for the sweep's 2-node job to train its first batch, then give ``node`` (its processes
    already running too) ``fraction`` of a core: a node slowed from the start would also stretch
    the job's start-up by minutes, which proves nothing more."""
    (job,) = [j for j in manifest.train_jobs if j.nodes == 2]
    deadline = time.monotonic() + 600
    while not any("0: [batch=1/" in log.read_text() for log in logs.glob(f"*_{job.job_id}.out")):
        assert time.monotonic() < deadline, f"job {job.job_id} trained no batch in 600 s"
        assert cluster.job_info(job.job_id)["JobState"] in ("PENDING", "RUNNING"), cluster.job_info(job.job_id)
        time.sleep(0.2)
    return cluster.cpu_quota(node, fraction, running_too=True)


def sweep(
    cluster: LocalSlurmCluster, settings: dict[str, str], *args: str, slow_node: tuple[str, float] | None = None
) -> tuple[SweepManifest, dict[str, Any], str]:
    """Submit a sweep with the script, wait for every job, report: (manifest, report.json, report's
    stdout). ``slow_node``: (node, fraction of a core) it gets once the 2-node job trains."""
    env = {**cluster.env, **settings}
    out = subprocess.run(
        ["bash", "slurm-scripts/3.acceptance.sh", *SWEEP, *OVERRIDES, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    logs = Path(settings["LOG_DIR"])
    (path,) = logs.glob("acceptance_*.json")
    manifest = SweepManifest.read(path)
    with contextlib.ExitStack() as stack:
        if slow_node is not None:
            stack.enter_context(throttled_once_training(cluster, logs, manifest, *slow_node))
        for job in manifest.jobs:
            cluster.wait(job.job_id, timeout=900)
    report = subprocess.run(
        [sys.executable, "report.py", str(logs), "--out", str(logs / "report")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(report.stdout)  # the closing notes quote the verdicts
    doc = json.loads((logs / "report" / "report.json").read_text())
    expected = 4 if doc["verdict"]["status"] == "FAIL" else 0
    assert report.returncode == expected, report.stdout + report.stderr
    return manifest, doc, report.stdout


def test_a_healthy_sweep_passes_with_every_job_accounted_for(
    cluster: LocalSlurmCluster, settings: dict[str, str]
) -> None:
    manifest, doc, stdout = sweep(cluster, settings, *BOTH)
    verdict = doc["verdict"]
    assert verdict["status"] == "PASS", verdict["reasons"]
    assert manifest.preflight_job_id is not None and verdict["nodes"] == {"node1": "pass", "node2": "pass"}
    jobs = {j["job_id"]: j for j in verdict["jobs"]}
    assert set(jobs) == {j.job_id for j in manifest.train_jobs} and len(jobs) == 2
    assert all(j["status"] == "completed" and j["tokens_per_sec_per_device"] > 0 for j in jobs.values())
    # what Slurm shows, for every job: before, slurm_state was None and restarts the log's only
    assert [(j["slurm_state"], j["restarts"]) for j in jobs.values()] == [("COMPLETED", 0)] * 2, jobs
    one, two = sorted(jobs.values(), key=lambda j: j["nodes"])
    assert one["scaling_efficiency"] == 1.0 and two["scaling_efficiency"] >= 0.5
    # weak scaling: the 2-node job trained twice the global batch of the 1-node job
    assert [j.global_train_batch_size for j in manifest.train_jobs] == [16, 32]
    runs = {r["job_id"]: r for r in doc["runs"]}
    assert [runs[j.job_id]["global_batch_size"] for j in manifest.train_jobs] == [16, 32]
    assert f"acceptance sweep {manifest.sweep_id}: PASS (2/2 training jobs completed)" in stdout
    assert (Path(settings["LOG_DIR"]) / "report" / "scaling-mpt-tiny-cpu-cpu-1pn.png").is_file()


def test_a_sweep_with_a_slow_node_fails_naming_it(cluster: LocalSlurmCluster, settings: dict[str, str]) -> None:
    manifest, doc, stdout = sweep(cluster, settings, "--nodes", "2", "--no-preflight", slow_node=("node2", 0.25))
    assert [j.nodes for j in manifest.train_jobs] == [2]
    verdict = doc["verdict"]
    assert verdict["status"] == "FAIL" and verdict["nodes"].get("node2") == "straggler", verdict
    assert any("straggler rank 1 on node2" in r and "--exclude=node2" in r for r in verdict["reasons"])
    assert "FAIL: " in stdout and "node2" in stdout

    # the run's own rank timing names node2, the report's per-node table and the callback's lines alike
    (two_nodes,) = [j for j in manifest.train_jobs if j.nodes == 2]
    assert {r["job_id"]: r["status"] for r in doc["runs"]}[two_nodes.job_id] == "completed"
    (log,) = Path(settings["LOG_DIR"]).glob(f"*_{two_nodes.job_id}.out")
    parsed = parse_log_file(log)
    summary = summarise_run(parsed)
    print(f"node2 at a quarter of a core: per-node compute (threshold {STRAGGLER_RATIO}x the median rank):")
    for n in summary.node_compute:
        print(f"  {n.node}: {n.median_compute_s:.4f} s/batch, {n.ratio_to_median:.2f}x, straggler={n.straggler}")
    (straggler,) = summary.stragglers
    assert (straggler.node, straggler.rank) == ("node2", 1)
    assert straggler.ratio_to_median > STRAGGLER_RATIO
    assert summary.node_compute[0].node == "node2" and summary.node_compute[0].straggler
    # Every full window of the callback (20 batches) names node2. The last one, of the 10 batches left,
    # is not judged: a quarter of a core's quota bites in bursts, and the short tail can fall between
    # them (node2 1.66x the median rank in batches 1-20, then 1.05x node1 in 21-30 once, 2026-12-06);
    # the run's straggler above is the median over all windows.
    windows = [e for _, e in parsed.timing_events if isinstance(e, RankTimes)]
    full = [w for w in windows if w.batches == 20]
    assert full and all(w.slowest_node == "node2" for w in full), windows


def test_a_sweep_whose_preflight_fails_trains_nothing_and_says_why(
    cluster: LocalSlurmCluster, settings: dict[str, str]
) -> None:
    with cluster.shm_filled("node2", 900):  # of the node's own 1 GiB /dev/shm
        manifest, doc, _ = sweep(cluster, settings, *BOTH)
    verdict = doc["verdict"]
    assert verdict["status"] == "FAIL" and verdict["nodes"]["node2"] == "fail", verdict
    assert any(r.startswith("preflight: node2: shm_free:") for r in verdict["reasons"])
    assert doc["runs"] == []  # no training job ran
    for job in manifest.train_jobs:
        (reason,) = [r for r in verdict["reasons"] if r.startswith(f"job {job.job_id} ")]
        assert "never ran because the preflight failed (Slurm: CANCELLED (DependencyNeverSatisfied))" in reason
