"""Failure lines: which lines of a training log say that a start failed, and which one names why.

Shared by the report (`test_case.report.log_lines` collects these lines, `test_case.report.metrics`
quotes the cause) and the restart decisions of a running job (`test_case.training.restarts`), so
that both name the same line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# Lines that say a run failed or was stopped, tested after the rank prefix: a Python traceback and
# its last line (the exception), ``<program>: error: ...`` (srun, slurmstepd's "*** JOB 5 ON node1
# CANCELLED AT ... DUE TO TIME LIMIT ***", this suite's scripts and launcher), Composer's launcher
# reporting a crashed rank, torch's C++ errors (the NCCL watchdog) and ``terminate called``.
FAILURE_STARTS = (
    r"Traceback \(most recent call last\):|[\w.-]++: error: |ERROR:composer\.cli\.launcher:|terminate called "
    r"|[A-Za-z_][\w.]*+(?:(?<=Error)|(?<=Exception)|(?<=Interrupt))(?![\w.])"
)
FAILURE_LINE = re.compile(r"^(?:\[rank\d+\]: ?)?(?:" + FAILURE_STARTS + r"|\[E [\w.]+:\d+\] )")


@dataclass(frozen=True)
class LogLine:
    """One line of the log worth quoting in the report."""

    number: int  # 1-based line in the file
    text: str  # as logged, rank prefix included


# Composer's launcher on a rank that a signal ended (kill -9, the OOM killer, SIGBUS): the rank had no
# chance to print anything, so its peers' errors ("Connection reset by peer") are only consequences.
# groups: the rank, the signal number
RANK_KILLED_BY_SIGNAL = re.compile(r"ERROR:composer\.cli\.launcher:Rank (\d+) crashed with exit code -(\d+)")


# slurmstepd in the batch step's output when Slurm ends the job: "*** JOB 344 ON node1 CANCELLED AT
# 2026-12-05T12:35:10 ***" for scancel, "... DUE TO TIME LIMIT ***", "... DUE TO PREEMPTION ***", ...
# groups: the job id, the time, the reason (None: scancel)
JOB_CANCELLED = re.compile(r"\*\*\* JOB (\S+) ON \S+ CANCELLED AT (\S+)(?: DUE TO ([A-Z][A-Z ]*[A-Z]))? \*\*\*")


def cancelled_by_user(failures: Sequence[LogLine]) -> LogLine | None:
    """slurmstepd's line that says the job was cancelled with scancel (not by its time limit,
    preemption or a node failure), if the start's failure lines hold one."""
    return next((f for f in failures if (m := JOB_CANCELLED.search(f.text)) and m.group(3) is None), None)


def failure_cause(failures: Sequence[LogLine]) -> LogLine | None:
    """The line that names why the last start failed: a rank ended by a signal, else the first
    failure line after the start, preferring a traceback's exception to its ``Traceback (most recent
    call last):`` header."""
    killed = [f for f in failures if RANK_KILLED_BY_SIGNAL.search(f.text)]
    if killed:
        return killed[0]
    named = [f for f in failures if "Traceback (most recent call last)" not in f.text]
    return named[0] if named else (failures[0] if failures else None)


# Exceptions a configuration raises the same way wherever it runs (llm-foundry's and Composer's
# checks, OmegaConf's): raised by every rank before the first batch, a requeue would only repeat them.
# RuntimeError, OSError and torch.distributed's errors are left out: they can come from a bad node or link.
CONFIGURATION_ERRORS = (
    "ValueError",
    "TypeError",
    "KeyError",
    "AttributeError",
    "AssertionError",
    "NotImplementedError",
    "ImportError",
    "ModuleNotFoundError",
    "NameError",
    "IndexError",
    "ZeroDivisionError",
    "omegaconf.errors.ConfigKeyError",
    "omegaconf.errors.ConfigAttributeError",
    "omegaconf.errors.ConfigTypeError",
    "omegaconf.errors.ValidationError",
    "omegaconf.errors.MissingMandatoryValue",
    "omegaconf.errors.InterpolationResolutionError",
)
# A rank's exception line as torch's elastic agent prefixes it: "[rank1]: ValueError: ..."
RANK_EXCEPTION = re.compile(r"^\[rank(\d+)\]: ?([A-Za-z_][\w.]*(?:Error|Exception))(?::\s?(.*))?$")
# Composer's launcher, once per rank when the job ends: "Global rank 1 (PID 5968) exited with code 1"
RANK_EXITED = re.compile(r"^(?:ERROR:composer\.cli\.launcher:)?Global rank (\d+) \(PID \d+\) exited with code")
# A batch ended: Composer's progress block, or rank_timing's batch event (whatever console_log_interval says)
TRAIN_BATCH = re.compile(r'^(?:\[batch=\d+/\d+\]:|\[timing\] \{"kind":"batch")')
TASK_LABEL = re.compile(r"^(\d+): ?")  # srun --label: the task (one per node) that printed the line


def rank_errors(lines: Sequence[str]) -> tuple[dict[tuple[int | None, int], str], set[int], bool]:
    """What each rank raised in a start's ``lines`` (srun task labels kept): {(task, rank): exception},
    the ranks Composer's launcher says exited on their own, and whether a batch ended."""
    raised: dict[tuple[int | None, int], str] = {}
    exited: set[int] = set()
    for raw in lines:
        label = TASK_LABEL.match(raw)
        task, line = (int(label.group(1)), raw[label.end() :]) if label else (None, raw)
        if TRAIN_BATCH.match(line):
            return raised, exited, True
        if m := RANK_EXCEPTION.match(line):
            raised[(task, int(m.group(1)))] = f"{m.group(2)}: {m.group(3)}" if m.group(3) else m.group(2)
        elif m := RANK_EXITED.match(line):
            exited.add(int(m.group(1)))
    return raised, exited, False


def configuration_error(lines: Sequence[str], nodes: int = 1) -> str | None:
    """The exception the ranks of a start raised the same way before its first batch on every one of
    its ``nodes``, when it is a `CONFIGURATION_ERRORS` one (``ValueError: d_model must be divisible by
    n_heads``), else None. ``lines``: the start's lines, srun task labels (``0: ``) kept. Ranks on
    every node must have printed it (at least two ranks unless the job has one node), and every rank
    Composer's launcher says exited on its own: one node's error (a broken node-local environment,
    a stuck process's shared memory) is a node's fault, not the configuration's."""
    raised, exited, trained = rank_errors(lines)
    errors = set(raised.values())
    if trained or len(errors) != 1 or not exited <= {rank for _, rank in raised}:
        return None
    tasks = {task for task, _ in raised}
    every_node = tasks == {None} if nodes <= 1 else tasks >= set(range(nodes))
    if not every_node or (nodes > 1 and len(raised) < 2):
        return None
    (error,) = errors
    return error if error.split(":", 1)[0] in CONFIGURATION_ERRORS else None


def repeated_configuration_error(lines: Sequence[str], previous: Sequence[str]) -> str | None:
    """The `CONFIGURATION_ERRORS` exception that this start's ranks and the previous start's raised
    alike before their first batch, where not every node's output showed it (srun's
    ``--kill-on-bad-exit`` may end a node before it prints): the second time, it is the configuration."""
    found = []
    for start in (lines, previous):
        raised, _, trained = rank_errors(start)
        errors = set(raised.values())
        if trained or len(errors) != 1:
            return None
        found.append(errors.pop())
    same = found[0] == found[1]
    return found[0] if same and found[0].split(":", 1)[0] in CONFIGURATION_ERRORS else None
