"""The jobs of tests/test_fault_tolerance_slurm.py, run in the background from the session's start.

Three 2-node training jobs of one config, mostly waiting (a requeue gap, gloo's ``dist_timeout``,
Slurm noticing a dead slurmd), run while the tests that do not need the cluster compute
(tests/conftest.py starts them and orders those tests first; the Slurm modules wait for them):

- the faulted run, partition ``five`` (node1-5): three faults in a row, each by PID after the start
  it hits has saved a checkpoint of its own, each on the node of that start's rank 1 (node2 at the
  first start; later ones wherever Slurm placed it): ``kill -9`` of the rank, then ``SIGSTOP`` of
  the rank (a hang, noticed by gloo after ``dist_timeout``), then the node's ``slurmd`` killed (Slurm
  marks the node down and requeues the job itself). A 2-node job with 3 exclusions needs 5 nodes.
- beside it, partition ``spare`` (node6-8): a crash loop (rank 1 killed at every start, one node to
  spare and no more) that must stop after ``MAX_RESTARTS``, then the uninterrupted reference run
  whose final loss the faulted run must end with exactly.

The jobs read a copy of the session's dataset whose shards were decompressed before they start
(`tests.conftest.decompress_shards`: two jobs that start together on a fresh zstd dataset can
collide). The faults are undone when the faulted run ends (the stopped rank continued if still there, the
lost slurmd started again: ReturnToService=2 brings its node back). Each rank runs one thread
(``OMP_NUM_THREADS=1``): the emulated nodes share this machine's cores, and real nodes do not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from test_case.report.log_lines import ParsedLog
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import LOSS_KEY
from test_case.restart_events import RestartEvent
from test_case.training.restarts import events_in
from tests.conftest import decompress_shards
from tests.local_slurm import FINAL_STATES, LocalSlurmCluster, pid_alive, rank_pids

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN = "slurm-scripts/2.train-mpt-manual-distributed.sbatch"
DIST_TIMEOUT = 40  # s: the hang's gloo timeout (the tiny yaml keeps 120)
# 300 batches (about 75 s of training here): long enough that Slurm notices a dead slurmd (about 30 s
# with SlurmdTimeout 10 s) well before the run could end without it
BATCHES = 300
OVERRIDES = [f"max_duration={BATCHES}ba", "save_interval=10ba", f"dist_timeout={DIST_TIMEOUT}"]
CRASH_LOOP_RESTARTS = 2  # MAX_RESTARTS of the crash loop
STOPPING = threading.Event()  # set by `FaultScenario.cancel`: every wait below gives up at once


def _still_waiting(deadline: float, message: str) -> None:
    """Between two polls: fails with ``message`` past ``deadline`` or once the scenario is cancelled."""
    assert not STOPPING.is_set(), f"cancelled: {message}"
    assert time.monotonic() < deadline, message


@dataclass
class Place:
    logs: Path
    ckpt: Path
    env: dict[str, str]


@dataclass
class Run:
    job_id: str
    info: dict[str, str]
    text: str
    parsed: ParsedLog
    running_at: float | None = None  # when the scenario first saw it running

    @property
    def events(self) -> list[RestartEvent]:
        return events_in(self.text.splitlines())

    def starts(self) -> list[tuple[int, float]]:
        """(restart count, time) of each ``job ID start N on ...`` line."""
        found = re.findall(rf"^\[(\S+)\] job {self.job_id} start (\d+) on ", self.text, re.MULTILINE)
        return [(int(n), datetime.fromisoformat(t).timestamp()) for t, n in found]

    def end_time(self) -> float:
        (t,) = re.findall(rf"^\[(\S+)\] job {self.job_id} end: exit code 0 after", self.text, re.MULTILINE)
        return datetime.fromisoformat(t).timestamp()

    def final_loss(self) -> float:
        value = self.parsed.train_blocks[-1].metrics[LOSS_KEY]
        assert isinstance(value, float)
        return value

    def start_text(self, n: int) -> str:
        """The log of start ``n`` alone: from its start line to the next one."""
        begin = self.text.index(f"] job {self.job_id} start {n} on ")
        following = self.text.find(f"] job {self.job_id} start {n + 1} on ", begin)
        return self.text[begin : following if following >= 0 else len(self.text)]

    def event(self, kind: str, start: int) -> RestartEvent:
        (event,) = [e for e in self.events if e.kind == kind and e.start == start]
        return event


@dataclass
class Fault:
    """One fault injected into the faulted run: which start it hit, where, when, after which checkpoint."""

    start: int
    node: str  # the node of that start's rank 1
    at: float  # time.time() of the injection
    saved_at: int  # the newest complete checkpoint of that start when the fault came


@dataclass
class FaultedRun:
    run: Run
    faults: list[Fault]  # kill -9 (start 0), SIGSTOP (start 1), slurmd killed (start 2)


@dataclass
class CrashLoop:
    run: Run
    killed: list[int]  # the PIDs of rank 1 killed, one per start
    log: Path


def submit(cluster: LocalSlurmCluster, place: Place, partition: str, **env: str) -> str:
    assert not STOPPING.is_set(), "cancelled: no job submitted"
    args = [f"--output={place.logs}/%x_%j.out", f"--partition={partition}", "--nodes=2", TRAIN, "mpt-tiny-cpu"]
    return cluster.sbatch([*args, *OVERRIDES], cwd=REPO_ROOT, env={**place.env, **env})


def running_since(cluster: LocalSlurmCluster, job: str, timeout: float = 300) -> float:
    """Wait for the job to run; the time it was first seen running (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while cluster.job_info(job).get("JobState") != "RUNNING":
        _still_waiting(deadline, f"job {job} did not start in {timeout} s")
        time.sleep(0.1)
    return time.time()


def finished(cluster: LocalSlurmCluster, place: Place, job: str, running_at: float | None = None) -> Run:
    """Wait for the job to end (a final state, polled every second); its run."""
    deadline = time.monotonic() + 900
    while (info := cluster.job_info(job)).get("JobState") not in FINAL_STATES:
        _still_waiting(deadline, f"job {job} did not end in 900 s: {info.get('JobState')}")
        time.sleep(1)
    log = place.logs / f"mpt-train_{job}.out"
    return Run(job, info, log.read_text(), parse_log_file(log), running_at)


def newest_checkpoint(place: Place, job: str) -> int | None:
    """The batch of the job's newest complete checkpoint (``latest-rank0.pt`` points at it), if any."""
    latest = place.ckpt / f"mpt-train-{job}" / "checkpoints" / "latest-rank0.pt"
    try:
        return int(os.readlink(latest).split("-ba")[1].split("-")[0])
    except OSError:
        return None


def checkpoint_after(place: Place, job: str, batch: int, timeout: float = 400) -> int:
    """Wait for a complete checkpoint of the job newer than ``batch``; its batch."""
    deadline = time.monotonic() + timeout
    while (newest := newest_checkpoint(place, job)) is None or newest <= batch:
        _still_waiting(deadline, f"no checkpoint after batch {batch} for job {job} in {timeout} s")
        time.sleep(0.1)
    return newest


def batches_after(place: Place, job: str, batch: int, timeout: float = 200) -> None:
    """Wait until rank 0 of ``job`` has logged ``batch``."""
    log = place.logs / f"mpt-train_{job}.out"
    deadline = time.monotonic() + timeout
    while f"0: [batch={batch}/" not in log.read_text():
        _still_waiting(deadline, f"job {job} did not reach batch {batch} in {timeout} s")
        time.sleep(0.1)


def fault_after_a_checkpoint_of_its_own(
    cluster: LocalSlurmCluster, place: Place, job: str, restart: int
) -> tuple[int, str, int]:
    """Wait for start ``restart``'s rank 1 and for a checkpoint newer than the one that start resumed
    from; (rank 1's PID, its node, that checkpoint's batch)."""
    deadline = time.monotonic() + 400
    while not (pids := rank_pids(job, 1, restart)):
        _still_waiting(deadline, f"no rank 1 of job {job}'s start {restart} in 400 s")
        time.sleep(0.2)
    pid = pids[0]
    resumed_from = newest_checkpoint(place, job) or 0  # the ranks are still importing: nothing new yet
    return pid, cluster.node_of(pid), checkpoint_after(place, job, resumed_from)


def faulted_run(cluster: LocalSlurmCluster, place: Place) -> FaultedRun:
    """One job, three faults, each after a checkpoint of the start it hits, each on the node of that
    start's rank 1: the rank killed with SIGKILL (what the OOM killer or an Xid crash does), the rank
    stopped with SIGSTOP (a hang), the node's slurmd killed (a node lost). Undone after the run."""
    job = submit(cluster, place, "five")
    running_at = running_since(cluster, job)
    faults: list[Fault] = []
    stopped: int | None = None
    run: Run | None = None
    try:
        pid, node, saved_at = fault_after_a_checkpoint_of_its_own(cluster, place, job, 0)
        batches_after(place, job, saved_at + 3)  # a few batches the next start must train again
        os.kill(pid, signal.SIGKILL)
        faults.append(Fault(0, node, time.time(), saved_at))

        stopped, node, saved_at = fault_after_a_checkpoint_of_its_own(cluster, place, job, 1)
        os.kill(stopped, signal.SIGSTOP)
        faults.append(Fault(1, node, time.time(), saved_at))

        _, node, saved_at = fault_after_a_checkpoint_of_its_own(cluster, place, job, 2)
        os.kill(cluster._pids()[node], signal.SIGKILL)
        faults.append(Fault(2, node, time.time(), saved_at))
        run = finished(cluster, place, job, running_at)
    finally:
        if run is None:  # a fault that did not come: the job must not go on beside the next tests
            subprocess.run(["scancel", job], env=cluster.env, check=False, capture_output=True)
        if stopped is not None and pid_alive(stopped):
            os.kill(stopped, signal.SIGCONT)
        if len(faults) == 3 and not STOPPING.is_set():  # cancelled: the cluster is about to stop
            lost = faults[2].node
            cluster.start_node(lost)
            deadline = time.monotonic() + 120
            while cluster.node_state(lost) not in ("idle", "mixed", "allocated"):
                assert time.monotonic() < deadline, f"{lost} stayed {cluster.node_state(lost)}"
                time.sleep(1)
    assert run is not None and len(faults) == 3, faults
    return FaultedRun(run, faults)


def kill_rank_at_every_start(job: str, stop: threading.Event) -> list[int]:
    """Kill rank 1 of ``job`` at each start as soon as it appears. Returns the PIDs killed."""
    killed: list[int] = []
    while not stop.is_set():
        for pid in rank_pids(job, 1):
            if pid not in killed:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile: the next start's will do
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        time.sleep(0.1)
    return killed


def crash_loop(cluster: LocalSlurmCluster, place: Place) -> CrashLoop:
    """Rank 1 killed at every start, the first after a checkpoint: 3 starts, then the job stops."""
    job = submit(cluster, place, "spare", MAX_RESTARTS=str(CRASH_LOOP_RESTARTS))
    run: Run | None = None
    try:
        checkpoint_after(place, job, 0)
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=lambda: killed.extend(kill_rank_at_every_start(job, stop)))
        killer.start()
        try:
            run = finished(cluster, place, job)
        finally:
            stop.set()
            killer.join()
    finally:
        if run is None:
            subprocess.run(["scancel", job], env=cluster.env, check=False, capture_output=True)
    return CrashLoop(run, killed, place.logs / f"mpt-train_{job}.out")


class FaultScenario:
    """The three jobs, driven by two threads: the faulted run; the crash loop then the reference run.
    `start` returns at once; `faulted`, `crash_loop` and `reference` wait for theirs (re-raising what
    went wrong in the thread)."""

    def __init__(self, cluster: LocalSlurmCluster, data_root: Path, tokenizer: Path, root: Path) -> None:
        (root / "logs").mkdir(parents=True)
        cluster = cluster.pinned()  # the tests that run meanwhile may change os.environ (PATH, HOME, ...)
        data = root / "data"  # a copy for the jobs that start together, its shards decompressed before
        shutil.copytree(data_root, data)
        decompress_shards(data)
        env = {
            "PATH": cluster.env["PATH"],
            "DATA_ROOT": str(data),
            "TOKENIZER": str(tokenizer),
            "SAVE_ROOT": str(root / "ckpt"),
            "OMP_NUM_THREADS": "1",
        }
        self.cluster = cluster
        self.place = Place(root / "logs", root / "ckpt", env)
        self._results: dict[str, object] = {}
        self._threads: list[threading.Thread] = []

    def _drive(self, *steps: str) -> None:
        for step in steps:
            if STOPPING.is_set():
                self._results[step] = RuntimeError(f"not run: the scenario was cancelled before {step}")
                continue
            try:
                self._results[step] = getattr(self, f"_{step}")()
            except BaseException as err:  # handed to the test that asks for it
                self._results[step] = err
                for rest in steps[steps.index(step) + 1 :]:
                    self._results[rest] = RuntimeError(f"not run: {step} failed before it ({err!r})")
                return

    def _faulted(self) -> FaultedRun:
        return faulted_run(self.cluster, self.place)

    def _crash_loop(self) -> CrashLoop:
        return crash_loop(self.cluster, self.place)

    def _reference(self) -> Run:
        return finished(self.cluster, self.place, submit(self.cluster, self.place, "spare"))

    def start(self) -> FaultScenario:
        STOPPING.clear()
        for steps in (("faulted",), ("crash_loop", "reference")):
            thread = threading.Thread(target=self._drive, args=steps, name=f"fault-scenario-{steps[0]}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for every job of the scenario to end (the threads end with them)."""
        for thread in self._threads:
            thread.join(timeout)

    def cancel(self) -> None:
        """A session that ends before its tests asked for the results: every wait gives up, the jobs
        are cancelled, the faults undone (the threads' own clean-up), the threads waited for."""
        if any(thread.is_alive() for thread in self._threads):
            STOPPING.set()
            self.cluster.end_jobs()
            self.join(timeout=300)  # every wait gives up within a poll once STOPPING is set
            self.cluster.end_jobs()  # one requeued between the two

    def _result(self, step: str) -> object:
        self.join()
        result = self._results[step]
        if isinstance(result, BaseException):
            raise result
        return result

    def faulted(self) -> FaultedRun:
        result = self._result("faulted")
        assert isinstance(result, FaultedRun)
        return result

    def crash_loop(self) -> CrashLoop:
        result = self._result("crash_loop")
        assert isinstance(result, CrashLoop)
        return result

    def reference(self) -> Run:
        result = self._result("reference")
        assert isinstance(result, Run)
        return result
