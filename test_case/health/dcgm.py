"""DCGM's active diagnostics (``dcgmi diag -r LEVEL``), as health findings.

Owns: running ``dcgmi diag`` from PATH with a timeout per level (`run_diag`), reading its table
(`parse_diag`: one `DiagResult` per test and result, with the warning text DCGM wraps under it) and
classing each result (`findings`).

The table forms read are the two recorded in ``../shared/gpu-outputs`` (sources in its INDEX.md):
DCGM 3.3.3 (``dcgmi_diag_r2_pass_a100-p4de.txt``, awslabs/awsome-distributed-training,
1.architectures/efa-cheatsheet.md: Metadata, Deployment, Integration, Hardware, Stress sections,
``Pass - All``) and DCGM 2.4.6 (``dcgmi_diag_r2_fail_pcie-nvlink-down_a100_fragment.txt``,
NVIDIA/DCGM#49: ``Fail - All`` with a ``Warning`` row wrapped over several lines). A per-GPU result
(``Fail - GPU: 2``, ``Pass - GPUs: 0, 1``) is read too, one result per line.

Classes, from NVIDIA's DCGM Diagnostics guide
(https://docs.nvidia.com/datacenter/dcgm/latest/user-guide/dcgm-diagnostics.html: the diagnostics
"assess cluster readiness before a workload is deployed"; their hardware checks cover PCIe, NVLink,
framebuffer/memory and compute): a failed test -> drain (the node is not ready; a failed PCIe, NVLink
or memory test is a part to repair), a warning -> monitor, pass and skip -> healthy.

Levels and how long they run, from NVIDIA's ``dcgmi diag`` reference
(https://docs.nvidia.com/datacenter/dcgm/latest/reference/command-line-reference/dcgmi/dcgmi-diag.html):
1 quick, seconds; 2 medium, about two minutes; 3 long, about 15 minutes; 4 extended, longer.
`DIAG_TIMEOUT_S` allows several times that (eight GPUs, a busy host).

Standard library only: this runs on the host (Slurm's HealthCheckProgram), see `findings.py`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

from test_case.health.findings import Finding, FindingClass, ToolOutput, run_tool

SOURCE = "NVIDIA DCGM Diagnostics, https://docs.nvidia.com/datacenter/dcgm/latest/user-guide/dcgm-diagnostics.html"
# Seconds allowed per run level: documented as seconds / ~2 min / ~15 min / extended (see above).
DIAG_TIMEOUT_S: dict[int, float] = {1: 120.0, 2: 15 * 60.0, 3: 45 * 60.0, 4: 3 * 3600.0}

Status = Literal["pass", "fail", "warn", "skip"]
CLASSES: dict[Status, FindingClass] = {"pass": "healthy", "skip": "healthy", "warn": "monitor", "fail": "drain"}
_RESULT = re.compile(r"^(?P<status>Pass|Fail|Warn|Warning|Skip|Skipped)\b\s*(?:-\s*(?P<scope>.*))?$", re.IGNORECASE)
_SECTION = re.compile(r"^[|+]-+\s+(?P<name>[A-Za-z][\w ]*?)\s+-+\+")
# rows that carry text for the test above them rather than a test of their own
_DETAIL_ROWS = {"warning", "info", "error"}


@dataclass(frozen=True)
class DiagResult:
    """One test's result for some GPUs."""

    category: str  # the table's section: Deployment, Integration, Hardware, Stress
    test: str  # "PCIe", "GPU Memory", "Persistence Mode"
    status: Status
    scope: str = ""  # as printed after the dash: "All", "GPU: 2", "GPUs: 0, 1"; "" when none
    gpus: tuple[int, ...] = ()  # the GPUs the scope names; () for All or none named
    detail: str = ""  # the warning DCGM printed under it, unwrapped
    line: str = ""  # the result's row, verbatim


@dataclass(frozen=True)
class DiagRun:
    """One ``dcgmi diag`` run: the level, what the tool printed and the results read from it."""

    level: int
    output: ToolOutput
    results: list[DiagResult] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _cells(line: str) -> tuple[str, str] | None:
    """A table row's two cells (name, value), stripped; None for a rule or anything else."""
    if not line.startswith("|") or line.startswith(("|-", "|=")):
        return None
    parts = line.split("|")
    if len(parts) < 3:
        return None
    return parts[1].strip(), parts[2].strip()


def _unwrap(pieces: list[str]) -> str:
    """Text DCGM wrapped at a fixed width: a piece shorter than the widest lost a space at the wrap,
    a full-width piece was cut inside a word."""
    width = max((len(p) for p in pieces), default=0)
    text = ""
    for i, piece in enumerate(pieces):
        if i:
            text += "" if len(pieces[i - 1]) == width else " "
        text += piece
    return text


def _gpus(scope: str) -> tuple[int, ...]:
    if not re.match(r"GPUs?\s*:", scope, re.IGNORECASE):
        return ()
    return tuple(int(n) for n in re.findall(r"\d+", scope.split(":", 1)[1]))


def _status(word: str) -> Status:
    word = word.lower()
    if word.startswith("warn"):
        return "warn"
    if word.startswith("skip"):
        return "skip"
    return "pass" if word == "pass" else "fail"


def parse_diag(text: str) -> list[DiagResult]:
    """Every test result of a ``dcgmi diag`` table, in order (Metadata rows are `diag_metadata`'s)."""
    results: list[DiagResult] = []
    details: list[list[str]] = []  # the wrapped detail pieces of each result
    category = ""
    test = ""
    in_detail = False
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            category, in_detail = section["name"].strip(), False
            continue
        cells = _cells(line)
        if cells is None or category in ("", "Metadata"):
            continue
        name, value = cells
        if name.lower() in _DETAIL_ROWS:
            in_detail = bool(results)
            if in_detail:
                details[-1].append(value)
            continue
        if not name and in_detail:
            details[-1].append(value)
            continue
        result = _RESULT.match(value)
        if result is None:
            continue
        test = name or test  # an unnamed row with a result: the same test, other GPUs
        scope = (result["scope"] or "").strip()
        results.append(DiagResult(category, test, _status(result["status"]), scope, _gpus(scope), "", line.rstrip()))
        details.append([])
        in_detail = False
    return [replace(r, detail=_unwrap(d)) if d else r for r, d in zip(results, details, strict=True)]


def diag_metadata(text: str) -> dict[str, str]:
    """The Metadata section's rows: DCGM Version, Driver Version Detected, GPU Device IDs Detected."""
    found: dict[str, str] = {}
    category = ""
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            category = section["name"].strip()
            continue
        cells = _cells(line)
        if category == "Metadata" and cells is not None and cells[0]:
            found[cells[0]] = cells[1]
    return found


def findings(results: Iterable[DiagResult]) -> list[Finding]:
    """One finding per result: fail -> drain, warn -> monitor, pass and skip -> healthy."""
    found: list[Finding] = []
    for r in results:
        subject = "node" if not r.gpus else ", ".join(f"GPU {g}" for g in r.gpus)
        scope = f" - {r.scope}" if r.scope else ""
        summary = f"DCGM {r.category} test {r.test}: {r.status}{scope}"
        if r.detail:
            summary += f": {r.detail}"
        found.append(Finding("dcgm", subject, CLASSES[r.status], summary, r.line, SOURCE))
    return found


def run_diag(level: int = 1, timeout: float | None = None) -> DiagRun | None:
    """``dcgmi diag -r LEVEL`` from PATH within ``DIAG_TIMEOUT_S[level]`` seconds (or ``timeout``);
    None when dcgmi is not there. A run that prints no table (no host engine, timed out) has no
    results: `run_findings` says why."""
    if level not in DIAG_TIMEOUT_S:
        raise ValueError(f"dcgmi diag run levels are 1 to 4, not {level}")
    out = run_tool("dcgmi", "diag", "-r", str(level), timeout=timeout or DIAG_TIMEOUT_S[level])
    if out is None:
        return None
    return DiagRun(level, out, parse_diag(out.stdout), diag_metadata(out.stdout))


def run_findings(run: DiagRun) -> list[Finding]:
    """A run's findings; one that gave no results is a monitor finding with the tool's own words
    (the diagnostics said nothing of the GPUs, so nothing is concluded of them)."""
    if run.results:
        return findings(run.results)
    said = (run.output.stderr.strip() or run.output.stdout.strip()).splitlines()
    why = said[0] if said else "no output"
    summary = f"dcgmi diag -r {run.level} gave no results (exit {run.output.returncode}): {why}"
    return [Finding("dcgm", "node", "monitor", summary, why, SOURCE)]
