"""Host health findings (test_case.health): the classes, and tools read from PATH."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from test_case.health.findings import Finding, action, run_tool, worst
from tests.conftest import REPO_ROOT


def test_the_worst_class_wins_and_each_class_says_what_to_do() -> None:
    found = [Finding("xid", "GPU 0", "monitor", "x"), Finding("pcie", "GPU 1", "drain", "y")]
    assert worst(found) == "drain" and worst([]) == "healthy"
    assert "scontrol update nodename=node7 state=drain" in action("drain", "node7")
    assert "nvidia-smi -r" in action("reset", "node7") and action("healthy", "node7") == ""


def test_a_tool_is_read_from_path_and_a_missing_one_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "lspci"
    tool.write_text("#!/bin/sh\necho recorded; exit 3\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = run_tool("lspci", "-vvv")
    assert out is not None and (out.returncode, out.stdout) == (3, "recorded\n")
    assert run_tool("no-such-tool-here") is None


GPU_OUTPUTS = Path(__file__).resolve().parent.parent.parent / "shared" / "gpu-outputs"


def fake_tools(folder: Path) -> str:
    """A PATH of recorded outputs (../shared/gpu-outputs, sources in its INDEX.md) standing in for the
    node's tools: dmesg (an Xid 79 from wilicc/gpu-burn#1), lspci (gpud's H100 HGX, a downgraded
    switch port), ibstat (gpud's H100 node, 3 Ethernet ports down), nvidia-smi (gpud's A100 nvlink -s,
    stas00's H100 nvlink -e, gpud's H100 -q with driver 535.183.01)."""
    folder.mkdir()
    tools = {
        "dmesg": f"/bin/cat {GPU_OUTPUTS / 'dmesg_xid79_fallen-off-bus_aer_fragment.log'}",
        "lspci": f"/bin/cat {GPU_OUTPUTS / 'lspci-vvv_h100-hgx_switch-downgraded_gpu_cx7_excerpt.txt'}",
        "ibstat": f"/bin/cat {GPU_OUTPUTS / 'ibstat_h100-node_ib400-active_eth-ports-down.txt'}",
        "nvidia-smi": (
            f'case "$*" in "nvlink -s") /bin/cat {GPU_OUTPUTS / "nvidia-smi_nvlink-s_a100x8.txt"};; '
            f'"nvlink -e") /bin/cat {GPU_OUTPUTS / "nvidia-smi_nvlink-e_h100_fragment.txt"};; '
            f'"-q") /bin/cat {GPU_OUTPUTS / "nvidia-smi_q_h100x8_driver535.183.01.txt"};; *) exit 9;; esac'
        ),
    }
    for name, body in tools.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return str(folder)


def test_the_preflight_turns_each_finding_into_a_check_with_its_class_and_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_case.preflight.host_health import host_health_checks
    from test_case.preflight.records import Check, NodeResult, PreflightReport

    monkeypatch.setenv("PATH", fake_tools(tmp_path / "bin"))
    checks, facts = host_health_checks("node7")
    gpu = checks["health.xid[GPU 0000:02:00.0]"]  # fallen off the bus: NVIDIA's RESTART_BM
    assert (gpu.status, gpu.finding_class, gpu.measured) == ("fail", "reboot", "reboot")
    assert gpu.evidence == "[74889.644138] NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus."
    assert "reboot node7" in gpu.action and "Xid 79" in gpu.detail
    assert (checks["health.xid"].status, checks["health.xid"].measured) == ("pass", "reboot")
    switch = checks["health.pcie[PCIe switch port 17:03.0]"]  # downgraded, nothing of ours below it
    assert (switch.status, switch.finding_class) == (
        "pass",
        "monitor",
    ) and "Speed 16GT/s (downgraded)" in switch.evidence
    down = sorted(k for k in checks if k.startswith("health.infiniband["))
    assert down == [f"health.infiniband[mlx5_{n} port 1]" for n in (2, 7, 8)]  # Ethernet ports: monitor
    assert all(checks[k].status == "pass" and checks[k].finding_class == "monitor" for k in down)
    assert (checks["health.nvlink"].measured, checks["health.gpu_identity"].measured) == ("healthy", "healthy")
    assert facts["gpu_identity.driver_version"] == "535.183.01"
    assert facts["gpu_identity.vbios_version[NVIDIA H100 80GB HBM3]"] == "96.00.74.00.01"
    failing = sorted(k for k, c in checks.items() if c.status == "fail")
    assert failing == ["health.xid[GPU 0000:02:00.0]"]
    # the class and the evidence travel in preflight_<job>.json and read back
    report = PreflightReport("7", "fail", {"node7": NodeResult("fail", 0, checks)}, [], [])
    back = PreflightReport.from_dict(json.loads(report.to_json()))
    assert back.nodes["node7"].checks["health.xid[GPU 0000:02:00.0]"] == gpu
    assert Check("pass", 1, 1).finding_class == ""  # a check of another kind has none


def test_without_the_tools_every_reader_is_skipped_with_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_case.preflight.cli import build_parser
    from test_case.preflight.host_health import host_health_checks

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    checks, facts = host_health_checks("node7", dcgm_level=1)
    assert {k: c.status for k, c in checks.items()} == {
        "health.xid": "skip",
        "health.pcie": "skip",
        "health.infiniband": "skip" if not Path("/sys/class/infiniband").exists() else "pass",
        "health.nvlink": "skip",
        "health.dcgm": "skip",
        "health.gpu_identity": "skip",
        "health.cpu": "pass",  # read from /proc and the cgroup files: no tool needed
    }
    assert "kernel log not readable" in checks["health.xid"].detail and facts == {}
    # PREFLIGHT_ARGS goes to both steps: the verdict accepts the node's --dcgm-level too
    assert build_parser().parse_args(["verdict", "--parts", "p", "--job-id", "1", "--out", "o", "--dcgm-level", "2"])


def test_the_node_check_runs_with_the_standard_library_alone_and_fails_a_node_to_reboot(tmp_path: Path) -> None:
    """``python3 -S``: no site-packages (no torch, numpy or anything of the venv), as on a bare host."""
    import subprocess
    import sys

    path = fake_tools(tmp_path / "bin")
    code = "import sys, runpy; sys.argv = ['health']; runpy.run_module('test_case.health', run_name='__main__')"
    env = {"PATH": path, "PYTHONPATH": str(REPO_ROOT), "SLURMD_NODENAME": "node7"}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "health: node7: xid: reboot (dmesg --time-format iso, 1 part(s))" in lines
    assert (
        "health: node7:   evidence: [74889.644138] NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus." in lines
    )
    assert lines[-1].startswith("health: node7: reboot: reboot node7, then run the preflight again")
    assert sum(line.startswith("health: node7: monitor: ") for line in lines) == 4  # 3 Ethernet ports, 1 switch port
    as_json = subprocess.run(
        [sys.executable, "-S", "-c", code.replace("['health']", "['health', '--json']")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(as_json.stdout)
    assert (doc["class"], doc["readers"]["pcie"]["read"], doc["facts"]["gpu_identity.driver_version"]) == (
        "reboot",
        True,
        "535.183.01",
    )
    healthy = subprocess.run(
        [sys.executable, "-S", "-c", code], env={**env, "PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert healthy.returncode == 0 and "health: node7: xid: skipped: kernel log not readable" in healthy.stdout


def test_a_health_finding_fails_the_node_in_the_verdict_with_its_evidence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdict's failure keeps the class and the evidence; the job log's summary prints them."""
    from test_case.preflight.cli import summary_lines
    from test_case.preflight.expectations import load
    from test_case.preflight.host_health import host_health_checks
    from test_case.preflight.records import NodePart, write_part
    from test_case.preflight.verdict import build_report

    monkeypatch.setenv("PATH", fake_tools(tmp_path / "bin"))
    checks, facts = host_health_checks("node7")
    (tmp_path / "parts").mkdir()
    write_part(tmp_path / "parts" / "node-node7.json", NodePart("node7", 0, checks, facts, [1.0]))
    report = build_report(tmp_path / "parts", ["node7"], "12", load(None))
    (failure,) = [f for f in report.failures if f.check.startswith("health.")]
    assert (failure.node, failure.check, failure.finding_class) == ("node7", "health.xid[GPU 0000:02:00.0]", "reboot")
    lines = summary_lines(report)
    evidence = (
        "preflight:   evidence (reboot): [74889.644138] NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus."
    )
    assert evidence in lines and report.status == "fail"
    # report.md: the failure with its class, and every finding of class monitor with what it rests on
    from test_case.report.layout import Bullets
    from test_case.report.records import Report
    from test_case.report.sections import preflight

    body = preflight(Report(preflight=[report])).body or ()
    (bullets,) = [b for b in body if isinstance(b, Bullets)]
    shown = "\n".join(bullets.items)
    assert "node7, health.xid[GPU 0000:02:00.0]: [reboot] reboot node7" in shown
    watched = [name for name, c in checks.items() if c.finding_class == "monitor" and "[" in name]
    assert watched and all(f"node7, {name}: [monitor] " in shown for name in watched), (watched, shown)


def test_dev_shm_below_half_free_is_a_node_to_reboot_with_its_figures(tmp_path: Path) -> None:
    from test_case.health import shm

    (well,) = shm.findings(tmp_path, min_free=0.0) or []
    assert (well.klass, well.check, well.subject) == ("healthy", "shm", str(tmp_path))
    (full,) = shm.findings(tmp_path, min_free=1.01) or []  # no folder is 101 % free
    assert full.klass == "reboot" and full.summary.startswith("only ") and "(at least 101% expected)" in full.summary
    assert full.evidence.startswith(f"{tmp_path}: ") and " GiB free of " in full.evidence
    assert shm.findings(tmp_path / "missing") is None


def test_the_drain_reason_names_the_worst_finding_and_fits_sinfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_case.health.drain import REASON_CHARS, drain, reason

    found = [
        Finding("pcie", "GPU 0000:19:00.0", "monitor", "x8 of x16"),
        Finding("xid", "GPU 0000:02:00.0", "reboot", "Xid 79: GPU has fallen off the bus " + "z" * 300),
    ]
    said = reason("reboot", found)
    assert said.startswith("mpt-health reboot: xid GPU 0000:02:00.0: Xid 79: GPU has fallen off the bus")
    assert len(said) == REASON_CHARS and said.endswith("...")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol: not a Slurm node
    assert drain("node7", said).startswith("not drained: scontrol show node node7 gave nothing")


def test_a_cgroup_cpu_cap_above_the_scan_is_found_in_v1_and_v2_and_the_tightest_wins(tmp_path: Path) -> None:
    """A /proc of our own (its cgroup and mountinfo files) over cgroup folders of our own: the parsing."""
    from test_case.health.cpu import cpu_cap, findings

    proc, v1, v2 = tmp_path / "proc", tmp_path / "v1", tmp_path / "v2"
    proc.mkdir()
    (proc / "mountinfo").write_text(
        f"30 25 0:26 / {v2} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
        f"33 25 0:29 / {v1} rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct\n"
        "34 25 0:30 / /sys/fs/cgroup/memory rw shared:13 - cgroup cgroup rw,memory\n"
    )
    (proc / "cgroup").write_text("4:memory:/x\n3:cpu,cpuacct:/slurm/node3\n0::/system.slice/slurmd.service\n")
    for folder, quota in ((v1 / "slurm", "150000"), (v1 / "slurm" / "node3", "-1")):
        folder.mkdir(parents=True)
        (folder / "cpu.cfs_quota_us").write_text(quota + "\n")
        (folder / "cpu.cfs_period_us").write_text("100000\n")
    (v2 / "system.slice" / "slurmd.service").mkdir(parents=True)
    (v2 / "system.slice" / "slurmd.service" / "cpu.max").write_text("max 100000\n")
    cap = cpu_cap(proc)  # node3's own folder has no quota (-1); its parent's 1.5 cores hold
    assert cap is not None and (cap.cores, cap.file) == (1.5, v1 / "slurm" / "cpu.cfs_quota_us")
    (v2 / "system.slice" / "cpu.max").write_text("20000 100000\n")  # tighter, in v2, two levels up
    cap = cpu_cap(proc)
    assert cap is not None and (cap.cores, cap.line) == (0.2, "20000 100000")
    (finding,) = findings(cap, usable=8)
    assert finding.klass == "drain" and finding.summary.startswith(f"capped at 0.2 core(s) of 8 usable by {v2}")
    assert [f.klass for f in findings(cpu_cap(proc), usable=2)] == ["drain"]
    assert [f.klass for f in findings(None, usable=2)] == ["healthy"]
    # content it does not expect is no cap, not a crash
    (v2 / "system.slice" / "cpu.max").write_text("garbage\n")
    (v1 / "slurm" / "cpu.cfs_quota_us").write_text("?\n")
    assert cpu_cap(proc) is None
    # in a container, the cgroup mount's root is the container's own cgroup: the path is taken below it
    (proc / "mountinfo").write_text(f"30 25 0:26 /kubepods/pod7 {v2} rw - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/kubepods/pod7/slurmd\n")
    (v2 / "slurmd").mkdir()
    (v2 / "slurmd" / "cpu.max").write_text("50000 100000\n")
    cap = cpu_cap(proc)
    assert cap is not None and (cap.cores, cap.file) == (0.5, v2 / "slurmd" / "cpu.max")


def test_a_reader_that_breaks_is_skipped_with_its_error_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from test_case.health import scan

    def broken() -> tuple[list[Finding] | None, str]:
        raise ValueError("invalid literal for int() with base 10: 'x'")

    monkeypatch.setitem(scan.READERS, "cpu", broken)
    result = scan.scan()
    assert result.readers["cpu"] == (
        None,
        "the cpu reader failed: ValueError: invalid literal for int() with base 10: 'x'",
    )
    assert result.readers["shm"][0] is not None  # read as before


def test_a_process_in_a_real_cgroup_with_a_fifth_of_a_core_is_a_node_to_drain(tmp_path: Path) -> None:
    """This machine's cgroup v1 cpu controller: the scan, started in a group of its own capped at 0.2 of
    a core (as the local cluster caps a node's slurmd), finds the cap and the file; outside, none."""
    from test_case.health.cpu import cpu_cap

    root = Path("/sys/fs/cgroup/cpu")
    if not (root / "cgroup.procs").exists() or cpu_cap() is not None:
        pytest.fail("this test needs cgroup v1's cpu controller at /sys/fs/cgroup/cpu and no cap above pytest")
    group = root / f"mpt-suite-test-scan-{os.getpid()}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("20000")
        scan = subprocess.run(
            ["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec python3 -S -m test_case.health --json"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        group.rmdir()
    doc = json.loads(scan.stdout)
    (finding,) = doc["readers"]["cpu"]["findings"]
    assert (scan.returncode, doc["class"], finding["klass"]) == (1, "drain", "drain"), scan.stdout
    assert finding["evidence"] == f"{group}/cpu.cfs_quota_us: cpu.cfs_quota_us 20000 per cpu.cfs_period_us 100000"
