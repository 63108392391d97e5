"""Where a split's documents come from: C4 JSON-lines files (plain or gzipped), or the HF hub.

Reading never loads a whole file: lines are streamed. A line that cannot become a document (invalid
JSON, invalid UTF-8, a missing or non-string ``text``) is reported as a `SkippedDocument` with its
file and line number instead of being dropped silently; so are files that hold nothing or end
early (an empty file, a truncated or corrupt gzip), marked as not being a document themselves.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

SUFFIXES = (".json.gz", ".jsonl.gz", ".jsonl", ".json")

# llm-foundry's C4 split names: (C4 file prefix, documents taken from the start of that split).
C4_SPLITS: dict[str, tuple[str, int | None]] = {
    "train": ("train", None),
    "train_small": ("train", 100_000),
    "val": ("validation", None),
    "val_small": ("validation", 10_000),
    "val_xsmall": ("validation", 3_000),
}


class InputError(ValueError):
    """A user mistake in the inputs, reported without a traceback."""


@dataclass(frozen=True)
class SkippedDocument:
    """A line (or a whole file, ``document=False``) that was not converted, and why."""

    file: str
    line: int
    reason: str
    document: bool = True


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUFFIXES)


def resolve_input_files(inputs: list[Path], split: str) -> list[Path]:
    """Expand files and folders into a sorted list of data files for ``split``.

    A folder contributes its C4 files for that split (``c4-train.*`` for ``train``/``train_small``,
    ``c4-validation.*`` for ``val*``) when it holds C4-named files, else every data file in it.
    Files named explicitly are always taken.
    """
    files: list[Path] = []
    for given in inputs:
        if not given.exists():
            raise InputError(f"input path does not exist: {given}")
        if given.is_file():
            if not given.name.endswith(SUFFIXES):
                raise InputError(f"{given}: not a JSON input (expected one of {', '.join(SUFFIXES)})")
            files.append(given)
            continue
        found = sorted(p for p in given.rglob("*") if _is_data_file(p))
        c4_named = [p for p in found if p.name.startswith("c4-")]
        if c4_named and split in C4_SPLITS:
            prefix = f"c4-{C4_SPLITS[split][0]}."
            found = [p for p in c4_named if p.name.startswith(prefix)]
        if not found:
            raise InputError(f"{given}: no {', '.join(SUFFIXES)} files for split {split!r} in this folder")
        files.extend(found)
    return sorted(dict.fromkeys(files), key=lambda p: (p.name, str(p)))


def _open_text(path: Path) -> IO[bytes]:
    return cast(IO[bytes], gzip.open(path, "rb")) if path.name.endswith(".gz") else path.open("rb")


def splittable(path: Path) -> bool:
    """Plain (uncompressed) files can be read from any byte offset, so they can be split in ranges."""
    return not path.name.endswith(".gz")


def _lines_before(path: Path, pos: int) -> int:
    """Newlines in the first ``pos`` bytes of a plain file (line numbers of a range)."""
    n = 0
    with path.open("rb") as fh:
        while pos > 0:
            chunk = fh.read(min(pos, 1 << 24))
            if not chunk:
                break
            n += chunk.count(b"\n")
            pos -= len(chunk)
    return n


def _range_lines(fh: IO[bytes], path: Path, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of the lines that start in ``[start, end)`` (``end < 0``: to the end)."""
    if start > 0:
        fh.seek(start - 1)
        if fh.read(1) != b"\n":
            fh.readline()  # the line in progress at ``start`` belongs to the range before
    first = fh.tell()
    base: int | None = None
    while end < 0 or fh.tell() < end:
        raw = fh.readline()
        if not raw:
            return
        if base is None:
            base = _lines_before(path, first) if first > 0 else 0
        base += 1
        yield base, raw


def iter_documents(path: Path, parse: bool = True, start: int = 0, end: int = -1) -> Iterator[str | SkippedDocument]:
    """Yield the ``text`` of each JSON line of ``path``, or a `SkippedDocument` for a bad line.

    ``start``/``end`` read only the lines that start in that byte range (plain files only). With
    ``parse=False`` every non-blank line yields ``""`` (for counting documents cheaply).
    """
    name = str(path)
    line_no = 0
    documents = 0
    whole = start == 0 and end < 0
    try:
        with _open_text(path) as fh:
            lines = enumerate(fh, start=1) if whole else _range_lines(fh, path, start, end)
            for line_no, raw in lines:
                if not raw.strip():
                    continue
                documents += 1
                if not parse:
                    yield ""
                    continue
                yield _document(name, line_no, raw)
    except (EOFError, OSError, zlib.error) as err:
        what = "truncated or corrupt gzip" if name.endswith(".gz") else "unreadable file"
        yield SkippedDocument(name, line_no + 1, f"{what}: {err}", document=False)
        return
    if documents == 0 and whole:
        yield SkippedDocument(name, 0, "empty file: no documents", document=False)


def _document(name: str, line_no: int, raw: bytes) -> str | SkippedDocument:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return SkippedDocument(name, line_no, "invalid UTF-8")
    except json.JSONDecodeError as err:
        return SkippedDocument(name, line_no, f"invalid JSON: {err.msg}")
    text = record.get("text") if isinstance(record, dict) else None
    if text is None:
        return SkippedDocument(name, line_no, "no 'text' field")
    if not isinstance(text, str):
        return SkippedDocument(name, line_no, f"'text' is {type(text).__name__}, not a string")
    return text


HUB_PREFIX = "hf://allenai/c4/en/"


def hub_source(split: str) -> str:
    """The pseudo file name that stands for a C4 split on the Hugging Face hub (`C4_SPLITS`)."""
    return HUB_PREFIX + (C4_SPLITS[split][0] if split in C4_SPLITS else split)


def iter_hub_documents(source: str, shard: int, shards: int) -> Iterator[str | SkippedDocument]:
    """Documents of C4 from the hub (``datasets`` streaming), this shard of ``shards``."""
    from datasets import load_dataset

    hf_split = source.removeprefix(HUB_PREFIX)
    dataset = load_dataset("allenai/c4", "en", split=hf_split, streaming=True)
    if shards > 1:
        dataset = dataset.shard(num_shards=shards, index=shard)
    for i, record in enumerate(dataset, start=1):
        text = record.get("text")
        yield text if isinstance(text, str) else SkippedDocument(source, i, "no string 'text' field")
