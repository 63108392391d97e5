"""Faults injected for real into 2-node training jobs on a 3-node local Slurm cluster (tests/local_slurm.py).

Each fault comes after the job's first complete checkpoint, by PID: ``kill -9`` of node2's rank,
``SIGSTOP`` of node2's rank (a hang, noticed by gloo after ``dist_timeout``), node2's ``slurmd``
killed (Slurm marks the node down and requeues the job itself), and a crash loop (rank 1 killed at
every start). The job must requeue itself, resume from its checkpoint away from node2, and end with
exactly the final loss of an uninterrupted run of the same config; the crash loop must stop after
``MAX_RESTARTS``. Every test prints how long the fault took to restart and end the run (the closing
notes quote these lines).

Rank timing and goodput (`test_case.training.rank_timing`, `test_case.report`): the uninterrupted
run names no straggler; a run with node2 given a quarter of a core names node2; the requeued run's
goodput parts add up to the wall time the test measured itself, with the batches trained twice as
lost progress. Each rank runs one thread (``OMP_NUM_THREADS=1``): the emulated nodes share this
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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from test_case.report.log_parser import ParsedLog, parse_composer_log, parse_log_file
from test_case.report.metrics import LOSS_KEY, summarise_run
from test_case.report.records import RunSummary
from test_case.report.stragglers import STRAGGLER_RATIO
from test_case.restart_events import RestartEvent
from test_case.timing_events import RankTimes
from test_case.training.restarts import events_in
from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster, module_cluster, pid_alive, rank_pid, rank_pids

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TRAIN = "slurm-scripts/2.train-mpt-manual-distributed.sbatch"
DIST_TIMEOUT = 40  # s: the hang test's gloo timeout (the tiny yaml keeps 120)
# 300 batches (about 75 s of training here): long enough that Slurm notices a dead slurmd (about 30 s
# with SlurmdTimeout 10 s) well before the run could end without it
BATCHES = 300
OVERRIDES = [f"max_duration={BATCHES}ba", "save_interval=10ba", f"dist_timeout={DIST_TIMEOUT}"]
HANG_MARGIN_S = 30  # the hang's decision comes within DIST_TIMEOUT + this: the kill, srun's end, the decision step


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSlurmCluster]:
    yield from module_cluster(tmp_path_factory.mktemp("slurm"), nodes=3, slurmd_timeout=10)


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
    fault_at: float | None = None
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


def submit(cluster: LocalSlurmCluster, place: Place, overrides: tuple[str, ...] = (), **env: str) -> str:
    args = [f"--output={place.logs}/%x_%j.out", "--nodes=2", TRAIN, "mpt-tiny-cpu", *OVERRIDES, *overrides]
    return cluster.sbatch(args, cwd=REPO_ROOT, env={**place.env, **env})


def running_since(cluster: LocalSlurmCluster, job: str, timeout: float = 120) -> float:
    """Wait for the job to run; the time it was first seen running (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while cluster.job_info(job).get("JobState") != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start in {timeout} s"
        time.sleep(0.1)
    return time.time()


def finished(
    cluster: LocalSlurmCluster, place: Place, job: str, fault_at: float | None = None, running_at: float | None = None
) -> Run:
    info = cluster.wait(job, timeout=900)
    log = place.logs / f"mpt-train_{job}.out"
    return Run(job, info, log.read_text(), parse_log_file(log), fault_at, running_at)


def report_of(run: Run) -> RunSummary:
    return summarise_run(run.parsed)


def print_rank_timing(name: str, summary: RunSummary) -> None:
    """The report's per-node compute table, printed for the closing notes."""
    print(f"{name}: per-node compute (threshold {STRAGGLER_RATIO}x the median rank):")
    for n in summary.node_compute:
        print(f"  {n.node}: {n.median_compute_s:.4f} s/batch, {n.ratio_to_median:.2f}x, straggler={n.straggler}")


def first_checkpoint(place: Place, job: str, timeout: float = 300) -> int:
    """Wait for the job's first complete checkpoint (``latest-rank0.pt`` points at it); its batch."""
    latest = place.ckpt / f"mpt-train-{job}" / "checkpoints" / "latest-rank0.pt"
    deadline = time.monotonic() + timeout
    while not latest.is_symlink():
        assert time.monotonic() < deadline, f"no checkpoint for job {job} after {timeout} s"
        time.sleep(0.1)
    return int(os.readlink(latest).split("-ba")[1].split("-")[0])


def batches_after(place: Place, job: str, batch: int, timeout: float = 120) -> None:
    """Wait until rank 0 of ``job`` has logged ``batch``."""
    log = place.logs / f"mpt-train_{job}.out"
    deadline = time.monotonic() + timeout
    while f"0: [batch={batch}/" not in log.read_text():
        assert time.monotonic() < deadline, f"job {job} did not reach batch {batch} in {timeout} s"
        time.sleep(0.1)


def assert_resumed_on_other_nodes(run: Run, reference: Run, saved_at: int) -> None:
    """One restart, on node1 and node3, at the batch after the newest checkpoint (the failure event's,
    at or after the one the fault came after), to exactly the reference's final loss."""
    assert (run.info["JobState"], run.info["ExitCode"]) == ("COMPLETED", "0:0"), run.text[-4000:]
    assert run.info["Restarts"] == "1", f"the run ended without a restart (before the fault took effect?): {run.info}"
    assert run.info["NodeList"] == "node[1,3]", run.info
    second = run.text.index(f"] job {run.job_id} start 1 on node[1,3]")
    resumed = parse_composer_log(run.text[second:].splitlines())
    (failure,) = [e for e in run.events if e.kind == "failure"]
    assert failure.checkpoint_batch is not None and failure.checkpoint_batch >= saved_at
    assert resumed.train_blocks[0].step == failure.checkpoint_batch + 1  # from its checkpoint, not from batch 1
    assert resumed.train_blocks[-1].step == resumed.train_blocks[-1].total == BATCHES
    assert run.final_loss() == reference.final_loss()
    (restart,) = [e for e in run.events if e.kind == "restart"]
    assert restart.start == 1 and restart.node == "node2", restart


def timings(name: str, run: Run) -> tuple[float, float]:
    """Seconds from the fault to the next start and to the run's end, printed for the closing notes."""
    assert run.fault_at is not None
    restart = run.starts()[1][1] - run.fault_at
    end = run.end_time() - run.fault_at
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


def test_a_node_given_a_quarter_of_a_core_is_named_as_the_straggler(cluster: LocalSlurmCluster, place: Place) -> None:
    with cluster.cpu_quota("node2", 0.25):
        # 40 batches; the rendezvous waits longer than the module's dist_timeout for a node this slow to start
        run = finished(cluster, place, submit(cluster, place, ("max_duration=40ba", "dist_timeout=300")))
    assert run.info["JobState"] == "COMPLETED", run.text[-4000:]
    summary = report_of(run)
    print_rank_timing("node2 at a quarter of a core", summary)
    (straggler,) = summary.stragglers
    assert (straggler.node, straggler.rank) == ("node2", 1)
    assert straggler.ratio_to_median > STRAGGLER_RATIO
    assert summary.node_compute[0].node == "node2" and summary.node_compute[0].straggler
    windows = [e for _, e in run.parsed.timing_events if isinstance(e, RankTimes)]
    assert windows and all(w.slowest_node == "node2" for w in windows)  # the callback's own lines say so too


@pytest.fixture(scope="module")
def killed(cluster: LocalSlurmCluster, place: Place, reference: Run) -> tuple[Run, int]:
    """node2's rank killed with SIGKILL (what the OOM killer or an Xid crash does) after the first checkpoint."""
    job = submit(cluster, place)
    running_at = running_since(cluster, job)
    saved_at = first_checkpoint(place, job)
    batches_after(place, job, saved_at + 3)  # a few batches the next start must train again
    os.kill(rank_pid(job, 1), signal.SIGKILL)
    return finished(cluster, place, job, time.time(), running_at), saved_at


def test_a_killed_rank_requeues_the_job_away_from_its_node(killed: tuple[Run, int], reference: Run) -> None:
    run, saved_at = killed
    assert_resumed_on_other_nodes(run, reference, saved_at)
    assert run.info["ExcNodeList"] == "node2"
    (failure,) = [e for e in run.events if e.kind == "failure"]
    assert (failure.start, failure.node, failure.action, failure.failures_in_a_row) == (0, "node2", "requeue", 1)
    assert failure.excluded == ["node2"] and failure.max_restarts == 3
    assert failure.cause.startswith("rank 1 on node2 was ended by signal 9 (SIGKILL")
    assert "ERROR:composer.cli.launcher:Rank 1 crashed with exit code -9" in failure.cause
    sentence = f"restarts: job {run.job_id} start 0 failed on node2; requeueing it (failure 1 in a row"
    assert sentence in run.text and "the next start excludes node2" in run.text
    ends = re.findall(rf"^\[\S+\] job {run.job_id} end: (exit code .*) after \d+ s$", run.text, re.MULTILINE)
    assert re.fullmatch(r"exit code \d+ \(requeued after a failure\)", ends[0]) and ends[1] == "exit code 0", ends
    restart, _ = timings("kill -9 of node2's rank", run)
    assert restart < 120


def test_the_goodput_of_a_requeued_run_adds_up_to_its_wall_time(killed: tuple[Run, int]) -> None:
    run, _ = killed
    good = report_of(run).goodput
    assert good is not None and good.starts == 2
    print(f"goodput of the requeued run (job {run.job_id}): {good}")
    parts = list(good.parts().values())
    assert all(p >= 0 for p in parts), good
    assert sum(parts) == pytest.approx(good.total_s, abs=0.01)
    # the wall time the test measured: from first seeing the job run to Slurm's end time
    assert run.running_at is not None
    measured = datetime.fromisoformat(run.info["EndTime"]).timestamp() - run.running_at
    print(f"measured wall time {measured:.1f} s, goodput total {good.total_s:.1f} s")
    assert good.total_s == pytest.approx(measured, rel=0.03)
    # lost progress: the batches start 0 trained after the checkpoint start 1 resumed from
    second = run.text.index(f"] job {run.job_id} start 1 on ")
    first_start = parse_composer_log(run.text[:second].splitlines())
    resumed = parse_composer_log(run.text[second:].splitlines()).train_blocks[0].step - 1
    trained_twice = [b.step for b in first_start.train_blocks if b.step > resumed]
    assert trained_twice and good.lost_progress_batches == len(trained_twice)
    assert 0 < good.lost_progress_s < good.productive_s
    assert good.checkpoint_restore_s > 0 and good.restart_gap_s > 0 and good.eval_s > 0
    assert good.checkpoint_save_s > 0 and good.startup_s > 0


def test_a_stopped_rank_is_noticed_within_dist_timeout_and_its_node_excluded(
    cluster: LocalSlurmCluster, place: Place, reference: Run
) -> None:
    job = submit(cluster, place)
    saved_at = first_checkpoint(place, job)
    pid = rank_pid(job, 1)
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        run = finished(cluster, place, job, stopped_at)
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)
    assert_resumed_on_other_nodes(run, reference, saved_at)
    (failure,) = [e for e in run.events if e.kind == "failure"]
    assert (failure.node, failure.action, failure.excluded) == ("node2", "requeue", ["node2"])
    assert failure.cause.startswith("rank 1 on node2 stopped responding (no heartbeat for ")
    assert f"Timed out waiting {DIST_TIMEOUT * 1000}ms" in failure.cause  # gloo's timeout, the peer's error
    decided = datetime.fromisoformat(failure.time).timestamp() - stopped_at
    print(f"SIGSTOP of node2's rank: noticed and decided {decided:.0f} s after the stop (dist_timeout {DIST_TIMEOUT})")
    assert DIST_TIMEOUT - 2 <= decided <= DIST_TIMEOUT + HANG_MARGIN_S
    timings("SIGSTOP of node2's rank", run)


def test_a_node_whose_slurmd_dies_is_left_by_the_requeued_job(
    cluster: LocalSlurmCluster, place: Place, reference: Run
) -> None:
    job = submit(cluster, place)
    saved_at = first_checkpoint(place, job)
    os.kill(cluster._pids()["node2"], signal.SIGKILL)
    killed_at = time.time()
    try:
        run = finished(cluster, place, job, killed_at)
    finally:
        cluster.start_node("node2")  # undo: the node comes back (ReturnToService=2)
        deadline = time.monotonic() + 120
        while cluster.node_state("node2") not in ("idle", "mixed", "allocated"):
            assert time.monotonic() < deadline, f"node2 stayed {cluster.node_state('node2')}"
            time.sleep(1)
    assert_resumed_on_other_nodes(run, reference, saved_at)
    failure, restart = run.events
    assert (failure.kind, failure.start, failure.node, failure.action) == ("failure", 0, "node2", "requeue")
    assert "Slurm requeued the job: srun: error: Node failure on node2" in restart.cause
    timings("slurmd of node2 killed", run)


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
    job = submit(cluster, place, MAX_RESTARTS="2")
    first_checkpoint(place, job)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=lambda: killed.extend(kill_rank_at_every_start(job, stop, time.time())))
    killer.start()
    try:
        run = finished(cluster, place, job, time.time())
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
    assert re.fullmatch(rf"\[\S+\] job {job} end: exit code [1-9]\d* after \d+ s", run.text.splitlines()[-1])
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
