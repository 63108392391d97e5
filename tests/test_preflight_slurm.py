"""`0.preflight.sbatch` on the 3 nodes of the local Slurm cluster's partition ``three``
(tests/local_slurm.py): a healthy run passes with measured figures for every node; a node given a
tenth of a core for real (cgroup v1 ``cpu.cfs_quota_us`` on its slurmd, which its job steps inherit)
is named; a node whose own ``/dev/shm`` is nearly full is named with the reason."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SCRIPT = "slurm-scripts/0.preflight.sbatch"


@dataclass
class Preflight:
    job_id: str
    info: dict[str, str]
    log: str
    report: dict


@pytest.fixture(scope="module")
def settings(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    root = tmp_path_factory.mktemp("preflight")
    # this machine's disk may have little free space: ask for 1 GB on SAVE_ROOT, not the default 10
    expectations = root / "expectations.json"
    expectations.write_text(json.dumps({"save_root_min_free_gb": 1}))
    (root / "logs").mkdir()
    return {
        "PATH": os.environ["PATH"],
        "LOG_DIR": str(root / "logs"),
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(demo_assets[1]),
        "SAVE_ROOT": str(root / "ckpt"),
        "PREFLIGHT_ARGS": f"--expectations {expectations} --timeout 120",
    }


def run_preflight(cluster: LocalSlurmCluster, settings: dict[str, str]) -> Preflight:
    logs = Path(settings["LOG_DIR"])
    args = [f"--output={logs}/%x_%j.out", "--partition=three", "--nodes=3", SCRIPT]
    job = cluster.sbatch(args, cwd=REPO_ROOT, env=settings)
    info = cluster.wait(job, timeout=300)
    log = (logs / f"preflight_{job}.out").read_text()
    path = logs / f"preflight_{job}.json"
    assert path.is_file(), log[-3000:]
    return Preflight(job, info, log, json.loads(path.read_text()))


def test_a_healthy_cluster_passes_with_measured_figures_for_every_node(
    cluster: LocalSlurmCluster, settings: dict[str, str]
) -> None:
    # Three emulated nodes share two cores, so healthy peers' matmuls contend, unevenly: one was
    # measured 30 % below the median once. Judged at 40 % here; the throttled node below (a tenth of
    # a core) at the default 25 %.
    args = settings["PREFLIGHT_ARGS"] + " --peer-tolerance 0.4"
    run = run_preflight(cluster, {**settings, "PREFLIGHT_ARGS": args})
    print(run.log)  # the closing notes quote it
    assert (run.info["JobState"], run.info["ExitCode"]) == ("COMPLETED", "0:0"), run.log[-4000:]
    doc = run.report
    assert doc["status"] == "pass" and doc["failures"] == []
    assert sorted(doc["nodes"]) == cluster.partitions()["three"]
    for host, node in doc["nodes"].items():
        checks = node["checks"]
        assert node["status"] == "pass", (host, checks)
        assert checks["matmul"]["measured"] > 0 and checks["matmul"]["unit"] == "TFLOP/s"
        assert checks["fabric.pairs"]["measured"] > 0
        assert checks["shm_free"]["measured"] > 0.5 and checks["dataset.train_small"]["status"] == "pass"
        assert checks["tokenizer"]["status"] == "pass" and abs(checks["clock_offset"]["measured"]) < 1
        assert checks["same.torch"]["measured"] == checks["same.torch"]["expected"]
        assert checks["numerics"]["status"] == "pass" and "against 2 other device(s)" in checks["numerics"]["detail"]
    curves = {(b["collective"], b["scope"]): b for b in doc["bandwidth"]}
    for collective in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "sendrecv"):
        curve = curves[(collective, "all nodes")]
        assert curve["ranks"] == 3 and curve["backend"] == "gloo" and len(curve["points"]) == 5
        assert all(p["busbw_gbps"] > 0 and p["time_s"] > 0 for p in curve["points"])
        factor = {"all_reduce": 2 * 2 / 3, "sendrecv": 1.0}.get(collective, 2 / 3)
        p = curve["points"][-1]
        assert p["busbw_gbps"] == pytest.approx(p["algbw_gbps"] * factor, rel=1e-3)
    assert sorted(scope for _, scope in curves if scope.startswith("pair ")) == [
        "pair node1 node2",
        "pair node1 node3",
        "pair node2 node3",
    ]
    assert doc["wall_s"] < 120
    assert f"preflight: job {run.job_id}: PASS (3 node(s)" in run.log


def test_a_node_given_a_tenth_of_a_core_is_named(cluster: LocalSlurmCluster, settings: dict[str, str]) -> None:
    # A tenth of a core: at a fifth, node3's matmul was 69-77 % below its peers but its pairs only 40-63 %
    # (node1-node3 0.667 GB/s against node1-node2's 1.11 once, 2026-12-06: at the edge of the 25 % that
    # names a node, so the pair sweep named the link node2-node3 instead): a 4 MB all_reduce fits
    # within a fifth of a core's 20 ms per 100 ms period often enough. A tenth leaves each pair too little.
    # The all-node sweep stops at 4 MiB, the pairs' size: its 16 MiB step, at a tenth of a core, only
    # added time (77 s for the test against 33-41 s at a fifth).
    short = {**settings, "PREFLIGHT_ARGS": settings["PREFLIGHT_ARGS"] + " --max-bytes 4194304"}
    with cluster.cpu_quota("node3", 0.1):
        run = run_preflight(cluster, short)
    print(run.log)
    assert (run.info["JobState"], run.info["ExitCode"]) == ("FAILED", "1:0"), run.log[-4000:]
    doc = run.report
    named = {(f["node"], f["check"]) for f in doc["failures"]}
    assert ("node3", "matmul") in named and ("node3", "fabric.pairs") in named, doc["failures"]
    assert {node for node, _ in named} == {"node3"}, doc["failures"]
    (matmul,) = [f for f in doc["failures"] if f["check"] == "matmul"]
    assert "scontrol update nodename=node3 state=drain" in matmul["action"] and "--exclude=node3" in matmul["action"]
    assert "preflight: FAIL node3: matmul: measured" in run.log
    # and why: the host scan finds the cgroup cap above the node's tasks (class drain, its file as evidence)
    (cap,) = [f for f in doc["failures"] if f["check"] == "health.cpu[node]"]
    detail = doc["nodes"]["node3"]["checks"]["health.cpu[node]"]["detail"]
    assert cap["finding_class"] == "drain" and detail.startswith("capped at 0.1 core(s) of "), (cap, detail)
    assert cap["evidence"].endswith("cpu.cfs_quota_us: cpu.cfs_quota_us 10000 per cpu.cfs_period_us 100000"), cap


def on_another_cpu_path(node: str, settings: dict[str, str], folder: Path) -> dict[str, str]:
    """``settings`` with ``node``'s tasks started on torch's scalar CPU path (``ATEN_CPU_CAPABILITY=default``,
    as a node with another module or image would): a ``VENV`` whose activation puts a ``python`` first
    on PATH that sets it when the hostname is ``node`` (each emulated node has its own)."""
    real = Path(sys.executable).parent
    (folder / "bin").mkdir(parents=True)
    shim = folder / "bin" / "python"
    shim.write_text(
        f'#!/bin/bash\nif [[ "$(hostname)" == {node} ]]; then export ATEN_CPU_CAPABILITY=default; fi\n'
        f'exec {real}/python "$@"\n'
    )
    shim.chmod(0o755)
    (folder / "bin" / "activate").write_text(f'source {real}/activate\nexport PATH="{folder}/bin:$PATH"\n')
    return {**settings, "VENV": str(folder)}


def test_a_node_with_its_dev_shm_nearly_full_and_another_cpu_path_is_named_for_both(
    cluster: LocalSlurmCluster, settings: dict[str, str], tmp_path: Path
) -> None:
    # Judged at a 40 % peer tolerance, as the healthy run: this test is about /dev/shm and the numbers,
    # and at the default 25 % a healthy node3's matmul was once named here (a CI run of 2026-12-06: below
    # 0.0471 TFLOP/s, 25 % under the median of 0.0628, three emulated nodes sharing two cores). The
    # default still names a node slowed for real: test_a_node_given_a_tenth_of_a_core_is_named.
    loose = {**settings, "PREFLIGHT_ARGS": settings["PREFLIGHT_ARGS"] + " --peer-tolerance 0.4"}
    with cluster.shm_filled("node2", 900):
        run = run_preflight(cluster, on_another_cpu_path("node2", loose, tmp_path / "venv"))
    assert (run.info["JobState"], run.info["ExitCode"]) == ("FAILED", "1:0"), run.log[-4000:]
    failures = run.report["failures"]
    # node2 and only node2 is named, for its /dev/shm and its numbers; on 2 busy cores, filling
    # /dev/shm can also leave node2's matmul a few % behind its peers' at that moment, which the
    # report then names too
    assert {f["node"] for f in failures} == {"node2"}, failures
    (numbers,) = [f for f in failures if f["check"] == "numerics"]
    assert (numbers["measured"], numbers["finding_class"]) == ("differs: rank 1", "drain"), numbers
    assert numbers["evidence"].startswith("rank 1 (cpu, CPU path NO AVX): matmul_chain sha256 "), numbers
    assert "where 2 of the 3 devices of its kind have" in numbers["evidence"]
    assert "state=drain" in numbers["action"]
    (failure,) = [f for f in failures if f["check"] == "shm_free"]
    assert (failure["node"], failure["check"], failure["expected"]) == ("node2", "shm_free", ">= 0.5")
    assert failure["measured"] < 0.15 and "/dev/shm" in failure["action"]
    assert run.report["nodes"]["node1"]["status"] == "pass" and run.report["nodes"]["node3"]["status"] == "pass"


def test_a_slowed_link_is_named_as_the_link_and_neither_of_its_nodes_fails(
    cluster: LocalSlurmCluster, settings: dict[str, str]
) -> None:
    """node2 <-> node3 limited to 100 Mbit/s (about 12 MB/s, against about 500 MB/s between the
    others here: a 40x margin over the 50 % link tolerance); 1 MiB messages at most, so that the
    all-node sweep, whose ring crosses the link too, stays short."""
    # Judged at a 50 % peer tolerance: with the link left out, node2 and node3 each keep one pair, and while
    # the link is shaped the node1-node2 pair measured 0.34-0.56 GB/s against node1-node3's 0.62-0.95 on
    # this machine (three runs, 2026-12-06; 0.60 against 0.66 on an earlier one), so one pair alone is
    # 26-45 % below the median node. The default 25 % names a node slowed for real (a tenth of a core:
    # test_a_node_given_a_tenth_of_a_core_is_named); the link, 40x slower, is judged by the link tolerance.
    args = settings["PREFLIGHT_ARGS"] + " --max-bytes 1048576 --peer-tolerance 0.5"
    short = {**settings, "PREFLIGHT_ARGS": args}
    with cluster.slowed_link("node2", "node3", 100):
        run = run_preflight(cluster, short)
    assert (run.info["JobState"], run.info["ExitCode"]) == ("FAILED", "1:0"), run.log[-4000:]
    assert run.report["failures"] == [], run.report["failures"]  # no node failed a check
    ((link),) = run.report["slow_links"]
    assert (link["a"], link["b"], link["how"]) == ("node2", "node3", "all pairs"), link
    pairs = {
        b["scope"]: b["points"][0]["busbw_gbps"] for b in run.report["bandwidth"] if b["scope"].startswith("pair ")
    }
    assert pairs["pair node2 node3"] < 0.1 * min(pairs["pair node1 node2"], pairs["pair node1 node3"]), pairs
    assert "preflight: FAIL link node2 - node3 (all pairs): busbw " in run.log
    print(f"slowed link: pairs busbw GB/s {pairs}")
