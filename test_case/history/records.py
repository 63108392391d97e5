"""The results store's typed rows: what one report adds to the cluster's memory (docs/history.md).

`extract` makes them from a report.json document, `store` writes and reads them, `trends` judges
them. Each row is keyed by what identifies it on the cluster: a run by (cluster, job, start), since a
requeued job appends a new start to the same log; a preflight by (cluster, job); a node figure by
(cluster, source, job, start, node, device, metric); a sweep's verdict by (cluster, sweep). The same
key stored twice keeps one row, the later report's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["preflight", "run"]

# the versions a figure was measured with, by name: what changed between a baseline and a regression
VERSION_KEYS = ("driver", "cuda", "nccl", "torch", "composer", "llm_foundry", "flash_attn", "image", "git_commit")


@dataclass(frozen=True)
class RunResult:
    """One start of one training job: its figures as the report computed them."""

    cluster: str
    job_id: str  # Slurm job id (or the run name for a log without one)
    start: int  # 1 + the restarts the log shows: the start these figures are as of
    started_at: str | None  # the run header's, UTC ISO 8601; for a log older than the field, when it last printed
    run_name: str
    model: str | None
    status: str  # completed, failed, ... (records.RunStatus)
    passed: bool  # completed, no straggler and not below a published row: a sample of the cluster's baseline
    device_type: str | None
    nodes: int | None
    world_size: int | None
    nodelist: str | None
    precision: str | None
    max_seq_len: int | None
    global_batch_size: int | None
    configuration: str | None  # `configuration.describe`: runs are compared within one (None: not known)
    tokens_per_sec_per_device: float | None
    mfu: float | None
    goodput: float | None
    stragglers: str  # the straggling nodes, comma-separated ("" for none)
    versions: dict[str, str]  # `VERSION_KEYS` the run header gave
    record: dict[str, Any]  # the run's whole report.json record


@dataclass(frozen=True)
class PreflightResult:
    """One preflight job: its verdict and counts (the figures are `NodeFigure` rows)."""

    cluster: str
    job_id: str
    measured_at: str | None
    status: str  # pass | fail
    nodes: int
    failures: int
    record: dict[str, Any]  # the whole preflight_<job-id>.json


@dataclass(frozen=True)
class NodeFigure:
    """One figure of one node (or one device of it) from a preflight or a run."""

    cluster: str
    source: Source
    job_id: str
    start: int  # 1 for a preflight
    measured_at: str | None
    node: str  # a hostname, or "all nodes" for a figure of the whole job
    device: str  # "" for the node's own figure, else "device<i>"
    device_id: str  # the GPU's serial (else UUID) for a device figure, else ""
    metric: str  # matmul_tflops, busbw_gbps.<collective>.<scope>, compute_s_per_batch, check.<name>
    value: float
    unit: str
    passed: bool  # the check behind it passed (a preflight), or the run passed (`RunResult.passed`)
    versions: dict[str, str]


@dataclass(frozen=True)
class VerdictResult:
    """One acceptance sweep's verdict."""

    cluster: str
    sweep_id: str
    status: str  # PASS | FAIL
    decided_at: str | None  # the newest start among its runs
    reasons: list[str]
    record: dict[str, Any]


@dataclass
class Batch:
    """What one report adds: written in one transaction, or not at all."""

    runs: list[RunResult] = field(default_factory=list)
    preflights: list[PreflightResult] = field(default_factory=list)
    figures: list[NodeFigure] = field(default_factory=list)
    verdicts: list[VerdictResult] = field(default_factory=list)

    def __iadd__(self, other: Batch) -> Batch:
        self.runs += other.runs
        self.preflights += other.preflights
        self.figures += other.figures
        self.verdicts += other.verdicts
        return self

    def counts(self) -> dict[str, int]:
        return {
            "runs": len(self.runs),
            "preflights": len(self.preflights),
            "figures": len(self.figures),
            "verdicts": len(self.verdicts),
        }
