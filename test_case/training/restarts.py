"""Restart decisions of a training job: is this failure requeued, which node is to blame, how many so far.

Slurm requeues a ``--requeue`` job by itself only when a node fails or the job is preempted; a rank
that crashes or hangs makes the job fail and stay failed. So when the training step of
`2.train-mpt-manual-distributed.sbatch` ends with an error, the script runs

    python -m test_case.training.restarts decide --exit-code RC MODEL [overrides ...]

on its first node. It reads what this start left in the job's log (the Slurm facts the script
exports: `FACTS_ENV`, `NODE_STATES_ENV`), prints a person's sentence and a ``failure`` event
(`test_case.restart_events`) into the log, and its decision on stdout for the script:
``requeue <nodes to exclude, comma-separated, or ->`` or ``stop <the job's exit code>``. The rules:

* **the cause**: `test_case.report.metrics.failure_cause` on this start's lines (a rank ended by a
  signal first, else the first failure line);
* **the node**: the node of a rank ended by a signal (Composer's launcher on that node says so), else
  the node of a rank whose heartbeat had stopped while the others went on (`heartbeat`, a hang);
  else none (an error that every rank reports, a timeout without a silent rank);
* **the count**: failures in a row without a new checkpoint. A failure after which the run had
  saved a newer checkpoint than at the failure before counts 1 again: a long run that fails now and
  then keeps going, a crash loop stops. More than ``MAX_RESTARTS`` (default 3) in a row: ``stop``;
* **a configuration error**: when the ranks on every node raised the same `CONFIGURATION_ERRORS`
  exception before the first batch (`test_case.failure_lines.configuration_error`), or this start
  and the one before raised the same one (`repeated_configuration_error`: a node ended by srun
  before it printed), the job stops at once: a requeue would fail the same way. The script then
  exits 2, the exit code of a configuration mistake that `launch check` catches; any other failure
  that stops the job exits 1;
* **the exclusion**: the node named is added to the job's excluded nodes when the partition keeps
  enough usable nodes (not down, drained or failing) for the job's node count without it.

At the next start node 0 (`test_case.training.launch`) prints a ``restart`` event saying why the
job restarted (`restart_event`): that decision, the time limit, or a node that Slurm marked down
while the job ran (``srun: error: Node failure on NODE``, or its state now; Slurm requeued the job
itself; counted as a failure too).

At about 460 lines the module is over the suite's 400: it is the one owner of a job's restarts, the
decision after a failure and the sentence and event that explain it, and the restart printed at the
next start, which read the same starts, events and Slurm facts; split, each half would import the other.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from test_case import job_lines, restart_events
from test_case.failure_lines import (
    FAILURE_LINE,
    RANK_KILLED_BY_SIGNAL,
    TASK_LABEL,
    LogLine,
    configuration_error,
    failure_cause,
    repeated_configuration_error,
)
from test_case.job_lines import JobStart
from test_case.restart_events import Action, RestartEvent, StopReason
from test_case.training.heartbeat import heartbeat_dir, interval_s, read_beats, silent_ranks
from test_case.training.node_plan import LaunchError, NodePlan, expand_hostlist, plan_node
from test_case.training.run_config import local_save_folder, resolve_yaml, training_config

DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS_ENV = "MAX_RESTARTS"
FACTS_ENV = "SLURM_JOB_FACTS"  # ``scontrol show job -o $SLURM_JOB_ID``, exported by the batch script
NODE_STATES_ENV = "PARTITION_NODE_STATES"  # ``sinfo -h -N -p PARTITION -o '%N %T'``, lines joined by ','
TIME_LIMIT_LINE = "time limit near: requeueing job"
NODE_FAILURE_LINE = re.compile(r"^srun: error: Node failure on (\S+)$")  # Slurm lost a node of the step
SIGNAL_NAMES = {
    9: "SIGKILL: kill -9 or the kernel's OOM killer",
    7: "SIGBUS: /dev/shm full?",
    11: "SIGSEGV",
    6: "SIGABRT",
}


class RestartError(RuntimeError):
    """A fact the decision needs is missing or malformed."""


def max_restarts(env: Mapping[str, str]) -> int:
    """``MAX_RESTARTS`` from the environment (default 3); a value that is no count is an error."""
    text = env.get(MAX_RESTARTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_RESTARTS
    if not text.isdigit():
        raise RestartError(f"MAX_RESTARTS={text!r} is not a whole number: export MAX_RESTARTS=3 (or 0 for none)")
    return int(text)


def job_facts(text: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (``StdOut``, ``ExcNodeList``, ``NumNodes``, ...)."""
    return dict(re.findall(r"(\w+)=(\S*)", text))


def node_states(text: str) -> dict[str, str]:
    """``node state`` pairs from `NODE_STATES_ENV` (sinfo's long state names, ``*``: not responding)."""
    states = {}
    for item in re.split(r"[,\n]", text):
        parts = item.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def usable(state: str) -> bool:
    """A node Slurm can give jobs: responding and not down, drained, failing or in maintenance."""
    bad = ("down", "drain", "fail", "maint", "reboot", "unknown", "future", "power")
    return not state.endswith("*") and not state.lower().startswith(bad)


def _hosts(hostlist: str) -> list[str]:
    return [] if hostlist in ("", "(null)") else expand_hostlist(hostlist)


@dataclass(frozen=True)
class Start:
    """The lines of one start of the job in its log: from its start line to the next one."""

    number: int  # SLURM_RESTART_COUNT
    time: str
    nodes: list[str]
    lines: list[str]
    first_line: int  # 1-based line of the start line in the file


def split_starts(lines: Sequence[str], job_id: str) -> list[Start]:
    """The job's starts in ``lines`` (its start lines, `test_case.job_lines`), in order."""
    starts: list[Start] = []
    for i, raw in enumerate(lines):
        mark = job_lines.parse(raw.rstrip())
        if isinstance(mark, JobStart) and mark.job_id == job_id:
            starts.append(Start(mark.start, mark.time, _hosts(mark.nodes), [], i + 1))
        elif starts:
            starts[-1].lines.append(raw.rstrip("\n"))
    return starts


def events_in(lines: Sequence[str]) -> list[RestartEvent]:
    """The ``[restart]`` events in ``lines``, task prefixes removed."""
    events = []
    for raw in lines:
        text = TASK_LABEL.sub("", raw.strip(), count=1)
        if (event := restart_events.parse_line(text)) is not None:
            events.append(event)
    return events


def _describe_signal(number: int) -> str:
    name = SIGNAL_NAMES.get(number)
    return f"signal {number}" + (f" ({name})" if name else "")


def blame(start: Start, beats_folder: Path | None) -> tuple[str, str | None]:
    """``(cause, node)`` of a failed start: the line that names why, and the node to blame or None."""
    failures, signalled = [], []
    for offset, raw in enumerate(start.lines):
        label = TASK_LABEL.match(raw)
        text = raw[label.end() :] if label else raw
        if FAILURE_LINE.match(text.strip()):
            failures.append(LogLine(start.first_line + 1 + offset, raw))
        if label and (m := RANK_KILLED_BY_SIGNAL.match(text.strip())):  # the launcher's own line, not a quote of it
            task = int(label.group(1))
            node = start.nodes[task] if task < len(start.nodes) else None
            signalled.append((int(m.group(1)), int(m.group(2)), node))
    line = failure_cause(failures)
    cause = line.text if line else "no failure line in the log"
    if signalled:
        rank, signal, node = signalled[0]
        return f"rank {rank} on {node or 'an unknown node'} was ended by {_describe_signal(signal)}: {cause}", node
    if beats_folder is not None:
        beats = read_beats(beats_folder)
        silent = silent_ranks(beats, interval_s())
        if silent:
            newest = max(b.time for b in beats)
            stopped = max(max(newest - b.time, b.gap_s) for b in silent)
            ranks = ", ".join(f"rank {b.rank} on {b.host}" for b in silent)
            return (
                f"{ranks} stopped responding (no heartbeat for {stopped:.0f} s while the others waited: a hung "
                f"process): {cause}",
                silent[0].host,
            )
    return cause, None


def failures_in_a_row(earlier: Sequence[RestartEvent], checkpoint_batch: int | None) -> int:
    """This failure's count: 1 after no earlier failure or when the newest checkpoint is newer than at
    the last failure, else one more than the last failure's."""
    failures = [e for e in earlier if e.kind == "failure"]
    if not failures:
        return 1
    last = failures[-1]
    newer = (checkpoint_batch if checkpoint_batch is not None else -1) > (
        last.checkpoint_batch if last.checkpoint_batch is not None else -1
    )
    return 1 if newer else last.failures_in_a_row + 1


@dataclass(frozen=True)
class Failure:
    """What ended one start of the job, as the decision step found it."""

    job_id: str
    start: Start
    cause: str  # one line (`blame`)
    node: str | None  # the node the cause names, if any
    checkpoint_batch: int | None  # batch of the newest complete checkpoint now
    excluded: tuple[str, ...]  # the nodes the job excludes already (``ExcNodeList``)
    time: str  # ISO 8601, when the decision is printed


@dataclass(frozen=True)
class Partition:
    """Where the job could run next: the partition's node states and the job's node count."""

    states: Mapping[str, str]  # `node_states`
    num_nodes: int


def decide(
    failure: Failure, earlier: Sequence[RestartEvent], limit: int, partition: Partition
) -> tuple[RestartEvent, str]:
    """The ``failure`` event for this start and the sentence that explains it: ``stop`` after more than
    ``limit`` failures in a row (`failures_in_a_row` of the ``earlier`` events), else ``requeue``,
    excluding the node named when the ``partition`` keeps enough usable nodes without it."""
    f = failure
    in_a_row = failures_in_a_row(earlier, f.checkpoint_batch)
    where = f" on {f.node}" if f.node else ""
    saved = f"newest checkpoint: batch {f.checkpoint_batch}" if f.checkpoint_batch is not None else "no checkpoint yet"
    row = f"failure {in_a_row} in a row without a new checkpoint; {saved}"
    if in_a_row > limit:
        event = _event(f, "stop", in_a_row, limit, list(f.excluded), "max_restarts")
        return event, (
            f"restarts: job {f.job_id} stops after {f.start.number} restart(s): {row}, more than "
            f"MAX_RESTARTS={limit}; last failure{where}: {f.cause.rstrip('.')}. Fix what fails (see the failure "
            f"above), then requeue it by hand: scontrol requeue {f.job_id}"
        )
    exclude, note = list(f.excluded), ""
    if f.node and f.node not in exclude:
        left = [n for n, s in partition.states.items() if n != f.node and n not in exclude and usable(s)]
        if len(left) >= partition.num_nodes:
            exclude.append(f.node)
            note = f"; the next start excludes {f.node}"
        else:
            note = (
                f"; {f.node} is not excluded: the partition would keep {len(left)} usable node(s) "
                f"for a {partition.num_nodes}-node job"
            )
    event = _event(f, "requeue", in_a_row, limit, exclude)
    return event, (
        f"restarts: job {f.job_id} start {f.start.number} failed{where}; requeueing it ({row}, "
        f"MAX_RESTARTS={limit}){note}: {f.cause}"
    )


def configuration_stop(failure: Failure, limit: int) -> tuple[RestartEvent, str]:
    """The ``failure`` event and sentence of a start whose ranks all raised the error ``failure.cause``
    before the first batch (`test_case.failure_lines.configuration_error`): the job stops now,
    whatever MAX_RESTARTS says."""
    event = _event(failure, "stop", 1, limit, list(failure.excluded), "configuration")
    return event, (
        f"restarts: job {failure.job_id} stops without a requeue: every rank raised the same error before the "
        f"first batch, a configuration error that a requeue would repeat: {failure.cause}. Fix the configuration "
        "(the yaml or the overrides), check it with python -m test_case.training.launch check MODEL [overrides], "
        "then submit the job again"
    )


def _event(
    f: Failure,
    action: Action,
    in_a_row: int,
    limit: int,
    excluded: list[str],
    stop_reason: StopReason | None = None,
) -> RestartEvent:
    return RestartEvent(
        kind="failure",
        job_id=f.job_id,
        start=f.start.number,
        time=f.time,
        cause=f.cause,
        node=f.node,
        action=action,
        failures_in_a_row=in_a_row,
        max_restarts=limit,
        checkpoint_batch=f.checkpoint_batch,
        excluded=excluded,
        stop_reason=stop_reason,
    )


def restart_event(
    starts: Sequence[Start], job_id: str, states: Mapping[str, str], checkpoint_batch: int | None, now: str
) -> list[RestartEvent]:
    """What node 0 prints at a start after a requeue: why the job restarted (a ``restart`` event),
    preceded by a ``failure`` event when the cause was a node Slurm marked down. Empty at a first start."""
    if len(starts) < 2:
        return []
    previous, current = starts[-2], starts[-1]
    decided = [e for e in events_in(previous.lines) if e.kind == "failure" and e.action == "requeue"]
    if decided:
        last = decided[-1]
        where = f" on {last.node}" if last.node else ""
        cause = f"start {previous.number} failed{where}: {last.cause}"
        return [_restart(job_id, current.number, now, cause, node=last.node, failures_in_a_row=last.failures_in_a_row)]
    if any(TIME_LIMIT_LINE in line for line in previous.lines):
        cause = f"start {previous.number} reached its time limit (USR1) and requeued itself"
        return [_restart(job_id, current.number, now, cause, checkpoint_batch=checkpoint_batch)]
    failed = [m.group(1) for line in previous.lines if (m := NODE_FAILURE_LINE.match(line.strip()))]
    lost = list(dict.fromkeys(failed + [n for n in previous.nodes if n in states and not usable(states[n])]))
    if lost:
        node = lost[0]
        said = [f"srun: error: Node failure on {n}" if n in failed else f"{n} is {states[n]}" for n in lost]
        cause = f"Slurm requeued the job: {', '.join(said)}"
        in_a_row = failures_in_a_row([e for s in starts[:-1] for e in events_in(s.lines)], checkpoint_batch)
        failure = RestartEvent(
            kind="failure",
            job_id=job_id,
            start=previous.number,
            time=now,
            cause=cause,
            node=node,
            action="requeue",
            failures_in_a_row=in_a_row,
            checkpoint_batch=checkpoint_batch,
        )
        restart = _restart(job_id, current.number, now, cause, node=node, failures_in_a_row=in_a_row)
        return [failure, restart]
    cause = f"start {previous.number} was requeued by Slurm or by hand (scontrol requeue, preemption)"
    return [_restart(job_id, current.number, now, cause, checkpoint_batch=checkpoint_batch)]


def _restart(
    job_id: str,
    start: int,
    now: str,
    cause: str,
    node: str | None = None,
    failures_in_a_row: int = 0,
    checkpoint_batch: int | None = None,
) -> RestartEvent:
    """A ``restart`` event: why start ``start`` of the job began."""
    return RestartEvent(
        kind="restart",
        job_id=job_id,
        start=start,
        time=now,
        cause=cause,
        node=node,
        failures_in_a_row=failures_in_a_row,
        checkpoint_batch=checkpoint_batch,
    )


def newest_checkpoint_batch(save_folder: Path | None) -> int | None:
    """Batch of the newest complete checkpoint in ``save_folder`` (None: none, or not a local folder)."""
    from test_case.training.checkpoints import list_checkpoints

    if save_folder is None or not save_folder.is_dir():
        return None
    batches = [c.batch for c in list_checkpoints(save_folder) if c.complete]
    return max(batches) if batches else None


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_log(path: str | None) -> list[str]:
    """The job's log lines; a log that cannot be read is an error naming it."""
    if not path:
        raise RestartError(f"no job log: {FACTS_ENV} has no StdOut (the batch script exports it)")
    try:
        return Path(path).read_text(errors="replace").splitlines()
    except OSError as err:
        raise RestartError(
            f"cannot read the job log {path}: {err.strerror} (mount its folder into the container: CONTAINER_MOUNTS)"
        ) from err


def print_restart_events(plan: NodePlan, env: Mapping[str, str], save_folder: Path | None) -> None:
    """What node 0 prints at a start after a requeue, under Slurm (`test_case.training.launch`): why
    the job restarted (`restart_event`), with the newest checkpoint in ``save_folder``."""
    if int(env.get("SLURM_RESTART_COUNT") or 0) == 0 or FACTS_ENV not in env:
        return
    try:
        lines = read_log(job_facts(env[FACTS_ENV]).get("StdOut"))
    except RestartError as err:
        print(f"launch: warning: {err}: the log does not say why the job restarted", flush=True)
        return
    events = restart_event(
        split_starts(lines, plan.job_id),
        plan.job_id,
        node_states(env.get(NODE_STATES_ENV, "")),
        newest_checkpoint_batch(save_folder),
        now_iso(),
    )
    for event in events:
        if event.kind == "restart":
            print(f"restarts: job {plan.job_id} start {event.start}: {event.cause}", flush=True)
        print(event.line(), flush=True)


def main(argv: list[str] | None = None) -> int:
    """``decide``: print this start's failure event and ``requeue EXCLUDE`` or ``stop`` on stdout."""
    parser = argparse.ArgumentParser(prog="python -m test_case.training.restarts")
    parser.add_argument("action", choices=["decide"])
    parser.add_argument("--exit-code", type=int, required=True, help="exit code of the training step")
    parser.add_argument("model")
    parser.add_argument("overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        limit = max_restarts(env)
        facts = job_facts(env.get(FACTS_ENV, ""))
        plan = plan_node(env, gpus=0)
        lines = read_log(facts.get("StdOut"))
        starts = split_starts(lines, plan.job_id)
        if not starts:
            raise RestartError(f"no 'job {plan.job_id} start' line in {facts.get('StdOut')}")
        cfg = training_config(resolve_yaml(args.model), plan, env, args.overrides)
    except (RestartError, LaunchError, ValueError) as err:
        print(f"restarts: error: {err}; the job stops (exit code 1)", file=sys.stderr)
        print("stop 1")
        return 0
    start = starts[-1]
    checkpoint_batch = newest_checkpoint_batch(local_save_folder(cfg, Path.cwd()))
    previous = starts[-2].lines if len(starts) > 1 else None
    error = configuration_error(start.lines, len(start.nodes) or 1)
    if error is None and previous is not None:
        error = repeated_configuration_error(start.lines, previous)
    excluded = tuple(_hosts(facts.get("ExcNodeList", "")))
    if error:
        failure = Failure(plan.job_id, start, error, None, checkpoint_batch, excluded, now_iso())
        event, sentence = configuration_stop(failure, limit)
        print(sentence, file=sys.stderr, flush=True)
        print(event.line(), file=sys.stderr, flush=True)
        print("stop 2")
        return 0
    cause, node = blame(start, heartbeat_dir(env, plan))
    earlier = [e for s in starts for e in events_in(s.lines)]
    num_nodes = int(facts.get("NumNodes", "0").split("-")[0] or 0) or plan.num_nodes
    event, sentence = decide(
        Failure(plan.job_id, start, cause, node, checkpoint_batch, excluded, now_iso()),
        earlier,
        limit,
        Partition(node_states(env.get(NODE_STATES_ENV, "")), num_nodes),
    )
    print(sentence, file=sys.stderr, flush=True)
    print(event.line(), file=sys.stderr, flush=True)
    print("stop 1" if event.action == "stop" else f"requeue {','.join(event.excluded) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
