"""The training script without Slurm: real llm-foundry training of the tiny MPT on this machine's CPU."""

from __future__ import annotations

import math
import os
import re
import signal
import statistics
import subprocess
from pathlib import Path

import pytest

from test_case.report.log_lines import parse_composer_log
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import DEVICE_TOKENS_PER_SEC, LOSS_KEY, steady_state_window, summarise_run
from test_case.timing_events import RankTimes, WallEvent
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def train_locally(mds_root: Path, tokenizer: Path, tmp_path: Path, *overrides: str, **env_extra: str) -> str:
    """Run the training script without Slurm (mpt-tiny-cpu, outputs under ``tmp_path``); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(tokenizer),
        "SAVE_ROOT": str(tmp_path / "ckpt"),
        "LOG_DIR": str(tmp_path / "logs"),
        **env_extra,
    }
    script = REPO_ROOT / "slurm-scripts" / "2.train-mpt-manual-distributed.sbatch"
    out = subprocess.run(
        ["bash", str(script), "mpt-tiny-cpu", *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_local_run_trains_checkpoints_and_reports(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    train_locally(mds_root, demo_assets[1], tmp_path)
    (log_file,) = (tmp_path / "logs").glob("mpt-train_local-*.out")
    parsed = parse_log_file(log_file)
    run = summarise_run(parsed)
    assert (parsed.header.model, parsed.header.world_size, parsed.header.device) == ("mpt-tiny-cpu", 1, "cpu")
    assert parsed.config["n_params"] == run.n_params and run.n_params is not None and run.n_params > 500_000
    assert (run.last_batch, run.max_duration, run.world_size) == (40, 40, 1)
    losses = [float(b.metrics[LOSS_KEY]) for b in parsed.train_blocks]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 1.0  # it learned something
    assert "metrics/eval/LanguageCrossEntropy" in run.eval
    # The report's per-device rate agrees with Composer's own over the same window.
    logged = statistics.median(
        float(b.metrics[DEVICE_TOKENS_PER_SEC]) for b in steady_state_window(parsed.train_blocks)
    )
    assert run.tokens_per_sec_per_device == pytest.approx(logged, rel=0.01)
    assert run.window_batches == [11, 40]
    checkpoints = list((tmp_path / "ckpt").glob("mpt-train-local-*/checkpoints/ep0-ba40-rank0.pt"))
    assert len(checkpoints) == 1
    last_line = log_file.read_text().splitlines()[-1]
    assert re.fullmatch(r"\[\S+\] job local-\S+ end: exit code 0 after \d+ s", last_line), last_line
    # rank timing, on by default: every batch's end, saves and evals every 20 (the yaml's), windows of 20
    assert list(parsed.batch_ends.batches) == list(range(1, 41))
    assert list(parsed.batch_ends.times) == sorted(parsed.batch_ends.times)
    events = [e for _, e in parsed.timing_events]
    walls = [(e.kind, e.batch) for e in events if isinstance(e, WallEvent) and e.kind != "fit_start"]
    assert walls == [("eval", 20), ("checkpoint_save", 20), ("eval", 40), ("checkpoint_save", 40), ("fit_end", 40)]
    windows = [e for e in events if isinstance(e, RankTimes)]
    assert [(w.batch, w.batches, len(w.compute_s)) for w in windows] == [(20, 20, 1), (40, 20, 1)]
    step = run.step_time_median_s
    assert step is not None and all(0 < w.compute_s[0] < step for w in windows)  # the blocks' forward: part of a step
    assert run.goodput is not None and run.goodput.starts == 1 and run.goodput.checkpoint_restore_s == 0
    assert 0 < run.goodput.productive_s < run.goodput.total_s


def test_a_run_killed_while_saving_resumes_from_its_last_complete_checkpoint(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """What the requeued CI job met: the next checkpoint half-written when the job was killed."""

    def train(max_duration: str, *more: str) -> str:
        overrides = (f"max_duration={max_duration}", "save_interval=10ba", *more)
        return train_locally(mds_root, demo_assets[1], tmp_path, *overrides, RUN_NAME="killed-while-saving")

    untimed = train("20ba", "callbacks.rank_timing.enabled=false")  # the documented off switch
    assert "[timing]" not in untimed and "[batch=20/20]" in untimed
    folder = tmp_path / "ckpt" / "killed-while-saving" / "checkpoints"
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba20-rank0.pt"
    complete = (folder / "ep0-ba20-rank0.pt").read_bytes()
    (folder / "ep0-ba30-rank0.pt").write_bytes(complete[: len(complete) // 2])  # killed mid-write of batch 30

    log = train("40ba")
    assert (
        "launch: checkpoint ep0-ba30-rank0.pt is incomplete (the job stopped while writing it): "
        "moved to unfinished/ep0-ba30-rank0.pt; resuming from ep0-ba20-rank0.pt"
    ) in log
    resumed = parse_composer_log(log.splitlines())
    assert [b.step for b in resumed.train_blocks] == list(range(21, 41))
    restores = [e for _, e in resumed.timing_events if isinstance(e, WallEvent) and e.kind in ("restore", "fit_start")]
    assert [(e.kind, e.batch) for e in restores] == [("restore", 20), ("fit_start", 20)]
    assert restores[0].began is not None and 0 < restores[0].seconds < 60
    assert os.readlink(folder / "latest-rank0.pt") == "ep0-ba40-rank0.pt"
    assert len((folder / "unfinished" / "ep0-ba30-rank0.pt").read_bytes()) == len(complete) // 2


def test_a_stopped_run_logs_the_signal_and_dies_of_it(
    mds_root: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    """What scancel, a requeue or Ctrl-C do to the job: SIGTERM to its processes while they train."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {
        "DATA_ROOT": str(mds_root),
        "TOKENIZER": str(demo_assets[1]),
        "SAVE_ROOT": str(tmp_path / "ckpt"),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    script = REPO_ROOT / "slurm-scripts" / "2.train-mpt-manual-distributed.sbatch"
    proc = subprocess.Popen(
        ["bash", str(script), "mpt-tiny-cpu", "max_duration=2000ba"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as Slurm's job step has
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until a batch has trained
            if "[batch=2/2000]" in line:
                break
        os.killpg(proc.pid, signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == -signal.SIGTERM, rest[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    (log,) = (tmp_path / "logs").glob("mpt-train_local-*.out")
    last = log.read_text().splitlines()[-1]
    assert re.fullmatch(r"\[\S+\] job local-\S+ end: exit code 143 \(stopped by SIGTERM\) after \d+ s", last), last
