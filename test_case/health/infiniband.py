"""InfiniBand ports: ``ibstat`` (state, physical state, rate, link layer) and the ports' error counters in sysfs.

Owns: parsing ``ibstat`` into `IbPort` records (one per CA port, with the CA's type and firmware),
reading ``/sys/class/infiniband/<CA>/ports/<N>/counters/*`` into `PortCounters`, and the findings
about both.

Port rules (`findings`):

* an InfiniBand port that is not ``State: Active`` with ``Physical state: LinkUp``: **drain**. Imbue's
  ``_InfinibandStatusHealthCheck`` fails a host that has fewer Active IB ports than expected, with
  "cleaning and reseating the transceivers often helps" (imbue-ai/cluster-health@8f5964ac6209
  health_checks/health_checks.py); gpud's ``EvaluatePortsAndRate`` marks the node unhealthy when fewer
  than the expected ports are LinkUp at the expected rate and names the ones in Disabled or Polling
  ("connection lost from this card to other cards/switches"; leptonai/gpud@4a8de33a3f02
  components/accelerator/nvidia/infiniband/check_thresholds.go). gpud notes such a port often comes back
  by itself: a drain here is resumed once the preflight passes again;
* an InfiniBand port whose rate is below ``expected_rate`` or, without one, below the fastest IB port of
  the same CA type on the node (so that a node's HDR storage cards are not held to its NDR compute
  cards' rate): **drain**. gpud counts only ports at or above ``AtLeastRate`` (400 Gb/s for H100, H200,
  B200), so a port trained at a lower rate counts as missing; NCCL rings run at the slowest rail;
* an Ethernet-link-layer port that is Down: **monitor**. Management and unused ports are common (the
  fixture node has three CX-6 Dx Ethernet ports Disabled), and both Imbue (``grep -v '(Ethernet)'``)
  and gpud (``IsIBPort``) leave Ethernet ports out of their IB checks. On a RoCE cluster, where
  Ethernet ports carry NCCL, compare the node's Active RoCE ports instead (not done here).

Error counter rules (`counter_findings`), per port, on the counters since they were last cleared
(usually the boot): the thresholds are infiniband-diags' ``ibcheckerrs`` defaults
(linux-rdma/rdma-core scripts/ibcheckerrs.in, which fails a port whose counter reaches them);
``ibqueryerrors`` reports any counter above zero by default.

* a link-quality counter (symbol errors, link error recovery, link downed, receive errors, local link
  integrity, excessive buffer overrun, remote physical receive errors) above zero: **monitor**; at or
  above its ``ibcheckerrs`` threshold: **drain** (a cable, transceiver or port that has to be looked at);
* a congestion or configuration counter (transmit discards, constraint errors, switch relay errors,
  VL15 dropped) at or above its threshold: **monitor** only: they count the fabric's congestion and
  partition set-up, not this node's hardware.

EFA devices (AWS's Elastic Fabric Adapter: an RDMA device without IB counters, whose port has
``hw_counters/`` with the SRD network statistics; found by its driver, ``device/driver`` -> ``efa``,
or by ``hw_counters/unresponsive_remote_events``, whatever the device's name: ``efa_0``,
``rdmap0s31``; older drivers have fewer counters, and those there are read):

* a port whose ``state`` is not ``ACTIVE``: **drain** (NCCL's EFA plugin cannot use it);
* ``rdma_read_wr_err``, ``rdma_write_wr_err`` (work requests that failed), ``rx_drops``,
  ``retrans_timeout_events``, ``unresponsive_remote_events``, ``impaired_remote_conn_events`` above
  zero: **monitor**, with the value. AWS publishes these counters (the Linux efa driver's network,
  RDMA and basic statistics; "Monitor an EFA", docs.aws.amazon.com/AWSEC2/latest/UserGuide/
  efa-working-monitor.html; the CloudWatch agent's ``efa_*`` metrics) but no thresholds, and they
  accumulate and count peers' and paths' trouble as well as this node's: a rise between two
  preflights on one node and not its peers is the signal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from test_case.health.findings import Finding, FindingClass, run_tool

CHECK = "infiniband"
SOURCE_STATE = (
    "Imbue cluster-health _InfinibandStatusHealthCheck (imbue-ai/cluster-health@8f5964ac6209); "
    "gpud EvaluatePortsAndRate (leptonai/gpud@4a8de33a3f02)"
)
SOURCE_RATE = "gpud EvaluatePortsAndRate, AtLeastRate (leptonai/gpud@4a8de33a3f02)"
SOURCE_ETHERNET = "Imbue cluster-health _IbErrorHealthCheck ignores Ethernet ports; gpud IsIBPort"
SOURCE_COUNTERS = "infiniband-diags ibcheckerrs default thresholds (linux-rdma/rdma-core scripts/ibcheckerrs.in)"

# sysfs counter file -> (ibcheckerrs name, its default threshold, whether it is a link-quality counter)
COUNTER_THRESHOLDS: dict[str, tuple[str, int, bool]] = {
    "symbol_error": ("SymbolErrors", 10, True),
    "link_error_recovery": ("LinkRecovers", 10, True),
    "link_downed": ("LinkDowned", 10, True),
    "port_rcv_errors": ("RcvErrors", 10, True),
    "port_rcv_remote_physical_errors": ("RcvRemotePhysErrors", 100, True),
    "local_link_integrity_errors": ("LinkIntegrityErrors", 10, True),
    "excessive_buffer_overrun_errors": ("ExcBufOverrunErrors", 10, True),
    "port_rcv_switch_relay_errors": ("RcvSwRelayErrors", 100, False),
    "port_xmit_discards": ("XmtDiscards", 100, False),
    "port_xmit_constraint_errors": ("XmtConstraintErrors", 100, False),
    "port_rcv_constraint_errors": ("RcvConstraintErrors", 100, False),
    "VL15_dropped": ("VL15Dropped", 100, False),
}


@dataclass(frozen=True)
class IbPort:
    """One port of one CA, as ``ibstat`` prints it."""

    ca: str  # "mlx5_0"
    port: int
    state: str  # "Active", "Down", "Initializing", ...
    physical_state: str  # "LinkUp", "Disabled", "Polling", ...
    rate: int | None  # Gb/s
    link_layer: str  # "InfiniBand" or "Ethernet"
    ca_type: str = ""  # "MT4129" (ConnectX-7)
    firmware: str = ""

    @property
    def name(self) -> str:
        return f"{self.ca} port {self.port}"

    @property
    def is_ib(self) -> bool:
        return self.link_layer.lower() == "infiniband"

    @property
    def evidence(self) -> str:
        return (
            f"State: {self.state}; Physical state: {self.physical_state}; Rate: {self.rate}; "
            f"Link layer: {self.link_layer}"
        )


def _int(text: str) -> int | None:
    try:
        return int(float(text.split()[0]))
    except (ValueError, IndexError):
        return None


def parse_ibstat(text: str) -> list[IbPort]:
    """The ports of ``ibstat`` output, in order."""
    ports: list[IbPort] = []
    ca = ""
    ca_fields: dict[str, str] = {}
    port: dict[str, str] | None = None
    port_no = 0

    def close() -> None:
        if port is not None:
            ports.append(
                IbPort(
                    ca,
                    port_no,
                    port.get("State", ""),
                    port.get("Physical state", ""),
                    _int(port.get("Rate", "")),
                    port.get("Link layer", ""),
                    ca_fields.get("CA type", ""),
                    ca_fields.get("Firmware version", ""),
                )
            )

    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("CA '"):
            close()
            ca, ca_fields, port = raw[4:].split("'")[0], {}, None
        elif line.startswith("Port ") and line.endswith(":"):
            close()
            port_no, port = _int(line[5:-1]) or 0, {}
        elif ":" in line:
            key, _, value = line.partition(":")
            (ca_fields if port is None else port)[key.strip()] = value.strip()
    close()
    return ports


def findings(ports: list[IbPort], expected_rate: int | None = None) -> list[Finding]:
    """One finding per port (module docstring); ``expected_rate`` in Gb/s, else the fastest IB port of
    the same CA type on the node."""
    fastest: dict[str, int] = {}
    for p in ports:
        if p.is_ib and p.rate is not None:
            fastest[p.ca_type] = max(p.rate, fastest.get(p.ca_type, 0))
    found: list[Finding] = []
    for p in ports:
        want = expected_rate if expected_rate is not None else fastest.get(p.ca_type)
        if not p.is_ib:
            if p.state.lower() == "active":
                found.append(Finding(CHECK, p.name, "healthy", f"Ethernet port Active at {p.rate} Gb/s", p.evidence))
            else:
                found.append(
                    Finding(
                        CHECK,
                        p.name,
                        "monitor",
                        f"Ethernet port {p.state} ({p.physical_state}): a management or unused port, not the IB fabric",
                        p.evidence,
                        SOURCE_ETHERNET,
                    )
                )
        elif p.state != "Active" or p.physical_state != "LinkUp":
            found.append(
                Finding(
                    CHECK,
                    p.name,
                    "drain",
                    f"InfiniBand port {p.state} ({p.physical_state}), not Active/LinkUp: clean and reseat the "
                    "transceiver or cable, check the switch port",
                    p.evidence,
                    SOURCE_STATE,
                )
            )
        elif want is not None and (p.rate is None or p.rate < want):
            base = "the expected" if expected_rate is not None else f"the node's other {p.ca_type} ports'"
            found.append(
                Finding(
                    CHECK,
                    p.name,
                    "drain",
                    f"InfiniBand port at {p.rate} Gb/s, below {base} {want} Gb/s: a degraded cable or transceiver",
                    p.evidence,
                    SOURCE_RATE,
                )
            )
        else:
            found.append(Finding(CHECK, p.name, "healthy", f"InfiniBand port Active at {p.rate} Gb/s", p.evidence))
    return found


def read_ibstat() -> list[IbPort] | None:
    """``ibstat`` on this host, parsed; None when ibstat is not on PATH or fails."""
    out = run_tool("ibstat")
    if out is None or out.returncode != 0:
        return None
    return parse_ibstat(out.stdout)


SOURCE_EFA = (
    "AWS, Monitor an EFA (docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-working-monitor.html); Linux efa "
    "driver's statistics (drivers/infiniband/hw/efa/efa_com_cmd.h); no published thresholds"
)
EFA_MARK = "unresponsive_remote_events"  # a hw_counters file only EFA ports have
EFA_COUNTERS = (
    "rdma_read_wr_err",
    "rdma_write_wr_err",
    "rx_drops",
    "retrans_timeout_events",
    "unresponsive_remote_events",
    "impaired_remote_conn_events",
)


@dataclass(frozen=True)
class PortCounters:
    """The error counters of one port (sysfs ``counters/``), its link layer when sysfs says it, and for
    an EFA port its ``state`` and `EFA_COUNTERS` (``hw_counters/``)."""

    ca: str
    port: int
    counters: dict[str, int]
    link_layer: str = ""
    state: str = ""  # sysfs ports/<N>/state: "4: ACTIVE"
    efa_counters: dict[str, int] | None = None  # None: not an EFA port

    @property
    def name(self) -> str:
        return f"{self.ca} port {self.port}"


def read_error_counters(sys_root: Path = Path("/sys/class/infiniband")) -> list[PortCounters] | None:
    """Every port's counters under ``sys_root`` (the files of `COUNTER_THRESHOLDS` that exist); None
    when ``sys_root`` is not there (no RDMA driver loaded)."""
    if not sys_root.is_dir():
        return None
    result: list[PortCounters] = []
    for ca in sorted(sys_root.iterdir()):
        for port_dir in sorted((ca / "ports").glob("*")):
            if not port_dir.name.isdigit():
                continue
            counters: dict[str, int] = {}
            for name in COUNTER_THRESHOLDS:
                value = _read(port_dir / "counters" / name)
                number = _int(value) if value is not None else None
                if number is not None:
                    counters[name] = number
            layer = _read(port_dir / "link_layer") or ""
            efa = None
            if (port_dir / "hw_counters" / EFA_MARK).exists() or _driver(ca) == "efa":
                efa = {}
                for name in EFA_COUNTERS:
                    value = _read(port_dir / "hw_counters" / name)
                    if value is not None and (number := _int(value)) is not None:
                        efa[name] = number
            state = (_read(port_dir / "state") or "").strip()
            result.append(PortCounters(ca.name, int(port_dir.name), counters, layer.strip(), state, efa))
    return result


def _driver(ca: Path) -> str:
    """The kernel driver of an RDMA device (``device/driver`` links to it), "" when sysfs does not say."""
    try:
        return (ca / "device" / "driver").resolve(strict=True).name
    except OSError:
        return ""


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # absent, or a counter the driver cannot read
        return None


def counter_findings(ports: list[PortCounters]) -> list[Finding]:
    """Findings for error counters above zero or at their ``ibcheckerrs`` threshold (module docstring);
    a port with every counter at zero gives one healthy finding."""
    found: list[Finding] = []
    for p in ports:
        if p.efa_counters is not None:
            found += efa_findings(p)
            continue
        mine: list[Finding] = []
        for name, value in sorted(p.counters.items()):
            label, threshold, link_quality = COUNTER_THRESHOLDS[name]
            klass: FindingClass | None = None
            if value >= threshold:
                klass = "drain" if link_quality else "monitor"
            elif value > 0 and link_quality:
                klass = "monitor"
            if klass is None:
                continue
            where = "at or above" if value >= threshold else "below"
            mine.append(
                Finding(
                    CHECK,
                    p.name,
                    klass,
                    f"{name} = {value} ({label}), {where} the ibcheckerrs threshold {threshold}",
                    f"counters/{name}: {value}",
                    SOURCE_COUNTERS,
                )
            )
        found += mine or [
            Finding(CHECK, p.name, "healthy", "no link error counter above zero, no counter at its threshold")
        ]
    return found


def efa_findings(p: PortCounters) -> list[Finding]:
    """An EFA port's state and error counters (module docstring)."""
    counters = p.efa_counters or {}
    figures = ", ".join(f"{name} {counters[name]}" for name in EFA_COUNTERS if name in counters)
    evidence = f"state: {p.state or '?'}; hw_counters: {figures}"
    found: list[Finding] = []
    if not p.state.endswith("ACTIVE"):
        found.append(Finding(CHECK, p.name, "drain", f"EFA port {p.state or 'state unknown'}, not ACTIVE", evidence))
    for name in EFA_COUNTERS:
        if counters.get(name, 0) > 0:
            found.append(
                Finding(
                    CHECK,
                    p.name,
                    "monitor",
                    f"EFA {name} = {counters[name]} since it was last reset",
                    evidence,
                    SOURCE_EFA,
                )
            )
    return found or [Finding(CHECK, p.name, "healthy", "EFA port ACTIVE, no error counter above zero", evidence)]
