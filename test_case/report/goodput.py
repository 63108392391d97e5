"""Goodput: where a training job's wall time went, across every start of the job.

From the job's own start and end lines and the timing events of rank 0 (`test_case.timing_events`),
as `test_case.report.log_lines` collected them. The job's wall time runs from its first start line
to its last end line (or the last event, for a log that ends without one) and is split into parts
that add up to it exactly (docs/training.md, "Rank timing and goodput"):

* ``startup_s``: from a start line to ``fit_start`` (container, Python, model, data), less the restore;
  a start that never reached ``fit_start`` is start-up from its start line to its end line;
* ``checkpoint_restore_s``: Composer loading the checkpoint it resumes from;
* ``checkpoint_save_s``, ``eval_s``: the save and eval intervals;
* ``productive_s``: the batches, each from the end of the one before (or ``fit_start``) to its own
  end, less any save or eval between: every batch that was not trained again;
* ``lost_progress_s``: the same for the batches that a later start trained again (after batch
  ``B``, where the next start that trained resumed from ``B``): ``lost_progress_batches`` of them;
* ``restart_gap_s``: from one start's end line to the next start line (requeue, pending, node boot);
* ``other_s``: the rest: after the last batch of a start to its end line (shutdown, a failed start's
  wait for its collective timeout, the restart decision).

``goodput`` = productive / total.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from test_case.report.log_lines import ParsedLog
from test_case.report.records import Goodput
from test_case.timing_events import WallEvent


@dataclass
class _Start:
    """One start of the job: its lines ``[first, last)`` of the log and what happened in them."""

    began: float
    ended: float | None = None
    fit_start: WallEvent | None = None
    restore_s: float = 0.0
    intervals: list[WallEvent] = field(default_factory=list)  # saves and evals, in order
    batches: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # batch numbers, in order
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0))  # when each of them ended

    def last_time(self) -> float:
        """The start's end line, else its last event."""
        if self.ended is not None:
            return self.ended
        times = [self.began, *(e.time for e in self.intervals)]
        times += [float(self.ends.max())] if len(self.ends) else []
        return max([*times, self.fit_start.time] if self.fit_start else times)


def _unix(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _starts(parsed: ParsedLog) -> list[_Start]:
    """The job's starts with their events, by line: an event belongs to the start line before it."""
    starts: list[_Start] = []
    start_lines: list[int] = []
    for mark in parsed.job_marks:
        when = _unix(mark.time)
        if when is None:
            continue
        if mark.kind == "start":
            starts.append(_Start(when))
            start_lines.append(mark.line)
        elif starts and starts[-1].ended is None:
            starts[-1].ended = when
    if not starts:
        return []

    def start_at(line: int) -> _Start | None:
        i = bisect.bisect_right(start_lines, line) - 1
        return starts[i] if i >= 0 else None

    for line, event in parsed.timing_events:
        start = start_at(line)
        if start is None or not isinstance(event, WallEvent):
            continue
        if event.kind == "fit_start" and start.fit_start is None:
            start.fit_start = event
        elif event.kind == "restore":
            start.restore_s += event.seconds
        elif event.kind in ("checkpoint_save", "eval"):
            start.intervals.append(event)
    ends = parsed.batch_ends  # in line order: each start's batch ends are one slice of the arrays
    lines = np.frombuffer(ends.lines, dtype=np.int64) if len(ends.lines) else np.zeros(0, dtype=np.int64)
    cuts = np.searchsorted(lines, [*start_lines, lines[-1] + 1 if len(lines) else 0], side="left")
    batches = np.frombuffer(ends.batches, dtype=np.int64) if len(ends.batches) else np.zeros(0, dtype=np.int64)
    times = np.frombuffer(ends.times, dtype=np.float64) if len(ends.times) else np.zeros(0)
    for k, start in enumerate(starts):
        start.batches, start.ends = batches[cuts[k] : cuts[k + 1]], times[cuts[k] : cuts[k + 1]]
    return starts


def _batch_seconds(start: _Start) -> np.ndarray:
    """Each batch's time in a start: from the previous batch's end (or fit_start) to its own, less
    the saves and evals that ended in between."""
    assert start.fit_start is not None
    ends = start.ends
    previous = np.concatenate(([start.fit_start.time], ends[:-1]))
    seconds = ends - previous
    for event in start.intervals:
        i = int(np.searchsorted(ends, event.time, side="left"))  # the first batch that ended after it
        if i < len(ends) and event.time > previous[i]:
            seconds[i] -= event.seconds
    return np.maximum(seconds, 0.0)


def goodput(parsed: ParsedLog) -> Goodput | None:
    """The job's wall time split as the module docstring says; None without start lines or without
    timing events (rank timing switched off, or a log of an older suite)."""
    starts = _starts(parsed)
    if not starts or not any(s.fit_start for s in starts):
        return None
    parts = dict.fromkeys(
        ("startup_s", "checkpoint_restore_s", "checkpoint_save_s", "eval_s", "productive_s", "lost_progress_s"), 0.0
    )
    lost_batches = 0
    restart_gap = 0.0
    for k, start in enumerate(starts):
        if k > 0:
            restart_gap += max(0.0, start.began - starts[k - 1].last_time())
        if start.fit_start is None:
            parts["startup_s"] += start.last_time() - start.began
            continue
        parts["checkpoint_restore_s"] += start.restore_s
        parts["startup_s"] += max(0.0, start.fit_start.time - start.began - start.restore_s)
        parts["checkpoint_save_s"] += sum(e.seconds for e in start.intervals if e.kind == "checkpoint_save")
        parts["eval_s"] += sum(e.seconds for e in start.intervals if e.kind == "eval")
        resumed = next((s.fit_start.batch for s in starts[k + 1 :] if s.fit_start is not None), None)
        seconds = _batch_seconds(start)
        redone = start.batches > resumed if resumed is not None else np.zeros(len(seconds), dtype=bool)
        parts["lost_progress_s"] += float(seconds[redone].sum())
        parts["productive_s"] += float(seconds[~redone].sum())
        lost_batches += int(redone.sum())
    total = starts[-1].last_time() - starts[0].began
    other = total - restart_gap - sum(parts.values())
    return Goodput(
        total_s=round(total, 3),
        productive_s=round(parts["productive_s"], 3),
        startup_s=round(parts["startup_s"], 3),
        checkpoint_save_s=round(parts["checkpoint_save_s"], 3),
        checkpoint_restore_s=round(parts["checkpoint_restore_s"], 3),
        eval_s=round(parts["eval_s"], 3),
        lost_progress_s=round(parts["lost_progress_s"], 3),
        restart_gap_s=round(restart_gap, 3),
        other_s=round(other, 3),
        goodput=round(parts["productive_s"] / total, 4) if total > 0 else None,
        lost_progress_batches=lost_batches,
        starts=len(starts),
    )
