"""Which files make up a split, and the documents inside them (C4 JSON lines, plain or gzipped).

Reading never loads a whole file: lines are streamed. A line that cannot become a document (invalid
JSON, invalid UTF-8, a missing or non-string ``text``) is reported as a `SkippedDocument` with its
file and line number instead of being dropped silently.
"""

from __future__ import annotations

import gzip
import json
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
    """A line that was not converted, and why."""

    file: str
    line: int
    reason: str


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


def iter_documents(path: Path) -> Iterator[str | SkippedDocument]:
    """Yield the ``text`` of each JSON line of ``path``, or a `SkippedDocument` for a bad line."""
    name = str(path)
    with _open_text(path) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield SkippedDocument(name, line_no, "invalid UTF-8")
                continue
            except json.JSONDecodeError as err:
                yield SkippedDocument(name, line_no, f"invalid JSON: {err.msg}")
                continue
            text = record.get("text") if isinstance(record, dict) else None
            if text is None:
                yield SkippedDocument(name, line_no, "no 'text' field")
            elif not isinstance(text, str):
                yield SkippedDocument(name, line_no, f"'text' is {type(text).__name__}, not a string")
            else:
                yield text
