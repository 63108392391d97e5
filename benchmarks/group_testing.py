"""Rounds, tests and minutes of the preflight's adaptive group testing (test_case/preflight/group_testing.py)
against testing every pair, on modelled pair timings of 64, 256 and 1,024 nodes (the figures of
docs/preflight.md, "Group testing"). ``python -m benchmarks.group_testing [--seconds-per-round S]``.

A round's minutes are an estimate, not a measurement: ``--seconds-per-round`` (default 3: creating the
round's NCCL communicators and 7 all_to_all of 1 GiB per GPU at about 40 GB/s) times the rounds, plus
``--seconds-whole`` (default 30) for each test of all nodes at once (a communicator over every GPU).
All pairs take N - 1 rounds of N/2 concurrent pairs (a round-robin tournament).
"""

from __future__ import annotations

import argparse

from test_case.preflight.group_testing import ModelledFabric, locate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.group_testing", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-round", type=float, default=3.0)
    parser.add_argument("--seconds-whole", type=float, default=30.0)
    args = parser.parse_args(argv)
    print(f"{'nodes':>6} {'case':<22} {'rounds':>6} {'tests':>6} {'minutes':>8}   all pairs: rounds, minutes")
    for n in (64, 256, 1024):
        names = [f"node{i}" for i in range(1, n + 1)]
        cases = {
            "healthy": ModelledFabric(names),
            "one slow node": ModelledFabric(names, slow_nodes={names[n // 3]}),
            "one slow link": ModelledFabric(names, slow_links={frozenset((names[1], names[-1]))}),
            "slow node + slow link": ModelledFabric(
                names, slow_nodes={names[2]}, slow_links={frozenset((names[0], names[n // 2]))}
            ),
        }
        for case, fabric in cases.items():
            found = locate(names, fabric.measure)
            whole = sum(1 for t in found.tests if len(t.group) > n // 2)
            minutes = (found.rounds * args.seconds_per_round + whole * args.seconds_whole) / 60
            pairs = (n - 1) * args.seconds_per_round / 60
            print(f"{n:>6} {case:<22} {found.rounds:>6} {len(found.tests):>6} {minutes:>8.1f}   {n - 1}, {pairs:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
