"""Restart events: the contract between the training job's restart decisions and the report.

A training job that fails is requeued by its own batch script (`test_case.training.restarts`
decides; docs/training.md, "Resume after a failure"). Two kinds of event are printed into the job's log, each
as one ``[restart] {json}`` line (`RestartEvent.line`) after a sentence a person reads:

* ``failure``: printed by the batch script's decision step after a start of the job failed: the
  cause, the node it names (if any), what was decided (``requeue`` or ``stop``), the failures in a
  row without a new checkpoint, the nodes the job now excludes;
* ``restart``: printed by node 0 at the start that follows any requeue: why the job was restarted
  (the failure decided above, a node Slurm marked down, the time limit, a requeue by hand).

The log is the record: the decision step reads the earlier ``failure`` events back from it to count
failures in a row, and the report (`test_case.report.log_lines`) collects both kinds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

PREFIX = "[restart] "

EventKind = Literal["failure", "restart"]
Action = Literal["requeue", "stop"]
# why a failure stopped the job: too many failures in a row, or an error a requeue would repeat
StopReason = Literal["max_restarts", "configuration"]


@dataclass(frozen=True)
class RestartEvent:
    """One failure decision or one restart of a training job."""

    kind: EventKind
    job_id: str
    start: int  # SLURM_RESTART_COUNT of the start that failed (failure) or that begins (restart)
    time: str  # ISO 8601, when the event was printed
    cause: str  # one line: what ended the start (failure) or why the job restarted (restart)
    node: str | None = None  # the node the cause names, when one can be named
    action: Action | None = None  # failure only: what the batch script does next
    failures_in_a_row: int = 0  # failures since the last one after which a new checkpoint was saved
    max_restarts: int | None = None  # MAX_RESTARTS the decision used
    checkpoint_batch: int | None = None  # batch of the newest complete checkpoint when it was printed
    excluded: list[str] = field(default_factory=list)  # nodes the job excludes from its next start
    stop_reason: StopReason | None = None  # a stop only (None in logs of older suites: max_restarts)

    def line(self) -> str:
        """``[restart] {json}``: one line, keys in declaration order."""
        return PREFIX + json.dumps(asdict(self), separators=(", ", ": "))

    @classmethod
    def from_json(cls, text: str) -> RestartEvent | None:
        """The event of a ``[restart]`` line's JSON, or None when it is cut short or not an event."""
        try:
            raw = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("kind") not in ("failure", "restart"):
            return None
        known = {f.name for f in fields(cls)}
        try:
            event = cls(**{k: v for k, v in raw.items() if k in known})
        except TypeError:
            return None
        if not isinstance(event.start, int) or not isinstance(event.failures_in_a_row, int):
            return None
        return event


def parse_line(line: str) -> RestartEvent | None:
    """The event of a ``[restart] {json}`` line (its rank or task prefix already removed), else None."""
    if not line.startswith(PREFIX):
        return None
    return RestartEvent.from_json(line[len(PREFIX) :])
