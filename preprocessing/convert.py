"""Conversion of one split's parts: each share of the input converted by a worker process into MDS.

Layout (llm-foundry's ``text`` loader reads it with ``local=OUT_ROOT, split=SPLIT``)::

    OUT_ROOT/SPLIT/dataset.json                what this folder holds (`preprocessing.claim`)
    OUT_ROOT/SPLIT/part-00003-of-00008/        one MDS writer per part: shard.*.mds(.zstd), index.json
    OUT_ROOT/SPLIT/part-00003-of-00008/.complete.json   the part's stats (it is finished)
    OUT_ROOT/SPLIT/index.json                  merged index, written only when every part is complete
    OUT_ROOT/SPLIT/summary.json                documents, tokens, samples, skipped lines, timing

With ``--domain-field`` each domain value is a dataset of its own, written in the same pass:
``SPLIT/<domain>/part-.../`` (shards, index), ``SPLIT/<domain>/index.json`` and ``summary.json``;
``SPLIT/part-.../`` then holds only the part's ``.complete.json``. A plain dataset is the
one-domain case: one pipeline (`convert_part`), whose one domain's folder is the split itself.
Which documents a part converts: `preprocessing.shares`; the merge: `preprocessing.merge`.

Resume: a part is written in ``.part-....writing-PID/`` folders and renamed to its name once its
``.complete.json`` is in it, so a ``part-*`` folder is always whole; an unfinished part is redone
from scratch, never appended to. One run at a time writes a split (`preprocessing.writer_lock`);
within it, the task that finds every part complete merges.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.concat import TokenConcatenator
from preprocessing.files import write_atomic
from preprocessing.inputs import SkippedDocument, TextField, record_location
from preprocessing.mds import TokenShardWriter
from preprocessing.progress import Progress
from preprocessing.shares import Share, share_records
from preprocessing.splits import FINGERPRINT, Holdout
from preprocessing.stats import COMPLETE, DomainStats, PartStats
from preprocessing.tokenizer import load_tokenizer, special_ids, tokenized_ahead, untruncated

TOKENIZE_BATCH = 256


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


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_RESERVED = ("index.json", "summary.json", FINGERPRINT)


def domain_folder(domain: str) -> str:
    """The folder of a domain value under the split: its name, with anything but letters, digits,
    ``.``, ``_`` and ``-`` replaced by ``_``; a name this tool uses itself gets a leading ``_``."""
    name = _UNSAFE.sub("_", domain) or "_"
    return f"_{name}" if name.startswith((".", "part-")) or name in _RESERVED else name


def _remove_leftovers(split_dir: Path, part: str, domains: bool = True) -> None:
    """What an unfinished run of this part left: its work folders, and (``domains``) its domains' parts."""
    for leftover in split_dir.glob(f".{part}.writing-*"):
        shutil.rmtree(leftover)
    if not domains:
        return  # a plain split has no domain folders: no need to look into every part's folder
    for leftover in [*split_dir.glob(f"*/.{part}.writing-*"), *split_dir.glob(f"*/{part}")]:
        if leftover.parent.name != part and not leftover.parent.name.startswith("."):
            shutil.rmtree(leftover)


def _record_skipped(doc: SkippedDocument, stats: PartStats, strict: bool) -> None:
    """List a record that was not converted (a whole file is not a document read); ``--strict``: stop."""
    if strict:
        raise StrictInputError(f"{record_location(asdict(doc))}: {doc.reason} (--strict)")
    stats.skipped.append(asdict(doc))
    if doc.document:
        stats.documents_read += 1


@dataclass
class _DomainPart:
    """One domain of the part being converted: its folders, writer, concatenation, figures, and
    the documents waiting for the tokenizer."""

    work: Path  # <domain folder>/.<part>.writing-PID
    final: Path  # <domain folder>/<part>
    writer: TokenShardWriter
    concat: TokenConcatenator
    stats: DomainStats
    pending: list[str] = field(default_factory=list)


def convert_part(
    share: Share, split_dir: Path, options: ConvertOptions, counters: Any = None, tokenizer: Any = None
) -> PartStats:
    """Convert one share into ``split_dir/<part>`` from scratch and mark it complete; ``tokenizer`` is
    ``options.tokenizer`` already loaded (a forked worker inherits the parent's).

    Each domain has its MDS writer and concatenation; its documents are tokenized in batches of
    `TOKENIZE_BATCH` of its own. Its part is written in ``<domain folder>/.<part>.writing-PID/`` and
    renamed to ``<domain folder>/<part>/``; then the part's ``.complete.json`` appears in
    ``split_dir/<part>/``, last: a part is complete only once every domain of it is in place, and a
    rerun redoes an unfinished part from scratch in every domain (`_remove_leftovers`). A plain
    dataset's one domain (``""``) has the split as its folder: its shards and the marker share one
    work folder, renamed once, and its figures are the part's (``domains`` stays empty).
    """
    start = time.perf_counter()
    pid = os.getpid()
    _remove_leftovers(split_dir, share.name, domains=bool(options.domain_field))
    work_dir = split_dir / f".{share.name}.writing-{pid}"
    work_dir.mkdir()
    tokenizer = untruncated(tokenizer if tokenizer is not None else load_tokenizer(options.tokenizer))
    bos, eos = special_ids(tokenizer, options.bos_text), special_ids(tokenizer, options.eos_text)
    text_field = TextField(options.text_field)
    domain_field = TextField(options.domain_field, "--domain-field") if options.domain_field else None
    stats = PartStats(part=share.name, files=share.files)
    outputs: dict[str, _DomainPart] = {}

    def open_domain(domain: str) -> _DomainPart:
        folder = domain_folder(domain) if domain_field is not None else ""  # "": the split itself
        taken = [d for d, o in outputs.items() if o.stats.folder == folder]
        if taken:
            raise StrictInputError(
                f"domains {taken[0]!r} and {domain!r} would share the folder {folder}: "
                "their names differ only in characters a folder name cannot hold"
            )
        work = split_dir / folder / f".{share.name}.writing-{pid}"
        outputs[domain] = _DomainPart(
            work,
            split_dir / folder / share.name,
            TokenShardWriter(work, options.compression),
            TokenConcatenator(options.concat_tokens, bos, eos, options.wrap),
            DomainStats(folder),
        )
        return outputs[domain]

    if domain_field is None:
        open_domain("")  # a plain part has its index even when it holds no document

    def batches() -> Iterator[tuple[str, list[str]]]:
        for doc in share_records(share, text_field, domain_field, options.holdout_rule):
            if isinstance(doc, SkippedDocument):
                _record_skipped(doc, stats, options.strict)
                continue
            stats.documents_read += 1
            text, domain = doc
            out = outputs.get(domain) or open_domain(domain)
            out.pending.append(text)
            if len(out.pending) >= TOKENIZE_BATCH:
                yield domain, out.pending
                out.pending = []  # a new list: the one yielded is being tokenized
        for domain in sorted(outputs):
            if outputs[domain].pending:
                yield domain, outputs[domain].pending
                outputs[domain].pending = []

    for domain, batch, docs in tokenized_ahead(tokenizer, batches()):
        out = outputs[domain]
        write, figures = out.writer.write, out.stats
        for sample in out.concat.add_batch(docs):
            write(sample)
            figures.samples += 1
        figures.documents_written += len(batch)
        if counters is not None:
            counters[2 * share.index] = stats.documents_read
            counters[2 * share.index + 1] = sum(o.concat.tokens_in for o in outputs.values())
    for domain in sorted(outputs):
        out = outputs[domain]
        out.concat.finish()
        out.writer.finish()
        out.stats.tokens, out.stats.tokens_dropped = out.concat.tokens_in, out.concat.tokens_dropped
        out.stats.max_token_id = out.concat.max_token_id
    stats.set_figures(DomainStats.sum("", (o.stats for o in outputs.values())))
    if domain_field is not None:
        stats.domains = {domain: out.stats for domain, out in outputs.items()}  # in the order first seen
    stats.elapsed_s = round(time.perf_counter() - start, 3)
    write_atomic(work_dir / COMPLETE, json.dumps(asdict(stats)) + "\n")
    out_dir = split_dir / share.name
    domain_parts = [o for o in outputs.values() if o.work != work_dir]
    if (out_dir / COMPLETE).exists():  # completed meanwhile by a run that took this one's folder over
        for out in domain_parts:
            shutil.rmtree(out.work, ignore_errors=True)
        shutil.rmtree(work_dir)
        return stats
    for out in domain_parts:
        os.rename(out.work, out.final)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # an unfinished part of an earlier layout
    os.rename(work_dir, out_dir)  # the marker last: the part is complete once every domain is in place
    return stats


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
