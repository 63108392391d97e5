"""Streaming's shared memory that dead runs left in ``/dev/shm``, removed before a node starts its ranks.

A run killed with ``kill -9`` (or by the OOM killer, or a node's reboot of the job's processes)
leaves streaming's segments behind (``000000_locals``, ``000000_barrier``, ... one set per
``StreamingDataset`` prefix). A later run on the node can then fail at start-up or find
``/dev/shm`` full. streaming's own ``clean_stale_shared_memory`` removes prefix after prefix and
stops at the first prefix without a leftover, so a dead run's ``000001_*`` behind a clean
``000000`` stays; and it removes a prefix whatever holds it, a concurrent job's on a shared node
included.

Here a segment is dead when no process on the node maps it or holds it open (``/proc/PID/maps``,
``/proc/PID/fd``), never by its age; a prefix is removed only when none of its segments is alive,
and only segments of this user (``/dev/shm`` is sticky: another user's cannot be removed anyway).
Only streaming's names are considered (`STREAMING_SEGMENT`): NCCL's (``nccl-*``), torch's and
anyone else's are never touched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# streaming 0.12's shared memory: f"{prefix_int:06}_{name}" (streaming.base.util._get_path) with a name
# of streaming.base.constant (SHM_TO_CLEAN, and the filelocks it keeps beside them)
STREAMING_NAMES = (
    "locals",
    "barrier",
    "next_epoch",
    "cache_usage",
    "shard_states",
    "shard_access_times",
    "resume",
    "epoch_shape",
    "epoch_data",
    "barrier_filelock",
    "cache_filelock",
)
STREAMING_SEGMENT = re.compile(r"^(\d{6})_(" + "|".join(STREAMING_NAMES) + r")$")


@dataclass(frozen=True)
class Removed:
    """What one cleanup removed."""

    prefixes: list[str]  # the 6-digit prefixes whose every segment was dead
    segments: int
    bytes: int

    def line(self, shm: Path) -> str | None:
        """The launcher's line about it, or None when nothing was removed."""
        if not self.segments:
            return None
        return (
            f"removed {self.segments} shared-memory segment(s) of dead runs from {shm} (streaming prefixes "
            f"{', '.join(self.prefixes)}; {self.bytes / 2**20:.1f} MiB): no process mapped or held them"
        )


def held_segments(shm: Path, proc: Path = Path("/proc")) -> set[str]:
    """Names of the files in ``shm`` that a process of this node maps or holds open (the ones this
    user may read: another user's process cannot hold this user's streaming segments, mode 0600)."""
    held: set[str] = set()
    prefix = f"{shm}/"
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            with (pid_dir / "maps").open() as maps:
                for line in maps:
                    path = line.rstrip("\n").split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
                    if path.startswith(prefix):
                        held.add(path[len(prefix) :].removesuffix(" (deleted)"))
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # gone meanwhile, or another user's
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith(prefix):
                held.add(target[len(prefix) :])
    return held


def remove_dead_segments(shm: Path = Path("/dev/shm"), proc: Path = Path("/proc")) -> Removed:
    """Remove every streaming prefix in ``shm`` whose segments (this user's) no process maps or holds."""
    if not shm.is_dir():
        return Removed([], 0, 0)
    uid = os.getuid()
    by_prefix: dict[str, list[Path]] = {}
    for entry in shm.iterdir():
        if (m := STREAMING_SEGMENT.match(entry.name)) is not None:
            by_prefix.setdefault(m.group(1), []).append(entry)
    if not by_prefix:
        return Removed([], 0, 0)
    held = held_segments(shm, proc)
    prefixes, segments, size = [], 0, 0
    for prefix, entries in sorted(by_prefix.items()):
        try:
            mine = all(e.stat().st_uid == uid for e in entries)
        except OSError:
            continue
        if not mine or any(e.name in held for e in entries):
            continue
        for entry in entries:
            try:
                bytes_ = entry.stat().st_size
                entry.unlink()
            except OSError:
                continue
            segments, size = segments + 1, size + bytes_
        prefixes.append(prefix)
    return Removed(prefixes, segments, size)
