"""The sweep manifest: the contract between an acceptance sweep's submission and the report.

`test_case.acceptance.cli` writes ``LOG_DIR/acceptance_<sweep-id>.json`` when it has submitted a
sweep (the sweep id is its first job's id); ``report.py`` finds it beside the job logs and judges
the sweep (`test_case.report.verdict`). Every field is written and read through these records.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

PREFIX = "acceptance_"
Scaling = Literal["weak", "strong"]
JobKind = Literal["preflight", "train"]


@dataclass(frozen=True)
class SweepJob:
    """One job the sweep submitted."""

    kind: JobKind
    job_id: str
    nodes: int
    model: str | None = None  # train jobs: the yaml
    global_train_batch_size: int | None = None  # train jobs: the batch it trains with
    overrides: list[str] = field(default_factory=list)  # train jobs: llm-foundry overrides passed
    depends_on: list[str] = field(default_factory=list)  # job ids it waits for


@dataclass(frozen=True)
class SweepManifest:
    """What a sweep submitted, and how the report is to judge it."""

    sweep_id: str
    submitted: str  # ISO 8601
    models: list[str]
    nodes: list[int]
    scaling: Scaling
    tolerance: float  # allowed shortfall against the published baseline
    scaling_threshold: float  # lowest scaling efficiency that passes
    preflight_job_id: str | None
    jobs: list[SweepJob]
    sbatch_args: list[str] = field(default_factory=list)  # passed to every sbatch after `--`

    @property
    def train_jobs(self) -> list[SweepJob]:
        """The training jobs, in submission order."""
        return [j for j in self.jobs if j.kind == "train"]

    def to_json(self) -> str:
        """The file's text."""
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, log_dir: Path) -> Path:
        """``log_dir/acceptance_<sweep-id>.json``; its path."""
        path = log_dir / f"{PREFIX}{self.sweep_id}.json"
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SweepManifest:
        """The record of a manifest's JSON; KeyError or TypeError when it is not one."""
        jobs = [SweepJob(**j) for j in raw["jobs"]]
        return cls(**{**raw, "jobs": jobs})

    @classmethod
    def read(cls, path: Path) -> SweepManifest:
        """Read a manifest file (errors as `from_dict`, or ValueError for bad JSON)."""
        return cls.from_dict(json.loads(path.read_text()))
