"""Draining a node for a health finding, the way an admin would: ``scontrol update nodename=<node>
state=drain reason=<the finding>``, only when the node is not already drained or down (an admin's
reason is never overwritten), and never resumed from here: ``scontrol update nodename=<node>
state=resume`` is for a person, once the part is repaired and the check passes.

Used by ``python -m test_case.health --drain`` (Slurm's HealthCheckProgram through
``slurm-scripts/health-check.sh``, or by hand). Standard library only.
"""

from __future__ import annotations

import re

from test_case.health.findings import SEVERITY, Finding, FindingClass, run_tool

REASON_PREFIX = "mpt-health"
REASON_CHARS = 200  # long enough for the finding, short enough for sinfo -R


def reason(klass: FindingClass, found: list[Finding]) -> str:
    """``mpt-health <class>: <reader> <part>: <summary>`` for the most severe finding."""
    top = max(found, key=lambda f: SEVERITY[f.klass])
    text = f"{REASON_PREFIX} {klass}: {top.check} {top.subject}: {top.summary}"
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def node_state(node: str) -> tuple[str, str] | None:
    """(State, Reason) from ``scontrol show node <node> -o``; None when scontrol cannot tell."""
    out = run_tool("scontrol", "show", "node", node, "-o", timeout=10)
    if out is None or out.returncode != 0:
        return None
    state = re.search(r"\bState=(\S+)", out.stdout)
    why = re.search(r"\bReason=(.*?)(?: \w+=|$)", out.stdout)
    return (state.group(1) if state else "", why.group(1) if why else "")


def drain(node: str, why: str) -> str:
    """Drain ``node`` with reason ``why`` unless it is out of service already; the line to print."""
    state = node_state(node)
    if state is None:
        return f"not drained: scontrol show node {node} gave nothing (no scontrol here, or not a Slurm node)"
    if any(word in state[0] for word in ("DRAIN", "DOWN", "FAIL")):
        return f"not drained again: already {state[0]} (Reason={state[1] or 'none'}), left as it is"
    done = run_tool("scontrol", "update", f"nodename={node}", "state=drain", f"reason={why}", timeout=10)
    if done is None or done.returncode != 0:
        said = (done.stderr or done.stdout).strip() if done else "scontrol not on PATH"
        return f"drain failed: {said}"
    return f"drained: scontrol update nodename={node} state=drain reason='{why}' (resume by hand once it passes)"
