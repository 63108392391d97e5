"""How one figure is shown in a cell of the console or report.md: numbers (`num`, `pct`), the run
tables' columns (`COLUMNS`, `DETAIL_COLUMNS`) and a scaling group's title (`scaling_title`).

Nothing here computes a figure: each cell formats a field of a typed record (`test_case.report.records`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from test_case.report.records import RunSummary, ScalingGroup

SIGNIFICANT_DIGITS = 3  # a number too small for its column's decimals keeps this many (never 0.0 for 0.0118)
DECIMALS = re.compile(r"\.(\d+)f$")


def num(value: float | int | None, fmt: str) -> str:
    """``value`` in ``fmt`` (e.g. ``",.1f"``), or ``-`` for None; a non-zero float that ``fmt`` would
    show with fewer than `SIGNIFICANT_DIGITS` significant digits gets as many decimals as they need."""
    if value is None:
        return "-"
    if isinstance(value, float) and value and math.isfinite(value) and fmt.endswith("f"):
        m = DECIMALS.search(fmt)
        decimals = int(m.group(1)) if m else 6
        if abs(value) < 10 ** (SIGNIFICANT_DIGITS - 1 - decimals):
            places = SIGNIFICANT_DIGITS - 1 - math.floor(math.log10(abs(value)))
            return format(value, f"{',' if ',' in fmt else ''}.{places}f")
    return format(value, fmt)


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal (at least `SIGNIFICANT_DIGITS` significant), or ``-``."""
    return "-" if value is None else num(100 * value, ".1f") + "%"


def in_log(line: int) -> str:
    """Where a failure line is: ``failure_line_number`` is a line number of the log."""
    return f"line {line} of the log"


def _final_eval_loss(r: RunSummary) -> str:
    """The unlabelled eval loader's last loss; a mixture's labelled loaders are listed by domain."""
    if r.final_eval_loss is None and r.eval_loss_by_domain:
        return "by domain"
    return num(r.final_eval_loss, ".4f")


Column = tuple[str, Callable[[RunSummary], str]]
COLUMNS: list[Column] = [
    ("run", lambda r: r.name),
    ("status", lambda r: r.status),
    ("model", lambda r: r.model or "-"),
    ("device", lambda r: r.device_type or "-"),
    ("nodes", lambda r: num(r.nodes, "d")),
    ("world", lambda r: num(r.world_size, "d")),
    ("batches", lambda r: "-" if r.last_batch is None else f"{r.last_batch}/{r.max_duration}"),
    ("final train loss", lambda r: num(r.final_train_loss, ".4f")),
    ("final eval loss", _final_eval_loss),
    ("tokens/s", lambda r: num(r.tokens_per_sec, ",.0f")),
    ("tokens/s/dev", lambda r: num(r.tokens_per_sec_per_device, ",.0f")),
    ("step s", lambda r: num(r.step_time_median_s, ".3f")),
    ("TFLOP/s/dev", lambda r: num(r.tflops_per_device, ".1f")),
    ("MFU", lambda r: pct(r.mfu)),
    ("MFU logged", lambda r: pct(r.mfu_logged)),
]
DETAIL_COLUMNS: list[Column] = [
    ("job", lambda r: r.job_id or "-"),
    ("restarts", lambda r: str(r.restarts)),
    ("params", lambda r: num(r.n_params, ",d")),
    ("precision", lambda r: r.precision or "-"),
    ("seq model/data", lambda r: f"{num(r.max_seq_len, 'd')}/{num(r.dataset_sample_tokens, 'd')}"),
    ("data tokenizer", lambda r: r.dataset_tokenizer or "-"),
    ("samples/s", lambda r: num(r.samples_per_sec, ",.1f")),
    (
        "step p10-p90 s",
        lambda r: "-" if r.step_time_p10_s is None else f"{r.step_time_p10_s:.3f}-{r.step_time_p90_s:.3f}",
    ),
    ("HFU", lambda r: pct(r.hfu)),
    ("loss first/min", lambda r: f"{num(r.loss_first, '.3f')}/{num(r.loss_min, '.3f')}"),
    ("peak mem GB", lambda r: num(r.peak_mem_reserved_gb, ".1f")),
    ("window", lambda r: "-" if not r.window_batches else f"{r.window_batches[0]}-{r.window_batches[1]}"),
    ("hours to 1T tokens", lambda r: num(r.hours_to_1t_tokens, ",.1f")),
    ("GPU-hours to 1T tokens", lambda r: num(r.gpu_hours_to_1t_tokens, ",.0f")),
]


def scaling_title(group: ScalingGroup) -> str:
    """What a scaling group compares, in words: never ``?`` or ``None``."""
    where = group.device_type or "an unknown GPU"
    facts = [
        f"{group.procs_per_node} per node" if group.procs_per_node else None,
        group.precision,
        f"seq {group.max_seq_len}" if group.max_seq_len else None,
        {"slurm": "Slurm jobs", "local": "runs without Slurm"}.get(group.scheduler or ""),
        f"global batch {group.global_batch_size}: strong scaling" if group.global_batch_size else None,
        f"{group.batch_per_device:g} samples per device: weak scaling" if group.batch_per_device else None,
        f"sweep {group.sweep_id}" if group.sweep_id else None,
    ]
    return f"{group.model or 'unknown model'} on {where} ({', '.join(f for f in facts if f)})"
