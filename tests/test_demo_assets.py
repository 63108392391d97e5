"""The offline C4 sample has C4's names and record shape, is deterministic, and the tokenizer loads."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from test_case.demo.c4_sample import write_c4_sample


def test_sample_files_look_like_c4(demo_assets: tuple[Path, Path]) -> None:
    sample, _ = demo_assets
    names = sorted(p.name for p in sample.glob("*.json.gz"))
    assert names == [
        "c4-train.00000-of-00002.json.gz",
        "c4-train.00001-of-00002.json.gz",
        "c4-validation.00000-of-00001.json.gz",
    ]
    with gzip.open(sample / names[0], "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    assert len(records) > 100
    for rec in records:
        assert set(rec) == {"text", "timestamp", "url"}
        assert len(rec["text"]) >= 300
        assert rec["url"].startswith("https://docs.python.org/3/library/")


@pytest.mark.slow
def test_sample_is_byte_identical_across_runs(tmp_path: Path) -> None:
    a = write_c4_sample(tmp_path / "a")
    b = write_c4_sample(tmp_path / "b")
    assert a.train_docs == b.train_docs > 300
    assert 30 < a.validation_docs < a.train_docs / 5
    for pa, pb in zip(a.train + a.validation, b.train + b.validation, strict=True):
        assert pa.read_bytes() == pb.read_bytes()


def test_tokenizer_loads_with_transformers_and_round_trips(demo_assets: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    _, tok_dir = demo_assets
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) == 4096
    assert tok.eos_token == "<|endoftext|>"
    text = "Return the absolute value of the argument."
    ids = tok(text)["input_ids"]
    assert 0 < len(ids) < len(text)  # BPE merges happened
    assert tok.decode(ids) == text
    assert tok("<|endoftext|>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]
