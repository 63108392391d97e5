"""Timing events: the contract between the training callback that times ranks and the report.

Global rank 0 of every training run (`test_case.training.rank_timing`, on by default) prints one
``[timing] {json}`` line per event into the job's log. Three records, and a fourth that is no timing:

* `WallEvent`: a moment, or an interval (``began`` to ``time``), in Unix seconds on rank 0's clock:
  ``fit_start`` (training starts: model, data and checkpoint loaded; ``batch`` is the batch it
  resumes after), ``batch`` (batch ``batch`` ended; one line per batch), ``checkpoint_save``,
  ``restore`` (a checkpoint loaded, ``batch`` its batch), ``eval`` (all evaluators, after batch
  ``batch``) and ``fit_end``;
* `RankHosts`: at ``fit_start``, the host of every global rank;
* `RankTimes`: every N batches, each rank's median compute time over the batches ``batch - batches
  + 1`` to ``batch``, the slowest rank, its host and its ratio to the median of all ranks
  (`slowest_rank`, the one place that ratio is computed);
* `StreamDraws`: a mixture's samples drawn per stream (`test_case.training.stream_draws`), printed
  as a ``[stream-draws] {json}`` line of its own (`STREAM_DRAWS_PREFIX`; logs of older versions
  carry it as a ``[timing]`` line of kind ``streams``, which `parse_line` still reads). It lives
  here because it shares the form, the printing rank and the reader of the timing lines.

"Compute time" is the time a rank spends in the forward pass of its transformer blocks in a batch
(all micro-batches): work that is its own, which no collective interrupts under DDP or FSDP, so a
slow GPU or node shows as a slow rank instead of making every rank wait as long (docs/training.md, "Rank
timing and goodput"). The report (`test_case.report.log_lines`) collects the events;
`test_case.report.goodput` and `test_case.report.stragglers` compute from them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

PREFIX = "[timing] "
STREAM_DRAWS_PREFIX = "[stream-draws] "  # `StreamDraws`' own line

WallKind = Literal["fit_start", "batch", "checkpoint_save", "restore", "eval", "fit_end"]
WALL_KINDS = ("fit_start", "batch", "checkpoint_save", "restore", "eval", "fit_end")


@dataclass(frozen=True)
class WallEvent:
    """A moment of a run (``began`` None), or an interval from ``began`` to ``time``."""

    kind: WallKind
    batch: int  # batches done when it was printed (fit_start, restore: the batch resumed from)
    time: float  # Unix seconds (the interval's end)
    began: float | None = None  # an interval's start

    @property
    def seconds(self) -> float:
        """An interval's length; 0 for a moment."""
        return 0.0 if self.began is None else self.time - self.began


@dataclass(frozen=True)
class RankHosts:
    """The host of each global rank, printed at ``fit_start``."""

    kind: Literal["hosts"]
    hosts: list[str]


@dataclass(frozen=True)
class RankTimes:
    """Each rank's median compute time over a window of batches, and the slowest of them."""

    kind: Literal["ranks"]
    batch: int  # the window's last batch
    batches: int  # batches in the window
    compute_s: list[float]  # per global rank: median compute time per batch in the window
    slowest_rank: int
    slowest_node: str | None
    ratio_to_median: float  # the slowest rank's compute time / the median of all ranks'


@dataclass(frozen=True)
class StreamDraws:
    """Samples read from each stream of the train dataset, all ranks together, since ``since_batch``."""

    kind: Literal["streams"]
    batch: int  # batches done when it was printed
    since_batch: int  # the batch this start resumed after (0 for a first start)
    names: list[str]  # per stream, in the dataset's order
    planned: list[float]  # per stream: its share of an epoch's samples as the dataset resolved them
    drawn: list[int]  # per stream: samples the train loader read (its workers' prefetch included)


TimingEvent = WallEvent | RankHosts | RankTimes | StreamDraws


def slowest_rank(compute_s: list[float]) -> tuple[int, float]:
    """The rank with the longest compute time and its ratio to the median of all ranks (1.0 when
    the median is 0)."""
    rank = max(range(len(compute_s)), key=compute_s.__getitem__)
    median = statistics.median(compute_s)
    return rank, (compute_s[rank] / median if median > 0 else 1.0)


def line(event: TimingEvent) -> str:
    """``[timing] {json}`` (``[stream-draws] {json}`` for `StreamDraws`): one line, compact, keys in
    declaration order (``kind`` first)."""
    raw: dict[str, Any] = asdict(event)
    if isinstance(event, WallEvent):
        raw = {"kind": raw.pop("kind"), **{k: v for k, v in raw.items() if v is not None}}
    prefix = STREAM_DRAWS_PREFIX if isinstance(event, StreamDraws) else PREFIX
    return prefix + json.dumps(raw, separators=(",", ":"))


def _build(raw: dict[str, Any]) -> TimingEvent | None:
    kind = raw.get("kind")
    cls: type[WallEvent] | type[RankHosts] | type[RankTimes] | type[StreamDraws]
    if kind in WALL_KINDS:
        cls = WallEvent
    elif kind == "hosts":
        cls = RankHosts
    elif kind == "ranks":
        cls = RankTimes
    elif kind == "streams":
        cls = StreamDraws
    else:
        return None
    known = {f.name for f in fields(cls)}
    try:
        event = cls(**{k: v for k, v in raw.items() if k in known})
    except TypeError:
        return None
    if isinstance(event, WallEvent):
        numbers = isinstance(event.batch, int) and isinstance(event.time, int | float)
        return event if numbers and isinstance(event.began, int | float | type(None)) else None
    if isinstance(event, RankHosts):
        return event if isinstance(event.hosts, list) else None
    if isinstance(event, StreamDraws):
        names, planned, drawn = event.names, event.planned, event.drawn
        if not (isinstance(names, list) and isinstance(planned, list) and isinstance(drawn, list)):
            return None
        counts = all(isinstance(v, int) and v >= 0 for v in drawn)
        shares = all(isinstance(v, int | float) for v in planned)
        same = len(names) == len(planned) == len(drawn)
        batches = isinstance(event.batch, int) and isinstance(event.since_batch, int)
        return event if same and counts and shares and batches else None
    ok = isinstance(event.compute_s, list) and all(isinstance(v, int | float) for v in event.compute_s)
    return event if ok and isinstance(event.batch, int) and 0 <= event.slowest_rank < len(event.compute_s) else None


def parse_line(text: str) -> TimingEvent | None:
    """The event of a ``[timing] {json}`` or ``[stream-draws] {json}`` line (its rank or task prefix
    already removed), else None (a line cut short, or not an event)."""
    draws = text.startswith(STREAM_DRAWS_PREFIX)
    if not (draws or text.startswith(PREFIX)):
        return None
    try:
        raw = json.loads(text[len(STREAM_DRAWS_PREFIX if draws else PREFIX) :])
    except ValueError:
        return None
    event = _build(raw) if isinstance(raw, dict) else None
    return event if not draws or isinstance(event, StreamDraws) else None
