"""From the node tasks' parts to one `PreflightReport`: the checks that compare nodes with each
other (versions, GPU model, matmul, the numerical agreement of every device, write speed, clock, the
pairs of the fabric test) and with the
published figures of `test_case.preflight.expectations`, and the list of failures to act on."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from test_case.preflight.expectations import Expectations
from test_case.preflight.group_testing import links_of_pairs
from test_case.preflight.node_checks import DRAIN
from test_case.preflight.numerics import agreement_checks
from test_case.preflight.records import (
    Bandwidth,
    Check,
    Failure,
    NodePart,
    NodeResult,
    PreflightReport,
    SlowLink,
    Value,
    bandwidth_record,
    read_part,
)

AGREED_FACTS = ("gpu", "driver", "cuda", "nccl", "torch", "composer", "llm-foundry")


def _below(value: float, reference: float, tolerance: float) -> bool:
    return value < (1 - tolerance) * reference


def _majority(values: dict[str, Value]) -> Value:
    counts: dict[Value, int] = {}
    for v in values.values():
        counts[v] = counts.get(v, 0) + 1
    return max(counts, key=lambda v: counts[v])


def read_parts(parts: Path) -> tuple[dict[str, NodePart], dict[str, Any] | None]:
    """Node parts by hostname, and rank 0's worker file (all-node and pair bandwidth, clocks)."""
    nodes = {p.hostname: p for p in map(read_part, sorted(parts.glob("node-*.json")))}
    rank0 = parts / "rank-0.json"
    return nodes, (json.loads(rank0.read_text()) if rank0.is_file() else None)


def peer_checks(
    checks: dict[str, dict[str, Check]],
    name: str,
    values: dict[str, float],
    unit: str,
    what: str,
    exp: Expectations,
    action: str,
    tolerance: float | None = None,
) -> None:
    """``values`` per node against their median: a node more than ``tolerance`` (default the
    expectations' peer_tolerance) below fails."""
    tolerance = exp.peer_tolerance if tolerance is None else tolerance
    if len(values) < 2:
        for host, v in values.items():
            checks[host][name] = Check("pass", round(v, 4), None, unit, f"{what}: no peers to compare with")
        return
    median = statistics.median(values.values())
    floor = round((1 - tolerance) * median, 4)
    for host, v in values.items():
        bad = _below(v, median, tolerance)
        checks[host][name] = Check(
            "fail" if bad else "pass",
            round(v, 4),
            f">= {floor}",
            unit,
            f"{what}; median of {len(values)} nodes {median:.4g}, {tolerance:.0%} below it fails",
            action.format(node=host) if bad else "",
        )


def build_report(
    parts: Path, hosts: list[str], job_id: str, exp: Expectations, wall_s: float | None = None
) -> PreflightReport:
    """Every check of every node, the cross-node ones added, and the failures."""
    found, rank0 = read_parts(parts)
    checks: dict[str, dict[str, Check]] = {h: dict(found[h].checks) if h in found else {} for h in hosts}
    for host in found:
        checks.setdefault(host, dict(found[host].checks))
    present = [h for h in checks if h in found]
    for host in checks:
        if host not in found:
            checks[host]["node_task"] = Check(
                "fail",
                "no result",
                "a result",
                "",
                "its task failed or hung: see its lines in the job log",
                DRAIN.format(node=host),
            )
    # the same software and GPU model everywhere
    for key in AGREED_FACTS:
        values = {h: found[h].facts.get(key) for h in present}
        agreed = _majority(values) if values else None
        for host, value in values.items():
            ok = value == agreed
            checks[host][f"same.{key}"] = Check(
                "pass" if ok else "fail",
                value,
                agreed,
                "",
                f"{key} of this node against most nodes",
                "" if ok else f"run every node from the same image (IMAGE=...) or install {key} {agreed} here",
            )
    # matmul: devices within a node, nodes against each other, the published figure
    gpu = _majority({h: found[h].facts.get("gpu") for h in present}) if present else None
    for host in present:
        devices = found[host].matmul_tflops
        if len(devices) > 1:
            med = statistics.median(devices)
            for i, v in enumerate(devices):
                if _below(v, med, exp.peer_tolerance):
                    checks[host][f"matmul.device{i}"] = Check(
                        "fail",
                        round(v, 3),
                        f">= {(1 - exp.peer_tolerance) * med:.3f}",
                        "TFLOP/s",
                        f"device {i} against the node's median {med:.3f}",
                        f"device {i} is slow (throttling, a bad GPU): reset or replace it, or "
                        + DRAIN.format(node=host),
                    )
    node_matmul = {h: statistics.median(found[h].matmul_tflops) for h in present if found[h].matmul_tflops}
    dtype = "bf16" if gpu and gpu != "cpu" else "fp32"
    peer_checks(
        checks,
        "matmul",
        node_matmul,
        "TFLOP/s",
        f"median {dtype} matmul of the node's devices",
        exp,
        "this node computes slower than its peers (throttled, busy or faulty): " + DRAIN,
    )
    published = exp.matmul_tflops.get(str(gpu)) if gpu else None
    if published:
        for host, v in node_matmul.items():
            if _below(v, published.value, exp.tolerance):
                checks[host]["matmul"] = Check(
                    "fail",
                    round(v, 1),
                    f">= {(1 - exp.tolerance) * published.value:.1f}",
                    "TFLOP/s",
                    f"published: {published.value} ({published.source}), {exp.tolerance:.0%} tolerance",
                    "check clocks and power (nvidia-smi -q -d PERFORMANCE), then " + DRAIN.format(node=host),
                )
    # the same numbers from the same seeded workloads on every device of one kind
    every_device = [d for h in present for d in found[h].numerics]
    for host, check in agreement_checks(every_device, DRAIN).items():
        if host in checks:
            checks[host]["numerics"] = check
    # write speed to SAVE_ROOT against the other nodes
    writes = {}
    for host in present:
        write = checks[host].get("save_root_write")
        if write is not None and write.status == "pass" and isinstance(write.measured, (int, float)):
            writes[host] = float(write.measured)
    if writes:
        peer_checks(
            checks,
            "save_root_write",
            writes,
            "MB/s",
            "write speed to SAVE_ROOT",
            exp,
            "this node writes to SAVE_ROOT slower than its peers: check its mount (mount | grep SAVE_ROOT), or "
            + DRAIN,
            tolerance=exp.write_peer_tolerance,
        )
    bandwidth: list[Bandwidth] = []
    if rank0 is not None:
        bandwidth = [bandwidth_record(b) for b in rank0["bandwidth"]]
        for host, offset in rank0["clock_offsets_s"].items():
            if host in checks:
                ok = abs(offset) <= exp.clock_max_offset_s
                checks[host]["clock_offset"] = Check(
                    "pass" if ok else "fail",
                    offset,
                    f"|offset| <= {exp.clock_max_offset_s}",
                    "s",
                    "wall clock at a barrier against node 0's",
                    "" if ok else "sync the clock (chronyc tracking)",
                )
    for host in present:
        bandwidth += found[host].bandwidth
    slow_links = _fabric_checks(checks, bandwidth, gpu, found, exp, len(hosts))
    if rank0 is not None and rank0.get("group_testing"):
        slow_links += _group_testing_checks(checks, rank0["group_testing"], exp)
    nodes = {
        h: NodeResult(
            "fail" if any(c.status == "fail" for c in cs.values()) else "pass",
            found[h].node_id if h in found else None,
            cs,
            dict(found[h].facts) if h in found else {},
            [round(v, 4) for v in found[h].matmul_tflops] if h in found else [],
        )
        for h, cs in checks.items()
    }
    failures = [
        Failure(h, name, c.measured, c.expected, c.action, c.finding_class, c.evidence)
        for h, cs in checks.items()
        for name, c in cs.items()
        if c.status == "fail"
    ]
    return PreflightReport(
        job_id, "fail" if failures or slow_links else "pass", nodes, failures, bandwidth, wall_s, slow_links=slow_links
    )


def _fabric_checks(
    checks: dict[str, dict[str, Check]],
    bandwidth: list[Bandwidth],
    gpu: Value,
    found: dict[str, NodePart],
    exp: Expectations,
    n_nodes: int,
) -> list[SlowLink]:
    """Pairs name a slow node or a slow link; the all-node and within-node curves meet the published
    figures. The slow links found from the pairs."""
    pairs = [b for b in bandwidth if b.scope.startswith("pair ")]
    pair_scores = {(b.scope.split()[1], b.scope.split()[2]): b.peak_busbw_gbps for b in pairs}
    links = [
        SlowLink(a, b, round(v, 4), round(r, 4), "all pairs")
        for a, b, v, r in links_of_pairs(pair_scores, exp.link_tolerance)
    ]
    on_links = {f"pair {link.a} {link.b}" for link in links}
    if pairs:
        per_node: dict[str, list[float]] = {}
        for b in pairs:
            if b.scope in on_links:  # a slow link is the fabric's, not its nodes': left out of their medians
                continue
            for host in b.scope.split()[1:]:
                per_node.setdefault(host, []).append(b.peak_busbw_gbps)
        scores = {h: statistics.median(v) for h, v in per_node.items() if h in checks}
        peer_checks(
            checks,
            "fabric.pairs",
            scores,
            "GB/s",
            "median all_reduce busbw of the pairs of nodes this one is in (slow links left out)",
            exp,
            "collectives with this node are slow (its network, or it is busy): " + DRAIN,
        )
    instance = next((str(p.facts.get("instance")) for p in found.values() if p.facts.get("instance")), None)
    scope = "2 nodes" if n_nodes >= 2 else None
    for b in bandwidth:
        if b.collective != "all_reduce" or not b.points:
            continue
        key = scope if b.scope == "all nodes" else "within node" if b.scope.startswith("within ") else None
        published = exp.busbw_for(str(gpu), instance, key) if key else None
        if not published:
            continue
        b.expected_busbw_gbps, b.expected_source = published.value, published.source
        if _below(b.peak_busbw_gbps, published.value, exp.tolerance):
            hosts = list(checks) if b.scope == "all nodes" else [b.scope.split()[1]]
            for host in hosts:
                name = "fabric.all_nodes" if b.scope == "all nodes" else "fabric.within_node"
                checks[host][name] = Check(
                    "fail",
                    round(b.peak_busbw_gbps, 1),
                    f">= {(1 - exp.tolerance) * published.value:.1f}",
                    "GB/s",
                    f"peak all_reduce busbw, {b.scope}; published {published.value} ({published.source})",
                    "check NCCL's transport (NCCL_DEBUG=INFO: NET/OFI and the EFA provider), then the pairs above",
                )
    return links


def _group_testing_checks(
    checks: dict[str, dict[str, Check]], doc: dict[str, Any], exp: Expectations
) -> list[SlowLink]:
    """Beyond `fabric.ALL_PAIRS_UP_TO` nodes: what rank 0's adaptive group testing named
    (`test_case.preflight.group_testing`): ``fabric.groups`` per node, and the slow links."""
    reference, rounds = doc["reference_gbps"], max((t["round"] for t in doc["tests"]), default=0)
    how = f"{len(doc['tests'])} all_to_all group tests in {rounds} rounds; reference {reference:.4g} GB/s"
    unresolved = {n for group in doc["unresolved"] for n in group}
    for host in checks:
        slow, unsure = host in doc["slow_nodes"], host in unresolved
        checks[host]["fabric.groups"] = Check(
            "fail" if slow or unsure else "pass",
            "slow" if slow else "in a slow group" if unsure else "fast",
            "fast",
            "",
            how + ("; in a slow group that no good node was left to tell apart" if unsure and not slow else ""),
            ("collectives with this node are slow (its network, or it is busy): " + DRAIN.format(node=host))
            if slow or unsure
            else "",
        )
    return [SlowLink(a, b, None, round(reference, 4), "group testing") for a, b in doc["slow_links"]]
