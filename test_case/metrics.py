"""Per-run figures computed from a `ParsedLog`: the only module that does report arithmetic.

Definitions (each printed figure comes from exactly one function here):

* ``last_batch`` / ``max_duration``: N and T of the last train block header ``[batch=N/T]``.
* steady-state window (`steady_state_window`): the train blocks that carry
  ``throughput/tokens_per_sec`` (Composer's SpeedMonitor logs it only once its ``window_size``
  batches have run), minus the first ``warmup`` of those.
* ``tokens_per_sec``: median over the window of Composer's ``throughput/tokens_per_sec`` (all
  ranks together, averaged by Composer over its speed window).
* ``tokens_per_sec_per_device``: ``tokens_per_sec / world_size``.
* ``step_time_median_s``: median over the window of ``1 / throughput/batches_per_sec``.
* ``final_train_loss``: ``loss/train/total`` of the last train block; ``has_nan``: any logged loss
  that is ``nan`` or ``inf``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from test_case.log_parser import MetricBlock, ParsedLog, Value, is_finite_number

LOSS_KEY = "loss/train/total"
TOKENS_PER_SEC = "throughput/tokens_per_sec"
DEVICE_TOKENS_PER_SEC = "throughput/device/tokens_per_sec"
BATCHES_PER_SEC = "throughput/batches_per_sec"


@dataclass
class RunSummary:
    """The figures of one run, as written to report.json."""

    name: str
    log_file: str
    job_id: str | None
    model: str | None
    n_params: int | None
    world_size: int | None
    last_batch: int | None
    max_duration: int | None
    duration_unit: str | None
    final_train_loss: float | None
    has_nan: bool
    tokens_per_sec: float | None
    tokens_per_sec_per_device: float | None
    step_time_median_s: float | None
    window_batches: list[int] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def steady_state_window(blocks: list[MetricBlock], warmup: int = 0) -> list[MetricBlock]:
    """Train blocks with a filled speed window, after skipping ``warmup`` of them."""
    measured = [b for b in blocks if is_finite_number(b.metrics.get(TOKENS_PER_SEC))]
    return measured[warmup:]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _as_int(value: Value | str | None) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def infer_world_size(parsed: ParsedLog, window: list[MetricBlock]) -> int | None:
    """World size from the run header, else from Composer's total/per-device throughput ratio."""
    from_header = _as_int(parsed.header.get("world_size"))
    if from_header:
        return from_header
    for block in window:
        total, device = block.metrics.get(TOKENS_PER_SEC), block.metrics.get(DEVICE_TOKENS_PER_SEC)
        if is_finite_number(total) and is_finite_number(device) and float(device) > 0:
            return max(1, round(float(total) / float(device)))
    return None


def summarise_run(parsed: ParsedLog, warmup: int = 0) -> RunSummary:
    """Compute the figures of one parsed log."""
    blocks = parsed.train_blocks
    warnings: list[str] = []
    batches = [b for b in blocks if b.kind == "train"]
    last = batches[-1] if batches else None
    window = steady_state_window(batches, warmup)
    if batches and not window:
        warnings.append(
            "no throughput logged: the run ended before Composer's speed window filled "
            f"(or --warmup {warmup} skipped all of it)"
        )
    world = infer_world_size(parsed, window)
    tokens = _median([float(b.metrics[TOKENS_PER_SEC]) for b in window])
    rates = [float(b.metrics[BATCHES_PER_SEC]) for b in window if is_finite_number(b.metrics.get(BATCHES_PER_SEC))]
    losses = [b.metrics.get(LOSS_KEY) for b in batches if LOSS_KEY in b.metrics]
    has_nan = any(isinstance(v, float) and not is_finite_number(v) for v in losses)
    final = last.metrics.get(LOSS_KEY) if last else None
    evals: dict[str, float] = {}
    for block in parsed.blocks.get(parsed.reporting_rank, []):
        if block.kind == "eval":
            evals.update({k: float(v) for k, v in block.metrics.items() if isinstance(v, int | float)})
    if not batches:
        warnings.append("no train metric blocks found")
    if has_nan:
        warnings.append("loss is nan or inf in at least one block")
    n_params = parsed.config.get("n_params")
    name = parsed.header.get("run_name") or str(parsed.config.get("run_name") or Path(parsed.path).stem)
    return RunSummary(
        name=name,
        log_file=parsed.path,
        job_id=parsed.header.get("job_id"),
        model=parsed.header.get("model"),
        n_params=n_params if isinstance(n_params, int) else None,
        world_size=world,
        last_batch=last.step if last else None,
        max_duration=last.total if last else None,
        duration_unit=last.unit if last else None,
        final_train_loss=float(final) if isinstance(final, int | float) else None,
        has_nan=has_nan,
        tokens_per_sec=tokens,
        tokens_per_sec_per_device=tokens / world if tokens is not None and world else None,
        step_time_median_s=_median([1.0 / r for r in rates if r > 0]),
        window_batches=[window[0].step, window[-1].step] if window else [],
        eval=evals,
        warnings=warnings,
    )
