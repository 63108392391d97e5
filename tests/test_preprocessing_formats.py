"""Inputs beyond C4's JSON: zstd JSON lines (SlimPajama) and Parquet (FineWeb, RedPajama v2), and the
text taken from any field (``--text-field``): the same documents give the same bytes in every format,
a kill -9 resumes, and every bad record or file is reported with its file and line (row)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from preprocessing.cli import main
from preprocessing.inputs import InputError, SkippedDocument, TextField, iter_documents
from tests.conftest import REPO_ROOT, preprocess_args
from tests.test_preprocessing_resume import command, larger_input, reference, tree_bytes

__all__ = ["larger_input", "reference"]  # the resume module's fixtures, used here too


def records_of(path: Path) -> list[dict[str, object]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_zst(path: Path, records: list[dict[str, object]], frames: int = 2) -> None:
    """JSON lines in ``frames`` zstd frames one after the other (as concatenated files are)."""
    lines = [json.dumps(r) + "\n" for r in records]
    step = -(-len(lines) // frames)
    compressor = zstandard.ZstdCompressor(level=3)
    path.write_bytes(
        b"".join(compressor.compress("".join(lines[i : i + step]).encode()) for i in range(0, len(lines), step))
    )


def write_parquet(path: Path, rows: list[dict[str, object]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=500)


@pytest.fixture(scope="module")
def formats(larger_input: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The resume module's four C4 files as zstd JSON lines and as Parquet, the text in three places."""
    root = tmp_path_factory.mktemp("formats")
    out = {name: root / name for name in ("zst", "parquet", "raw_content", "meta_body")}
    for folder in out.values():
        folder.mkdir()
    for source in sorted(larger_input.glob("*.json.gz")):
        stem = source.name.removesuffix(".json.gz")
        records = records_of(source)
        write_zst(
            out["zst"] / f"{stem}.jsonl.zst", [r | {"meta": {"redpajama_set_name": "RedPajamaC4"}} for r in records]
        )
        write_parquet(out["parquet"] / f"{stem}.parquet", [{"text": r["text"], "url": r["url"]} for r in records])
        write_zst(out["raw_content"] / f"{stem}.jsonl.zst", [{"raw_content": r["text"]} for r in records], frames=1)
        nested = [{"meta": {"body": r["text"], "lang": "en"}, "id": i} for i, r in enumerate(records)]
        write_parquet(out["meta_body"] / f"{stem}.parquet", nested)
    return out


def convert(inputs: Path, out: Path, tokenizer: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = command(inputs, out, tokenizer)
    return subprocess.run([*args, *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "text_field"),
    [("zst", "text"), ("parquet", "text"), ("raw_content", "raw_content"), ("meta_body", "meta.body")],
)
def test_every_format_and_text_field_gives_the_bytes_of_the_gzipped_json(
    formats: dict[str, Path],
    demo_assets: tuple[Path, Path],
    reference: dict[str, bytes],
    tmp_path: Path,
    fmt: str,
    text_field: str,
) -> None:
    done = convert(formats[fmt], tmp_path / "o", demo_assets[1], "--text-field", text_field)
    assert done.returncode == 0, done.stderr
    assert "4 file(s)" in done.stdout and "validated" in done.stdout
    assert tree_bytes(tmp_path / "o" / "train") == reference  # shards and indexes, byte for byte
    summary = json.loads((tmp_path / "o" / "train" / "summary.json").read_text())
    assert summary["documents_skipped"] == 0 and summary["documents_written"] > 2000


@pytest.mark.slow
def test_kill_minus_9_of_a_zstd_conversion_then_rerun_gives_the_same_bytes(
    formats: dict[str, Path], demo_assets: tuple[Path, Path], reference: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    proc = subprocess.Popen(
        command(formats["zst"], out, demo_assets[1]),
        cwd=REPO_ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("train/part-*/.complete.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = len(list(out.glob("train/part-*/.complete.json")))
    rerun = convert(formats["zst"], out, demo_assets[1])
    assert rerun.returncode == 0, rerun.stderr
    assert f"{complete} already complete" in rerun.stdout
    assert tree_bytes(out / "train") == reference


def test_bad_records_and_files_of_each_format_are_reported_with_file_and_line_or_row(
    demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    text = "Fine words about Python, repeated. " * 20
    rows: list[dict[str, object]] = [{"text": text} for _ in range(5)]
    rows += [{"text": None}, {"text": text}]
    write_parquet(folder / "a.parquet", rows)
    pq.write_table(pa.table({"text": pa.array([text, "x"]), "n": pa.array([1, 2])}), folder / "b.parquet")
    write_parquet(folder / "c.parquet", [{"body": text}])  # no text column
    (folder / "d.parquet").write_bytes(b"PAR1 not a parquet file")
    rng = random.Random(0)  # varied text: zstd blocks that a cut leaves whole before it
    words = [*text.split(), "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    good = "".join(json.dumps({"text": " ".join(rng.choices(words, k=300))}) + "\n" for _ in range(400)).encode()
    whole = zstandard.ZstdCompressor().compress(good)
    (folder / "e.jsonl.zst").write_bytes(whole[: len(whole) // 2])  # cut short while copying
    one_line = good.split(b"\n", 1)[0] + b"\n"
    (folder / "f.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(b'{"text": 5}\n' + one_line + b"{broken\n")
    )
    args = preprocess_args(folder, tmp_path / "o", "x", demo_assets[1], 64)
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "o" / "x" / "summary.json").read_text())
    by_file: dict[str, list[dict[str, object]]] = {}
    for s in summary["skipped"]:
        by_file.setdefault(Path(str(s["file"])).name, []).append(s)
    assert [(s["line"], s["reason"]) for s in by_file["a.parquet"]] == [(6, "'text' is null")]
    assert f"skipped {folder / 'a.parquet'} row 6: 'text' is null" in out
    assert "b.parquet" not in by_file  # "x" is a string: a document
    ((c,),) = [by_file["c.parquet"]]
    assert c["reason"] == "no column 'text' (columns: body): set --text-field" and c["document"] is False
    assert str(by_file["d.parquet"][0]["reason"]).startswith("unreadable Parquet file: ")
    (e,) = by_file["e.jsonl.zst"]
    assert str(e["reason"]).startswith("truncated or corrupt zstd: the file ends inside a zstd frame")
    assert e["document"] is False and int(str(e["line"])) > 1  # the lines before the cut were converted
    assert [(s["line"], s["reason"]) for s in by_file["f.jsonl.zst"]] == [
        (1, "'text' is int, not a string"),
        (3, "invalid JSON: Expecting property name enclosed in double quotes"),
    ]
    assert f"skipped {folder / 'f.jsonl.zst'}:1: 'text' is int, not a string" in out
    assert summary["documents_written"] == 6 + 2 + (int(str(e["line"])) - 1) + 1  # a, b, e before the cut, f


def test_text_field_paths_and_their_mistakes(demo_assets: tuple[Path, Path], tmp_path: Path) -> None:
    record = {"meta": {"body": "b", "n": 1}, "raw_content": "r"}
    assert TextField("meta.body").text(record, "f", 1) == "b"
    assert TextField("raw_content").text(record, "f", 1) == "r"
    assert TextField("meta.title").text(record, "f", 2) == SkippedDocument("f", 2, "no 'meta.title' field")
    assert TextField("meta.n").text(record, "f", 3) == SkippedDocument("f", 3, "'meta.n' is int, not a string")
    assert TextField("raw_content.x").text(record, "f", 4) == SkippedDocument("f", 4, "no 'raw_content.x' field")
    for bad in ("", "meta..body", ".text"):
        with pytest.raises(InputError, match="give a dotted path of keys"):
            TextField(bad)
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(record) + "\n")
    assert list(iter_documents(path, text_field=TextField("meta.body"))) == ["b"]
    base = preprocess_args(path, tmp_path / "o", "x", demo_assets[1], 64)
    wrong = subprocess.run(
        [sys.executable, "-m", "preprocessing", *base, "--text-field", "meta..body"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "--text-field 'meta..body': give a dotted path of keys" in wrong.stderr
