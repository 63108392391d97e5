"""PCIe, InfiniBand, NVLink and GPU identity health readers (test_case.health) on recorded tool outputs.

The outputs are ../shared/gpu-outputs (INDEX.md there), each a published one copied unchanged:

* ``lspci-vvv_h100-hgx_switch-downgraded_gpu_cx7_excerpt.txt``: leptonai/gpud@4a8de33a3f02
  pkg/pci/testdata/lspci-vvv (a Dell H100 HGX: switch port 17:03.0, H100 19:00.0, ConnectX-7 1a:00.0);
* ``ibstat_h100-node_ib400-active_eth-ports-down.txt``: leptonai/gpud@2175d7d3671c
  pkg/nvidia-query/infiniband/testdata/ibstat.47.0.h100.some.down.0;
* ``nvidia-smi_nvlink-s_a100x8.txt``: leptonai/gpud@4a8de33a3f02
  components/accelerator/nvidia/fabric-manager/testdata/nvidia-smi.nvlink.status.a100;
* ``nvidia-smi_nvlink-e_h100_fragment.txt``: stas00/ml-engineering@744d01e18b79
  compute/accelerator/nvidia/debug.md (a fragment; the UUID anonymised by its author);
* ``nvidia-smi_q_h100x8_driver535.183.01.txt``: leptonai/gpud@2175d7d3671c
  pkg/nvidia-query/testdata/nvidia-smi-query.535.183.01.out.0.valid;
* ``nvidia-smi_q_a100_remapped-rows-pending_fragment.txt``,
  ``nvidia-smi_query-gpu_name-busid-vbios_h100_fragment.csv``: stas00/ml-engineering@744d01e18b79
  compute/accelerator/nvidia/debug.md;
* ``nvidia-smi_query-gpu_invalid-field_error.txt``: canonical/inference-snaps#89.

Variants (a link made inactive, a narrower width) are edits of those texts made in the test itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from test_case.health import gpu_identity, infiniband, nvlink, pcie
from test_case.health.findings import Finding, worst
from tests.conftest import REPO_ROOT

OUTPUTS = REPO_ROOT.parent / "shared" / "gpu-outputs"
LSPCI = "lspci-vvv_h100-hgx_switch-downgraded_gpu_cx7_excerpt.txt"
IBSTAT = "ibstat_h100-node_ib400-active_eth-ports-down.txt"
NVLINK_S = "nvidia-smi_nvlink-s_a100x8.txt"
NVLINK_E = "nvidia-smi_nvlink-e_h100_fragment.txt"
SMI_Q = "nvidia-smi_q_h100x8_driver535.183.01.txt"
SMI_Q_PENDING = "nvidia-smi_q_a100_remapped-rows-pending_fragment.txt"
QUERY_CSV = "nvidia-smi_query-gpu_name-busid-vbios_h100_fragment.csv"
QUERY_ERROR = "nvidia-smi_query-gpu_invalid-field_error.txt"

H100_SERIALS = [
    "1655022005478",
    "1654522012780",
    "1654922018857",
    "1654522012479",
    "1654922016523",
    "1655022006092",
    "1654522012843",
    "1654922015414",
]


def recorded(name: str) -> str:
    path = OUTPUTS / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (../shared/gpu-outputs)")
    return path.read_text()


def fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, output: str) -> Path:
    """``name`` on PATH, printing ``output`` whatever its arguments; it records them in ``<name>.args``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / f"{name}.out").write_text(output)
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "$@" > "{bin_dir}/{name}.args"\ncat "{bin_dir}/{name}.out"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def by_subject(found: list[Finding]) -> dict[str, Finding]:
    return {f.subject: f for f in found}


# --- PCIe ---------------------------------------------------------------------------------------


def test_lspci_parses_the_three_devices_with_their_links() -> None:
    devices = {d.address: d for d in pcie.parse_lspci(recorded(LSPCI))}
    assert list(devices) == ["17:03.0", "19:00.0", "1a:00.0"]
    switch, gpu, nic = devices["17:03.0"], devices["19:00.0"], devices["1a:00.0"]
    assert (switch.kind, switch.port_type, switch.secondary_bus, switch.subordinate_bus) == (
        "switch",
        "Downstream Port",
        0x1B,
        0x1B,
    )
    assert switch.cap is not None and (switch.cap.speed_gts, switch.cap.width) == (32.0, 16)
    assert switch.sta is not None and (switch.sta.speed_gts, switch.sta.speed_mark, switch.sta.width) == (
        16.0,
        "downgraded",
        16,
    )
    assert (gpu.kind, gpu.device_class) == ("gpu", "3D controller")
    assert nic.kind == "nic" and "ConnectX-7" in nic.description
    for dev in (gpu, nic):
        assert dev.cap is not None and dev.sta is not None
        assert (dev.sta.speed_gts, dev.sta.width, dev.sta.width_mark) == (32.0, 16, "ok")


def test_lspci_findings_name_the_downgraded_switch_port_and_pass_the_gpu_and_nic() -> None:
    found = by_subject(pcie.findings(pcie.parse_lspci(recorded(LSPCI))))
    switch = found["PCIe switch port 17:03.0"]
    assert switch.klass == "monitor" and "16 GT/s x16 of 32 GT/s x16" in switch.summary
    assert switch.evidence.startswith("LnkSta:") and "(downgraded)" in switch.evidence and switch.source
    assert found["GPU 19:00.0"].klass == "healthy" and found["NIC 1a:00.0"].klass == "healthy"
    assert worst(found.values()) == "monitor"


def test_a_narrow_gpu_link_drains_a_slow_one_is_idle_and_a_slow_nic_drains() -> None:
    text = recorded(LSPCI)
    gpu_block = text.split("\n\n")[1]
    nic_block = text.split("\n\n")[2]
    narrow = gpu_block.replace(
        "LnkSta:\tSpeed 32GT/s (ok), Width x16 (ok)", "LnkSta:\tSpeed 32GT/s (ok), Width x8 (downgraded)"
    )
    slow = gpu_block.replace("LnkSta:\tSpeed 32GT/s (ok)", "LnkSta:\tSpeed 2.5GT/s (downgraded)")
    slow_nic = nic_block.replace("LnkSta:\tSpeed 32GT/s (ok)", "LnkSta:\tSpeed 16GT/s (downgraded)")
    assert narrow != gpu_block and slow != gpu_block and slow_nic != nic_block
    assert [f.klass for f in pcie.findings(pcie.parse_lspci(narrow))] == ["drain"]
    idle = pcie.findings(pcie.parse_lspci(slow))
    assert [f.klass for f in idle] == ["monitor"] and "idle" in idle[0].summary
    assert [f.klass for f in pcie.findings(pcie.parse_lspci(slow_nic))] == ["drain"]


def test_a_switch_port_above_a_nic_takes_the_nics_class() -> None:
    # the fixture's switch port, its bus range edited to hold the CX-7 at 1a:00.0 (and -D domain form)
    text = recorded(LSPCI).replace("secondary=1b, subordinate=1b", "secondary=1a, subordinate=1b")
    text = "\n".join("0000:" + line if line[:2] in ("17", "19", "1a") else line for line in text.splitlines())
    found = by_subject(pcie.findings(pcie.parse_lspci(text)))
    port = found["PCIe switch port 0000:17:03.0"]
    assert port.klass == "drain" and "0000:1a:00.0" in port.summary


def test_lspci_is_read_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_tool(tmp_path, monkeypatch, "lspci", recorded(LSPCI))
    devices = pcie.read_lspci()
    assert devices is not None and [d.address for d in devices] == ["17:03.0", "19:00.0", "1a:00.0"]
    assert (bin_dir / "lspci.args").read_text().split() == ["-D", "-vvv"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert pcie.read_lspci() is None


# --- InfiniBand -----------------------------------------------------------------------------------


def test_ibstat_parses_eight_ib_ports_at_400_and_four_ethernet() -> None:
    ports = infiniband.parse_ibstat(recorded(IBSTAT))
    assert len(ports) == 12
    ib = [p for p in ports if p.is_ib]
    assert len(ib) == 8 and {(p.state, p.physical_state, p.rate, p.ca_type) for p in ib} == {
        ("Active", "LinkUp", 400, "MT4129")
    }
    eth = {p.ca: p for p in ports if not p.is_ib}
    assert sorted(eth) == ["mlx5_1", "mlx5_2", "mlx5_7", "mlx5_8"]
    assert (eth["mlx5_1"].state, eth["mlx5_1"].rate) == ("Active", 100)
    assert {eth[c].state for c in ("mlx5_2", "mlx5_7", "mlx5_8")} == {"Down"}
    assert ports[-1].ca == "mlx5_9" and ports[-1].firmware == "28.39.1002"  # no trailing newline


def test_ibstat_findings_three_ethernet_monitors_and_no_drain() -> None:
    found = infiniband.findings(infiniband.parse_ibstat(recorded(IBSTAT)))
    monitors = sorted(f.subject for f in found if f.klass == "monitor")
    assert monitors == ["mlx5_2 port 1", "mlx5_7 port 1", "mlx5_8 port 1"]
    assert worst(found) == "monitor" and sum(f.klass == "healthy" for f in found) == 9


def test_a_down_or_slow_ib_port_drains() -> None:
    text = recorded(IBSTAT)
    block = text.split("CA 'mlx5_3'")[1].split("CA '")[0]
    down = text.replace(block, block.replace("State: Active", "State: Down").replace("LinkUp", "Polling"))
    slow = text.replace(block, block.replace("Rate: 400", "Rate: 200"))
    for variant in (down, slow):
        drains = [f for f in infiniband.findings(infiniband.parse_ibstat(variant)) if f.klass == "drain"]
        assert [f.subject for f in drains] == ["mlx5_3 port 1"] and drains[0].source
    expected = infiniband.findings(infiniband.parse_ibstat(text), expected_rate=800)
    assert sum(f.klass == "drain" for f in expected) == 8
    # a 200 Gb/s card of another type (an HDR storage HCA) is not held to the NDR cards' 400
    other = text.replace(block, block.replace("Rate: 400", "Rate: 200").replace("CA type: MT4129", "CA type: MT4123"))
    assert worst(infiniband.findings(infiniband.parse_ibstat(other))) == "monitor"


def test_ibstat_is_read_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tool(tmp_path, monkeypatch, "ibstat", recorded(IBSTAT))
    ports = infiniband.read_ibstat()
    assert ports is not None and len(ports) == 12
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert infiniband.read_ibstat() is None


def test_error_counters_from_a_fake_sysfs(tmp_path: Path) -> None:
    root = tmp_path / "infiniband"
    values = {
        "mlx5_0": {"symbol_error": 0, "link_downed": 0, "port_xmit_discards": 5},  # clean (discards < 100)
        "mlx5_3": {"symbol_error": 3, "link_downed": 0},  # above zero: monitor
        "mlx5_4": {"symbol_error": 0, "link_downed": 12},  # at the ibcheckerrs threshold 10: drain
        "mlx5_5": {"port_xmit_discards": 250},  # congestion at its threshold: monitor only
    }
    for ca, counters in values.items():
        port = root / ca / "ports" / "1"
        (port / "counters").mkdir(parents=True)
        (port / "link_layer").write_text("InfiniBand\n")
        for name, value in counters.items():
            (port / "counters" / name).write_text(f"{value}\n")
    read = infiniband.read_error_counters(root)
    assert read is not None and [p.ca for p in read] == ["mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5"]
    assert read[2].counters == {"link_downed": 12, "symbol_error": 0} and read[2].link_layer == "InfiniBand"
    found = infiniband.counter_findings(read)
    assert [(f.subject, f.klass) for f in found] == [
        ("mlx5_0 port 1", "healthy"),
        ("mlx5_3 port 1", "monitor"),
        ("mlx5_4 port 1", "drain"),
        ("mlx5_5 port 1", "monitor"),
    ]
    assert found[2].evidence == "counters/link_downed: 12" and "ibcheckerrs" in found[2].source
    assert infiniband.read_error_counters(tmp_path / "absent") is None


def test_efa_ports_are_judged_by_their_state_and_srd_counters(tmp_path: Path) -> None:
    """The sysfs layout of an EFA port as the Linux efa driver makes it (``hw_counters/``, no ``counters/``;
    no public recording of one was found): found by its counters, not by its name."""
    root = tmp_path / "infiniband"
    ports = {
        "efa_0": ("4: ACTIVE", {"rx_drops": 0, "retrans_timeout_events": 0, "unresponsive_remote_events": 0}),
        "rdmap79s0": (
            "4: ACTIVE",
            {"rdma_read_wr_err": 0, "retrans_timeout_events": 7, "unresponsive_remote_events": 0},
        ),
        "rdmap80s0": ("1: DOWN", {"rx_drops": 0, "unresponsive_remote_events": 0, "tx_bytes": 123}),
    }
    for device, (state, counters) in ports.items():
        port = root / device / "ports" / "1"
        (port / "hw_counters").mkdir(parents=True)
        (port / "state").write_text(state + "\n")
        (port / "link_layer").write_text("Unspecified\n")
        for name, value in counters.items():
            (port / "hw_counters" / name).write_text(f"{value}\n")
    read = infiniband.read_error_counters(root)
    assert read is not None and [p.efa_counters is not None for p in read] == [True, True, True]
    assert read[1].efa_counters == {"rdma_read_wr_err": 0, "retrans_timeout_events": 7, "unresponsive_remote_events": 0}
    found = infiniband.counter_findings(read)
    assert [(f.subject, f.klass, f.summary) for f in found] == [
        ("efa_0 port 1", "healthy", "EFA port ACTIVE, no error counter above zero"),
        ("rdmap79s0 port 1", "monitor", "EFA retrans_timeout_events = 7 since it was last reset"),
        ("rdmap80s0 port 1", "drain", "EFA port 1: DOWN, not ACTIVE"),
    ]
    assert found[1].evidence.startswith("state: 4: ACTIVE; hw_counters: rdma_read_wr_err 0, retrans_timeout_events 7")
    assert "efa-working-monitor" in found[1].source
    # an older efa driver, without the SRD network counters: found by its driver, judged by its state
    older = tmp_path / "older"
    port = older / "efa_0" / "ports" / "1"
    (port / "hw_counters").mkdir(parents=True)
    (port / "state").write_text("1: DOWN\n")
    (port / "hw_counters" / "rx_drops").write_text("3\n")
    (tmp_path / "drivers" / "efa").mkdir(parents=True)
    (older / "efa_0" / "device").mkdir()
    (older / "efa_0" / "device" / "driver").symlink_to(tmp_path / "drivers" / "efa")
    (old,) = infiniband.read_error_counters(older) or []
    assert old.efa_counters == {"rx_drops": 3}
    assert [f.klass for f in infiniband.counter_findings([old])] == ["drain", "monitor"]


# --- NVLink ---------------------------------------------------------------------------------------


def test_nvlink_status_a100x8_twelve_links_at_25_all_healthy() -> None:
    gpus = nvlink.parse_nvlink_status(recorded(NVLINK_S))
    assert [g.index for g in gpus] == list(range(8)) and {g.name for g in gpus} == {"NVIDIA A100-SXM4-80GB"}
    assert gpus[0].uuid == "GPU-5269b708-678a-b1a8-60f0-c90406537486"
    assert all(g.links == dict.fromkeys(range(12), 25.0) for g in gpus)
    found = nvlink.findings(gpus)
    assert [f.klass for f in found] == ["healthy"] * 8 and found[0].summary == "12 links at 25 GB/s"


def test_an_inactive_or_slow_link_asks_for_a_reset() -> None:
    text = recorded(NVLINK_S)
    gpu3 = text.split("GPU 3:")[1].split("GPU 4:")[0]
    inactive = text.replace(gpu3, gpu3.replace("Link 7: 25 GB/s", "Link 7: <inactive>"))
    slow = text.replace(gpu3, gpu3.replace("Link 2: 25 GB/s", "Link 2: 12.5 GB/s"))
    assert inactive != text and slow != text
    for variant, words in ((inactive, "link(s) 7 inactive"), (slow, "link(s) 2 slower")):
        found = nvlink.findings(nvlink.parse_nvlink_status(variant))
        bad = [f for f in found if f.klass != "healthy"]
        assert [(f.subject, f.klass) for f in bad] == [("GPU 3", "reset")]
        assert words in bad[0].summary and "drain" in bad[0].summary
    unreadable = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)\n"
        "\t NVML: Unable to retrieve NVLink information as all links are inActive\n"
    )
    assert [f.klass for f in nvlink.findings(nvlink.parse_nvlink_status(unreadable))] == ["reset"]
    assert nvlink.findings(nvlink.parse_nvlink_status("GPU 0: NVIDIA A10 (UUID: GPU-y)\n")) == []


def test_nvlink_errors_fragment_zero_counters_then_growth() -> None:
    text = recorded(NVLINK_E)
    gpus = nvlink.parse_nvlink_errors(text)
    assert len(gpus) == 1 and sorted(gpus[0].links) == [0, 1, 17]
    assert gpus[0].links[17] == {"Replay Errors": 0, "Recovery Errors": 0, "CRC Errors": 0}
    assert [f.klass for f in nvlink.error_findings(gpus)] == ["healthy"]
    later = nvlink.parse_nvlink_errors(text.replace("Link 1: Replay Errors: 0", "Link 1: Replay Errors: 3"))
    once = nvlink.error_findings(later)
    assert [(f.subject, f.klass) for f in once] == [("GPU 0 link 1", "monitor")]
    grown = nvlink.error_findings(later, before=gpus, interval_s=60)
    assert [(f.subject, f.klass) for f in grown] == [("GPU 0 link 1", "drain")] and "DCGM" in grown[0].source
    crc = nvlink.parse_nvlink_errors(text.replace("Link 0: CRC Errors: 0", "Link 0: CRC Errors: 500"))
    assert [f.klass for f in nvlink.error_findings(crc, before=gpus, interval_s=60)] == ["monitor"]  # 8/s
    assert [f.klass for f in nvlink.error_findings(crc, before=gpus, interval_s=2)] == ["drain"]  # 250/s


# --- GPU identity ---------------------------------------------------------------------------------


def test_nvidia_smi_q_h100x8_identity() -> None:
    gpus = gpu_identity.parse_nvidia_smi_q(recorded(SMI_Q))
    assert [g.serial for g in gpus] == H100_SERIALS
    assert gpus[0].bus_id == "00000000:53:00.0" and gpus[-1].bus_id == "00000000:CA:00.0"
    assert gpus[0].uuid == "GPU-566e6f65-c38e-b12f-4824-6944218668b9"
    assert {(g.product_name, g.vbios, g.driver_version, g.cuda_version) for g in gpus} == {
        ("NVIDIA H100 80GB HBM3", "96.00.74.00.01", "535.183.01", "12.2")
    }
    assert {(g.remap_pending, g.remap_failure) for g in gpus} == {(False, False)}
    assert gpus[0].fields["ECC Errors/Volatile/DRAM Uncorrectable"] == "0"
    assert gpus[0].fields["PCI/Replays Since Reset"] == "120" and gpus[0].ecc_mode_pending == "Enabled"
    assert gpu_identity.identity_facts(gpus) == {
        "driver_version": "535.183.01",
        "cuda_version": "12.2",
        "product_name": "NVIDIA H100 80GB HBM3",
        "vbios_version[NVIDIA H100 80GB HBM3]": "96.00.74.00.01",
    }
    found = gpu_identity.findings(gpus)
    assert [f.klass for f in found] == ["healthy"] * 8 and H100_SERIALS[0] in found[0].summary


def test_pending_remap_resets_a_failure_drains_and_mixed_vbios_is_watched() -> None:
    pending = gpu_identity.parse_nvidia_smi_q(recorded(SMI_Q_PENDING))
    assert len(pending) == 1 and pending[0].product_name == "NVIDIA A100-SXM4-80GB"
    assert (pending[0].driver_version, pending[0].remap_pending, pending[0].remap_failure) == ("510.73.08", True, False)
    assert [(f.subject, f.klass) for f in gpu_identity.findings(pending)] == [("GPU 00000000:10:1C.0", "reset")]
    text = recorded(SMI_Q)
    first, rest = text.split("GPU 00000000:64:00.0", 1)
    failed = first.replace("Remapping Failure Occurred        : No", "Remapping Failure Occurred        : Yes")
    mixed = first.replace("96.00.74.00.01", "96.00.89.00.01")
    assert failed != first and mixed != first
    found = gpu_identity.findings(gpu_identity.parse_nvidia_smi_q(failed + "GPU 00000000:64:00.0" + rest))
    assert [(f.subject, f.klass) for f in found if f.klass != "healthy"] == [("GPU 00000000:53:00.0", "drain")]
    gpus = gpu_identity.parse_nvidia_smi_q(mixed + "GPU 00000000:64:00.0" + rest)
    node = [f for f in gpu_identity.findings(gpus) if f.subject == "node"]
    assert [f.klass for f in node] == ["monitor"] and "96.00.74.00.01, 96.00.89.00.01" in node[0].summary
    facts = gpu_identity.identity_facts(gpus)
    assert facts["vbios_version[NVIDIA H100 80GB HBM3]"] == "96.00.74.00.01, 96.00.89.00.01"


def test_query_gpu_csv_and_its_refusal() -> None:
    gpus = gpu_identity.parse_query_gpu_csv(recorded(QUERY_CSV))
    assert [(g.product_name, g.bus_id, g.vbios) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", "00000000:04:00.0", "96.00.89.00.01"),
        ("NVIDIA H100 80GB HBM3", "00000000:8B:00.0", "96.00.89.00.01"),
    ]
    assert gpu_identity.identity_facts(gpus) == {
        "product_name": "NVIDIA H100 80GB HBM3",
        "vbios_version[NVIDIA H100 80GB HBM3]": "96.00.89.00.01",
    }
    with pytest.raises(ValueError, match="compute_cap"):
        gpu_identity.parse_query_gpu_csv(recorded(QUERY_ERROR))


def test_nvidia_smi_q_is_read_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_tool(tmp_path, monkeypatch, "nvidia-smi", recorded(SMI_Q))
    gpus = gpu_identity.read_nvidia_smi_q()
    assert gpus is not None and [g.serial for g in gpus] == H100_SERIALS
    assert (bin_dir / "nvidia-smi.args").read_text().split() == ["-q"]
    (bin_dir / "nvidia-smi.out").write_text(recorded(NVLINK_S))
    status = nvlink.read_nvlink_status()
    assert status is not None and len(status) == 8
    assert (bin_dir / "nvidia-smi.args").read_text().split() == ["nvlink", "-s"]
