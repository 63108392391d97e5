"""The kernel log's XID/SXID reader (test_case/health/xid.py) and the DCGM diagnostics reader
(test_case/health/dcgm.py) on real published outputs in ../shared/gpu-outputs (INDEX.md):

* dmesg_xid119_gsp-rpc-timeout_h100_dell-xe9680.log: leptonai/gpud,
  components/accelerator/nvidia/xid/testdata/dmesg-with-xid-119.log (``dmesg -T``);
* dmesg_xid79_fallen-off-bus_aer_fragment.log: wilicc/gpu-burn#1 (plain dmesg, seconds since boot);
* dmesg_xid94_xid64_sxid12028_mlx5-pcie-limited_lines.log: imbue-ai/cluster-health@8f5964ac6209,
  health_checks/health_checks.py doctests;
* dmesg_xid63_row-remapper_a100.log: stas00/ml-engineering, compute/accelerator/nvidia/debug.md (bare line);
* dmesg-decode-iso_sxid12028_data.log: leptonai/gpud#338 (``dmesg --decode --time-format=iso``);
* dcgmi_diag_r2_pass_a100-p4de.txt: awslabs/awsome-distributed-training, 1.architectures/efa-cheatsheet.md
  (DCGM 3.3.3);
* dcgmi_diag_r2_fail_pcie-nvlink-down_a100_fragment.txt: NVIDIA/DCGM#49 (DCGM 2.4.6).

Lines the fixtures do not have (journalctl prefixes, a benign or unknown code, a per-GPU DCGM result)
are the fixtures' own lines with one thing changed, said where it is done."""

from __future__ import annotations

import os
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from test_case.health import dcgm, xid
from test_case.health.findings import worst
from tests.conftest import REPO_ROOT

OUTPUTS = REPO_ROOT.parent / "shared" / "gpu-outputs"
XID119 = "dmesg_xid119_gsp-rpc-timeout_h100_dell-xe9680.log"
XID79 = "dmesg_xid79_fallen-off-bus_aer_fragment.log"
FOUR_LINES = "dmesg_xid94_xid64_sxid12028_mlx5-pcie-limited_lines.log"
XID63 = "dmesg_xid63_row-remapper_a100.log"
ISO_SXID = "dmesg-decode-iso_sxid12028_data.log"
DIAG_PASS = "dcgmi_diag_r2_pass_a100-p4de.txt"
DIAG_FAIL = "dcgmi_diag_r2_fail_pcie-nvlink-down_a100_fragment.txt"


def text(name: str) -> str:
    return (OUTPUTS / name).read_text()


def test_gsp_rpc_timeouts_on_one_h100_are_one_reset_finding() -> None:
    events = xid.parse_kernel_log(text(XID119))
    assert [(e.kind, e.code, e.pci) for e in events] == [("xid", 119, "0000:9b:00.0")] * 5
    assert [e.time for e in events] == [
        datetime(2025, 2, 23, 16, 24, 18),
        datetime(2025, 2, 23, 16, 24, 24),
        datetime(2025, 2, 23, 16, 24, 30),
        datetime(2025, 2, 23, 16, 27, 12),
        datetime(2025, 2, 23, 16, 30, 13),
    ]
    assert events[0].message.startswith("pid=2024380, name=nvidia-smi, Timeout after 6s")
    (found,) = xid.findings(events)
    assert (found.check, found.subject, found.klass) == ("xid", "GPU 0000:9b:00.0", "reset")
    assert found.evidence == text(XID119).splitlines()[-1]  # the latest line, verbatim (name=gpud)
    assert "Xid 119 x5, 2025-02-23T16:24:18 to 2025-02-23T16:30:13: GSP RPC timeout" in found.summary
    assert "RESET_GPU" in found.summary and "analyzing-xid-catalog" in found.source


def test_a_gpu_fallen_off_the_bus_after_pcie_aer_errors_is_a_reboot() -> None:
    events = xid.parse_kernel_log(text(XID79))
    assert len(events) == 1  # the AER and "GPU at PCI" lines are not Xid lines
    event = events[0]
    assert (event.code, event.pci, event.message, event.time) == (
        79,
        "0000:02:00.0",
        "GPU has fallen off the bus.",
        None,  # plain dmesg: seconds since boot, no wall time
    )
    assert event.line == "[74889.644138] NVRM: Xid (PCI:0000:02:00): 79, GPU has fallen off the bus."
    (found,) = xid.findings(events)
    assert (found.subject, found.klass) == ("GPU 0000:02:00.0", "reboot") and "RESTART_BM" in found.summary


def test_four_lines_of_one_cluster_three_findings_and_the_worst_is_drain() -> None:
    events = xid.parse_kernel_log(text(FOUR_LINES))
    assert [(e.kind, e.code, e.pci, e.device) for e in events] == [
        ("xid", 94, "0000:0f:00.0", ""),
        ("xid", 64, "0000:0f:00.0", ""),
        ("sxid", 12028, "0000:85:00.0", "nvidia-nvswitch2"),
    ]  # the mlx5 "limited by PCIe" line is no event
    found = xid.findings(events)
    assert [(f.check, f.subject, f.klass) for f in found] == [
        ("xid", "GPU 0000:0f:00.0", "monitor"),  # contained memory error: the program's, not the node's
        ("xid", "GPU 0000:0f:00.0", "drain"),  # no spare row left in the bank
        ("sxid", "NVSwitch 0000:85:00.0 (nvidia-nvswitch2)", "monitor"),  # non-fatal
    ]
    assert worst(found) == "drain"
    assert found[2].evidence.endswith("12028, Non-fatal, Link 61 egress non-posted PRIV error (First)")
    assert "Fabric Manager" in found[2].source


def test_a_bare_row_remapper_line_is_monitor() -> None:
    (event,) = xid.parse_kernel_log(text(XID63))
    assert (event.code, event.pci, event.time) == (63, "0000:10:1c.0", None)
    assert event.message == "pid=1896, Row Remapper: New row marked for remapping, reset gpu to activate."
    (found,) = xid.findings([event])
    assert found.klass == "monitor" and "IGNORE" in found.summary


def test_the_decoded_iso_form_reads_its_time_and_switch() -> None:
    (event,) = xid.parse_kernel_log(text(ISO_SXID))
    assert (event.kind, event.code, event.pci, event.device) == ("sxid", 12028, "0000:84:00.0", "nvidia-nvswitch1")
    assert event.time == datetime(2025, 1, 25, 10, 34, 54, 859532, tzinfo=UTC)
    assert event.message.startswith("Data {0x000001c0,")
    (found,) = xid.findings([event])
    assert found.klass == "monitor"  # from the SXID table: this line does not say non-fatal itself


def test_sxids_not_in_the_table_go_by_the_fatal_word_of_their_line() -> None:
    line = text(FOUR_LINES).splitlines()[3]  # the SXid 12028 line, its code changed
    fatal = line.replace("12028, Non-fatal", "11004, Fatal")
    nonfatal = line.replace("12028", "11004")
    silent = line.replace("12028, Non-fatal,", "11004,")
    klasses = [xid.findings(xid.parse_kernel_log(t))[0].klass for t in (fatal, nonfatal, silent)]
    assert klasses == ["reboot", "monitor", "monitor"]


def test_journalctl_prefixes_are_read_with_their_times() -> None:
    line = text(XID79).splitlines()[-1].split("] ", 1)[1]  # the fixture's Xid 79 line, its dmesg stamp off
    short = xid.parse_kernel_log(f"Feb 23 16:24:18 node7 kernel: {line}")
    iso = xid.parse_kernel_log(f"2025-02-23T16:24:18+0000 node7 kernel: {line}")
    assert [(e.code, e.pci, e.time) for e in short] == [(79, "0000:02:00.0", None)]  # no year: no time
    assert [(e.code, e.pci, e.time) for e in iso] == [(79, "0000:02:00.0", datetime(2025, 2, 23, 16, 24, 18, 0, UTC))]


def test_application_errors_and_unknown_codes_are_monitor_and_154_follows_its_action() -> None:
    line = text(XID79).splitlines()[-1]
    benign = line.replace("79, GPU has fallen off the bus.", "13, pid=7, name=python, Graphics SM Warp Exception")
    unknown = line.replace("79,", "999,")
    recovery = line.replace(
        "79, GPU has fallen off the bus.",
        "154, GPU recovery action changed from 0x0 (None) to 0x2 (Node Reboot Required)",
    )
    (app,) = xid.findings(xid.parse_kernel_log(benign))
    (odd,) = xid.findings(xid.parse_kernel_log(unknown))
    (act,) = xid.findings(xid.parse_kernel_log(recovery))
    assert (app.klass, odd.klass, act.klass) == ("monitor", "monitor", "reboot")
    assert "not in this check's catalogue" in odd.summary and "Xid 999" in odd.summary
    assert {13, 31, 43, 45} <= xid.APPLICATION_XIDS
    for code in xid.APPLICATION_XIDS:  # a user's program's error never takes a node out
        entry = xid.CATALOGUE[code]
        assert entry.klass == "monitor" and entry.nvidia in ("RESTART_APP", "IGNORE", "WORKFLOW_XID_45"), code
    required = {13, 31, 32, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 109, 119, 120, 121, 140, 143, 154}
    assert required <= set(xid.CATALOGUE)


def fake_tool(directory: Path, name: str, body: str) -> None:
    tool = directory / name
    tool.write_text(f"#!/bin/sh\n{body}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def bare_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holding only tmp_path: the host's own dmesg and journalctl are out of reach."""
    monkeypatch.setenv("PATH", str(tmp_path))
    return tmp_path


CAT = shutil.which("cat") or "/bin/cat"
DENIED = 'echo "dmesg: read kernel buffer failed: Operation not permitted" >&2; exit 1'


def test_read_kernel_log_takes_dmesg_with_iso_times_first(bare_path: Path) -> None:
    fake_tool(bare_path, "dmesg", f'[ "$1" = --time-format ] && [ "$2" = iso ] || exit 9\n{CAT} "{OUTPUTS / ISO_SXID}"')
    log = xid.read_kernel_log()
    assert (log.source, log.reason) == ("dmesg --time-format iso", "")
    assert log.text is not None and [e.code for e in xid.parse_kernel_log(log.text)] == [12028]


def test_dmesg_without_iso_falls_back_to_plain_dmesg(bare_path: Path) -> None:
    body = f'[ -n "$1" ] && {{ echo "dmesg: unrecognized option \'$1\'" >&2; exit 1; }}\n{CAT} "{OUTPUTS / XID79}"'
    fake_tool(bare_path, "dmesg", body)
    log = xid.read_kernel_log()
    assert log.source == "dmesg" and "unrecognized option '--time-format'" in log.reason
    assert log.text is not None and [e.code for e in xid.parse_kernel_log(log.text)] == [79]


def test_dmesg_restricted_to_root_falls_back_to_the_journal_and_says_why(bare_path: Path) -> None:
    fake_tool(bare_path, "dmesg", DENIED)
    line = text(XID79).splitlines()[-1].split("] ", 1)[1]
    fake_tool(bare_path, "journalctl", f"echo '2025-02-23T16:24:18+0000 node7 kernel: {line}'")
    log = xid.read_kernel_log()
    assert log.source == "journalctl -k -b --no-pager -o short-iso"
    assert log.reason.count("Operation not permitted") == 2  # both dmesg forms said so
    assert log.text is not None and [e.code for e in xid.parse_kernel_log(log.text)] == [79]


def test_no_readable_kernel_log_is_none_with_the_reasons(bare_path: Path) -> None:
    fake_tool(bare_path, "dmesg", DENIED)
    log = xid.read_kernel_log()
    assert log.text is None and log.source == ""
    assert "Operation not permitted" in log.reason and "journalctl: not on PATH" in log.reason
    fake_tool(
        bare_path, "journalctl", "echo 'Hint: You are currently not seeing messages from other users and the system.'"
    )
    assert xid.read_kernel_log().text is None and "hides the system's messages" in xid.read_kernel_log().reason


def test_since_the_last_check_keeps_only_the_newer_lines(bare_path: Path) -> None:
    later = xid.lines_since(text(XID119), datetime(2025, 2, 23, 16, 25))
    assert [e.time for e in xid.parse_kernel_log(later)] == [
        datetime(2025, 2, 23, 16, 27, 12),
        datetime(2025, 2, 23, 16, 30, 13),
    ]
    assert "Call Trace" not in later and "Rate limiting" not in later  # 16:24 lines, continuations too
    stamp = datetime(2025, 1, 25, 10, 34, 54, tzinfo=UTC)
    assert xid.lines_since(text(ISO_SXID), stamp) == text(ISO_SXID)
    assert xid.lines_since(text(ISO_SXID), stamp + timedelta(seconds=1)) == ""
    assert xid.lines_since(text(XID79), stamp) == text(XID79)  # no wall times: nothing can be cut, nothing hidden
    fake_tool(bare_path, "dmesg", f'{CAT} "{OUTPUTS / ISO_SXID}"')
    assert xid.read_kernel_log(since=stamp + timedelta(seconds=1)).text == ""
    fake_tool(bare_path, "dmesg", f'[ -n "$1" ] && exit 1\n{CAT} "{OUTPUTS / XID79}"')  # no ISO: plain dmesg
    plain = xid.read_kernel_log(since=stamp)
    assert plain.text == text(XID79) and "no wall-clock times" in plain.reason


def test_dcgm_333_level_2_all_pass() -> None:
    results = dcgm.parse_diag(text(DIAG_PASS))
    assert [(r.category, r.test, r.status, r.scope) for r in results] == [
        ("Deployment", "Denylist", "pass", ""),
        ("Deployment", "NVML Library", "pass", ""),
        ("Deployment", "CUDA Main Library", "pass", ""),
        ("Deployment", "Permissions and OS Blocks", "pass", ""),
        ("Deployment", "Persistence Mode", "pass", ""),
        ("Deployment", "Environment Variables", "pass", ""),
        ("Deployment", "Page Retirement/Row Remap", "pass", ""),
        ("Deployment", "Graphics Processes", "pass", ""),
        ("Deployment", "Inforom", "pass", ""),
        ("Integration", "PCIe", "pass", "All"),
        ("Hardware", "GPU Memory", "pass", "All"),
    ]
    assert dcgm.diag_metadata(text(DIAG_PASS))["DCGM Version"] == "3.3.3"
    found = dcgm.findings(results)
    assert {f.klass for f in found} == {"healthy"} and {f.subject for f in found} == {"node"}


def test_dcgm_246_pcie_fail_all_with_its_wrapped_warning_is_drain() -> None:
    (result,) = dcgm.parse_diag(text(DIAG_FAIL))
    assert (result.category, result.test, result.status, result.scope, result.gpus) == (
        "Integration",
        "PCIe",
        "fail",
        "All",
        (),
    )
    down = "GPU 0GPU 0's NvLink link {} is currently down Run a field diagnostic on the GPU.,"
    assert result.detail == " ".join(down.format(n) for n in range(5))  # unwrapped: "fie" + "ld", "NvLin" + "k"
    (found,) = dcgm.findings([result])
    assert (found.check, found.subject, found.klass) == ("dcgm", "node", "drain")
    assert found.evidence == "| PCIe                      | Fail - All                                     |"


def test_dcgm_per_gpu_results_and_warnings() -> None:
    row = "| GPU Memory                | Pass - All                                     |"  # the 3.3.3 row, edited
    table = text(DIAG_PASS).replace(
        row,
        "| GPU Memory                | Pass - GPUs: 0, 1                              |\n"
        "|                           | Fail - GPU: 2                                  |\n"
        "| Inforom                   | Warn - GPU: 3                                  |",
    )
    results = [r for r in dcgm.parse_diag(table) if r.category == "Hardware"]
    assert [(r.test, r.status, r.gpus) for r in results] == [
        ("GPU Memory", "pass", (0, 1)),
        ("GPU Memory", "fail", (2,)),
        ("Inforom", "warn", (3,)),
    ]
    assert [(f.subject, f.klass) for f in dcgm.findings(results)] == [
        ("GPU 0, GPU 1", "healthy"),
        ("GPU 2", "drain"),
        ("GPU 3", "monitor"),
    ]


def test_run_diag_reads_dcgmi_from_path(bare_path: Path) -> None:
    assert dcgm.run_diag(2) is None  # no dcgmi
    fake_tool(bare_path, "dcgmi", f'[ "$1 $2 $3" = "diag -r 2" ] || exit 9\n{CAT} "{OUTPUTS / DIAG_FAIL}"')
    run = dcgm.run_diag(2)
    assert run is not None and [(r.test, r.status) for r in run.results] == [("PCIe", "fail")]
    assert [f.klass for f in dcgm.run_findings(run)] == ["drain"]
    fake_tool(
        bare_path, "dcgmi", 'echo "Error: unable to establish a connection to the specified host: localhost"; exit 255'
    )
    run = dcgm.run_diag(1)
    assert run is not None and run.results == []
    (found,) = dcgm.run_findings(run)
    assert found.klass == "monitor" and "exit 255" in found.summary and "unable to establish" in found.summary
    assert list(dcgm.DIAG_TIMEOUT_S) == [1, 2, 3, 4] and sorted(dcgm.DIAG_TIMEOUT_S.values()) == list(
        dcgm.DIAG_TIMEOUT_S.values()
    )
    with pytest.raises(ValueError):
        dcgm.run_diag(5)
    assert os.environ["PATH"] == str(bare_path)
