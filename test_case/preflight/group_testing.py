"""Adaptive group testing: the slow nodes and the slow links among N nodes in a number of rounds that
grows with log N, where testing every pair takes N - 1 rounds of N/2 concurrent pairs.

A test is an ``all_to_all`` among a group of nodes, scored by its busbw: every pair of the group
exchanges data, so one slow node and one slow link between two members both slow the whole group
(an ``all_reduce`` ring would use only the links between neighbours in its order). The tests of one
round have disjoint groups and run at the same time; ``measure`` runs a round and returns each
group's busbw. The search is deterministic given the scores, so every rank of the preflight runs it
in step with the others (`test_case.preflight.fabric`).

1. **Pairs**: the nodes in disjoint pairs (an odd node joins the last pair). The reference is the
   published busbw when there is one, else the median of the better half of the pairs' busbw (most
   pairs are healthy; with two groups, the better one); a group more than ``tolerance`` below it
   is slow. busbw, being per node, is comparable across group sizes (on a fabric with full
   bisection).
2. **Bisection**: a slow group is split in halves, tested at once; a slow half is searched again.
   When neither half is slow, the slow link runs between them: the halves' halves are combined
   across (A1+B1 with A2+B2, then A1+B2 with A2+B1) down to one pair.
3. **Confirmation**: each node of a slow pair is tested with a node known to be good (one that was
   in a fast group): the one that is slow again is a slow node; when neither is, the link between
   them is slow.
4. **The rest together**: every node not named (one end of each slow link left out) in one group;
   when it is slow, step 2 searches it, which finds what no pair of step 1 held.

A healthy cluster takes 2 rounds; one slow node about 2 + log2(N), one slow link about 2 + 3 log2(N).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Measure = Callable[[list[list[str]]], list[float]]  # one round: each group's busbw (GB/s)


@dataclass
class Test:
    """One group's test in one round."""

    round: int
    group: list[str]
    busbw_gbps: float
    slow: bool


@dataclass
class Located:
    """What the search found and every test it ran."""

    reference_gbps: float
    tolerance: float
    slow_nodes: list[str] = field(default_factory=list)
    slow_links: list[tuple[str, str]] = field(default_factory=list)
    unresolved: list[list[str]] = field(default_factory=list)  # slow groups with no good node to tell
    tests: list[Test] = field(default_factory=list)

    @property
    def rounds(self) -> int:
        return max((t.round for t in self.tests), default=0)


class _Search:
    def __init__(self, measure: Measure, tolerance: float, reference: float | None) -> None:
        self.measure, self.tolerance = measure, tolerance
        self.reference = reference or 0.0
        self.good: list[str] = []  # nodes seen in a fast group, in the order seen
        self.out = Located(0.0, tolerance)

    def round(self, groups: list[list[str]]) -> list[bool]:
        """Run one round of disjoint groups; whether each is slow. A group of one node tests nothing."""
        tested = [g for g in groups if len(g) > 1]
        if not tested:
            return [False for _ in groups]
        scores = self.measure(tested)
        number = self.out.rounds + 1
        if not self.reference:  # the first round sets the reference
            self.reference = upper_median(scores)
        self.out.reference_gbps = self.reference
        floor = (1 - self.tolerance) * self.reference
        slow_of: dict[int, bool] = {}
        for group, score in zip(tested, scores, strict=True):
            slow = score < floor
            self.out.tests.append(Test(number, list(group), round(score, 4), slow))
            slow_of[id(group)] = slow
            if not slow:
                self.good += [n for n in group if n not in self.good]
        return [slow_of.get(id(g), False) for g in groups]

    def confirm(self, x: str, y: str) -> None:
        """A slow pair: each end with a good node of its own."""
        helpers = [g for g in self.good if g not in (x, y) and g not in self.out.slow_nodes][:2]
        if len(helpers) < 2:
            self.out.unresolved.append([x, y])
            return
        slow_x, slow_y = self.round([[x, helpers[0]], [y, helpers[1]]])
        for node, slow in ((x, slow_x), (y, slow_y)):
            if slow and node not in self.out.slow_nodes:
                self.out.slow_nodes.append(node)
        if not slow_x and not slow_y:
            self.out.slow_links.append((x, y))

    def find(self, group: list[str]) -> None:
        """A slow group: what in it is slow."""
        if len(group) == 2:
            self.confirm(group[0], group[1])
            return
        half = len(group) // 2
        a, b = group[:half], group[half:]
        slow_a, slow_b = self.round([a, b])
        if slow_a:
            self.find(a)
        if slow_b:
            self.find(b)
        if not slow_a and not slow_b:
            self.across(a, b)

    def across(self, a: list[str], b: list[str]) -> None:
        """Every pair within ``a`` and within ``b`` is fast, ``a`` with ``b`` is slow: the slow pairs across."""
        if len(a) == 1 and len(b) == 1:
            self.confirm(a[0], b[0])
            return
        a_parts = [a[: len(a) // 2], a[len(a) // 2 :]] if len(a) > 1 else [a]
        b_parts = [b[: len(b) // 2], b[len(b) // 2 :]] if len(b) > 1 else [b]
        combos = [(x, y) for x in a_parts for y in b_parts]
        # two rounds of disjoint combinations: (A1+B1, A2+B2), then (A1+B2, A2+B1)
        first = [c for i, c in enumerate(combos) if i in (0, 3)] if len(combos) == 4 else combos[:1]
        second = [c for c in combos if c not in first]
        found = False
        for batch in (first, second):
            for (x, y), slow in zip(batch, self.round([x + y for x, y in batch]), strict=True):
                if slow:
                    found = True
                    self.across(x, y)
            if found:  # one slow link at a time: the rest is searched again from the top
                return


def upper_median(scores: Sequence[float]) -> float:
    """The median of the better half of ``scores`` (of the best one or two when there are few): what
    healthy groups reach when most are healthy, and the better of two when there are two."""
    best = sorted(scores, reverse=True)[: max(1, (len(scores) + 1) // 2)]
    return statistics.median(best)


def locate(
    nodes: Sequence[str], measure: Measure, tolerance: float = 0.25, reference_gbps: float | None = None
) -> Located:
    """Slow nodes and links among ``nodes`` (at least 3) by adaptive group testing (see above);
    ``reference_gbps``: the busbw a healthy group reaches, when it is known (published)."""
    if len(nodes) < 3:
        raise ValueError(f"group testing needs 3 nodes or more, got {len(nodes)}: test the pair itself")
    search = _Search(measure, tolerance, reference_gbps)
    order = list(nodes)
    pairs = [order[i : i + 2] for i in range(0, len(order) - len(order) % 2, 2)]
    if len(order) % 2:
        pairs[-1].append(order[-1])
    for group, slow in zip(pairs, search.round(pairs), strict=True):
        if slow:
            search.find(group)
    for _ in range(len(order)):  # each pass names at least one more thing, or ends
        named = len(search.out.slow_nodes) + len(search.out.slow_links)
        left_out = set(search.out.slow_nodes) | {b for _, b in search.out.slow_links}
        rest = [n for n in order if n not in left_out]
        if len(rest) < 3 or not search.round([rest])[0]:
            break
        search.find(rest)
        if len(search.out.slow_nodes) + len(search.out.slow_links) == named:
            search.out.unresolved.append(rest)
            break
    return search.out


@dataclass
class ModelledFabric:
    """Pair timings of a modelled cluster for `locate`: every link at ``healthy_gbps``, except those of
    ``slow_nodes`` and the ``slow_links`` at ``slow_factor`` of it; a group's all_to_all runs at its
    slowest pair's speed, with seeded noise of ``noise`` (a share) on each test."""

    nodes: list[str]
    slow_nodes: set[str] = field(default_factory=set)
    slow_links: set[frozenset[str]] = field(default_factory=set)
    healthy_gbps: float = 40.0
    slow_factor: float = 0.4
    noise: float = 0.03
    seed: int = 0
    tests_run: int = 0

    def measure(self, groups: list[list[str]]) -> list[float]:
        import random

        rng = random.Random(self.seed + self.tests_run)
        scores = []
        for g in groups:
            self.tests_run += 1
            members = set(g)
            slow = bool(members & self.slow_nodes) or any(link <= members for link in self.slow_links)
            slowest = self.healthy_gbps * (self.slow_factor if slow else 1.0)
            scores.append(slowest * (1 + rng.uniform(-self.noise, self.noise)))
        return scores


def links_of_pairs(
    scores: dict[tuple[str, str], float], tolerance: float = 0.25
) -> list[tuple[str, str, float, float]]:
    """The slow links among pairs of nodes that were each tested (every pair up to 8 nodes): a pair more
    than ``tolerance`` below the reference (`upper_median` of all pairs) whose two nodes are each fast
    in another pair. A node slow in every pair is a slow node (the verdict's ``fabric.pairs``), not a
    link. (a, b, busbw, reference) for each."""
    if len(scores) < 3:
        return []  # two nodes: one pair, nothing to compare it with
    reference = upper_median(list(scores.values()))
    floor = (1 - tolerance) * reference
    fast_nodes = {node for pair, score in scores.items() if score >= floor for node in pair}
    return [
        (a, b, score, reference)
        for (a, b), score in scores.items()
        if score < floor and a in fast_nodes and b in fast_nodes
    ]
