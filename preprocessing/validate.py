"""Validation of a merged split: it opens with streaming and holds what the summary says.

Checks, after the merge (`validate_split`):

* ``streaming.StreamingDataset`` opens the merged ``index.json`` and its length equals the
  summary's sample count (read through a temporary cache, so the dataset folder gets no
  decompressed copies of its shards);
* every sample of up to `CHECKED_SHARDS` shards (all of them for a small split; otherwise the
  first, the last and evenly spaced ones between) has shape ``(concat_tokens,)``, dtype int32 and
  ids in ``[0, vocab)``: reading 156 B tokens back would cost a second conversion's worth of I/O;
* the largest token id seen while converting (every token, recorded by the workers) is below the
  tokenizer's vocabulary size.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

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
    import numpy as np
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    if summary["max_token_id"] >= vocab_size:
        raise ValidationError(f"token id {summary['max_token_id']} is not below the vocabulary size {vocab_size}")
    shards = json.loads((out_root / split / "index.json").read_text())["shards"]
    starts = [0]
    for shard in shards:
        starts.append(starts[-1] + shard["samples"])
    clean_stale_shared_memory()
    with tempfile.TemporaryDirectory(prefix="mds-validate-") as cache:
        dataset = StreamingDataset(
            remote=str(out_root.resolve()), local=cache, split=split, shuffle=False, batch_size=1
        )
        n = len(dataset)
        if n != summary["samples"] or n != starts[-1]:
            raise ValidationError(
                f"{out_root / split}: streaming reads {n} samples, the index lists {starts[-1]}, "
                f"the conversion wrote {summary['samples']}"
            )
        checked = 0
        for s in checked_shards(len(shards)):
            for i in range(starts[s], starts[s + 1]):
                tokens = dataset[i]["tokens"]
                if tokens.shape != (concat_tokens,) or tokens.dtype != np.int32:
                    raise ValidationError(
                        f"sample {i}: {tokens.shape} {tokens.dtype}, expected ({concat_tokens},) int32"
                    )
                if tokens.min() < 0 or tokens.max() >= vocab_size:
                    raise ValidationError(f"sample {i}: token id outside [0, {vocab_size})")
                checked += 1
    return checked
