"""The merge, once every part of a split is complete: the split's ``index.json`` and ``summary.json``.

A plain dataset is the one-domain case: its one domain's folder is the split, so the merged index
of its parts (`preprocessing.mds.merge_indexes`: basenames ``part-.../shard...``) is the split's
index. With ``--domain-field`` each domain folder gets the merged index of its parts and a
``summary.json`` of its own (each domain is a dataset a training run can read alone), and the
split's ``index.json`` lists every domain's shards (basenames ``<domain>/part-.../shard...``), so
the split reads as one dataset too. Every file is written atomically (`preprocessing.files`): a
reader never sees half an index; when two Slurm tasks finish together both may merge, which is
harmless, the bytes being the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from preprocessing.convert import ConvertOptions
from preprocessing.files import write_atomic
from preprocessing.mds import INDEX, merge_indexes
from preprocessing.shares import Share
from preprocessing.stats import DomainStats, PartStats, read_part

SUMMARY = "summary.json"


def merge_parts(split_dir: Path, shares: list[Share], options: ConvertOptions) -> dict[str, Any]:
    """Merge the part indexes into ``index.json`` and write ``summary.json`` (and each domain's); return the summary."""
    parts = [read_part(split_dir, s.name) for s in shares]
    assert all(p is not None for p in parts)
    stats = [p for p in parts if p is not None]
    summary = _split_summary(split_dir, stats, options)
    if options.domain_field:
        summary["domains"] = _merge_domains(split_dir, stats, options)
    else:
        merge_indexes([split_dir / p.part / INDEX for p in stats], split_dir)
    write_atomic(split_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    return summary


def _merge_domains(split_dir: Path, stats: list[PartStats], options: ConvertOptions) -> dict[str, Any]:
    """Each domain's index and summary, then the split's index over all of them; the domains' figures."""
    folders: dict[str, str] = {}
    for part in stats:
        for domain, figures in part.domains.items():
            folders.setdefault(domain, figures.folder)
    domains: dict[str, Any] = {}
    shards: list[dict[str, Any]] = []
    for domain, folder in sorted(folders.items()):
        domain_dir = split_dir / folder
        having = [p for p in stats if domain in p.domains]
        merge_indexes([domain_dir / p.part / INDEX for p in having], domain_dir)
        for shard in json.loads((domain_dir / INDEX).read_text())["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{folder}/{shard[key]['basename']}"
            shards.append(shard)
        total = DomainStats.sum(folder, (p.domains[domain] for p in having))
        summary = {
            "split": f"{split_dir.name}/{folder}",
            "domain": domain,
            "options": asdict(options),
            "parts": len(having),
            "input_files": sorted(f for p in having for f in p.files),
            "documents_read": total.documents_written,
            "documents_written": total.documents_written,
            "tokens": total.tokens,
            "samples": total.samples,
            "documents_skipped": 0,
            "tokens_dropped": total.tokens_dropped,
            "max_token_id": total.max_token_id,
            **tokenizer_identity(options.tokenizer),
        }
        write_atomic(domain_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        domains[domain] = asdict(total)
    # the split as one dataset: every domain's shards
    write_atomic(split_dir / INDEX, json.dumps({"version": 2, "shards": shards}, sort_keys=True))
    return domains


def tokenizer_identity(name_or_dir: str) -> dict[str, str | None]:
    """What training compares its tokenizer with (`test_case.training.dataset_fit`): a local folder
    by its absolute path and the sha256 of its ``tokenizer.json``, a hub tokenizer by its name."""
    folder = Path(name_or_dir).expanduser()
    if not folder.is_dir():
        return {"tokenizer_path": name_or_dir, "tokenizer_sha256": None}
    vocab = folder / "tokenizer.json"
    digest = hashlib.sha256(vocab.read_bytes()).hexdigest() if vocab.is_file() else None
    return {"tokenizer_path": str(folder.resolve()), "tokenizer_sha256": digest}


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
