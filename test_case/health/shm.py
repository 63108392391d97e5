"""/dev/shm: how much of it is free. Dataloader workers, streaming and NCCL put their shared memory
there; files that crashed jobs left behind fill it, and the next job on the node fails or hangs.

A node with less than `MIN_FREE_FRACTION` of its /dev/shm free is of class ``reboot`` (a reboot
empties it; so does removing the leftover files by hand). The preflight's ``shm_free`` check uses the
same fraction by default (`test_case.preflight.expectations`). Standard library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from test_case.health.findings import Finding

MIN_FREE_FRACTION = 0.5
SOURCE = "this suite: NCCL and the dataloaders need room in /dev/shm for each job's segments"


def findings(path: Path = Path("/dev/shm"), min_free: float = MIN_FREE_FRACTION) -> list[Finding] | None:
    """One finding about ``path``; None when it is not a mounted folder here."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    if total == 0:
        return None
    share = free / total
    line = f"{path}: {free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB ({share:.0%})"
    if share >= min_free:
        return [Finding("shm", str(path), "healthy", f"{share:.0%} free", line, SOURCE)]
    summary = (
        f"only {share:.0%} free (at least {min_free:.0%} expected): files left by earlier jobs? "
        f"(ls -la {path}; a reboot empties it)"
    )
    return [Finding("shm", str(path), "reboot", summary, line, SOURCE)]
