"""Shared memory of dead runs removed before a launch, with real processes mapping real tmpfs files:
a prefix is removed only when no process maps or holds any of its segments, whatever its number;
a live run's and NCCL's segments stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_case.training.shm_cleanup import remove_dead_segments

MAPPER = "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0); f.close(); "
HOLDER = "import sys, time; f = open(sys.argv[1], 'rb'); "
READY = "print('ready', flush=True); time.sleep(120)"


@pytest.fixture
def shm() -> Iterator[Path]:
    """A folder on the real tmpfs (/dev/shm where there is one), removed afterwards."""
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=base, prefix="pytest-shm-") as folder:
        yield Path(folder)


def segments(folder: Path, prefix: str, names: tuple[str, ...] = ("locals", "barrier", "shard_states")) -> list[Path]:
    made = []
    for name in names:
        path = folder / f"{prefix}_{name}"
        path.write_bytes(b"\0" * 4096)
        made.append(path)
    return made


def start(code: str, path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code + READY, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_only_the_prefixes_no_live_process_maps_or_holds_are_removed(shm: Path) -> None:
    live = segments(shm, "000000")  # a run that trains: its locals mapped
    dead = segments(shm, "000001")  # a run killed with kill -9 while it mapped them
    opened = segments(shm, "000002")  # held open (not mapped) by a live process
    later = segments(shm, "000005")  # a gap before it: streaming's own cleanup stopped at the first clean prefix
    nccl = shm / "nccl-shm-0-1"
    nccl.write_bytes(b"\0" * 4096)
    procs = [start(MAPPER, live[0]), start(MAPPER, dead[1]), start(HOLDER, opened[2])]
    try:
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        removed = remove_dead_segments(shm)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert removed.prefixes == ["000001", "000005"] and removed.segments == 6
    assert all(p.exists() for p in [*live, *opened, nccl]) and not any(p.exists() for p in [*dead, *later])
    line = removed.line(shm)
    assert line == (
        f"removed 6 shared-memory segment(s) of dead runs from {shm} (streaming prefixes 000001, 000005; "
        "0.0 MiB): no process mapped or held them"
    )
    # once their holders are gone, the others go too; nothing else is ever touched
    again = remove_dead_segments(shm)
    assert again.prefixes == ["000000", "000002"] and sorted(p.name for p in shm.iterdir()) == [nccl.name]
    assert remove_dead_segments(shm).line(shm) is None
