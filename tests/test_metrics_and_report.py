"""Figures of a run: steady-state window, medians, world size; report.py writes what it prints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.report.log_parser import parse_composer_log
from test_case.report.metrics import steady_state_window, summarise_run
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
    assert run.gpu == "h100-sxm" and run.peak_tflops == 989.5
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
    assert nvl.gpu == "h100-nvl" and nvl.peak_tflops == 835.5 and nvl.mfu_logged is None
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
        ("Tesla T4", None),
    ],
)
def test_gpu_names_map_to_peaks(name: str, key: str | None) -> None:
    from test_case.report.gpu_peaks import gpu_key

    assert gpu_key(name) == key


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
