"""Figures of a run: steady-state window, medians, world size; report.py writes what it prints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.published_runs import DEFAULT_BASELINE, load_baseline
from test_case.report.cells import scaling_title
from test_case.report.compare import compare_to_baseline
from test_case.report.log_lines import parse_composer_log
from test_case.report.metrics import steady_state_window, summarise_run
from test_case.report.plots import scaling_file_names
from test_case.report.records import RunSummary
from tests.conftest import REPO_ROOT


def make_log(batches: int = 8, window: int = 3, world: int = 2, nan_at: int | None = None) -> list[str]:
    """A Composer-shaped log: throughput appears once the speed window has filled."""
    lines = ["[run-header] job_id: 77", "[run-header] model: mpt-tiny-cpu", f"[run-header] world_size: {world}"]
    for n in range(1, batches + 1):
        loss = "nan" if nan_at is not None and n >= nan_at else f"{10 - n * 0.5:.4f}"
        lines += [f"[batch={n}/{batches}]:", f"\t Train loss/train/total: {loss}"]
        if n > window:
            tps = 1000.0 * n  # grows, so the median is easy to check
            lines += [
                f"\t Train throughput/tokens_per_sec: {tps:.4f}",
                f"\t Train throughput/device/tokens_per_sec: {tps / world:.4f}",
                f"\t Train throughput/batches_per_sec: {n / 10:.4f}",
            ]
    return lines


def gpu_log(world: int = 16, samples_per_sec: float = 80.0, mfu_logged: float | None = 0.4) -> list[str]:
    """An 8-GPU-per-node H100 run of MPT-125M shape with llm-foundry's config dump."""
    lines = [
        "[run-header] job_id: 9",
        "[run-header] model: mpt-125m",
        f"[run-header] world_size: {world}",
        "[run-header] gpus_per_node: 8",
        "[run-header] gpu_name: NVIDIA H100 80GB HBM3",
        "n_params: 125000000",
        "max_seq_len: 2048",
        "  d_model: 768",
        "  n_layers: 12",
        "precision: amp_bf16",
        "global_train_batch_size: 256",
        "  activation_checkpointing: true",
    ]
    for n in range(1, 21):
        lines += [
            f"[batch={n}/20]:",
            "	 Train loss/train/total: 3.0000",
            f"	 Train memory/peak_reserved_mem: {60 + n / 10:.4f}",
        ]
        if n > 10:
            lines += [
                f"	 Train throughput/tokens_per_sec: {samples_per_sec * 2048:.4f}",
                f"	 Train throughput/samples_per_sec: {samples_per_sec:.4f}",
                f"	 Train throughput/batches_per_sec: {samples_per_sec / 256:.4f}",
            ]
            if mfu_logged is not None:
                lines.append(f"	 Train throughput/device/mfu: {mfu_logged:.4f}")
    return lines


def test_mfu_hfu_and_time_to_1t_tokens_from_the_config_dump() -> None:
    run = summarise_run(parse_composer_log(gpu_log()))
    flops_per_sample = (2 * 125e6 * 2048 + 12 * 2 * 2 * 768 * 2048**2) * 3
    assert run.tflops_per_device is not None and run.mfu is not None and run.hours_to_1t_tokens is not None
    assert run.tflops_per_device == pytest.approx(flops_per_sample * 80 / 16 / 1e12)
    assert run.device_type == "h100-sxm" and run.peak_tflops == 989.5
    assert run.mfu == pytest.approx(run.tflops_per_device / 989.5)
    assert run.hfu == pytest.approx(run.mfu * 4 / 3)  # activation checkpointing recomputes the forward
    assert run.mfu_logged == 0.4 and run.peak_mem_reserved_gb == 62.0
    assert run.tokens_per_sec_per_device == pytest.approx(80 * 2048 / 16)
    assert run.hours_to_1t_tokens == pytest.approx(1e12 / (80 * 2048) / 3600)
    assert run.gpu_hours_to_1t_tokens == pytest.approx(run.hours_to_1t_tokens * 16)
    assert run.completed and run.restarts == 0


def test_mfu_is_unknown_with_a_reason_never_against_a_wrong_peak() -> None:
    unknown = [line.replace("H100 80GB HBM3", "GeForce RTX 3080") for line in gpu_log()]
    run = summarise_run(parse_composer_log(unknown))
    assert run.mfu is None and run.tflops_per_device is not None
    assert "no peak known for GPU 'NVIDIA GeForce RTX 3080'" in run.mfu_note
    forced = summarise_run(parse_composer_log(unknown), peak_override=100.0)
    assert forced.tflops_per_device is not None
    assert forced.mfu == pytest.approx(forced.tflops_per_device / 100.0)
    nvl = summarise_run(parse_composer_log(gpu_log(mfu_logged=None)), gpu="NVIDIA H100 NVL")
    assert nvl.device_type == "h100-nvl" and nvl.peak_tflops == 835.5 and nvl.mfu_logged is None
    no_config = [line for line in gpu_log() if not line.startswith(("n_params", "  n_layers"))]
    assert "no llm-foundry config dump with n_params, n_layers" in summarise_run(parse_composer_log(no_config)).mfu_note


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "h100-nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
        ("a100-80gb", "a100-80gb"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GB200", "gb200"),
        ("NVIDIA H200 NVL", "h200-nvl"),
        ("AMD Instinct MI300X", "mi300x"),
        ("AMD Instinct MI300X VF", "mi300x"),
        ("AMD Instinct MI325X", "mi325x"),
        ("Tesla T4", None),
    ],
)
def test_gpu_names_map_to_peaks(name: str, key: str | None) -> None:
    from test_case.gpu_peaks import gpu_key

    assert gpu_key(name) == key


def test_peaks_agree_with_composers_table_and_fp32_is_what_composer_divides_by() -> None:
    """Where Composer 0.32.1 (the pinned one) knows a GPU, our peak for each precision is its number,
    so that our MFU and its logged throughput/device/mfu agree; fp32 is the FP32 rate, not TF32's."""
    from composer.callbacks.speed_monitor import GPU_AVAILABLE_FLOPS

    from test_case.gpu_peaks import peak_tflops

    theirs = {"h100-sxm": "h100-sxm", "h100-pcie": "h100-pcie", "h200": "h200-sxm", "a100-80gb": "a100"}
    for ours, key in theirs.items():
        for precision in ("fp32", "amp_bf16", "amp_fp16", "amp_fp8"):
            flops = GPU_AVAILABLE_FLOPS[key].get(precision)
            peak = peak_tflops(ours, precision)
            assert (peak.tflops, flops is None) == ((None, True) if flops is None else (flops / 1e12, False)), (
                ours,
                precision,
            )
    assert peak_tflops("NVIDIA H100 80GB HBM3", "fp32").tflops == 67.0  # 494.5 was the TF32 rate: 7.4x
    assert peak_tflops("NVIDIA B200", "amp_bf16").tflops == 2250.0  # 4.5 PF with sparsity, halved
    assert peak_tflops("NVIDIA GB200", "amp_fp8").tflops == 5000.0
    assert peak_tflops("NVIDIA H200 NVL", "amp_bf16").tflops == 835.5  # Composer takes it for an SXM (989.5)
    assert peak_tflops("AMD Instinct MI300X", "amp_fp16").tflops == 1307.4  # AMD prints dense
    assert (
        peak_tflops("NVIDIA A100-SXM4-80GB", "amp_fp8").reason == "no amp_fp8 peak for a100-80gb; pass --peak-tflops X"
    )


def test_loss_spikes_start_batches() -> None:
    from test_case.report.metrics import loss_spikes

    losses = [3.0] * 20 + [4.0, 4.1, 3.0, 3.0, 5.0]
    assert loss_spikes(range(1, 26), losses) == [21, 25]
    assert loss_spikes(range(1, 40), [3.0 + 0.1 * (n % 2) for n in range(1, 40)]) == []
    assert loss_spikes(range(1, 26), [3.0] * 19 + [math.nan, 9.0] + [3.0] * 4) == []  # nan in the lookback


def test_window_starts_when_throughput_appears_and_skips_warmup() -> None:
    blocks = parse_composer_log(make_log()).train_blocks
    assert [b.step for b in steady_state_window(blocks)] == [4, 5, 6, 7, 8]
    assert [b.step for b in steady_state_window(blocks, warmup=2)] == [6, 7, 8]


def test_summary_figures() -> None:
    run = summarise_run(parse_composer_log(make_log()))
    assert (run.job_id, run.model, run.world_size, run.last_batch, run.max_duration) == ("77", "mpt-tiny-cpu", 2, 8, 8)
    assert run.tokens_per_sec == 6000.0  # median of 4000..8000
    assert run.tokens_per_sec_per_device == 3000.0
    assert run.step_time_median_s == pytest.approx(10 / 6)
    assert run.final_train_loss == 6.0 and not run.has_nan and run.warnings == []
    assert run.loss_first == 9.5 and run.loss_min == 6.0
    assert run.window_batches == [4, 8]


def test_world_size_from_composer_ratio_without_header() -> None:
    lines = [line for line in make_log(world=4) if not line.startswith("[run-header]")]
    assert summarise_run(parse_composer_log(lines)).world_size == 4


def test_nan_and_short_runs_are_flagged() -> None:
    run = summarise_run(parse_composer_log(make_log(nan_at=7)))
    assert run.has_nan and run.first_nan_batch == 7 and "loss is nan or inf from batch 7" in run.warnings
    short = summarise_run(parse_composer_log(make_log(batches=3)))
    assert short.tokens_per_sec is None and any("speed window" in w for w in short.warnings)


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "report.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
    )


def test_report_cli_writes_json_csv_markdown(tmp_path: Path) -> None:
    (tmp_path / "mpt-train_77.out").write_text("\n".join(make_log()) + "\n")
    (tmp_path / "notes.txt").write_text("nothing to see\n")
    out = run_report(str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "mpt-tiny-cpu" in out.stdout and "6,000" in out.stdout and "no runs in" in out.stdout
    doc = json.loads((tmp_path / "report.json").read_text())
    (run,) = doc["runs"]
    for key in (
        "name",
        "job_id",
        "model",
        "n_params",
        "world_size",
        "last_batch",
        "max_duration",
        "final_train_loss",
        "has_nan",
        "tokens_per_sec",
        "tokens_per_sec_per_device",
        "step_time_median_s",
        "eval",
        "warnings",
    ):
        assert key in run
    assert run["tokens_per_sec"] == 6000.0 and doc["files_without_runs"] == [str(tmp_path / "notes.txt")]
    assert "tokens_per_sec" in (tmp_path / "report.csv").read_text().splitlines()[0]
    assert "How each figure is computed" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "mpt-train_77.png").stat().st_size > 10_000  # loss and throughput plot


def test_report_cli_exit_codes(tmp_path: Path) -> None:
    assert run_report(str(tmp_path / "missing")).returncode == 2
    (tmp_path / "empty.log").write_text("no blocks\n")
    assert run_report(str(tmp_path)).returncode == 1


def write_run(folder: Path, name: str, world: int, samples_per_sec: float) -> None:
    lines = [line.replace("job_id: 9", f"job_id: {name}") for line in gpu_log(world, samples_per_sec)]
    (folder / f"{name}.out").write_text("\n".join([f"[run-header] run_name: {name}", *lines]) + "\n")


def test_scaling_and_baseline_gate(tmp_path: Path) -> None:
    write_run(tmp_path, "n1", 8, 40.0)  # 10,240 tokens/s per GPU
    write_run(tmp_path, "n2", 16, 72.0)  # 9,216 tokens/s per GPU: 90 % efficiency
    baseline = tmp_path / "base.csv"
    baseline.write_text(
        "gpu,model,seq_len,n_gpus,global_batch_size,precision,mfu_pct,tokens_per_sec_per_gpu\n"
        "h100-80gb,mpt-125m,2048,8,256,amp_bf16,40.0,10000\n"
        "h100-80gb,mpt-125m,2048,16,256,amp_bf16,40.0,11000\n"
    )
    out = run_report(str(tmp_path), "--baseline", str(baseline), "--out", str(tmp_path / "r"))
    assert out.returncode == 3, out.stdout + out.stderr  # n2 is 16 % below its row
    assert "baseline n1: OK 102.4% of 10,000" in out.stdout and "baseline n2: BELOW 83.8% of 11,000" in out.stdout
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    (group,) = doc["scaling"]
    assert [(p["world_size"], round(p["efficiency"], 3)) for p in group["points"]] == [(8, 1.0), (16, 0.9)]
    assert (tmp_path / "r" / "scaling-mpt-125m-h100-sxm.png").is_file()
    assert (
        run_report(
            str(tmp_path), "--baseline", str(baseline), "--tolerance", "0.2", "--out", str(tmp_path / "r2")
        ).returncode
        == 0
    )
    assert run_report(str(tmp_path), "--baseline", "--out", str(tmp_path / "r3")).returncode == 0  # shipped CSV


def seven_b_log(microbatch: int, checkpointing: bool, mp_mode: str, samples_per_sec: float = 41.0) -> list[str]:
    """An 8-GPU H100 run of MPT-7B with the configuration given, as llm-foundry dumps it."""
    lines = [line.replace("mpt-125m", "mpt-7b") for line in gpu_log(8, samples_per_sec)]
    lines = [line for line in lines if "activation_checkpointing" not in line]
    at = lines.index("global_train_batch_size: 256")
    return [
        *lines[:at],
        f"device_train_microbatch_size: {microbatch}",
        "model:",
        "  attn_config:",
        "    attn_impl: flash",
        "    alibi: true",
        "fsdp_config:",
        "  sharding_strategy: FULL_SHARD",
        f"  mixed_precision: {mp_mode}",
        f"  activation_checkpointing: {str(checkpointing).lower()}",
        *lines[at:],
    ]


def test_the_baseline_gate_compares_only_the_published_configuration() -> None:
    rows = load_baseline(DEFAULT_BASELINE)
    (published,) = [r for r in rows if (r.gpu, r.model, r.n_gpus, r.seq_len) == ("h100-80gb", "mpt-7b", 8, 2048)]
    # llm-foundry's sweep: 7B on 8 H100, microbatch 6, no activation checkpointing, MP DEFAULT, 46.44 % MFU
    assert (published.microbatch, published.activation_checkpointing, published.mp_mode) == (6, False, "DEFAULT")
    assert (published.mfu_pct, published.tokens_per_sec_per_gpu, published.sharding_strategy) == (
        46.44,
        10643,
        "FULL_SHARD",
    )
    assert len(rows) == 216 and {r.gpu for r in rows} == {"h100-80gb", "a100-80gb", "a100-40gb"}

    ours = summarise_run(parse_composer_log(seven_b_log(8, True, "PURE")))  # yamls/mpt-7b.yaml's setup
    assert (ours.microbatch, ours.activation_checkpointing, ours.fsdp_mixed_precision) == (8, True, "PURE")
    verdict = compare_to_baseline(ours, rows, 0.10)
    assert verdict.status == "no-match" and verdict.ratio is None
    assert verdict.reason == (
        "no comparable row: the published mpt-7b on 8 h100-80gb ran precision amp_bf16, microbatch 6, "
        "activation checkpointing off, FSDP sharding FULL_SHARD, FSDP mixed precision DEFAULT; this run "
        "differs: microbatch 6 published, 8 here; activation checkpointing off published, on here; "
        "FSDP mixed precision DEFAULT published, PURE here"
    )
    # the published configuration is compared: 41 samples/s x 2048 / 8 GPUs = 10,496 tokens/s per GPU
    same = summarise_run(parse_composer_log(seven_b_log(6, False, "DEFAULT")))
    verdict = compare_to_baseline(same, rows, 0.10)
    assert verdict.status == "ok" and verdict.ratio == pytest.approx(10496 / 10643)
    # what ran, stated per run: the configuration and the attention kernel
    from test_case.report.records import Report
    from test_case.report.sections import setup

    header = ["[run-header] job_id: 9", "[run-header] flash_attn: 2.7.4.post1"]
    stated = summarise_run(parse_composer_log([*header, *seven_b_log(8, True, "PURE")[1:]]))
    assert (stated.attn_impl, stated.alibi, stated.flash_attn) == ("flash", True, "2.7.4.post1")
    assert list(setup(Report(runs=[stated])).console) == [
        f"setup {stated.name}: precision amp_bf16, microbatch 8, activation checkpointing on, FSDP FULL_SHARD / PURE, "
        "attention flash with ALiBi, flash-attn 2.7.4.post1"
    ]
    stack = ["[run-header] driver: 570.124.06", "[run-header] cuda: 12.8", "[run-header] nccl: 2.26.2"]
    with_stack = summarise_run(parse_composer_log([*header, *stack, *seven_b_log(8, True, "PURE")[1:]]))
    (line,) = setup(Report(runs=[with_stack])).console
    assert str(line).endswith("flash-attn 2.7.4.post1; driver 570.124.06, CUDA 12.8, NCCL 2.26.2")
    plugin = "[run-header] nccl_network: plugin libnccl-net.so (/opt/aws-ofi-nccl/install/lib/libnccl-net.so)"
    with_net = summarise_run(parse_composer_log([*header, *stack, plugin, *seven_b_log(8, True, "PURE")[1:]]))
    (line,) = setup(Report(runs=[with_net])).console
    assert str(line).endswith(
        "NCCL 2.26.2; NCCL network plugin libnccl-net.so (/opt/aws-ofi-nccl/install/lib/libnccl-net.so)"
    )
    slow = summarise_run(parse_composer_log(seven_b_log(6, False, "DEFAULT", samples_per_sec=30.0)))
    assert compare_to_baseline(slow, rows, 0.10).status == "below"


def test_bad_baseline_is_a_clear_error(tmp_path: Path) -> None:
    write_run(tmp_path, "n1", 8, 40.0)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "gpu,model,seq_len,n_gpus,global_batch_size,precision,mfu_pct,tokens_per_sec_per_gpu\n"
        "h100-80gb,mpt-125m,2048,eight,256,amp_bf16,40.0,10000\n"
    )
    out = run_report(str(tmp_path), "--baseline", str(bad))
    assert out.returncode == 2 and f"{bad}:2:" in out.stderr and "Traceback" not in out.stderr


def test_nan_run_writes_valid_json(tmp_path: Path) -> None:
    (tmp_path / "x.out").write_text("\n".join(make_log(nan_at=1)) + "\n")
    assert run_report(str(tmp_path), "--no-plots").returncode == 0
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    assert run["has_nan"] is True and run["final_train_loss"] is None and run["first_nan_batch"] == 1


GOLDEN = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["slurm-2node-mpt-tiny-cpu.out.gz", "slurm-2node-requeued-usr1.out.gz"])
def test_golden_logs_from_this_projects_two_node_runs(name: str) -> None:
    """Real logs of the tiny MPT on the local 2-node Slurm cluster (tests/test_slurm_integration.py)."""
    import gzip
    import statistics

    from test_case.report.metrics import DEVICE_TOKENS_PER_SEC

    with gzip.open(GOLDEN / name, "rt") as fh:
        parsed = parse_composer_log(fh, name)
    run = summarise_run(parsed)
    assert (run.world_size, run.last_batch, run.max_duration, run.n_params) == (2, 60, 60, 918144)
    assert run.final_train_loss == 6.3779 and run.completed and not run.has_nan  # same end, requeued or not
    window = steady_state_window(parsed.train_blocks)
    composer_device = statistics.median(float(b.metrics[DEVICE_TOKENS_PER_SEC]) for b in window)
    assert run.tokens_per_sec_per_device == pytest.approx(composer_device, rel=1e-3)
    composer_flops = statistics.median(float(b.metrics["throughput/flops_per_sec"]) for b in window)
    assert run.tflops_per_device is not None
    assert run.tflops_per_device * 1e12 * 2 == pytest.approx(composer_flops, rel=1e-3)  # our formula = Composer's
    assert run.mfu is None and run.mfu_note.startswith("MFU not computed: a CPU run")
    requeued = "requeued" in name
    assert run.restarts == (1 if requeued else 0)
    assert run.window_batches == ([21, 60] if requeued else [11, 60])


def golden_variant(job: int, cut_before: str | None = None, tail: tuple[str, ...] = (), source: str = "") -> str:
    """The real uninterrupted 2-node log (job 2) as job ``job``, cut before the first line starting
    with ``cut_before``, followed by ``tail``."""
    import gzip

    text = gzip.decompress((GOLDEN / (source or "slurm-2node-mpt-tiny-cpu.out.gz")).read_bytes()).decode()
    text = text.replace("mpt-train-2", f"mpt-train-{job}").replace("job 2 ", f"job {job} ")
    text = text.replace("[run-header] job_id: 2\n", f"[run-header] job_id: {job}\n")
    if cut_before is not None:
        text = text[: text.index("\n" + cut_before) + 1]
    return text + "".join(line + "\n" for line in tail)


CRASH = (  # rank 1 dies mid-run, as Composer's launcher and srun report it
    "1: Traceback (most recent call last):",
    '1:   File "/venv/lib/python3.11/site-packages/composer/trainer/trainer.py", line 2291, in fit',
    "1:     self._train_loop()",
    "1: RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.1.1]:2",
    "0: ERROR:composer.cli.launcher:Rank 1 crashed with exit code 1.",
    "srun: error: node2: task 1: Exited with exit code 1",
    "[2026-11-22T05:43:40+00:00] job 3 end: exit code 1 after 44 s",
)
KILLED = (  # kill -9 of rank 1 on the local cluster (test_slurm_integration): its peer's error comes first
    "0: [rank0]: RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:525] Read error "
    "[127.0.0.1]:10425: Connection reset by peer",
    "1: ERROR:composer.cli.launcher:Rank 1 crashed with exit code -9.",
    "1: Waiting up to 30 seconds for all training processes to terminate. Press Ctrl-C to exit immediately.",
    "1: ERROR:composer.cli.launcher:Global rank 1 (PID 10641) exited with code -9",
    "srun: error: node2: task 1: Exited with exit code 247",
    "0: slurmstepd-node1: error: *** STEP 6.1 ON node1 CANCELLED AT 2026-12-01T13:28:11 ***",
    "0: Traceback (most recent call last):",
    "0: SystemExit: 143",
    "[2026-12-01T13:28:13+00:00] job 3 end: exit code 247 after 27 s",
)
NEVER_STARTED = (
    "[2026-11-22T06:00:00+00:00] job 12 start 0 on node[1-2]",
    "0: launch: error: node 0: train_loader: dataset split 'train_small' not found at /fsx/no/train_small/index.json",
    "1: launch: error: node 1: train_loader: dataset split 'train_small' not found at /fsx/no/train_small/index.json",
    "srun: error: node1: task 0: Exited with exit code 2",
    "[2026-11-22T06:00:04+00:00] job 12 end: exit code 2 after 4 s",
)


def test_run_status_completed_failed_unfinished_and_requeued_from_real_logs() -> None:
    done = summarise_run(parse_composer_log(golden_variant(2).splitlines()))
    assert (done.status, done.failure, done.completed) == ("completed", None, True)
    failed = summarise_run(parse_composer_log(golden_variant(3, "0: [batch=31/60]:", CRASH).splitlines()))
    assert (failed.status, failed.last_batch, failed.completed) == ("failed", 30, False)
    assert failed.failure == CRASH[3] and failed.failure_line_number is not None
    assert golden_variant(3, "0: [batch=31/60]:", CRASH).splitlines()[failed.failure_line_number - 1] == CRASH[3]
    assert any(w.startswith("FAILED at batch 30/60: 1: RuntimeError:") for w in failed.warnings)
    # a rank killed by a signal is the cause; its peer's connection error only a consequence
    killed = summarise_run(parse_composer_log(golden_variant(3, "0: [batch=31/60]:", KILLED).splitlines()))
    assert (killed.status, killed.failure) == ("failed", KILLED[1])
    # a rank that exited with an error of its own: its exception names the cause, not the launcher
    assert failed.failure != CRASH[4]
    cut = summarise_run(parse_composer_log(golden_variant(5, "1: [batch=31/60]:").splitlines()))
    assert (cut.status, cut.failure, cut.last_batch) == ("unfinished", None, 31)  # rank 0 logged batch 31
    # a non-zero end line alone is a failure too
    ended = summarise_run(parse_composer_log(golden_variant(6, "0: [batch=31/60]:", CRASH[-1:]).splitlines()))
    assert (ended.status, ended.failure) == ("failed", "the job ended with exit code 1")
    # the first start of the requeued job was stopped (its end line says so); the second completed
    requeued = parse_composer_log(golden_variant(4, source="slurm-2node-requeued-usr1.out.gz").splitlines())
    first_end = "[2026-11-22T05:45:02+00:00] job 4 end: exit code 143 (stopped by SIGTERM) after 21 s"
    text = golden_variant(4, source="slurm-2node-requeued-usr1.out.gz").replace(
        "\n[2026-11-22T05:45:15+00:00] job 4 start 1", f"\n{first_end}\n[2026-11-22T05:45:15+00:00] job 4 start 1"
    )
    assert first_end in text
    again = summarise_run(parse_composer_log(text.splitlines()))
    assert (again.status, again.restarts, again.failure) == ("completed", 1, None)
    assert summarise_run(requeued).status == "completed"


def test_report_of_completed_failed_never_started_and_requeued_runs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mpt-train_10.out").write_text(golden_variant(10))
    (logs / "mpt-train_3.out").write_text(golden_variant(3, "0: [batch=31/60]:", CRASH))
    (logs / "mpt-train_12.out").write_text("\n".join(NEVER_STARTED) + "\n")
    requeued = gzip_text(GOLDEN / "slurm-2node-requeued-usr1.out.gz")
    (logs / "mpt-train_4.out").write_text(requeued)
    (logs / "c4-preprocess_1.out").write_text("0: preprocessing: 2 file(s) -> data/train_small\n")
    out = run_report(str(logs), "--baseline")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((logs / "report.json").read_text())
    runs = [(r["name"], r["job_id"], r["status"]) for r in doc["runs"]]
    assert runs == [  # by job id as numbers
        ("mpt-train-3", "3", "failed"),
        ("mpt-train-4", "4", "completed"),
        ("mpt-train-10", "10", "completed"),
    ]
    failed = doc["runs"][0]
    assert failed["failure"] == CRASH[3] and failed["baseline"]["status"] == "not-compared"
    assert doc["jobs_without_training"] == [
        {
            "log_file": str(logs / "mpt-train_12.out"),
            "job_id": "12",
            "failure": NEVER_STARTED[1],
            "failure_line_number": 2,
            "failure_line": 2,  # its old name, kept (records.RENAMED_FIELDS)
            "run_name": None,
            "nodelist": None,
            "log_ends_at": "2026-11-22T06:00:04+00:00",  # its job start line: where a start-up kill stopped
            "restarts": 0,
        }
    ]
    assert doc["scaling"] == []  # all three ran at world size 2: nothing to scale
    table = out.stdout.splitlines()
    assert table[0].split()[:6] == ["run", "status", "model", "device", "nodes", "world"]
    assert table[2].split()[:6] == ["mpt-train-3", "failed", "mpt-tiny-cpu", "cpu", "2", "2"]
    assert f"did not train: job 12 ({logs / 'mpt-train_12.out'}): {NEVER_STARTED[1]} (line 2 of the log)" in out.stdout
    assert "no runs in" in out.stdout and "c4-preprocess_1.out" in out.stdout  # not a training job
    markdown = (logs / "report.md").read_text()
    assert "## Jobs that did not train" in markdown and "| 12 |" in markdown
    assert "warning: mpt-train-3: FAILED at batch 30/60: 1: RuntimeError:" in out.stdout
    csv_rows = (logs / "report.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    assert csv_rows[1].split(",")[header.index("gpu")] == "cpu"  # as in the table, under its old name too
    assert csv_rows[1].split(",")[header.index("device_type")] == "cpu" and header[-2:] != ["gpu", "device_type"]
    assert all(r["device_type"] == r["gpu"] == "cpu" for r in doc["runs"])
    assert all(r["gpu_hours_to_1t_tokens"] is None for r in doc["runs"])  # CPU runs: no GPU-hours


def gzip_text(path: Path) -> str:
    import gzip

    return gzip.decompress(path.read_bytes()).decode()


def test_failed_runs_are_left_out_of_scaling_and_the_baseline_gate(tmp_path: Path) -> None:
    write_run(tmp_path, "n1", 8, 40.0)
    write_run(tmp_path, "n2", 16, 72.0)
    write_run(tmp_path, "n4", 32, 200.0)  # would be a super-linear point, but it crashed
    with (tmp_path / "n4.out").open("a") as fh:
        fh.write("3: Traceback (most recent call last):\n3: torch.distributed.DistBackendError: NCCL error\n")
    text = (tmp_path / "n4.out").read_text()  # it crashed at batch 20 of 500
    (tmp_path / "n4.out").write_text(text.replace("/20]:", "/500]:"))
    out = run_report(str(tmp_path), "--out", str(tmp_path / "r"))
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {r["name"]: r["status"] for r in doc["runs"]} == {"n1": "completed", "n2": "completed", "n4": "failed"}
    (group,) = doc["scaling"]
    assert [p["world_size"] for p in group["points"]] == [8, 16]
    assert "warning: n4: FAILED at batch 20/500: 3: torch.distributed.DistBackendError: NCCL error" in out.stdout


def test_empty_input_says_so_and_writes_nothing_and_a_file_alone_reports_into_report(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_report(str(empty))
    assert out.returncode == 1 and "no log files" in out.stdout and list(empty.iterdir()) == []
    (tmp_path / "x.out").write_text(golden_variant(2))
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "report.py"), "x.out", "--no-plots"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "report", "x.out"]
    assert (tmp_path / "report" / "report.json").is_file()


def test_a_scaling_series_holds_one_batch_figure_and_one_sweep(tmp_path: Path) -> None:
    """Before: every completed run of one model and GPU was one series, whatever its batch or sweep."""
    from test_case.report.compare import scaling_groups

    def run(world: int, batch: int, samples_per_sec: float, sweep: str | None = None) -> RunSummary:
        lines = [
            x.replace("global_train_batch_size: 256", f"global_train_batch_size: {batch}")
            for x in gpu_log(world, samples_per_sec)
        ]
        summary = summarise_run(parse_composer_log(lines))
        summary.name, summary.sweep_id = f"w{world}-b{batch}-{sweep}", sweep
        return summary

    runs = [run(8, 256, 40.0), run(16, 256, 72.0), run(16, 512, 76.0), run(32, 512, 120.0, sweep="7")]
    groups = {(g.global_batch_size, g.batch_per_device): [p.run for p in g.points] for g in scaling_groups(runs)}
    assert groups == {
        (256, None): ["w8-b256-None", "w16-b256-None"],  # strong: one global batch
        (None, 32.0): ["w8-b256-None", "w16-b512-None"],  # weak: 32 samples per device
    }  # the sweep's 32-GPU run is in no series: alone in its sweep
    titles = [scaling_title(g) for g in scaling_groups(runs)]
    assert any("global batch 256: strong scaling" in t for t in titles)
    assert any("32 samples per device: weak scaling" in t for t in titles)
    # one file per series: the batch tells them apart, and a sweep of the same setup gets its own
    names = scaling_file_names(scaling_groups(runs))
    assert sorted(names) == ["scaling-mpt-125m-h100-sxm-32perdev.png", "scaling-mpt-125m-h100-sxm-gbs256.png"]
    swept = [*runs, run(8, 256, 40.0, sweep="7"), run(16, 256, 72.0, sweep="7")]
    assert len(set(scaling_file_names(scaling_groups(swept)))) == len(scaling_groups(swept)) == 4


# report.csv's columns before #31 point 5, in order: users' scripts read them by name (and position)
LEGACY_CSV_COLUMNS = [
    "name", "log_file", "job_id", "model", "status", "failure", "failure_line", "device", "gpu", "n_params",
    "world_size", "nodes", "procs_per_node", "scheduler", "precision", "max_seq_len",
    "dataset_sample_tokens", "dataset_tokenizer", "global_batch_size",
    "activation_checkpointing", "microbatch", "fsdp_sharding", "fsdp_mixed_precision", "attn_impl", "alibi",
    "flash_attn", "cuda", "nccl", "driver", "restarts", "last_batch", "max_duration", "duration_unit", "completed",
    "loss_first", "loss_min", "final_train_loss", "has_nan", "first_nan_batch", "tokens_per_sec",
    "tokens_per_sec_per_device", "samples_per_sec", "step_time_median_s", "step_time_p10_s", "step_time_p90_s",
    "step_time_spread", "tflops_per_device", "peak_tflops", "mfu", "hfu", "mfu_logged", "mfu_note",
    "peak_mem_allocated_gb", "peak_mem_reserved_gb", "hours_to_1t_tokens", "gpu_hours_to_1t_tokens",
    "straggler_threshold"
]  # fmt: skip


def report_of(tmp_path: Path, text: str) -> tuple[str, str, list[dict[str, str]], dict]:
    """report.py on one log: its console output, report.md, report.csv's rows and report.json's run."""
    import csv

    (tmp_path / "mpt-train_2.out").write_text(text)
    out = run_report(str(tmp_path), "--no-plots")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    (run,) = json.loads((tmp_path / "report.json").read_text())["runs"]
    return out.stdout, (tmp_path / "report.md").read_text(), rows, run


def table_cell(text: str, column: str, markdown: bool = False) -> str:
    """The first run's cell of ``column`` in the console table (columns two spaces apart) or report.md's."""
    lines = text.splitlines()
    if markdown:
        head = next(i for i, line in enumerate(lines) if line.startswith("| ") and f"| {column} |" in line)
        names = [c.strip() for c in lines[head].strip("|").split("|")]
        return [c.strip() for c in lines[head + 2].strip("|").split("|")][names.index(column)]
    import re

    header, _, row = lines[:3]
    return re.split(r"\s{2,}", row.strip())[re.split(r"\s{2,}", header.strip()).index(column)]


def test_a_runs_final_eval_loss_is_in_the_console_markdown_and_csv(tmp_path: Path) -> None:
    """#31 point 5.1: the real 2-node log evaluates at batches 30 and 60; the last eval loss was only in
    report.json's ``eval``."""
    stdout, markdown, (row,), run = report_of(tmp_path, golden_variant(2))
    assert run["eval"]["metrics/eval/LanguageCrossEntropy"] == run["final_eval_loss"] == 6.4268
    assert table_cell(stdout, "final eval loss") == "6.4268" == table_cell(markdown, "final eval loss", True)
    assert table_cell(stdout, "final train loss") == "6.3779"  # final_train_loss, its name said in full
    assert row["final_eval_loss"] == "6.4268" and row["final_train_loss"] == "6.3779"


def test_the_csv_keeps_its_columns_and_adds_goodput_eval_and_stream_columns(tmp_path: Path) -> None:
    """#31 point 5.2: every column users' scripts read stays, in its place; goodput (and its parts), the
    final eval loss and, for a mixture, each domain's eval loss and each stream's drawn share follow."""
    mixture = gzip_text(GOLDEN / "local-mixture-70-30-cpu.log.gz")
    _, _, (row,), run = report_of(tmp_path, mixture)
    header = list(row)
    assert header[: len(LEGACY_CSV_COLUMNS)] == LEGACY_CSV_COLUMNS
    assert header[len(LEGACY_CSV_COLUMNS) :] == [
        "goodput",
        "final_eval_loss",
        "stream_shares_within_error",
        "sweep_id",
        "nodelist",
        "log_ends_at",
        "eval_data_overlap",
        "failure_line_number",
        "device_type",
        "nccl_network",
        *("cluster", "started_at", "torch", "composer", "llm_foundry", "image", "git_commit"),
        *[f"goodput.{k}" for k in run["goodput"] if k != "goodput"],
        "eval_loss_by_domain.c4",
        "eval_loss_by_domain.wikipedia",
        *[f"stream_shares.{s}.{k}" for s in ("c4", "wikipedia") for k in STREAM_FIELDS],
    ]
    assert float(row["goodput"]) == pytest.approx(run["goodput"]["goodput"]) and row["restarts"] == "0"
    assert float(row["goodput.total_s"]) == run["goodput"]["total_s"]
    assert (row["eval_loss_by_domain.c4"], row["eval_loss_by_domain.wikipedia"]) == ("8.1929", "8.3256")
    assert (row["stream_shares.c4.drawn_samples"], row["stream_shares.c4.drawn"]) == ("108", "0.675")
    assert row["stream_shares.wikipedia.planned"] == "0.300199" and row["stream_shares_within_error"] == "True"
    assert row["final_eval_loss"] == ""  # only labelled eval loaders: by domain
    # a run without a mixture, evals or rank timing has the same first columns
    (tmp_path / "plain").mkdir()
    _, _, (plain,), _ = report_of(tmp_path / "plain", "\n".join(make_log()) + "\n")
    assert list(plain)[: len(LEGACY_CSV_COLUMNS) + 1] == [*LEGACY_CSV_COLUMNS, "goodput"] and plain["goodput"] == ""


STREAM_FIELDS = ("drawn_samples", "drawn", "planned", "sampling_error", "within_error")


def test_small_figures_keep_three_significant_digits_never_zero(tmp_path: Path) -> None:
    """#31 point 5.5: the tiny model on CPU does 0.0356 TFLOP/s per device; the table said 0.0."""
    from test_case.report.cells import num as _num
    from test_case.report.cells import pct as _pct

    stdout, markdown, _, run = report_of(tmp_path, golden_variant(2))
    assert run["tflops_per_device"] == pytest.approx(0.035551, rel=1e-4)
    assert table_cell(stdout, "TFLOP/s/dev") == "0.0356" == table_cell(markdown, "TFLOP/s/dev", True)
    assert (_num(0.0118, ".1f"), _num(0.00012345, ".3f"), _num(54.3, ",.0f"), _num(987.65, ".1f")) == (
        "0.0118",
        "0.000123",
        "54.3",
        "987.6",
    )
    assert (_num(0.0, ".1f"), _num(12, "d"), _num(None, ".1f"), _pct(1.2e-5), _pct(0.4646)) == (
        "0.0",
        "12",
        "-",
        "0.00120%",
        "46.5%",
    )


def test_the_tokenizer_is_named_by_its_hub_name_or_path_and_old_headers_still_read(tmp_path: Path) -> None:
    """#31 point 5.6: a local tokenizer folder was recorded by its last name alone ("tokenizer")."""
    from test_case.training.dataset_fit import DatasetFacts

    local = DatasetFacts(tmp_path, 128, 999, "tok", "/data/tokenizers/gpt-neox-20b", "ab" * 32)
    hub = DatasetFacts(tmp_path, 128, 999, "EleutherAI/gpt-neox-20b", "EleutherAI/gpt-neox-20b", None)
    older = DatasetFacts(tmp_path, 128, 999, "../tok", None, None)  # a summary.json of an older version
    assert [f.describe_tokenizer() for f in (local, hub, older)] == [
        "/data/tokenizers/gpt-neox-20b",
        "EleutherAI/gpt-neox-20b",
        "../tok",
    ]
    header = "[run-header] dataset_tokenizer: /data/tokenizers/gpt-neox-20b\n"
    text = golden_variant(2).replace("0: [run-header] model:", header + "0: [run-header] model:", 1)
    _, markdown, (row,), _ = report_of(tmp_path, text)
    assert table_cell(markdown, "data tokenizer", True) == "/data/tokenizers/gpt-neox-20b"
    assert row["dataset_tokenizer"] == "/data/tokenizers/gpt-neox-20b"
    (tmp_path / "old").mkdir()  # a log whose header recorded the folder's name only still reads
    _, markdown, _, _ = report_of(tmp_path / "old", gzip_text(GOLDEN / "local-mixture-70-30-cpu.log.gz"))
    assert table_cell(markdown, "data tokenizer", True) == "tokenizer"


def test_time_to_1t_tokens_is_in_hours_everywhere(tmp_path: Path) -> None:
    """#31 point 5.7: report.md said days where report.json and report.csv say hours."""
    _, markdown, (row,), run = report_of(tmp_path, golden_variant(2))
    assert "days" not in markdown
    assert table_cell(markdown, "hours to 1T tokens", True) == f"{run['hours_to_1t_tokens']:,.1f}" == "23,057.8"
    assert float(row["hours_to_1t_tokens"]) == pytest.approx(run["hours_to_1t_tokens"])
    assert "**hours to 1T tokens** = 1e12 / tokens/s / 3600" in markdown


def test_a_failure_line_is_called_a_line_of_the_log(tmp_path: Path) -> None:
    """#31 point 5.8, #32 step 6: ``failure_line_number`` (and its old name ``failure_line``) is a number
    in report.json; where it is shown it says what it is."""
    text = golden_variant(2, tail=CRASH[:4])  # a traceback after the last batch
    stdout, markdown, _, run = report_of(tmp_path, text)
    number = text.splitlines().index(CRASH[3]) + 1
    said = f"a failure was logged after the last batch: {CRASH[3]} (line {number} of the log)"
    assert said in run["warnings"] and f"warning: mpt-train-2: {said}" in stdout and said in markdown
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "mpt-train_12.out").write_text("\n".join(NEVER_STARTED) + "\n")
    assert run_report(str(tmp_path / "job"), "--no-plots").returncode == 1
    jobs = (tmp_path / "job" / "report.md").read_text()
    assert f"| 12 | {tmp_path / 'job' / 'mpt-train_12.out'} | `{NEVER_STARTED[1]}` (line 2 of the log) |" in jobs
    doc = json.loads((tmp_path / "job" / "report.json").read_text())
    job = doc["jobs_without_training"][0]
    assert job["failure_line_number"] == job["failure_line"] == 2  # the old name stays beside the new


def test_the_documented_csv_columns_are_the_csvs(tmp_path: Path) -> None:
    """docs/report.md's report.csv table names columns the mixture run's report.csv has (a ``<label>``,
    ``<stream>`` or ``<part>`` is one of each)."""
    import re

    from tests.test_docs import SPAN

    _, _, (row,), _ = report_of(tmp_path, gzip_text(GOLDEN / "local-mixture-70-30-cpu.log.gz"))
    text = (REPO_ROOT / "docs" / "report.md").read_text()
    section = text[text.index("## report.csv") :]
    first_cells = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    documented = [name for cell in first_cells for name in SPAN.findall(cell)]
    patterns = [re.sub(r"<(label|stream|field|part)>", r"\\w+", re.escape(name)) for name in documented]
    assert "goodput.<part>" in documented and "eval_loss_by_domain.<label>" in documented
    assert [n for n, p in zip(documented, patterns, strict=True) if not any(re.fullmatch(p, c) for c in row)] == []


def test_every_node_a_failure_a_straggler_or_the_preflight_names_is_listed_with_the_command_to_drain_it(
    tmp_path: Path,
) -> None:
    """#33 point 4: the restarts' blamed node and the stragglers in one form, drained by hand only."""
    from test_case.preflight.records import Failure, PreflightReport
    from test_case.report.drains import suggested_drains
    from test_case.report.records import Report

    for name in ("slurm-3node-killed-rank-requeued", "slurm-3node-node2-quarter-core"):
        (tmp_path / f"{name}.out").write_text(gzip_text(GOLDEN / f"{name}.out.gz"))
    out = run_report(str(tmp_path), "--no-plots")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "node node2: straggler in mpt-train-3: rank 1 computes 1.60x the median rank" in lines
    assert any(
        line.startswith(
            "node node2: job 4 start 0 failed on it; excluded from its next start: rank 1 on node2 was ended"
        )
        for line in lines
    )
    command = 'scontrol update nodename=node2 state=drain reason="mpt-suite: straggler in mpt-train-3: rank 1 computes'
    assert any(line.startswith(f"  to take it out: {command}") for line in lines)
    assert "## Nodes to look at" in (tmp_path / "report.md").read_text()
    assert not any(line.startswith("node node1") or line.startswith("node node3") for line in lines)
    preflight = PreflightReport(
        "9", "fail", {}, [Failure("node3", "health.xid[GPU 0000:02:00.0]", "reboot", "healthy", "")], []
    )
    (drain,) = suggested_drains(Report(preflight=[preflight]))
    assert drain.node == "node3" and drain.reasons == (
        "preflight job 9: health.xid[GPU 0000:02:00.0] reboot (expected healthy)",
    )
    assert suggested_drains(Report()) == []
