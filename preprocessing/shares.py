"""Which documents each part converts: the split's sources dealt into shares, and a share's records in order.

With ``T`` Slurm tasks (``SLURM_NTASKS``) of ``K`` workers each there are ``P = T * K`` parts;
worker ``k`` of task ``t`` converts part ``p = t * K + k``, which owns sources ``p, p + P, p + 2P,
...`` of the sorted source list. A source is a file, or, when there are fewer files than parts, a
byte range of a plain (uncompressed) file: each such file is cut into ``ceil(P / files)`` equal
ranges, a line belonging to the range its first byte is in. The same inputs and ``P`` give the
same shares. ``--max-docs`` takes the first documents in file order: each source gets a budget,
counted before any part starts (`count_documents`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from preprocessing.inputs import (
    HUB_PREFIX,
    SkippedDocument,
    TextField,
    iter_hub_documents,
    iter_records,
    splittable,
)
from preprocessing.splits import Holdout

Source = tuple[str, int, int]  # path, first byte, end byte (-1: to the end of the file)


@dataclass(frozen=True)
class Share:
    """One part's work: its sources and, with ``--max-docs``, how many documents of each to take."""

    index: int
    total: int
    sources: tuple[Source, ...]
    budgets: tuple[int | None, ...]  # documents to take from each source (None: all)

    @property
    def name(self) -> str:
        """Sub-folder of this part."""
        return f"part-{self.index:05d}-of-{self.total:05d}"

    @property
    def files(self) -> list[str]:
        """The sources as text: ``path`` or ``path[start:end]`` for a byte range."""
        return [p if (s, e) == (0, -1) else f"{p}[{s}:{e}]" for p, s, e in self.sources]


def count_documents(
    source: Source, limit: int, holdout: Holdout | None = None, text_field: str = "text", domain_field: str = ""
) -> int:
    """Non-blank lines (rows) of a source, counting no further than ``limit`` (cheap: no JSON parsing).
    With a holdout, the documents this split takes (and the records that are not documents, which
    every split lists as skipped): each record is parsed to hash its text."""
    n = 0
    path, start, end = source
    domain = TextField(domain_field, "--domain-field") if domain_field and holdout is not None else None
    records = iter_records(
        Path(path),
        parse=holdout is not None,
        start=start,
        end=end,
        text_field=TextField(text_field),
        domain_field=domain,
    )
    for doc in records:
        if isinstance(doc, SkippedDocument):
            n += doc.document
        elif holdout is None or holdout.takes(doc[0]):
            n += 1
        if n >= limit:
            break
    return n


def plan_shares(
    files: list[Path],
    total: int,
    max_docs: int | None,
    holdout: Holdout | None = None,
    text_field: str = "text",
    domain_field: str = "",
) -> list[Share]:
    """Deal files round-robin into ``total`` shares; ``max_docs`` takes the first documents in file order
    (with a holdout, the first documents on this split's side).

    A hub source is one stream that every share reads its own shard of; ``max_docs`` then takes
    ``ceil(max_docs / total)`` documents from each shard (exactly the first ones only with one share).
    """
    if len(files) == 1 and str(files[0]).startswith(HUB_PREFIX):
        budget = None if max_docs is None else -(-max_docs // total)
        return [Share(k, total, ((str(files[0]), 0, -1),), (budget,)) for k in range(total)]
    sources: list[Source] = []
    cuts = -(-total // len(files)) if files and len(files) < total else 1
    for path in files:
        size = path.stat().st_size
        if cuts == 1 or not splittable(path) or size == 0:
            sources.append((str(path), 0, -1))
        else:
            bounds = [size * i // cuts for i in range(cuts)] + [-1]
            sources += [(str(path), bounds[i], bounds[i + 1]) for i in range(cuts)]
    budgets: list[int | None] = [None] * len(sources)
    if max_docs is not None:
        left = max_docs
        for i, source in enumerate(sources):
            take = count_documents(source, left, holdout, text_field, domain_field) if left > 0 else 0
            budgets[i] = take
            left -= take
    return [Share(k, total, tuple(sources[k::total]), tuple(budgets[k::total])) for k in range(total)]


def share_records(
    share: Share, text_field: TextField, domain_field: TextField | None, holdout: Holdout | None = None
) -> Iterator[tuple[str, str] | SkippedDocument]:
    """The share's records in order as ``(text, domain)`` (domain ``""`` without ``domain_field``),
    ``budget`` of each source counted as `count_documents` counts; with a holdout, only the
    documents on this split's side."""
    for (path, start, end), budget in zip(share.sources, share.budgets, strict=True):
        if budget == 0:
            continue
        taken = 0
        docs: Iterator[tuple[str, str] | SkippedDocument] = (
            ((d, "") if isinstance(d, str) else d for d in iter_hub_documents(path, share.index, share.total))
            if path.startswith(HUB_PREFIX)
            else iter_records(Path(path), start=start, end=end, text_field=text_field, domain_field=domain_field)
        )
        for doc in docs:
            if budget is not None and taken >= budget:
                break
            if holdout is not None and not isinstance(doc, SkippedDocument) and not holdout.takes(doc[0]):
                continue
            if not isinstance(doc, SkippedDocument) or doc.document:
                taken += 1
            yield doc
