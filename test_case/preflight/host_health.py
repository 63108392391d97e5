"""The host health checks of one node in the preflight: each `test_case.health` reader run, its
findings turned into the preflight's checks, with their class and evidence line.

For every reader (`test_case.health.scan`: the kernel log's XID/SXID lines, PCIe links, InfiniBand ports and their
error counters, NVLink; then GPU firmware and identity; DCGM diagnostics at ``--dcgm-level``) the node
gets one summary check ``health.<reader>``: ``skip`` with the reason when its tool is not on PATH or
cannot be read, else ``pass`` with the parts read and the worst class found. Every finding that is
not ``healthy`` becomes a check of its own, ``health.<reader>[<part>]``: ``fail`` for the classes
that take the node out of service until someone acts (reset, reboot, drain), ``pass`` for
``monitor`` (recorded, shown, no action), each with the finding's class, its summary, the tool's
line it rests on and what to do (`test_case.health.findings.ACTIONS`). The GPUs' driver, VBIOS and
product names join the node's facts, which the verdict compares across nodes. The ``shm`` reader is
left out: the preflight's own ``shm_free`` check judges /dev/shm, with a threshold its expectations
can change.
"""

from __future__ import annotations

from test_case.health.findings import SEVERITY, Finding, action, worst
from test_case.health.scan import scan
from test_case.preflight.records import Check, Value

Checks = dict[str, Check]
FAILING = ("reset", "reboot", "drain")
SHOWN = 3  # finding summaries quoted in a summary check's detail


def finding_checks(reader: str, found: list[Finding] | None, how: str, node: str) -> Checks:
    """The summary check of one reader and a check per finding that is not healthy."""
    if found is None:
        return {f"health.{reader}": Check("skip", None, "healthy", "", how)}
    klass = worst(found)
    notable = sorted((f for f in found if f.klass != "healthy"), key=lambda f: -SEVERITY[f.klass])
    said = "; ".join(f"{f.subject}: {f.summary}" for f in notable[:SHOWN])
    more = f" (and {len(notable) - SHOWN} more)" if len(notable) > SHOWN else ""
    read = f"{len(found)} part(s) read" if found else "nothing to report"
    detail = f"{how}: {read}" + (f"; {said}{more}" if said else ", all healthy" if found else "")
    checks = {f"health.{reader}": Check("pass", klass, "healthy", "", detail, finding_class=klass)}
    for f in notable:
        checks[f"health.{reader}[{f.subject}]"] = Check(
            "fail" if f.klass in FAILING else "pass",
            f.klass,
            "healthy",
            "",
            f"{f.summary}" + (f" (rule: {f.source})" if f.source else ""),
            action(f.klass, node),
            finding_class=f.klass,
            evidence=f.evidence,
        )
    return checks


def host_health_checks(node: str, dcgm_level: int | None = None) -> tuple[Checks, dict[str, Value]]:
    """Every reader's checks for this node (`test_case.health.scan`), and the GPU identity facts the
    nodes must agree on."""
    found = scan(dcgm_level)
    checks: Checks = {}
    for reader, (findings, how) in found.readers.items():
        if reader != "shm":  # the preflight's shm_free (node_checks.shm_checks)
            checks |= finding_checks(reader, findings, how, node)
    return checks, dict(found.facts)
