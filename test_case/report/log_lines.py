"""What each line of a Composer console log means: the log's records (`ParsedLog`) and `LineParser`,
which reads one line at a time and defines the meaning of every line. Reading a large file fast is
`test_case.report.log_reading`; whatever way a file is read, the result is `LineParser`'s.

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
* the job's start and end lines (`test_case.job_lines`: ``[time] job ID start N on NODES``, ``... end: ...``),
  restart events (`test_case.restart_events`) and timing events (`test_case.timing_events`: one
  per batch, kept in three arrays, `BatchEnds`).

Everything else is counted as unknown and ignored; no input makes the parser raise. Only what the
report uses is kept: the blocks of the reporting rank (the lowest rank that logged train blocks;
those of higher ranks are dropped as soon as a lower one appears) and, with ``keep``, only the
train metrics it names. Memory therefore grows with the number of batches of one rank times the
kept metrics, not with the size of the file.

A line's meaning can depend on the lines before it (a metric line belongs to the block above it, an
unprefixed line to the launcher section it is in). A parser made with ``detached=True`` reads a
later part of a file without them and marks every line whose meaning needs them
(`LineParser.depends_on_earlier`, `LineParser.assumed_no_section`), so that a reader of parts
(`test_case.report.log_reading`) knows which parts it may merge and which it must read again.

At about 420 lines the module is a little over the suite's 400: it is the line forms above, the
records they fill and the one parser that gives them their meaning, kept together so that each line
form is defined in one place.
"""

from __future__ import annotations

import re
import sys
from array import array
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from test_case import job_lines, restart_events, run_header, timing_events
from test_case.failure_lines import FAILURE_LINE, LogLine
from test_case.job_lines import JobStart
from test_case.restart_events import RestartEvent
from test_case.run_header import RunHeader
from test_case.timing_events import TimingEvent

# Pieces of the line patterns below that `test_case.report.log_reading` also builds its patterns of
# many lines from, so that a line has one definition: a rank prefix as ``srun -l`` prints it (the
# text that RANK_PREFIX takes), a step header ``[epoch=E][batch=N/T]:`` (groups: epoch, unit, N, T)
# and a batch's timing event as the callback prints it (`timing_events.line`; groups: batch, time).
RANK_PREFIX_TEXT = r"\d+: ?"
STEP_HEADER = r"(?:\[epoch=(\d+)\])?\[(batch|token|sample)=(\d+)(?:/(\d+))?\]:"
BATCH_END = r'\[timing\] \{"kind":"batch","batch":(\d+),"time":(\d+(?:\.\d*)?)\}'

RANK_PREFIX = re.compile(r"^(\d+): ?")
QUOTE_PREFIX = re.compile(r"^(?:> ?|\[std(?:out|err)\]: ?)")
LAUNCHER_SECTION = re.compile(r"^-{3,}(Begin|End) global rank (\d+) (?:STDOUT|STDERR)-{3,}\s*$")
# A block header ``[batch=N/T]:``, or the one-line form of Composer <= 0.11 ``[batch=N/T]: key: value``
# (also ``[epoch=E][batch=N/T]: ...`` and LLM-Shearing's ``[metric][batch=N]: key: value``).
STEP_LINE = re.compile(r"^(?:\[metric\])?" + STEP_HEADER + r"(?: ([^\s:][^:]*?): (.*?))?\s*$")
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
# A batch's timing event as the callback prints it (`timing_events.line`), read without json.
BATCH_END_LINE = re.compile("^" + BATCH_END + "$")
MAX_FAILURES = 20  # failure lines kept per start: the first ones, which name the cause

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


def rank_order(rank: int | None) -> int:
    """Orders ranks as the reporting rank is chosen: unprefixed lines (``None``) first, then by rank."""
    return -1 if rank is None else rank


class LineParser:
    """The state of parsing one log, fed one line at a time and in file order (`feed_line`).

    ``detached=True`` parses a later part of a file without the state of the parts before it; every
    line whose meaning depends on that state sets `depends_on_earlier` (or `assumed_no_section`).
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
        self.train_stack: dict[int | None, list[MetricBlock]] = {}  # per rank: its stored train blocks
        self.restarted = False  # a start of the job was read (a detached part then ignores the failures before it)
        self.dropped = MetricBlock("train", "batch", 0, 0, None, 0)  # absorbs the lines of blocks not kept

    def _keeps(self, key: str) -> bool:
        return self.keep is None or key in self.keep

    def _store(self, rank: int | None, block: MetricBlock) -> bool:
        """Add ``block`` if ``rank`` can be the reporting rank; drop higher ranks' blocks."""
        order = rank_order(rank)
        if self.best is not None and order > self.best:
            return False
        if block.kind == "train":
            if self.best is None or order < self.best:
                self.best = order
                for other in [r for r in self.log.blocks if rank_order(r) > order]:
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
                    if self.best is not None and rank_order(rank) > self.best:
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
            if stripped.startswith(timing_events.STREAM_DRAWS_PREFIX) and (draws := timing_events.parse_line(stripped)):
                self.log.timing_events.append((self.number, draws))
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
            if (mark := job_lines.parse(stripped)) is not None:
                self.log.job_id = mark.job_id
                started = isinstance(mark, JobStart)
                self.log.job_marks.append(JobMark(self.number, "start" if started else "end", mark.time))
                if isinstance(mark, JobStart):
                    self._new_start()
                else:
                    self.log.end_code = mark.exit_code
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

    def finish(self) -> ParsedLog:
        """The parsed log."""
        self.log.lines = self.number
        return self.log


def parse_composer_log(lines: Iterable[str], path: str = "<memory>", keep: AbstractSet[str] | None = None) -> ParsedLog:
    """Parse log lines (with or without newlines) one at a time into a `ParsedLog`.

    ``keep`` names the train metrics to store (default: all); eval metrics are all stored.
    """
    parser = LineParser(path, keep)
    for raw in lines:
        parser.feed_line(raw)
    return parser.finish()
