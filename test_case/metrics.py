"""Per-run figures computed from a `ParsedLog`: the only module that does report arithmetic.

Definitions (each printed figure comes from exactly one function here):

* ``last_batch`` / ``max_duration``: N and T of the last train block header ``[batch=N/T]``.
* steady-state window (`steady_state_window`): the train blocks that carry
  ``throughput/tokens_per_sec`` (Composer's SpeedMonitor logs it only once its ``window_size``
  batches have run, and again ``window_size`` batches after a resume), minus the first ``warmup``.
* ``tokens_per_sec``, ``samples_per_sec``: medians over the window of Composer's
  ``throughput/tokens_per_sec`` and ``throughput/samples_per_sec`` (all ranks together; Composer
  averages each over its speed window). ``tokens_per_sec_per_device = tokens_per_sec / world_size``.
* step time: ``1 / throughput/batches_per_sec`` of each window block; median, 10th and 90th
  percentiles, and spread ``(p90 - p10) / median``.
* model FLOPs per sample, llm-foundry's MPT formula:
  ``(2 * n_params * seq + n_layers * 2 * 2 * d_model * seq**2) * 3`` (forward + backward);
  ``tflops_per_device = flops_per_sample * samples_per_sec / world_size / 1e12``.
* ``mfu = tflops_per_device / peak`` (peak per GPU and precision from `test_case.gpu_peaks`);
  ``hfu`` uses 4 instead of 3 passes when activation checkpointing recomputes the forward;
  ``mfu_logged``: median over the window of Composer's own ``throughput/device/mfu``.
* loss: ``loss/train/total`` (or the older keys in `LOSS_KEYS`) of the train blocks; first, min,
  final; ``has_nan`` and ``first_nan_batch`` for nan/inf; ``loss_spikes``: first batch of each run
  of batches whose loss exceeds the median of the `SPIKE_LOOKBACK` batches before it by more than
  `SPIKE_FACTOR`.
* peak memory: the largest ``memory/peak_allocated_mem`` / ``memory/peak_reserved_mem`` (GB).
* to train 1 T tokens at the measured rate: ``hours = 1e12 / tokens_per_sec / 3600`` and
  ``gpu_hours = hours * world_size``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from test_case.gpu_peaks import peak_tflops
from test_case.log_parser import MetricBlock, ParsedLog, Value, is_finite_number

LOSS_KEY = "loss/train/total"
LOSS_KEYS = (LOSS_KEY, "loss/train", "metrics/train/LanguageCrossEntropy", "LanguageCrossEntropy")
TOKENS_PER_SEC = "throughput/tokens_per_sec"
DEVICE_TOKENS_PER_SEC = "throughput/device/tokens_per_sec"
SAMPLES_PER_SEC = "throughput/samples_per_sec"
BATCHES_PER_SEC = "throughput/batches_per_sec"
LOGGED_MFU = "throughput/device/mfu"
PEAK_MEM_KEYS = {"allocated": ("memory/peak_allocated_mem",), "reserved": ("memory/peak_reserved_mem",)}
USED_TRAIN_KEYS = frozenset(
    {*LOSS_KEYS, TOKENS_PER_SEC, DEVICE_TOKENS_PER_SEC, SAMPLES_PER_SEC, BATCHES_PER_SEC, LOGGED_MFU}
    | {key for keys in PEAK_MEM_KEYS.values() for key in keys}
)
SPIKE_FACTOR = 1.2
SPIKE_LOOKBACK = 10
TOKENS_1T = 1e12


@dataclass
class RunSummary:
    """The figures of one run, as written to report.json (README: "report.json")."""

    name: str
    log_file: str
    job_id: str | None = None
    model: str | None = None
    gpu: str | None = None
    n_params: int | None = None
    world_size: int | None = None
    nodes: int | None = None
    precision: str | None = None
    max_seq_len: int | None = None
    global_batch_size: int | None = None
    activation_checkpointing: bool = False
    restarts: int = 0
    last_batch: int | None = None
    max_duration: int | None = None
    duration_unit: str | None = None
    completed: bool = False
    loss_first: float | None = None
    loss_min: float | None = None
    final_train_loss: float | None = None
    has_nan: bool = False
    first_nan_batch: int | None = None
    loss_spikes: list[int] = field(default_factory=list)
    window_batches: list[int] = field(default_factory=list)
    tokens_per_sec: float | None = None
    tokens_per_sec_per_device: float | None = None
    samples_per_sec: float | None = None
    step_time_median_s: float | None = None
    step_time_p10_s: float | None = None
    step_time_p90_s: float | None = None
    step_time_spread: float | None = None
    tflops_per_device: float | None = None
    peak_tflops: float | None = None
    mfu: float | None = None
    hfu: float | None = None
    mfu_logged: float | None = None
    mfu_note: str = ""
    peak_mem_allocated_gb: float | None = None
    peak_mem_reserved_gb: float | None = None
    hours_to_1t_tokens: float | None = None
    gpu_hours_to_1t_tokens: float | None = None
    eval: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    series: dict[str, list[list[float]]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the per-batch series, which only the plots use)."""
        out = asdict(self)
        out.pop("series")
        return out


def is_used_key(key: str) -> bool:
    """The train metrics this module reads (the parser may drop the others to save memory)."""
    return key in USED_TRAIN_KEYS


def steady_state_window(blocks: list[MetricBlock], warmup: int = 0) -> list[MetricBlock]:
    """Train blocks with a filled speed window, after skipping ``warmup`` of them."""
    measured = [b for b in blocks if is_finite_number(b.metrics.get(TOKENS_PER_SEC))]
    return measured[warmup:]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _as_int(value: Value | str | None) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _window_values(window: list[MetricBlock], key: str) -> list[float]:
    return [float(v) for b in window if is_finite_number(v := b.metrics.get(key))]


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


def loss_series(blocks: list[MetricBlock]) -> list[tuple[int, float]]:
    """(batch, loss) of every train block that logged a loss, under the first key the log uses."""
    for key in LOSS_KEYS:
        series = [(b.step, float(v)) for b in blocks if isinstance(v := b.metrics.get(key), int | float)]
        if series:
            return series
    return []


def loss_spikes(series: list[tuple[int, float]]) -> list[int]:
    """First batch of each run of consecutive spiking batches (see the module docstring)."""
    starts: list[int] = []
    spiking = False
    for i, (step, loss) in enumerate(series):
        history = [v for _, v in series[max(0, i - SPIKE_LOOKBACK) : i] if math.isfinite(v)]
        is_spike = (
            len(history) >= SPIKE_LOOKBACK and math.isfinite(loss) and loss > SPIKE_FACTOR * statistics.median(history)
        )
        if is_spike and not spiking:
            starts.append(step)
        spiking = is_spike
    return starts


def mpt_flops_per_sample(n_params: int, n_layers: int, d_model: int, seq_len: int, passes: int = 3) -> float:
    """llm-foundry's MPT FLOPs for one sample: parameters plus attention, ``passes`` = 3 (fwd+bwd)."""
    return float((2 * n_params * seq_len + n_layers * 2 * 2 * d_model * seq_len**2) * passes)


def _truthy(value: Value | None) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def summarise_run(
    parsed: ParsedLog, warmup: int = 0, gpu: str | None = None, peak_override: float | None = None
) -> RunSummary:
    """Compute the figures of one parsed log; ``gpu``/``peak_override`` take precedence over the log."""
    blocks = parsed.train_blocks
    header, config = parsed.header, parsed.config
    run = RunSummary(
        name=header.get("run_name") or str(config.get("run_name") or Path(parsed.path).stem),
        log_file=parsed.path,
        job_id=header.get("job_id"),
        model=header.get("model"),
        nodes=_as_int(header.get("nodes")),
        precision=str(config["precision"]) if "precision" in config else None,
        max_seq_len=_as_int(config.get("max_seq_len")),
        global_batch_size=_as_int(config.get("global_train_batch_size")),
        activation_checkpointing=_truthy(config.get("activation_checkpointing")),
        restarts=max(0, parsed.starts - 1),
    )
    n_params = config.get("n_params")
    run.n_params = n_params if isinstance(n_params, int) else None
    if not blocks:
        run.warnings.append("no train metric blocks found")
        return run

    last = blocks[-1]
    run.last_batch, run.max_duration, run.duration_unit = last.step, last.total, last.unit
    run.completed = bool(last.total) and last.step >= last.total

    series = loss_series(blocks)
    if series:
        values = [v for _, v in series]
        finite = [v for v in values if math.isfinite(v)]
        run.loss_first, run.final_train_loss = values[0], values[-1]
        run.loss_min = min(finite) if finite else None
        bad = [s for s, v in series if not math.isfinite(v)]
        run.has_nan, run.first_nan_batch = bool(bad), (bad[0] if bad else None)
        run.loss_spikes = loss_spikes(series)
    if run.has_nan:
        run.warnings.append(f"loss is nan or inf from batch {run.first_nan_batch}")
    if run.loss_spikes:
        run.warnings.append(f"loss spikes starting at batch {', '.join(map(str, run.loss_spikes))}")

    window = steady_state_window(blocks, warmup)
    run.world_size = infer_world_size(parsed, window)
    if not window:
        run.warnings.append(
            "no throughput logged: the run ended before Composer's speed window filled "
            f"(or --warmup {warmup} skipped all of it)"
        )
    else:
        run.window_batches = [window[0].step, window[-1].step]
    run.tokens_per_sec = _median(_window_values(window, TOKENS_PER_SEC))
    run.samples_per_sec = _median(_window_values(window, SAMPLES_PER_SEC))
    if run.tokens_per_sec is not None and run.world_size:
        run.tokens_per_sec_per_device = run.tokens_per_sec / run.world_size
    steps = [1.0 / r for r in _window_values(window, BATCHES_PER_SEC) if r > 0]
    run.step_time_median_s = _median(steps)
    run.step_time_p10_s, run.step_time_p90_s = _percentile(steps, 10), _percentile(steps, 90)
    if run.step_time_median_s and run.step_time_p10_s is not None and run.step_time_p90_s is not None:
        run.step_time_spread = (run.step_time_p90_s - run.step_time_p10_s) / run.step_time_median_s
    run.mfu_logged = _median(_window_values(window, LOGGED_MFU))
    _throughput_flops(run, parsed, gpu, peak_override)

    for kind, keys in PEAK_MEM_KEYS.items():
        peaks = [float(v) for b in blocks for k in keys if is_finite_number(v := b.metrics.get(k))]
        setattr(run, f"peak_mem_{kind}_gb", max(peaks) if peaks else None)
    if run.tokens_per_sec:
        run.hours_to_1t_tokens = TOKENS_1T / run.tokens_per_sec / 3600
        if run.world_size:
            run.gpu_hours_to_1t_tokens = run.hours_to_1t_tokens * run.world_size

    for block in parsed.blocks.get(parsed.reporting_rank, []):
        if block.kind == "eval":
            run.eval.update({k: float(v) for k, v in block.metrics.items() if isinstance(v, int | float)})
    run.series = {
        "loss": [[s, v] for s, v in series],
        "tokens_per_sec_per_device": [
            [b.step, float(v) / run.world_size]
            for b in blocks
            if run.world_size and is_finite_number(v := b.metrics.get(TOKENS_PER_SEC))
        ],
        "eval_loss": [
            [b.step, float(v)]
            for b in parsed.blocks.get(parsed.reporting_rank, [])
            if b.kind == "eval" and is_finite_number(v := b.metrics.get("metrics/eval/LanguageCrossEntropy"))
        ],
    }
    return run


def _throughput_flops(run: RunSummary, parsed: ParsedLog, gpu: str | None, peak_override: float | None) -> None:
    """TFLOP/s per device, MFU and HFU (or the reason they are unknown)."""
    cfg = parsed.config
    n_layers, d_model = _as_int(cfg.get("n_layers")), _as_int(cfg.get("d_model"))
    gpus_per_node = _as_int(parsed.header.get("gpus_per_node"))
    header_gpu = parsed.header.get("gpu_name")
    run.gpu = gpu or (header_gpu if header_gpu and header_gpu != "none" else None)
    missing = [
        k
        for k, v in {
            "n_params": run.n_params,
            "n_layers": n_layers,
            "d_model": d_model,
            "max_seq_len": run.max_seq_len,
        }.items()
        if v is None
    ]
    if missing:
        run.mfu_note = f"MFU unknown: the log has no llm-foundry config dump with {', '.join(missing)}"
        return
    if run.samples_per_sec is None or not run.world_size:
        run.mfu_note = "MFU unknown: no throughput in the steady-state window"
        return
    assert run.n_params and n_layers and d_model and run.max_seq_len
    flops = mpt_flops_per_sample(run.n_params, n_layers, d_model, run.max_seq_len)
    run.tflops_per_device = flops * run.samples_per_sec / run.world_size / 1e12
    if peak_override is not None:
        run.peak_tflops = peak_override
    elif gpus_per_node == 0 and not gpu:
        run.mfu_note = "MFU not computed: a CPU run has no GPU peak (pass --peak-tflops to compare anyway)"
        return
    else:
        peak = peak_tflops(run.gpu, run.precision)
        if peak.tflops is None:
            run.mfu_note = f"MFU unknown: {peak.reason}"
            return
        run.peak_tflops, run.gpu = peak.tflops, peak.gpu
    run.mfu = run.tflops_per_device / run.peak_tflops
    if run.activation_checkpointing:
        run.hfu = run.mfu * 4 / 3
