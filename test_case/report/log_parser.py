"""Parsing of Composer console logs into metric blocks: the only module that reads log text.

A training log is Composer's console output, possibly interleaved from several nodes and prefixed
by ``srun -l`` (``0: ``) or split into Composer launcher sections (``----------Begin global rank 1
STDERR----------``), possibly pasted with ``> `` or ``[stderr]: `` in front of each line. It holds:

* metric blocks: a header ``[batch=N/T]:`` (or ``[epoch=E][batch=N/T]:``, ``[token=N/T]:``,
  ``[sample=N/T]:``) followed by lines ``<TAB> Train <key>: <value>`` (``Eval`` for evaluation);
  Composer prints the block after batch N finished. Composer <= 0.11 printed one metric per line,
  ``[batch=N/T]: key: value``; those lines are gathered into one block per step.
* eval results: progress lines ``[Eval batch=k/K] Eval on <label> data``; the last one ends with
  ``:`` and is followed by ``Eval metrics/eval/...`` lines. Its step is that of the train block
  before it.
* the run header written by ``slurm-scripts/2.train-mpt-manual-distributed.sbatch``: lines
  ``[run-header] key: value``;
* llm-foundry's config dump (YAML at the start of training): ``n_params``, ``max_seq_len``,
  ``global_train_batch_size`` and the model shape are read from it;
* the job's start and end lines (``[time] job ID start N on NODES``, ``[time] job ID end: ...``),
  restart events (`test_case.restart_events`) and timing events (`test_case.timing_events`: one
  per batch, kept in three arrays, `BatchEnds`).

Everything else is counted as unknown and ignored; no input makes the parser raise. Only what the
report uses is kept: the blocks of the reporting rank (the lowest rank that logged train blocks;
those of higher ranks are dropped as soon as a lower one appears) and, with ``keep``, only the
train metrics it names. Memory therefore grows with the number of batches of one rank times the
kept metrics, not with the size of the file.

How it reads (`LogParser`): `LogParser.feed_line` gives each line its meaning, one line at a time.
Most of a log is metric blocks whose lines repeat the keys of the block before, so
`LogParser.feed_text` reads a block with one regular expression built from those keys (a "shape")
and hands every other line to `feed_line`; both paths give the same result, which the tests check
on real and generated logs. A large file is cut at block headers into parts that worker processes
parse at the same time (`parse_log_file`); a part is merged only where its lines mean the same
without the state of the parts before it, and is read again in order otherwise.
"""

from __future__ import annotations

import codecs
import functools
import gc
import io
import itertools
import multiprocessing
import os
import re
import sys
from array import array
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from test_case import restart_events, run_header, timing_events
from test_case.failure_lines import FAILURE_LINE, FAILURE_STARTS, LogLine
from test_case.restart_events import RestartEvent
from test_case.run_header import RunHeader
from test_case.timing_events import TimingEvent

RANK_PREFIX = re.compile(r"^(\d+): ?")
QUOTE_PREFIX = re.compile(r"^(?:> ?|\[std(?:out|err)\]: ?)")
LAUNCHER_SECTION = re.compile(r"^-{3,}(Begin|End) global rank (\d+) (?:STDOUT|STDERR)-{3,}\s*$")
# A block header ``[batch=N/T]:``, or the one-line form of Composer <= 0.11 ``[batch=N/T]: key: value``
# (also ``[epoch=E][batch=N/T]: ...`` and LLM-Shearing's ``[metric][batch=N]: key: value``).
STEP_LINE = re.compile(
    r"^(?:\[metric\])?(?:\[epoch=(\d+)\])?\[(batch|token|sample)=(\d+)(?:/(\d+))?\]:"
    r"(?: ([^\s:][^:]*?): (.*?))?\s*$"
)
METRIC_LINE = re.compile(r"^\s*(Train|Eval) ([^\s:][^:]*?): (.*?)\s*$")
EVAL_PROGRESS = re.compile(r"^\[Eval batch=(\d+)/(\d+)\] Eval on (.+?)(:?)\s*$")
CONFIG_KEYS = {
    "n_params": int,
    "max_seq_len": int,
    "global_train_batch_size": int,
    "device_train_microbatch_size": int,
    "d_model": int,
    "n_layers": int,
    "n_heads": int,
    "vocab_size": int,
    "precision": str,
    "max_duration": str,
    "activation_checkpointing": str,
    "mixed_precision": str,
    "sharding_strategy": str,
    "attn_impl": str,
    "alibi": str,
    "run_name": str,
}
CONFIG_LINE = re.compile(r"^\s*(" + "|".join(CONFIG_KEYS) + r"): (\S.*?)\s*$")
# What the training script prints first and last at each start (slurm-scripts/2.train-...sbatch).
JOB_LINE = re.compile(r"^\[([^\]]+)\] job (\S+) (?:start (\d+) on \S.*|end: exit code (\d+)(?: \(.*\))? after \d+ s)$")
# A batch's timing event as the callback prints it (`timing_events.line`), read without json.
BATCH_END_LINE = re.compile(r'^\[timing\] \{"kind":"batch","batch":(\d+),"time":(\d+(?:\.\d*)?)\}$')
# The same line in `LogParser.feed_text`, with its rank prefix (as RANK_PREFIX takes it) and newline.
BATCH_END_TEXT = re.compile(r'((?:\d+: ?)?)\[timing\] \{"kind":"batch","batch":(\d+),"time":(\d+(?:\.\d*)?)\}[ \t]*\n')
MAX_FAILURES = 20  # failure lines kept per start: the first ones, which name the cause

# The block path of `LogParser.feed_text`: a block header line in Composer's own form (rank prefix or
# none, no other prefix, no trailing text), and metric lines ``<prefix><TAB> Train key: value``, each
# a case of METRIC_LINE, as `feed_line` would read them.
BLOCK_HEADER = re.compile(r"((?:\d+: ?)?)(?:\[epoch=(\d+)\])?\[(batch|token|sample)=(\d+)(?:/(\d+))?\]:[ \t]*\n")
BLOCK_HEADER_BYTES = re.compile(rb"\n(?:\d+: ?)?(?:\[epoch=\d+\])?\[(?:batch|token|sample)=\d+(?:/\d+)?\]:[ \t]*\r?\n")


METRIC_BODY_LINE = re.compile(r"\t Train ([^\s:][^:\n]*+): [^\S\n]*+\S[^\n]*+\n")
KEPT_VALUE = r"[^\S\n]*+(\S(?:[^\n]*\S)?)[^\S\n]*+\n"  # the value without surrounding whitespace
SKIPPED_VALUE = r"[^\S\n]*+\S[^\n]*+\n"
MAX_SHAPES = 256  # distinct block shapes kept compiled per file
RECENT_SHAPES = 4  # shapes tried per rank prefix before learning one (with and without throughput, ...)
CHUNK_BYTES = 1 << 22  # read at a time
PARALLEL_MIN_BYTES = 64 << 20  # smallest part worth a process of its own
SPLIT_WINDOW_BYTES = 1 << 20  # how far past a cut point to look for a block header


# The noise path of `LogParser.feed_text`: a run of consecutive lines of one rank prefix (or of none)
# that `feed_line` would only count as unknown: Python logging, warnings, tracebacks, the config
# dump's other keys and its keys already read. After the prefix (taken whole, as RANK_PREFIX takes
# it), optional spaces, then a character that is no whitespace, ``[``, ``>`` or ``-``, and never a
# ``Train ``/``Eval `` metric, a failure line nor a config key still to read; or two or more spaces and then ``-``
# or ``>`` (a YAML list item). Any other line goes to `feed_line`.
@functools.lru_cache(maxsize=64)
def noise_pattern(read_keys: frozenset[str]) -> re.Pattern[str]:
    """The noise path's pattern once the config keys ``read_keys`` have been read."""
    to_read = [k for k in CONFIG_KEYS if k not in read_keys]
    not_read = r"(?!(?:Train|Eval) )(?!" + FAILURE_STARTS + ")"
    not_read += r"(?!(?:" + "|".join(to_read) + r"): )" if to_read else ""
    body = r"(?:[ \t]*+" + not_read + r"[^\s\[>\-]|[ \t]{2}[ \t]*+[>\-])[^\n]*+\n"
    return re.compile(rf"(?:(?>(\d+: ?)){body}(?:\1{body})*+|(?!\d+:){body}(?:(?!\d+:){body})*+)")


Value = float | int | str


@dataclass(slots=True)
class MetricBlock:
    """One block of metrics that Composer logged at one point of training."""

    kind: str  # "train" or "eval"
    unit: str  # "batch", "token" or "sample"
    step: int  # N in [batch=N/T]: the batches (tokens, samples) done when it was printed
    total: int  # T
    epoch: int | None
    line: int  # 1-based line of the header in the file
    metrics: dict[str, Value] = field(default_factory=dict)

    def __reduce__(self) -> tuple[type[MetricBlock], tuple[object, ...]]:
        """Pickled as its fields (much faster than the generic path for slotted dataclasses)."""
        return MetricBlock, (self.kind, self.unit, self.step, self.total, self.epoch, self.line, self.metrics)


@dataclass(frozen=True, slots=True)
class JobMark:
    """A start or end line of the training job, with the time it printed (ISO 8601, as printed)."""

    line: int
    kind: str  # "start" or "end"
    time: str


@dataclass
class BatchEnds:
    """The ``batch`` timing events, as three arrays: the line, the batch and its end (Unix s)."""

    lines: array[int] = field(default_factory=lambda: array("q"))
    batches: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))

    def append(self, line: int, batch: int, time: float) -> None:
        """One batch's end."""
        self.lines.append(line)
        self.batches.append(batch)
        self.times.append(time)

    def extend(self, later: BatchEnds, line_offset: int) -> None:
        """Append those of a later part of the file, whose lines start after ``line_offset``."""
        self.lines.extend(n + line_offset for n in later.lines)
        self.batches.extend(later.batches)
        self.times.extend(later.times)


@dataclass
class ParsedLog:
    """What one log file holds, per rank prefix (``None`` where lines carry no prefix)."""

    path: str
    blocks: dict[int | None, list[MetricBlock]] = field(default_factory=dict)
    header_fields: dict[str, str] = field(default_factory=dict)  # run-header lines as printed; the last wins
    config: dict[str, Value] = field(default_factory=dict)
    lines: int = 0
    unknown_lines: int = 0
    starts: int = 0  # run headers seen: 1 + the restarts of a requeued job
    job_id: str | None = None  # of the last job start or end line (the run header's is in header_fields)
    failures: list[LogLine] = field(default_factory=list)  # failure lines since the last start, the first ones
    end_code: int | None = None  # exit code in the job's end line of the last start, if it printed one
    restart_events: list[RestartEvent] = field(default_factory=list)  # `test_case.restart_events`, in order
    job_marks: list[JobMark] = field(default_factory=list)  # the job's start and end lines, in order
    timing_events: list[tuple[int, TimingEvent]] = field(default_factory=list)  # (line, event), but batch ends
    batch_ends: BatchEnds = field(default_factory=BatchEnds)  # the ``batch`` timing events

    @property
    def header(self) -> RunHeader:
        """The run header (`test_case.run_header`); all fields None in a log without one."""
        return RunHeader.from_fields(self.header_fields)

    @property
    def declared_run_name(self) -> str | None:
        """The run's name as the log states it: the run header's, else llm-foundry's config dump's."""
        name = self.header_fields.get("run_name") or self.config.get("run_name")
        return str(name) if name else None

    @property
    def run_name(self) -> str:
        """The name the report gives the run: `declared_run_name`, else the log file's name without
        its suffix (such logs are never grouped with another file)."""
        return self.declared_run_name or Path(self.path).stem

    @property
    def reporting_rank(self) -> int | None:
        """The rank whose blocks describe the run: the lowest rank that logged train blocks."""
        ranks = [r for r, bs in self.blocks.items() if any(b.kind == "train" for b in bs)]
        if not ranks:
            return None
        return min(ranks, key=lambda r: -1 if r is None else r)

    @property
    def train_blocks(self) -> list[MetricBlock]:
        """Train blocks of the reporting rank, in file order."""
        return [b for b in self.blocks.get(self.reporting_rank, []) if b.kind == "train"]


def parse_value(text: str) -> Value:
    """Turn a logged value into int, float (``nan``/``inf`` included) or the string itself."""
    text = text.strip()
    if text.isdecimal():
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)  # "-3"
    except ValueError:
        return text


class _Incoming:
    """Marks state that comes from the part of the file before a detached parser's part."""


INCOMING = _Incoming()


def _rank_order(rank: int | None) -> int:
    return -1 if rank is None else rank


@dataclass(slots=True)
class _Shape:
    """A regular expression for the metric lines of one block, learned from a block of one prefix."""

    pattern: re.Pattern[str]
    lines: int  # metric lines it matches
    kept: tuple[str, ...]  # keys whose values its groups capture, in order
    next_metric: str  # a line after the match that starts with this may be one more metric line


class LogParser:
    """The state of parsing one log, fed in file order (`feed_line`, `feed_text`, `feed_file`).

    ``detached=True`` parses a later part of a file without the state of the parts before it; every
    line whose meaning depends on that state sets `depends_on_earlier` (or `assumed_no_section`),
    and `absorb` merges such a part into the parser of the parts before it.
    """

    def __init__(self, path: str = "<memory>", keep: AbstractSet[str] | None = None, detached: bool = False):
        self.log = ParsedLog(path=path)
        self.keep = keep
        self.detached = detached
        self.number = 0  # lines read
        self.current: dict[int | None, MetricBlock | None] = {}  # the block each rank's metric lines go to
        self.best: int | None = None  # order of the reporting rank so far
        self.section_rank: int | None = None  # inside a launcher "Begin global rank K" section
        self.section_known = not detached
        self.assumed_no_section = False  # detached: an unprefixed line was read as outside a section
        self.depends_on_earlier = False  # detached: a line's meaning needs the parts before
        self.shapes: dict[str, list[_Shape]] = {}  # per rank prefix: its latest block shapes, the last first
        self.noise = noise_pattern(frozenset())
        self.known_shapes: dict[tuple[str, tuple[str, ...]], _Shape] = {}
        self.prefix_ranks: dict[str, int] = {}
        self.totals: dict[str | None, int] = {}
        self.train_stack: dict[int | None, list[MetricBlock]] = {}  # per rank: its stored train blocks
        self.restarted = False  # a start of the job was read (a detached part then ignores the failures before it)
        self.dropped = MetricBlock("train", "batch", 0, 0, None, 0)  # absorbs the lines of blocks not kept

    def __getstate__(self) -> dict[str, object]:
        """Compiled shapes stay behind when a worker sends its part back."""
        state = self.__dict__.copy()
        state["shapes"], state["known_shapes"], state["noise"] = {}, {}, None
        return state

    def _keeps(self, key: str) -> bool:
        return self.keep is None or key in self.keep

    def _store(self, rank: int | None, block: MetricBlock) -> bool:
        """Add ``block`` if ``rank`` can be the reporting rank; drop higher ranks' blocks."""
        order = _rank_order(rank)
        if self.best is not None and order > self.best:
            return False
        if block.kind == "train":
            if self.best is None or order < self.best:
                self.best = order
                for other in [r for r in self.log.blocks if _rank_order(r) > order]:
                    del self.log.blocks[other]
                    self.train_stack.pop(other, None)
            self.train_stack.setdefault(rank, []).append(block)
        self.log.blocks.setdefault(rank, []).append(block)
        return True

    def _local_blocks(self, rank: int | None) -> list[MetricBlock]:
        """The stored blocks of ``rank``; a detached parser without any depends on the parts before."""
        blocks = self.log.blocks.get(rank, [])
        if self.detached and not blocks:
            self.depends_on_earlier = True
        return blocks

    def _last_train(self, rank: int | None) -> MetricBlock | None:
        """The last stored train block of ``rank`` (constant time: evals come every N batches, and
        a long log has many); a detached parser without one depends on the parts before."""
        stack = self.train_stack.get(rank)
        if stack:
            return stack[-1]
        if self.detached:
            self.depends_on_earlier = True
        return None

    def _turn_eval(self, rank: int | None, block: MetricBlock) -> None:
        """An ``Eval`` line in ``block``: it is an eval block. It is the last block of its rank, so
        if it was stored as a train block it is the top of the rank's train stack."""
        if block.kind == "train":
            stack = self.train_stack.get(rank)
            if stack and stack[-1] is block:
                stack.pop()
            block.kind = "eval"

    def feed_line(self, raw: str) -> None:
        """Read one line (with or without its newline)."""
        self.number += 1
        line = raw.rstrip()
        if not line:
            return
        rank = self.section_rank
        first = line[0]
        m = RANK_PREFIX.match(line) if first.isdigit() else None
        if m:
            rank, line = int(m.group(1)), line[m.end() :]
            if not line:
                return
            first = line[0]
        elif not self.section_known:
            self.assumed_no_section = True
        if first in ">[" and (m := QUOTE_PREFIX.match(line)):
            line = line[m.end() :]
            first = line[:1]
        # Metric lines are most of a log: test for them first, with a cheap substring check.
        if ("Train " in line or "Eval " in line) and (metric := METRIC_LINE.match(line)):
            block = self.current.get(rank, INCOMING if self.detached else None)
            if isinstance(block, MetricBlock):
                kind, key, value = metric.groups()
                if kind == "Eval":
                    self._turn_eval(rank, block)
                if block.kind == "eval" or self._keeps(key):
                    block.metrics[sys.intern(key)] = parse_value(value)  # one key object for all blocks
                return
            if block is INCOMING:
                self.depends_on_earlier = True
        self.current[rank] = None
        stripped = line.strip()
        if stripped[:1] == "[":
            if step := STEP_LINE.match(stripped):
                self._step_line(rank, step)
                return
            if progress := EVAL_PROGRESS.match(stripped):
                if progress.group(4):
                    if self.best is not None and _rank_order(rank) > self.best:
                        self.current[rank] = self.dropped  # a higher rank's eval: read, not kept
                        return
                    last_train = self._last_train(rank)
                    block = MetricBlock(
                        "eval",
                        last_train.unit if last_train else "batch",
                        last_train.step if last_train else 0,
                        last_train.total if last_train else 0,
                        None,
                        self.number,
                    )
                    self._store(rank, block)
                    self.current[rank] = block
                return
            if stripped.startswith(run_header.PREFIX) and (item := run_header.parse_line(stripped)):
                key, value = item
                if key == run_header.START_KEY:
                    self.log.starts += 1
                    self._new_start()
                self.log.header_fields[key] = value
                return
            if stripped.startswith(timing_events.PREFIX):
                if batch_end := BATCH_END_LINE.match(stripped):
                    self.log.batch_ends.append(self.number, int(batch_end.group(1)), float(batch_end.group(2)))
                    return
                if timing := timing_events.parse_line(stripped):
                    self.log.timing_events.append((self.number, timing))
                    return
            if stripped.startswith(restart_events.PREFIX) and (event := restart_events.parse_line(stripped)):
                self.log.restart_events.append(event)
                return
            if job := JOB_LINE.match(stripped):
                self.log.job_id = job.group(2)
                started = job.group(3) is not None
                self.log.job_marks.append(JobMark(self.number, "start" if started else "end", job.group(1)))
                if started:
                    self._new_start()
                else:
                    self.log.end_code = int(job.group(4))
                return
        elif first == "-" and (section := LAUNCHER_SECTION.match(stripped)):
            self.section_rank = int(section.group(2)) if section.group(1) == "Begin" else None
            self.section_known = True
            return
        elif ": " in line and (config := CONFIG_LINE.match(line)):
            key, value = config.groups()
            parsed = parse_value(value)
            if key not in self.log.config and (CONFIG_KEYS[key] is not int or isinstance(parsed, int)):
                self.log.config[key] = parsed
                self.noise = noise_pattern(frozenset(self.log.config))  # its next lines are noise
                return
        if FAILURE_LINE.match(stripped):
            if len(self.log.failures) < MAX_FAILURES:
                self.log.failures.append(LogLine(self.number, raw.rstrip("\r\n")))
            return
        self.log.unknown_lines += 1

    def _new_start(self) -> None:
        """A start of the job (its start line, or a run header): what ended the one before is past."""
        self.log.failures = []
        self.log.end_code = None
        self.restarted = True

    def _step_line(self, rank: int | None, step: re.Match[str]) -> None:
        """A block header, or one metric in the one-line form of Composer <= 0.11."""
        epoch, unit, n, total, key, value = step.groups()
        block = None
        if key is not None:  # one-line form: metrics of one step share a block
            previous = self._local_blocks(rank)
            last = previous[-1] if previous else None
            if last is not None and last.unit == unit and last.step == int(n) and last.kind == "train":
                block = last
        if block is None:
            block = MetricBlock("train", unit, int(n), int(total or 0), int(epoch) if epoch else None, self.number)
            self._store(rank, block)  # a dropped block still absorbs its metric lines
        if key is None:
            self.current[rank] = block
        elif self._keeps(key):
            block.metrics[key] = parse_value(value)

    def feed_text(self, text: str, end: int | None = None) -> None:
        """Read the complete lines of ``text[:end]`` (it ends with a newline): whole blocks at a time
        where their lines have the shape of the block before, every other line with `feed_line`."""
        end = len(text) if end is None else end
        pos = 0
        header = BLOCK_HEADER.match
        batch_end_line = BATCH_END_TEXT.match
        shapes, current, totals = self.shapes, self.current, self.totals
        while pos < end:
            m = header(text, pos, end)
            if m is None:
                if run := self.noise.match(text, pos, end):  # unknown lines of one prefix, as feed_line counts them
                    lines = text.count("\n", pos, run.end())
                    self.number += lines
                    self.log.unknown_lines += lines
                    current[self._prefix_rank(run.group(1) or "")] = None
                    pos = run.end()
                    continue
                if batch_end := batch_end_line(text, pos, end):  # one per batch: read here, as feed_line would
                    self.number += 1
                    current[self._prefix_rank(batch_end.group(1))] = None
                    self.log.batch_ends.append(self.number, int(batch_end.group(2)), float(batch_end.group(3)))
                    pos = batch_end.end()
                    continue
                newline = text.index("\n", pos, end)
                self.feed_line(text[pos:newline])
                pos = newline + 1
                continue
            prefix, epoch, unit, n, total = m.groups()
            rank = self._prefix_rank(prefix)
            body_start = m.end()
            body = None
            for shape in shapes.get(prefix, ()):  # the shape of the block before, else of one before it
                body = shape.pattern.match(text, body_start, end)
                if body is not None and not text.startswith(shape.next_metric, body.end()):
                    break
                body = None
            if body is None:
                shape = self._learn_shape(text, body_start, end, prefix)  # a new shape, or a longer one
                body = shape.pattern.match(text, body_start, end)
                assert body is not None  # a shape matches the block it was learned from
            recent = shapes[prefix]
            if recent[0] is not shape:
                recent.remove(shape)
                recent.insert(0, shape)
            self.number += 1
            if self.best is not None and _rank_order(rank) > self.best:
                current[rank] = self.dropped  # a higher rank's block: read, not kept
            else:
                values = body.groups()
                try:  # parse_value's common cases, without a call per value
                    parsed: list[Value] = [int(v) if v.isdecimal() else float(v) for v in values]
                except ValueError:
                    parsed = [parse_value(v) for v in values]
                total_steps = totals.get(total)
                if total_steps is None:
                    total_steps = totals[total] = int(total or 0)  # one int object per distinct T
                block = MetricBlock(
                    "train",
                    unit,
                    int(n),
                    total_steps,
                    int(epoch) if epoch else None,
                    self.number,
                    dict(zip(shape.kept, parsed, strict=True)),
                )
                self._store(rank, block)
                current[rank] = block
            self.number += shape.lines
            pos = body.end()

    def _prefix_rank(self, prefix: str) -> int | None:
        """The rank of a line with this rank prefix (``"3: "``), or of an unprefixed line."""
        if prefix:
            rank = self.prefix_ranks.get(prefix)
            if rank is None:
                rank = self.prefix_ranks[prefix] = int(prefix[: prefix.index(":")])
            return rank
        if not self.section_known:
            self.assumed_no_section = True
        return self.section_rank

    def _learn_shape(self, text: str, pos: int, end: int, prefix: str) -> _Shape:
        """The shape of the block whose metric lines start at ``pos``."""
        keys: list[str] = []
        while text.startswith(prefix, pos) and (line := METRIC_BODY_LINE.match(text, pos + len(prefix), end)):
            keys.append(sys.intern(line.group(1)))
            pos = line.end()
        shape = self.known_shapes.get((prefix, tuple(keys)))
        if shape is None:
            start = re.escape(prefix) + r"\t Train "
            pattern = "".join(
                start + re.escape(k) + ": " + (KEPT_VALUE if self._keeps(k) else SKIPPED_VALUE) for k in keys
            )
            kept = tuple(k for k in keys if self._keeps(k))
            shape = _Shape(re.compile(pattern), len(keys), kept, prefix + "\t Train ")
            if len(self.known_shapes) < MAX_SHAPES:
                self.known_shapes[(prefix, tuple(keys))] = shape
        recent = self.shapes.setdefault(prefix, [])
        if shape not in recent:
            recent.insert(0, shape)
            del recent[RECENT_SHAPES:]
        return shape

    def feed_file(self, path: Path, start: int = 0, end: int | None = None) -> None:
        """Read bytes ``start:end`` of a file (``start`` at a line start), as text mode would decode them:
        UTF-8 with undecodable bytes replaced, ``\r\n`` and ``\r`` read as newlines."""
        decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(errors="replace"), translate=True)
        carry = ""
        with path.open("rb") as fh:
            fh.seek(start)
            left = (path.stat().st_size if end is None else end) - start
            while left > 0:
                data = fh.read(min(CHUNK_BYTES, left))
                if not data:
                    break
                left -= len(data)
                text = carry + decoder.decode(data)
                cut = text.rfind("\n") + 1
                self.feed_text(text, cut)
                carry = text[cut:]
        text = carry + decoder.decode(b"", final=True)
        cut = text.rfind("\n") + 1
        self.feed_text(text, cut)
        if text[cut:]:
            self.feed_line(text[cut:])

    def absorb(self, later: LogParser) -> bool:
        """Append the part that the detached parser ``later`` read after this one's; False (and no
        change) when its lines would mean something else after this part: read that part again."""
        if later.depends_on_earlier or (later.assumed_no_section and self.section_rank is not None):
            return False
        log = self.log
        for rank, blocks in later.log.blocks.items():
            for block in blocks:
                block.line += self.number
            log.blocks.setdefault(rank, []).extend(blocks)
        # Read in order, the reporting rank would be the lower of the two (a block counts as train by
        # its kind when stored: an Eval line may turn it into an eval block later, in either order).
        bests = [b for b in (self.best, later.best) if b is not None]
        self.best = min(bests) if bests else None
        for rank, stack in later.train_stack.items():
            self.train_stack.setdefault(rank, []).extend(stack)
        for rank in [r for r in log.blocks if self.best is not None and _rank_order(r) > self.best]:
            del log.blocks[rank]
            self.train_stack.pop(rank, None)
        self.current.update(later.current)
        if later.section_known:
            self.section_rank = later.section_rank
        log.header_fields.update(later.log.header_fields)
        config_keys = len(log.config)
        for key, value in later.log.config.items():
            if key in log.config:
                log.unknown_lines += 1  # read in order, a second dump of a key is not config
            else:
                log.config[key] = value
        if len(log.config) != config_keys:
            self.noise = noise_pattern(frozenset(log.config))
        log.starts += later.log.starts
        log.restart_events.extend(later.log.restart_events)
        log.job_marks.extend(JobMark(m.line + self.number, m.kind, m.time) for m in later.log.job_marks)
        log.timing_events.extend((n + self.number, e) for n, e in later.log.timing_events)
        log.batch_ends.extend(later.log.batch_ends, self.number)
        later_failures = [LogLine(f.number + self.number, f.text) for f in later.log.failures]
        if later.restarted:
            log.failures, log.end_code = later_failures, later.log.end_code
            self.restarted = True
        else:
            log.failures = (log.failures + later_failures)[:MAX_FAILURES]
            if later.log.end_code is not None:
                log.end_code = later.log.end_code
        log.job_id = later.log.job_id or log.job_id
        log.unknown_lines += later.log.unknown_lines
        self.number += later.number
        return True

    def finish(self) -> ParsedLog:
        """The parsed log."""
        self.log.lines = self.number
        return self.log


def parse_composer_log(lines: Iterable[str], path: str = "<memory>", keep: AbstractSet[str] | None = None) -> ParsedLog:
    """Parse log lines (with or without newlines) one at a time into a `ParsedLog`.

    ``keep`` names the train metrics to store (default: all); eval metrics are all stored.
    """
    parser = LogParser(path, keep)
    for raw in lines:
        parser.feed_line(raw)
    return parser.finish()


def _parse_part(path: str, keep: AbstractSet[str] | None, start: int, end: int, sender: Connection) -> None:
    """Worker process: parse bytes ``start:end`` of ``path`` without the parts before them; send the
    parser back (the worker then exits and frees its memory)."""
    parser = LogParser(path, keep, detached=True)
    parser.feed_file(Path(path), start, end)
    sender.send(parser)
    sender.close()


def split_points(path: Path, parts: int) -> list[int]:
    """Offsets that cut ``path`` into about ``parts`` equal parts, each starting at a block header
    line where one is near (else at a line start); the first is 0 and the last the file size."""
    size = path.stat().st_size
    points = [0]
    with path.open("rb") as fh:
        for i in range(1, parts):
            fh.seek(size * i // parts)
            window = fh.read(SPLIT_WINDOW_BYTES)
            header = BLOCK_HEADER_BYTES.search(window)
            newline = window.find(b"\n")
            if header is None and newline < 0:
                continue
            point = fh.tell() - len(window) + (header.start() + 1 if header else newline + 1)
            if points[-1] < point < size:
                points.append(point)
    return [*points, size]


def default_jobs() -> int:
    """Processes `parse_log_file` uses: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_log_file(
    path: Path,
    keep: AbstractSet[str] | None = None,
    jobs: int | None = None,
    min_part_bytes: int = PARALLEL_MIN_BYTES,
) -> ParsedLog:
    """Parse one file; undecodable bytes are replaced, not fatal. A file of at least
    ``min_part_bytes`` per process is split into ``jobs`` parts parsed at the same time (where
    processes can be forked); the result is the same as reading it line by line."""
    jobs = default_jobs() if jobs is None else jobs
    parts = min(jobs, path.stat().st_size // max(1, min_part_bytes))
    points = split_points(path, parts) if parts > 1 and "fork" in multiprocessing.get_all_start_methods() else []
    parser = LogParser(str(path), keep)
    collecting = gc.isenabled()
    gc.disable()  # parsing makes no reference cycles; collections over the growing heap only cost time
    try:
        if len(points) <= 2:
            parser.feed_file(path)
            return parser.finish()
        later_parts = list(itertools.pairwise(points))[1:]
        context = multiprocessing.get_context("fork")
        workers = []
        for start, end in later_parts:
            receiver, sender = context.Pipe(duplex=False)
            worker = context.Process(target=_parse_part, args=(str(path), keep, start, end, sender), daemon=True)
            worker.start()
            sender.close()
            workers.append((worker, receiver))
        try:
            parser.feed_file(path, 0, points[1])
            for (start, end), (worker, receiver) in zip(later_parts, workers, strict=True):
                try:
                    later = receiver.recv()
                except EOFError:  # the worker died (killed, out of memory): read its part here
                    later = None
                worker.join()
                if later is None or not parser.absorb(later):
                    parser.feed_file(path, start, end)
        finally:
            for worker, _ in workers:
                if worker.is_alive():
                    worker.kill()
        return parser.finish()
    finally:
        if collecting:
            gc.enable()
