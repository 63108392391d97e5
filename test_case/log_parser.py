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
  ``global_train_batch_size`` and the model shape are read from it.

Everything else is counted as unknown and ignored; no input makes the parser raise. Lines are
streamed, and only what the report uses is kept: the blocks of the reporting rank (the lowest rank
that logged train blocks; those of higher ranks are dropped as soon as a lower one appears) and,
with ``keep``, only the train metrics it selects. Memory therefore grows with the number of batches
of one rank times the kept metrics, not with the size of the file.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

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
RUN_HEADER = re.compile(r"^\[run-header\] ([\w.-]+): ?(.*?)\s*$")
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
    "run_name": str,
}
CONFIG_LINE = re.compile(r"^\s*(" + "|".join(CONFIG_KEYS) + r"): (\S.*?)\s*$")

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


@dataclass
class ParsedLog:
    """What one log file holds, per rank prefix (``None`` where lines carry no prefix)."""

    path: str
    blocks: dict[int | None, list[MetricBlock]] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)
    config: dict[str, Value] = field(default_factory=dict)
    lines: int = 0
    unknown_lines: int = 0
    starts: int = 0  # run headers seen: 1 + the restarts of a requeued job

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
    if text.isdigit():
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


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """True for an int or a finite float."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rank_order(rank: int | None) -> int:
    return -1 if rank is None else rank


def parse_composer_log(
    lines: Iterable[str], path: str = "<memory>", keep: Callable[[str], bool] | None = None
) -> ParsedLog:
    """Parse log lines (with or without newlines) into a `ParsedLog`.

    ``keep(key)`` selects the train metrics to store (default: all); eval metrics are all stored.
    """
    log = ParsedLog(path=path)
    current: dict[int | None, MetricBlock | None] = {}
    best: list[int] = []  # order of the reporting rank so far (empty until a train block is seen)

    def store(rank: int | None, block: MetricBlock) -> bool:
        """Add ``block`` if ``rank`` can be the reporting rank; drop higher ranks' blocks."""
        order = _rank_order(rank)
        if best and order > best[0]:
            return False
        if block.kind == "train" and (not best or order < best[0]):
            best[:] = [order]
            for other in [r for r in log.blocks if _rank_order(r) > order]:
                del log.blocks[other]
        log.blocks.setdefault(rank, []).append(block)
        return True

    section_rank: int | None = None  # inside a launcher "Begin global rank K" section
    blocks = log.blocks
    number = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip()
        if not line:
            continue
        rank = section_rank
        first = line[0]
        if first.isdigit():
            m = RANK_PREFIX.match(line)
            if m:
                rank, line = int(m.group(1)), line[m.end() :]
                if not line:
                    continue
                first = line[0]
        if first in ">[" and (m := QUOTE_PREFIX.match(line)):
            line = line[m.end() :]
            first = line[:1]
        # Metric lines are most of a log: test for them first, with a cheap substring check.
        if ("Train " in line or "Eval " in line) and (metric := METRIC_LINE.match(line)):
            block = current.get(rank)
            if block is not None:
                kind, key, value = metric.groups()
                if kind == "Eval":
                    block.kind = "eval"
                if keep is None or block.kind == "eval" or keep(key):
                    block.metrics[sys.intern(key)] = parse_value(value)  # one key object for all blocks
                continue
        current[rank] = None
        stripped = line.strip()
        if stripped[:1] == "[":
            if step := STEP_LINE.match(stripped):
                epoch, unit, n, total, key, value = step.groups()
                block = current_one_line = None
                if key is not None:  # one-line form: metrics of one step share a block
                    previous = blocks.get(rank)
                    last = previous[-1] if previous else None
                    if last is not None and last.unit == unit and last.step == int(n) and last.kind == "train":
                        current_one_line = last
                if current_one_line is None:
                    block = MetricBlock("train", unit, int(n), int(total or 0), int(epoch) if epoch else None, number)
                    store(rank, block)  # a dropped block still absorbs its metric lines
                else:
                    block = current_one_line
                if key is None:
                    current[rank] = block
                elif keep is None or keep(key):
                    block.metrics[key] = parse_value(value)
                continue
            if progress := EVAL_PROGRESS.match(stripped):
                if progress.group(4):
                    previous_train = [b for b in blocks.get(rank, []) if b.kind == "train"]
                    last_train = previous_train[-1] if previous_train else None
                    block = MetricBlock(
                        "eval",
                        last_train.unit if last_train else "batch",
                        last_train.step if last_train else 0,
                        last_train.total if last_train else 0,
                        None,
                        number,
                    )
                    store(rank, block)
                    current[rank] = block
                continue
            if run := RUN_HEADER.match(stripped):
                key = run.group(1)
                if key == "job_id":
                    log.starts += 1
                log.header[key] = run.group(2)
                continue
        elif first == "-" and (section := LAUNCHER_SECTION.match(stripped)):
            section_rank = int(section.group(2)) if section.group(1) == "Begin" else None
            continue
        elif ": " in line and (config := CONFIG_LINE.match(line)):
            key, value = config.groups()
            parsed = parse_value(value)
            if key not in log.config and (CONFIG_KEYS[key] is not int or isinstance(parsed, int)):
                log.config[key] = parsed
                continue
        log.unknown_lines += 1
    log.lines = number
    return log


def parse_log_file(path: Path, keep: Callable[[str], bool] | None = None) -> ParsedLog:
    """Parse one file, streaming it line by line; undecodable bytes are replaced, not fatal."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return parse_composer_log(fh, str(path), keep)
