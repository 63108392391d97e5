"""The run header: the one contract between the training launch and the report.

Node 0 of every training job prints it at each start, before Composer starts, as
``[run-header] key: value`` lines (`RunHeader.lines`); `test_case.training.header` fills it in.
The report's parser collects those lines (`parse_line`) and `RunHeader.from_fields` turns them back
into this record, so every key is written and read through the fields below, with their types.

A job requeued with ``--open-mode=append`` prints one header per start into the same log: each
starts with `START_KEY`, so the report counts starts by it, and later values win.
Logs written before a field existed simply lack it: it reads as ``None`` (``device`` is then
derived from ``gpus_per_node``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Literal, get_type_hints

PREFIX = "[run-header] "
LINE = re.compile(r"^\[run-header\] ([\w.-]+): ?(.*?)\s*$")
START_KEY = "job_id"  # the first key of every header: one per start of the job
NONE = "none"  # how a missing text value is printed (``gpu_name`` on a node without GPUs)

Device = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class RunHeader:
    """Facts of one training run, as node 0 printed them (``None``: not in the log)."""

    job_id: str | None = None  # Slurm job id (``local-<time>`` outside Slurm)
    run_name: str | None = None  # ``<job-name>-<job-id>``: names the run and its checkpoint folder
    cluster: str | None = None  # SLURM_CLUSTER_NAME (slurm.conf ClusterName); None outside Slurm
    started_at: str | None = None  # when this start printed its header, UTC ISO 8601 (one per start)
    model: str | None = None  # yaml name (``mpt-7b``) or path
    nodes: int | None = None
    nodelist: str | None = None  # Slurm hostlist (``node[1-2]``), or the host outside Slurm
    gpus_per_node: int | None = None
    gpu_name: str | None = None  # ``nvidia-smi`` name of the first GPU; None without GPUs
    procs_per_node: int | None = None
    world_size: int | None = None  # training processes in the whole job
    backend: str | None = None  # torch.distributed backend: nccl or gloo
    device: Device | None = None  # what the ranks train on
    master: str | None = None  # rendezvous ``host:port``
    restart_count: int | None = None  # SLURM_RESTART_COUNT: requeues before this start
    image: str | None = None  # container image, or ``none (bare-metal venv)``
    git_commit: str | None = None  # suite checkout, ``-dirty`` with local changes
    python: str | None = None
    torch: str | None = None
    composer: str | None = None
    llm_foundry: str | None = None
    streaming: str | None = None
    flash_attn: str | None = None  # flash-attn's version, or ``not installed``
    cuda: str | None = None  # the CUDA torch was built for (torch.version.cuda), ``none`` for a CPU build
    nccl: str | None = None  # the NCCL wheel torch loads (nvidia-nccl-cu12), or ``not installed``
    driver: str | None = None  # the NVIDIA driver (nvidia-smi), on GPU nodes
    # the networks NCCL will try, in its order, on GPU nodes: ``plugin libnccl-net.so (/path), else IB on
    # mlx5_0:1, else sockets`` (test_case.preflight.nccl_network.expected_network)
    nccl_network: str | None = None
    overrides: str | None = None  # the user's llm-foundry overrides, space separated, or ``none``
    dataset_sample_tokens: int | None = None  # tokens per sample of the training split, as preprocessed
    dataset_tokenizer: str | None = None  # the tokenizer the training split was made with
    eval_data_overlap: str | None = None  # eval data that shares input files with the training data, or ``none``
    mixture: str | None = None  # MIXTURE: each stream's weight, the scheme, the batching and the file

    def to_fields(self) -> dict[str, str]:
        """The header as printed: every field that is set, in declaration order, as text."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name == "gpu_name":
                out[f.name] = NONE if value is None else str(value)
        return out

    def lines(self) -> list[str]:
        """``[run-header] key: value`` lines, `START_KEY` first."""
        return [f"{PREFIX}{key}: {value}" for key, value in self.to_fields().items()]

    @classmethod
    def from_fields(cls, raw: Mapping[str, str]) -> RunHeader:
        """The record of printed ``key: value`` texts: unknown keys are ignored, and a value that is
        not of its field's type (a truncated line, an older suite) reads as ``None``."""
        values: dict[str, object] = {}
        for name, kind in _FIELD_TYPES.items():
            text = raw.get(name, "").strip()
            if not text or (text == NONE and name == "gpu_name"):
                continue
            if kind is int:
                if text.isdigit():
                    values[name] = int(text)
            elif name == "device":
                if text in ("gpu", "cpu"):
                    values[name] = text
            else:
                values[name] = text
        if "device" not in values and isinstance(values.get("gpus_per_node"), int):
            values["device"] = "gpu" if values["gpus_per_node"] else "cpu"
        return cls(**values)  # type: ignore[arg-type]


def _field_types() -> dict[str, type]:
    hints = get_type_hints(RunHeader)
    return {f.name: int if hints[f.name] == int | None else str for f in fields(RunHeader)}


_FIELD_TYPES = _field_types()


def parse_line(line: str) -> tuple[str, str] | None:
    """``(key, value)`` of a ``[run-header] key: value`` line (prefixes already removed), else None."""
    m = LINE.match(line)
    return (m.group(1), m.group(2)) if m else None
