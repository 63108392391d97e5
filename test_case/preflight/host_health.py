"""The host health checks of one node in the preflight: each `test_case.health` reader run, its
findings turned into the preflight's checks, with their class and evidence line.

For every reader (`READERS`: the kernel log's XID/SXID lines, PCIe links, InfiniBand ports and their
error counters, NVLink; then GPU firmware and identity; DCGM diagnostics at ``--dcgm-level``) the node
gets one summary check ``health.<reader>``: ``skip`` with the reason when its tool is not on PATH or
cannot be read, else ``pass`` with the parts read and the worst class found. Every finding that is
not ``healthy`` becomes a check of its own, ``health.<reader>[<part>]``: ``fail`` for the classes
that take the node out of service until someone acts (reset, reboot, drain), ``pass`` for
``monitor`` (recorded, shown, no action), each with the finding's class, its summary, the tool's
line it rests on and what to do (`test_case.health.findings.ACTIONS`). The GPUs' driver, VBIOS and
product names join the node's facts, which the verdict compares across nodes.
"""

from __future__ import annotations

from collections.abc import Callable

from test_case.health import dcgm, gpu_identity, infiniband, nvlink, pcie, xid
from test_case.health.findings import SEVERITY, Finding, action, worst
from test_case.preflight.records import Check, Value

Checks = dict[str, Check]
FAILING = ("reset", "reboot", "drain")
SHOWN = 3  # finding summaries quoted in a summary check's detail


def _kernel_log() -> tuple[list[Finding] | None, str]:
    log = xid.read_kernel_log()
    if log.text is None:
        return None, f"kernel log not readable: {log.reason}"
    return xid.findings(xid.parse_kernel_log(log.text)), log.source


def _pcie() -> tuple[list[Finding] | None, str]:
    devices = pcie.read_lspci()
    return (None, "lspci not on PATH or it failed") if devices is None else (pcie.findings(devices), "lspci -D -vvv")


def _infiniband() -> tuple[list[Finding] | None, str]:
    ports = infiniband.read_ibstat()
    counters = infiniband.read_error_counters()
    if ports is None and counters is None:
        return None, "no ibstat on PATH and no /sys/class/infiniband"
    found = (infiniband.findings(ports) if ports else []) + (infiniband.counter_findings(counters) if counters else [])
    return found, "ibstat, /sys/class/infiniband/*/ports/*/counters"


def _nvlink() -> tuple[list[Finding] | None, str]:
    status = nvlink.read_nvlink_status()
    if status is None:
        return None, "nvidia-smi nvlink -s gave nothing (no NVIDIA driver here)"
    errors = nvlink.read_nvlink_errors()
    return nvlink.findings(status) + (nvlink.error_findings(errors) if errors else []), "nvidia-smi nvlink -s, -e"


READERS: dict[str, Callable[[], tuple[list[Finding] | None, str]]] = {
    "xid": _kernel_log,
    "pcie": _pcie,
    "infiniband": _infiniband,
    "nvlink": _nvlink,
}


def finding_checks(reader: str, found: list[Finding] | None, how: str, node: str) -> Checks:
    """The summary check of one reader and a check per finding that is not healthy."""
    if found is None:
        return {f"health.{reader}": Check("skip", None, "healthy", "", how)}
    klass = worst(found)
    notable = sorted((f for f in found if f.klass != "healthy"), key=lambda f: -SEVERITY[f.klass])
    said = "; ".join(f"{f.subject}: {f.summary}" for f in notable[:SHOWN])
    more = f" (and {len(notable) - SHOWN} more)" if len(notable) > SHOWN else ""
    read = f"{len(found)} part(s) read" if found else "nothing to report"
    detail = f"{how}: {read}" + (f"; {said}{more}" if said else ", all healthy" if found else "")
    checks = {f"health.{reader}": Check("pass", klass, "healthy", "", detail, finding_class=klass)}
    for f in notable:
        checks[f"health.{reader}[{f.subject}]"] = Check(
            "fail" if f.klass in FAILING else "pass",
            f.klass,
            "healthy",
            "",
            f"{f.summary}" + (f" (rule: {f.source})" if f.source else ""),
            action(f.klass, node),
            finding_class=f.klass,
            evidence=f.evidence,
        )
    return checks


def host_health_checks(node: str, dcgm_level: int | None = None) -> tuple[Checks, dict[str, Value]]:
    """Every reader's checks for this node, and the GPU identity facts the nodes must agree on."""
    checks: Checks = {}
    for reader, read in READERS.items():
        found, how = read()
        checks |= finding_checks(reader, found, how, node)
    if dcgm_level:
        run = dcgm.run_diag(dcgm_level)
        found = None if run is None else dcgm.run_findings(run)
        checks |= finding_checks(
            "dcgm", found, "dcgmi not on PATH" if run is None else f"dcgmi diag -r {dcgm_level}", node
        )
    gpus = gpu_identity.read_nvidia_smi_q()
    found, how = (
        (None, "nvidia-smi -q gave nothing (no NVIDIA driver here)")
        if gpus is None
        else (
            gpu_identity.findings(gpus),
            "nvidia-smi -q",
        )
    )
    checks |= finding_checks("gpu_identity", found, how, node)
    facts: dict[str, Value] = {f"gpu_identity.{k}": v for k, v in gpu_identity.identity_facts(gpus or []).items()}
    return checks, facts
