"""MDS shards of token samples: written, merged and read as streaming 0.12 does, byte for byte, without importing it.

``streaming``'s import takes seconds (it imports torch, torchvision and its text and vision
datasets), more than the whole conversion of a small split. The converter writes one column,
``tokens`` encoded ``ndarray:int32``, and this module writes exactly what streaming's
``MDSWriter(columns={"tokens": "ndarray:int32"}, compression=..., size_limit=1 << 26)`` writes for
it, merges part indexes as ``streaming.base.util.merge_index`` does for local folders, and reads
the samples back for validation (tests/test_mds.py compares every byte with streaming's writer and
reads the result with ``StreamingDataset``). Training reads the shards with streaming itself.

The format (streaming's ``format/mds``): a shard is ``uint32 samples``, ``uint32 offsets[samples +
1]`` (from the file's start), the writer's config as JSON (sorted keys), then the samples; a sample
is ``uint32 size`` of its one variable-size column and the column: ``ndarray`` with a fixed dtype
and a free shape is one byte ``ndim << 2 | shape dtype`` (0 uint8, 1 uint16, 2 uint32, 3 uint64,
the smallest that holds the largest dimension), the shape in that dtype, then the values. A shard
is closed before a sample would take it past ``size_limit`` bytes (header and 4 bytes per sample
counted); with ``zstd`` compression (python-zstd, level 3 unless ``zstd:N``) the shard on disk is
``shard.NNNNN.mds.zstd`` and ``index.json`` lists both forms' sizes.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from preprocessing.files import write_atomic

COLUMN = "tokens"
ENCODING = "ndarray:int32"
SIZE_LIMIT = 1 << 26  # streaming's default shard size limit
INDEX = "index.json"
SHAPE_DTYPES = ("uint8", "uint16", "uint32", "uint64")


def zstd_level(compression: str | None) -> int | None:
    """The zstd level of a ``--compression`` value: ``zstd`` is streaming's default 3; None for none."""
    if not compression:
        return None
    name, _, level = compression.partition(":")
    if name != "zstd":
        raise ValueError(f"compression {compression!r}: only zstd (or none) is written here")
    return int(level) if level else 3


def encode_tokens(tokens: NDArray[np.int32]) -> bytes:
    """One sample: its column's size, then the column as streaming's ``ndarray:int32`` encodes it."""
    if tokens.dtype != np.int32 or tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"a sample is a non-empty 1-D int32 array, not {tokens.dtype} {tokens.shape}")
    length = tokens.shape[0]
    code = next(i for i, bits in enumerate((8, 16, 32, 64)) if length < (1 << bits))
    datum = bytes([(1 << 2) | code]) + np.array([length], SHAPE_DTYPES[code]).tobytes() + tokens.tobytes()
    return np.uint32(len(datum)).tobytes() + datum


class TokenShardWriter:
    """streaming's ``MDSWriter`` for the one ``tokens`` column, into a local folder (module docstring)."""

    def __init__(self, out: Path, compression: str | None, size_limit: int = SIZE_LIMIT) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.compression = compression or None
        self.level = zstd_level(self.compression)
        self.size_limit = size_limit
        self.config: dict[str, Any] = {
            "version": 2,
            "format": "mds",
            "compression": self.compression,
            "hashes": [],
            "size_limit": size_limit,
            "column_names": [COLUMN],
            "column_encodings": [ENCODING],
            "column_sizes": [None],
        }
        self.config_data = json.dumps(self.config, sort_keys=True).encode("utf-8")
        self.shards: list[dict[str, Any]] = []
        self.samples: list[bytes] = []
        self.size = 8 + len(self.config_data)

    def write(self, tokens: NDArray[np.int32]) -> None:
        """Add one sample, first closing the shard if the sample would take it past the size limit."""
        sample = encode_tokens(tokens)
        if self.size_limit < self.size + len(sample) + 4:
            self._flush()
        self.samples.append(sample)
        self.size += len(sample) + 4

    def _flush(self) -> None:
        count = len(self.samples)
        sizes = np.array([0, *map(len, self.samples)], np.int64).cumsum()
        offsets = (sizes + 4 + 4 * (count + 1) + len(self.config_data)).astype(np.uint32)
        raw = np.uint32(count).tobytes() + offsets.tobytes() + self.config_data + b"".join(self.samples)
        raw_name = f"shard.{len(self.shards):05}.mds"
        info: dict[str, Any] = {"samples": count, "raw_data": {"basename": raw_name, "bytes": len(raw), "hashes": {}}}
        data, name, zipped = raw, raw_name, None
        if self.level is not None:
            import zstd

            data, name = zstd.compress(raw, self.level), f"{raw_name}.zstd"
            zipped = {"basename": name, "bytes": len(data), "hashes": {}}
        info["zip_data"] = zipped
        info.update(self.config)
        (self.out / name).write_bytes(data)
        self.shards.append(info)
        self.samples, self.size = [], 8 + len(self.config_data)

    def finish(self) -> None:
        """Write the last shard and ``index.json``."""
        if self.samples:
            self._flush()
        with (self.out / INDEX).open("w") as fh:
            json.dump({"version": 2, "shards": self.shards}, fh, sort_keys=True)

    def __enter__(self) -> TokenShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is None:
            self.finish()


def merge_indexes(indexes: list[Path], out: Path) -> None:
    """``out/index.json`` over the shards of ``indexes`` (each ``<folder>/index.json`` beside ``out``):
    what ``streaming.base.util.merge_index(indexes, out, keep_local=True)`` writes for local folders,
    each basename prefixed with its index's folder name; written atomically (`preprocessing.files`)."""
    shards: list[dict[str, Any]] = []
    for index in indexes:
        obj = json.loads(Path(index).read_text())
        for shard in obj["shards"]:
            for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
                if shard.get(key):
                    shard[key]["basename"] = os.path.join(Path(index).parent.name, shard[key]["basename"])
        shards += obj["shards"]
    write_atomic(out / INDEX, json.dumps({"version": 2, "shards": shards}))


def read_shard(folder: Path, shard: dict[str, Any]) -> list[NDArray[Any]]:
    """Every sample of one shard of ``folder/index.json`` (its ``tokens``), checking the file's size."""
    zipped = shard.get("zip_data")
    entry = zipped or shard["raw_data"]
    path = folder / entry["basename"]
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        raise ValueError(f"{path}: {len(data)} bytes, the index says {entry['bytes']}")
    if zipped:
        import zstd

        data = zstd.decompress(data)
    if len(data) != shard["raw_data"]["bytes"]:
        raise ValueError(f"{path}: {len(data)} bytes decompressed, the index says {shard['raw_data']['bytes']}")
    count = int(np.frombuffer(data, np.uint32, 1)[0])
    if count != shard["samples"]:
        raise ValueError(f"{path}: {count} samples, the index says {shard['samples']}")
    if shard.get("column_encodings") != [ENCODING]:
        raise ValueError(f"{path}: columns {shard.get('column_encodings')}, expected [{ENCODING!r}]")
    offsets = np.frombuffer(data, np.uint32, count + 1, 4)
    out = []
    for begin, end in itertools.pairwise(int(v) for v in offsets):
        head = data[begin + 4]  # after the column's uint32 size: ndim << 2 | shape dtype
        ndim, dtype = head >> 2, SHAPE_DTYPES[head & 3]
        width = np.dtype(dtype).itemsize
        shape = tuple(int(v) for v in np.frombuffer(data, dtype, ndim, begin + 5))
        out.append(np.frombuffer(data[begin + 5 + ndim * width : end], np.int32).reshape(shape))
    return out
