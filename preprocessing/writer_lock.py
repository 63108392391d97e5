"""One run at a time per split folder: the lock that names the run writing it, kept alive by heartbeats.

Files (beside ``dataset.json``, on the shared filesystem the tasks write to)::

    SPLIT/.writer.json               the run that holds the folder: job, step, restart, host, pid, tasks
    SPLIT/.writer-task.<run>.<task>  one per task of that run still working (its pid)

A run is one Slurm job step (``SLURM_JOB_ID``, ``SLURM_STEP_ID``, ``SLURM_RESTART_COUNT``), or one
process without Slurm. The lock is published with ``os.link`` of a complete file, which only one
process can win on a local disk, NFS or Lustre alike (no ``flock``, which Lustre mounts may not
support or may keep node-local); the tasks of the winning run join it, any other run is refused
(`SplitBusy`) or waits (``--wait``). Every task of the holder touches the lock every few seconds;
the holder is taken as gone, and its lock taken over, when

* the lock has not been touched for ``stale_after_s`` (by the filesystem's clock), or
* it is an earlier incarnation of this very job (Slurm requeued it: the old one is gone), or
* it is a single process on this host and that pid is not running (kill -9, a crash), or is a
  zombie (killed, not reaped yet: it still answers ``kill -0``).

The last task of a run to leave removes the lock, so the next run starts at once.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from preprocessing.files import publish_once

LOCK = ".writer.json"
MEMBER_PREFIX = ".writer-task."
BEAT_EVERY_S = 5.0
STALE_AFTER_S = 120.0


@dataclass(frozen=True)
class Writer:
    """Who writes a split folder."""

    run: str  # "job 1234 step 0 restart 0" under Slurm, "pid 5678 on node-1" without
    host: str
    pid: int
    tasks: int
    job_id: str | None
    restart: int
    started: str  # ISO time the lock was taken, for messages

    @classmethod
    def this_process(cls) -> Writer:
        """This process's run, from the Slurm environment when there is one."""
        env = os.environ
        host, pid = socket.gethostname(), os.getpid()
        job = env.get("SLURM_JOB_ID") or None
        restart = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
        step = env.get("SLURM_STEP_ID", "batch")
        run = f"job {job} step {step} restart {restart}" if job else f"pid {pid} on {host}"
        tasks = int(env.get("SLURM_NTASKS", "1") or 1) if job else 1
        return cls(run, host, pid, tasks, job, restart, time.strftime("%Y-%m-%d %H:%M:%S"))

    @property
    def key(self) -> str:
        """The run as a file-name part."""
        return "".join(c if c.isalnum() else "_" for c in self.run)

    def describe(self) -> str:
        """For messages: which run, where, since when."""
        if self.job_id:
            where = f"{self.tasks} task(s), first on {self.host}"
            return f"Slurm job {self.job_id} ({self.run}, {where}, since {self.started})"
        return f"pid {self.pid} on {self.host} (since {self.started})"


class SplitBusy(RuntimeError):
    """Another run is writing the folder."""

    def __init__(self, split_dir: Path, holder: Writer, idle_s: float):
        self.holder, self.idle_s = holder, idle_s
        super().__init__(f"{split_dir} is being written by {holder.describe()}, last heartbeat {idle_s:.0f} s ago")


class SplitLost(RuntimeError):
    """This run's lock was taken over (it looked gone for too long): it must stop writing."""


def pid_running(pid: int) -> bool:
    """Whether a process with this pid is running on this host (`pid_gone` says why not)."""
    return pid_gone(pid) is None


def pid_gone(pid: int) -> str | None:
    """Why ``pid`` is not a running process on this host ("not running", "a zombie: it exited and
    its parent has not reaped it"), or None while it runs. A zombie still answers ``kill -0``, so
    its state is read from ``/proc/PID/stat`` where there is one."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "not running"
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # no /proc (or no access): kill -0 found it
    state = stat.rsplit(")", 1)[-1].split()[0]  # after "pid (comm)", which may hold spaces and ")"
    if state in ("Z", "X", "x"):
        return "a zombie: it exited and its parent has not reaped it"
    return None


class SplitLock:
    """The lock of one split folder, as held by one task of a run."""

    def __init__(self, split_dir: Path, task: int, stale_after_s: float = STALE_AFTER_S, me: Writer | None = None):
        self.split_dir, self.task, self.stale_after_s = split_dir, task, stale_after_s
        self.me = me or Writer.this_process()
        self.lock = split_dir / LOCK
        self.member = split_dir / f"{MEMBER_PREFIX}{self.me.key}.{task}"
        self._last_beat = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the folder -------------------------------------------------------------------
    def _fs_now(self) -> float:
        """The filesystem's clock (mtimes on a shared filesystem follow the server, not this node)."""
        fd, probe = tempfile.mkstemp(dir=self.split_dir, prefix=".writer-probe-")
        try:
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
            os.unlink(probe)

    def holder(self) -> tuple[Writer, float] | None:
        """The run holding the folder and seconds since its last heartbeat, or None when free."""
        try:
            mtime = self.lock.stat().st_mtime
            holder = Writer(**json.loads(self.lock.read_text()))
        except FileNotFoundError:
            return None
        return holder, max(0.0, self._fs_now() - mtime)

    def gone_because(self, holder: Writer, idle_s: float) -> str | None:
        """Why the holder is taken as gone, or None while it may be alive."""
        if idle_s > self.stale_after_s:
            return f"no heartbeat for {idle_s:.0f} s (more than {self.stale_after_s:.0f} s)"
        if holder.job_id and holder.job_id == self.me.job_id and holder.restart < self.me.restart:
            return f"Slurm requeued job {holder.job_id}: restart {self.me.restart} replaces restart {holder.restart}"
        if holder.tasks == 1 and holder.host == self.me.host and (why := pid_gone(holder.pid)):
            return f"pid {holder.pid} is {why} on {holder.host}"
        return None

    def members(self, run_key: str | None = None) -> list[int]:
        """Tasks of a run (this one by default) still working."""
        prefix = f"{MEMBER_PREFIX}{run_key or self.me.key}."
        tasks = (p.name[len(prefix) :] for p in self.split_dir.glob(f"{prefix}*"))
        return sorted(int(t) for t in tasks if t.isdigit())

    # -- taking and leaving ---------------------------------------------------------------------
    def acquire(self) -> str | None:
        """Hold the folder for this task; return a note when a gone run was taken over.

        Raises `SplitBusy` while another run holds it.
        """
        self.split_dir.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(50):
            if self._publish():
                self._join()
                return note
            found = self.holder()
            if found is None:
                continue  # released between our try and our look: try again
            holder, idle_s = found
            if holder.run == self.me.run:
                self._join()
                still = self.holder()
                if still is not None and still[0].run == self.me.run:
                    return note
                self.member.unlink(missing_ok=True)  # it was released as we joined: take it anew
                continue
            why = self.gone_because(holder, idle_s)
            if why is None:
                raise SplitBusy(self.split_dir, holder, idle_s)
            # take the stale lock aside: of several runs doing this at once, one rename wins
            aside = self.split_dir / f".writer-gone.{self.me.key}"
            try:
                os.rename(self.lock, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            for path in self.split_dir.glob(f"{MEMBER_PREFIX}{holder.key}.*"):
                path.unlink(missing_ok=True)
            note = f"took the folder over from {holder.describe()}: {why}"
        raise RuntimeError(f"{self.split_dir}: the lock {LOCK} kept changing hands; try again")

    def wait_and_acquire(self, say: Callable[[str], None], poll_s: float = 2.0) -> str | None:
        """`acquire`, waiting (with a line now and every 10 minutes) while another run holds the folder."""
        said_at = -1e9
        while True:
            try:
                return self.acquire()
            except SplitBusy as busy:
                if time.monotonic() - said_at > 600:
                    say(f"{busy}: waiting for it to finish (or to stop for {self.stale_after_s:.0f} s)")
                    said_at = time.monotonic()
                time.sleep(poll_s)

    def _publish(self) -> bool:
        return publish_once(self.lock, json.dumps(asdict(self.me)) + "\n")

    def _join(self) -> None:
        self.member.write_text(f"{self.me.pid}\n")
        self._last_beat = time.monotonic()

    def beat(self, force: bool = False) -> None:
        """Touch the lock (at most every few seconds, unless ``force``); raise `SplitLost`
        when another run took it."""
        now = time.monotonic()
        if now - self._last_beat < BEAT_EVERY_S and not force:
            return
        found = self.holder()
        if found is None and self.member.exists() and self._publish():
            # The last other task of this run left as this one joined (its `release` saw no member yet and
            # freed the folder). A run that takes the folder over removes this run's member files, so
            # ours still being here means nobody else has written it: hold it again.
            found = self.holder()
        if found is None or found[0].run != self.me.run:
            taker = "another run took it over and has left it since" if found is None else found[0].describe()
            raise SplitLost(
                f"{self.split_dir}: this run was silent for {now - self._last_beat:.0f} s and the folder is no "
                f"longer its own ({taker}): stopping so that two runs never write it"
            )
        os.utime(self.lock)
        self._last_beat = now

    def keep_alive(self) -> None:
        """Beat from a thread from now on (start it only after the last fork)."""

        def loop() -> None:
            while not self._stop.wait(1.0):
                try:
                    self.beat()
                except (SplitLost, OSError):
                    return

        self._thread = threading.Thread(target=loop, name="split-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Leave; the last task of the run to leave frees the folder."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.member.unlink(missing_ok=True)
        if self.members():
            return
        found = self.holder()
        if found is not None and found[0].run == self.me.run:
            self.lock.unlink(missing_ok=True)
