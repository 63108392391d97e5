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

from test_case import restart_events
from test_case.failure_lines import (
    FAILURE_LINE,
    RANK_KILLED_BY_SIGNAL,
    TASK_LABEL,
    LogLine,
    configuration_error,
    failure_cause,
    repeated_configuration_error,
)
from test_case.restart_events import RestartEvent
from test_case.training.heartbeat import interval_s, read_beats, silent_ranks

DEFAULT_MAX_RESTARTS = 3
MAX_RESTARTS_ENV = "MAX_RESTARTS"
FACTS_ENV = "SLURM_JOB_FACTS"  # ``scontrol show job -o $SLURM_JOB_ID``, exported by the batch script
NODE_STATES_ENV = "PARTITION_NODE_STATES"  # ``sinfo -h -N -p PARTITION -o '%N %T'``, lines joined by ','
START_LINE = re.compile(r"^\[([^\]]+)\] job (\S+) start (\d+) on (\S+)$")
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
    from test_case.training.launch import expand_hostlist

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
    """The job's starts in ``lines`` (its ``[time] job ID start N on NODES`` lines), in order."""
    starts: list[Start] = []
    for i, raw in enumerate(lines):
        m = START_LINE.match(raw.rstrip())
        if m and m.group(2) == job_id:
            starts.append(Start(int(m.group(3)), m.group(1), _hosts(m.group(4)), [], i + 1))
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


def decide(
    start: Start,
    job_id: str,
    cause: str,
    node: str | None,
    earlier: Sequence[RestartEvent],
    checkpoint_batch: int | None,
    limit: int,
    excluded: Sequence[str],
    states: Mapping[str, str],
    num_nodes: int,
    now: str,
) -> tuple[RestartEvent, str]:
    """The ``failure`` event for this start and the sentence that explains it."""
    in_a_row = failures_in_a_row(earlier, checkpoint_batch)
    where = f" on {node}" if node else ""
    saved = f"newest checkpoint: batch {checkpoint_batch}" if checkpoint_batch is not None else "no checkpoint yet"
    row = f"failure {in_a_row} in a row without a new checkpoint; {saved}"
    if in_a_row > limit:
        event = RestartEvent(
            "failure",
            job_id,
            start.number,
            now,
            cause,
            node,
            "stop",
            in_a_row,
            limit,
            checkpoint_batch,
            list(excluded),
            "max_restarts",
        )
        restarts = start.number
        return event, (
            f"restarts: job {job_id} stops after {restarts} restart(s): {row}, more than MAX_RESTARTS={limit}; "
            f"last failure{where}: {cause.rstrip('.')}. Fix what fails (see the failure above), then requeue it "
            f"by hand: scontrol requeue {job_id}"
        )
    exclude, note = list(excluded), ""
    if node and node not in exclude:
        left = [n for n, s in states.items() if n != node and n not in exclude and usable(s)]
        if len(left) >= num_nodes:
            exclude.append(node)
            note = f"; the next start excludes {node}"
        else:
            note = (
                f"; {node} is not excluded: the partition would keep {len(left)} usable node(s) "
                f"for a {num_nodes}-node job"
            )
    event = RestartEvent(
        "failure", job_id, start.number, now, cause, node, "requeue", in_a_row, limit, checkpoint_batch, exclude
    )
    return event, (
        f"restarts: job {job_id} start {start.number} failed{where}; requeueing it ({row}, "
        f"MAX_RESTARTS={limit}){note}: {cause}"
    )


def configuration_stop(
    start: Start, job_id: str, error: str, limit: int, checkpoint_batch: int | None, excluded: Sequence[str], now: str
) -> tuple[RestartEvent, str]:
    """The ``failure`` event and sentence of a start whose ranks all raised ``error`` before the first
    batch (`test_case.failure_lines.configuration_error`): the job stops now, whatever MAX_RESTARTS says."""
    event = RestartEvent(
        "failure",
        job_id,
        start.number,
        now,
        error,
        None,
        "stop",
        1,
        limit,
        checkpoint_batch,
        list(excluded),
        "configuration",
    )
    return event, (
        f"restarts: job {job_id} stops without a requeue: every rank raised the same error before the first "
        f"batch, a configuration error that a requeue would repeat: {error}. Fix the configuration (the yaml or "
        "the overrides), check it with python -m test_case.training.launch check MODEL [overrides], then submit "
        "the job again"
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
        return [RestartEvent("restart", job_id, current.number, now, cause, last.node, None, last.failures_in_a_row)]
    if any(TIME_LIMIT_LINE in line for line in previous.lines):
        cause = f"start {previous.number} reached its time limit (USR1) and requeued itself"
        return [RestartEvent("restart", job_id, current.number, now, cause, checkpoint_batch=checkpoint_batch)]
    failed = [m.group(1) for line in previous.lines if (m := NODE_FAILURE_LINE.match(line.strip()))]
    lost = list(dict.fromkeys(failed + [n for n in previous.nodes if n in states and not usable(states[n])]))
    if lost:
        node = lost[0]
        said = [f"srun: error: Node failure on {n}" if n in failed else f"{n} is {states[n]}" for n in lost]
        cause = f"Slurm requeued the job: {', '.join(said)}"
        in_a_row = failures_in_a_row([e for s in starts[:-1] for e in events_in(s.lines)], checkpoint_batch)
        failure = RestartEvent(
            "failure", job_id, previous.number, now, cause, node, "requeue", in_a_row, None, checkpoint_batch
        )
        restart = RestartEvent("restart", job_id, current.number, now, cause, node, None, in_a_row)
        return [failure, restart]
    cause = f"start {previous.number} was requeued by Slurm or by hand (scontrol requeue, preemption)"
    return [RestartEvent("restart", job_id, current.number, now, cause, checkpoint_batch=checkpoint_batch)]


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


def main(argv: list[str] | None = None) -> int:
    """``decide``: print this start's failure event and ``requeue EXCLUDE`` or ``stop`` on stdout."""
    from test_case.training.launch import (
        LaunchError,
        heartbeat_dir,
        local_save_folder,
        plan_node,
        resolve_yaml,
        training_config,
    )

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
    if error:
        event, sentence = configuration_stop(
            start, plan.job_id, error, limit, checkpoint_batch, _hosts(facts.get("ExcNodeList", "")), now_iso()
        )
        print(sentence, file=sys.stderr, flush=True)
        print(event.line(), file=sys.stderr, flush=True)
        print("stop 2")
        return 0
    beats = heartbeat_dir(env, plan)
    cause, node = blame(start, beats)
    earlier = [e for s in starts for e in events_in(s.lines)]
    event, sentence = decide(
        start,
        plan.job_id,
        cause,
        node,
        earlier,
        checkpoint_batch,
        limit,
        _hosts(facts.get("ExcNodeList", "")),
        node_states(env.get(NODE_STATES_ENV, "")),
        int(facts.get("NumNodes", "0").split("-")[0] or 0) or plan.num_nodes,
        now_iso(),
    )
    print(sentence, file=sys.stderr, flush=True)
    print(event.line(), file=sys.stderr, flush=True)
    print("stop 1" if event.action == "stop" else f"requeue {','.join(event.excluded) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
