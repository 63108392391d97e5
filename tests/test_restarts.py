"""Restart decisions (test_case.training.restarts), heartbeats and restart events, on real logs.

The logs in tests/data are real: 2-node jobs of the tiny model on the local 3-node cluster, each hit
by one fault after its first checkpoint (node2's rank killed with SIGKILL; node2's rank stopped with
SIGSTOP, gloo timing out after 40 s; node2's slurmd killed; rank 1 killed at every start, with a
decision of an earlier version that blamed the wrong node in start 1), and the 2-node USR1 requeue. The
heartbeats are real processes stopped with SIGSTOP.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_case.failure_lines import configuration_error, repeated_configuration_error
from test_case.report.log_lines import parse_composer_log
from test_case.report.metrics import summarise_run
from test_case.report.records import Report
from test_case.report.render import format_table
from test_case.restart_events import PREFIX, RestartEvent, parse_line
from test_case.training import restarts
from test_case.training.heartbeat import Beat, read_beats, silent_ranks
from test_case.training.restarts import (
    Failure,
    Partition,
    RestartError,
    Start,
    blame,
    decide,
    events_in,
    max_restarts,
    node_states,
    restart_event,
    split_starts,
    usable,
)

DATA = Path(__file__).parent / "data"
NOW = "2026-12-01T16:00:00+00:00"
IDLE3 = {"node1": "allocated", "node2": "allocated", "node3": "idle"}


def log_lines(name: str) -> list[str]:
    with gzip.open(DATA / name, "rt") as fh:
        return fh.read().splitlines()


def first_start(name: str, job: str) -> Start:
    """The first start of a real log, as the decision step saw it (before its own event lines)."""
    start = split_starts(log_lines(name), job)[0]
    upto = next(i for i, line in enumerate(start.lines) if line.startswith("restarts: "))
    return Start(start.number, start.time, start.nodes, start.lines[:upto], start.first_line)


def test_a_restart_event_is_one_line_that_reads_back() -> None:
    event = RestartEvent("failure", "7", 0, NOW, "rank 1: x", "node2", "requeue", 1, 3, 10, ["node2"])
    line = event.line()
    assert line.startswith(PREFIX) and "\n" not in line and parse_line(line) == event
    assert parse_line(line[:-5]) is None  # cut short
    assert parse_line('[restart] {"kind": "other", "job_id": "1"}') is None
    assert parse_line('[restart] {"kind": "failure"}') is None  # fields missing
    assert parse_line("[run-header] job_id: 3") is None


def test_max_restarts_comes_from_the_environment() -> None:
    assert (
        max_restarts({}) == 3 and max_restarts({"MAX_RESTARTS": "0"}) == 0 and max_restarts({"MAX_RESTARTS": " 5"}) == 5
    )
    with pytest.raises(RestartError, match="MAX_RESTARTS='three' is not a whole number"):
        max_restarts({"MAX_RESTARTS": "three"})


def test_node_states_and_which_are_usable() -> None:
    states = node_states("node1 allocated,node2 down*,node3 idle,node4 drained,node5 mixed,node6 idle*")
    assert [n for n, s in states.items() if usable(s)] == ["node1", "node3", "node5"]
    assert node_states("") == {}


def test_a_killed_rank_is_blamed_on_its_node() -> None:
    start = first_start("slurm-3node-killed-rank-requeued.out.gz", "4")
    assert start.nodes == ["node1", "node2"]
    cause, node = blame(start, None)
    assert node == "node2"
    assert cause == (
        "rank 1 on node2 was ended by signal 9 (SIGKILL: kill -9 or the kernel's OOM killer): "
        "1: ERROR:composer.cli.launcher:Rank 1 crashed with exit code -9."
    )


def test_a_quoted_failure_is_not_taken_for_the_launchers_own_line() -> None:
    """Start 1 of a crash loop: node 0's restart sentence quotes start 0's `Rank 1 crashed with exit
    code -9` (under task label 0); the rank killed in this start is on node3 (task 1)."""
    start = split_starts(log_lines("slurm-3node-crash-loop.out.gz"), "3")[1]
    upto = next(i for i, line in enumerate(start.lines) if line.startswith("restarts: "))
    cause, node = blame(Start(1, start.time, start.nodes, start.lines[:upto], start.first_line), None)
    assert start.nodes == ["node1", "node3"] and node == "node3"
    assert cause.startswith("rank 1 on node3 was ended by signal 9")


def test_a_hang_is_blamed_on_the_rank_whose_heartbeat_stopped(tmp_path: Path) -> None:
    start = first_start("slurm-3node-stopped-rank-requeued.out.gz", "6")
    cause, node = blame(start, None)  # without heartbeats: the peer's timeout, no node
    assert node is None and "Timed out waiting 40000ms for recv operation" in cause
    beats = tmp_path / "beats"  # the two records this job's ranks left (rank 1 stopped, woken by Slurm's SIGCONT)
    beats.mkdir()
    (beats / "rank0.json").write_text(
        '{"rank": 0, "host": "node1", "pid": 21335, "time": 1796140293.286, "gap_s": 5.0, "gap_end": 1796140253.284}'
    )
    (beats / "rank1.json").write_text(
        '{"rank": 1, "host": "node2", "pid": 21334, "time": 1796140301.386, "gap_s": 49.107, "gap_end": 1796140301.386}'
    )
    cause, node = blame(start, beats)
    assert node == "node2"
    assert cause.startswith("rank 1 on node2 stopped responding (no heartbeat for 49 s while the others waited")
    assert cause.endswith("Timed out waiting 40000ms for recv operation to complete")


@pytest.mark.parametrize(
    ("beats", "silent"),
    [
        ([Beat(0, "a", 1, 100.0), Beat(1, "b", 2, 60.0)], [1]),  # killed while stopped: stale
        ([Beat(0, "a", 1, 100.0, 5, 90), Beat(1, "b", 2, 104.0, 44, 104)], [1]),  # woken at the end
        # woken 16 s after its peer had ended (a loaded machine: the job took that long to end the step);
        # recorded from the local cluster: start 1 of job 192, rank 1 on node4 stopped with SIGSTOP
        (
            [
                Beat(0, "n3", 1, 1796538503.681, 5.018, 1796538463.68),
                Beat(1, "n4", 2, 1796538519.823, 55.997, 1796538519.823),
            ],
            [1],
        ),
        ([Beat(0, "a", 1, 100.0, 30, 40), Beat(1, "b", 2, 101.0)], []),  # a long gap, long before the end
        # woken 16 s after its peer ended and beating 6 s more (Composer's SIGTERM handler, KillWait)
        ([Beat(0, "a", 1, 140.0), Beat(1, "b", 2, 162.0, 56, 156)], [1]),
        ([Beat(0, "a", 1, 140.0), Beat(1, "b", 2, 161.0, 56, 156)], [1]),
        # a 20 s stall survived (woken at 200), then the peer failed on its own: nobody had stopped
        ([Beat(0, "a", 1, 206.0), Beat(1, "b", 2, 206.0, 20, 200)], []),
        ([Beat(0, "a", 1, 100.0), Beat(1, "b", 2, 98.0)], []),  # a crash: all stop together
        ([Beat(0, "a", 1, 50.0), Beat(1, "b", 2, 50.0)], []),  # everything stopped: nobody to blame
        ([Beat(0, "a", 1, 50.0)], []),
    ],
)
def test_silent_ranks(beats: list[Beat], silent: list[int]) -> None:
    assert [b.rank for b in silent_ranks(beats, 5.0)] == silent


def test_a_stopped_process_stops_beating(tmp_path: Path) -> None:
    """Two real processes beat every 0.2 s; one is stopped for 2 s, then woken and both are killed."""
    code = (
        "import sys, time; from pathlib import Path; from test_case.training.heartbeat import start_heartbeat; "
        "start_heartbeat(Path(sys.argv[1]), int(sys.argv[2]), every=0.2); time.sleep(60)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(rank)], cwd=Path(__file__).parent.parent)
        for rank in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(read_beats(tmp_path)) < 2:
            assert time.monotonic() < deadline, "no heartbeats"
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(procs[1].pid, signal.SIGSTOP)
        time.sleep(2.0)
        assert [b.rank for b in silent_ranks(read_beats(tmp_path), 0.2)] == [1]  # stale while stopped
        os.kill(procs[1].pid, signal.SIGCONT)  # what Slurm does before it ends a step: wake, then kill
        time.sleep(0.1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    beats = read_beats(tmp_path)
    (silent,) = silent_ranks(beats, 0.2)  # woken for its last moment: its gap names it (or, unscheduled, its age)
    assert silent.rank == 1 and silent.pid == procs[1].pid
    assert max(silent.gap_s, beats[0].time - silent.time) > 1.5
    assert json.loads((tmp_path / "rank0.json").read_text())["host"]


def test_a_rank_that_survives_a_stall_says_so(tmp_path: Path) -> None:
    """A 90 s SIGSTOP shorter than dist_timeout used to pass without a word: a real process beating
    every 0.2 s is stopped for 1.5 s, woken, and prints the stall once; an unstopped one prints nothing."""
    code = (
        "import sys, time; from pathlib import Path; from test_case.training.heartbeat import start_heartbeat; "
        "start_heartbeat(Path(sys.argv[1]), int(sys.argv[2]), every=0.2); time.sleep(60)"
    )
    outs = [tmp_path / f"out{rank}.txt" for rank in (0, 1)]
    procs = []
    for rank, out in enumerate(outs):
        with out.open("w") as fh:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, str(tmp_path / "beats"), str(rank)],
                    cwd=Path(__file__).parent.parent,
                    stdout=fh,
                )
            )
    try:
        deadline = time.monotonic() + 30
        while len(read_beats(tmp_path / "beats")) < 2:
            assert time.monotonic() < deadline, "no heartbeats"
            time.sleep(0.1)
        os.kill(procs[1].pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(procs[1].pid, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while "heartbeat: warning" not in outs[1].read_text():
            assert time.monotonic() < deadline, "no warning after the stall"
            time.sleep(0.1)
        time.sleep(0.5)  # more beats after it: the warning is printed once
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    (line,) = outs[1].read_text().splitlines()
    assert re.fullmatch(
        r"heartbeat: warning: rank 1 on \S+ did not run for [1-9]\d* s \(stopped, swapped out, a filesystem that hung, "
        r"or one long call holding the Python GIL\): its peers waited for it",
        line,
    ), line
    assert outs[0].read_text() == ""


def event(start: int, in_a_row: int, batch: int | None, action: str = "requeue") -> RestartEvent:
    return RestartEvent("failure", "9", start, NOW, "x", "node2", action, in_a_row, 3, batch)  # type: ignore[arg-type]


def decision(
    earlier: list[RestartEvent],
    batch: int | None,
    node: str | None = "node2",
    limit: int = 3,
    excluded: tuple[str, ...] = (),
    states: dict[str, str] = IDLE3,
) -> RestartEvent:
    start = Start(len(earlier), NOW, ["node1", "node2"], [], 1)
    ev, _ = decide(Failure("9", start, "cause", node, batch, excluded, NOW), earlier, limit, Partition(states, 2))
    return ev


def test_failures_count_in_a_row_until_a_new_checkpoint() -> None:
    assert (decision([], None).failures_in_a_row, decision([], 10).failures_in_a_row) == (1, 1)
    assert decision([event(0, 1, 10)], 10).failures_in_a_row == 2  # no new checkpoint since
    assert decision([event(0, 1, 10)], 20).failures_in_a_row == 1  # progress: counts 1 again
    assert decision([event(0, 1, None)], None).failures_in_a_row == 2
    assert decision([event(0, 1, 10), event(1, 2, 10), event(2, 3, 10)], 10).action == "stop"
    assert decision([event(0, 1, 10), event(1, 2, 10)], 10).action == "requeue"
    assert decision([], 10, limit=0).action == "stop"


def test_the_node_is_excluded_only_when_the_partition_keeps_enough_nodes() -> None:
    assert decision([], 10).excluded == ["node2"]
    assert decision([], 10, node=None).excluded == []
    assert decision([], 10, excluded=("node3",)).excluded == ["node3"]  # node1 alone is too few
    assert decision([], 10, states={**IDLE3, "node3": "down*"}).excluded == []
    assert decision([], 10, states={**IDLE3, "node4": "drained"}).excluded == ["node2"]
    assert decision([], 10, excluded=("node2",)).excluded == ["node2"]  # already


def test_the_decision_sentences_name_the_count_and_the_fix() -> None:
    start = Start(2, NOW, ["node1", "node3"], [], 1)
    earlier = [event(0, 1, 10), event(1, 2, 10)]
    failure = Failure("9", start, "rank 1 crashed.", "node3", 10, ("node2",), NOW)
    ev, sentence = decide(failure, earlier, 2, Partition(IDLE3, 2))
    assert ev.action == "stop" and ev.failures_in_a_row == 3
    assert sentence == (
        "restarts: job 9 stops after 2 restart(s): failure 3 in a row without a new checkpoint; newest checkpoint: "
        "batch 10, more than MAX_RESTARTS=2; last failure on node3: rank 1 crashed. Fix what fails (see the failure "
        "above), then requeue it by hand: scontrol requeue 9"
    )


def test_why_a_job_restarted_is_read_from_the_start_before() -> None:
    lines = log_lines("slurm-3node-killed-rank-requeued.out.gz")
    (restart,) = restart_event(split_starts(lines, "4"), "4", IDLE3, 10, NOW)
    assert (restart.kind, restart.start, restart.node, restart.failures_in_a_row) == ("restart", 1, "node2", 1)
    assert restart.cause.startswith("start 0 failed on node2: rank 1 on node2 was ended by signal 9")
    usr1 = split_starts(log_lines("slurm-2node-requeued-usr1.out.gz"), "4")
    (restart,) = restart_event(usr1, "4", {}, 10, NOW)
    assert restart.cause == "start 0 reached its time limit (USR1) and requeued itself"
    by_hand = [Start(0, NOW, ["node1", "node2"], ["0: [batch=3/60]:"], 1), usr1[1]]
    (restart,) = restart_event(by_hand, "4", IDLE3, 10, NOW)
    assert restart.cause == "start 0 was requeued by Slurm or by hand (scontrol requeue, preemption)"
    failure, restart = restart_event(by_hand, "4", {**IDLE3, "node2": "down*"}, 10, NOW)  # lost, by its state
    assert restart.cause == failure.cause == "Slurm requeued the job: node2 is down*" and failure.node == "node2"
    assert restart_event(usr1[:1], "4", {}, 10, NOW) == []


def test_a_node_slurm_lost_is_a_failure_and_the_cause_of_the_restart() -> None:
    lines = log_lines("slurm-3node-slurmd-killed-requeued.out.gz")
    starts = split_starts(lines, "7")
    upto = [
        Start(s.number, s.time, s.nodes, [x for x in s.lines if not x.startswith("0: restarts")], s.first_line)
        for s in starts
    ]
    failure, restart = restart_event(upto, "7", {"node1": "allocated", "node2": "idle", "node3": "allocated"}, 140, NOW)
    assert (failure.kind, failure.start, failure.node, failure.action) == ("failure", 0, "node2", "requeue")
    assert restart.cause == failure.cause == "Slurm requeued the job: srun: error: Node failure on node2"
    _, restart = restart_event(upto, "7", {"node2": "down*"}, 140, NOW)
    assert restart.cause == "Slurm requeued the job: srun: error: Node failure on node2"


def test_the_report_lists_each_restart_and_its_cause(tmp_path: Path) -> None:
    lines = log_lines("slurm-3node-killed-rank-requeued.out.gz")
    parsed = parse_composer_log(lines, "killed.out")
    assert [e.kind for e in parsed.restart_events] == ["failure", "restart"]
    run = summarise_run(parsed)
    assert run.status == "completed" and run.restarts == 1
    assert [e.node for e in run.restart_events] == ["node2", "node2"]
    text = format_table(Report(runs=[run]))
    assert "restart mpt-train-4: start 1 at 2026-12-01T15:45:58+00:00: start 0 failed on node2: rank 1 on node2" in text


def test_the_decision_step_stops_with_one_line_when_it_has_no_log(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "SLURM_JOB_ID": "5",
        "SLURM_JOB_NODELIST": "node[1-2]",
        restarts.FACTS_ENV: "JobId=5 StdOut=/nonexistent/x.out",
    }
    old = dict(os.environ)
    os.environ.update(env)
    try:
        assert restarts.main(["decide", "--exit-code", "1", "mpt-tiny-cpu"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(old)
    out = capsys.readouterr()
    assert out.out == "stop 1\n"  # the job's exit code: a failure, whatever the training step's was
    assert out.err == (
        "restarts: error: cannot read the job log /nonexistent/x.out: No such file or directory (mount its folder "
        "into the container: CONTAINER_MOUNTS); the job stops (exit code 1)\n"
    )


def test_events_in_reads_task_prefixed_lines() -> None:
    ev = event(0, 1, 10)
    assert events_in(["0: " + ev.line(), "junk", ev.line()]) == [ev, ev]


def test_an_error_every_rank_raised_before_the_first_batch_is_a_configuration_error() -> None:
    """Lines as Composer's launcher printed them in a real run of mpt-tiny-cpu with model.n_heads=3
    (two ranks, this machine, 2026-12-05)."""
    ranks = [
        "[rank0]:     raise ValueError('d_model must be divisible by n_heads')",
        "[rank0]: ValueError: d_model must be divisible by n_heads",
        "ERROR:composer.cli.launcher:Rank 0 crashed with exit code 1.",
        "Global rank 0 (PID 5967) exited with code 1",
        "Global rank 1 (PID 5968) exited with code 1",
        "----------Begin global rank 1 STDERR----------",
        "[rank1]: ValueError: d_model must be divisible by n_heads",
        "ERROR:composer.cli.launcher:Global rank 0 (PID 5967) exited with code 1",
    ]
    assert configuration_error(ranks) == "ValueError: d_model must be divisible by n_heads"
    # one rank's stderr not shown: not every rank is known to have raised it
    assert configuration_error([x for x in ranks if not x.startswith("[rank1]")]) is None
    # the ranks disagree, or it trained first, or the error can come from a node or a link
    assert configuration_error([*ranks, "[rank1]: ValueError: something else"]) is None
    assert configuration_error(["[batch=1/60]:", *ranks]) is None
    nccl = [x.replace("ValueError: d_model must be divisible by n_heads", "RuntimeError: NCCL error") for x in ranks]
    assert configuration_error(nccl) is None
    # two nodes under srun --label: ranks on both must have raised it; one node's error is that node's
    both = [f"{task}: {x}" for task, x in ((0, ranks[1]), (1, ranks[6].replace("rank1", "rank2")))]
    assert configuration_error(both, nodes=2) == "ValueError: d_model must be divisible by n_heads"
    assert configuration_error([*both[:1], "1: srun: error: node2: task 1: Killed"], nodes=2) is None
    assert configuration_error([f"0: {x}" for x in ranks], nodes=2) is None
    # ... unless the start before failed the same way before its first batch
    assert repeated_configuration_error(both[:1], both[:1]) == "ValueError: d_model must be divisible by n_heads"
    assert repeated_configuration_error(both[:1], ["0: [batch=1/60]:", *both[:1]]) is None
    assert repeated_configuration_error(both[:1], [x.replace("d_model", "n_layers") for x in both[:1]]) is None
    # a batch that ended, as rank_timing says whatever console_log_interval is
    assert configuration_error(['[timing] {"kind":"batch","batch":1,"time":1.0}', *ranks]) is None
