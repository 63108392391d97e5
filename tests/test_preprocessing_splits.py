"""Splits never share documents: a folder whose files are not named by C4's splits (a SlimPajama
chunk) does not become both train_small and val_small; --val-input and --holdout give a validation
split of its own (documents read back from the shards); training and the report name an eval set
made from the training data's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from preprocessing.cli import main
from preprocessing.splits import Holdout, is_validation_split
from test_case.report.log_lines import parse_composer_log
from test_case.report.metrics import summarise_run
from tests.conftest import REPO_ROOT, preprocess_args, write_domain_sample
from tests.test_launch import run_launch
from tests.test_metrics_and_report import make_log

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def slimpajama(demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SlimPajama-shaped files: ``train/chunk1/example_train_{0,1}.jsonl.zst``, ``validation/chunk1/...``."""
    folder = tmp_path_factory.mktemp("slimpajama")
    write_domain_sample(demo_assets[0], folder)
    return folder


def convert(inputs: Path, out: Path, split: str, tokenizer: Path, *extra: str) -> int:
    return main(preprocess_args(inputs, out, split, tokenizer, 64, "--eos-text", EOS, "--workers", "1", *extra))


def documents_in(split_dir: Path, tokenizer: Path) -> list[str]:
    """The documents a split's shards hold, decoded: its samples' tokens in order, cut at each EOS."""
    from streaming import StreamingDataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    ds = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1)
    tokens = np.concatenate([ds[i]["tokens"] for i in range(len(ds))])
    cuts = np.flatnonzero(tokens == tok.convert_tokens_to_ids(EOS))
    pieces = np.split(tokens, cuts + 1)[:-1]  # the last piece was cut short by the final sample
    return [tok.decode(p[:-1]) for p in pieces]


def input_texts(folder: Path) -> list[str]:
    import zstandard

    texts = []
    for path in sorted(folder.rglob("*.jsonl.zst")):
        raw = zstandard.ZstdDecompressor().stream_reader(path.read_bytes()).read()
        texts += [json.loads(line)["text"] for line in raw.decode().splitlines()]
    return texts


def test_a_folder_not_named_by_split_never_becomes_the_validation_split_of_its_own_training_files(
    slimpajama: Path, demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_files = slimpajama / "train"
    tokenizer = demo_assets[1]
    assert convert(train_files, tmp_path, "train_small", tokenizer) == 0
    capsys.readouterr()
    # before: val_small took the same two files, exit 0, every eval loss measured on training documents
    assert convert(train_files, tmp_path, "val_small", tokenizer) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "val_small would read 2 file(s) that split train_small" in err
    assert "--val-input" in err and "VAL_INPUT" in err and "--holdout" in err
    assert not (tmp_path / "val_small").exists(), "a refused split leaves no folder"
    # named validation files of its own: made, and the two summaries share no input file
    assert convert(train_files, tmp_path, "val_small", tokenizer, "--val-input", str(slimpajama / "validation")) == 0
    assert "no c4-validation.* files among the inputs" in capsys.readouterr().out
    summaries = [json.loads((tmp_path / s / "summary.json").read_text()) for s in ("train_small", "val_small")]
    assert summaries[1]["documents_written"] > 0
    assert not set(summaries[0]["input_files"]) & set(summaries[1]["input_files"])


def test_a_held_out_fraction_gives_two_splits_of_the_same_files_without_a_shared_document(
    slimpajama: Path, demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files, tokenizer = slimpajama / "train", demo_assets[1]
    texts = input_texts(files)
    assert convert(files, tmp_path, "train", tokenizer, "--holdout", "0.25") == 0
    assert convert(files, tmp_path, "val", tokenizer, "--holdout", "0.25") == 0
    train, val = (documents_in(tmp_path / s, tokenizer) for s in ("train", "val"))
    assert set(train) <= set(texts) and set(val) <= set(texts)
    assert not set(train) & set(val), "a document in both splits"
    # every document but the one the last sample cut short lands on one side
    assert len(train) + len(val) >= len(texts) - 2
    n, share = len(texts), len(val) / len(texts)
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / n) ** 0.5, f"{len(val)} of {n} held out"
    summaries = {s: json.loads((tmp_path / s / "summary.json").read_text()) for s in ("train", "val")}
    assert (summaries["val"]["options"]["holdout"], summaries["val"]["options"]["held_out"]) == (0.25, True)
    assert summaries["train"]["options"]["held_out"] is False
    capsys.readouterr()
    # another fraction would let documents cross: refused like no holdout at all
    assert convert(files, tmp_path, "val_small", tokenizer, "--holdout", "0.1") == 2
    assert "val_small would read 2 file(s) that split train" in capsys.readouterr().err
    assert convert(files, tmp_path, "test", tokenizer, "--holdout", "1.5") == 2
    assert "--holdout 1.5: give a fraction between 0 and 1" in capsys.readouterr().err


def test_the_same_text_always_falls_on_the_same_side_and_validation_names_are_known() -> None:
    held = Holdout(0.5, held_out=True)
    rest = Holdout(0.5, held_out=False)
    texts = [f"document {i}" for i in range(200)]
    assert all(held.takes(t) != rest.takes(t) for t in texts)
    assert [held.takes(t) for t in texts] == [held.takes(t) for t in texts]
    assert 60 < sum(held.takes(t) for t in texts) < 140
    assert all(map(is_validation_split, ["val", "val_small", "val_xsmall", "validation", "test", "eval"]))
    assert not any(map(is_validation_split, ["train", "train_small", "pretrain"]))


def test_the_script_passes_val_input_and_holdout(
    slimpajama: Path, demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "C4_INPUT": str(slimpajama / "train"),
        "DATA_ROOT": str(tmp_path / "data"),
        "TOKENIZER": str(demo_assets[1]),
        "CONCAT_TOKENS": "64",
        "WORKERS": "1",
        "HOLDOUT": "0.2",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("SLURM_JOB_ID", None)
    script = REPO_ROOT / "slurm-scripts" / "1.c4-preprocess.sbatch"
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    val = json.loads((tmp_path / "data" / "val_small" / "summary.json").read_text())
    assert (val["options"]["holdout"], val["options"]["held_out"]) == (0.2, True)
    # VAL_INPUT instead: the validation split reads those files (into another DATA_ROOT)
    env |= {"DATA_ROOT": str(tmp_path / "data2"), "HOLDOUT": "", "VAL_INPUT": str(slimpajama / "validation")}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    val = json.loads((tmp_path / "data2" / "val_small" / "summary.json").read_text())
    assert all("/validation/" in f for f in val["input_files"]) and val["options"]["holdout"] == 0.0


def test_training_and_the_report_name_eval_data_made_from_the_training_files(
    mds_root: Path, demo_assets: tuple[Path, Path]
) -> None:
    data = {"DATA_ROOT": str(mds_root), "TOKENIZER": str(demo_assets[1])}
    out = run_launch("check", "mpt-tiny-cpu", **data)
    assert out.returncode == 0 and "warning" not in out.stdout, out.stdout
    out = run_launch("check", "mpt-tiny-cpu", "eval_loader.dataset.split=train_small", **data)
    assert out.returncode == 0, out.stderr
    assert (
        "launch: warning: eval_loader (train_small) was made from 2 input file(s) that train_loader (train_small) "
        "was made from too: its eval loss is measured on training documents" in out.stdout
    )
    line = "eval_loader (train_small) was made from 2 input file(s) that train_loader (train_small) was made from too"
    run = summarise_run(parse_composer_log([f"[run-header] eval_data_overlap: {line}", *make_log()[1:]]))
    assert run.eval_data_overlap == line
    assert f"eval data overlaps the training data: {line}" in run.warnings
    clean = summarise_run(parse_composer_log(["[run-header] eval_data_overlap: none", *make_log()[1:]]))
    assert clean.warnings == []
