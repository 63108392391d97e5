"""Stragglers: the ranks and nodes whose own compute is slower than the others', from rank timing.

Every N batches the training callback prints each rank's median compute time over those batches
(`test_case.timing_events.RankTimes`) and, at each start, the host of every rank (``RankHosts``).
Here, per run: each (node, rank) gets the median of its windows; the median of those over all
ranks is the reference; a rank whose ratio to it exceeds the threshold (`STRAGGLER_RATIO`, or
``report.py --straggler-threshold``) is a straggler. Per node: the median of its ranks' figures,
its ratio, and whether it holds a straggler; the slowest node is named whether flagged or not.

Why 1.15: healthy ranks of one job run the same kernels on the same shapes, so their medians agree
within a few percent (measured here on CPU ranks sharing two cores: docs/training.md, "Rank timing and
goodput"); in synchronous training the slowest rank sets every step, so one 15 % slower costs the
whole job 15 %.
"""

from __future__ import annotations

import bisect
import statistics

from test_case.report.log_lines import ParsedLog
from test_case.report.records import NodeCompute, Straggler
from test_case.timing_events import RankHosts, RankTimes

STRAGGLER_RATIO = 1.15


def rank_medians(parsed: ParsedLog) -> dict[tuple[str, int], float]:
    """(node, rank) -> the median of the rank's window medians; the node is from the hosts line of
    the same start (``?`` when there is none)."""
    hosts_at: list[tuple[int, list[str]]] = [(n, e.hosts) for n, e in parsed.timing_events if isinstance(e, RankHosts)]
    lines = [n for n, _ in hosts_at]
    windows: dict[tuple[str, int], list[float]] = {}
    for line, event in parsed.timing_events:
        if not isinstance(event, RankTimes):
            continue
        i = bisect.bisect_right(lines, line) - 1
        hosts = hosts_at[i][1] if i >= 0 else []
        for rank, seconds in enumerate(event.compute_s):
            node = hosts[rank] if rank < len(hosts) else "?"
            windows.setdefault((node, rank), []).append(float(seconds))
    return {key: statistics.median(values) for key, values in sorted(windows.items(), key=lambda kv: kv[0][1])}


def stragglers(parsed: ParsedLog, threshold: float = STRAGGLER_RATIO) -> tuple[list[Straggler], list[NodeCompute]]:
    """The flagged ranks (slowest first) and every node's figures (slowest first); both empty
    without rank timing in the log."""
    medians = rank_medians(parsed)
    if not medians:
        return [], []
    reference = statistics.median(medians.values())

    def ratio(seconds: float) -> float:
        return round(seconds / reference, 4) if reference > 0 else 1.0

    flagged = [
        Straggler(node, rank, round(seconds, 6), ratio(seconds))
        for (node, rank), seconds in medians.items()
        if ratio(seconds) > threshold
    ]
    by_node: dict[str, list[float]] = {}
    for (node, _), seconds in medians.items():
        by_node.setdefault(node, []).append(seconds)
    slow_nodes = {s.node for s in flagged}
    nodes = [
        NodeCompute(
            node, len(values), round(statistics.median(values), 6), ratio(statistics.median(values)), node in slow_nodes
        )
        for node, values in by_node.items()
    ]
    flagged.sort(key=lambda s: -s.ratio_to_median)
    nodes.sort(key=lambda n: -n.ratio_to_median)
    return flagged, nodes
