"""Figures of a run: steady-state window, medians, world size; report.py writes what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_case.log_parser import parse_composer_log
from test_case.metrics import steady_state_window, summarise_run
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
    assert run.window_batches == [4, 8]


def test_world_size_from_composer_ratio_without_header() -> None:
    lines = [line for line in make_log(world=4) if not line.startswith("[run-header]")]
    assert summarise_run(parse_composer_log(lines)).world_size == 4


def test_nan_and_short_runs_are_flagged() -> None:
    run = summarise_run(parse_composer_log(make_log(nan_at=7)))
    assert run.has_nan and any("nan" in w for w in run.warnings)
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


def test_report_cli_exit_codes(tmp_path: Path) -> None:
    assert run_report(str(tmp_path / "missing")).returncode == 2
    (tmp_path / "empty.log").write_text("no blocks\n")
    assert run_report(str(tmp_path)).returncode == 1
