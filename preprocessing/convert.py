"""Conversion of a split: each worker tokenizes its share of the files into its own MDS sub-folder.

Layout of the output (llm-foundry's ``text`` loader reads it with ``local=OUT_ROOT, split=SPLIT``)::

    OUT_ROOT/SPLIT/index.json            merged index (streaming's merge_index), written last
    OUT_ROOT/SPLIT/part-00000-of-0000K/  one MDSWriter per worker: shard.*.mds(.zstd), index.json
    OUT_ROOT/SPLIT/summary.json          documents, tokens, samples, skipped lines, timing

Worker ``k`` of ``K`` owns files ``k, k+K, k+2K, ...`` of the sorted file list, so the same inputs
and ``K`` always give the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from preprocessing.concat import TokenConcatenator
from preprocessing.inputs import SkippedDocument, iter_documents

COLUMNS = {"tokens": "ndarray:int32"}
TOKENIZE_BATCH = 256


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides the bytes of the output, besides the input files."""

    tokenizer: str
    concat_tokens: int
    eos_text: str = ""
    bos_text: str = ""
    wrap: bool = True
    compression: str | None = "zstd"
    max_docs: int | None = None
    strict: bool = False


class StrictInputError(RuntimeError):
    """Raised in ``--strict`` mode at the first line that cannot be converted."""


@dataclass
class ShareStats:
    """What one worker did."""

    part: str
    files: list[str]
    documents_read: int = 0
    documents_written: int = 0
    tokens: int = 0
    samples: int = 0
    tokens_dropped: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def load_tokenizer(name_or_dir: str) -> Any:
    """Load a Hugging Face tokenizer (a local folder, or a hub name when online)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_dir)


def special_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a BOS/EOS text, without the tokenizer adding its own specials."""
    if not text:
        return []
    return list(tokenizer(text, truncation=False, padding=False, add_special_tokens=False)["input_ids"])


def part_name(k: int, total: int) -> str:
    """Sub-folder of worker ``k`` of ``total``."""
    return f"part-{k:05d}-of-{total:05d}"


def convert_share(files: list[Path], out_dir: Path, options: ConvertOptions, doc_budget: int | None) -> ShareStats:
    """Convert ``files`` in order into a fresh MDS folder ``out_dir``; at most ``doc_budget`` docs."""
    from streaming import MDSWriter

    tokenizer = load_tokenizer(options.tokenizer)
    concat = TokenConcatenator(
        options.concat_tokens,
        special_ids(tokenizer, options.bos_text),
        special_ids(tokenizer, options.eos_text),
        options.wrap,
    )
    stats = ShareStats(part=out_dir.name, files=[str(f) for f in files])
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with MDSWriter(out=str(out_dir), columns=COLUMNS, compression=options.compression) as writer:

        def flush(batch: list[str]) -> None:
            if not batch:
                return
            encoded = tokenizer(batch, truncation=False, padding=False)["input_ids"]
            for ids in encoded:
                for sample in concat.add(ids):
                    writer.write({"tokens": sample})
                    stats.samples += 1
            stats.documents_written += len(batch)
            batch.clear()

        batch: list[str] = []
        for path in files:
            for doc in iter_documents(path):
                if doc_budget is not None and stats.documents_read >= doc_budget:
                    break
                stats.documents_read += 1
                if isinstance(doc, SkippedDocument):
                    if options.strict:
                        raise StrictInputError(f"{doc.file}:{doc.line}: {doc.reason} (--strict)")
                    stats.skipped.append(asdict(doc))
                    continue
                batch.append(doc)
                if len(batch) >= TOKENIZE_BATCH:
                    flush(batch)
            flush(batch)
        concat.finish()
    stats.tokens = concat.tokens_in
    stats.tokens_dropped = concat.tokens_dropped
    return stats


def _convert_share_args(args: tuple[list[Path], Path, ConvertOptions, int | None]) -> ShareStats:
    return convert_share(*args)


def convert_split(files: list[Path], split_dir: Path, options: ConvertOptions, workers: int = 1) -> dict[str, Any]:
    """Convert ``files`` into ``split_dir`` with ``workers`` processes; return the summary dict."""
    from streaming.base.util import merge_index

    start = time.perf_counter()
    workers = max(1, min(workers, len(files)))
    shares = [files[k::workers] for k in range(workers)]
    # --max-docs is a budget over the whole split: with one worker it is exact; with several,
    # each worker gets an equal part (rounded up), which keeps the shares independent.
    budget = None if options.max_docs is None else -(-options.max_docs // workers)
    jobs = [(share, split_dir / part_name(k, workers), options, budget) for k, share in enumerate(shares)]
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "index.json").unlink(missing_ok=True)
    if workers == 1:
        results = [_convert_share_args(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_convert_share_args, jobs)
    merge_index(
        [str((split_dir / r.part / "index.json").resolve()) for r in results],
        str(split_dir.resolve()),
        keep_local=True,
        download_timeout=60,
    )
    elapsed = time.perf_counter() - start
    tokens = sum(r.tokens for r in results)
    summary: dict[str, Any] = {
        "split": split_dir.name,
        "options": asdict(options),
        "workers": workers,
        "input_files": [str(f) for f in files],
        "documents_read": sum(r.documents_read for r in results),
        "documents_written": sum(r.documents_written for r in results),
        "documents_skipped": sum(len(r.skipped) for r in results),
        "tokens": tokens,
        "samples": sum(r.samples for r in results),
        "tokens_dropped": sum(r.tokens_dropped for r in results),
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 1) if elapsed > 0 else None,
        "skipped": [s for r in results for s in r.skipped],
        "parts": [asdict(r) | {"skipped": len(r.skipped)} for r in results],
    }
    (split_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
