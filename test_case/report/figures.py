"""The report's figures: one table of every figure it prints, with its unit, formula and the one
function that computes it.

report.md's "How each figure is computed" (`definitions`) and docs/report.md's figure list
(`markdown_table`; tests/test_docs.py checks that the page holds it) are made from `FIGURES`. A new
figure is a row here, computed in the module its row names (`test_case.report.metrics` per run,
`compare` across runs, `stragglers` and `goodput` from rank timing).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One figure of the report (or a few computed together), as the table and report.md show it."""

    name: str  # as the console and report.md print it
    unit: str  # "" for a word or a count
    formula: str  # in one line, for the figure list
    computed_in: str  # the function (in test_case/report/) that computes it: its one home
    explained: str  # report.md's definition, a markdown list item without its "- "


FIGURES: tuple[Figure, ...] = (
    Figure(
        "status",
        "",
        "completed, failed, cancelled, unfinished (running, killed: asked of Slurm or the host)",
        "metrics._status_figures, liveness.refine",
        (
            "**status**: `completed` when the last block is `[batch=T/T]`; `failed` when, since the job's last\n"
            "  start, the log holds a failure line (a traceback, `<program>: error: ...` from srun, slurmstepd or\n"
            "  this suite, Composer's launcher reporting a crashed rank, a torch C++ error) or the job's end line\n"
            "  gives a non-zero exit code; `unfinished` otherwise (still running, or the log was cut off). Only\n"
            "  completed runs are used for scaling and baselines. The failure quoted is the first failure line,\n"
            "  or a rank ended by a signal (`Rank N crashed with exit code -9`) when there is one."
        ),
    ),
    Figure(
        "batches",
        "batches",
        "N/T of the last `[batch=N/T]` block",
        "metrics.summarise_run",
        ("**batches**: N/T of the last `[batch=N/T]` block Composer printed (T is `max_duration`)."),
    ),
    Figure(
        "restarts",
        "",
        "run headers in the log - 1",
        "metrics._identity",
        (
            "**restarts**: starts of the job after its first (run headers in the log - 1). Each restart's\n"
            "  cause and each stop after `MAX_RESTARTS` come from the `[restart]` lines the job printed\n"
            '  (`test_case/restart_events.py`), listed under "Restarts".'
        ),
    ),
    Figure(
        "window",
        "batches",
        "blocks with `throughput/tokens_per_sec`, less the first `--warmup`",
        "metrics.window_indices",
        (
            "**window**: the batches whose blocks carry `throughput/tokens_per_sec` (Composer's SpeedMonitor\n"
            "  logs it once its window of batches has run, and again a window after a resume), minus the first\n"
            "  `--warmup` of them. Every throughput figure below is a median over this window."
        ),
    ),
    Figure(
        "tokens/s, samples/s, tokens/s/dev",
        "tokens/s, samples/s",
        "medians over the window; tokens/s/dev = tokens/s / world size",
        "metrics._throughput_figures",
        (
            "**tokens/s**, **samples/s**: Composer's `throughput/tokens_per_sec` and `throughput/samples_per_sec`\n"
            "  (all ranks together). **tokens/s/dev** = tokens/s / world size."
        ),
    ),
    Figure(
        "step s, p10-p90",
        "s",
        "`1 / throughput/batches_per_sec`: median, 10th and 90th percentiles over the window",
        "metrics._throughput_figures",
        ("**step s**: `1 / throughput/batches_per_sec`; **p10-p90** its 10th and 90th percentiles."),
    ),
    Figure(
        "TFLOP/s/dev",
        "TFLOP/s",
        "`(2 * n_params * seq + n_layers * 2 * 2 * d_model * seq^2) * 3` x samples/s / world size / 1e12",
        "metrics.mpt_flops_per_sample, metrics._flops_figures",
        (
            "**TFLOP/s/dev**: llm-foundry's MPT model FLOPs per sample,\n"
            "  `(2 * n_params * seq + n_layers * 2 * 2 * d_model * seq^2) * 3`, times samples/s, / world size."
        ),
    ),
    Figure(
        "MFU, HFU, MFU logged",
        "fraction",
        "TFLOP/s/dev / peak TFLOP/s (HFU: x 4/3 with activation checkpointing); Composer's `throughput/device/mfu`",
        "metrics._flops_figures",
        (
            "**MFU** = TFLOP/s/dev / peak TFLOP/s of the GPU at the run's precision (dense; table in\n"
            "  `test_case/gpu_peaks.py`). **HFU** counts the recomputed forward of activation checkpointing\n"
            "  (x4 instead of x3). **MFU logged** is Composer's own `throughput/device/mfu` (absent for GPUs\n"
            "  Composer does not know, e.g. H100 NVL)."
        ),
    ),
    Figure(
        "final train loss, loss first/min",
        "loss",
        "last, first and least `loss/train/total`",
        "metrics._loss_figures",
        ("**final train loss**: the last logged `loss/train/total`; **loss first/min** over the run."),
    ),
    Figure(
        "final eval loss",
        "loss",
        "last `metrics/eval/LanguageCrossEntropy` (per labelled loader: by domain)",
        "metrics._eval_figures",
        (
            "**final eval loss**: the last `metrics/eval/LanguageCrossEntropy` of the eval loader; with labelled\n"
            "  eval loaders (a mixture's streams) each label's last `metrics/eval/<label>/LanguageCrossEntropy`\n"
            '  instead, under "Eval loss by domain" (`by domain` in the table).'
        ),
    ),
    Figure(
        "peak mem GB",
        "GB",
        "largest `memory/peak_reserved_mem`",
        "metrics._memory_figures",
        ("**peak mem GB**: the largest `memory/peak_reserved_mem` Composer's memory monitor logged."),
    ),
    Figure(
        "hours to 1T tokens, GPU-hours to 1T tokens",
        "h",
        "1e12 / tokens/s / 3600; x world size (GPU runs)",
        "metrics._time_to_1t_tokens",
        ("**hours to 1T tokens** = 1e12 / tokens/s / 3600; **GPU-hours to 1T tokens** = that x world size (GPU runs)."),
    ),
    Figure(
        "scaling efficiency",
        "fraction",
        "tokens/s/dev / tokens/s/dev of the smallest world size of its series of like runs",
        "compare.scaling_groups, compare.scaling_point",
        (
            "**scaling efficiency** = tokens/s/dev / tokens/s/dev of the smallest run of the same model, GPU,\n"
            "  precision, sequence length, processes per node, scheduler and sweep that holds the same global\n"
            "  batch (strong scaling) or batch per device (weak scaling) (1.0 = linear)."
        ),
    ),
    Figure(
        "baseline ratio",
        "fraction",
        "tokens/s/dev / published tokens/s per GPU of the comparable row",
        "compare.compare_to_baseline",
        (
            "**baseline ratio** = tokens/s/dev / the published tokens/s per GPU for the same GPU, model and GPU\n"
            "  count; `below` when under 1 - tolerance."
        ),
    ),
    Figure(
        "compute s, ratio, straggler",
        "s",
        "per rank the median of its windows, per node of its ranks; ratio = that / median rank",
        "stragglers.stragglers",
        (
            '**compute s** (per node, "Rank timing"): the time a rank spends in the forward pass of its\n'
            "  transformer blocks per batch, which no collective interrupts (the `rank_timing` callback,\n"
            "  `test_case/training/rank_timing.py`): per rank the median over its windows of N batches, per node\n"
            "  the median of its ranks; **ratio** = that / the median over all ranks. A rank whose ratio is above\n"
            "  the straggler threshold (`--straggler-threshold`, 1.15) is a **straggler**."
        ),
    ),
    Figure(
        "goodput",
        "fraction",
        "productive_s / total_s (parts: records.GOODPUT_PARTS)",
        "goodput.goodput",
        (
            "**goodput** = productive / total, where the job's wall time (its first start line to its last end\n"
            "  line, across every restart) is split into start-up (start line to training start, less the\n"
            "  restore), checkpoint restore, checkpoint save, eval, productive (batches not trained again), lost\n"
            "  progress (batches a later start trained again), restart gap (a start's end line to the next start\n"
            "  line) and other (after a start's last batch to its end line: shutdown, a failed start's wait for\n"
            "  its collective timeout). `test_case/report/goodput.py`."
        ),
    ),
)


def definitions() -> str:
    """report.md's "How each figure is computed": one list item per row of `FIGURES`."""
    return "".join(f"- {figure.explained}\n" for figure in FIGURES)


def markdown_table() -> str:
    """docs/report.md's figure list: one row per figure (name, unit, formula, where it is computed)."""
    rows = [f"| {f.name} | {f.unit or '-'} | {f.formula} | `{f.computed_in}` |" for f in FIGURES]
    return (
        "\n".join(["| figure | unit | formula | computed in (`test_case/report/`) |", "|---|---|---|---|", *rows])
        + "\n"
    )
