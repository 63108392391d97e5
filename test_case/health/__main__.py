"""``python -m test_case.health``: this node's health from its own tools, one line per finding.

Runs every reader once (`test_case.health.scan`): the kernel log's XID/SXID lines, PCIe links,
InfiniBand ports and counters, NVLink, /dev/shm, a cgroup CPU cap, GPU identity and row remapping;
DCGM's diagnostics with
``--dcgm-level``. Prints each reader's result and every finding that is not healthy with its class,
the tool's line and what to do; ``--json`` prints the same as one JSON document. Exit code 0 when
the worst finding is ``healthy`` or ``monitor``, 1 when the node needs a GPU reset, a reboot or a
drain, 2 for a usage mistake.

``--drain`` (opt-in) takes such a node out of service in Slurm (`test_case.health.drain`), but only
when a second scan ``--confirm-after`` seconds later finds it failing too (one bad reading drains
nothing), and only when it is not drained or down already. Nothing here resumes a node.

Standard library only and no venv needed (``python3 -m test_case.health`` from the repository folder,
or with it on ``PYTHONPATH``), so that it can run on the host, outside any container: by hand, in a prolog, or
as the base of Slurm's HealthCheckProgram.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import asdict

from test_case.health.drain import drain, reason
from test_case.health.findings import SEVERITY, action, worst
from test_case.health.scan import scan

FAILING = ("reset", "reboot", "drain")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m test_case.health", description=__doc__.splitlines()[0])
    parser.add_argument("--dcgm-level", type=int, choices=(1, 2, 3, 4), help="also run dcgmi diag -r LEVEL")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument(
        "--drain",
        action="store_true",
        help="drain this node in Slurm (scontrol) when it needs a reset, a reboot or a drain, "
        "confirmed by a second scan; never resumes it",
    )
    parser.add_argument(
        "--confirm-after",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between the scan and the one that confirms it before --drain drains (default 5)",
    )
    args = parser.parse_args(argv)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    result = scan(args.dcgm_level)
    found = [f for findings, _ in result.readers.values() for f in findings or []]
    klass = worst(found)
    if args.json:
        doc = {
            "node": node,
            "class": klass,
            "action": action(klass, node),
            "readers": {
                reader: {"read": findings is not None, "how": how, "findings": [asdict(f) for f in findings or []]}
                for reader, (findings, how) in result.readers.items()
            },
            "facts": result.facts,
        }
        print(json.dumps(doc, indent=2))
    else:
        for reader, (findings, how) in result.readers.items():
            said = f"{worst(findings)} ({how}, {len(findings)} part(s))" if findings is not None else f"skipped: {how}"
            print(f"health: {node}: {reader}: {said}")
        for f in sorted(found, key=lambda f: -SEVERITY[f.klass]):
            if f.klass != "healthy":
                print(f"health: {node}: {f.klass}: {f.check} {f.subject}: {f.summary}")
                if f.evidence:
                    print(f"health: {node}:   evidence: {f.evidence}")
        print(f"health: {node}: {klass}" + (f": {action(klass, node)}" if action(klass, node) else ""))
    if args.drain and klass in FAILING:
        time.sleep(args.confirm_after)
        again = scan(args.dcgm_level)
        confirmed = [f for findings, _ in again.readers.values() for f in findings or []]
        if worst(confirmed) in FAILING:
            print(f"health: {node}: confirmed by a second scan; " + drain(node, reason(worst(confirmed), confirmed)))
        else:
            print(
                f"health: {node}: not drained: a second scan {args.confirm_after:g} s later found it {worst(confirmed)}"
            )
    sys.stdout.flush()
    return 1 if klass in FAILING else 0


if __name__ == "__main__":
    raise SystemExit(main())
