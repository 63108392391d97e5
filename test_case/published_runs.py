"""llm-foundry's published MPT runs (reference/llm-foundry-mpt-benchmarks.csv): the table read into
typed rows, and the run a benchmark of a model, GPU, GPU count and sequence length can reproduce.

Shared by the report (`test_case.report.compare`, the baseline gate) and the launch
(``--published-config`` / ``PUBLISHED_CONFIG=1``, `test_case.training.launch`), which never import each
other. Every row of llm-foundry's published table (scripts/train/benchmarking/README.md) with the
configuration each ran: precision, microbatch, activation checkpointing, FSDP sharding and mixed
precision ("MP Mode").
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from test_case import REPO_ROOT
from test_case.gpu_peaks import BASELINE_NAME, gpu_key

DEFAULT_BASELINE = REPO_ROOT / "reference" / "llm-foundry-mpt-benchmarks.csv"


@dataclass(frozen=True)
class BaselineRow:
    """One published measurement and the configuration it ran (None: not stated in the CSV)."""

    gpu: str
    model: str
    seq_len: int
    n_gpus: int
    global_batch_size: int
    precision: str
    mfu_pct: float
    tokens_per_sec_per_gpu: float
    microbatch: int | None = None
    activation_checkpointing: bool | None = None
    sharding_strategy: str | None = None
    mp_mode: str | None = None

    def setup(self) -> dict[str, object]:
        """The configuration the gate matches on, by the run's names."""
        return {
            "precision": self.precision,
            "microbatch": self.microbatch,
            "activation checkpointing": self.activation_checkpointing,
            "FSDP sharding": self.sharding_strategy,
            "FSDP mixed precision": self.mp_mode,
        }


class BaselineError(ValueError):
    """The baseline CSV cannot be used; the message names the file and line."""


NEEDED = ("gpu", "model", "seq_len", "n_gpus", "global_batch_size", "precision", "mfu_pct", "tokens_per_sec_per_gpu")


def _optional(row: dict[str, str], column: str) -> str | None:
    value = (row.get(column) or "").strip()
    return value or None


def _flag(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise ValueError(f"true or false, not {value!r}")
    return value.lower() == "true"


def load_baseline(path: Path) -> list[BaselineRow]:
    """Read a baseline CSV; a malformed row is an error naming its line."""
    rows: list[BaselineRow] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not set(NEEDED) <= set(reader.fieldnames or []):
            raise BaselineError(f"{path}: needs the columns {', '.join(sorted(NEEDED))}")
        for line, row in enumerate(reader, start=2):
            try:
                microbatch = _optional(row, "microbatch")
                rows.append(
                    BaselineRow(
                        row["gpu"].strip().lower(),
                        row["model"].strip(),
                        int(row["seq_len"]),
                        int(row["n_gpus"]),
                        int(row["global_batch_size"]),
                        row["precision"].strip(),
                        float(row["mfu_pct"]),
                        float(row["tokens_per_sec_per_gpu"]),
                        microbatch=None if microbatch is None else int(microbatch),
                        activation_checkpointing=_flag(_optional(row, "activation_checkpointing")),
                        sharding_strategy=_optional(row, "sharding_strategy"),
                        mp_mode=_optional(row, "mp_mode"),
                    )
                )
            except (TypeError, ValueError) as err:
                raise BaselineError(f"{path}:{line}: {err}") from err
    return rows


def shown(value: object) -> str:
    if value is None:
        return "not stated"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def setup_text(setup: dict[str, object]) -> str:
    return ", ".join(f"{name} {shown(value)}" for name, value in setup.items())


RUNNABLE_PRECISIONS = ("amp_bf16",)  # Composer 0.32 has no pure "bf16"; amp_fp8 needs Transformer Engine


def published_row(
    model: str, gpu: str, n_gpus: int, seq_len: int, rows: list[BaselineRow] | None = None
) -> BaselineRow | None:
    """The published run a benchmark of ``model`` on ``n_gpus`` GPUs of type ``gpu`` can reproduce:
    the same GPU type, model, GPU count and sequence length, a precision this Composer runs, the
    configuration stated (of several, the highest throughput); None when there is none."""
    key = gpu_key(gpu)
    name = BASELINE_NAME.get(key or "", key or gpu)
    found = [
        r
        for r in (load_baseline(DEFAULT_BASELINE) if rows is None else rows)
        if (r.gpu, r.model, r.n_gpus, r.seq_len) == (name, model, n_gpus, seq_len)
        and r.precision in RUNNABLE_PRECISIONS
        and None not in (r.microbatch, r.activation_checkpointing, r.sharding_strategy, r.mp_mode)
    ]
    return max(found, key=lambda r: r.tokens_per_sec_per_gpu) if found else None


def published_overrides(row: BaselineRow) -> list[str]:
    """llm-foundry overrides that run ``row``'s configuration (the gate's keys, `BaselineRow.setup`)."""
    return [
        f"precision={row.precision}",
        f"device_train_microbatch_size={row.microbatch}",
        f"fsdp_config.activation_checkpointing={str(row.activation_checkpointing).lower()}",
        f"fsdp_config.sharding_strategy={row.sharding_strategy}",
        f"fsdp_config.mixed_precision={row.mp_mode}",
    ]


def published_line(model: str, gpu: str, n_gpus: int, seq_len: int, row: BaselineRow | None) -> str:
    """What ``--published-config`` chose, in one line."""
    if row is None:
        return (
            f"no published {model} run on {n_gpus} {gpu} at seq_len {seq_len} with a precision this Composer "
            "runs: the yaml's configuration runs (its throughput is not compared)"
        )
    return (
        f"{model} on {n_gpus} {row.gpu} runs llm-foundry's published configuration: {setup_text(row.setup())} "
        f"(published {row.tokens_per_sec_per_gpu:,.0f} tokens/s/GPU, MFU {row.mfu_pct:.2f} %)"
    )
