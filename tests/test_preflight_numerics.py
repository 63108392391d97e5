"""The numerical agreement check (`test_case.preflight.numerics`): its judgement on made-up results,
and three real preflight workers on this machine, one of them forced onto torch's scalar CPU path
(``ATEN_CPU_CAPABILITY=default``, which the check cannot pin from inside the process): its digests
differ, and it is the one named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from test_case.preflight.numerics import WORKLOADS, agreement_checks
from test_case.preflight.records import DeviceNumerics, NumericsResult, numerics_record
from tests.conftest import REPO_ROOT

DRAIN = "drain {node}"
KIND = "CPU x, torch 2.7.0, CUDA none"


def device(host: str, rank: int, digest: str = "aa", kind: str = KIND, step: str = "bb") -> DeviceNumerics:
    results = [NumericsResult("matmul_chain", digest * 32, 1.0), NumericsResult("training_step", step * 32, 2.0)]
    return DeviceNumerics(host, rank, "cpu", kind, "AVX2", results)


def test_the_device_outside_the_majority_of_its_kind_is_named_and_the_others_pass() -> None:
    checks = agreement_checks([device("n1", 0), device("n2", 1), device("n3", 2, digest="cc")], DRAIN)
    assert (checks["n1"].status, checks["n2"].status) == ("pass", "pass")
    bad = checks["n3"]
    assert (bad.status, bad.measured, bad.finding_class) == ("fail", "differs: rank 2", "drain")
    assert bad.evidence.startswith("rank 2 (cpu, CPU path AVX2): matmul_chain sha256 cccccccccccccccc where 2 of")
    assert "training_step" not in bad.evidence and bad.action.endswith("drain n3")


def test_both_workloads_are_compared() -> None:
    checks = agreement_checks([device("n1", 0), device("n2", 1), device("n3", 2, step="dd")], DRAIN)
    assert checks["n3"].status == "fail" and "training_step sha256 dddd" in checks["n3"].evidence
    assert checks["n1"].detail.startswith(f"{', '.join(WORKLOADS)} bit for bit: cpu against 2 other device(s)")


def test_two_devices_that_differ_are_both_failed_and_neither_is_blamed() -> None:
    checks = agreement_checks([device("n1", 0), device("n2", 1, digest="cc")], DRAIN)
    assert [c.status for c in checks.values()] == ["fail", "fail"]
    assert all("none is the most common, so no device can be named" in c.evidence for c in checks.values())


def test_devices_of_other_kinds_are_not_compared_with_each_other() -> None:
    other = "CPU y, torch 2.7.0, CUDA none"
    checks = agreement_checks([device("n1", 0), device("n2", 1), device("n3", 2, digest="cc", kind=other)], DRAIN)
    assert [c.status for c in checks.values()] == ["pass"] * 3
    assert "only device of its kind (CPU y" in checks["n3"].detail


def test_a_host_with_several_devices_names_each_one_that_differs() -> None:
    devices = [device("n1", r) for r in range(4)] + [device("n2", 4 + r, digest="cc" if r else "aa") for r in range(4)]
    checks = agreement_checks(devices, DRAIN)
    assert checks["n1"].status == "pass" and checks["n2"].measured == "differs: rank 5, rank 6, rank 7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_on_another_cpu_path_is_named_by_real_preflight_workers(tmp_path: Path) -> None:
    port, world = free_port(), 3
    workers = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1",
            "PREFLIGHT_DEVICE": "cpu",
        }
        if rank == 2:
            env["ATEN_CPU_CAPABILITY"] = "default"  # torch's scalar kernels: other roundings than AVX2's
        cmd = [sys.executable, "-m", "test_case.preflight", "worker", "--parts", str(tmp_path), "--max-bytes", "65536"]
        workers.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env))
    assert [w.wait(timeout=240) for w in workers] == [0] * world
    devices = [numerics_record(json.loads((tmp_path / f"rank-{r}.json").read_text())["numerics"]) for r in range(world)]
    # the two workers on the default path agree bit for bit, the third differs in both workloads
    assert [d.cpu_capability for d in devices][2] == "NO AVX" and devices[0].cpu_capability != "NO AVX"
    assert devices[0].results == devices[1].results
    assert all(a.digest != b.digest for a, b in zip(devices[0].results, devices[2].results, strict=True))
    for d in devices:  # one host here: each worker stands for a node of its own
        d.host = f"node{d.rank + 1}"
    checks = agreement_checks(devices, DRAIN)
    assert (checks["node1"].status, checks["node2"].status, checks["node3"].status) == ("pass", "pass", "fail")
    assert checks["node3"].evidence.startswith("rank 2 (cpu, CPU path NO AVX): matmul_chain sha256 ")
    assert "; rank 2 (cpu, CPU path NO AVX): training_step sha256 " in checks["node3"].evidence
    print(checks["node3"].evidence)
