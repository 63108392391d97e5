"""Every way of reading a log file gives the same `ParsedLog` as reading it line by line.

`parse_composer_log` (one line at a time) defines what a log means. `parse_log_file` reads whole
blocks at a time by their shape, in chunks, and splits large files into parts parsed by worker
processes and merged. These tests compare the three on real logs and on generated ones that mix
every line form the parser knows with noise, odd prefixes, CRLF and invalid UTF-8, with chunks
small enough that blocks, lines and CRLF pairs are cut at every place.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_case.report import log_reading
from test_case.report.log_lines import ParsedLog, parse_composer_log
from test_case.report.log_reading import LogReader, parse_log_file, split_points
from test_case.report.metrics import USED_TRAIN_KEYS
from tests.conftest import SHARED, examples

GOLDEN = sorted((Path(__file__).parent / "data").glob("*.out.gz"))
SHARED_LOGS = sorted((SHARED / "composer-logs").glob("*.log"))
KEEP = {"loss/train/total", "throughput/tokens_per_sec", "metrics/train/LanguageCrossEntropy"}


def line_by_line(path: Path, keep: set[str] | frozenset[str] | None) -> ParsedLog:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return parse_composer_log(fh, str(path), keep)


def assert_same(path: Path, keep: set[str] | frozenset[str] | None, jobs: int = 3) -> ParsedLog:
    """Compared by repr: exact for floats, tells 8 from 8.0, and nan equals nan."""
    reference = line_by_line(path, keep)
    assert repr(parse_log_file(path, keep, jobs=1)) == repr(reference)
    assert repr(parse_log_file(path, keep, jobs=jobs, min_part_bytes=1)) == repr(reference)
    return reference


@pytest.mark.parametrize("path", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_logs_read_the_same_every_way(path: Path, tmp_path: Path) -> None:
    plain = tmp_path / path.name.removesuffix(".gz")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    for keep in (None, USED_TRAIN_KEYS):
        reference = assert_same(plain, keep, jobs=4)
        assert len(reference.train_blocks) >= 10  # the comparison is not between two empty results


@pytest.mark.skipif(not SHARED_LOGS, reason="../shared/composer-logs is not beside this checkout")
@pytest.mark.parametrize("path", SHARED_LOGS, ids=[p.name[:2] for p in SHARED_LOGS])
def test_public_logs_read_the_same_every_way(path: Path) -> None:
    assert_same(path, None)
    assert_same(path, USED_TRAIN_KEYS)


KEYS = ["loss/train/total", "throughput/tokens_per_sec", "time/batch", "metrics/train/LanguageCrossEntropy", "lr"]
VALUES = ["6.5545", "12", "nan", "inf", "'amp_bf16'", "-3", " 5 ", "1e400", "x: y", "²"]
PREFIXES = ["", "0: ", "1: ", "0:", "12: "]


@st.composite
def log_lines(draw: st.DrawFn) -> list[str]:
    """A log of Composer blocks (most sharing one shape, as real ones do) mixed with every other kind of line."""
    lines: list[str] = []
    shape = draw(st.lists(st.sampled_from(KEYS), min_size=0, max_size=4))
    for _ in range(draw(st.integers(0, 12))):
        prefix = draw(st.sampled_from(PREFIXES))
        kind = draw(st.integers(0, 9))
        if kind <= 5:  # a block in Composer's form, sometimes with another shape or a broken line
            keys = shape if kind <= 3 else draw(st.lists(st.sampled_from(KEYS), max_size=4))
            lines.append(f"{prefix}[batch={draw(st.integers(0, 30))}/30]:" + draw(st.sampled_from(["", "  "])))
            for key in keys:
                lines.append(f"{prefix}\t Train {key}: {draw(st.sampled_from(VALUES))}")
                if draw(st.integers(0, 15)) == 0:
                    lines.append(draw(st.sampled_from(["", f"{prefix}", f"{prefix}\t Train {key}:", "noise"])))
        else:
            lines.append(
                draw(
                    st.one_of(
                        st.sampled_from(
                            [
                                f"{prefix}[Eval batch=2/2] Eval on eval data:",
                                f"{prefix}\t Eval metrics/eval/LanguageCrossEntropy: 6.6",
                                f"{prefix}[batch=3/30]: loss/train/total: 4.0",
                                f"{prefix}[epoch=1][batch=4/30]:",
                                f"{prefix}[token=2048/8192]:",
                                f"{prefix}[run-header] job_id: 5",
                                f"{prefix}n_params: 918144",
                                "----------Begin global rank 1 STDERR----------",
                                "----------End global rank 1 STDERR----------",
                                f"> {prefix}[batch=5/30]:",
                                "[stderr]: \t Train loss/train/total: 2.0",
                                # lines the noise path skips, and lines just like them that it must not
                                f"{prefix}2026-11-22 05:44:56,106: rank0[1][MainThread]: INFO: x: Train done",
                                f"{prefix}  data_local: /tmp/x",
                                f"{prefix}  d_model: 128",
                                f"{prefix}max_seq_len: 128",
                                f"{prefix}  - 0.9",
                                f"{prefix}Traceback (most recent call last):",
                                f"{prefix}  Train loss/train/total: 3.0",
                                f"{prefix}> \t Train loss/train/total: 2.5",
                                f"{prefix}[stdout]: n_params: 77",
                                f"{prefix}  [batch=7/30]:",
                                f"{prefix}-----Begin global rank 0 STDOUT-----",
                                f"{prefix}\x0c Train loss/train/total: 1.0",
                                f"{prefix} 3: \t Train loss/train/total: 1.5",
                                # what ends a run: failure lines and the job's start and end lines
                                f"{prefix}Traceback (most recent call last):",
                                f"{prefix}RuntimeError: Connection closed by peer",
                                f"{prefix}  KeyError: 'x'",
                                f"{prefix}[rank1]: torch.distributed.DistBackendError: NCCL error",
                                f"{prefix}launch: error: node 0: no data",
                                "srun: error: node2: task 1: Exited with exit code 1",
                                f"{prefix}ERROR:composer.cli.launcher:Rank 1 crashed with exit code 1.",
                                "[2026-11-22T06:00:00+00:00] job 12 start 1 on node[1-2]",
                                "[2026-11-22T06:00:04+00:00] job 12 end: exit code 143 (stopped by SIGTERM) after 4 s",
                                # rank timing: one batch line per batch (its own fast path), the other events
                                f'{prefix}[timing] {{"kind":"batch","batch":3,"time":1796000000.125}}',
                                f'{prefix}[timing] {{"kind":"batch","batch":4,"time":1796000001}}  ',
                                f'{prefix}  [timing] {{"kind":"batch","batch":5,"time":1796000002.5}}',
                                f'{prefix}[timing] {{"kind":"batch","batch":6,"time":17960',
                                f'{prefix}[timing] {{"kind":"fit_start","batch":0,"time":1796000000.0}}',
                                f'{prefix}[timing] {{"kind":"hosts","hosts":["node1","node2"]}}',
                                f'{prefix}[timing] {{"kind":"ranks","batch":20,"batches":20,"compute_s":[0.02,0.03],'
                                '"slowest_rank":1,"slowest_node":"node2","ratio_to_median":1.2}',
                            ]
                        ),
                        st.text(max_size=30),
                    )
                )
            )
    return lines


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=log_lines(), crlf=st.booleans(), bad_bytes=st.booleans(), final_newline=st.booleans())
def test_generated_logs_read_the_same_every_way(
    lines: list[str], crlf: bool, bad_bytes: bool, final_newline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_reading, "CHUNK_BYTES", 37)  # cut blocks, lines and CRLF pairs everywhere
    text = ("\r\n" if crlf else "\n").join(lines) + ("\n" if final_newline and lines else "")
    data = text.encode("utf-8")
    if bad_bytes and data:
        data = data[: len(data) // 2] + b"\xff\xc3" + data[len(data) // 2 :]
    path = tmp_path / "generated.log"
    path.write_bytes(data)
    assert_same(path, None)
    assert_same(path, KEEP)


def feed_text_counting_lines(parser: LogReader, text: str) -> list[str]:
    """``parser.feed_text(text)``; the lines it handed to `LogReader.feed_line` one at a time."""
    calls: list[str] = []
    feed_line = parser.feed_line

    def counted(raw: str) -> None:
        calls.append(raw)
        feed_line(raw)

    parser.feed_line = counted  # type: ignore[method-assign]
    parser.feed_text(text)
    return calls


def test_noise_path_skips_logging_and_config_lines_but_reads_every_line_that_counts() -> None:
    """Runs of lines that only count as unknown are skipped by one match (not a feed_line each);
    the config keys, metric lines and headers among them are still read."""
    text = (
        "0: 2026-11-22 05:44:56,106: rank0[1][MainThread]: INFO: llmfoundry: Building trainer...\n"
        "0: variables:\n0:   data_local: /tmp/data\n0:   max_seq_len: 128\n0: model:\n0:   d_model: 128\n"
        "0:   - 0.9\n1: /venv/composer/callbacks/memory_monitor.py:137: UserWarning: CUDA only\n1:   d_model: 128\n"
        "0: [batch=1/9]:\n0: \t Train loss/train/total: 6.5\n0: noise\n0: \t Train loss/train/total: 1.0\n"
    )
    parser = LogReader()
    calls = feed_text_counting_lines(parser, text)
    log = parser.finish()
    # rank 1's d_model is noise once rank 0's was read
    assert calls == ["0:   max_seq_len: 128", "0:   d_model: 128", "0: \t Train loss/train/total: 1.0"]
    assert log.config == {"max_seq_len": 128, "d_model": 128}
    # the noise line ended the block: the metric after it is not the block's
    assert [b.metrics for b in log.train_blocks] == [{"loss/train/total": 6.5}]
    assert (log.lines, log.unknown_lines) == (13, 9)
    assert repr(log) == repr(parse_composer_log(text.splitlines()))


def test_block_path_reads_most_lines_and_relearns_when_the_shape_changes() -> None:
    """The block path is taken (it is not a line-by-line reading that passes the tests above)."""
    block = "0: [batch={n}/9]:\n0: \t Train loss/train/total: {v}\n0: \t Train time/batch: {n}\n"
    extra = "0: \t Train throughput/tokens_per_sec: 100.0\n"
    text = "".join(block.format(n=n, v=9 - n) + (extra if n > 4 else "") for n in range(1, 10))
    parser = LogReader(keep={"loss/train/total", "throughput/tokens_per_sec"})
    calls = feed_text_counting_lines(parser, text)
    log = parser.finish()
    assert calls == []  # every line was read as part of a block
    assert len(parser.known_shapes) == 2  # learned once without throughput, once with
    assert [b.metrics for b in log.train_blocks][3:5] == [
        {"loss/train/total": 5.0},
        {"loss/train/total": 4.0, "throughput/tokens_per_sec": 100.0},
    ]
    assert repr(log) == repr(
        parse_composer_log(text.splitlines(), keep={"loss/train/total", "throughput/tokens_per_sec"})
    )


def test_parts_start_at_block_headers_and_a_part_that_needs_the_one_before_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "sections.log"
    body = "".join(f"[batch={n}/200]:\n\t Train loss/train/total: {n}.0\n" for n in range(1, 201))
    path.write_text("----------Begin global rank 1 STDERR----------\n" + body)
    points = split_points(path, 4)
    data = path.read_bytes()
    assert len(points) == 5 and all(data[p : p + 7] == b"[batch=" for p in points[1:-1])
    # Later parts hold unprefixed lines of rank 1's section: read alone they would be rank None.
    later = LogReader(str(path), detached=True)
    later.feed_file(path, points[2], points[3])
    assert later.assumed_no_section
    first = LogReader(str(path))
    first.feed_file(path, 0, points[2])
    assert not first.absorb(later)
    log = parse_log_file(path, jobs=4, min_part_bytes=1)
    assert list(log.blocks) == [1] and len(log.train_blocks) == 200
    assert repr(log) == repr(line_by_line(path, None))


def test_a_block_turned_eval_after_it_was_stored_still_decides_the_reporting_rank(tmp_path: Path) -> None:
    """Found by the generated logs: read in order, rank None's block is stored as train (so rank 0's
    blocks are dropped) before an Eval line makes it an eval block; the merge must agree."""
    path = tmp_path / "eval-after-train.log"
    path.write_text("[batch=0/30]:\n\t Eval metrics/eval/X: 6.6\n0: [batch=0/30]:\n0: \t Train loss/train/total: 1.0\n")
    cut = path.read_text().index("0: [batch")
    first, later = LogReader(str(path)), LogReader(str(path), detached=True)
    first.feed_file(path, 0, cut)
    later.feed_file(path, cut)
    assert list(later.log.blocks) == [0]  # read alone, the second part reports rank 0
    assert first.absorb(later)
    reference = line_by_line(path, None)
    assert list(reference.blocks) == [None] and reference.blocks[None][0].kind == "eval"
    assert repr(first.finish()) == repr(reference)
