"""Validation of a merged split: its index and shards hold what the summary says.

Checks, after the merge (`validate_split`), reading the shards as streaming's MDS reader does
(`preprocessing.mds.read_shard`: the file sizes in the index, the decompressed size, the sample
count and the column encoding of each shard read):

* the samples of the merged ``index.json`` add up to the summary's sample count;
* every sample of up to `CHECKED_SHARDS` shards (all of them for a small split; otherwise the
  first, the last and evenly spaced ones between) has shape ``(concat_tokens,)``, dtype int32 and
  ids in ``[0, vocab)``: reading 156 B tokens back would cost a second conversion's worth of I/O;
* the largest token id seen while converting (every token, recorded by the workers) is below the
  tokenizer's vocabulary size.

That streaming's own ``StreamingDataset`` reads the same samples is tested (tests/test_mds.py,
tests/test_preprocessing.py), and training reads every split with it: importing streaming here
would cost seconds (torch) on every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from preprocessing.mds import read_shard

CHECKED_SHARDS = 8


class ValidationError(RuntimeError):
    """The merged split does not hold what the conversion wrote."""


def checked_shards(n_shards: int, limit: int = CHECKED_SHARDS) -> list[int]:
    """All shards up to ``limit``, else the first, the last and evenly spaced ones between."""
    if n_shards <= limit:
        return list(range(n_shards))
    return sorted({round(i * (n_shards - 1) / (limit - 1)) for i in range(limit)})


def validate_split(out_root: Path, split: str, summary: dict[str, Any], concat_tokens: int, vocab_size: int) -> int:
    """Run the checks above; return the number of samples read back."""
    if summary["max_token_id"] >= vocab_size:
        raise ValidationError(f"token id {summary['max_token_id']} is not below the vocabulary size {vocab_size}")
    folder = out_root / split
    shards = json.loads((folder / "index.json").read_text())["shards"]
    starts = [0]
    for shard in shards:
        starts.append(starts[-1] + shard["samples"])
    if starts[-1] != summary["samples"]:
        raise ValidationError(
            f"{folder}: the index lists {starts[-1]} samples, the conversion wrote {summary['samples']}"
        )
    checked = 0
    for s in checked_shards(len(shards)):
        try:
            samples = read_shard(folder, shards[s])
        except (OSError, ValueError, IndexError) as err:
            raise ValidationError(f"{folder}: shard {s}: {err}") from err
        for i, tokens in enumerate(samples, start=starts[s]):
            if tokens.shape != (concat_tokens,) or tokens.dtype != np.int32:
                raise ValidationError(f"sample {i}: {tokens.shape} {tokens.dtype}, expected ({concat_tokens},) int32")
            if tokens.min() < 0 or tokens.max() >= vocab_size:
                raise ValidationError(f"sample {i}: token id outside [0, {vocab_size})")
            checked += 1
    return checked
