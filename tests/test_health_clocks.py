"""GPU clocks, temperature and power under load (`test_case.health.clocks`) and the preflight's burn-in
(`test_case.preflight.burn_in`).

The reader is tested on the recorded ``nvidia-smi -q`` of 8 H100 (driver 535.183.01, leptonai/gpud, see
``../shared/gpu-outputs/INDEX.md``), taken at idle. No public recording of GPUs under load was found,
so the loaded reports are derived from that recording by changing only the values a load changes
(the edits are in `under_load`), and the sampler is tested with a stand-in ``nvidia-smi`` on PATH that
answers with them while a real matmul load runs on this machine's CPU.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest

from test_case.health import clocks
from test_case.preflight import burn_in
from test_case.preflight.expectations import Expectations, load
from tests.conftest import SHARED

H100_Q = SHARED / "gpu-outputs" / "nvidia-smi_q_h100x8_driver535.183.01.txt"
FIRST = "00000000:53:00.0"  # the first GPU of the recording
SECOND = "00000000:64:00.0"


def blocks(text: str) -> list[str]:
    """The report cut before each ``GPU <bus id>`` line: the header first, then one block per GPU."""
    return re.split(r"(?m)^(?=GPU [0-9A-Fa-f]{8}:)", text)


def field(block: str, name: str, value: str) -> str:
    """``block`` with the value of the first line ``name : ...`` replaced (the alignment kept)."""
    return re.sub(rf"(?m)^(\s+{re.escape(name)}\s+: ).*$", lambda m: m.group(1) + value, block, count=1)


def under_load(
    text: str, faults: dict[str, dict[str, str]] | None = None, sm: str = "1755 MHz", power: str = "699.41 W"
) -> str:
    """The recorded idle report as a healthy loaded GPU would show it: not idle, no slowdown reason, SW
    Power Cap active (a fully
    loaded H100 runs at its power limit), SM clock ``sm``, drawing ``power``, 30 C warmer (T.Limit margin
    20 C). ``faults`` changes further fields of the GPUs named by bus id."""
    out = []
    for block in blocks(text):
        if block.startswith("GPU "):
            block = field(block, "Idle", "Not Active")
            for reason in ("HW Power Brake Slowdown", "SW Thermal Slowdown"):  # as the recording's third GPU lists
                block = field(block, reason, "Not Active")
            block = field(block, "SW Power Cap", "Active")
            block = field(block, "SM", sm)
            block = field(block, "Power Draw", power)
            block = field(block, "GPU T.Limit Temp", "20 C")
            bus = block.split()[1]
            for name, value in (faults or {}).get(bus, {}).items():
                block = field(block, name, value)
        out.append(block)
    return "".join(out)


def judged(texts: list[str], thresholds: clocks.Thresholds = clocks.DEFAULT) -> dict[str, list[clocks.Finding]]:
    samples = [s for i, t in enumerate(texts) for s in clocks.parse_samples(t, at=float(i))]
    out: dict[str, list[clocks.Finding]] = {}
    for f in clocks.findings(samples, thresholds):
        out.setdefault(f.subject.removeprefix("GPU "), []).append(f)
    return out


def test_the_recorded_h100_report_reads_as_eight_idle_gpus() -> None:
    samples = clocks.parse_samples(H100_Q.read_text(), at=5.0)
    assert len(samples) == 8 and samples[0].bus_id == FIRST
    first = samples[0]
    assert (first.product, first.sm_mhz, first.max_sm_mhz, first.temp_c) == ("NVIDIA H100 80GB HBM3", 345, 1980, 36)
    # driver 535 gives H100's temperatures as margins: 50 C below T.Limit now, slowdown at -2 C
    assert first.slowdown_headroom_c == 52
    assert (first.power_w, first.power_limit_w, first.default_power_limit_w) == (71.97, 700, 700)
    assert first.reasons == ("Idle",) and first.at == 5.0
    found = judged([H100_Q.read_text()])
    assert len(found) == 8
    assert {f.klass for fs in found.values() for f in fs} == {"monitor"}
    assert "the load did not reach this GPU" in found[FIRST][0].summary
    # the third GPU ran a process at 1980 MHz, 39 C and 118 W, and lists HW Power Brake and SW Thermal
    # Slowdown: reasons that slowed nothing, so they are watched, not drained
    third = found["00000000:75:00.0"]
    said = "reported with the clock at its maximum or held only by the power cap: it slowed nothing"
    assert [f.summary for f in third] == [f"HW Power Brake Slowdown {said}", f"SW Thermal Slowdown {said}"]
    assert "SM 1980 MHz of 1980 MHz, 118 W of a 700 W limit, up to 39 C (49 C below slowdown)" in third[0].evidence


def test_a_healthy_gpu_under_load_at_its_power_cap_is_healthy() -> None:
    found = judged([under_load(H100_Q.read_text())] * 3)
    assert {f.klass for fs in found.values() for f in fs} == {"healthy"}
    summary = found[FIRST][0].summary
    assert "SM 1755 MHz of 1980 MHz, 699 W of a 700 W limit, up to 36 C (22 C below slowdown)" in summary
    assert "SW Power Cap in 3/3" in found[FIRST][0].evidence


def test_a_gpu_slowed_by_hardware_under_load_is_drained_and_named_alone() -> None:
    hot = {SECOND: {"HW Slowdown": "Active", "HW Thermal Slowdown": "Active", "SM": "990 MHz"}}
    text = H100_Q.read_text()
    found = judged([under_load(text, hot)] * 3 + [under_load(text)])  # 3 of 4 samples
    drained = {bus for bus, fs in found.items() for f in fs if f.klass == "drain"}
    assert drained == {SECOND}
    (thermal,) = [f for f in found[SECOND] if "HW Thermal Slowdown" in f.summary]
    assert thermal.summary.startswith("HW Thermal Slowdown slowed the clocks under load (75% of the samples)")
    assert "HW Thermal Slowdown in 3/4" in thermal.evidence and "nvmlClocksEventReasons" in thermal.source
    # once in four samples (NVML: HW Slowdown may show during a clock change) is watched, not drained,
    # and so are two of two (fewer than MIN_LASTING samples)
    once = judged([under_load(text, hot)] + [under_load(text)] * 3)
    assert {f.klass for f in once[SECOND]} == {"monitor"}
    assert {f.klass for f in judged([under_load(text, hot)] * 2)[SECOND]} == {"monitor"}


def test_reasons_listed_while_the_power_cap_holds_the_clock_slow_nothing() -> None:
    """The recording's third GPU lists HW Power Brake and SW Thermal Slowdown at 39 C: listed the same
    under load, at the power cap and 1755 MHz, they are watched; with the clock halved, drained."""
    text = H100_Q.read_text()
    listed = {SECOND: {"HW Power Brake Slowdown": "Active", "SW Thermal Slowdown": "Active"}}
    found = judged([under_load(text, listed)] * 4)
    assert {f.klass for f in found[SECOND]} == {"monitor"}, found[SECOND]
    halved = {SECOND: {**listed[SECOND], "SM": "945 MHz"}}
    assert {f.klass for f in judged([under_load(text, halved)] * 4)[SECOND]} == {"drain"}


def test_a_lowered_power_limit_a_held_clock_and_a_hot_gpu_are_each_named() -> None:
    text = H100_Q.read_text()
    faults = {
        FIRST: {"Current Power Limit": "500.00 W", "Requested Power Limit": "500.00 W", "Power Draw": "499.80 W"},
        SECOND: {"SW Power Cap": "Not Active", "SM": "1005 MHz", "Power Draw": "350.00 W"},
        "00000000:75:00.0": {"GPU T.Limit Temp": "1 C"},
    }
    found = judged([under_load(text, faults)] * 2)
    assert [(f.klass, f.summary) for f in found[FIRST]] == [
        ("reset", f"power limit 500 W set below its default 700 W: restore it (nvidia-smi -i {FIRST} -pl 700)")
    ]
    (held,) = found[SECOND]
    assert held.klass == "reset" and held.summary.startswith("SM clock held at 1005 of 1980 MHz under load")
    (hot,) = found["00000000:75:00.0"]
    assert (hot.klass, hot.summary) == (
        "monitor",
        "ran 3 C from its slowdown temperature under load: check the airflow",
    )
    # the same low clock with SW Power Cap at the limit is how a loaded GPU runs, not a finding
    capped = judged([under_load(text, sm="1005 MHz")] * 2)
    assert {f.klass for f in capped[SECOND]} == {"healthy"}


def test_older_field_names_read_the_same() -> None:
    """Before driver 535: "Clocks Throttle Reasons", "Power Readings" with "Power Limit", and the slowdown
    temperature in degrees (as an A40 on driver 550 also prints it)."""
    text = under_load(H100_Q.read_text(), {FIRST: {"HW Slowdown": "Active", "SM": "990 MHz"}})
    text = text.replace("Clocks Event Reasons", "Clocks Throttle Reasons").replace(
        "GPU Power Readings", "Power Readings"
    )
    text = text.replace("Current Power Limit ", "Power Limit         ")
    text = re.sub(r"GPU Slowdown T.Limit Temp\s+: -2 C", "GPU Slowdown Temp                 : 87 C", text)
    (first, *_) = clocks.parse_samples(text)
    assert first.reasons == ("SW Power Cap", "HW Slowdown") and first.power_limit_w == 700
    assert first.slowdown_headroom_c == 87 - 36
    assert [f.klass for f in judged([text] * 3)[FIRST]] == ["drain"]


def test_thresholds_per_gpu_type_come_with_sources_and_can_be_overridden(tmp_path: Path) -> None:
    assert clocks.GPU_LIMITS, "no published figures per GPU type"
    for name, limits in clocks.GPU_LIMITS.items():
        assert name.startswith("NVIDIA ") and limits.source and (limits.max_sm_mhz or limits.power_w), name
    h100 = clocks.GPU_LIMITS["NVIDIA H100 80GB HBM3"]
    # the recorded H100 report agrees with the published figures for its type
    (first, *_) = clocks.parse_samples(H100_Q.read_text())
    assert (first.max_sm_mhz, first.default_power_limit_w) == (h100.max_sm_mhz, h100.power_w)
    # a file that says this type draws 1000 W: its default limit of 700 W is then a capped board (monitor)
    path = tmp_path / "exp.json"
    override = {"key": "NVIDIA H100 80GB HBM3", "power_w": 1000, "source": "our test"}
    path.write_text(json.dumps({"gpu_limits": [override], "temp_margin_c": 10}))
    exp = load(path)
    assert exp.gpu_limits["NVIDIA H100 80GB HBM3"] == clocks.GpuLimits(None, 1000, "our test")
    found = judged([under_load(H100_Q.read_text())] * 2, exp.clock_thresholds())
    (capped,) = found[FIRST]
    assert capped.klass == "monitor" and capped.source == "our test"
    assert capped.summary.startswith("default power limit 700 W below the 1000 W of a NVIDIA H100 80GB HBM3")


def test_the_burn_in_fails_a_gpu_that_cannot_hold_its_throughput() -> None:
    exp = Expectations()
    windows = [700.0] * 10
    steady = burn_in.Load(100.0, 110.0, windows)
    sagging = burn_in.Load(100.0, 110.0, [700.0, 690.0] + [450.0] * 8)
    ok = burn_in.burn_in_checks([steady, steady], [720.0, 720.0], None, exp, "n1", gpus=True)
    assert ok["burn_in"].status == "pass" and ok["burn_in"].measured == 700.0
    assert ok["health.clocks"].status == "skip"
    bad = burn_in.burn_in_checks([steady, sagging], [720.0, 720.0], None, exp, "n1", gpus=True)["burn_in"]
    assert (bad.status, bad.measured) == ("fail", 450.0)
    assert "the lowest is 62% of its own short matmul" in bad.detail and "state=drain reason=burn-in" in bad.action
    # CPU nodes record the figure, unjudged
    cpu = burn_in.burn_in_checks([steady, sagging], [720.0, 720.0], None, exp, "n1", gpus=False)["burn_in"]
    assert cpu.status == "skip" and "not judged on CPU nodes" in cpu.detail


@pytest.fixture
def recorded_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``nvidia-smi`` on PATH that answers each call with the next report in ``reports/`` (then the last)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (tmp_path / "reports").mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text(  # as nvidia-smi answers: -d leaves out the product name, which --query-gpu gives
        "#!/bin/bash\nset -euo pipefail\n"
        'if [[ "$1" == --query-gpu=pci.bus_id,name ]]; then\n'
        f'  grep "^GPU " {H100_Q} | sed "s/^GPU \\(.*\\)$/\\1, NVIDIA H100 80GB HBM3/"; exit 0\n'
        "fi\n"
        f'log="{tmp_path}/calls"; echo "$*" >> "$log"; n=$(wc -l < "$log")\n'
        f'r="{tmp_path}/reports/$n.txt"; [[ -f "$r" ]] || r=$(ls "{tmp_path}"/reports/*.txt | sort -V | tail -1)\n'
        'grep -v "Product Name" "$r"\n'
    )
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return tmp_path


def test_the_sampler_reads_the_gpus_while_a_real_load_runs(recorded_smi: Path) -> None:
    import torch

    text = H100_Q.read_text()
    hot = {SECOND: {"HW Power Brake Slowdown": "Active", "HW Slowdown": "Active", "SM": "990 MHz"}}
    (recorded_smi / "reports" / "1.txt").write_text(text)  # idle: before the load, outside the window
    for n in range(2, 40):
        (recorded_smi / "reports" / f"{n}.txt").write_text(under_load(text, hot))
    sampler = burn_in.Sampler(every_s=0.25).start()
    time.sleep(0.4)
    loaded = burn_in.run_load(torch.device("cpu"), 4.0)
    samples = sampler.stop()
    calls = (recorded_smi / "calls").read_text().splitlines()
    assert set(calls) == {" ".join(clocks.QUERY)} and sampler.calls == len(calls) >= 8
    assert len(samples) == 8 * sampler.calls and len(loaded.window_tflops) >= 3
    # -d printed no product name: the names query gave it, so the type's limits apply
    assert {s.product for s in samples} == {"NVIDIA H100 80GB HBM3"} and len(sampler.names) == 8
    checks = burn_in.burn_in_checks([loaded], [loaded.sustained()], samples, Expectations(), "n1", gpus=True)
    assert checks["burn_in"].status == "pass"
    brake = checks[f"health.clocks[GPU {SECOND}]"]
    assert (brake.status, brake.finding_class) == ("fail", "drain")
    assert "HW Power Brake Slowdown in" in brake.evidence and "drain n1" in brake.action
    summary = checks["health.clocks"]
    assert summary.measured == "drain" and re.search(r"in the [34] s every device was loaded", summary.detail)
    # the idle report before the load is not among the samples judged: no GPU is called idle
    assert "idle" not in json.dumps({k: c.detail for k, c in checks.items()})


def test_the_sampler_stops_once_the_burn_in_is_done(recorded_smi: Path) -> None:
    (recorded_smi / "reports" / "1.txt").write_text(H100_Q.read_text())
    over = threading.Event()
    sampler = burn_in.Sampler(every_s=0.05, done=over.is_set).start()
    time.sleep(0.5)
    over.set()
    time.sleep(0.3)
    calls = sampler.calls
    time.sleep(0.3)
    assert calls == sampler.calls >= 2 and len(sampler.stop()) == 8 * calls


def test_no_nvidia_smi_means_nothing_sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    sampler = burn_in.Sampler(every_s=0.1).start()
    time.sleep(0.3)
    assert sampler.stop() == [] and sampler.calls == 0
