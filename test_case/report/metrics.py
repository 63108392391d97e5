"""Per-run figures computed from a `ParsedLog`: the report's arithmetic, here and in two modules
of their own that `summarise_run` calls: `test_case.report.stragglers` (per-rank compute time) and
`test_case.report.goodput` (where the job's wall time went).

Definitions (each printed figure comes from exactly one function here; `test_case.report.figures`
is the table of every figure, its formula and its function):

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
* ``stream_shares`` (a mixture): from the last `StreamDraws` line (``[stream-draws]``) (the last start's
  counts), per stream ``drawn = samples / all samples``, against the dataset's planned share ``p``,
  with the binomial sampling error ``sqrt(p * (1 - p) / all samples)``; ``within_error`` when
  ``|drawn - p|`` is at most `SHARE_ERRORS` (3) of them (`stream_shares`); ``stream_shares_within_error``
  when every stream is, else a run warning.
* eval: ``eval`` the last value of each eval metric; ``final_eval_loss`` the last
  ``metrics/eval/LanguageCrossEntropy``; ``eval_loss_by_domain`` each labelled eval loader's last
  ``metrics/eval/<label>/LanguageCrossEntropy`` (`_eval_figures`).
* ``stragglers``, ``node_compute``: `test_case.report.stragglers`; ``goodput``: `test_case.report.goodput`.

At about 530 lines the module is over the suite's 400 by design: it is the one home of every per-run
figure (the rule that makes "where is MFU computed" a one-file answer); the figures with ideas of their
own (stragglers, goodput, liveness) already live in their own modules.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from test_case.failure_lines import cancelled_by_user, failure_cause
from test_case.gpu_peaks import peak_tflops
from test_case.report.goodput import goodput
from test_case.report.liveness import last_time
from test_case.report.log_lines import MetricBlock, ParsedLog, Value
from test_case.report.records import JobWithoutTraining, RunSummary, StreamShare
from test_case.report.stragglers import STRAGGLER_RATIO, stragglers
from test_case.run_header import NONE
from test_case.timing_events import StreamDraws

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


def metric_column(
    blocks: Sequence[MetricBlock], key: str, metrics: Sequence[dict[str, Value]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``key`` in every block as float64 (nan where absent or not a number), and a mask of the blocks
    where it is a number (nan and inf included; a number too large for a float counts as inf).
    ``metrics`` is ``[b.metrics for b in blocks]`` when the caller already made it."""
    if metrics is None:
        metrics = [b.metrics for b in blocks]
    if not any(map(operator.methodcaller("__contains__", key), metrics)):
        return np.full(len(blocks), math.nan), np.zeros(len(blocks), dtype=bool)
    raw = list(map(operator.methodcaller("get", key), metrics))
    if set(map(type, raw)) <= {float, int, type(None)}:
        try:
            values = np.array(raw, dtype=np.float64)  # None becomes nan
        except OverflowError:
            pass
        else:
            if None not in raw:
                return values, np.ones(len(raw), dtype=bool)
            return values, np.fromiter(map(operator.is_not, raw, itertools.repeat(None)), bool, len(raw))
    numeric = np.array([isinstance(v, int | float) and not isinstance(v, bool) for v in raw], dtype=bool)
    return np.array([_to_float(v) if ok else math.nan for v, ok in zip(raw, numeric, strict=True)]), numeric


def _to_float(value: Value | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return math.inf


def window_indices(tokens_per_sec: np.ndarray, warmup: int = 0) -> np.ndarray:
    """Indices of the steady-state window: blocks with a finite ``throughput/tokens_per_sec`` (the
    `metric_column` given), less the first ``warmup`` of them."""
    return np.flatnonzero(np.isfinite(tokens_per_sec))[warmup:]


def steady_state_window(blocks: list[MetricBlock], warmup: int = 0) -> list[MetricBlock]:
    """Train blocks with a filled speed window, after skipping ``warmup`` of them."""
    return [blocks[i] for i in window_indices(metric_column(blocks, TOKENS_PER_SEC)[0], warmup)]


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def _percentile(values: np.ndarray, q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100)."""
    if not len(values):
        return None
    ordered = np.sort(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def _as_int(value: Value | str | None) -> int | None:
    try:
        return int(value) if value is not None and str(value).strip() else None
    except ValueError:
        return None


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def world_size_from_throughput(total: np.ndarray, device: np.ndarray) -> int | None:
    """World size as Composer's total over per-device throughput (``throughput/tokens_per_sec`` over
    ``throughput/device/tokens_per_sec``, window columns) in the first window block that logs both."""
    with np.errstate(invalid="ignore"):
        both = np.flatnonzero(np.isfinite(total) & np.isfinite(device) & (device > 0))
    return max(1, round(float(total[both[0]] / device[both[0]]))) if len(both) else None


def block_steps(blocks: Sequence[MetricBlock]) -> np.ndarray:
    """N of each block's ``[batch=N/T]`` as an array (of Python ints where one exceeds int64)."""
    steps = [b.step for b in blocks]
    try:
        return np.array(steps, dtype=np.int64)
    except OverflowError:
        return np.array(steps, dtype=object)


def loss_series(
    blocks: Sequence[MetricBlock], steps: np.ndarray | None = None, metrics: Sequence[dict[str, Value]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Batches and losses of the train blocks that logged a loss (nan and inf included), under the
    first of `LOSS_KEYS` the log uses; ``steps`` (`block_steps`) and ``metrics`` as already made."""
    metrics = [b.metrics for b in blocks] if metrics is None else metrics
    for key in LOSS_KEYS:
        values, numeric = metric_column(blocks, key, metrics)
        if numeric.any():
            return (block_steps(blocks) if steps is None else steps)[numeric], values[numeric]
    return np.array([], dtype=np.int64), np.array([], dtype=np.float64)


def loss_spikes(steps: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray) -> list[int]:
    """First batch of each run of consecutive spiking batches (see the module docstring)."""
    values = np.asarray(losses, dtype=np.float64)
    if len(values) <= SPIKE_LOOKBACK:
        return []
    history = sliding_window_view(values[:-1], SPIKE_LOOKBACK)  # row j: the losses before loss j + LOOKBACK
    loss = values[SPIKE_LOOKBACK:]
    with np.errstate(invalid="ignore"):
        spiking = (
            np.isfinite(history).all(axis=1) & np.isfinite(loss) & (loss > SPIKE_FACTOR * np.median(history, axis=1))
        )
    starts = spiking & ~np.concatenate(([False], spiking[:-1]))
    return [int(steps[j + SPIKE_LOOKBACK]) for j in np.flatnonzero(starts)]


def mpt_flops_per_sample(n_params: int, n_layers: int, d_model: int, seq_len: int, passes: int = 3) -> float:
    """llm-foundry's MPT FLOPs for one sample: parameters plus attention, ``passes`` = 3 (fwd+bwd)."""
    return float((2 * n_params * seq_len + n_layers * 2 * 2 * d_model * seq_len**2) * passes)


def _truthy(value: Value | None) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


Column = Callable[[str], np.ndarray]  # a train metric over the run's blocks (`metric_column`), made once


def summarise_run(
    parsed: ParsedLog,
    warmup: int = 0,
    gpu: str | None = None,
    peak_override: float | None = None,
    straggler_threshold: float = STRAGGLER_RATIO,
) -> RunSummary:
    """Compute the figures of one parsed log; ``gpu``/``peak_override`` take precedence over the log."""
    run = _identity(parsed)
    run.stragglers, run.node_compute = stragglers(parsed, straggler_threshold)
    run.straggler_threshold = straggler_threshold if run.node_compute else None
    run.goodput = goodput(parsed)
    run.stream_shares = stream_shares(parsed)
    if run.stream_shares:
        run.stream_shares_within_error = all(s.within_error for s in run.stream_shares)
        if not run.stream_shares_within_error:
            run.warnings.append(
                f"drawn stream shares NOT within {SHARE_ERRORS} sampling errors of the plan: "
                + describe_stream_shares(run.stream_shares)
            )
    blocks = parsed.train_blocks
    if not blocks:
        run.warnings.append("no train metric blocks found")
        _status_figures(run, parsed)
        return run
    last = blocks[-1]
    run.last_batch, run.max_duration, run.duration_unit = last.step, last.total, last.unit
    run.completed = bool(last.total) and last.step >= last.total
    _status_figures(run, parsed)

    columns: dict[str, np.ndarray] = {}
    metrics = [b.metrics for b in blocks]

    def column(key: str) -> np.ndarray:
        if key not in columns:
            columns[key] = metric_column(blocks, key, metrics)[0]
        return columns[key]

    steps = block_steps(blocks)
    loss_steps, losses = _loss_figures(run, blocks, steps, metrics)
    _throughput_figures(run, parsed, blocks, column, warmup)
    _flops_figures(run, parsed, gpu, peak_override)
    _memory_figures(run, column)
    _time_to_1t_tokens(run)
    evals = _eval_figures(run, parsed)
    measured = np.flatnonzero(np.isfinite(column(TOKENS_PER_SEC)))
    run.series = {
        "loss": (loss_steps, losses),
        "tokens_per_sec_per_device": (
            (steps[measured], column(TOKENS_PER_SEC)[measured] / run.world_size)
            if run.world_size
            else (np.array([]), np.array([]))
        ),
        **eval_loss_series(evals),
    }
    return run


def eval_loss_series(evals: Sequence[MetricBlock]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The eval loss at each eval (batches, losses; finite ones): ``eval_loss`` for the unlabelled eval
    loader, ``eval_loss/<label>`` for each labelled one (a mixture's streams), in the order first logged."""
    keys = {EVAL_LOSS_KEY: "eval_loss"}
    for block in evals:
        for key in block.metrics:
            if key not in keys and (m := LABELLED_EVAL_LOSS.match(key)) is not None:
                keys[key] = f"eval_loss/{m.group('label')}"
    out = {}
    for key, name in keys.items():
        values = metric_column(evals, key)[0]
        finite = np.flatnonzero(np.isfinite(values))
        if name == "eval_loss" or len(finite):
            out[name] = (block_steps(evals)[finite], values[finite])
    return out


def _identity(parsed: ParsedLog) -> RunSummary:
    """What the run is: name, job, model, device and shape, from the run header and the config dump."""
    header, config = parsed.header, parsed.config
    n_params = config.get("n_params")
    job_id = header.job_id or parsed.job_id
    return RunSummary(
        name=parsed.run_name,
        log_file=parsed.path,
        job_id=job_id,
        model=header.model,
        device=header.device,
        n_params=n_params if isinstance(n_params, int) else None,
        nodes=header.nodes,
        procs_per_node=header.procs_per_node,
        scheduler=None if job_id is None else ("local" if job_id.startswith("local") else "slurm"),
        precision=str(config["precision"]) if "precision" in config else None,
        max_seq_len=_as_int(config.get("max_seq_len")),
        nodelist=header.nodelist,
        log_ends_at=_iso(last_time(parsed)),
        dataset_sample_tokens=header.dataset_sample_tokens,
        dataset_tokenizer=header.dataset_tokenizer,
        eval_data_overlap=header.eval_data_overlap,
        global_batch_size=_as_int(config.get("global_train_batch_size")),
        activation_checkpointing=_truthy(config.get("activation_checkpointing")),
        microbatch=_as_int(config.get("device_train_microbatch_size")),
        fsdp_sharding=str(config["sharding_strategy"]) if "sharding_strategy" in config else None,
        fsdp_mixed_precision=str(config["mixed_precision"]) if "mixed_precision" in config else None,
        attn_impl=str(config["attn_impl"]) if "attn_impl" in config else None,
        alibi=_truthy(config["alibi"]) if "alibi" in config else None,
        flash_attn=header.flash_attn,
        cuda=header.cuda,
        nccl=header.nccl,
        driver=header.driver,
        nccl_network=header.nccl_network,
        cluster=header.cluster,
        started_at=header.started_at,
        torch=header.torch,
        composer=header.composer,
        llm_foundry=header.llm_foundry,
        image=header.image,
        git_commit=header.git_commit,
        restarts=max(0, parsed.starts - 1),
        restart_events=list(parsed.restart_events),
    )


def _status_figures(run: RunSummary, parsed: ParsedLog) -> None:
    """``completed``: the last train block is ``[batch=T/T]``. ``cancelled``: not completed, and since
    the job's last start slurmstepd logged that scancel ended it (`test_case.failure_lines.cancelled_by_user`).
    ``failed``: not completed, and since the job's last start a failure line was logged
    (`test_case.failure_lines.FAILURE_LINE`) or the job's end line gives a non-zero exit code.
    ``unfinished``: none of these (still running, or the log was cut off); the report then asks
    Slurm or this host whether it runs (`test_case.report.liveness.refine`)."""
    if run.eval_data_overlap not in (None, NONE):
        run.warnings.append(f"eval data overlaps the training data: {run.eval_data_overlap}")
    cause = failure_cause(parsed.failures)
    if run.completed:
        run.status = "completed"
        if cause is not None:
            run.warnings.append(
                f"a failure was logged after the last batch: {cause.text} (line {cause.number} of the log)"
            )
        return
    where = f"at batch {run.last_batch}/{run.max_duration}" if run.last_batch is not None else "before training"
    if (cancel := cancelled_by_user(parsed.failures)) is not None:
        run.status, run.failure, run.failure_line_number = "cancelled", cancel.text, cancel.number
        run.warnings.append(f"CANCELLED {where} (scancel): {cancel.text.strip()}; not used for scaling or baselines")
    elif cause is not None or parsed.end_code not in (None, 0):
        run.status = "failed"
        if cause is not None:
            run.failure, run.failure_line_number = cause.text, cause.number
        else:
            run.failure = f"the job ended with exit code {parsed.end_code}"
        run.warnings.append(f"FAILED {where}: {run.failure}; not used for scaling or baselines")
        stops = [e for e in parsed.restart_events if e.kind == "failure" and e.action == "stop"]
        if stops:
            stop = stops[-1]
            run.warnings.append(
                f"stopped after {run.restarts} restart(s): {stop.failures_in_a_row} failures in a row without a new "
                f"checkpoint, more than MAX_RESTARTS={stop.max_restarts}"
            )
    else:
        run.status = "unfinished"
        run.warnings.append(
            f"UNFINISHED {where} (still running, or the log was cut off); not used for scaling or baselines"
        )


def job_without_training(parsed: ParsedLog) -> JobWithoutTraining | None:
    """A training job's log without train blocks (it has a run header or the job's start line); None
    for any other file."""
    if parsed.train_blocks or not (parsed.header_fields or parsed.job_id):
        return None
    cause = failure_cause(parsed.failures)
    failure = cause.text if cause else None
    if failure is None and parsed.end_code not in (None, 0):
        failure = f"the job ended with exit code {parsed.end_code}"
    return JobWithoutTraining(
        parsed.path,
        parsed.header.job_id or parsed.job_id,
        failure,
        cause.number if cause else None,
        parsed.declared_run_name,
        parsed.header.nodelist,
        _iso(last_time(parsed)),
        max(0, parsed.starts - 1),
    )


def _iso(when: datetime | None) -> str | None:
    return when.isoformat(timespec="seconds") if when else None


def _loss_figures(
    run: RunSummary, blocks: list[MetricBlock], steps: np.ndarray, metrics: list[dict[str, Value]]
) -> tuple[np.ndarray, np.ndarray]:
    """First, min and final loss, nan/inf and spikes; returns the loss series (batches, losses)."""
    loss_steps, losses = loss_series(blocks, steps, metrics)
    if len(losses):
        finite = np.isfinite(losses)
        run.loss_first, run.final_train_loss = float(losses[0]), float(losses[-1])
        run.loss_min = float(losses[finite].min()) if finite.any() else None
        bad = np.flatnonzero(~finite)
        run.has_nan, run.first_nan_batch = bool(len(bad)), (int(loss_steps[bad[0]]) if len(bad) else None)
        run.loss_spikes = loss_spikes(loss_steps, losses)
    if run.has_nan:
        run.warnings.append(f"loss is nan or inf from batch {run.first_nan_batch}")
    if run.loss_spikes:
        run.warnings.append(f"loss spikes starting at batch {', '.join(map(str, run.loss_spikes))}")
    return loss_steps, losses


def _throughput_figures(
    run: RunSummary, parsed: ParsedLog, blocks: list[MetricBlock], column: Column, warmup: int
) -> None:
    """World size, the steady-state window, tokens/s, samples/s, step time and Composer's MFU."""
    tokens_per_sec = column(TOKENS_PER_SEC)
    window = window_indices(tokens_per_sec, warmup)
    run.world_size = parsed.header.world_size or world_size_from_throughput(
        tokens_per_sec[window], column(DEVICE_TOKENS_PER_SEC)[window]
    )
    if len(window):
        run.window_batches = [blocks[int(window[0])].step, blocks[int(window[-1])].step]
    else:
        run.warnings.append(
            "no throughput logged: the run ended before Composer's speed window filled "
            f"(or --warmup {warmup} skipped all of it)"
        )
    run.tokens_per_sec = _median(tokens_per_sec[window])
    run.samples_per_sec = _median(_finite(column(SAMPLES_PER_SEC)[window]))
    if run.tokens_per_sec is not None and run.world_size:
        run.tokens_per_sec_per_device = run.tokens_per_sec / run.world_size
    batches_per_sec = _finite(column(BATCHES_PER_SEC)[window])
    step_times = 1.0 / batches_per_sec[batches_per_sec > 0]
    run.step_time_median_s = _median(step_times)
    run.step_time_p10_s, run.step_time_p90_s = _percentile(step_times, 10), _percentile(step_times, 90)
    if run.step_time_median_s and run.step_time_p10_s is not None and run.step_time_p90_s is not None:
        run.step_time_spread = (run.step_time_p90_s - run.step_time_p10_s) / run.step_time_median_s
    run.mfu_logged = _median(_finite(column(LOGGED_MFU)[window]))


def _flops_figures(run: RunSummary, parsed: ParsedLog, gpu: str | None, peak_override: float | None) -> None:
    """TFLOP/s per device, MFU and HFU (or, in ``mfu_note``, why they are unknown)."""
    cfg = parsed.config
    n_layers, d_model = _as_int(cfg.get("n_layers")), _as_int(cfg.get("d_model"))
    run.device_type = gpu or parsed.header.gpu_name or ("cpu" if run.device == "cpu" else None)
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
    elif run.device_type == "cpu":
        run.mfu_note = "MFU not computed: a CPU run has no GPU peak (pass --peak-tflops to compare anyway)"
        return
    else:
        peak = peak_tflops(run.device_type, run.precision)
        if peak.tflops is None:
            run.mfu_note = f"MFU unknown: {peak.reason}"
            return
        run.peak_tflops, run.device_type = peak.tflops, peak.gpu
    run.mfu = run.tflops_per_device / run.peak_tflops
    if run.activation_checkpointing:
        run.hfu = run.mfu * 4 / 3


def _memory_figures(run: RunSummary, column: Column) -> None:
    """The largest peak allocated and reserved memory Composer's memory monitor logged (GB)."""
    for kind, keys in PEAK_MEM_KEYS.items():
        peaks = np.concatenate([_finite(column(key)) for key in keys])
        setattr(run, f"peak_mem_{kind}_gb", float(peaks.max()) if len(peaks) else None)


def _time_to_1t_tokens(run: RunSummary) -> None:
    """Hours (and, for a GPU run, GPU-hours) to train 1e12 tokens at the measured tokens/s."""
    if run.tokens_per_sec:
        run.hours_to_1t_tokens = TOKENS_1T / run.tokens_per_sec / 3600
        if run.world_size and run.device != "cpu":
            run.gpu_hours_to_1t_tokens = run.hours_to_1t_tokens * run.world_size


SHARE_ERRORS = 3  # a drawn share further than this many sampling errors from the plan is a warning


def describe_stream_shares(shares: Sequence[StreamShare]) -> str:
    """Each stream's drawn share against the plan, in words (the run warning of a mismatch)."""
    total = sum(s.drawn_samples for s in shares)
    parts = ", ".join(
        f"{s.name} {100 * s.drawn:.1f}% (planned {100 * s.planned:.1f}% +- {100 * s.sampling_error:.1f})"
        for s in shares
    )
    return f"{parts} of {total:,} samples in batches {shares[0].since_batch + 1}-{shares[0].batch}"


def stream_shares(parsed: ParsedLog) -> list[StreamShare]:
    """Each stream's drawn share against its planned share, from the log's last `StreamDraws` event."""
    draws = [e for _, e in parsed.timing_events if isinstance(e, StreamDraws)]
    if not draws:
        return []
    last = draws[-1]
    total = sum(last.drawn)
    out = []
    for name, planned, samples in zip(last.names, last.planned, last.drawn, strict=True):
        drawn = samples / total if total else 0.0
        error = math.sqrt(planned * (1 - planned) / total) if total else 0.0
        within = total > 0 and abs(drawn - planned) <= SHARE_ERRORS * error + 1e-12
        out.append(StreamShare(name, planned, samples, drawn, error, within, last.since_batch, last.batch))
    return out


EVAL_LOSS_KEY = "metrics/eval/LanguageCrossEntropy"
LABELLED_EVAL_LOSS = re.compile(r"^metrics/eval/(?P<label>.+)/LanguageCrossEntropy$")


def _eval_figures(run: RunSummary, parsed: ParsedLog) -> list[MetricBlock]:
    """The last value of each eval metric; ``final_eval_loss``, the unlabelled eval loader's last loss;
    and each labelled eval loader's (Composer logs ``metrics/eval/<label>/LanguageCrossEntropy`` per
    loader); returns the reporting rank's eval blocks."""
    evals = [b for b in parsed.blocks.get(parsed.reporting_rank, []) if b.kind == "eval"]
    for block in evals:
        run.eval.update({k: float(v) for k, v in block.metrics.items() if isinstance(v, int | float)})
    run.final_eval_loss = run.eval.get(EVAL_LOSS_KEY)
    for key, value in run.eval.items():
        if (m := LABELLED_EVAL_LOSS.match(key)) is not None:
            run.eval_loss_by_domain[m.group("label")] = value
    return evals
