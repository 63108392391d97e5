"""The job's start and end lines: the first and the last line every batch script writes into its log.

    [2026-12-05T15:07:48.123+00:00] job 42 start 0 on node[1-2]
    [2026-12-05T15:09:02.456+00:00] job 42 end: exit code 143 (stopped by SIGTERM) after 74 s

``start N`` is the start of the job (``SLURM_RESTART_COUNT``: a requeued job appends its next start
to the same log); the end line's parenthesis, when there is one, says why the job ended as it did
(``stopped by SIGTERM``, ``requeued after a failure``, ``training failed; its step exited with 1``).
`slurm-scripts/env.sh` writes them (``job_start``, ``job_end``): in bash, since a batch script runs
on the host, where the suite's Python may not be (container mode); tests/test_job_lines.py holds
that writer to `JobStart.line` and `JobEnd.line`. Every reader parses them here (`parse`): the
restart decisions split a log into its starts (`test_case.training.restarts`), the report's log
reader marks each start and end (goodput, liveness).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

JOB_LINE = re.compile(
    r"^\[(?P<time>[^\]]+)\] job (?P<job_id>\S+) (?:start (?P<start>\d+) on (?P<nodes>\S.*)"
    r"|end: exit code (?P<exit_code>\d+)(?: \((?P<why>.*)\))? after (?P<seconds>\d+) s)$"
)


@dataclass(frozen=True)
class JobStart:
    """A start of the job: when, which start (0, then one more per requeue), on which nodes (a hostlist)."""

    time: str  # ISO 8601 to the millisecond
    job_id: str
    start: int
    nodes: str

    def line(self) -> str:
        return f"[{self.time}] job {self.job_id} start {self.start} on {self.nodes}"


@dataclass(frozen=True)
class JobEnd:
    """The end of one start: its exit code, why (None: it just exited), its seconds since the start."""

    time: str
    job_id: str
    exit_code: int
    why: str | None
    seconds: int

    def line(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"[{self.time}] job {self.job_id} end: exit code {self.exit_code}{why} after {self.seconds} s"


def parse(line: str) -> JobStart | JobEnd | None:
    """The start or end line's record (``line`` without its task prefix or newline), else None."""
    m = JOB_LINE.match(line)
    if m is None:
        return None
    if m["start"] is not None:
        return JobStart(m["time"], m["job_id"], int(m["start"]), m["nodes"])
    return JobEnd(m["time"], m["job_id"], int(m["exit_code"]), m["why"], int(m["seconds"]))
