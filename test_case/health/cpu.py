"""The CPU time this node's processes may use: a cgroup CPU cap above the scan (``cpu.max`` in cgroup
v2, ``cpu.cfs_quota_us`` per ``cpu.cfs_period_us`` in v1), read from the scan's own cgroup up to the
root, so that a slurmd (and every job and health check it starts) held to a fraction of the node is
named with the file that holds it.

Rule (`findings`): processes started here capped below ``MIN_SHARE`` of the CPUs they may run on
(``sched_getaffinity``): **drain** (everything Slurm starts on the node starves: data loaders, NCCL's
proxy threads, checkpoint writes; remove the cap, then resume the node). A cap that leaves them at
least that share: **healthy**, with the cap named. No cap anywhere: **healthy**. Linux's cgroup
interface files are documented in the kernel's admin guide (Documentation/admin-guide/cgroup-v2.rst,
``cpu.max``; Documentation/scheduler/sched-bwc.rst for v1's ``cfs_quota_us``, -1 for none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from test_case.health.findings import Finding

CHECK = "cpu"
MIN_SHARE = 0.5  # of the usable CPUs
SOURCE = "Linux cgroup CPU bandwidth: cpu.max (cgroup v2), cpu.cfs_quota_us/cpu.cfs_period_us (v1)"


@dataclass(frozen=True)
class CpuCap:
    """The tightest CPU cap above a process: cores it may use, and the file that says so."""

    cores: float
    file: Path
    line: str  # the file's content, as read


def _mounts(mountinfo: str) -> tuple[tuple[Path, str] | None, tuple[Path, str] | None]:
    """(mount point, the cgroup path at its root) of the cgroup v2 mount and of the v1 ``cpu`` controller's,
    from /proc/self/mountinfo (in a container the root is the container's own cgroup, not /)."""
    unified = v1 = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        root, point, fstype, options = fields[3], Path(fields[4]), extra[0], extra[2].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = (point, root)
        elif fstype == "cgroup" and "cpu" in options and v1 is None:
            v1 = (point, root)
    return unified, v1


def _ancestors(mount: tuple[Path, str], path: str) -> list[Path]:
    """The folder of cgroup ``path`` under ``mount`` and each folder above it, up to the mount point."""
    point, root = mount
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root) :]
    parts = [p for p in path.split("/") if p]
    return [point.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cpu_cap(proc: Path = Path("/proc/self")) -> CpuCap | None:
    """The tightest cgroup CPU cap on ``proc`` and its ancestors (None: no cap, or no cgroup to read)."""
    try:
        cgroups = (proc / "cgroup").read_text().splitlines()
        unified, v1 = _mounts((proc / "mountinfo").read_text())
    except OSError:
        return None
    caps: list[CpuCap] = []
    for line in cgroups:
        _, controllers, path = line.split(":", 2)
        if controllers == "" and unified is not None:  # v2
            for folder in _ancestors(unified, path):
                try:
                    text = (folder / "cpu.max").read_text().strip()
                except OSError:
                    continue
                quota, _, period = text.partition(" ")
                if quota.isdigit() and period.isdigit() and int(period) > 0:
                    caps.append(CpuCap(int(quota) / int(period), folder / "cpu.max", text))
        elif "cpu" in controllers.split(",") and v1 is not None:
            for folder in _ancestors(v1, path):
                try:
                    quota_us = int((folder / "cpu.cfs_quota_us").read_text())
                    period_us = int((folder / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if quota_us > 0 and period_us > 0:
                    said = f"cpu.cfs_quota_us {quota_us} per cpu.cfs_period_us {period_us}"
                    caps.append(CpuCap(quota_us / period_us, folder / "cpu.cfs_quota_us", said))
    return min(caps, key=lambda c: c.cores, default=None)


def findings(cap: CpuCap | None, usable: int | None = None) -> list[Finding]:
    """The node's CPU finding: ``cap`` against the ``usable`` CPUs (this process's affinity by default)."""
    usable = usable or len(os.sched_getaffinity(0))
    if cap is None:
        return [Finding(CHECK, "node", "healthy", f"no cgroup CPU cap; {usable} CPU(s) usable")]
    said = f"capped at {cap.cores:.2g} core(s) of {usable} usable by {cap.file.parent}"
    evidence = f"{cap.file}: {cap.line}"
    if cap.cores < MIN_SHARE * usable:
        summary = f"{said}: everything Slurm starts here starves; remove the cap, then resume the node"
        return [Finding(CHECK, "node", "drain", summary, evidence, SOURCE)]
    return [Finding(CHECK, "node", "healthy", said, evidence, SOURCE)]
