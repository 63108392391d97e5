"""Nodes the report names as bad, each with why and the Slurm command that would take it out.

Three findings name a node, each from its own module: a training start that failed on it (the
restart decisions' ``failure`` events, `test_case.training.restarts`: the node to blame, excluded
from the job's next start when the partition had others), a straggler rank on it
(`test_case.report.stragglers`) and a failed preflight check (`test_case.preflight.verdict`, which
includes the host health findings that ask for a reset, a reboot or a drain). `suggested_drains`
gathers them per node in one form, with ``scontrol update nodename=NODE state=drain reason="..."``
to run by hand: nothing here drains a node (a straggler on a shared test cluster, a rank killed on
purpose, are not a broken node); the report only says what to look at and how to act.
"""

from __future__ import annotations

from dataclasses import dataclass

from test_case.report.records import Report

REASON_PREFIX = "mpt-suite"  # Slurm's reason shows who drained the node
MAX_REASON = 80  # characters of the first finding in the drain reason (sinfo -R shows it whole)


@dataclass(frozen=True)
class DrainSuggestion:
    """One node, every finding that names it, and the command to drain it."""

    node: str
    reasons: tuple[str, ...]

    @property
    def command(self) -> str:
        first = self.reasons[0].replace('"', "'")
        short = first if len(first) <= MAX_REASON else first[: MAX_REASON - 3] + "..."
        return f'scontrol update nodename={self.node} state=drain reason="{REASON_PREFIX}: {short}"'


def suggested_drains(report: Report) -> list[DrainSuggestion]:
    """Per node named by a failed start, a straggler or a failed preflight check: why, in the order found."""
    found: dict[str, list[str]] = {}

    def add(node: str | None, reason: str) -> None:
        if node and reason not in found.setdefault(node, []):
            found[node].append(reason)

    for run in report.runs:
        for event in run.restart_events:
            if event.kind == "failure" and event.node:
                excluded = "; excluded from its next start" if event.node in event.excluded else ""
                add(event.node, f"job {event.job_id} start {event.start} failed on it{excluded}: {event.cause}")
        for s in run.stragglers:
            add(s.node, f"straggler in {run.name}: rank {s.rank} computes {s.ratio_to_median:.2f}x the median rank")
    for pf in report.preflight:
        for f in pf.failures:
            add(f.node, f"preflight job {pf.job_id}: {f.check} {f.measured} (expected {f.expected})")
    return [DrainSuggestion(node, tuple(reasons)) for node, reasons in sorted(found.items())]
