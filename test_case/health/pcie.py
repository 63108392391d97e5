"""PCIe links (``lspci -vvv``): the GPUs', the NICs' and the switch ports' above them, each against what it can do.

Owns: parsing ``lspci -vvv`` (with or without ``-D``, the domain form) into `PciDevice` records, each
with its bridge bus range and its link's capability (``LnkCap``: speed in GT/s, width xN) and status
(``LnkSta``: speed, width and lspci's own ``(ok)``/``(downgraded)`` marks), and the findings about them.

Which devices are watched: NVIDIA GPUs (NVIDIA "3D controller" or "VGA compatible controller"),
NVIDIA/Mellanox NICs ("Infiniband controller", "Ethernet controller"), and the PCIe switch ports
(bridges whose Express capability says "Upstream Port" or "Downstream Port") and root ports whose
bus range holds one of those. Other devices (NVMe, the BMC's VGA, NVSwitch management links) are left
alone.

The rules (`findings`), with their sources:

* a GPU or NIC link narrower than its capability (``Width x8`` where ``LnkCap`` says ``x16``): **drain**.
  Lost lanes do not come back by themselves: a reseat, a riser or cable, or an RMA. Oracle's GPU
  health checks fail a node on it ("PCIe width missing lanes", oracle-quickstart/oci-gpu-scanner,
  Dr.HPC ``pcie_width_missing_lanes_check``), and Imbue's ``_DmesgLimitedPcieHealthCheck``
  (imbue-ai/cluster-health@8f5964ac6209 health_checks/health_checks.py) takes a ConnectX with
  "available PCIe bandwidth, limited by" out of multi-node training (``PcieLimitedHealthCheckError``);
* a NIC link slower than its capability: **drain**, the same Imbue rule (the kernel's "limited by"
  line is a speed or a width below the card's). ConnectX cards do not change link speed at idle (the
  fixture's CX-7 says ``ASPM not supported``), so a slow NIC link is a fault, not power saving;
* a GPU link slower than its capability: **monitor** only. An idle NVIDIA GPU lowers its PCIe link
  generation to save power and raises it again under load (nvidia-smi's documentation of the current
  link: "These may be reduced when the GPU is not in use", quoted in NVIDIA's forum thread "Prevent
  PCIe From Reducing Gen?", forums.developer.nvidia.com/t/prevent-pcie-from-reducing-gen/72537: part
  of the GPU's power management, with no knob). The preflight runs on idle GPUs, so the speed is not a
  reliable signal there. The width is: that documentation allows it to shrink too, but data-center
  GPUs keep their lanes at idle (the recorded idle H100s: ``Width x16 (ok)`` in lspci, ``Link Width
  Current: 16x`` at 0 % utilisation in ``nvidia-smi -q``), and Oracle's check holds the width at any
  time. Imbue checks no GPU link speed at all, and gpud (leptonai/gpud@4a8de33a3f02, pkg/pci) parses
  lspci for ACS only, so neither drains on a GPU's speed;
* a switch or root port above a watched device, downgraded: the class its worst device below would get
  for the same loss (a narrower link: drain; a slower link: drain above a NIC, monitor above GPUs only,
  since the link to an idle GPU is the same link and slows with it);
* a switch port with no watched device below it in the listing (the port leads to something else,
  or the listing is an excerpt), downgraded: **monitor**. A downstream port's link is trained with
  whatever sits below it, and a slower device there (a Gen4 NVMe on a Gen5 switch) leaves exactly this
  mark without anything being wrong.

A watched device whose capabilities lspci could not read (``<access denied>``: lspci run as a user,
not root) gives one monitor finding saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from test_case.health.findings import Finding, FindingClass, run_tool

CHECK = "pcie"
SOURCE_WIDTH = (
    "Oracle oci-gpu-scanner pcie_width_missing_lanes_check; Imbue cluster-health PcieLimitedHealthCheckError "
    "(imbue-ai/cluster-health@8f5964ac6209)"
)
SOURCE_GPU_SPEED = (
    "nvidia-smi, the current PCIe link: 'These may be reduced when the GPU is not in use'; "
    "forums.developer.nvidia.com/t/prevent-pcie-from-reducing-gen/72537"
)
SOURCE_SWITCH = "a downstream port trains its link with the device below it (PCIe link training)"

_HEADER = re.compile(r"^(?P<addr>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+(?P<rest>.*)$")
_SPEED = re.compile(r"Speed\s+(?P<speed>[\d.]+)GT/s(?:\s*\((?P<mark>[^)]*)\))?")
_WIDTH = re.compile(r"Width\s+x(?P<width>\d+)(?:\s*\((?P<mark>[^)]*)\))?")
_BUS = re.compile(r"secondary=(?P<sec>[0-9a-fA-F]+),\s*subordinate=(?P<sub>[0-9a-fA-F]+)")


@dataclass(frozen=True)
class Link:
    """One ``LnkCap`` or ``LnkSta`` line: speed (GT/s, None when lspci says unknown), width and marks."""

    speed_gts: float | None
    width: int | None
    speed_mark: str = ""  # LnkSta only: "ok", "downgraded" (newer lspci), "" when not printed
    width_mark: str = ""
    line: str = ""


@dataclass
class PciDevice:
    """One ``lspci -vvv`` block."""

    address: str  # as printed: "19:00.0" or, with -D, "0000:19:00.0"
    device_class: str  # "3D controller", "PCI bridge", "Ethernet controller"
    description: str  # "NVIDIA Corporation Device 2330 (rev a1)"
    port_type: str = ""  # from "Express (v2) Downstream Port (Slot+)": "Downstream Port", "Endpoint", ...
    cap: Link | None = None
    sta: Link | None = None
    secondary_bus: int | None = None  # bridges: the buses below them
    subordinate_bus: int | None = None
    access_denied: bool = False
    lines: list[str] = field(default_factory=list, repr=False)

    @property
    def domain(self) -> str:
        return self.address.split(":")[0] if self.address.count(":") == 2 else "0000"

    @property
    def bus(self) -> int:
        return int(self.address.split(":")[-2], 16)

    @property
    def kind(self) -> str:
        """``gpu``, ``nic``, ``switch`` (a switch port), ``root`` (a root port) or ``other``."""
        text = self.description
        if "NVIDIA" in text and self.device_class in ("3D controller", "VGA compatible controller"):
            return "gpu"
        if self.device_class in ("Infiniband controller", "Ethernet controller") and (
            "Mellanox" in text or "NVIDIA" in text
        ):
            return "nic"
        if self.port_type in ("Upstream Port", "Downstream Port"):
            return "switch"
        if self.port_type == "Root Port":
            return "root"
        return "other"


def _link(line: str) -> Link:
    speed = _SPEED.search(line)
    width = _WIDTH.search(line)
    return Link(
        speed_gts=float(speed.group("speed")) if speed else None,
        width=int(width.group("width")) if width else None,
        speed_mark=(speed.group("mark") or "") if speed else "",
        width_mark=(width.group("mark") or "") if width else "",
        line=line.strip(),
    )


def parse_lspci(text: str) -> list[PciDevice]:
    """The devices of ``lspci -vvv`` (or ``-D -vvv``, ``-nn -vvv``) output, in order."""
    devices: list[PciDevice] = []
    for raw in text.splitlines():
        header = _HEADER.match(raw)
        if header and not raw[:1].isspace():
            dev_class, _, description = header.group("rest").partition(": ")
            dev_class = re.sub(r"\s*\[[0-9a-fA-F]{4}\]$", "", dev_class)  # -nn: "3D controller [0302]"
            devices.append(PciDevice(header.group("addr"), dev_class, description))
            continue
        if not devices or not raw.strip():
            continue
        dev = devices[-1]
        dev.lines.append(raw)
        line = raw.strip()
        if line.startswith("LnkCap:") and dev.cap is None:
            dev.cap = _link(line)
        elif line.startswith("LnkSta:") and dev.sta is None:
            dev.sta = _link(line)
        elif line.startswith("Bus:") and (bus := _BUS.search(line)):
            dev.secondary_bus, dev.subordinate_bus = int(bus.group("sec"), 16), int(bus.group("sub"), 16)
        elif "Express" in line and line.startswith("Capabilities:"):
            express = re.search(r"Express \([^)]*\) (?P<type>[A-Za-z ]+?)(?: \(|,|$)", line)
            if express:
                dev.port_type = express.group("type").strip()
        elif "<access denied>" in line:
            dev.access_denied = True
    return devices


def _below(bridge: PciDevice, devices: list[PciDevice]) -> list[PciDevice]:
    """The watched GPUs and NICs in ``bridge``'s bus range."""
    if bridge.secondary_bus is None or bridge.subordinate_bus is None:
        return []
    return [
        d
        for d in devices
        if d.kind in ("gpu", "nic")
        and d.domain == bridge.domain
        and bridge.secondary_bus <= d.bus <= bridge.subordinate_bus
    ]


def _narrower(dev: PciDevice) -> bool:
    cap, sta = dev.cap, dev.sta
    if cap is None or sta is None:
        return False
    if sta.width_mark == "downgraded":
        return True
    return cap.width is not None and sta.width is not None and sta.width < cap.width


def _slower(dev: PciDevice) -> bool:
    cap, sta = dev.cap, dev.sta
    if cap is None or sta is None:
        return False
    if sta.speed_mark == "downgraded":
        return True
    return cap.speed_gts is not None and sta.speed_gts is not None and sta.speed_gts < cap.speed_gts


def _describe(dev: PciDevice) -> str:
    cap, sta = dev.cap, dev.sta
    assert cap is not None and sta is not None
    return f"{_gts(sta)} x{sta.width or '?'} of {_gts(cap)} x{cap.width or '?'}"


def _gts(link: Link) -> str:
    return "unknown speed" if link.speed_gts is None else f"{link.speed_gts:g} GT/s"


def _subject(dev: PciDevice) -> str:
    names = {"gpu": "GPU", "nic": "NIC", "switch": "PCIe switch port", "root": "PCIe root port"}
    return f"{names.get(dev.kind, 'PCI device')} {dev.address}"


def _device_finding(dev: PciDevice, devices: list[PciDevice]) -> Finding | None:
    evidence = dev.sta.line if dev.sta else ""
    narrow, slow = _narrower(dev), _slower(dev)
    if dev.kind in ("gpu", "nic"):
        if narrow:
            return Finding(
                CHECK,
                _subject(dev),
                "drain",
                f"link narrower than its capability ({_describe(dev)}): lost lanes cost bandwidth; reseat or RMA",
                evidence,
                SOURCE_WIDTH,
            )
        if slow and dev.kind == "nic":
            return Finding(
                CHECK,
                _subject(dev),
                "drain",
                f"NIC link slower than its capability ({_describe(dev)}): the NIC's bandwidth is limited",
                evidence,
                SOURCE_WIDTH,
            )
        if slow:
            return Finding(
                CHECK,
                _subject(dev),
                "monitor",
                f"GPU link slower than its capability ({_describe(dev)}): normal while the GPU is idle "
                "(power saving); the width is full",
                evidence,
                SOURCE_GPU_SPEED,
            )
        return Finding(CHECK, _subject(dev), "healthy", f"link at its capability ({_describe(dev)})", evidence)
    if not (narrow or slow):
        return None
    below = _below(dev, devices)
    if not below:
        if dev.kind != "switch":
            return None  # a root port to something not watched
        return Finding(
            CHECK,
            _subject(dev),
            "monitor",
            f"switch port link below its capability ({_describe(dev)}) with no GPU or NIC below it in this "
            "listing: the link trains to the slower device below",
            evidence,
            SOURCE_SWITCH,
        )
    nics = [d.address for d in below if d.kind == "nic"]
    klass: FindingClass = "drain" if narrow or nics else "monitor"
    what = "narrower" if narrow else "slower"
    return Finding(
        CHECK,
        _subject(dev),
        klass,
        f"port link {what} than its capability ({_describe(dev)}) above {', '.join(d.address for d in below)}",
        evidence,
        SOURCE_WIDTH if klass == "drain" else SOURCE_GPU_SPEED,
    )


def findings(devices: list[PciDevice]) -> list[Finding]:
    """One finding per watched device (healthy ones too) and per downgraded port (module docstring)."""
    found: list[Finding] = []
    denied = [d.address for d in devices if d.kind in ("gpu", "nic") and d.access_denied and d.sta is None]
    if denied:
        found.append(
            Finding(
                CHECK,
                "node",
                "monitor",
                f"lspci could not read the link of {', '.join(denied)}: run it as root",
                "Capabilities: <access denied>",
            )
        )
    for dev in devices:
        if dev.sta is None or dev.cap is None:
            continue
        finding = _device_finding(dev, devices)
        if finding is not None:
            found.append(finding)
    return found


def read_lspci() -> list[PciDevice] | None:
    """``lspci -D -vvv`` on this host, parsed; None when lspci is not on PATH or fails."""
    out = run_tool("lspci", "-D", "-vvv")
    if out is None or out.returncode != 0:
        return None
    return parse_lspci(out.stdout)
