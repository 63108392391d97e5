"""Reading a large log file fast: the same `ParsedLog` as `test_case.report.log_lines.LineParser`
reading it line by line (which defines what each line means), in a fraction of the time.

`LogReader` reads decoded text in chunks (`LogReader.feed_file`). Most of a log is metric blocks
whose lines repeat the keys of the block before, so `LogReader.feed_text` reads a block with one
regular expression built from those keys (a "shape"), a run of lines that would only count as
unknown with one match (the noise path), a batch's timing line with one match, and hands every
other line to `LineParser.feed_line`. A large file is cut at block headers into parts that worker
processes read at the same time (`parse_log_file`); a part is merged (`LogReader.absorb`) only where
its lines mean the same without the state of the parts before it, and is read again in order
otherwise. All paths give the same result, which tests/test_log_reading_paths.py checks on real and
generated logs.
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
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from test_case.failure_lines import FAILURE_STARTS, LogLine
from test_case.report.log_lines import (
    BATCH_END,
    CONFIG_KEYS,
    MAX_FAILURES,
    RANK_PREFIX_TEXT,
    STEP_HEADER,
    JobMark,
    LineParser,
    MetricBlock,
    ParsedLog,
    Value,
    parse_value,
    rank_order,
)

# The block path of `LogReader.feed_text`: a block header line in Composer's own form (rank prefix or
# none, no other prefix, no trailing text), and metric lines ``<prefix><TAB> Train key: value``, each
# a case of METRIC_LINE, as `feed_line` would read them. Groups: the rank prefix as RANK_PREFIX takes
# it (or ""), then STEP_HEADER's. In bytes, where a part of the file may start.
BLOCK_HEADER = re.compile(rf"((?:{RANK_PREFIX_TEXT})?){STEP_HEADER}[ \t]*\n")
BLOCK_HEADER_BYTES = re.compile(rf"\n(?:{RANK_PREFIX_TEXT})?{STEP_HEADER}[ \t]*\r?\n".encode())
# A batch's timing line (BATCH_END_LINE) with its rank prefix (as above) and newline.
BATCH_END_TEXT = re.compile(rf"((?:{RANK_PREFIX_TEXT})?){BATCH_END}[ \t]*\n")
METRIC_BODY_LINE = re.compile(r"\t Train ([^\s:][^:\n]*+): [^\S\n]*+\S[^\n]*+\n")
KEPT_VALUE = r"[^\S\n]*+(\S(?:[^\n]*\S)?)[^\S\n]*+\n"  # the value without surrounding whitespace
SKIPPED_VALUE = r"[^\S\n]*+\S[^\n]*+\n"
MAX_SHAPES = 256  # distinct block shapes kept compiled per file
RECENT_SHAPES = 4  # shapes tried per rank prefix before learning one (with and without throughput, ...)
CHUNK_BYTES = 1 << 22  # read at a time
PARALLEL_MIN_BYTES = 64 << 20  # smallest part worth a process of its own
SPLIT_WINDOW_BYTES = 1 << 20  # how far past a cut point to look for a block header


# The noise path of `LogReader.feed_text`: a run of consecutive lines of one rank prefix (or of none)
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
    prefix, not_prefix = f"(?>({RANK_PREFIX_TEXT}))", f"(?!{RANK_PREFIX_TEXT})"
    return re.compile(rf"(?:{prefix}{body}(?:\1{body})*+|{not_prefix}{body}(?:{not_prefix}{body})*+)")


@dataclass(slots=True)
class _Shape:
    """A regular expression for the metric lines of one block, learned from a block of one prefix."""

    pattern: re.Pattern[str]
    lines: int  # metric lines it matches
    kept: tuple[str, ...]  # keys whose values its groups capture, in order
    next_metric: str  # a line after the match that starts with this may be one more metric line


class LogReader(LineParser):
    """`LineParser` with faster ways to read: many lines at a time (`feed_text`), a file in chunks
    (`feed_file`), and parts of a file read by detached readers and merged (`absorb`)."""

    def __init__(self, path: str = "<memory>", keep: AbstractSet[str] | None = None, detached: bool = False):
        super().__init__(path, keep, detached)
        self.shapes: dict[str, list[_Shape]] = {}  # per rank prefix: its latest block shapes, the last first
        self.known_shapes: dict[tuple[str, tuple[str, ...]], _Shape] = {}
        self.noise = noise_pattern(frozenset())
        self.noise_keys = 0  # config keys read when `noise` was made (a key read makes its lines noise)
        self.prefix_ranks: dict[str, int] = {}
        self.totals: dict[str | None, int] = {}

    def __getstate__(self) -> dict[str, object]:
        """Compiled shapes stay behind when a worker sends its part back."""
        state = self.__dict__.copy()
        state["shapes"], state["known_shapes"], state["noise"], state["noise_keys"] = {}, {}, None, -1
        return state

    def feed_text(self, text: str, end: int | None = None) -> None:
        """Read the complete lines of ``text[:end]`` (it ends with a newline): whole blocks at a time
        where their lines have the shape of the block before, every other line with `feed_line`."""
        end = len(text) if end is None else end
        pos = 0
        header = BLOCK_HEADER.match
        batch_end_line = BATCH_END_TEXT.match
        shapes, current, totals, config = self.shapes, self.current, self.totals, self.log.config
        if len(config) != self.noise_keys:
            self._renew_noise()
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
                if len(config) != self.noise_keys:  # a config key was read: its next lines are noise
                    self._renew_noise()
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
            if self.best is not None and rank_order(rank) > self.best:
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

    def _renew_noise(self) -> None:
        """The noise path's pattern for the config keys read so far."""
        self.noise = noise_pattern(frozenset(self.log.config))
        self.noise_keys = len(self.log.config)

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

    def absorb(self, later: LogReader) -> bool:
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
        for rank in [r for r in log.blocks if self.best is not None and rank_order(r) > self.best]:
            del log.blocks[rank]
            self.train_stack.pop(rank, None)
        self.current.update(later.current)
        if later.section_known:
            self.section_rank = later.section_rank
        log.header_fields.update(later.log.header_fields)
        for key, value in later.log.config.items():
            if key in log.config:
                log.unknown_lines += 1  # read in order, a second dump of a key is not config
            else:
                log.config[key] = value
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


def _parse_part(path: str, keep: AbstractSet[str] | None, start: int, end: int, sender: Connection) -> None:
    """Worker process: parse bytes ``start:end`` of ``path`` without the parts before them; send the
    parser back (the worker then exits and frees its memory)."""
    parser = LogReader(path, keep, detached=True)
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
    parser = LogReader(str(path), keep)
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
