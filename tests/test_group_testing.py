"""Adaptive group testing (`test_case.preflight.group_testing`): on modelled pair timings of 16 to
1,024 nodes (three emulated nodes cannot show how the rounds grow), the slow node or link it names
and the rounds it takes; the links the verdict names from measured pairs; and the search run for
real by four preflight workers on this machine."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.preflight.group_testing import ModelledFabric, links_of_pairs, locate, upper_median
from tests.conftest import REPO_ROOT


def nodes(n: int) -> list[str]:
    return [f"node{i}" for i in range(1, n + 1)]


@pytest.mark.parametrize("n", [16, 64, 256, 1024])
def test_a_healthy_cluster_takes_two_rounds_and_names_nothing(n: int) -> None:
    fabric = ModelledFabric(nodes(n))
    found = locate(fabric.nodes, fabric.measure)
    assert (found.slow_nodes, found.slow_links, found.unresolved, found.rounds) == ([], [], [], 2)
    assert found.reference_gbps == pytest.approx(40.0, rel=0.05)


@pytest.mark.parametrize("n", [16, 64, 256, 1024])
def test_one_slow_node_is_named_in_three_rounds(n: int) -> None:
    bad = nodes(n)[n // 3]
    fabric = ModelledFabric(nodes(n), slow_nodes={bad})
    found = locate(fabric.nodes, fabric.measure)
    assert (found.slow_nodes, found.slow_links, found.rounds) == ([bad], [], 3)


@pytest.mark.parametrize("n", [16, 64, 256, 1024])
def test_one_slow_link_is_named_as_the_link_in_rounds_that_grow_with_log_n(n: int) -> None:
    names = nodes(n)
    fabric = ModelledFabric(names, slow_links={frozenset((names[1], names[-1]))})  # in no pair of round 1
    found = locate(names, fabric.measure)
    assert (found.slow_nodes, found.slow_links) == ([], [(names[1], names[-1])])
    assert found.rounds <= 2 + 3 * math.log2(n), found.rounds
    print(f"{n} nodes, one slow link: {found.rounds} rounds, {len(found.tests)} tests (all pairs: {n - 1} rounds)")


def test_the_rounds_grow_with_log_n_and_all_pairs_with_n() -> None:
    rounds = {}
    for n in (64, 256, 1024):
        names = nodes(n)
        fabric = ModelledFabric(names, slow_links={frozenset((names[1], names[-1]))})
        rounds[n] = locate(names, fabric.measure).rounds
    assert rounds[64] < rounds[256] < rounds[1024] <= rounds[64] + 2 * 2 * 2  # +2 log2 steps of 4x, 2 rounds each
    assert all(r < (n - 1) / 10 for n, r in rounds.items() if n >= 256)  # all pairs: n - 1 rounds of n/2 pairs


def test_two_slow_nodes_and_a_node_with_a_slow_link_elsewhere_are_each_named() -> None:
    names = nodes(64)
    fabric = ModelledFabric(names, slow_nodes={names[0], names[62]})
    assert sorted(locate(names, fabric.measure).slow_nodes) == [names[0], names[62]]
    both = ModelledFabric(names, slow_nodes={names[2]}, slow_links={frozenset((names[0], names[32]))})
    found = locate(names, both.measure)
    assert (found.slow_nodes, found.slow_links) == ([names[2]], [(names[0], names[32])])


def test_a_published_reference_is_used_instead_of_the_pairs() -> None:
    names = nodes(16)
    fabric = ModelledFabric(names)  # healthy at 40 GB/s, published 100: every group is slow
    found = locate(names, fabric.measure, reference_gbps=100.0)
    assert found.reference_gbps == 100.0 and found.tests[0].slow


def test_the_reference_is_the_better_half_of_the_pairs() -> None:
    assert upper_median([1.0, 0.4, 0.4]) == pytest.approx(0.7) and upper_median([0.3, 1.0]) == 1.0
    assert upper_median([1.0, 1.1, 0.9, 0.2, 0.3]) == 1.0


def test_a_pair_slow_between_two_otherwise_fast_nodes_is_a_link_and_a_node_slow_everywhere_is_not() -> None:
    # busbw GB/s of the three pairs of a healthy 3-node preflight here (a local cluster run)
    healthy = {("node1", "node2"): 1.1572, ("node1", "node3"): 1.3069, ("node2", "node3"): 1.1196}
    assert links_of_pairs(healthy) == []
    # node3 given a fifth of a core: slow with both others, a slow node and no link
    throttled = {("node1", "node2"): 0.9865, ("node1", "node3"): 0.2881, ("node2", "node3"): 0.286}
    assert links_of_pairs(throttled) == []
    slowed = {("node1", "node2"): 1.2, ("node1", "node3"): 1.25, ("node2", "node3"): 0.12}
    assert links_of_pairs(slowed) == [("node2", "node3", 0.12, pytest.approx(1.225))]
    assert links_of_pairs({("node1", "node2"): 0.1}) == []  # two nodes: nothing to compare with


def test_fewer_than_three_nodes_are_refused() -> None:
    with pytest.raises(ValueError, match="group testing needs 3 nodes or more, got 2"):
        locate(nodes(2), ModelledFabric(nodes(2)).measure)


def test_four_real_workers_run_the_search_in_step_and_report_it(tmp_path: Path) -> None:
    """Four worker processes, each its own node (one device per node), with group testing from 3
    nodes on (``--pairs-up-to 2``): the rounds run over gloo in step on every rank, and rank 0 writes
    every test. This test is about the search running for real, not about what it names: four
    processes on two cores share them unevenly (the naming is tested on the model above)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    world, workers = 4, []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "OMP_NUM_THREADS": "1",
            "PREFLIGHT_DEVICE": "cpu",
        }
        cmd = [sys.executable, "-m", "test_case.preflight", "worker", "--parts", str(tmp_path)]
        cmd += ["--max-bytes", "65536", "--pairs-up-to", "2"]
        workers.append(subprocess.Popen(cmd, cwd=REPO_ROOT, env=env))
    assert [w.wait(timeout=300) for w in workers] == [0] * world
    doc = json.loads((tmp_path / "rank-0.json").read_text())
    searched = doc["group_testing"]
    host = socket.gethostname()
    first = [t["group"] for t in searched["tests"] if t["round"] == 1]
    assert first == [[f"{host}#0", f"{host}#1"], [f"{host}#2", f"{host}#3"]]  # the same hostname: told apart
    assert searched["reference_gbps"] > 0 and all(t["busbw_gbps"] > 0 for t in searched["tests"])
    assert max(t["round"] for t in searched["tests"]) >= 2  # the pairs, then at least the rest together
    # what it named follows from its own tests (four processes on two cores can make any of them slow)
    for node in searched["slow_nodes"]:
        assert any(t["slow"] and node in t["group"] and len(t["group"]) == 2 for t in searched["tests"]), searched
    assert not [b for b in doc["bandwidth"] if b["scope"].startswith("pair ")]  # no pairs one at a time
    assert all(json.loads((tmp_path / f"rank-{r}.json").read_text())["group_testing"] is None for r in (1, 2, 3))
