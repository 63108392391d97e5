"""Where a split's documents come from: JSON-lines, zstd or Parquet files, or C4 on the HF hub.

Formats: ``.jsonl``/``.json`` (one JSON record per line), gzipped (``.json.gz``, ``.jsonl.gz``),
zstd-compressed (``.jsonl.zst``, ``.json.zst``: SlimPajama's files), and ``.parquet`` (FineWeb,
RedPajama v2 exports). Reading never loads a whole file: lines are streamed, Parquet files are read
a batch of rows at a time, one column only. The text is the field a dotted path names in each
record (`TextField`: ``text``, ``raw_content``, ``meta.body``). A record that cannot become a
document (invalid JSON, invalid UTF-8, a missing, null or non-string text) is reported as a
`SkippedDocument` with its file and line (row for Parquet) instead of being dropped silently; so
are files that hold nothing or end early (an empty file, a truncated or corrupt gzip or zstd file,
an unreadable Parquet file or one without the column), marked as not being a document themselves.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

SUFFIXES = (".json.gz", ".jsonl.gz", ".jsonl.zst", ".json.zst", ".jsonl", ".json", ".parquet")
PARQUET = ".parquet"

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
    """A line, or row of a Parquet file (or a whole file, ``document=False``) not converted, and why."""

    file: str
    line: int  # 1-based line of a JSON-lines file, row of a Parquet file (0: the file itself)
    reason: str
    document: bool = True


def record_location(skipped: dict[str, Any]) -> str:
    """``file:line``, or ``file row N`` for a Parquet file: where a skipped record is (from its dict)."""
    if str(skipped["file"]).endswith(PARQUET):
        return f"{skipped['file']} row {skipped['line']}"
    return f"{skipped['file']}:{skipped['line']}"


@dataclass(frozen=True)
class TextField:
    """The dotted path of the text in each record: ``text``, ``raw_content``, ``meta.body``."""

    path: str = "text"
    flag: str = "--text-field"  # the option it came from, for the message of a malformed path

    def __post_init__(self) -> None:
        if not self.path or any(not part for part in self.path.split(".")):
            raise InputError(f"{self.flag} {self.path!r}: give a dotted path of keys, e.g. text or meta.body")

    @property
    def parts(self) -> list[str]:
        """The keys, outermost first."""
        return self.path.split(".")

    def text(self, record: Any, name: str, line_no: int) -> str | SkippedDocument:
        """The text of one record (after its first key, for Parquet's column), or why it has none."""
        value = record
        for key in self.parts:
            if not isinstance(value, dict) or key not in value:
                return SkippedDocument(name, line_no, f"no {self.path!r} field")
            value = value[key]
        if value is None:
            return SkippedDocument(name, line_no, f"{self.path!r} is null")
        if not isinstance(value, str):
            return SkippedDocument(name, line_no, f"{self.path!r} is {type(value).__name__}, not a string")
        return value


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
    if path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    if path.name.endswith(".zst"):
        return cast(IO[bytes], io.BufferedReader(_ZstdStream(path.open("rb")), buffer_size=1 << 20))
    return path.open("rb")


class _ZstdStream(io.RawIOBase):
    """A zstd file decompressed as it is read, frame after frame; one that ends inside a frame raises.

    (zstandard's own ``stream_reader`` returns a truncated file's bytes as if it were whole.)
    """

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self._raw = raw
        self._context = zstandard.ZstdDecompressor()
        self._frame = self._context.decompressobj()
        self._in_frame = False  # bytes of the current frame were fed and its end not seen
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("the file ends inside a zstd frame (cut short while copying?)")
                return 0
            out = self._frame.decompress(chunk)
            self._in_frame = not self._frame.eof
            while self._frame.eof and self._frame.unused_data:  # the next frame starts in this chunk
                rest = self._frame.unused_data
                self._frame = self._context.decompressobj()
                out += self._frame.decompress(rest)
                self._in_frame = not self._frame.eof
            if self._frame.eof:
                self._frame = self._context.decompressobj()
            self._pending = out
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def splittable(path: Path) -> bool:
    """Plain (uncompressed) files can be read from any byte offset, so they can be split in ranges."""
    return not path.name.endswith((".gz", ".zst", PARQUET))


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (EOFError, OSError, zlib.error, zstandard.ZstdError)


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


def iter_documents(
    path: Path, parse: bool = True, start: int = 0, end: int = -1, text_field: TextField | None = None
) -> Iterator[str | SkippedDocument]:
    """Yield the text of each record of ``path``, or a `SkippedDocument` for a bad one.

    ``start``/``end`` read only the lines that start in that byte range (plain files only). With
    ``parse=False`` every non-blank line (every row) yields ``""`` (for counting documents cheaply).
    """
    for record in iter_records(path, parse, start, end, text_field):
        yield record if isinstance(record, SkippedDocument) else record[0]


def iter_records(
    path: Path,
    parse: bool = True,
    start: int = 0,
    end: int = -1,
    text_field: TextField | None = None,
    domain_field: TextField | None = None,
) -> Iterator[tuple[str, str] | SkippedDocument]:
    """As `iter_documents`, yielding ``(text, domain)``: the value ``domain_field`` names (``""`` without one).

    A record whose domain is missing or not a string is a `SkippedDocument` too (never put in a
    domain of its own silently).
    """
    text_field = text_field or TextField()
    if path.name.endswith(PARQUET):
        yield from _parquet_documents(path, parse, text_field, domain_field)
        return
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
                    yield "", ""
                    continue
                yield _document(name, line_no, raw, text_field, domain_field)
    except _read_errors() as err:
        what = {".gz": "truncated or corrupt gzip", ".zst": "truncated or corrupt zstd"}.get(
            path.suffix, "unreadable file"
        )
        yield SkippedDocument(name, line_no + 1, f"{what}: {err}", document=False)
        return
    if documents == 0 and whole:
        yield SkippedDocument(name, 0, "empty file: no documents", document=False)


def _document(
    name: str, line_no: int, raw: bytes, text_field: TextField, domain_field: TextField | None
) -> tuple[str, str] | SkippedDocument:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return SkippedDocument(name, line_no, "invalid UTF-8")
    except json.JSONDecodeError as err:
        return SkippedDocument(name, line_no, f"invalid JSON: {err.msg}")
    return _text_and_domain(record, name, line_no, text_field, domain_field)


def _text_and_domain(
    record: Any, name: str, line_no: int, text_field: TextField, domain_field: TextField | None
) -> tuple[str, str] | SkippedDocument:
    text = text_field.text(record, name, line_no)
    if isinstance(text, SkippedDocument) or domain_field is None:
        return text if isinstance(text, SkippedDocument) else (text, "")
    domain = domain_field.text(record, name, line_no)
    return domain if isinstance(domain, SkippedDocument) else (text, domain)


PARQUET_BATCH = 1024  # rows per read: a few MB of text, never the whole file


def _parquet_documents(
    path: Path, parse: bool, text_field: TextField, domain_field: TextField | None
) -> Iterator[tuple[str, str] | SkippedDocument]:
    """The rows of one Parquet file, a batch at a time, reading only the top-level columns needed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    row = 0
    wanted = [(text_field, "--text-field")] + ([(domain_field, "--domain-field")] if domain_field else [])
    columns = list(dict.fromkeys(f.parts[0] for f, _ in wanted))
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        for field, flag in wanted:
            if field.parts[0] not in names:
                yield SkippedDocument(
                    name, 0, f"no column {field.parts[0]!r} (columns: {', '.join(names)}): set {flag}", document=False
                )
                return
        if parquet.metadata.num_rows == 0:
            yield SkippedDocument(name, 0, "empty file: no documents", document=False)
            return
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH, columns=columns, use_threads=False):
            values = [batch.column(i).to_pylist() for i in range(len(columns))]
            for record in zip(*values, strict=True):
                row += 1
                if not parse:
                    yield "", ""
                    continue
                yield _text_and_domain(dict(zip(columns, record, strict=True)), name, row, text_field, domain_field)
    except (OSError, pa.ArrowException) as err:
        yield SkippedDocument(name, row + 1, f"unreadable Parquet file: {err}", document=False)


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
