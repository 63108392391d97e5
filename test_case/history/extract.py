"""From report files to the store's rows (`records.Batch`): the one place that reads report.json and
preflight_<job-id>.json documents for the store, whatever version of the suite wrote them.

A report of this version and an old report.json file take the same path (`batch_of_report`), so a
figure is stored the same way however it arrives. What an older file lacks is left empty (the run's
cluster, its start time, a node's GPU serials); what it has that makes no sense (a truncated file, a
newer schema, a field of the wrong type) is a `ReportFileError` naming the file and what to do.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from test_case.history import configuration
from test_case.history.records import (
    VERSION_KEYS,
    Batch,
    NodeFigure,
    PreflightResult,
    RunResult,
    VerdictResult,
)
from test_case.report.records import SCHEMA_VERSION as REPORT_SCHEMA

DEFAULT_CLUSTER = "default"  # a report without a cluster name in its run headers or preflights, and no --cluster
ALL_NODES = "all nodes"  # the node of a figure that belongs to the whole job (the all-node collective)


class ReportFileError(ValueError):
    """A report file the store cannot take, with what to do about it."""


def read_document(path: Path) -> dict[str, Any]:
    """A report.json or preflight JSON file's content, or a `ReportFileError` saying why not."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ReportFileError(f"{path}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ReportFileError(
            f"{path}: not a text file (byte {err.start} is not UTF-8): a compressed or cut-off file? Name the "
            "report.json or preflight_<job-id>.json itself (nothing was stored)"
        ) from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportFileError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg}): a truncated or partly "
            "written file? Write it again with `python report.py` on the logs (nothing was stored)"
        ) from err
    if not isinstance(doc, dict):
        raise ReportFileError(f"{path}: not a report (a JSON {type(doc).__name__}, not an object): nothing was stored")
    return doc


def batch_of_file(path: Path, cluster: str | None = None) -> Batch:
    """The rows of one report.json or preflight_<job-id>.json file."""
    doc = read_document(path)
    try:
        if "runs" in doc or "schema_version" in doc:
            return batch_of_report(doc, cluster)
        if "nodes" in doc and "job_id" in doc:
            return batch_of_preflight(doc, cluster)
    except (LookupError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, ReportFileError):
            raise ReportFileError(f"{path}: {err}") from err
        raise ReportFileError(
            f"{path}: a field is missing or of the wrong type ({type(err).__name__}: {err}): a truncated or edited "
            "file? Write it again with `python report.py` on the logs (nothing was stored)"
        ) from err
    raise ReportFileError(
        f"{path}: neither a report.json (no `runs`) nor a preflight result (no `nodes`): nothing was stored"
    )


def batch_of_report(doc: Mapping[str, Any], cluster: str | None = None) -> Batch:
    """The rows of a report.json document: every run, preflight and verdict in it."""
    version = doc.get("schema_version", 1)
    if not isinstance(version, int) or version > REPORT_SCHEMA:
        raise ReportFileError(
            f"report.json schema {version} is newer than this suite's ({REPORT_SCHEMA}): update the suite "
            "(git pull) before storing it (nothing was stored)"
        )
    preflights = [p for p in doc.get("preflight") or [] if isinstance(p, dict)]
    # each record's own cluster where it names one; else ``cluster`` (--cluster), else the one the report's
    # other records name, else `DEFAULT_CLUSTER`
    fallback = cluster or _named_cluster(doc.get("runs") or [], preflights) or DEFAULT_CLUSTER
    batch = Batch()
    for run in doc.get("runs") or []:
        batch += _run_rows(run, run.get("cluster") or fallback)
    for preflight in preflights:
        batch += batch_of_preflight(preflight, fallback)
    verdict = doc.get("verdict")
    if isinstance(verdict, dict) and verdict.get("sweep_id") is not None:
        starts = [r.started_at for r in batch.runs if r.started_at]
        batch.verdicts.append(
            VerdictResult(
                cluster=_named_cluster(doc.get("runs") or [], preflights) or fallback,  # its runs' cluster
                sweep_id=str(verdict["sweep_id"]),
                status=str(verdict["status"]),
                decided_at=max(starts, default=None),
                reasons=[str(r) for r in verdict.get("reasons") or []],
                record=dict(verdict),
            )
        )
    return batch


def _named_cluster(runs: list[Any], preflights: list[dict[str, Any]]) -> str | None:
    names = [r.get("cluster") for r in runs if isinstance(r, dict)] + [p.get("cluster") for p in preflights]
    return next((str(n) for n in names if n), None)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _run_rows(run: Mapping[str, Any], cluster: str) -> Batch:
    name = str(run["name"])
    job_id = str(run.get("job_id") or name)
    start = 1 + (_int(run.get("restarts")) or 0)
    stragglers = sorted({str(s["node"]) for s in run.get("stragglers") or []})
    baseline = run.get("baseline") or {}
    status = run.get("status")
    if not status:  # report.json before run status: completed is the last block's [batch=T/T]
        done = run.get("completed") or (
            run.get("last_batch") is not None and run.get("last_batch") == run.get("max_duration")
        )
        status = "completed" if done else "unfinished"
    status = str(status)
    passed = status == "completed" and not stragglers and baseline.get("status") != "below"
    versions = {k: str(run[k]) for k in VERSION_KEYS if run.get(k) not in (None, "")}
    goodput = run.get("goodput")
    started_at = run.get("started_at") or run.get("log_ends_at")
    row = RunResult(
        cluster=cluster,
        job_id=job_id,
        start=start,
        started_at=started_at,
        run_name=name,
        model=run.get("model"),
        status=status,
        passed=passed,
        device_type=run.get("device_type") or run.get("gpu"),
        nodes=_int(run.get("nodes")),
        world_size=_int(run.get("world_size")),
        nodelist=run.get("nodelist"),
        precision=run.get("precision"),
        max_seq_len=_int(run.get("max_seq_len")),
        global_batch_size=_int(run.get("global_batch_size")),
        configuration=configuration.describe(run),
        tokens_per_sec_per_device=_num(run.get("tokens_per_sec_per_device")),
        mfu=_num(run.get("mfu")),
        goodput=_num(goodput.get("goodput")) if isinstance(goodput, dict) else None,
        stragglers=",".join(stragglers),
        versions=versions,
        record=dict(run),
    )
    figures = [
        NodeFigure(
            cluster=cluster,
            source="run",
            job_id=job_id,
            start=start,
            measured_at=started_at,
            node=str(node["node"]),
            device="",
            device_id="",
            metric="compute_s_per_batch",
            value=float(node["median_compute_s"]),
            unit="s",
            passed=passed,
            versions=versions,
        )
        for node in run.get("node_compute") or []
        if _num(node.get("median_compute_s")) is not None
    ]
    return Batch(runs=[row], figures=figures)


def batch_of_preflight(doc: Mapping[str, Any], cluster: str | None = None) -> Batch:
    """The rows of one preflight result: its verdict, and every node's figures (docs/history.md, "Figures")."""
    cluster = doc.get("cluster") or cluster or DEFAULT_CLUSTER  # its own where it names one
    job_id = str(doc["job_id"])
    at = doc.get("measured_at")
    nodes: dict[str, Any] = doc["nodes"]
    figures: list[NodeFigure] = []

    def figure(node: str, metric: str, value: float, unit: str, passed: bool, device: str = "", did: str = "") -> None:
        facts = nodes.get(node, {}).get("facts") or {}
        versions = {k: str(facts[k]) for k in ("driver", "cuda", "nccl", "torch", "composer") if facts.get(k)}
        if facts.get("llm-foundry"):
            versions["llm_foundry"] = str(facts["llm-foundry"])
        figures.append(
            NodeFigure(cluster, "preflight", job_id, 1, at, node, device, did, metric, value, unit, passed, versions)
        )

    for host, node in nodes.items():
        checks = node.get("checks") or {}
        for name, check in checks.items():
            value = _num(check.get("measured"))
            if value is not None:
                metric = "matmul_tflops" if name == "matmul" else f"check.{name}"
                figure(host, metric, value, str(check.get("unit") or ""), check.get("status") != "fail")
        devices = node.get("matmul_tflops") or []
        serials = [s for s in str((node.get("facts") or {}).get("gpu_serials") or "").split(",") if s]
        if len(serials) != len(devices):  # a device without its result: which serial is whose is not known
            serials = []
        device_ok = checks.get("matmul", {}).get("status") != "fail"
        for i, tflops in enumerate(devices):
            failed = (checks.get(f"matmul.device{i}") or {}).get("status") == "fail"
            # a GPU is followed by its serial or UUID; one known only by its bus id stays with its node
            did = serials[i] if serials and not serials[i].startswith("bus ") else f"{host}/device{i}"
            figure(host, "matmul_tflops", float(tflops), "TFLOP/s", device_ok and not failed, f"device{i}", did)
    failed_nodes = {str(f["node"]) for f in doc.get("failures") or []}
    pair_busbw: dict[tuple[str, str], list[tuple[str, float]]] = {}  # (node, collective) -> (peer, busbw)
    for curve in doc.get("bandwidth") or []:
        peak = max((float(p["busbw_gbps"]) for p in curve.get("points") or []), default=None)
        if peak is None:
            continue
        scope = str(curve["scope"]).split()
        collective = str(curve["collective"])
        if scope[0] == "within" and len(scope) == 2:
            host = scope[1]
            figure(host, f"busbw_gbps.{collective}.within_node", peak, "GB/s", host not in failed_nodes)
        elif scope[0] == "pair" and len(scope) == 3:
            a, b = scope[1:]
            pair_busbw.setdefault((a, collective), []).append((b, peak))
            pair_busbw.setdefault((b, collective), []).append((a, peak))
        elif " ".join(scope) == "all nodes":
            figure(ALL_NODES, f"busbw_gbps.{collective}.all_nodes", peak, "GB/s", doc.get("status") == "pass")
    for (host, collective), pairs in sorted(pair_busbw.items()):
        # the node's median over its pairs with peers that passed: a pair with a failed node says how slow
        # that node is, not this one (with no such peer, all its pairs)
        peaks = [v for peer, v in pairs if peer not in failed_nodes] or [v for _, v in pairs]
        figure(host, f"busbw_gbps.{collective}.pairs", statistics.median(peaks), "GB/s", host not in failed_nodes)
    result = PreflightResult(
        cluster=cluster,
        job_id=job_id,
        measured_at=at,
        status=str(doc["status"]),
        nodes=len(nodes),
        failures=len(doc.get("failures") or []),
        record=dict(doc),
    )
    return Batch(preflights=[result], figures=figures)
