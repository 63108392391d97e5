"""The converter's MDS writer, merge and reader (`preprocessing.mds`) against streaming's own.

Every file `TokenShardWriter` writes must be byte-identical to what streaming's ``MDSWriter`` writes
for the same samples (several shards; no compression, zstd, zstd:7; sample lengths on each side of
the shape-dtype boundaries), `merge_indexes` must write ``merge_index``'s bytes, and streaming's
``StreamingDataset`` must read the merged result as `read_shard` does. A damaged shard is named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from preprocessing.mds import TokenShardWriter, merge_indexes, read_shard
from preprocessing.validate import ValidationError, validate_split

LENGTHS = (1, 7, 255, 256, 2048, 65535, 65536, 128, 3)


def samples(seed: int, count: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50_000, LENGTHS[i % len(LENGTHS)], dtype=np.int32) for i in range(count)]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("compression", [None, "zstd", "zstd:7"])
def test_the_shards_and_index_are_streamings_byte_for_byte(tmp_path: Path, compression: str | None) -> None:
    from streaming import MDSWriter

    data = samples(1)
    size_limit = 1 << 18  # several shards
    with MDSWriter(
        out=str(tmp_path / "streaming"),
        columns={"tokens": "ndarray:int32"},
        compression=compression,
        size_limit=size_limit,
    ) as theirs:
        for tokens in data:
            theirs.write({"tokens": tokens})
    with TokenShardWriter(tmp_path / "ours", compression, size_limit) as ours:
        for tokens in data:
            ours.write(tokens)
    expected = files(tmp_path / "streaming")
    assert len(expected) > 4  # index.json and at least 4 shards
    assert files(tmp_path / "ours") == expected


def test_merged_index_is_merge_indexs_and_streaming_reads_what_read_shard_reads(tmp_path: Path) -> None:
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory, merge_index

    split = tmp_path / "split"
    written = []
    for part, seed in (("part-00000-of-00002", 2), ("part-00001-of-00002", 3)):
        with TokenShardWriter(split / part, "zstd", 1 << 18) as writer:
            for tokens in samples(seed, 20):
                writer.write(tokens)
                written.append(tokens)
    indexes = [split / p / "index.json" for p in ("part-00000-of-00002", "part-00001-of-00002")]
    merge_index([str(p.resolve()) for p in indexes], str(tmp_path / "theirs"), keep_local=True)
    merge_indexes(indexes, split)
    assert (split / "index.json").read_bytes() == (tmp_path / "theirs" / "index.json").read_bytes()

    shards = json.loads((split / "index.json").read_text())["shards"]
    ours = [tokens for shard in shards for tokens in read_shard(split, shard)]
    assert len(ours) == len(written) == 40
    assert all(np.array_equal(a, b) for a, b in zip(ours, written, strict=True))
    clean_stale_shared_memory()
    cache = tmp_path / "cache"
    dataset = StreamingDataset(remote=str(tmp_path), local=str(cache), split="split", shuffle=False, batch_size=1)
    assert len(dataset) == 40
    assert all(np.array_equal(dataset[i]["tokens"], written[i]) for i in range(40))


def test_a_damaged_shard_is_named_by_validation(tmp_path: Path) -> None:
    split = tmp_path / "out" / "train"
    with TokenShardWriter(split / "part-00000-of-00001", "zstd") as writer:
        for tokens in samples(4, 10):
            writer.write(np.resize(tokens, 64).astype(np.int32))
    merge_indexes([split / "part-00000-of-00001" / "index.json"], split)
    summary = {"samples": 10, "max_token_id": 49_999}
    assert validate_split(tmp_path / "out", "train", summary, 64, 50_000) == 10
    with pytest.raises(ValidationError, match="expected \\(65,\\) int32"):
        validate_split(tmp_path / "out", "train", summary, 65, 50_000)
    with pytest.raises(ValidationError, match="the conversion wrote 11"):
        validate_split(tmp_path / "out", "train", summary | {"samples": 11}, 64, 50_000)
    shard = split / "part-00000-of-00001" / "shard.00000.mds.zstd"
    backup = tmp_path / "backup"
    shutil.copy(shard, backup)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValidationError, match=r"shard\.00000\.mds\.zstd: \d+ bytes, the index says"):
        validate_split(tmp_path / "out", "train", summary, 64, 50_000)
    shutil.copy(backup, shard)
    assert validate_split(tmp_path / "out", "train", summary, 64, 50_000) == 10
