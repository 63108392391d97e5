"""C4 JSON to MDS: real shards that streaming and llm-foundry read, bad lines reported, user errors clear."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from preprocessing.cli import main
from preprocessing.concat import TokenConcatenator
from preprocessing.tokenizer import token_ids, untruncated
from tests.conftest import preprocess_args


def test_output_reads_back_with_streaming(mds_root: Path, demo_assets: tuple[Path, Path]) -> None:
    from streaming import StreamingDataset
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(demo_assets[1])))
    summary = json.loads((mds_root / "train_small" / "summary.json").read_text())
    ds = StreamingDataset(local=str(mds_root), split="train_small", shuffle=False, batch_size=1)
    assert len(ds) == summary["samples"] > 1000
    for i in (0, len(ds) // 2, len(ds) - 1):
        tokens = ds[i]["tokens"]
        assert tokens.dtype == np.int32 and tokens.shape == (128,)
        assert tokens.min() >= 0 and tokens.max() < vocab
    assert summary["tokens"] == summary["samples"] * 128 + summary["tokens_dropped"]
    assert summary["documents_written"] == summary["documents_read"] > 300
    assert summary["documents_skipped"] == 0


def test_llmfoundry_text_loader_reads_the_split(mds_root: Path, demo_assets: tuple[Path, Path]) -> None:
    from llmfoundry.data.text_data import StreamingTextDataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_assets[1]))
    ds = StreamingTextDataset(tokenizer=tok, max_seq_len=128, local=str(mds_root), split="val_small", batch_size=1)
    first = ds[0]
    assert first.shape == (128,)


def test_every_file_of_a_split_is_readable_by_those_who_share_the_dataset(mds_root: Path) -> None:
    """Created as ``open`` creates files (0666 less the umask), those written atomically too (the
    summary, ``dataset.json``, the merged index, each part's marker: `preprocessing.files`)."""
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in (mds_root / "train_small").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"summary.json", "dataset.json", "index.json", ".complete.json"}
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}


def test_concatenation_matches_llmfoundry(demo_assets: tuple[Path, Path]) -> None:
    """Our concatenation yields exactly the samples of llm-foundry's ConcatTokensDataset (wrap and no-wrap)."""
    from llmfoundry.data.data import ConcatTokensDataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_assets[1]))
    with gzip.open(demo_assets[0] / "c4-validation.00000-of-00001.json.gz") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    for no_wrap in (False, True):
        theirs = ConcatTokensDataset(
            hf_dataset=[{"text": t} for t in texts],
            tokenizer=tok,
            max_length=100,
            bos_text="",
            eos_text="<|endoftext|>",
            no_wrap=no_wrap,
        )
        concat = TokenConcatenator(100, eos=[tok.eos_token_id], wrap=not no_wrap)
        ours = [s for ids in tok(texts)["input_ids"] for s in concat.add(ids)]
        expected = [s["tokens"] for s in theirs]
        assert len(ours) == len(expected) > 20
        assert all(np.array_equal(a, b) for a, b in zip(ours, expected, strict=True))
        # what the workers run: ids from the backend, documents added a batch at a time
        batched = TokenConcatenator(100, eos=[tok.eos_token_id], wrap=not no_wrap)
        ids = token_ids(untruncated(tok), texts)
        assert ids == tok(texts, truncation=False, padding=False)["input_ids"]
        samples = [s for i in range(0, len(ids), 7) for s in batched.add_batch(ids[i : i + 7])]
        assert len(samples) == len(expected) and all(s.dtype == np.int32 for s in samples)
        assert all(np.array_equal(a, b) for a, b in zip(samples, expected, strict=True))
        assert (batched.finish(), batched.tokens_in, batched.tokens_dropped) == (
            concat.finish(),
            concat.tokens_in,
            concat.tokens_dropped,
        )


def test_concatenator_counts_every_token() -> None:
    concat = TokenConcatenator(4, bos=[9], eos=[0])
    samples = [s.tolist() for doc in ([1, 2, 3], [4], [5, 6, 7, 8, 10]) for s in concat.add(doc)]
    assert samples == [[9, 1, 2, 3], [0, 9, 4, 0], [9, 5, 6, 7]]
    assert concat.finish() == 3 and concat.tokens_in == 15 and concat.tokens_dropped == 3
    batched = TokenConcatenator(4, bos=[9], eos=[0])
    samples = [s.tolist() for docs in ([[1, 2, 3]], [], [[4], [5, 6, 7, 8, 10]]) for s in batched.add_batch(docs)]
    assert samples == [[9, 1, 2, 3], [0, 9, 4, 0], [9, 5, 6, 7]]
    assert batched.finish() == 3 and batched.tokens_in == 15 and batched.tokens_dropped == 3
    # the largest id the samples can hold, the specials included (10 is in the dropped remainder)
    assert concat.max_token_id == batched.max_token_id == 10
    specials = TokenConcatenator(4, bos=[99], eos=[0], wrap=False)
    assert [s.tolist() for s in specials.add_batch([[1, 2, 3, 4, 5]])] == [[99, 1, 2, 3]]
    assert specials.max_token_id == 99 and TokenConcatenator(4).max_token_id == -1


def _write_lines(path: Path, lines: list[bytes]) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")


@pytest.fixture
def bad_input(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    good = json.dumps({"text": "A perfectly fine document about Python. " * 20}).encode()
    _write_lines(
        folder / "c4-train.00000-of-00001.json.gz",
        [
            good,
            b"{not json",
            json.dumps({"url": "x"}).encode(),
            json.dumps({"text": 42}).encode(),
            b'{"text": "\xff\xfe broken utf-8"}',
            good,
        ],
    )
    return folder


def test_bad_lines_are_skipped_and_reported(
    bad_input: Path, demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    args = preprocess_args(bad_input, out, "train", demo_assets[1], 32)
    assert main(args) == 0
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["documents_read"] == 6 and summary["documents_written"] == 2
    reasons = {s["line"]: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {2, 3, 4, 5}
    assert reasons[2].startswith("invalid JSON") and reasons[3] == "no 'text' field"
    assert reasons[4] == "'text' is int, not a string" and reasons[5] == "invalid UTF-8"
    printed = capsys.readouterr().out
    assert "4 skipped" in printed and "c4-train.00000-of-00001.json.gz:2: invalid JSON" in printed


def test_strict_stops_at_first_bad_line(
    bad_input: Path, demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = preprocess_args(bad_input, tmp_path / "o", "train", demo_assets[1], 32, "--strict")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "c4-train.00000-of-00001.json.gz:2: invalid JSON" in err
    split = tmp_path / "o" / "train"
    assert not (split / "index.json").exists()
    assert not list(split.glob(".part-*.writing-*")), "the stopped part left its work folder"
    # --strict changes no byte of the output: the same command without it is not refused, and converts
    assert main(args[:-1]) == 0
    assert json.loads((split / "summary.json").read_text())["documents_written"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--input": "/nonexistent/c4"}, "input path does not exist: /nonexistent/c4"),
        ({"--tokenizer": "/nonexistent/tokenizer"}, "cannot load tokenizer '/nonexistent/tokenizer'"),
        ({"--concat-tokens": "0"}, "--concat-tokens and --workers must be positive"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    change: dict[str, str],
    message: str,
    demo_assets: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    opts = {
        "--input": str(demo_assets[0]),
        "--out-root": str(tmp_path),
        "--split": "val_small",
        "--tokenizer": str(demo_assets[1]),
        "--concat-tokens": "64",
    } | change
    assert main([x for kv in opts.items() for x in kv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_two_workers_write_the_same_samples_deterministically(demo_assets: tuple[Path, Path], tmp_path: Path) -> None:
    def run(out: Path) -> list[bytes]:
        args = preprocess_args(
            demo_assets[0], out, "train_small", demo_assets[1], 128, "--eos-text", "<|endoftext|>", "--workers", "2"
        )
        assert main(args) == 0
        return [p.read_bytes() for p in sorted((out / "train_small").glob("part-*/shard.*"))]

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert len(first) == 2 and first == second  # one shard per worker, same bytes every time
    summary = json.loads((tmp_path / "a" / "train_small" / "summary.json").read_text())
    assert summary["parts"] == 2 and [len(p["files"]) for p in summary["part_stats"]] == [1, 1]


def test_hub_source_names_the_c4_split_of_each_llmfoundry_split_name() -> None:
    from preprocessing.inputs import hub_source

    assert [hub_source(s) for s in ("train_small", "val_small", "val_xsmall", "train", "other")] == [
        "hf://allenai/c4/en/train",
        "hf://allenai/c4/en/validation",
        "hf://allenai/c4/en/validation",
        "hf://allenai/c4/en/train",
        "hf://allenai/c4/en/other",
    ]


def test_command_defaults_are_the_batch_scripts_and_fit_the_gpu_yamls(monkeypatch: pytest.MonkeyPatch) -> None:
    """One set of defaults: the command's; the sbatch script passes only the settings that are set."""
    from preprocessing.cli import build_parser, default_workers
    from tests.conftest import REPO_ROOT

    args = build_parser().parse_args(["--out-root", "o", "--split", "train_small"])
    assert (args.tokenizer, args.concat_tokens, args.eos_text) == ("EleutherAI/gpt-neox-20b", 2048, "<|endoftext|>")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "7")
    assert default_workers() == 3  # one per 2 CPUs (THREADS_PER_WORKER)
    script = (REPO_ROOT / "slurm-scripts" / "1.c4-preprocess.sbatch").read_text().splitlines()
    code = [line for line in script if not line.lstrip().startswith("#")]
    assert not [line for line in code if "gpt-neox" in line or "2048" in line or "endoftext" in line]
    from omegaconf import OmegaConf

    for size in ("125m", "7b", "70b"):
        yaml = OmegaConf.load(REPO_ROOT / "yamls" / f"mpt-{size}.yaml")
        assert (yaml.variables.max_seq_len, yaml.tokenizer.name) == (args.concat_tokens, args.tokenizer)
