"""Rank heartbeats: which rank of a hung run stopped, when the collective timeout cannot say.

When one rank stops (``SIGSTOP``, a process stuck in the kernel on a dead filesystem), its peers
wait in their next collective until ``dist_timeout`` and then fail with ``Timed out waiting ...``:
the ranks that report the failure are the healthy ones. So every rank runs a daemon thread that
writes ``{"rank", "host", "pid", "time", "gap_s", "gap_end"}`` to ``<dir>/rank<N>.json`` every
`INTERVAL_S` seconds (`start_heartbeat`, started by `test_case.training.foundry_train` when the
launcher sets `DIR_ENV`); ``gap_s`` is the longest time between two beats of this process and
``gap_end`` when it ended. A process that is stopped as a whole stops beating; one waiting in a
collective keeps beating. After a failure, `silent_ranks` names the ranks that had stopped while
the others went on: their last beat is far older than the others' (the job killed them while
stopped), or their longest gap ended only as the others were ending (Slurm sends ``SIGCONT`` before
``SIGTERM`` when it ends a step, so a stopped rank wakes up for its last moments), and is then
judged from when that gap began. The batch
script's decision step (`test_case.training.restarts`) blames their node. A rank that wakes from a
stall the run survives (shorter than ``dist_timeout``) prints a `stall_warning` into the log.

A rank hung inside a GPU kernel keeps its threads, and beats: it is not named (the NCCL watchdog's
message is then the cause quoted).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from test_case.training.node_plan import NodePlan

DIR_ENV = "SUITE_HEARTBEAT_DIR"  # set by the launcher for every rank
INTERVAL_ENV = "HEARTBEAT_SECONDS"
INTERVAL_S = 5.0
SILENT_AFTER = 3  # intervals behind the newest beat: that rank had stopped
RECORD_BYTES = 200  # each beat overwrites the file in place, padded to this length


@dataclass(frozen=True)
class Beat:
    """A rank's last heartbeat, with the longest gap between two of its beats."""

    rank: int
    host: str
    pid: int
    time: float
    gap_s: float = 0.0
    gap_end: float = 0.0


def interval_s() -> float:
    """Seconds between beats: `INTERVAL_ENV`, else `INTERVAL_S`."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, INTERVAL_S))
    except ValueError:
        return INTERVAL_S
    return value if value > 0 else INTERVAL_S


def stall_warning(rank: int, host: str, seconds: float) -> str:
    """The line a rank prints when it wakes from a stall longer than `SILENT_AFTER` beats."""
    return (
        f"heartbeat: warning: rank {rank} on {host} did not run for {seconds:.0f} s (stopped, swapped out, a "
        "filesystem that hung, or one long call holding the Python GIL): its peers waited for it"
    )


class _Beater:
    """Writes one rank's beats into an open file, keeping the longest gap between two of them."""

    def __init__(self, fd: int, rank: int, host: str, every: float) -> None:
        self.fd, self.rank, self.host, self.every = fd, rank, host, every
        self.last = self.gap_end = time.time()
        self.gap = 0.0

    def beat(self) -> None:
        now = time.time()
        if now - self.last > self.gap:
            self.gap, self.gap_end = now - self.last, now
        if now - self.last > SILENT_AFTER * self.every:  # a stall the run survived says so in the log
            print(stall_warning(self.rank, self.host, now - self.last), flush=True)
        self.last = now
        record = {"rank": self.rank, "host": self.host, "pid": os.getpid(), "time": round(now, 3)}
        record |= {"gap_s": round(self.gap, 3), "gap_end": round(self.gap_end, 3)}
        os.pwrite(self.fd, json.dumps(record).ljust(RECORD_BYTES).encode(), 0)


def start_heartbeat(folder: Path, rank: int, every: float | None = None) -> threading.Thread | None:
    """Beat now and then every ``every`` seconds from a daemon thread; None (and one line on stderr)
    when the folder cannot be written, which leaves training as it is."""
    every = interval_s() if every is None else every
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / f"rank{rank}.json", os.O_WRONLY | os.O_CREAT, 0o644)
        beater = _Beater(fd, rank, socket.gethostname(), every)
        beater.beat()
    except OSError as err:
        print(f"heartbeat: warning: rank {rank}: cannot write {folder}: {err.strerror}; no heartbeat", flush=True)
        return None

    def beat() -> None:
        while True:
            time.sleep(every)
            try:
                beater.beat()
            except OSError:
                continue

    thread = threading.Thread(target=beat, name="suite-heartbeat", daemon=True)
    thread.start()
    return thread


def read_beats(folder: Path) -> list[Beat]:
    """Every rank's last beat in ``folder``; unreadable or cut records are left out."""
    beats = []
    for path in sorted(folder.glob("rank*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text().strip())
            beats.append(
                Beat(
                    int(raw["rank"]),
                    str(raw["host"]),
                    int(raw["pid"]),
                    float(raw["time"]),
                    float(raw.get("gap_s", 0.0)),
                    float(raw.get("gap_end", 0.0)),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(beats, key=lambda b: b.rank)


def running_until(beat: Beat, every: float, others_end: float) -> float:
    """When a rank last ran steadily: its last beat; or, for a rank woken only as the others were
    ending (its longest gap, over `SILENT_AFTER` intervals, ended no earlier than an interval before
    ``others_end``, the others' last beat), when that gap began."""
    if beat.gap_s > SILENT_AFTER * every and beat.gap_end >= others_end - every:
        return beat.gap_end - beat.gap_s
    return beat.time


def silent_ranks(beats: list[Beat], every: float) -> list[Beat]:
    """Ranks that had stopped while the others went on, longer than `SILENT_AFTER` intervals: stopped
    running (`running_until`) that much before the latest of the others did. A rank woken as the
    others ended is judged from when its gap began, so neither the time the job took to wake and
    end it nor the beats it made meanwhile make its peers, ended by then, look stopped. Empty when all
    stopped together (a crash, the end)."""
    if len(beats) < 2:
        return []
    limit = SILENT_AFTER * every
    silent = []
    for b in beats:
        others = [o for o in beats if o is not b]
        mine = running_until(b, every, max(o.time for o in others))
        theirs = max(running_until(o, every, b.time) for o in others)
        if theirs - mine > limit:
            silent.append(b)
    return silent if len(silent) < len(beats) else []


def heartbeat_dir(env: Mapping[str, str], plan: NodePlan) -> Path:
    """Where this start's ranks beat (`test_case.training.heartbeat`): beside the run's checkpoints,
    ``SAVE_ROOT/<run-name>/heartbeats/start<restart count>``, on storage every node shares."""
    root = Path(env.get("SAVE_ROOT") or "checkpoints").absolute()
    return root / plan.run_name / "heartbeats" / f"start{env.get('SLURM_RESTART_COUNT') or 0}"
