"""What a part holds, and each domain of it: the figures a part's ``.complete.json`` records.

A part's ``.complete.json`` is `PartStats` as JSON; ``summary.json`` adds them up (its
``part_stats`` repeats them). A plain dataset is the one-domain case: its one domain's figures are
the part's own and ``domains`` stays empty; with ``--domain-field`` each domain value has its
`DomainStats` (the part's figures are their sums), and a split's ``summary.json`` lists each
domain's sum over the parts (`DomainStats.sum`) under ``domains`` too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMPLETE = ".complete.json"


@dataclass
class DomainStats:
    """One domain's figures, in a part or (summed) in the split; JSON keys in this order."""

    folder: str  # the domain's folder under the split (`preprocessing.convert.domain_folder`)
    documents_written: int = 0
    tokens: int = 0
    samples: int = 0
    tokens_dropped: int = 0
    max_token_id: int = -1

    @classmethod
    def sum(cls, folder: str, parts: Iterable[DomainStats]) -> DomainStats:
        """The figures of several parts of one domain together."""
        total = cls(folder)
        for part in parts:
            total.documents_written += part.documents_written
            total.tokens += part.tokens
            total.samples += part.samples
            total.tokens_dropped += part.tokens_dropped
            total.max_token_id = max(total.max_token_id, part.max_token_id)
        return total


@dataclass
class PartStats:
    """What one part holds."""

    part: str
    files: list[str]
    documents_read: int = 0
    documents_written: int = 0
    tokens: int = 0
    samples: int = 0
    tokens_dropped: int = 0
    max_token_id: int = -1
    elapsed_s: float = 0.0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    domains: dict[str, DomainStats] = field(default_factory=dict)  # with --domain-field: per domain value

    def set_figures(self, total: DomainStats) -> None:
        """Take the written figures (documents written, tokens, samples, dropped, largest id) of ``total``."""
        self.documents_written, self.tokens, self.samples = total.documents_written, total.tokens, total.samples
        self.tokens_dropped, self.max_token_id = total.tokens_dropped, total.max_token_id

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PartStats:
        """The stats a ``.complete.json`` holds."""
        domains = {name: DomainStats(**figures) for name, figures in record.get("domains", {}).items()}
        return cls(**(record | {"domains": domains}))


def read_part(split_dir: Path, name: str) -> PartStats | None:
    """A complete part's stats, or None when it is not complete."""
    marker = split_dir / name / COMPLETE
    if not marker.exists():
        return None
    return PartStats.from_json(json.loads(marker.read_text()))
