"""Faults injected for real into 2-node training jobs on the local Slurm cluster (tests/local_slurm.py).

The jobs run in the background from the session's start (tests/fault_scenario.py says what each
does; tests/conftest.py starts them); this module reads what they left. One job takes three faults
in a row, each after the start it hits has saved a checkpoint of its own: ``kill -9`` of rank 1,
``SIGSTOP`` of rank 1 (a hang), the node's ``slurmd`` killed. After each, the job must requeue itself
and resume from its checkpoint on nodes of partition ``five`` (5 nodes) other than every node that
failed it, and it must end with exactly the final loss of an uninterrupted run of the same config.
Each fault keeps its own test of its cause, node, exclusion and resume batch. A crash loop (rank 1
killed at every start, partition ``spare``, 3 nodes) must stop after ``MAX_RESTARTS``. Every test
prints how long its fault took to restart and end the run (the closing notes quote these lines).

Goodput (`test_case.report`): the faulted run's goodput parts add up to the wall time the scenario
measured itself, with the batches trained twice as lost progress. (A healthy 2-node run naming no
straggler is tests/test_slurm_integration.py's; a throttled node named, tests/test_acceptance_slurm.py's.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from test_case.report.log_lines import parse_composer_log
from test_case.report.metrics import summarise_run
from test_case.report.records import RunSummary
from test_case.training.node_plan import expand_hostlist
from tests.conftest import REPO_ROOT
from tests.fault_scenario import (
    BATCHES,
    CRASH_LOOP_RESTARTS,
    DIST_TIMEOUT,
    CrashLoop,
    FaultedRun,
    FaultScenario,
    Run,
)
from tests.local_slurm import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

HANG_MARGIN_S = 30  # the hang's decision comes within DIST_TIMEOUT + this: the kill, srun's end, the decision step


@pytest.fixture(scope="module")
def scenario(cluster: LocalSlurmCluster, background: FaultScenario | Exception | None) -> FaultScenario:
    """The background jobs, ended (the ``cluster`` fixture waited for them)."""
    if isinstance(background, Exception):
        raise background  # what kept them from starting
    assert background is not None, "tests/conftest.py starts the scenario whenever this module's tests are selected"
    return background


@pytest.fixture(scope="module")
def reference(scenario: FaultScenario) -> Run:
    run = scenario.reference()
    assert (run.info["JobState"], run.info["Restarts"]) == ("COMPLETED", "0"), run.text[-4000:]
    assert not run.events
    return run


@pytest.fixture(scope="module")
def faulted(scenario: FaultScenario) -> FaultedRun:
    result = scenario.faulted()
    print("faults: " + ", ".join(f"start {f.start} on {f.node} after batch {f.saved_at}" for f in result.faults))
    assert result.faults[0].node == "node2" and len({f.node for f in result.faults}) == 3, result.faults
    return result


def report_of(run: Run) -> RunSummary:
    return summarise_run(run.parsed)


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


def test_a_crash_loop_stops_after_max_restarts(
    cluster: LocalSlurmCluster, scenario: FaultScenario, tmp_path: Path
) -> None:
    loop: CrashLoop = scenario.crash_loop()
    run, job = loop.run, loop.run.job_id
    first, second, third = cluster.partitions()["spare"]  # node6-8: one node to spare
    assert (run.info["JobState"], run.info["Restarts"]) == ("FAILED", str(CRASH_LOOP_RESTARTS)), run.text[-4000:]
    assert len(loop.killed) == 3
    (nodelist,) = re.findall(rf"\] job {job} start 0 on (\S+)$", run.text, re.MULTILINE)
    assert expand_hostlist(nodelist) == [first, second]  # rank 1, killed first, on the second
    failures = [e for e in run.events if e.kind == "failure"]
    assert [(e.start, e.failures_in_a_row, e.action) for e in failures] == [
        (0, 1, "requeue"),
        (1, 2, "requeue"),
        (2, 3, "stop"),
    ]
    # the second node is left after the first failure; the third then stays: the partition has no node
    # more to spare
    assert failures[0].excluded == [second] and failures[1].excluded == [second]
    assert f"{third} is not excluded: the partition would keep 1 usable node(s) for a 2-node job" in run.text
    stop_line = f"restarts: job {job} stops after 2 restart(s): failure 3 in a row without a new checkpoint"
    (line,) = [x for x in run.text.splitlines() if x.startswith(stop_line)]
    assert f"more than MAX_RESTARTS=2; last failure on {third}: rank 1 on {third} was ended by signal 9" in line
    assert line.endswith(f"then requeue it by hand: scontrol requeue {job}")
    assert re.fullmatch(
        rf"\[\S+\] job {job} end: exit code 1 \(training failed; its step exited with \d+\) after \d+ s",
        run.text.splitlines()[-1],
    )
    starts = run.starts()
    print(f"crash loop: {len(starts)} starts, stopped {run.info['EndTime']} after MAX_RESTARTS=2 (job {job})")

    out = subprocess.run(
        [sys.executable, "report.py", str(loop.log), "--out", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (report,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert report["status"] == "failed" and report["restarts"] == 2
    assert [e["kind"] for e in report["restart_events"]] == ["failure", "restart", "failure", "restart", "failure"]
    assert f"stopped mpt-train-{job}: start 2 failed on {third} (3 in a row without a new checkpoint" in out.stdout
    assert "stopped after 2 restart(s): 3 failures in a row without a new checkpoint, more than MAX_RESTARTS=2" in (
        out.stdout
    )
    assert f"restart mpt-train-{job}: start 1 at " in out.stdout
    assert f": start 0 failed on {second}: rank 1" in out.stdout
