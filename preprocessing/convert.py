"""Conversion of one split: shares of the input converted by worker processes into MDS parts.

Layout (llm-foundry's ``text`` loader reads it with ``local=OUT_ROOT, split=SPLIT``)::

    OUT_ROOT/SPLIT/dataset.json                what this folder holds: options, inputs, part count
    OUT_ROOT/SPLIT/part-00003-of-00008/        one MDS writer per part: shard.*.mds(.zstd), index.json
    OUT_ROOT/SPLIT/part-00003-of-00008/.complete.json   the part's stats (it is finished)
    OUT_ROOT/SPLIT/index.json                  merged index, written only when every part is complete
    OUT_ROOT/SPLIT/summary.json                documents, tokens, samples, skipped lines, timing

Shares: with ``T`` Slurm tasks (``SLURM_NTASKS``) of ``K`` workers each there are ``P = T * K``
parts; worker ``k`` of task ``t`` converts part ``p = t * K + k``, which owns sources
``p, p + P, p + 2P, ...`` of the sorted source list. A source is a file, or, when there are fewer
files than parts, a byte range of a plain (uncompressed) file: each such file is cut into
``ceil(P / files)`` equal ranges, a line belonging to the range its first byte is in. The same
inputs and ``P`` give the same bytes.

Resume: a part is written in ``SPLIT/.part-....writing-PID/`` and renamed to its name once its
``.complete.json`` is in it, so a ``part-*`` folder is always whole; an unfinished part is redone
from scratch, never appended to. One run at a time writes a split (`preprocessing.writer_lock`);
within it, the task that finds every part complete merges the index (written to a temporary file
and renamed, so a reader never sees half an index) and writes the summary; when two tasks finish
together both may merge, which is harmless: the merge is atomic and its bytes the same.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.concat import TokenConcatenator
from preprocessing.inputs import (
    HUB_PREFIX,
    SkippedDocument,
    TextField,
    iter_hub_documents,
    iter_records,
    record_location,
    splittable,
)
from preprocessing.mds import TokenShardWriter, merge_indexes
from preprocessing.progress import Progress
from preprocessing.splits import FINGERPRINT, Holdout
from preprocessing.tokenizer import load_tokenizer, special_ids, tokenized_ahead, untruncated

TOKENIZE_BATCH = 256
COMPLETE = ".complete.json"


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the bytes of the output, besides the input."""

    tokenizer: str
    concat_tokens: int
    eos_text: str = ""
    bos_text: str = ""
    wrap: bool = True
    compression: str | None = "zstd"
    max_docs: int | None = None
    strict: bool = False
    text_field: str = "text"  # dotted path of the text in each record (preprocessing.inputs.TextField)
    domain_field: str = ""  # dotted path of each record's domain: one dataset per value ("": none)
    holdout: float = 0.0  # fraction of documents held out for validation (preprocessing.splits; 0: none)
    held_out: bool = False  # with a holdout: this split takes the held-out documents, else the rest

    @property
    def holdout_rule(self) -> Holdout | None:
        """The holdout this split applies, or None."""
        return Holdout(self.holdout, self.held_out) if self.holdout else None


class StrictInputError(RuntimeError):
    """Raised in ``--strict`` mode at the first line that cannot be converted."""


class OutputConflict(RuntimeError):
    """The output folder holds something else than this conversion would write."""


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
    # with --domain-field: per domain value, {"folder", "documents_written", "tokens", "samples",
    # "tokens_dropped", "max_token_id"} (the part's figures above are their sums)
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def _documents(share: Share, text_field: TextField, holdout: Holdout | None) -> Iterator[str | SkippedDocument]:
    for doc in _records(share, text_field, None, holdout):
        yield doc if isinstance(doc, SkippedDocument) else doc[0]


def _records(
    share: Share, text_field: TextField, domain_field: TextField | None, holdout: Holdout | None = None
) -> Iterator[tuple[str, str] | SkippedDocument]:
    """The share's records in order, ``budget`` of each source counted as `count_documents` counts;
    with a holdout, only the documents on this split's side."""
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


def _record_skipped(doc: SkippedDocument, stats: PartStats, strict: bool) -> None:
    """List a record that was not converted (a whole file is not a document read); ``--strict``: stop."""
    if strict:
        raise StrictInputError(f"{record_location(asdict(doc))}: {doc.reason} (--strict)")
    stats.skipped.append(asdict(doc))
    if doc.document:
        stats.documents_read += 1


def convert_part(
    share: Share, split_dir: Path, options: ConvertOptions, counters: Any = None, tokenizer: Any = None
) -> PartStats:
    """Convert one share into ``split_dir/<part>`` from scratch and mark it complete; ``tokenizer`` is
    ``options.tokenizer`` already loaded (a forked worker inherits the parent's)."""
    if options.domain_field:
        return convert_part_by_domain(share, split_dir, options, counters, tokenizer)
    start = time.perf_counter()
    out_dir = split_dir / share.name
    for leftover in split_dir.glob(f".{share.name}.writing-*"):
        shutil.rmtree(leftover)  # an unfinished part is redone, never appended to
    work_dir = split_dir / f".{share.name}.writing-{os.getpid()}"
    tokenizer = untruncated(tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer))
    concat = TokenConcatenator(
        options.concat_tokens,
        special_ids(tokenizer, options.bos_text),
        special_ids(tokenizer, options.eos_text),
        options.wrap,
    )
    stats = PartStats(part=share.name, files=share.files)

    def batches() -> Iterator[tuple[None, list[str]]]:
        batch: list[str] = []
        for doc in _documents(share, TextField(options.text_field), options.holdout_rule):
            if isinstance(doc, SkippedDocument):
                _record_skipped(doc, stats, options.strict)
                continue
            stats.documents_read += 1
            batch.append(doc)
            if len(batch) >= TOKENIZE_BATCH:
                yield None, batch
                batch = []  # a new list: the one yielded is being tokenized
        if batch:
            yield None, batch

    with TokenShardWriter(work_dir, options.compression) as writer:
        for _, batch, docs in tokenized_ahead(tokenizer, batches()):
            for sample in concat.add_batch(docs):
                writer.write(sample)
                stats.samples += 1
            stats.documents_written += len(batch)
            if counters is not None:
                counters[2 * share.index] = stats.documents_read
                counters[2 * share.index + 1] = concat.tokens_in
        concat.finish()
    stats.tokens, stats.tokens_dropped = concat.tokens_in, concat.tokens_dropped
    stats.max_token_id = concat.max_token_id
    stats.elapsed_s = round(time.perf_counter() - start, 3)
    _write_atomic(work_dir / COMPLETE, json.dumps(asdict(stats)) + "\n")
    if (out_dir / COMPLETE).exists():  # completed meanwhile by a run that took this one's folder over
        shutil.rmtree(work_dir)
        return stats
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an unfinished part of an earlier layout
    os.rename(work_dir, out_dir)  # the part appears whole or not at all
    return stats


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_RESERVED = ("index.json", "summary.json", FINGERPRINT)


def domain_folder(domain: str) -> str:
    """The folder of a domain value under the split: its name, with anything but letters, digits,
    ``.``, ``_`` and ``-`` replaced by ``_``; a name this tool uses itself gets a leading ``_``."""
    name = _UNSAFE.sub("_", domain) or "_"
    return f"_{name}" if name.startswith((".", "part-")) or name in _RESERVED else name


def _remove_leftovers(split_dir: Path, part: str) -> None:
    """What an unfinished run of this part left: its work folders, and its domains' parts."""
    for leftover in split_dir.glob(f".{part}.writing-*"):
        shutil.rmtree(leftover)
    for leftover in [*split_dir.glob(f"*/.{part}.writing-*"), *split_dir.glob(f"*/{part}")]:
        if leftover.parent.name != part and not leftover.parent.name.startswith("."):
            shutil.rmtree(leftover)


def convert_part_by_domain(
    share: Share, split_dir: Path, options: ConvertOptions, counters: Any = None, tokenizer: Any = None
) -> PartStats:
    """`convert_part` with ``--domain-field``: one MDS writer, and one concatenation, per domain.

    Each domain's part is written in ``split_dir/<domain>/.<part>.writing-PID/`` and renamed to
    ``split_dir/<domain>/<part>/``; then the part's ``.complete.json`` appears in
    ``split_dir/<part>/``, last: a part is complete only once every domain of it is in place, and a
    rerun redoes an unfinished part from scratch in every domain (`_remove_leftovers`).
    """
    start = time.perf_counter()
    pid = os.getpid()
    _remove_leftovers(split_dir, share.name)
    work_dir = split_dir / f".{share.name}.writing-{pid}"
    work_dir.mkdir()
    tokenizer = untruncated(tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer))
    bos, eos = special_ids(tokenizer, options.bos_text), special_ids(tokenizer, options.eos_text)
    text_field = TextField(options.text_field)
    domain_field = TextField(options.domain_field, "--domain-field")
    stats = PartStats(part=share.name, files=share.files)
    writers: dict[str, Any] = {}
    concats: dict[str, TokenConcatenator] = {}
    pending: dict[str, list[str]] = {}

    def batches() -> Iterator[tuple[str, list[str]]]:
        for doc in _records(share, text_field, domain_field, options.holdout_rule):
            if isinstance(doc, SkippedDocument):
                _record_skipped(doc, stats, options.strict)
                continue
            stats.documents_read += 1
            text, domain = doc
            if domain not in writers:
                folder = domain_folder(domain)
                taken = [d for d, f in stats.domains.items() if f["folder"] == folder]
                if taken:
                    raise StrictInputError(
                        f"domains {taken[0]!r} and {domain!r} would share the folder {folder}: "
                        "their names differ only in characters a folder name cannot hold"
                    )
                writers[domain] = TokenShardWriter(
                    split_dir / folder / f".{share.name}.writing-{pid}", options.compression
                )
                concats[domain] = TokenConcatenator(options.concat_tokens, bos, eos, options.wrap)
                pending[domain] = []
                stats.domains[domain] = {
                    "folder": folder,
                    "documents_written": 0,
                    "tokens": 0,
                    "samples": 0,
                    "tokens_dropped": 0,
                    "max_token_id": -1,
                }
            pending[domain].append(text)
            if len(pending[domain]) >= TOKENIZE_BATCH:
                yield domain, pending[domain]
                pending[domain] = []  # a new list: the one yielded is being tokenized
        for domain in sorted(writers):
            if pending[domain]:
                yield domain, pending[domain]
                pending[domain] = []

    for domain, batch, docs in tokenized_ahead(tokenizer, batches()):
        figures = stats.domains[domain]
        for sample in concats[domain].add_batch(docs):
            writers[domain].write(sample)
            figures["samples"] += 1
        figures["documents_written"] += len(batch)
        if counters is not None:
            counters[2 * share.index] = stats.documents_read
            counters[2 * share.index + 1] = sum(c.tokens_in for c in concats.values())
    for domain in sorted(writers):
        concats[domain].finish()
        writers[domain].finish()
        figures = stats.domains[domain]
        figures["tokens"], figures["tokens_dropped"] = concats[domain].tokens_in, concats[domain].tokens_dropped
        figures["max_token_id"] = concats[domain].max_token_id
    stats.documents_written = sum(f["documents_written"] for f in stats.domains.values())
    stats.tokens = sum(f["tokens"] for f in stats.domains.values())
    stats.samples = sum(f["samples"] for f in stats.domains.values())
    stats.tokens_dropped = sum(f["tokens_dropped"] for f in stats.domains.values())
    stats.max_token_id = max((f["max_token_id"] for f in stats.domains.values()), default=-1)
    stats.elapsed_s = round(time.perf_counter() - start, 3)
    _write_atomic(work_dir / COMPLETE, json.dumps(asdict(stats)) + "\n")
    out_dir = split_dir / share.name
    if (out_dir / COMPLETE).exists():  # completed meanwhile by a run that took this one's folder over
        for figures in stats.domains.values():
            shutil.rmtree(split_dir / figures["folder"] / f".{share.name}.writing-{pid}", ignore_errors=True)
        shutil.rmtree(work_dir)
        return stats
    for figures in stats.domains.values():
        os.rename(
            split_dir / figures["folder"] / f".{share.name}.writing-{pid}", split_dir / figures["folder"] / share.name
        )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(work_dir, out_dir)  # the marker last: the part is complete once every domain is in place
    return stats


def merge_domains(split_dir: Path, shares: list[Share], options: ConvertOptions) -> dict[str, Any]:
    """With ``--domain-field``: each domain's index and summary, then the split's (all domains)."""
    stats = [p for p in (read_part(split_dir, s.name) for s in shares) if p is not None]
    assert len(stats) == len(shares)
    folders: dict[str, str] = {}
    for part in stats:
        for domain, figures in part.domains.items():
            folders.setdefault(domain, figures["folder"])
    domains: dict[str, Any] = {}
    shards: list[dict[str, Any]] = []
    for domain, folder in sorted(folders.items()):
        domain_dir = split_dir / folder
        having = [p for p in stats if domain in p.domains]
        merge_indexes([domain_dir / p.part / "index.json" for p in having], domain_dir)
        for shard in json.loads((domain_dir / "index.json").read_text())["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{folder}/{shard[key]['basename']}"
            shards.append(shard)
        figures = {k: sum(p.domains[domain][k] for p in having) for k in ("documents_written", "tokens", "samples")}
        dropped = sum(p.domains[domain]["tokens_dropped"] for p in having)
        summary = {
            "split": f"{split_dir.name}/{folder}",
            "domain": domain,
            "options": asdict(options),
            "parts": len(having),
            "input_files": sorted(f for p in having for f in p.files),
            "documents_read": figures["documents_written"],
            **figures,
            "documents_skipped": 0,
            "tokens_dropped": dropped,
            "max_token_id": max(p.domains[domain]["max_token_id"] for p in having),
            **tokenizer_identity(options.tokenizer),
        }
        _write_atomic(domain_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        domains[domain] = {
            "folder": folder,
            **figures,
            "tokens_dropped": dropped,
            "max_token_id": summary["max_token_id"],
        }
    with tempfile.NamedTemporaryFile("w", dir=split_dir, prefix=".merge-", delete=False) as fh:
        json.dump({"version": 2, "shards": shards}, fh, sort_keys=True)
    os.replace(fh.name, split_dir / "index.json")  # the split as one dataset: every domain's shards
    summary = _split_summary(split_dir, stats, options) | {"domains": domains}
    _write_atomic(split_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _part_main(
    share: Share, split_dir: Path, options: ConvertOptions, counters: Any, tokenizer: Any, threads: int
) -> None:
    """Worker process: convert, or leave the error message for the parent and exit non-zero.
    ``threads``: the Rust tokenizer's threads in this process (its pool starts here, after the fork)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if threads > 1 else "false")
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    try:
        convert_part(share, split_dir, options, counters, tokenizer)
    except StrictInputError as err:
        _remove_leftovers(split_dir, share.name)  # nothing half-written stays behind the stop
        (split_dir / f".{share.name}.error").write_text(str(err))
        sys.exit(3)


def fingerprint(files: list[Path], options: ConvertOptions, total_parts: int) -> dict[str, Any]:
    """What makes this dataset: options, input files (path and size) and the part count."""
    inputs = [[str(f), 0] if str(f).startswith(HUB_PREFIX) else [str(f.resolve()), f.stat().st_size] for f in files]
    return {"options": _bytes_options(asdict(options)), "inputs": inputs, "parts": total_parts}


def _bytes_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options that decide the output's bytes: ``strict`` does not (it only stops at a bad line),
    and options at their defaults are left out, so folders written before an option existed still match."""
    opts = {k: v for k, v in opts.items() if k != "strict"}
    for key, default in (("text_field", "text"), ("domain_field", ""), ("holdout", 0.0), ("held_out", False)):
        if opts.get(key) == default:
            opts.pop(key, None)
    return opts


OWN_ENTRIES = (".dataset.json.", "part-", ".part-", ".merge-", ".summary.json.", ".complete", ".writer")


def claim_output(split_dir: Path, fp: dict[str, Any]) -> None:
    """Record what this folder will hold, or refuse a folder that holds something else.

    Safe when several Slurm tasks start at once: the fingerprint is published with ``os.link``,
    which only one task can win; the others compare against it.
    """
    split_dir.mkdir(parents=True, exist_ok=True)
    existing = split_dir / FINGERPRINT
    if not existing.exists():
        foreign = sorted(p.name for p in split_dir.iterdir() if not p.name.startswith(OWN_ENTRIES))
        if foreign:
            raise OutputConflict(
                f"{split_dir} is not empty and was not written by this tool ({', '.join(foreign[:3])}): "
                "use another --out-root or --split"
            )
        fd, tmp = tempfile.mkstemp(dir=split_dir, prefix=".dataset.json.")
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(fp, indent=2) + "\n")
        try:
            os.link(tmp, existing)
        except FileExistsError:
            pass  # another task published it first: compare below
        finally:
            os.unlink(tmp)
    old = json.loads(existing.read_text())
    old["options"] = _bytes_options(old.get("options", {}))  # written by a version that recorded strict
    if old != fp:
        diffs = [k for k in fp if old.get(k) != fp[k]]
        raise OutputConflict(
            f"{split_dir} holds a different dataset ({', '.join(diffs)} differ): use another --out-root or "
            "--split, or delete that folder to start over"
        )


def read_part(split_dir: Path, name: str) -> PartStats | None:
    """A complete part's stats, or None when it is not complete."""
    marker = split_dir / name / COMPLETE
    if not marker.exists():
        return None
    return PartStats(**json.loads(marker.read_text()))


def tokenizer_identity(name_or_dir: str) -> dict[str, str | None]:
    """What training compares its tokenizer with (`test_case.training.dataset_fit`): a local folder
    by its absolute path and the sha256 of its ``tokenizer.json``, a hub tokenizer by its name."""
    folder = Path(name_or_dir).expanduser()
    if not folder.is_dir():
        return {"tokenizer_path": name_or_dir, "tokenizer_sha256": None}
    vocab = folder / "tokenizer.json"
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest() if vocab.is_file() else None
    return {"tokenizer_path": str(folder.resolve()), "tokenizer_sha256": digest}


def merge_parts(split_dir: Path, shares: list[Share], options: ConvertOptions) -> dict[str, Any]:
    """Merge the part indexes into ``index.json`` (atomically) and write ``summary.json``."""
    if options.domain_field:
        return merge_domains(split_dir, shares, options)
    parts = [read_part(split_dir, s.name) for s in shares]
    assert all(p is not None for p in parts)
    stats = [p for p in parts if p is not None]
    # the merged basenames are "part-.../shard..." relative to the split's index
    merge_indexes([split_dir / p.part / "index.json" for p in stats], split_dir)
    summary = _split_summary(split_dir, stats, options)
    _write_atomic(split_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _split_summary(split_dir: Path, stats: list[PartStats], options: ConvertOptions) -> dict[str, Any]:
    """``summary.json`` of a split: what its parts hold, added up."""
    elapsed = max((p.elapsed_s for p in stats), default=0.0)
    tokens = sum(p.tokens for p in stats)
    return {
        "split": split_dir.name,
        "options": asdict(options),
        "parts": len(stats),
        "input_files": sorted(f for p in stats for f in p.files),
        "documents_read": sum(p.documents_read for p in stats),
        "documents_written": sum(p.documents_written for p in stats),
        "documents_skipped": sum(len(p.skipped) for p in stats),
        "tokens": tokens,
        "samples": sum(p.samples for p in stats),
        "tokens_dropped": sum(p.tokens_dropped for p in stats),
        "max_token_id": max((p.max_token_id for p in stats), default=-1),
        **tokenizer_identity(options.tokenizer),
        "elapsed_s": elapsed,
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
        "skipped": [s for p in stats for s in p.skipped],
        "part_stats": [asdict(p) | {"skipped": len(p.skipped)} for p in stats],
    }


def run_parts(
    shares: list[Share],
    split_dir: Path,
    options: ConvertOptions,
    label: str,
    total_docs: int | None = None,
    tokenizer: Any = None,
    on_tick: Callable[[], None] | None = None,
    threads: int = 1,
) -> list[str]:
    """Convert the given shares, one process each (its tokenizer on ``threads`` threads), showing
    progress; return error messages.

    Workers are forked once the parent has loaded the tokenizer (pass it as ``tokenizer``), so none
    of them pays that again (with ``AutoTokenizer``, seconds: `preprocessing.tokenizer`). Nothing
    here starts a thread before the fork; the progress bar (tqdm runs a monitor thread) is created
    after it. ``on_tick`` is called twice a second while they run (the lock's heartbeat); when it
    raises, the workers are killed and the error passes on.
    """
    ctx = mp.get_context("fork")
    total = shares[0].total if shares else 0
    counters = ctx.Array("q", 2 * total, lock=False)
    procs = [
        ctx.Process(target=_part_main, args=(s, split_dir, options, counters, tokenizer, threads), name=s.name)
        for s in shares
    ]
    for proc in procs:
        proc.start()
    progress = Progress(label, total_docs=total_docs)
    try:
        while any(p.is_alive() for p in procs):
            progress.update(sum(counters[0::2]), sum(counters[1::2]))
            if on_tick is not None:
                on_tick()
            # back at once when a worker ends, else in half a second (the bar, the lock's heartbeat)
            mp_connection.wait([p.sentinel for p in procs if p.is_alive()], timeout=0.5)
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for proc in procs:
            proc.join()
    progress.update(sum(counters[0::2]), sum(counters[1::2]))
    progress.close()
    errors = []
    for share, proc in zip(shares, procs, strict=True):
        if proc.exitcode != 0:
            note = split_dir / f".{share.name}.error"
            errors.append(note.read_text() if note.exists() else f"{share.name}: worker exited with {proc.exitcode}")
            note.unlink(missing_ok=True)
    return errors
