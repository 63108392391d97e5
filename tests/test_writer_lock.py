"""The split folder's lock (preprocessing.writer_lock) with real files and real processes: one run
at a time, tasks of one run together, and a run that is gone (killed, requeued, silent) taken over."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocessing.writer_lock import LOCK, SplitBusy, SplitLock, SplitLost, Writer


def slurm_writer(job: str, restart: int = 0, tasks: int = 2, pid: int | None = None) -> Writer:
    return Writer(
        run=f"job {job} step 0 restart {restart}",
        host="node-1",
        pid=pid or os.getpid(),
        tasks=tasks,
        job_id=job,
        restart=restart,
        started="2026-12-01 12:00:00",
    )


def test_a_second_run_is_refused_until_the_first_leaves(tmp_path: Path) -> None:
    first = SplitLock(tmp_path / "train", 0, me=slurm_writer("101"))
    assert first.acquire() is None
    second = SplitLock(tmp_path / "train", 0, me=slurm_writer("202"))
    with pytest.raises(SplitBusy) as busy:
        second.acquire()
    assert str(busy.value).startswith(f"{tmp_path / 'train'} is being written by Slurm job 101 (job 101 step 0")
    assert busy.value.holder.job_id == "101"
    first.release()
    assert not (tmp_path / "train" / LOCK).exists()
    assert second.acquire() is None
    assert second.holder() is not None and second.holder()[0].job_id == "202"  # type: ignore[index]


def test_the_tasks_of_one_run_share_it_and_the_last_to_leave_frees_it(tmp_path: Path) -> None:
    me = slurm_writer("303")
    tasks = [SplitLock(tmp_path, t, me=me) for t in range(3)]
    for lock in tasks:
        assert lock.acquire() is None
    assert tasks[0].members() == [0, 1, 2]
    tasks[1].release()
    tasks[0].release()
    assert (tmp_path / LOCK).exists() and tasks[2].members() == [2]
    with pytest.raises(SplitBusy):
        SplitLock(tmp_path, 0, me=slurm_writer("404")).acquire()
    tasks[2].release()
    assert not (tmp_path / LOCK).exists() and not list(tmp_path.glob(".writer*"))


def test_a_requeued_job_takes_over_from_its_earlier_incarnation(tmp_path: Path) -> None:
    SplitLock(tmp_path, 0, me=slurm_writer("505", restart=0)).acquire()
    later = SplitLock(tmp_path, 1, me=slurm_writer("505", restart=1))
    note = later.acquire()
    assert note is not None and "Slurm requeued job 505: restart 1 replaces restart 0" in note
    assert later.members() == [1]
    assert not list(tmp_path.glob(".writer-task.job_505_step_0_restart_0.*"))  # the old run's tasks are gone


def test_a_killed_process_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = Writer.this_process()
    dead = dataclasses.replace(here, run=f"pid {proc.pid} on {here.host}", pid=proc.pid)
    SplitLock(tmp_path, 0, me=dead).acquire()
    with pytest.raises(SplitBusy):  # alive: busy
        SplitLock(tmp_path, 0).acquire()
    proc.kill()
    proc.wait()
    note = SplitLock(tmp_path, 0).acquire()
    assert note == f"took the folder over from {dead.describe()}: pid {proc.pid} is not running on {here.host}"


def test_a_killed_process_its_parent_has_not_reaped_is_taken_over_at_once(tmp_path: Path) -> None:
    """kill -9, then rerun a second later: the killed run is a zombie until its parent reaps it, and a
    zombie answers kill -0; before, the rerun was refused ("being written by pid N")."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    here = Writer.this_process()
    dead = dataclasses.replace(here, run=f"pid {proc.pid} on {here.host}", pid=proc.pid)
    SplitLock(tmp_path, 0, me=dead).acquire()
    os.kill(proc.pid, 9)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the killed process never became a zombie"
        time.sleep(0.01)
    os.kill(proc.pid, 0)  # still answers kill -0: not reaped (this process is its parent and waits below)
    try:
        note = SplitLock(tmp_path, 0).acquire()
    finally:
        proc.wait()
    assert note == (
        f"took the folder over from {dead.describe()}: pid {proc.pid} is a zombie: it exited and its parent "
        f"has not reaped it on {here.host}"
    )


def test_a_task_that_joins_as_the_last_other_task_leaves_keeps_the_folder(tmp_path: Path) -> None:
    """The race a 2-task Slurm job met: task 1 finished its part and released (no other member yet, so it
    freed the folder) between task 0 seeing the lock of its own run and joining it."""
    me = slurm_writer("909")
    first, second = SplitLock(tmp_path, 1, me=me), SplitLock(tmp_path, 0, me=me)
    first.acquire()
    second.acquire()  # joined
    (tmp_path / LOCK).unlink()  # what first.release() did before second's member file existed
    first.member.unlink()
    second.beat(force=True)  # holds it again instead of stopping
    assert second.holder() is not None and second.holder()[0].run == me.run  # type: ignore[index]
    other = SplitLock(tmp_path, 0, me=slurm_writer("910"))
    with pytest.raises(SplitBusy):
        other.acquire()
    second.release()
    assert not (tmp_path / LOCK).exists() and not list(tmp_path.glob(".writer*"))


def test_a_silent_run_is_taken_over_after_the_timeout_and_stops_when_it_wakes(tmp_path: Path) -> None:
    silent = SplitLock(tmp_path, 0, me=slurm_writer("606"))
    silent.acquire()
    waiting = SplitLock(tmp_path, 0, stale_after_s=30, me=slurm_writer("707"))
    with pytest.raises(SplitBusy):
        waiting.acquire()
    old = time.time() - 45
    os.utime(tmp_path / LOCK, (old, old))  # as if its last heartbeat was 45 s ago
    note = waiting.acquire()
    assert note is not None and "no heartbeat for 45 s (more than 30 s)" in note
    with pytest.raises(SplitLost, match=r"is no longer its own \(Slurm job 707"):
        silent.beat(force=True)
    silent.release()  # leaving must not free the folder of the run that took it over
    assert waiting.holder() is not None and waiting.holder()[0].job_id == "707"  # type: ignore[index]


def test_heartbeats_keep_a_long_run_alive(tmp_path: Path) -> None:
    lock = SplitLock(tmp_path, 0, me=slurm_writer("808"))
    lock.acquire()
    old = time.time() - 100
    os.utime(tmp_path / LOCK, (old, old))
    lock.beat(force=True)
    found = lock.holder()
    assert found is not None and found[1] < 5
