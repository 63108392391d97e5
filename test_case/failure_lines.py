"""Failure lines: which lines of a training log say that a start failed, and which one names why.

Shared by the report (`test_case.report.log_parser` collects these lines, `test_case.report.metrics`
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


def failure_cause(failures: Sequence[LogLine]) -> LogLine | None:
    """The line that names why the last start failed: a rank ended by a signal, else the first
    failure line after the start, preferring a traceback's exception to its ``Traceback (most recent
    call last):`` header."""
    killed = [f for f in failures if RANK_KILLED_BY_SIGNAL.search(f.text)]
    if killed:
        return killed[0]
    named = [f for f in failures if "Traceback (most recent call last)" not in f.text]
    return named[0] if named else (failures[0] if failures else None)
