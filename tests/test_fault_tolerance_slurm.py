"""Faults injected for real into 2-node training jobs on the local Slurm cluster (tests/local_slurm.py).

One job takes three faults in a row, each by PID after the start it hits has saved a checkpoint of its
own, each on the node of that start's rank 1 (node2 at the first start; later ones wherever Slurm
placed it): ``kill -9`` of the rank, then ``SIGSTOP`` of the rank (a hang, noticed by gloo after
``dist_timeout``), then the node's ``slurmd`` killed (Slurm marks the node down and requeues the job
itself). After each, the job must requeue itself and resume from its checkpoint on nodes of
partition ``all`` (5 nodes) other than every node that failed it, and it must end with exactly the
final loss of an uninterrupted run of the same config. Each fault keeps its own test of
its cause, node, exclusion and resume batch. A crash loop (rank 1 killed at every start, partition
``three``) must stop after ``MAX_RESTARTS``. Every test prints how long its fault took to restart and
end the run (the closing notes quote these lines).

Rank timing and goodput (`test_case.training.rank_timing`, `test_case.report`): the uninterrupted
run names no straggler (a throttled node is named in tests/test_acceptance_slurm.py); the faulted
run's goodput parts add up to the wall time the test measured itself, with the batches trained twice
as lost progress. Each rank runs one thread (``OMP_NUM_THREADS=1``): the emulated nodes share this
machine's cores, and real nodes do not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from test_case.report.log_lines import ParsedLog, parse_composer_log
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import LOSS_KEY, summarise_run
from test_case.report.records import RunSummary
from test_case.report.stragglers import STRAGGLER_RATIO
from test_case.restart_events import RestartEvent
from test_case.timing_events import RankTimes
from test_case.training.node_plan import expand_hostlist
from test_case.training.restarts import events_in
from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster, pid_alive, rank_pid, rank_pids

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TRAIN = "slurm-scripts/2.train-mpt-manual-distributed.sbatch"
DIST_TIMEOUT = 40  # s: the hang test's gloo timeout (the tiny yaml keeps 120)
# 300 batches (about 75 s of training here): long enough that Slurm notices a dead slurmd (about 30 s
# with SlurmdTimeout 10 s) well before the run could end without it
BATCHES = 300
OVERRIDES = [f"max_duration={BATCHES}ba", "save_interval=10ba", f"dist_timeout={DIST_TIMEOUT}"]
HANG_MARGIN_S = 30  # the hang's decision comes within DIST_TIMEOUT + this: the kill, srun's end, the decision step


@dataclass
class Place:
    logs: Path
    ckpt: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def place(mds_root: Path, demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Place:
    root = tmp_path_factory.mktemp("faults")
    (root / "logs").mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(demo_assets[1]),
        "SAVE_ROOT": str(root / "ckpt"),
        "OMP_NUM_THREADS": "1",
    }
    return Place(root / "logs", root / "ckpt", env)


@dataclass
class Run:
    job_id: str
    info: dict[str, str]
    text: str
    parsed: ParsedLog
    running_at: float | None = None  # when the test first saw it running

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


def submit(
    cluster: LocalSlurmCluster, place: Place, overrides: tuple[str, ...] = (), partition: str = "all", **env: str
) -> str:
    args = [f"--output={place.logs}/%x_%j.out", f"--partition={partition}", "--nodes=2", TRAIN, "mpt-tiny-cpu"]
    args += [*OVERRIDES, *overrides]
    return cluster.sbatch(args, cwd=REPO_ROOT, env={**place.env, **env})


def running_since(cluster: LocalSlurmCluster, job: str, timeout: float = 120) -> float:
    """Wait for the job to run; the time it was first seen running (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while cluster.job_info(job).get("JobState") != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start in {timeout} s"
        time.sleep(0.1)
    return time.time()


def finished(cluster: LocalSlurmCluster, place: Place, job: str, running_at: float | None = None) -> Run:
    info = cluster.wait(job, timeout=900)
    log = place.logs / f"mpt-train_{job}.out"
    return Run(job, info, log.read_text(), parse_log_file(log), running_at)


def report_of(run: Run) -> RunSummary:
    return summarise_run(run.parsed)


def print_rank_timing(name: str, summary: RunSummary) -> None:
    """The report's per-node compute table, printed for the closing notes."""
    print(f"{name}: per-node compute (threshold {STRAGGLER_RATIO}x the median rank):")
    for n in summary.node_compute:
        print(f"  {n.node}: {n.median_compute_s:.4f} s/batch, {n.ratio_to_median:.2f}x, straggler={n.straggler}")


def newest_checkpoint(place: Place, job: str) -> int | None:
    """The batch of the job's newest complete checkpoint (``latest-rank0.pt`` points at it), if any."""
    latest = place.ckpt / f"mpt-train-{job}" / "checkpoints" / "latest-rank0.pt"
    try:
        return int(os.readlink(latest).split("-ba")[1].split("-")[0])
    except OSError:
        return None


def checkpoint_after(place: Place, job: str, batch: int, timeout: float = 300) -> int:
    """Wait for a complete checkpoint of the job newer than ``batch``; its batch."""
    deadline = time.monotonic() + timeout
    while (newest := newest_checkpoint(place, job)) is None or newest <= batch:
        assert time.monotonic() < deadline, f"no checkpoint after batch {batch} for job {job} in {timeout} s"
        time.sleep(0.1)
    return newest


def batches_after(place: Place, job: str, batch: int, timeout: float = 120) -> None:
    """Wait until rank 0 of ``job`` has logged ``batch``."""
    log = place.logs / f"mpt-train_{job}.out"
    deadline = time.monotonic() + timeout
    while f"0: [batch={batch}/" not in log.read_text():
        assert time.monotonic() < deadline, f"job {job} did not reach batch {batch} in {timeout} s"
        time.sleep(0.1)


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


def assert_resumed_away_from_the_failed_nodes(faulted: FaultedRun, n: int) -> None:
    """Fault ``n`` failed start ``n``, blamed on its node; start ``n + 1`` ran on none of the nodes
    that failed so far, from the batch after the newest checkpoint (the failure event's, at or after
    the one the fault came after)."""
    run, fault = faulted.run, faulted.faults[n]
    (nodelist,) = re.findall(rf"\] job {run.job_id} start {n + 1} on (\S+)$", run.text, re.MULTILINE)
    failed = {f.node for f in faulted.faults[: n + 1]}
    assert not failed & set(expand_hostlist(nodelist)), (nodelist, failed)
    failure = run.event("failure", n)
    assert (failure.node, failure.action, failure.failures_in_a_row) == (fault.node, "requeue", 1), failure
    assert failure.checkpoint_batch is not None and failure.checkpoint_batch >= fault.saved_at
    resumed = parse_composer_log(run.start_text(n + 1).splitlines())
    assert resumed.train_blocks[0].step == failure.checkpoint_batch + 1  # from its checkpoint, not from batch 1
    restart = run.event("restart", n + 1)
    assert restart.node == fault.node, restart
    print(f"start {n + 1} resumed at batch {resumed.train_blocks[0].step} on {nodelist} ({fault.node} failed)")


def timings(name: str, faulted: FaultedRun, n: int) -> tuple[float, float]:
    """Seconds from fault ``n`` to the next start and to the run's end, printed for the closing notes."""
    run, fault = faulted.run, faulted.faults[n]
    restart = run.starts()[n + 1][1] - fault.at
    end = run.end_time() - fault.at
    print(f"{name}: fault -> restart {restart:.0f} s, fault -> end of run {end:.0f} s (job {run.job_id})")
    return restart, end


@pytest.fixture(scope="module")
def reference(cluster: LocalSlurmCluster, place: Place) -> Run:
    run = finished(cluster, place, submit(cluster, place))
    assert (run.info["JobState"], run.info["Restarts"]) == ("COMPLETED", "0"), run.text[-4000:]
    assert not run.events
    return run


def test_a_healthy_run_names_no_straggler(reference: Run) -> None:
    summary = report_of(reference)
    print_rank_timing("healthy 2-node run", summary)
    assert [n.node for n in summary.node_compute] in (["node1", "node2"], ["node2", "node1"])
    assert summary.stragglers == []
    assert all(n.median_compute_s > 0 and not n.straggler for n in summary.node_compute)
    windows = [e for _, e in reference.parsed.timing_events if isinstance(e, RankTimes)]
    assert [w.batch for w in windows] == list(range(20, BATCHES + 1, 20))  # every 20 batches, both ranks
    assert all(len(w.compute_s) == 2 for w in windows)


def fault_after_a_checkpoint_of_its_own(
    cluster: LocalSlurmCluster, place: Place, job: str, restart: int
) -> tuple[int, str, int]:
    """Wait for start ``restart``'s rank 1 and for a checkpoint newer than the one that start resumed
    from; (rank 1's PID, its node, that checkpoint's batch)."""
    pid = rank_pid(job, 1, timeout=300, restart=restart)
    resumed_from = newest_checkpoint(place, job) or 0  # the ranks are still importing: nothing new yet
    return pid, cluster.node_of(pid), checkpoint_after(place, job, resumed_from)


@pytest.fixture(scope="module")
def faulted(cluster: LocalSlurmCluster, place: Place, reference: Run) -> FaultedRun:
    """One job, three faults, each after a checkpoint of the start it hits, each on the node of that
    start's rank 1: the rank killed with SIGKILL (what the OOM killer or an Xid crash does), the rank
    stopped with SIGSTOP (a hang), the node's slurmd killed (a node lost). Undone after the run: the
    stopped rank continued if still there, the slurmd started again (ReturnToService=2 brings the
    node back)."""
    job = submit(cluster, place)
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
        if len(faults) == 3:
            lost = faults[2].node
            cluster.start_node(lost)
            deadline = time.monotonic() + 120
            while cluster.node_state(lost) not in ("idle", "mixed", "allocated"):
                assert time.monotonic() < deadline, f"{lost} stayed {cluster.node_state(lost)}"
                time.sleep(1)
    print("faults: " + ", ".join(f"start {f.start} on {f.node} after batch {f.saved_at}" for f in faults))
    assert run is not None and faults[0].node == "node2" and len({f.node for f in faults}) == 3, faults
    return FaultedRun(run, faults)


def test_the_faulted_run_ends_exactly_where_the_uninterrupted_run_ends(faulted: FaultedRun, reference: Run) -> None:
    run = faulted.run
    assert (run.info["JobState"], run.info["ExitCode"]) == ("COMPLETED", "0:0"), run.text[-4000:]
    assert run.info["Restarts"] == "3", f"fewer restarts than faults (a fault did not take effect?): {run.info}"
    failed = {f.node for f in faulted.faults}
    assert not failed & set(expand_hostlist(run.info["NodeList"])), run.info
    # the lost node too when Slurm had marked it down by the time the failed start was decided
    assert {faulted.faults[0].node, faulted.faults[1].node} <= set(expand_hostlist(run.info["ExcNodeList"]))
    assert [n for n, _ in run.starts()] == [0, 1, 2, 3]
    last = parse_composer_log(run.start_text(3).splitlines()).train_blocks[-1]
    assert last.step == last.total == BATCHES
    assert run.final_loss() == reference.final_loss()


def test_a_killed_rank_requeues_the_job_away_from_its_node(faulted: FaultedRun) -> None:
    run = faulted.run
    assert_resumed_away_from_the_failed_nodes(faulted, 0)
    failure = run.event("failure", 0)
    assert failure.excluded == ["node2"] and failure.max_restarts == 3
    assert failure.cause.startswith("rank 1 on node2 was ended by signal 9 (SIGKILL")
    assert "ERROR:composer.cli.launcher:Rank 1 crashed with exit code -9" in failure.cause
    sentence = f"restarts: job {run.job_id} start 0 failed on node2; requeueing it (failure 1 in a row"
    assert sentence in run.text and "the next start excludes node2" in run.text
    ends = re.findall(rf"^\[\S+\] job {run.job_id} end: (exit code .*) after \d+ s$", run.text, re.MULTILINE)
    assert re.fullmatch(r"exit code \d+ \(requeued after a failure\)", ends[0]) and ends[-1] == "exit code 0", ends
    restart, _ = timings("kill -9 of node2's rank", faulted, 0)
    assert restart < 120


def test_the_goodput_of_a_requeued_run_adds_up_to_its_wall_time(faulted: FaultedRun) -> None:
    run = faulted.run
    good = report_of(run).goodput
    assert good is not None and good.starts == 4
    print(f"goodput of the faulted run (job {run.job_id}): {good}")
    parts = list(good.parts().values())
    assert all(p >= 0 for p in parts), good
    assert sum(parts) == pytest.approx(good.total_s, abs=0.01)
    # the wall time the test measured: from first seeing the job run to Slurm's end time
    assert run.running_at is not None
    measured = datetime.fromisoformat(run.info["EndTime"]).timestamp() - run.running_at
    print(f"measured wall time {measured:.1f} s, goodput total {good.total_s:.1f} s")
    assert good.total_s == pytest.approx(measured, rel=0.03)
    # lost progress: the batches each start trained after the checkpoint the next start resumed from
    trained_twice = []
    for n in range(3):
        resumed = parse_composer_log(run.start_text(n + 1).splitlines()).train_blocks[0].step - 1
        blocks = parse_composer_log(run.start_text(n).splitlines()).train_blocks
        trained_twice += [b.step for b in blocks if b.step > resumed]
    assert trained_twice and good.lost_progress_batches == len(trained_twice)
    assert 0 < good.lost_progress_s < good.productive_s
    assert good.checkpoint_restore_s > 0 and good.restart_gap_s > 0 and good.eval_s > 0
    assert good.checkpoint_save_s > 0 and good.startup_s > 0


def test_a_stopped_rank_is_noticed_within_dist_timeout_and_its_node_excluded(faulted: FaultedRun) -> None:
    run, killed, stop = faulted.run, faulted.faults[0], faulted.faults[1]
    assert_resumed_away_from_the_failed_nodes(faulted, 1)
    failure = run.event("failure", 1)
    assert set(failure.excluded) == {killed.node, stop.node}, failure
    assert failure.cause.startswith(f"rank 1 on {stop.node} stopped responding (no heartbeat for ")
    assert f"Timed out waiting {DIST_TIMEOUT * 1000}ms" in failure.cause  # gloo's timeout, the peer's error
    decided = datetime.fromisoformat(failure.time).timestamp() - stop.at
    print(f"SIGSTOP of {stop.node}'s rank: noticed and decided {decided:.0f} s after it (dist_timeout {DIST_TIMEOUT})")
    assert DIST_TIMEOUT - 2 <= decided <= DIST_TIMEOUT + HANG_MARGIN_S
    timings(f"SIGSTOP of {stop.node}'s rank", faulted, 1)


def test_a_node_whose_slurmd_dies_is_left_by_the_requeued_job(faulted: FaultedRun) -> None:
    run, lost = faulted.run, faulted.faults[2]
    assert_resumed_away_from_the_failed_nodes(faulted, 2)
    failure = run.event("failure", 2)
    assert (failure.node, failure.action) == (lost.node, "requeue"), failure
    assert f"Slurm requeued the job: srun: error: Node failure on {lost.node}" in run.event("restart", 3).cause
    timings(f"slurmd of {lost.node} killed", faulted, 2)


def kill_rank_at_every_start(job: str, stop: threading.Event, first_after: float) -> list[int]:
    """Kill rank 1 of ``job`` at each start: the first once ``first_after`` has passed, later ones as
    soon as they appear. Returns the PIDs killed."""
    killed: list[int] = []
    while not stop.is_set():
        for pid in rank_pids(job, 1):
            if pid not in killed and time.time() >= first_after:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        time.sleep(0.1)
    return killed


def test_a_crash_loop_stops_after_max_restarts(cluster: LocalSlurmCluster, place: Place, tmp_path: Path) -> None:
    job = submit(cluster, place, partition="three", MAX_RESTARTS="2")  # node1-3: one node to spare
    checkpoint_after(place, job, 0)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=lambda: killed.extend(kill_rank_at_every_start(job, stop, time.time())))
    killer.start()
    try:
        run = finished(cluster, place, job)
    finally:
        stop.set()
        killer.join()
    assert (run.info["JobState"], run.info["Restarts"]) == ("FAILED", "2"), run.text[-4000:]
    assert len(killed) == 3
    failures = [e for e in run.events if e.kind == "failure"]
    assert [(e.start, e.failures_in_a_row, e.action) for e in failures] == [
        (0, 1, "requeue"),
        (1, 2, "requeue"),
        (2, 3, "stop"),
    ]
    # node2 is left after the first failure; node3 then stays: the partition has no third node to spare
    assert failures[0].excluded == ["node2"] and failures[1].excluded == ["node2"]
    assert "node3 is not excluded: the partition would keep 1 usable node(s) for a 2-node job" in run.text
    stop_line = f"restarts: job {job} stops after 2 restart(s): failure 3 in a row without a new checkpoint"
    (line,) = [x for x in run.text.splitlines() if x.startswith(stop_line)]
    assert "more than MAX_RESTARTS=2; last failure on node3: rank 1 on node3 was ended by signal 9" in line
    assert line.endswith(f"then requeue it by hand: scontrol requeue {job}")
    assert re.fullmatch(
        rf"\[\S+\] job {job} end: exit code 1 \(training failed; its step exited with \d+\) after \d+ s",
        run.text.splitlines()[-1],
    )
    starts = run.starts()
    print(f"crash loop: {len(starts)} starts, stopped {run.info['EndTime']} after MAX_RESTARTS=2 (job {job})")

    out = subprocess.run(
        [sys.executable, "report.py", str(place.logs / f"mpt-train_{job}.out"), "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert report["status"] == "failed" and report["restarts"] == 2
    assert [e["kind"] for e in report["restart_events"]] == ["failure", "restart", "failure", "restart", "failure"]
    assert f"stopped mpt-train-{job}: start 2 failed on node3 (3 in a row without a new checkpoint" in out.stdout
    assert "stopped after 2 restart(s): 3 failures in a row without a new checkpoint, more than MAX_RESTARTS=2" in (
        out.stdout
    )
    assert f"restart mpt-train-{job}: start 1 at " in out.stdout and ": start 0 failed on node2: rank 1" in out.stdout
