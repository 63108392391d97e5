"""NVLink: each GPU's links (``nvidia-smi nvlink -s``) and their error counters (``nvidia-smi nvlink -e``).

Owns: parsing ``nvlink -s`` into `NvLinkStatus` (per GPU, per link: GB/s, or None for
``<inactive>``) and ``nvlink -e`` into `NvLinkErrors` (per GPU, per link: Replay, Recovery and CRC
error counts), and the findings about them.

Link rules (`findings`):

* a link ``<inactive>``, or slower than the fastest link of the same GPU, or a GPU whose links
  nvidia-smi cannot read ("Unable to retrieve NVLink information as all links are inActive"; a GPU
  listed with no line under it has no NVLink and is left out): **reset** the GPU (with nothing on
  it), then run the preflight again; a link still down after the reset is a bad NVLink or NVSwitch
  path: **drain** the node (the summary says so). Imbue's ``_NvlinkStatusHealthCheck`` fails a host
  with any ``<inactive>`` link and asks for a support ticket (imbue-ai/cluster-health@8f5964ac6209
  health_checks/health_checks.py); gpud reboots the system when all links fail
  (leptonai/gpud@4a8de33a3f02 components/accelerator/nvidia/nvlink). A reset first is the cheaper
  try: a link that trained badly at the last reset can come up at the next.

Error counter rules (`error_findings`): the counters count since the driver loaded or the GPU was
reset, so one read cannot tell an old burst from a live fault.

* any counter above zero: **monitor**. Imbue's ``_NvlinkHealthCheck`` only warns, from 5 errors on a
  node (``MIN_NVLINK_ERRORS_TO_WARN``): "these errors don't seem to impact training";
* given an earlier read (``before``) and the seconds between the two (``interval_s``), a Replay or
  Recovery count that grew by 1 or more, or a CRC count that grew by 100 or more per second:
  **drain**. These are DCGM's health-watch limits (NVIDIA/DCGM common/DcgmGPUHardwareLimits.h:
  ``DCGM_LIMIT_MAX_NVLINK_ERROR`` 1, ``DCGM_LIMIT_MAX_NVLINK_CRC_ERROR`` 100.0, "RM has informed us
  that CRC errors only matter at rates of 100+ per second"), where such a growth fails the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from test_case.health.findings import Finding, run_tool

CHECK = "nvlink"
SOURCE_LINKS = (
    "Imbue cluster-health _NvlinkStatusHealthCheck (imbue-ai/cluster-health@8f5964ac6209); "
    "gpud nvlink component (leptonai/gpud@4a8de33a3f02)"
)
SOURCE_COUNTS = (
    "Imbue cluster-health _NvlinkHealthCheck, MIN_NVLINK_ERRORS_TO_WARN (imbue-ai/cluster-health@8f5964ac6209)"
)
SOURCE_GROWTH = "NVIDIA DCGM health watch limits (NVIDIA/DCGM common/DcgmGPUHardwareLimits.h)"
MAX_REPLAY_RECOVERY_GROWTH = 1  # DCGM_LIMIT_MAX_NVLINK_ERROR
MAX_CRC_PER_S = 100.0  # DCGM_LIMIT_MAX_NVLINK_CRC_ERROR

_GPU = re.compile(r"^GPU (?P<index>\d+): (?P<name>.*?)(?: \(UUID: (?P<uuid>[^)]*)\))?\s*$")
_SPEED = re.compile(r"^Link (?P<link>\d+): (?P<value>.*)$")
_COUNT = re.compile(r"^Link (?P<link>\d+): (?P<counter>[A-Za-z ]+?): (?P<value>\S+)")


@dataclass
class NvLinkStatus:
    """One GPU of ``nvidia-smi nvlink -s``."""

    index: int
    name: str
    uuid: str = ""
    links: dict[int, float | None] = field(default_factory=dict)  # GB/s; None: <inactive>
    lines: dict[int, str] = field(default_factory=dict)  # each link's line, verbatim
    notes: list[str] = field(default_factory=list)  # any other line under the GPU (an NVML error)


@dataclass
class NvLinkErrors:
    """One GPU of ``nvidia-smi nvlink -e``: per link, counter name ("Replay Errors") -> count."""

    index: int
    name: str
    uuid: str = ""
    links: dict[int, dict[str, int]] = field(default_factory=dict)


def _gpu_header(line: str) -> tuple[int, str, str] | None:
    match = _GPU.match(line)
    if not match:
        return None
    return int(match.group("index")), match.group("name"), match.group("uuid") or ""


def parse_nvlink_status(text: str) -> list[NvLinkStatus]:
    """The GPUs of ``nvidia-smi nvlink -s`` output."""
    gpus: list[NvLinkStatus] = []
    for raw in text.splitlines():
        line = raw.strip()
        header = _gpu_header(line)
        if header:
            gpus.append(NvLinkStatus(*header))
        elif gpus and (match := _SPEED.match(line)):
            value = match.group("value").strip()
            speed = re.match(r"([\d.]+)\s*GB/s", value)
            link = int(match.group("link"))
            gpus[-1].links[link] = float(speed.group(1)) if speed else None
            gpus[-1].lines[link] = line
        elif gpus and line and line != "[...]":
            gpus[-1].notes.append(line)
    return gpus


def parse_nvlink_errors(text: str) -> list[NvLinkErrors]:
    """The GPUs of ``nvidia-smi nvlink -e`` output (``[...]`` lines, the author's cuts, are skipped)."""
    gpus: list[NvLinkErrors] = []
    for raw in text.splitlines():
        line = raw.strip()
        header = _gpu_header(line)
        if header:
            gpus.append(NvLinkErrors(*header))
        elif gpus and (match := _COUNT.match(line)):
            value = match.group("value")
            if value.isdigit():  # "N/A" on links that do not count it
                gpus[-1].links.setdefault(int(match.group("link")), {})[match.group("counter")] = int(value)
    return gpus


def findings(gpus: list[NvLinkStatus]) -> list[Finding]:
    """One finding per GPU: healthy, or reset naming its inactive or slow links (module docstring)."""
    found: list[Finding] = []
    for gpu in gpus:
        subject = f"GPU {gpu.index}"
        speeds = [s for s in gpu.links.values() if s is not None]
        fastest = max(speeds, default=None)
        inactive = [n for n, s in gpu.links.items() if s is None]
        slow = [n for n, s in gpu.links.items() if s is not None and fastest is not None and s < fastest]
        if not gpu.links and not gpu.notes:
            continue  # a GPU without NVLink (PCIe cards) lists none
        if not gpu.links:
            found.append(
                Finding(
                    CHECK,
                    subject,
                    "reset",
                    "nvidia-smi reads no NVLink of this GPU: reset it; if it still reads none, drain the node",
                    gpu.notes[0],
                    SOURCE_LINKS,
                )
            )
        elif inactive or slow:
            parts = []
            if inactive:
                parts.append(f"link(s) {', '.join(map(str, inactive))} inactive")
            if slow:
                parts.append(f"link(s) {', '.join(map(str, slow))} slower than the GPU's {fastest:g} GB/s")
            evidence = "; ".join(gpu.lines[n] for n in inactive + slow)
            found.append(
                Finding(
                    CHECK,
                    subject,
                    "reset",
                    f"{' and '.join(parts)}: reset the GPU; if it persists after the reset, drain the node "
                    "(NVLink or NVSwitch hardware)",
                    evidence,
                    SOURCE_LINKS,
                )
            )
        else:
            found.append(
                Finding(
                    CHECK,
                    subject,
                    "healthy",
                    f"{len(gpu.links)} links at {fastest:g} GB/s",
                    gpu.lines[min(gpu.lines)],
                )
            )
    return found


def error_findings(
    errors: list[NvLinkErrors], before: list[NvLinkErrors] | None = None, interval_s: float | None = None
) -> list[Finding]:
    """Findings for non-zero NVLink error counters, one per GPU and link; with an earlier read ``before``
    taken ``interval_s`` seconds before, the growth against DCGM's limits (module docstring). A GPU
    with every counter at zero gives one healthy finding."""
    earlier = {g.index: g.links for g in before or []}
    found: list[Finding] = []
    for gpu in errors:
        subject = f"GPU {gpu.index}"
        mine: list[Finding] = []
        for link, counters in sorted(gpu.links.items()):
            nonzero = {k: v for k, v in counters.items() if v > 0}
            if not nonzero:
                continue
            evidence = "; ".join(f"Link {link}: {k}: {v}" for k, v in nonzero.items())
            grew = _growth(counters, earlier.get(gpu.index, {}).get(link), interval_s)
            if grew:
                mine.append(
                    Finding(
                        CHECK, f"{subject} link {link}", "drain", f"{grew}: NVLink hardware", evidence, SOURCE_GROWTH
                    )
                )
            else:
                mine.append(
                    Finding(
                        CHECK,
                        f"{subject} link {link}",
                        "monitor",
                        "NVLink error counters above zero since the driver loaded: watch whether they grow",
                        evidence,
                        SOURCE_COUNTS,
                    )
                )
        found += mine or [Finding(CHECK, subject, "healthy", f"no NVLink errors on {len(gpu.links)} link(s) listed")]
    return found


def _growth(now: dict[str, int], then: dict[str, int] | None, interval_s: float | None) -> str:
    """Why the counters' growth since ``then`` passes DCGM's limits, or ""."""
    if then is None or not interval_s or interval_s <= 0:
        return ""
    reasons = []
    for name, value in now.items():
        delta = value - then.get(name, value)
        if "CRC" in name and delta / interval_s >= MAX_CRC_PER_S:
            reasons.append(f"{name} grew {delta / interval_s:.0f}/s (limit {MAX_CRC_PER_S:g}/s)")
        elif ("Replay" in name or "Recovery" in name) and delta >= MAX_REPLAY_RECOVERY_GROWTH:
            reasons.append(f"{name} grew by {delta} in {interval_s:g} s")
    return "; ".join(reasons)


def read_nvlink_status() -> list[NvLinkStatus] | None:
    """``nvidia-smi nvlink -s`` on this host, parsed; None when nvidia-smi is not on PATH or fails."""
    out = run_tool("nvidia-smi", "nvlink", "-s")
    return None if out is None or out.returncode != 0 else parse_nvlink_status(out.stdout)


def read_nvlink_errors() -> list[NvLinkErrors] | None:
    """``nvidia-smi nvlink -e`` on this host, parsed; None when nvidia-smi is not on PATH or fails."""
    out = run_tool("nvidia-smi", "nvlink", "-e")
    return None if out is None or out.returncode != 0 else parse_nvlink_errors(out.stdout)
