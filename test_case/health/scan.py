"""One scan of this node's health: every reader of this package run once, its findings or why it
could not read (`scan`), and the GPU facts the nodes of a job must agree on.

Standard library only, like the readers: `python -m test_case.health` runs it on the host (Slurm's
HealthCheckProgram, a prolog), and the preflight turns it into checks
(`test_case.preflight.host_health`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from test_case.health import cpu, dcgm, gpu_identity, infiniband, nvlink, pcie, shm, xid
from test_case.health.findings import Finding


@dataclass
class Scan:
    """Per reader: its findings (None: its tool is not here or gave nothing) and how it read them or why not."""

    readers: dict[str, tuple[list[Finding] | None, str]] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)  # gpu_identity.identity_facts, prefixed


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


def _shm() -> tuple[list[Finding] | None, str]:
    found = shm.findings()
    return (None, "/dev/shm is not mounted here") if found is None else (found, "statvfs /dev/shm")


def _cpu() -> tuple[list[Finding] | None, str]:
    return cpu.findings(cpu.cpu_cap()), "the cgroup CPU caps above this process (/proc/self/cgroup)"


READERS: dict[str, Callable[[], tuple[list[Finding] | None, str]]] = {
    "xid": _kernel_log,
    "pcie": _pcie,
    "infiniband": _infiniband,
    "nvlink": _nvlink,
    "shm": _shm,
    "cpu": _cpu,
}


def _guarded(reader: str, read: Callable[[], tuple[list[Finding] | None, str]]) -> tuple[list[Finding] | None, str]:
    """One reader's result; a reader that breaks on what it read is skipped with the error, so that the
    others still run and a Prolog or HealthCheckProgram never drains a node for a traceback."""
    try:
        return read()
    except Exception as err:  # any reader's failure, named
        return None, f"the {reader} reader failed: {type(err).__name__}: {err}"


def scan(dcgm_level: int | None = None) -> Scan:
    """Run every reader once (DCGM's diagnostics only at ``dcgm_level``)."""
    out = Scan({reader: _guarded(reader, read) for reader, read in READERS.items()})
    if dcgm_level:
        run = dcgm.run_diag(dcgm_level)
        out.readers["dcgm"] = (
            (None, "dcgmi not on PATH") if run is None else (dcgm.run_findings(run), f"dcgmi diag -r {dcgm_level}")
        )
    gpus = gpu_identity.read_nvidia_smi_q()
    out.readers["gpu_identity"] = (
        (None, "nvidia-smi -q gave nothing (no NVIDIA driver here)")
        if gpus is None
        else (
            gpu_identity.findings(gpus),
            "nvidia-smi -q",
        )
    )
    out.facts = {f"gpu_identity.{k}": v for k, v in gpu_identity.identity_facts(gpus or []).items()}
    if gpus:  # per device, to follow a GPU across nodes (not agreed across nodes: AGREED_FACTS leaves it out)
        out.facts["gpu_serials"] = ",".join(gpu_identity.device_id(g) for g in gpus)
    return out
