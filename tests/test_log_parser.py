"""Composer console logs parse into the right blocks, whatever prefixes and noise surround them."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_case.report.log_lines import parse_composer_log, parse_value
from test_case.report.log_reading import parse_log_file
from tests.conftest import SHARED, examples

BLOCK = """\
[batch=12/40]:
\t Train time/batch: 11
\t Train loss/train/total: 6.5545
\t Train throughput/tokens_per_sec: 12905.4293
\t Train lr-DecoupledAdamW/group0: 0.0018
"""


def test_block_header_and_metrics() -> None:
    log = parse_composer_log(BLOCK.splitlines())
    (block,) = log.train_blocks
    assert (block.kind, block.unit, block.step, block.total, block.epoch) == ("train", "batch", 12, 40, None)
    assert block.metrics == {
        "time/batch": 11,
        "loss/train/total": 6.5545,
        "throughput/tokens_per_sec": 12905.4293,
        "lr-DecoupledAdamW/group0": 0.0018,
    }
    assert log.unknown_lines == 0


@pytest.mark.parametrize(
    ("header", "unit", "step", "epoch"),
    [
        ("[epoch=1][batch=927/927]:", "batch", 927, 1),
        ("[token=2048/81920]:", "token", 2048, None),
        ("[sample=16/640]:", "sample", 16, None),
    ],
)
def test_header_variants(header: str, unit: str, step: int, epoch: int | None) -> None:
    (block,) = parse_composer_log([header, "\t Train loss/train/total: 1.0"]).train_blocks
    assert (block.unit, block.step, block.epoch) == (unit, step, epoch)


def test_srun_rank_prefixes_and_interleaving_keep_ranks_apart() -> None:
    lines = [
        "0: [batch=1/2]:",
        "1: [batch=1/2]:",
        "0: \t Train loss/train/total: 5.0000",
        "1: \t Train loss/train/total: 9.0000",
        "1: [batch=2/2]:",
        "0: [batch=2/2]:",
        "0: \t Train loss/train/total: 4.0000",
        "1: \t Train loss/train/total: 8.0000",
    ]
    log = parse_composer_log(lines)
    assert log.reporting_rank == 0
    assert [b.metrics["loss/train/total"] for b in log.train_blocks] == [5.0, 4.0]
    assert list(log.blocks) == [0]  # a higher rank's blocks are not kept once a lower rank appears
    late = parse_composer_log(["3: [batch=1/2]:", "3: \t Train loss/train/total: 1.0", *lines])
    assert list(late.blocks) == [0] and len(late.train_blocks) == 2


def test_eval_block_takes_the_step_of_the_train_block_before_it() -> None:
    lines = [
        *BLOCK.splitlines(),
        "[Eval batch=1/4] Eval on eval data",
        "[Eval batch=4/4] Eval on eval data:",
        "\t Eval metrics/eval/LanguageCrossEntropy: 6.6719",
        "2026-11-22 05:18:11,907: rank0[1]: DEBUG: x",
    ]
    log = parse_composer_log(lines)
    evals = [b for b in log.blocks[None] if b.kind == "eval"]
    assert len(evals) == 1 and evals[0].step == 12
    assert evals[0].metrics == {"metrics/eval/LanguageCrossEntropy": 6.6719}
    assert len(log.train_blocks) == 1 and log.unknown_lines == 1


def test_run_header_config_dump_noise_and_truncation() -> None:
    lines = [
        "[run-header] job_id: 1234",
        "[run-header] world_size: 16",
        "n_params: 124815360",
        "max_seq_len: 2048",
        "  d_model: 768",
        "precision: amp_bf16",
        "Traceback (most recent call last):",
        "[batch=3/10]:",
        "\t Train loss/train/total: nan   ",
        "\t Train throughput/device/mfu: inf",
        "\t Train time/tok",
    ]
    log = parse_composer_log(lines)
    assert log.header_fields == {"job_id": "1234", "world_size": "16"}
    assert (log.header.job_id, log.header.world_size, log.header.model) == ("1234", 16, None)
    assert log.config == {"n_params": 124815360, "max_seq_len": 2048, "d_model": 768, "precision": "amp_bf16"}
    (block,) = log.train_blocks
    assert math.isnan(float(block.metrics["loss/train/total"]))
    assert block.metrics["throughput/device/mfu"] == math.inf
    assert log.unknown_lines == 1  # the truncated last line
    assert [(f.number, f.text) for f in log.failures] == [(7, "Traceback (most recent call last):")]


def test_values() -> None:
    assert parse_value("12") == 12 and parse_value("0.0007") == 0.0007
    assert parse_value("'amp_bf16'") == "amp_bf16" and parse_value("<wandb.Table>") == "<wandb.Table>"


SHARED_LOGS = sorted((SHARED / "composer-logs").glob("*.log"))


@pytest.mark.skipif(not SHARED_LOGS, reason="../shared/composer-logs is not beside this checkout")
@pytest.mark.parametrize("path", SHARED_LOGS, ids=[p.name[:2] for p in SHARED_LOGS])
def test_real_public_logs_parse(path: Path) -> None:
    log = parse_log_file(path)
    assert log.lines > 0
    for blocks in log.blocks.values():
        for block in blocks:
            assert block.step >= 0 and block.kind in {"train", "eval"}


def test_real_public_logs_with_current_blocks_are_found() -> None:
    by_prefix = {p.name[:2]: parse_log_file(p) for p in SHARED_LOGS}
    if not by_prefix:
        pytest.skip("../shared/composer-logs is not beside this checkout")
    first = by_prefix["01"]  # srun -l prefixed, 2023 reference test case
    assert first.reporting_rank == 0 and first.train_blocks[0].metrics["loss/train/total"] == 12.0
    dyna = by_prefix["09"]  # composer 0.31, tab-indented, logged every 10 batches
    assert [b.step for b in dyna.train_blocks] == [1, 10, 20]
    assert all(b.total == 20 for b in dyna.train_blocks)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=80),
            st.sampled_from(
                [
                    "[batch=1/2]:",
                    "0: [batch=3/4]:",
                    "\t Train loss/train/total: nan",
                    "[Eval batch=2/2] Eval on x:",
                    "\t Eval metrics/eval/X: 1.0",
                    "[run-header] world_size: 0",
                    "n_params: many",
                    "12: ",
                ]
            ),
        ),
        max_size=40,
    )
)
def test_parser_never_raises(lines: list[str]) -> None:
    from test_case.report.metrics import summarise_run

    log = parse_composer_log(lines)
    assert log.unknown_lines <= len(lines)
    summarise_run(log)


def test_one_line_form_of_old_composer_is_grouped_per_step() -> None:
    lines = [
        "[batch=7/5000]: trainer/grad_accum: 4",
        "[batch=7/5000]: loss/train/total: 9.8454",
        "[batch=8/5000]: wall_clock/train: 16.8334",
        "[trace]: algorithm_traces/GradientClipping:1",
        "[epoch=0][batch=16/625]: loss/train: 7.1243",
        "[metric][batch=0]: time/epoch: 2365 ",
    ]
    log = parse_composer_log(lines)
    steps = [(b.step, b.total, b.epoch, b.metrics) for b in log.train_blocks]
    assert steps == [
        (7, 5000, None, {"trainer/grad_accum": 4, "loss/train/total": 9.8454}),
        (8, 5000, None, {"wall_clock/train": 16.8334}),
        (16, 625, 0, {"loss/train": 7.1243}),
        (0, 0, None, {"time/epoch": 2365}),
    ]
    assert log.unknown_lines == 1


def test_launcher_sections_quote_and_stderr_prefixes() -> None:
    lines = [
        "----------Begin global rank 1 STDERR----------",
        "[batch=1/10]:",
        "\t Train loss/train/total: 3.0",
        "----------End global rank 1 STDERR----------",
        "> [batch=2/10]:",
        ">          Train loss/train/total: 2.5",
        "[stderr]: [batch=3/10]:",
        "[stderr]: \t Train loss/train/total: 2.0",
    ]
    log = parse_composer_log(lines[:4])
    assert [(b.step, b.metrics["loss/train/total"]) for b in log.blocks[1]] == [(1, 3.0)]
    log = parse_composer_log(lines)  # unprefixed lines rank lowest: they are the run's blocks
    assert [(b.step, b.metrics["loss/train/total"]) for b in log.train_blocks] == [(2, 2.5), (3, 2.0)]
    assert log.reporting_rank is None and list(log.blocks) == [None] and log.unknown_lines == 0


def test_each_run_header_counts_as_a_start() -> None:
    log = parse_composer_log(
        [
            "0: [run-header] job_id: 5",
            "0: [run-header] restart_count: 0",
            "0: [run-header] job_id: 5",
            "0: [run-header] restart_count: 1",
        ]
    )
    assert log.starts == 2 and log.header.restart_count == 1


def test_keep_selects_train_metrics_but_never_eval() -> None:
    lines = [*BLOCK.splitlines(), "[Eval batch=1/1] Eval on eval data:", "\t Eval metrics/eval/X: 2.0"]
    log = parse_composer_log(lines, keep={"loss/train/total", "loss/train"})
    assert log.train_blocks[0].metrics == {"loss/train/total": 6.5545}
    assert log.blocks[None][1].metrics == {"metrics/eval/X": 2.0}
