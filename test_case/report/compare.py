"""Comparisons across runs: scaling efficiency over node counts, and a gate against published baselines.

* Scaling: completed runs of the same model, GPU type (or cpu), precision, sequence length,
  processes per node and scheduler (Slurm or the script run without it) at different world sizes.
  ``efficiency = tokens_per_sec_per_device / tokens_per_sec_per_device of the smallest run``
  (1.0 is perfect linear scaling).
* Baseline: the row of a CSV in the format of ``reference/llm-foundry-mpt-benchmarks.csv``
  (every row of llm-foundry's published MPT table, scripts/train/benchmarking/README.md, with the
  configuration each ran) of the same GPU type, model, number of GPUs and sequence length, and of
  the same configuration: precision, microbatch, activation checkpointing, FSDP sharding and
  mixed precision ("MP Mode"). A run of another configuration is not compared ("no comparable
  row", naming what differs): recomputing the forward alone costs about a third of the throughput.
  ``ratio = tokens_per_sec_per_device / tokens_per_sec_per_gpu`` of that row; a run passes when
  ``ratio >= 1 - tolerance``. A run that did not complete is not compared (``not-compared``).
  A CSV without the configuration columns (an older one of yours) is compared on the first five.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from test_case import REPO_ROOT
from test_case.report.gpu_peaks import BASELINE_NAME
from test_case.report.records import BaselineVerdict, RunSummary, ScalingGroup, ScalingPoint

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


def run_setup(run: RunSummary) -> dict[str, object]:
    """The run's configuration by the names of `BaselineRow.setup` (None: not in its log)."""
    return {
        "precision": run.precision,
        "microbatch": run.microbatch,
        "activation checkpointing": run.activation_checkpointing,
        "FSDP sharding": run.fsdp_sharding,
        "FSDP mixed precision": run.fsdp_mixed_precision,
    }


def _shown(value: object) -> str:
    if value is None:
        return "not stated"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _setup_text(setup: dict[str, object]) -> str:
    return ", ".join(f"{name} {_shown(value)}" for name, value in setup.items())


def differences(row: BaselineRow, run: RunSummary) -> list[str]:
    """What of the row's stated configuration the run did otherwise (a setting the row does not
    state is not compared; one the run's log does not state differs)."""
    ours = run_setup(run)
    return [
        f"{name} {_shown(value)} published, {_shown(ours[name])} here"
        for name, value in row.setup().items()
        if value is not None and value != ours[name]
    ]


def compare_to_baseline(run: RunSummary, rows: list[BaselineRow], tolerance: float) -> BaselineVerdict:
    """The comparable row and the verdict for one run (``status``: ok, below, no-match, not-compared)."""
    gpu = BASELINE_NAME.get(run.gpu or "", run.gpu or "")
    candidates = [
        r
        for r in rows
        if r.gpu == gpu
        and r.model == run.model
        and r.n_gpus == run.world_size
        and (run.max_seq_len is None or r.seq_len == run.max_seq_len)
    ]
    if run.status != "completed":
        return BaselineVerdict("not-compared", reason=f"the run {run.status}: only completed runs are compared")
    if not candidates or run.tokens_per_sec_per_device is None:
        why = "no throughput" if run.tokens_per_sec_per_device is None else "no row"
        return BaselineVerdict(
            "no-match",
            reason=f"{why} for gpu={gpu or '?'} model={run.model} n_gpus={run.world_size} seq_len={run.max_seq_len}",
        )
    comparable = [r for r in candidates if not differences(r, run)]
    if not comparable:
        nearest = min(candidates, key=lambda r: len(differences(r, run)))
        return BaselineVerdict(
            "no-match",
            reason=f"no comparable row: the published {run.model} on {nearest.n_gpus} {nearest.gpu} ran "
            f"{_setup_text(nearest.setup())}; this run differs: {'; '.join(differences(nearest, run))}",
        )
    row = comparable[0]
    ratio = run.tokens_per_sec_per_device / row.tokens_per_sec_per_gpu
    return BaselineVerdict(
        "ok" if ratio >= 1 - tolerance else "below",
        gpu=row.gpu,
        n_gpus=row.n_gpus,
        global_batch_size=row.global_batch_size,
        tokens_per_sec_per_gpu=row.tokens_per_sec_per_gpu,
        mfu_pct=row.mfu_pct,
        ratio=ratio,
        tolerance=tolerance,
    )


GroupKey = tuple[str | None, str | None, str | None, int | None, int | None, str | None]


def scaling_groups(runs: list[RunSummary]) -> list[ScalingGroup]:
    """One group per (model, gpu, precision, seq, processes per node, scheduler) with completed runs
    at two or more world sizes; at each size the run with the highest tokens/s per device stands for
    it. Only like is compared with like: a run of the script without Slurm (one node, the whole
    machine) is never a point of a Slurm series, nor a run of 8 GPUs per node one of 4."""
    groups: dict[GroupKey, dict[int, RunSummary]] = {}
    for run in runs:
        if run.status != "completed" or not (run.tokens_per_sec_per_device and run.world_size):
            continue
        key = (run.model, run.gpu, run.precision, run.max_seq_len, run.procs_per_node, run.scheduler)
        by_size = groups.setdefault(key, {})
        best = by_size.get(run.world_size)
        if best is None or run.tokens_per_sec_per_device > (best.tokens_per_sec_per_device or 0):
            by_size[run.world_size] = run
    out = []
    for (model, gpu, precision, seq, procs, scheduler), by_size in groups.items():
        if len(by_size) < 2:
            continue
        sizes = sorted(by_size)
        base = by_size[sizes[0]].tokens_per_sec_per_device or 1.0
        points = tuple(
            ScalingPoint(
                world_size=n,
                nodes=by_size[n].nodes,
                run=by_size[n].name,
                tokens_per_sec_per_device=by_size[n].tokens_per_sec_per_device or 0.0,
                efficiency=(by_size[n].tokens_per_sec_per_device or 0.0) / base,
            )
            for n in sizes
        )
        out.append(ScalingGroup(model, gpu, precision, seq, procs, scheduler, points))
    return out


RUNNABLE_PRECISIONS = ("amp_bf16",)  # Composer 0.32 has no pure "bf16"; amp_fp8 needs Transformer Engine


def published_row(
    model: str, gpu: str, n_gpus: int, seq_len: int, rows: list[BaselineRow] | None = None
) -> BaselineRow | None:
    """The published run a benchmark of ``model`` on ``n_gpus`` GPUs of type ``gpu`` can reproduce:
    the same GPU type, model, GPU count and sequence length, a precision this Composer runs, the
    configuration stated (of several, the highest throughput); None when there is none."""
    from test_case.report.gpu_peaks import gpu_key

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
        f"{model} on {n_gpus} {row.gpu} runs llm-foundry's published configuration: {_setup_text(row.setup())} "
        f"(published {row.tokens_per_sec_per_gpu:,.0f} tokens/s/GPU, MFU {row.mfu_pct:.2f} %)"
    )
