"""The report's typed records: what `metrics` and `compare` compute and `render` writes.

Each record's fields are report.json's fields (docs/report.md, "report.json"); ``to_dict`` gives the JSON
form. `Report` is the whole report, built once by `cli` and formatted per output by `render`. Nothing
here computes a figure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from test_case.preflight.records import PreflightReport
from test_case.restart_events import RestartEvent
from test_case.run_header import Device

SCHEMA_VERSION = 2  # report.json's

# report.json fields renamed to say what they hold, new name -> old name. Both are written, the old one
# right after the new, with the same value (docs/report.md, "Renamed fields"): scripts that read the
# old name keep working; there is no release process to retire them. report.csv keeps the old column
# where it was and appends the new one (`test_case.report.render.CSV_APPENDED`).
RENAMED_FIELDS: dict[str, str] = {
    "failure_line_number": "failure_line",  # a line number of the log, not a line
    "device_type": "gpu",  # a GPU type (h100-sxm) or "cpu"
    "published_tokens_per_sec_per_gpu": "tokens_per_sec_per_gpu",  # the published row's, not the run's
    "published_mfu_pct": "mfu_pct",  # the published row's MFU in percent
}


def with_old_names(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every renamed field's old name after its new one (`RENAMED_FIELDS`)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        out[key] = value
        if key in RENAMED_FIELDS:
            out[RENAMED_FIELDS[key]] = value
    return out


BaselineStatus = Literal["ok", "below", "no-match", "not-compared"]
# unfinished: no end line, and nothing says whether it still runs; running or killed: Slurm or this
# host's processes say so (`test_case.report.liveness`)
# cancelled: stopped with scancel (slurmstepd's "*** JOB ... CANCELLED AT ... ***" without a reason)
RunStatus = Literal["completed", "failed", "cancelled", "unfinished", "running", "killed"]


@dataclass(frozen=True)
class BaselineVerdict:
    """One run against the published row of the same GPU, model and GPU count (`compare`)."""

    status: BaselineStatus
    reason: str | None = None  # no-match: what was looked for; not-compared: why not
    gpu: str | None = None  # the matched row's GPU, GPU count, global batch, throughput and MFU
    n_gpus: int | None = None
    global_batch_size: int | None = None
    published_tokens_per_sec_per_gpu: float | None = None
    published_mfu_pct: float | None = None
    ratio: float | None = None  # the run's tokens/s per device / the row's tokens/s per GPU
    tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the fields that apply to this status (and the old names of renamed ones)."""
        return with_old_names({k: v for k, v in asdict(self).items() if v is not None})


# The parts of a job's wall time (`Goodput`), in the order the report shows them: (label, field). The one
# list of their names: the console, report.md's table and goodput.png read it.
GOODPUT_PARTS: tuple[tuple[str, str], ...] = (
    ("productive", "productive_s"),
    ("start-up", "startup_s"),
    ("checkpoint save", "checkpoint_save_s"),
    ("checkpoint restore", "checkpoint_restore_s"),
    ("eval", "eval_s"),
    ("lost progress", "lost_progress_s"),
    ("restart gap", "restart_gap_s"),
    ("other", "other_s"),
)


@dataclass(frozen=True)
class Goodput:
    """Where a job's wall time went, across its starts (`goodput`; the parts add up to ``total_s``)."""

    total_s: float  # first start line to the last end line
    productive_s: float  # batches that were not trained again
    startup_s: float  # start line to training start, less the restore
    checkpoint_save_s: float
    checkpoint_restore_s: float
    eval_s: float
    lost_progress_s: float  # batches a later start trained again
    restart_gap_s: float  # from a start's end line to the next start line
    other_s: float  # the rest: after a start's last batch to its end line
    goodput: float | None  # productive / total
    lost_progress_batches: int = 0
    starts: int = 1

    def parts(self) -> dict[str, float]:
        """The parts of ``total_s`` (`GOODPUT_PARTS`), by field name: they add up to it."""
        return {name: getattr(self, name) for _, name in GOODPUT_PARTS}

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


@dataclass(frozen=True)
class Straggler:
    """A rank whose median compute time is more than the threshold above the median of all ranks."""

    node: str
    rank: int
    median_compute_s: float
    ratio_to_median: float


@dataclass(frozen=True)
class NodeCompute:
    """One node's median compute time per batch (over its ranks), against the median of all ranks."""

    node: str
    ranks: int
    median_compute_s: float
    ratio_to_median: float
    straggler: bool  # holds a flagged rank


@dataclass(frozen=True)
class StreamShare:
    """One stream of a mixture: the share of the samples training drew from it against the planned share."""

    name: str
    planned: float  # the dataset's share of an epoch's samples for this stream
    drawn_samples: int  # samples the train loader read from it (all ranks; last start, see since_batch)
    drawn: float  # drawn_samples over all streams' drawn samples
    sampling_error: float  # the binomial standard error of ``drawn``: sqrt(planned * (1 - planned) / samples)
    within_error: bool  # |drawn - planned| <= 3 sampling errors
    since_batch: int  # the batches counted are since_batch + 1 to batch
    batch: int


@dataclass
class VerdictJob:
    """One training job of an acceptance sweep, as the verdict judged it (`test_case.report.verdict`)."""

    job_id: str
    model: str | None
    nodes: int
    status: str  # completed, failed, unfinished, did not train, never ran
    slurm_state: str | None = None  # for a job without a log: what Slurm says of it
    tokens_per_sec_per_device: float | None = None
    mfu: float | None = None
    baseline: str | None = None  # ok, below, no-match, not-compared
    baseline_ratio: float | None = None
    own_baseline: str | None = None  # with --own-baseline: ok, below, no-match, not-compared
    own_baseline_ratio: float | None = None
    scaling_efficiency: float | None = None  # its point's in `compare.scaling_groups` (None: not a point)
    stragglers: list[str] = field(default_factory=list)  # nodes
    goodput: float | None = None
    restarts: int = 0
    reasons: list[str] = field(default_factory=list)  # why this job fails the sweep


@dataclass
class Verdict:
    """An acceptance sweep's verdict: PASS, or FAIL with every reason."""

    sweep_id: str
    status: Literal["PASS", "FAIL"]
    reasons: list[str]
    jobs: list[VerdictJob]
    nodes: dict[str, str]  # host -> preflight status (pass, fail), or straggler
    fabric: list[dict[str, object]]  # the preflight's collectives: peak busbw against expectation
    notes: list[str] = field(default_factory=list)  # said without judging: what was not compared, and why

    def to_dict(self) -> dict[str, Any]:
        """JSON form (report.json ``verdict``)."""
        return asdict(self)


@dataclass(frozen=True)
class JobWithoutTraining:
    """A training job whose log holds no train metrics: it failed (or is still starting) before."""

    log_file: str
    job_id: str | None
    failure: str | None  # the line that says why, if the log has one
    failure_line_number: int | None  # its line number in the log
    run_name: str | None = None  # the run header's
    nodelist: str | None = None  # the run header's: Slurm hostlist, or the host outside Slurm
    log_ends_at: str | None = None  # the last time the log printed (ISO 8601)
    restarts: int = 0  # starts after the first that the log shows (a requeued job)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (and the old names of renamed fields)."""
        return with_old_names(asdict(self))


@dataclass(frozen=True)
class ScalingPoint:
    """The best run of a scaling group at one world size."""

    world_size: int
    nodes: int | None
    run: str
    tokens_per_sec_per_device: float
    efficiency: float  # tokens/s per device / that of the group's smallest world size


@dataclass(frozen=True)
class ScalingGroup:
    """Completed runs of one model, device (GPU type or cpu), precision, sequence length, processes per
    node, scheduler, batch per device and sweep at two or more world sizes."""

    model: str | None
    device_type: str | None  # the GPU table key (h100-sxm), or "cpu"
    precision: str | None
    max_seq_len: int | None
    procs_per_node: int | None
    scheduler: str | None
    points: tuple[ScalingPoint, ...]
    global_batch_size: int | None = None  # the global batch every point trained (strong scaling), or None
    batch_per_device: float | None = None  # the global batch / world size every point trained (weak scaling)
    sweep_id: str | None = None  # the acceptance sweep its runs belong to (None: runs outside a sweep)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return with_old_names(asdict(self) | {"points": [asdict(p) for p in self.points]})


@dataclass
class RunSummary:
    """The figures of one run, as written to report.json (docs/report.md, "report.json")."""

    name: str
    log_file: str
    job_id: str | None = None
    model: str | None = None
    status: RunStatus = "unfinished"  # see metrics._status_figures and liveness.refine
    failure: str | None = None  # the line that says why it failed
    failure_line_number: int | None = None  # its line number in the log
    device: Device | None = None  # "gpu" or "cpu", from the run header
    device_type: str | None = None  # the GPU type (a key of test_case.gpu_peaks), or "cpu"
    n_params: int | None = None
    world_size: int | None = None
    nodes: int | None = None
    procs_per_node: int | None = None
    scheduler: Literal["slurm", "local"] | None = None  # a Slurm job, or the script run without Slurm
    precision: str | None = None
    max_seq_len: int | None = None
    nodelist: str | None = None  # Slurm hostlist, or the host outside Slurm (run header)
    log_ends_at: str | None = None  # the last time the log printed (ISO 8601): where a killed run stopped
    dataset_sample_tokens: int | None = None  # tokens per sample of the training data (run header)
    dataset_tokenizer: str | None = None  # the tokenizer the training data was made with (run header)
    eval_data_overlap: str | None = None  # eval data made from the training data's input files (run header)
    global_batch_size: int | None = None
    activation_checkpointing: bool = False
    microbatch: int | None = None  # device_train_microbatch_size
    fsdp_sharding: str | None = None  # fsdp_config.sharding_strategy (FULL_SHARD, ...)
    fsdp_mixed_precision: str | None = None  # fsdp_config.mixed_precision: llm-foundry's "MP Mode" (PURE, DEFAULT)
    attn_impl: str | None = None  # model.attn_config.attn_impl: flash, torch, triton
    alibi: bool | None = None  # model.attn_config.alibi
    flash_attn: str | None = None  # flash-attn's version where the run ran (run header), or "not installed"
    cuda: str | None = None  # run header: the CUDA torch was built for
    nccl: str | None = None  # run header: the NCCL wheel torch loads
    driver: str | None = None  # run header: the NVIDIA driver on node 0
    nccl_network: str | None = None  # run header: the networks NCCL will try on node 0 (plugin, IB, sockets)
    cluster: str | None = None  # run header: SLURM_CLUSTER_NAME (None outside Slurm or in older logs)
    started_at: str | None = None  # run header: when the last start began (UTC ISO 8601)
    torch: str | None = None  # run header: the software versions of the last start
    composer: str | None = None
    llm_foundry: str | None = None
    image: str | None = None  # run header: the container image, or "none (bare-metal venv)"
    git_commit: str | None = None  # run header: the suite's checkout
    restarts: int = 0
    restart_events: list[RestartEvent] = field(default_factory=list)  # test_case.restart_events, as logged
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
    final_eval_loss: float | None = None  # the last metrics/eval/LanguageCrossEntropy (the unlabelled eval loader)
    # the last eval loss of each labelled eval loader (one per stream of a mixture, by its name)
    eval_loss_by_domain: dict[str, float] = field(default_factory=dict)
    # the samples drawn from each stream of a mixture against its planned share (test_case.report.metrics)
    stream_shares: list[StreamShare] = field(default_factory=list)
    stream_shares_within_error: bool | None = None  # every stream's drawn share within error; None without a mixture
    sweep_id: str | None = None  # the acceptance sweep whose manifest lists this job (None: none)
    baseline: BaselineVerdict | None = None
    # with --own-baseline: against the median of the cluster's own last passing runs of this configuration
    own_baseline: BaselineVerdict | None = None
    stragglers: list[Straggler] = field(
        default_factory=list
    )  # flagged ranks, slowest first (test_case.report.stragglers)
    node_compute: list[NodeCompute] = field(default_factory=list)  # every node, slowest first
    straggler_threshold: float | None = None  # the ratio above which a rank is flagged
    goodput: Goodput | None = None  # test_case.report.goodput
    warnings: list[str] = field(default_factory=list)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)  # batches, values

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the per-batch series, which only the plots use)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "series":
                continue
            if isinstance(value, BaselineVerdict | Goodput):
                value = value.to_dict()
            elif f.name in ("stragglers", "node_compute", "stream_shares", "restart_events"):
                value = [asdict(v) for v in value]
            elif isinstance(value, list | dict):
                value = value.copy()
            out[f.name] = value
        return with_old_names(out)


@dataclass
class Report:
    """The whole report: what the console, report.md, report.csv and report.json are formatted from
    (`test_case.report.render`). Its fields but ``plots`` are report.json's top-level keys."""

    inputs: list[str] = field(default_factory=list)  # the paths given
    files_without_runs: list[str] = field(default_factory=list)  # log files without train metrics
    jobs_without_training: list[JobWithoutTraining] = field(default_factory=list)
    runs: list[RunSummary] = field(default_factory=list)  # in the order of their Slurm job ids
    scaling: list[ScalingGroup] = field(default_factory=list)
    preflight: list[PreflightReport] = field(default_factory=list)
    verdict: Verdict | None = None  # an acceptance sweep's, where a manifest was found
    plots: list[Path] = field(default_factory=list)  # the PNGs written beside report.md

    def to_dict(self) -> dict[str, Any]:
        """JSON form (report.json, before non-finite numbers become null)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "inputs": list(self.inputs),
            "files_without_runs": list(self.files_without_runs),
            "jobs_without_training": [j.to_dict() for j in self.jobs_without_training],
            "runs": [r.to_dict() for r in self.runs],
            "scaling": [g.to_dict() for g in self.scaling],
            "preflight": [asdict(pf) for pf in self.preflight],
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
        }
