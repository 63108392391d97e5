"""Health findings: one fact a node's own tool reported, with its class, its evidence line and what to do.

Every reader of this package turns one tool's output into `Finding` records: the kernel log's
XID/SXID lines (`xid`), PCIe links (`pcie`), InfiniBand ports (`infiniband`), NVLink (`nvlink`),
DCGM diagnostics (`dcgm`), GPU firmware and identity (`gpu_identity`), /dev/shm (`shm`), a cgroup CPU
cap (`cpu`), and under a burn-in's load the GPU clocks (`clocks`). The preflight turns them into
its checks (`test_case.preflight.node_checks`), so that ``preflight_<job>.json`` and the report show
each finding's class and evidence.

Standard library only (no torch, no numpy, nothing from ``test_case.training``): the quick health
check runs on the host, outside any container or venv (Slurm's HealthCheckProgram, prolog and
epilog). Tools are found on PATH (`run_tool`), so that tests stand recorded outputs in front of them
(`../shared/gpu-outputs`, each with its public source).

The classes, from least to most severe (`SEVERITY`):

* ``healthy``: nothing to do;
* ``monitor``: recorded and watched, no action now (a correctable error, a benign line);
* ``reset``: reset the GPU (``nvidia-smi -r -i <GPU>`` with no process on it), then check again;
* ``reboot``: reboot the node, then check again;
* ``drain``: take the node out of service (drain it in Slurm) and repair or replace the part.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

FindingClass = Literal["healthy", "monitor", "reset", "reboot", "drain"]
SEVERITY: dict[FindingClass, int] = {"healthy": 0, "monitor": 1, "reset": 2, "reboot": 3, "drain": 4}
# What to do for each class, for a node named {node} (the preflight's check action).
ACTIONS: dict[FindingClass, str] = {
    "healthy": "",
    "monitor": "nothing now: watch whether it repeats (the next preflight shows it again)",
    "reset": "reset the GPU with nothing running on it (nvidia-smi -r -i <GPU> on {node}), then run the preflight "
    "again; leave {node} out meanwhile (sbatch --exclude={node})",
    "reboot": "reboot {node}, then run the preflight again; leave it out meanwhile (sbatch --exclude={node})",
    "drain": "drain {node} (scontrol update nodename={node} state=drain reason=<the finding>) and have the part "
    "repaired or replaced; resume it only once the preflight passes there",
}


@dataclass(frozen=True)
class Finding:
    """One fact about one part of a node."""

    check: str  # the reader: xid, pcie, infiniband, nvlink, dcgm, gpu_identity
    subject: str  # the part: "GPU 0000:19:00.0", "mlx5_0 port 1", "node"
    klass: FindingClass
    summary: str  # one line: what is wrong, or that it is well
    evidence: str = ""  # the tool's own line that says so, verbatim
    source: str = ""  # where the rule that classed it comes from (e.g. NVIDIA's XID catalogue)


def worst(findings: Iterable[Finding]) -> FindingClass:
    """The most severe class among ``findings`` (``healthy`` when there are none)."""
    return max((f.klass for f in findings), key=SEVERITY.__getitem__, default="healthy")


def action(klass: FindingClass, node: str) -> str:
    """What to do about a finding of class ``klass`` on ``node``."""
    return ACTIONS[klass].format(node=node)


@dataclass(frozen=True)
class ToolOutput:
    """What a tool printed and how it ended."""

    returncode: int
    stdout: str
    stderr: str


def run_tool(name: str, *args: str, timeout: float = 30.0) -> ToolOutput | None:
    """``name`` found on PATH, run with ``args``; None when it is not there. A tool that hangs past
    ``timeout`` seconds or cannot start is returned as exit code 124 or 127 with the reason."""
    path = shutil.which(name)
    if path is None:
        return None
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ToolOutput(124, "", f"{name} did not answer within {timeout:.0f} s")
    except OSError as err:
        return ToolOutput(127, "", f"{name} could not start: {err.strerror}")
    return ToolOutput(done.returncode, done.stdout, done.stderr)
