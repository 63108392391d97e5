"""Rank timing and goodput: the timing events' contract, the report's straggler and goodput figures.

On real logs of the local Slurm cluster (``tests/data``): a 2-node run with node2 given a quarter
of a core (its rank is the straggler), and a 2-node run whose rank 1 was killed with ``kill -9``
after its first checkpoint and that resumed on node1 and node3 (goodput over two starts, with the
batches trained twice counted from the log's own blocks). Hand-written logs cover what a real run
rarely prints: a start that never reached training, a log cut off without an end line, cut lines.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from test_case import timing_events
from test_case.report.cli import main as report_main
from test_case.report.goodput import goodput
from test_case.report.log_lines import parse_composer_log
from test_case.report.log_reading import parse_log_file
from test_case.report.metrics import summarise_run
from test_case.report.stragglers import stragglers
from test_case.timing_events import RankHosts, RankTimes, WallEvent

DATA = Path(__file__).parent / "data"
THROTTLED = DATA / "slurm-3node-node2-quarter-core.out.gz"
KILLED = DATA / "slurm-3node-killed-rank-goodput.out.gz"


def unzipped(path: Path, tmp_path: Path) -> Path:
    plain = tmp_path / path.name.removesuffix(".gz")
    plain.write_bytes(gzip.decompress(path.read_bytes()))
    return plain


def test_every_event_reads_back_from_its_line() -> None:
    events: list[timing_events.TimingEvent] = [
        WallEvent("fit_start", 20, 1796151739.954),
        WallEvent("batch", 21, 1796151740.5),
        WallEvent("checkpoint_save", 40, 1796151741.695, 1796151741.658),
        RankHosts("hosts", ["node1", "node3"]),
        RankTimes("ranks", 40, 20, [0.021, 0.063], 1, "node3", 1.5),
    ]
    for event in events:
        text = timing_events.line(event)
        assert "\n" not in text and text.startswith('[timing] {"kind":')
        assert timing_events.parse_line(text) == event
    assert timing_events.line(events[1]) == '[timing] {"kind":"batch","batch":21,"time":1796151740.5}'


@pytest.mark.parametrize(
    "text",
    [
        '[timing] {"kind":"batch","batch":21,"time":17961',  # cut short
        '[timing] {"kind":"nap","batch":1,"time":1.0}',
        '[timing] {"kind":"batch","batch":"21","time":1.0}',
        '[timing] {"kind":"ranks","batch":40,"batches":20,"compute_s":[0.1],"slowest_rank":3,'
        '"slowest_node":null,"ratio_to_median":1.0}',
        "[timing] [1, 2]",
        'timing {"kind":"batch","batch":21,"time":1.0}',
    ],
)
def test_a_line_that_is_not_a_whole_event_is_no_event(text: str) -> None:
    assert timing_events.parse_line(text) is None


def test_the_slowest_rank_and_its_ratio_to_the_median() -> None:
    assert timing_events.slowest_rank([0.02, 0.021, 0.06, 0.019]) == (2, pytest.approx(0.06 / 0.0205))
    assert timing_events.slowest_rank([0.0, 0.0]) == (0, 1.0)


def test_the_throttled_node_is_named_as_the_straggler(tmp_path: Path) -> None:
    parsed = parse_log_file(unzipped(THROTTLED, tmp_path))
    flagged, nodes = stragglers(parsed)
    assert [(s.node, s.rank) for s in flagged] == [("node2", 1)]
    assert flagged[0].ratio_to_median > 1.5
    assert [n.node for n in nodes] == ["node2", "node1"] and nodes[0].straggler and not nodes[1].straggler
    # a threshold above its ratio flags nobody; the slowest node is still first
    assert stragglers(parsed, threshold=flagged[0].ratio_to_median + 0.01)[0] == []


def test_the_requeued_runs_goodput_counts_the_batches_trained_twice(tmp_path: Path) -> None:
    path = unzipped(KILLED, tmp_path)
    parsed = parse_log_file(path)
    good = goodput(parsed)
    assert good is not None and good.starts == 2
    parts = list(good.parts().values())
    assert all(p >= 0 for p in parts) and sum(parts) == pytest.approx(good.total_s, abs=0.01)
    text = path.read_text()
    second = text.index("] job 4 start 1 on ")
    resumed = parse_composer_log(text[second:].splitlines()).train_blocks[0].step - 1
    first = parse_composer_log(text[:second].splitlines())
    assert good.lost_progress_batches == len([b for b in first.train_blocks if b.step > resumed]) > 0
    assert good.checkpoint_restore_s > 0 and good.restart_gap_s > 0


def test_a_start_that_never_trained_is_start_up_and_a_log_without_an_end_line_ends_at_its_last_event() -> None:
    lines = [
        "[2026-12-01T10:00:00.000+00:00] job 7 start 0 on node[1-2]",
        "[2026-12-01T10:00:30.000+00:00] job 7 end: exit code 1 after 30 s",
        "[2026-12-01T10:00:40.000+00:00] job 7 start 1 on node[1-2]",
        "0: " + timing_events.line(WallEvent("restore", 0, 1796119250.0, 1796119245.0)),
        "0: " + timing_events.line(WallEvent("fit_start", 0, 1796119260.0)),
        *("0: " + timing_events.line(WallEvent("batch", b, 1796119260.0 + 2 * b)) for b in range(1, 6)),
        "0: " + timing_events.line(WallEvent("eval", 5, 1796119273.0, 1796119270.0)),
        "0: " + timing_events.line(WallEvent("batch", 6, 1796119275.0)),
    ]
    good = goodput(parse_composer_log(lines))
    assert good is not None
    # 10:00:00 is 1796119200; the log's last event is batch 6 at +75 s
    assert good.total_s == 75.0 and good.starts == 2
    assert (good.startup_s, good.checkpoint_restore_s, good.restart_gap_s) == (30.0 + 15.0, 5.0, 10.0)
    assert (good.productive_s, good.eval_s, good.other_s, good.lost_progress_batches) == (12.0, 3.0, 0.0, 0)
    assert good.goodput == pytest.approx(12.0 / 75.0, abs=1e-4)


def test_a_log_without_timing_events_has_no_goodput_and_no_stragglers() -> None:
    lines = [
        "[2026-12-01T10:00:00+00:00] job 7 start 0 on node[1-2]",
        "[batch=1/2]:",
        "\t Train loss/train/total: 7.0",
        "[2026-12-01T10:01:00+00:00] job 7 end: exit code 0 after 60 s",
    ]
    parsed = parse_composer_log(lines)
    assert goodput(parsed) is None and stragglers(parsed) == ([], [])
    run = summarise_run(parsed)
    assert run.goodput is None and run.stragglers == [] and run.straggler_threshold is None


def test_the_report_writes_stragglers_and_goodput(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    unzipped(THROTTLED, logs)
    unzipped(KILLED, logs)
    assert report_main([str(logs), "--out", str(tmp_path / "out")]) == 0
    runs = {r["job_id"]: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["runs"]}
    (straggler,) = runs["3"]["stragglers"]
    assert set(straggler) == {"node", "rank", "median_compute_s", "ratio_to_median"}
    assert (straggler["node"], straggler["rank"]) == ("node2", 1)
    assert runs["4"]["stragglers"] == []
    keys = {
        "total_s",
        "productive_s",
        "startup_s",
        "checkpoint_save_s",
        "checkpoint_restore_s",
        "eval_s",
        "lost_progress_s",
        "restart_gap_s",
        "other_s",
        "goodput",
    }
    assert keys <= set(runs["4"]["goodput"]) and runs["4"]["goodput"]["lost_progress_batches"] > 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Rank timing" in markdown and "## Goodput" in markdown and "![goodput](goodput.png)" in markdown
    assert "| node2 | 1 |" in markdown and "rank 1 (" in markdown
    assert (tmp_path / "out" / "goodput.png").stat().st_size > 10_000
