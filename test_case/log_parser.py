"""Parsing of Composer console logs into metric blocks: the only module that reads log text.

A training log is Composer's console output, possibly interleaved from several nodes and prefixed
by ``srun -l`` (``0: ``), plus two things this suite adds or llm-foundry prints:

* metric blocks: a header ``[batch=N/T]:`` (or ``[epoch=E][batch=N/T]:``, ``[token=N/T]:``,
  ``[sample=N/T]:``) followed by lines ``<TAB> Train <key>: <value>`` (``Eval`` for evaluation);
  Composer prints the block after batch N finished.
* eval results: progress lines ``[Eval batch=k/K] Eval on <label> data``; the last one ends with
  ``:`` and is followed by ``Eval metrics/eval/...`` lines. Its step is that of the train block
  before it.
* the run header written by ``slurm-scripts/2.train-mpt-manual-distributed.sbatch``: lines
  ``[run-header] key: value``;
* llm-foundry's config dump (YAML at the start of training): ``n_params``, ``max_seq_len``,
  ``global_train_batch_size`` and the model shape are read from it.

Everything else is counted as unknown and ignored; no input makes the parser raise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

RANK_PREFIX = re.compile(r"^(\d+): ?")
BLOCK_HEADER = re.compile(r"^(?:\[epoch=(\d+)\])?\[(batch|token|sample)=(\d+)/(\d+)\]:\s*$")
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
    "sharding_strategy": str,
    "run_name": str,
}
CONFIG_LINE = re.compile(r"^\s*(" + "|".join(CONFIG_KEYS) + r"): (\S.*?)\s*$")

Value = float | int | str


@dataclass
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
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def is_finite_number(value: object) -> TypeGuard[int | float]:
    """True for an int or a finite float."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_composer_log(lines: Iterable[str], path: str = "<memory>") -> ParsedLog:
    """Parse log lines (with or without newlines) into a `ParsedLog`."""
    log = ParsedLog(path=path)
    current: dict[int | None, MetricBlock | None] = {}
    for number, raw in enumerate(lines, start=1):
        log.lines = number
        line = raw.rstrip("\r\n")
        rank: int | None = None
        m = RANK_PREFIX.match(line)
        if m:
            rank, line = int(m.group(1)), line[m.end() :]
        header = BLOCK_HEADER.match(line.strip())
        if header:
            epoch, unit, step, total = header.groups()
            block = MetricBlock("train", unit, int(step), int(total), int(epoch) if epoch else None, number)
            log.blocks.setdefault(rank, []).append(block)
            current[rank] = block
            continue
        progress = EVAL_PROGRESS.match(line.strip())
        if progress:
            current[rank] = None
            if progress.group(4):
                previous = [b for b in log.blocks.get(rank, []) if b.kind == "train"]
                step, total = (previous[-1].step, previous[-1].total) if previous else (0, 0)
                unit = previous[-1].unit if previous else "batch"
                block = MetricBlock("eval", unit, step, total, None, number)
                log.blocks.setdefault(rank, []).append(block)
                current[rank] = block
            continue
        metric = METRIC_LINE.match(line)
        open_block = current.get(rank)
        if metric and open_block is not None:
            kind, key, value = metric.groups()
            if kind == "Eval":
                open_block.kind = "eval"
            open_block.metrics[key] = parse_value(value)
            continue
        current[rank] = None
        run = RUN_HEADER.match(line)
        if run:
            log.header[run.group(1)] = run.group(2)
            continue
        config = CONFIG_LINE.match(line)
        if config and config.group(1) not in log.config:
            key, value = config.groups()
            parsed = parse_value(value)
            if CONFIG_KEYS[key] is int and not isinstance(parsed, int):
                log.unknown_lines += 1
                continue
            log.config[key] = parsed
            continue
        if line.strip():
            log.unknown_lines += 1
    return log


def parse_log_file(path: Path) -> ParsedLog:
    """Parse one file, streaming it line by line; undecodable bytes are replaced, not fatal."""
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        return parse_composer_log(fh, str(path))
