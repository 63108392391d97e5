"""GPU clocks, temperature and power under load: ``nvidia-smi -q`` samples taken during a burn-in,
judged per GPU with the clock event (throttle) reasons that explain them.

Owns: `read_sample` (one ``nvidia-smi -q -d PERFORMANCE,CLOCK,TEMPERATURE,POWER`` call), `parse_samples`
(its text, or a full ``nvidia-smi -q``, into one `GpuSample` per GPU), the published limits per GPU
type (`GPU_LIMITS`, each with its source) and `findings`: what the samples of one burn-in say about
each GPU. The load itself needs torch and lives in the preflight (`test_case.preflight.burn_in`);
everything here is standard library, like the other readers.

The rules (`findings`), over the samples a GPU was busy in (``Idle`` not active), with their sources:

* ``HW Slowdown``, ``HW Thermal Slowdown``, ``HW Power Brake Slowdown`` or ``SW Thermal Slowdown``
  active while the clock is lower than the power cap explains (below ``min_clock_fraction`` of its
  maximum, or below its maximum while drawing less than ``power_cap_fraction`` of its limit), in more
  than half of the samples and at least `MIN_LASTING` of them: **drain**. NVML: the
  hardware cuts the clocks by half or more because the GPU is too hot, the power supply asserted the
  power brake, or the draw tripped the fast power protection; SW Thermal lowers them to keep the GPU
  below its maximum operating temperature. DCGM's diagnostics fail a GPU on the same four reasons
  (NVIDIA/DCGM@72fa3fe nvvs/src/DcgmRecorder.cpp), gpud calls one unhealthy when the hardware ones
  last (60 % of the minutes of 10, leptonai/gpud@4a8de33 hw-slowdown). NVML also says HW Slowdown may
  show during a P-state or clock change, hence a majority of the samples, not one. Fewer, or only with
  clocks the power cap explains: **monitor** (the recorded H100 report has a GPU at 1980 MHz, 39 C
  and 118 W that lists HW Power Brake and SW Thermal Slowdown: reasons that slow nothing).
* A current power limit below the board's default limit: **reset** (someone lowered it with
  ``nvidia-smi -pl``; NVML: such a limit does not survive a reboot or a driver reload; restore it with
  ``nvidia-smi -i <GPU> -pl <default>``). A default limit, or a maximum SM clock, below what NVIDIA
  gives for the type (`GPU_LIMITS`): **monitor** (a capped board or firmware; expect lower throughput).
* The SM clock's median under load below ``min_clock_fraction`` of the GPU's maximum, while it draws
  less than ``power_cap_fraction`` of its limit and no power or thermal reason lasts: **reset** (the
  clocks are held low: locked clocks or lowered application clocks, which ``nvidia-smi -rgc`` and
  ``-rac`` undo). SW Power Cap with the draw at its limit is how a fully loaded GPU runs: **healthy**
  (DCGM and Azure's health checks count it benign too).
* The temperature within ``temp_margin_c`` of the GPU's own slowdown temperature: **monitor** (it runs
  hot: look at the airflow before it throttles).
* No sample under load: **monitor** (the load did not reach this GPU while it was sampled).

Drivers differ in their field names, and every form read here is in a recorded output:
``Clocks Event Reasons`` (``Clocks Throttle Reasons`` before driver 535), ``GPU Power Readings``
(``Power Readings`` before), ``Current Power Limit`` (``Power Limit``), and the slowdown temperature
as ``GPU Slowdown Temp`` in degrees or, on H100 with driver 535, as margins (``GPU T.Limit Temp``,
``GPU Slowdown T.Limit Temp``).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from test_case.health.findings import Finding, FindingClass, run_tool
from test_case.health.gpu_identity import parse_nvidia_smi_q

CHECK = "clocks"
QUERY = ("-q", "-d", "PERFORMANCE,CLOCK,TEMPERATURE,POWER")
SOURCE_NVML = (
    "NVML API reference, nvmlClocksEventReasons (docs.nvidia.com/deploy/nvml-api); DCGM fails the same reasons "
    "(NVIDIA/DCGM@72fa3fe nvvs/src/DcgmRecorder.cpp)"
)
SOURCE_SMI = "NVML nvmlDeviceSetPowerManagementLimit, nvmlDeviceSetGpuLockedClocks; nvidia-smi -pl, -rgc, -rac"
SOURCE_DCGM_SKUS = "NVIDIA DCGM targeted_power target per SKU (NVIDIA/DCGM@72fa3fe nvvs/diag-skus.yaml.in)"
# the reasons that slow a GPU for want of cooling or power: drains when they last
SLOWING = ("HW Slowdown", "HW Thermal Slowdown", "HW Power Brake Slowdown", "SW Thermal Slowdown")
POWER_OR_THERMAL = (*SLOWING, "SW Power Cap")
AT_MAX = 0.95  # an SM clock at least this share of its maximum is not being slowed
MIN_LASTING = 3  # samples: fewer slowed samples than this are never a drain


@dataclass(frozen=True)
class GpuLimits:
    """What NVIDIA publishes for one GPU type: the maximum SM clock and the board power."""

    max_sm_mhz: float | None
    power_w: float | None
    source: str


# Keyed by the product name nvidia-smi prints; None where no figure from NVIDIA (or a recorded report) was found.
GPU_LIMITS: dict[str, GpuLimits] = {
    "NVIDIA A100-SXM4-80GB": GpuLimits(
        1410,
        400,
        "A100 SXM4: 1410 MHz boost and 400 W maximum TDP (techpowerup.com/gpu-specs, deviceQuery's 1410 MHz on "
        "upb-pc2's A100 page); DCGM targeted_power 399 W (" + SOURCE_DCGM_SKUS + ")",
    ),
    "NVIDIA H100 80GB HBM3": GpuLimits(
        1980,
        700,
        "recorded nvidia-smi -q of 8 H100 SXM (Max Clocks SM 1980 MHz, Default Power Limit 700 W; "
        "leptonai/gpud@2175d7d3 testdata); DCGM targeted_power 700 W (" + SOURCE_DCGM_SKUS + ")",
    ),
    "NVIDIA H100 PCIe": GpuLimits(None, 350, "NVIDIA H100 PCIe product brief PB-11133-001: 350 W"),
    "NVIDIA H200": GpuLimits(None, 700, "DCGM targeted_power 700 W for H200 (" + SOURCE_DCGM_SKUS + ")"),
    "NVIDIA B200": GpuLimits(None, 1000, "DCGM targeted_power 1000 W for B200 (" + SOURCE_DCGM_SKUS + ")"),
}


@dataclass(frozen=True)
class Thresholds:
    """How far a GPU may stray under load before a finding; `Expectations` carries the overrides."""

    min_clock_fraction: float = 0.75  # an SM clock held below this share of its maximum, without a reason
    power_cap_fraction: float = 0.9  # drawing at least this share of the limit: the power cap explains low clocks
    temp_margin_c: float = 5.0  # closer than this to the slowdown temperature: monitor
    lasting_fraction: float = 0.5  # a reason active in more than this share of the samples lasts
    limits: Mapping[str, GpuLimits] = field(default_factory=lambda: dict(GPU_LIMITS))


DEFAULT = Thresholds()


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one moment, as ``nvidia-smi -q`` saw it (None: the field is absent or N/A)."""

    at: float  # time.time() when the call began
    bus_id: str
    product: str
    sm_mhz: float | None
    max_sm_mhz: float | None
    temp_c: float | None
    slowdown_headroom_c: float | None  # degrees left before the slowdown temperature
    power_w: float | None
    power_limit_w: float | None
    default_power_limit_w: float | None
    reasons: tuple[str, ...]  # the clock event reasons that were Active
    until: float = 0.0  # time.time() when the call returned (0: not timed)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _number(value: str | None) -> float | None:
    match = _NUMBER.match(value.strip()) if value else None
    return float(match.group()) if match else None


def _first(fields: Mapping[str, str], *paths: str) -> float | None:
    for path in paths:
        if (found := _number(fields.get(path))) is not None:
            return found
    return None


def _headroom(fields: Mapping[str, str], temp: float | None) -> float | None:
    slowdown = _number(fields.get("Temperature/GPU Slowdown Temp"))
    if slowdown is not None and temp is not None:
        return slowdown - temp
    margin = _number(fields.get("Temperature/GPU T.Limit Temp"))  # degrees below T.Limit now
    at_slowdown = _number(fields.get("Temperature/GPU Slowdown T.Limit Temp"))  # the margin where it slows
    return None if margin is None or at_slowdown is None else margin - at_slowdown


def parse_samples(
    text: str, at: float = 0.0, names: Mapping[str, str] | None = None, until: float = 0.0
) -> list[GpuSample]:
    """One `GpuSample` per GPU of ``nvidia-smi -q`` output (with or without ``-d``), read from ``at`` to
    ``until``. ``-d`` leaves out the product name: ``names`` (bus id -> name, `read_names`) gives it."""
    samples = []
    for gpu in parse_nvidia_smi_q(text):
        f = gpu.fields
        reasons = tuple(
            path.split("/", 1)[1]
            for path, value in f.items()
            if path.split("/", 1)[0] in ("Clocks Event Reasons", "Clocks Throttle Reasons") and value == "Active"
        )
        temp = _number(f.get("Temperature/GPU Current Temp"))
        samples.append(
            GpuSample(
                at=at,
                bus_id=gpu.bus_id,
                product=gpu.product_name or (names or {}).get(gpu.bus_id.upper(), ""),
                sm_mhz=_number(f.get("Clocks/SM")),
                max_sm_mhz=_number(f.get("Max Clocks/SM")),
                temp_c=temp,
                slowdown_headroom_c=_headroom(f, temp),
                power_w=_first(f, "GPU Power Readings/Power Draw", "Power Readings/Power Draw"),
                power_limit_w=_first(
                    f,
                    "GPU Power Readings/Current Power Limit",
                    "Power Readings/Enforced Power Limit",
                    "Power Readings/Power Limit",
                ),
                default_power_limit_w=_first(
                    f, "GPU Power Readings/Default Power Limit", "Power Readings/Default Power Limit"
                ),
                reasons=reasons,
                until=until,
            )
        )
    return samples


def read_names() -> dict[str, str]:
    """Bus id (upper case, as ``-q`` prints it) -> product name, from ``nvidia-smi --query-gpu``; {} when
    it cannot tell."""
    out = run_tool("nvidia-smi", "--query-gpu=pci.bus_id,name", "--format=csv,noheader", timeout=20.0)
    if out is None or out.returncode != 0:
        return {}
    pairs = (line.split(",", 1) for line in out.stdout.splitlines() if "," in line)
    return {bus.strip().upper(): name.strip() for bus, name in pairs}


def read_sample(names: Mapping[str, str] | None = None) -> list[GpuSample] | None:
    """This node's GPUs now (None: no nvidia-smi on PATH, or it failed), named by ``names`` (`read_names`).
    A driver whose ``-d PERFORMANCE`` leaves out the clock event reasons is asked for the whole ``-q``."""
    at = time.time()
    out = run_tool("nvidia-smi", *QUERY, timeout=20.0)
    if out is None or out.returncode != 0:
        return None
    text = out.stdout
    if "Clocks Event Reasons" not in text and "Clocks Throttle Reasons" not in text:
        whole = run_tool("nvidia-smi", "-q", timeout=20.0)
        text = whole.stdout if whole is not None and whole.returncode == 0 else text
    return parse_samples(text, at, names, until=time.time()) or None


def _share(samples: list[GpuSample], reason: str) -> float:
    return sum(reason in s.reasons for s in samples) / len(samples)


def _median(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _fmt(value: float | None, unit: str) -> str:
    return "?" if value is None else f"{value:.0f} {unit}"


def gpu_findings(samples: list[GpuSample], thresholds: Thresholds = DEFAULT) -> list[Finding]:
    """What the samples of one GPU (all taken during a burn-in) say about it."""
    first = samples[0]
    subject = f"GPU {first.bus_id}"
    busy = [s for s in samples if "Idle" not in s.reasons]
    if not busy:
        return [
            Finding(
                CHECK,
                subject,
                "monitor",
                f"idle in all {len(samples)} sample(s): the load did not reach this GPU while it was sampled",
                f"Clocks Event Reasons: Idle: Active; SM {_fmt(first.sm_mhz, 'MHz')}",
            )
        ]
    n = len(busy)
    sm = _median(s.sm_mhz for s in busy)
    power = _median(s.power_w for s in busy)
    limit = _median(s.power_limit_w for s in busy)
    default = _median(s.default_power_limit_w for s in busy)
    type_limits = thresholds.limits.get(first.product)
    max_sm = _median(s.max_sm_mhz for s in busy) or (type_limits.max_sm_mhz if type_limits else None)
    temp = max((s.temp_c for s in busy if s.temp_c is not None), default=None)
    headroom = min((s.slowdown_headroom_c for s in busy if s.slowdown_headroom_c is not None), default=None)
    seen = sorted({r for s in busy for r in s.reasons}, key=lambda r: -_share(busy, r))
    figures = (
        f"SM {_fmt(sm, 'MHz')} of {_fmt(max_sm, 'MHz')}, {_fmt(power, 'W')} of a {_fmt(limit, 'W')} limit, "
        f"up to {_fmt(temp, 'C')}" + (f" ({headroom:.0f} C below slowdown)" if headroom is not None else "")
    )
    shares = ", ".join(f"{r} in {sum(r in s.reasons for s in busy)}/{n}" for r in seen) or "no reason active"
    evidence = f"{n} sample(s) under load: {figures}; Clocks Event Reasons: {shares}"
    found: list[Finding] = []

    def add(klass: FindingClass, summary: str, source: str) -> None:
        found.append(Finding(CHECK, subject, klass, summary, evidence, source))

    def slowing(s: GpuSample) -> bool:
        """The clock is below what the power cap explains: far below its maximum (hardware slowdown halves
        it), or below its maximum while the GPU draws less than its limit allows."""
        if s.sm_mhz is None or not max_sm:
            return True
        far_below = s.sm_mhz < thresholds.min_clock_fraction * max_sm
        capped = (
            s.power_w is not None and s.power_limit_w and s.power_w >= thresholds.power_cap_fraction * s.power_limit_w
        )
        return far_below or (s.sm_mhz < AT_MAX * max_sm and not capped)

    for reason in SLOWING:
        active = [s for s in busy if reason in s.reasons]
        slowed = [s for s in active if slowing(s)]
        if len(slowed) > thresholds.lasting_fraction * n and len(slowed) >= MIN_LASTING:
            add("drain", f"{reason} slowed the clocks under load ({len(slowed) / n:.0%} of the samples)", SOURCE_NVML)
        elif slowed:
            add("monitor", f"{reason} in {len(slowed) / n:.0%} of the samples under load (not lasting)", SOURCE_NVML)
        elif active:
            add(
                "monitor",
                f"{reason} reported with the clock at its maximum or held only by the power cap: it slowed nothing",
                SOURCE_NVML,
            )
    if limit is not None and default is not None and limit < default - 1:
        add(
            "reset",
            f"power limit {limit:.0f} W set below its default {default:.0f} W: restore it "
            f"(nvidia-smi -i {first.bus_id} -pl {default:.0f})",
            SOURCE_SMI,
        )
    if type_limits and type_limits.power_w and default is not None and default < 0.98 * type_limits.power_w:
        add(
            "monitor",
            f"default power limit {default:.0f} W below the {type_limits.power_w:.0f} W of a {first.product}: "
            "a capped board or firmware, expect lower throughput",
            type_limits.source,
        )
    own_max = _median(s.max_sm_mhz for s in busy)
    if type_limits and type_limits.max_sm_mhz and own_max is not None and own_max < 0.98 * type_limits.max_sm_mhz:
        add(
            "monitor",
            f"maximum SM clock {own_max:.0f} MHz below the {type_limits.max_sm_mhz:.0f} MHz of a {first.product}: "
            "capped by its firmware, expect lower throughput",
            type_limits.source,
        )
    explained = any(_share(busy, r) >= thresholds.lasting_fraction for r in POWER_OR_THERMAL) or (
        power is not None and limit is not None and power >= thresholds.power_cap_fraction * limit
    )
    if sm is not None and max_sm and sm < thresholds.min_clock_fraction * max_sm and not explained:
        add(
            "reset",
            f"SM clock held at {sm:.0f} of {max_sm:.0f} MHz under load with no power or thermal reason: locked or "
            f"lowered clocks (nvidia-smi -i {first.bus_id} -rgc; -rac)",
            SOURCE_SMI,
        )
    if headroom is not None and headroom < thresholds.temp_margin_c:
        add(
            "monitor",
            f"ran {headroom:.0f} C from its slowdown temperature under load: check the airflow",
            "the GPU's own slowdown temperature (nvidia-smi -q)",
        )
    return found or [Finding(CHECK, subject, "healthy", f"under load: {figures}", evidence)]


def findings(samples: Iterable[GpuSample], thresholds: Thresholds = DEFAULT) -> list[Finding]:
    """Every GPU's findings, from samples of all of them (grouped by bus id, in the order first seen)."""
    per_gpu: dict[str, list[GpuSample]] = {}
    for s in samples:
        per_gpu.setdefault(s.bus_id, []).append(s)
    return [f for gpu in per_gpu.values() for f in gpu_findings(gpu, thresholds)]
