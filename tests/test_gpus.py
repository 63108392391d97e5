"""GPUs per node, agreed before any rank starts (test_case/training/gpus.py): each node's counts
from the driver's folder, ``nvidia-smi -L`` and Slurm's allocation; the node check that stops a job
whose GPUs were not asked for, lost one, or differ between nodes. ``nvidia-smi -L`` is a stand-in
on PATH that prints the lines recorded from an 8x H100 node (../shared/gpu-outputs/nvidia-smi_L_h100x8.txt)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.training.gpus import NodeGpus, agreement_problems, node_gpus, node_problems, read_records, record
from tests.conftest import REPO_ROOT

LISTED = (REPO_ROOT.parent / "shared" / "gpu-outputs" / "nvidia-smi_L_h100x8.txt").read_text().splitlines()


def stand_in_smi(folder: Path, lines: list[str]) -> Path:
    """An ``nvidia-smi`` that prints ``lines`` for ``-L`` (and "No devices were found", exit 6, for none)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "listed.txt").write_text("".join(f"{line}\n" for line in lines))
    none = 'echo "No devices were found"; exit 6'
    (folder / "nvidia-smi").write_text(
        f"#!/usr/bin/env bash\nif [[ ! -s {folder}/listed.txt ]]; then {none}; fi\ncat {folder}/listed.txt\n"
    )
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def driver_folder(root: Path, n: int) -> Path:
    """What /proc/driver/nvidia/gpus holds: one folder per GPU, by PCI address."""
    for i in range(n):
        (root / f"0000:{0x19 + i:02x}:00.0").mkdir(parents=True)
    return root


def test_a_node_counts_what_it_has_sees_and_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tools = stand_in_smi(tmp_path / "bin", LISTED)
    monkeypatch.setenv("PATH", f"{tools}:{os.environ['PATH']}")
    driver = driver_folder(tmp_path / "driver", 8)
    assert node_gpus("gpu-1", {}, driver) == NodeGpus("gpu-1", 8, 8, None)
    assert node_gpus("gpu-1", {"SLURM_GPUS_ON_NODE": "8"}, driver).trains_on == 8
    assert node_problems(NodeGpus("gpu-1", 8, 8, 8)) == [] and node_problems(NodeGpus("cpu-1", 0, 0, None)) == []

    # where Slurm confines devices and the job asked for none: the driver lists 8, nvidia-smi none
    stand_in_smi(tmp_path / "bin", [])
    hidden = node_gpus("gpu-1", {}, driver)
    assert hidden == NodeGpus("gpu-1", 8, 0, None)
    (problem,) = node_problems(hidden)
    assert problem.startswith("gpu-1 has 8 GPU(s) and this job sees none: Slurm gives a job only the GPUs it asks")
    assert "submit with --gpus-per-node=8 (3.acceptance.sh ... -- --gpus-per-node=8)" in problem

    # Slurm gave 8, one fell off the bus: nvidia-smi lists 7
    stand_in_smi(tmp_path / "bin", LISTED[:7])
    (problem,) = node_problems(node_gpus("gpu-1", {"SLURM_GPUS_ON_NODE": "8"}, driver))
    assert problem.startswith("gpu-1: Slurm gave this job 8 GPU(s) and nvidia-smi lists 7: a GPU is missing")
    assert "sbatch --exclude=gpu-1" in problem


def test_the_nodes_agree_and_the_odd_one_names_itself(tmp_path: Path) -> None:
    folder = tmp_path / "gpus"
    for host, n in (("gpu-1", 8), ("gpu-2", 7), ("gpu-3", 8)):
        record(folder, NodeGpus(host, 8, n, None))
    assert sorted(p.name for p in folder.iterdir()) == ["gpu-1.json", "gpu-2.json", "gpu-3.json"]  # no .tmp left
    records, missing = read_records(folder, ["gpu-1", "gpu-2", "gpu-3"])
    assert missing == [] and [r.trains_on for r in records] == [8, 7, 8]
    assert agreement_problems(records, [], "gpu-1") == agreement_problems(records, [], "gpu-3") == []
    (problem,) = agreement_problems(records, [], "gpu-2")
    assert problem.startswith("gpu-2 would train on 7 GPU(s), the other 2 node(s) on 8: every node must train on")
    # two nodes that differ: the one with fewer GPUs is the odd one
    pair = [NodeGpus("a", 8, 8, None), NodeGpus("b", 8, 6, None)]
    assert agreement_problems(pair, [], "a") == [] and len(agreement_problems(pair, [], "b")) == 1
    # a node that wrote nothing (its node check stopped first)
    records, missing = read_records(folder, ["gpu-1", "gpu-9"], wait_s=0.3)
    assert missing == ["gpu-9"]
    assert agreement_problems(records, missing, "gpu-1")[0].startswith("no GPU count from gpu-9 in 120 s")


def test_the_node_check_of_a_node_with_fewer_gpus_stops_the_job(
    tmp_path: Path, mds_root: Path, demo_assets: tuple[Path, Path]
) -> None:
    """`launch node-check` as the batch script runs it on node2 of a 2-node job, node1 having written 8."""
    save_root = tmp_path / "ckpt"
    slurm = {
        "SLURM_JOB_ID": "41",
        "SLURM_JOB_NAME": "mpt-train",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURMD_NODENAME": "node2",
    }
    folder = save_root / "mpt-train-41" / "heartbeats" / "start0" / "gpus-job41"
    record(folder, NodeGpus("node1", 8, 8, None))
    tools = stand_in_smi(tmp_path / "bin", LISTED[:7])
    env = {
        "PATH": f"{tools}:/usr/bin:/bin",
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(demo_assets[1]),
        "SAVE_ROOT": str(save_root),
        **slurm,
    }
    out = subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", "node-check", "mpt-tiny-cpu"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.startswith("launch: error: node 1: node2 would train on 7 GPU(s), the other 1 node(s) on 8")
    assert json.loads((folder / "node2.json").read_text()) == {
        "host": "node2",
        "driver": 0,
        "visible": 7,
        "allocated": None,
    }
    # node1's own check, with the same 8 as node2 would have had: ready
    record(folder, NodeGpus("node2", 0, 8, None))
    stand_in_smi(tmp_path / "bin", LISTED)
    ok = subprocess.run(
        [sys.executable, "-m", "test_case.training.launch", "node-check", "mpt-tiny-cpu"],
        cwd=REPO_ROOT,
        env={**env, "SLURM_NODEID": "0", "SLURMD_NODENAME": "node1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        ok.returncode == 0 and ok.stdout.strip() == "launch: node 0 (" + os.uname().nodename + "): ready, 8 GPU(s)"
    ), ok.stdout + ok.stderr


def test_the_preflight_fails_a_gpu_node_whose_gpus_the_job_was_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_case.preflight.node_checks import gpu_checks

    driver = driver_folder(tmp_path / "driver", 8)
    monkeypatch.setenv("PATH", f"{stand_in_smi(tmp_path / 'bin', [])}:{os.environ['PATH']}")
    checks, names = gpu_checks({"SLURMD_NODENAME": "gpu-1"}, driver)
    check = checks["gpu_count"]
    assert (check.status, check.measured, check.expected, names) == ("fail", 0, 8, [])  # it passed as a CPU node
    assert "submit with --gpus-per-node=8" in check.action
    stand_in_smi(tmp_path / "bin", LISTED)
    checks, names = gpu_checks({"SLURMD_NODENAME": "gpu-1", "SLURM_GPUS_ON_NODE": "8"}, driver)
    assert checks["gpu_count"].status == "pass" and names == ["NVIDIA H100 80GB HBM3"] * 8
    assert gpu_checks({}, tmp_path / "no-driver")[0]["gpu_count"].expected == 8  # no driver folder: nvidia-smi's
    stand_in_smi(tmp_path / "bin", [])
    assert gpu_checks({}, tmp_path / "no-driver")[0]["gpu_count"].detail.startswith("CPU node")
