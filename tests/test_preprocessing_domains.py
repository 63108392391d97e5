"""One MDS dataset per domain in one pass (``--domain-field``): each domain's bytes are those of a
separate conversion of its documents, every domain has its own index and summary, the split reads
as one dataset too, a record without a domain is reported, and a kill -9 resumes to the same bytes."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zstandard

from preprocessing.cli import main
from preprocessing.convert import domain_folder
from test_case.training.dataset_fit import dataset_facts
from tests.conftest import REPO_ROOT, preprocess_args
from tests.test_preprocessing_resume import tree_bytes

DOMAIN = "meta.redpajama_set_name"


def slimpajama_like(sample: Path, folder: Path, copies: int = 1) -> dict[str, list[list[str]]]:
    """The demo's training texts as SlimPajama-shaped zstd chunks (30 % Wikipedia, 70 % C4), two
    files; returns each domain's texts per file, in order."""
    texts: list[str] = []
    for path in sorted(sample.glob("c4-train.*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh]
    texts *= copies
    folder.mkdir(parents=True)
    per_domain: dict[str, list[list[str]]] = {"RedPajamaC4": [[], []], "RedPajamaWikipedia": [[], []]}
    for f in range(2):
        lines = []
        for i, text in enumerate(texts[f::2]):
            domain = "RedPajamaWikipedia" if i % 10 < 3 else "RedPajamaC4"
            per_domain[domain][f].append(text)
            lines.append(json.dumps({"text": text, "meta": {"redpajama_set_name": domain}}) + "\n")
        (folder / f"chunk_{f}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(lines).encode()))
    return per_domain


def args(inputs: Path, out: Path, tokenizer: Path, *extra: str) -> list[str]:
    return preprocess_args(
        inputs, out, "train", tokenizer, 128, "--eos-text", "<|endoftext|>", "--workers", "2", *extra
    )


def test_each_domain_is_the_dataset_a_separate_conversion_of_its_documents_gives(
    demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample, tokenizer = demo_assets
    per_domain = slimpajama_like(sample, tmp_path / "in")
    assert main(args(tmp_path / "in", tmp_path / "out", tokenizer, "--domain-field", DOMAIN)) == 0
    printed = capsys.readouterr().out
    split = tmp_path / "out" / "train"
    summary = json.loads((split / "summary.json").read_text())
    assert set(summary["domains"]) == {"RedPajamaC4", "RedPajamaWikipedia"}
    for domain, files in per_domain.items():
        alone = tmp_path / f"alone-{domain}"  # the same documents, filtered beforehand, converted alone
        alone.mkdir()
        for f, texts in enumerate(files):
            (alone / f"chunk_{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        assert main(args(alone, tmp_path / f"ref-{domain}", tokenizer)) == 0
        reference = tmp_path / f"ref-{domain}" / "train"
        assert tree_bytes(split / domain) == tree_bytes(reference), domain  # shards and indexes, byte for byte
        mine, theirs = (json.loads((d / "summary.json").read_text()) for d in (split / domain, reference))
        for key in ("documents_written", "tokens", "samples", "tokens_dropped", "max_token_id", "tokenizer_sha256"):
            assert mine[key] == theirs[key] == (summary["domains"][domain].get(key, mine[key])), key
        assert summary["domains"][domain]["documents_written"] == sum(len(t) for t in files)
        facts = dataset_facts(split / domain)  # training's dataset check reads a domain as a split
        assert facts is not None and facts.sample_tokens == 128 and facts.tokenizer_sha256 == mine["tokenizer_sha256"]
        assert f"domain {domain}: {mine['documents_written']:,} documents" in printed
    assert summary["documents_written"] == summary["documents_read"] == 379
    assert summary["samples"] == sum(d["samples"] for d in summary["domains"].values())
    # the split as one dataset: every domain's shards under one index
    from streaming import StreamingDataset

    whole = StreamingDataset(local=str(tmp_path / "out"), split="train", shuffle=False, batch_size=1)
    assert len(whole) == summary["samples"] and whole[len(whole) - 1]["tokens"].shape == (128,)


def test_records_without_a_domain_are_reported_and_odd_names_get_safe_folders(
    demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    text = "Words about Python's standard library, repeated for a sample or two. " * 8
    lines = [
        {"text": text, "meta": {"redpajama_set_name": "Books/3 (en)"}},
        {"text": text, "meta": {}},
        {"text": text, "meta": {"redpajama_set_name": 7}},
        {"text": text, "meta": {"redpajama_set_name": "index.json"}},
        {"text": text, "meta": {"redpajama_set_name": "Books/3 (en)"}},
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert main(args(tmp_path / "in", tmp_path / "out", demo_assets[1], "--domain-field", DOMAIN)) == 0
    summary = json.loads((tmp_path / "out" / "train" / "summary.json").read_text())
    assert [(s["line"], s["reason"]) for s in summary["skipped"]] == [
        (2, "no 'meta.redpajama_set_name' field"),
        (3, "'meta.redpajama_set_name' is int, not a string"),
    ]
    assert {d: f["folder"] for d, f in summary["domains"].items()} == {
        "Books/3 (en)": "Books_3__en_",
        "index.json": "_index.json",
    }
    assert summary["domains"]["Books/3 (en)"]["documents_written"] == 2
    assert (tmp_path / "out" / "train" / "Books_3__en_" / "index.json").is_file()
    assert domain_folder("part-00001-of-00002") == "_part-00001-of-00002" and domain_folder("") == "_"


def test_domain_field_mistakes_are_one_line_errors(demo_assets: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    base = preprocess_args(tmp_path / "a.jsonl", tmp_path / "o", "x", demo_assets[1], 64)
    bad = subprocess.run(
        [sys.executable, "-m", "preprocessing", *base, "--domain-field", "meta."],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "--domain-field 'meta.': give a dotted path of keys" in bad.stderr
    hub = preprocess_args(None, tmp_path / "o", "x", demo_assets[1], 64)
    assert main([*hub, "--domain-field", DOMAIN]) == 2


@pytest.mark.slow
def test_kill_minus_9_of_a_domain_split_then_rerun_gives_the_same_bytes(
    demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    sample, tokenizer = demo_assets
    slimpajama_like(sample, tmp_path / "in", copies=6)
    command = [sys.executable, "-m", "preprocessing", *args(tmp_path / "in", tmp_path / "ref", tokenizer)]
    command += ["--domain-field", DOMAIN]
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
    reference = tree_bytes(tmp_path / "ref" / "train")
    assert len([k for k in reference if k.startswith("RedPajamaWikipedia/part-")]) >= 4
    out = tmp_path / "killed"
    killed = [a if a != str(tmp_path / "ref") else str(out) for a in command]
    proc = subprocess.Popen(
        killed, cwd=REPO_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("train/part-*/.complete.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = len(list(out.glob("train/part-*/.complete.json")))
    assert not (out / "train" / "index.json").exists() or complete == 2
    rerun = subprocess.run(killed, cwd=REPO_ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{complete} already complete" in rerun.stdout
    assert tree_bytes(out / "train") == reference
    assert not list(out.glob("train/*/.part-*"))  # nothing left of the killed run's work folders
