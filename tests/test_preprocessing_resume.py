"""Preprocessing claims that need real runs: byte-identity with llm-foundry, resume after kill -9,
Slurm task shares, two runs into one folder at once (refused, waited for, taken over from a killed
or a stopped run), and inputs that are empty, truncated or belong to another dataset."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from preprocessing.cli import main
from preprocessing.writer_lock import LOCK
from tests.conftest import REPO_ROOT, preprocess_args


def tree_bytes(split_dir: Path) -> dict[str, bytes]:
    """Every shard and index of a split (what a reader sees), by relative path."""
    return {
        str(p.relative_to(split_dir)): p.read_bytes()
        for p in sorted(split_dir.rglob("*"))
        if p.is_file() and (p.name.startswith("shard.") or p.name == "index.json")
    }


def test_one_worker_is_byte_identical_to_llmfoundry_convert_dataset_json(
    demo_assets: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmfoundry.command_utils.data_prep.convert_dataset_json import convert_dataset_json

    sample, tokenizer = demo_assets
    source = sample / "c4-train.00000-of-00002.json.gz"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    theirs = tmp_path / "llmfoundry"
    convert_dataset_json(
        path=str(source),
        out_root=str(theirs),
        compression="zstd",
        concat_tokens=128,
        split="train",
        tokenizer=str(tokenizer),
        eos_text="<|endoftext|>",
    )
    args = preprocess_args(
        source, tmp_path / "ours", "train", tokenizer, 128, "--eos-text", "<|endoftext|>", "--compression", "zstd"
    )
    assert main(args) == 0
    ours = tmp_path / "ours" / "train" / "part-00000-of-00001"
    their_shards = sorted(p.name for p in theirs.glob("shard.*"))
    assert their_shards == ["shard.00000.mds.zstd"]
    for name in their_shards:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes()
    assert json.loads((ours / "index.json").read_text()) == json.loads((theirs / "index.json").read_text())


@pytest.fixture(scope="module")
def larger_input(demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four C4 train files of different sizes (the sample's documents repeated), ~9 MB of text."""
    sample, _ = demo_assets
    lines = []
    for path in sorted(sample.glob("c4-train.*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines += fh.readlines()
    folder = tmp_path_factory.mktemp("larger")
    for i, copies in enumerate((3, 1, 2, 1)):
        with gzip.open(folder / f"c4-train.{i:05d}-of-00004.json.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(lines * copies)
    return folder


def command(inputs: Path, out: Path, tokenizer: Path, workers: int = 2) -> list[str]:
    extra = ("--eos-text", "<|endoftext|>", "--workers", str(workers))
    return [sys.executable, "-m", "preprocessing", *preprocess_args(inputs, out, "train", tokenizer, 128, *extra)]


@pytest.fixture(scope="module")
def reference(
    larger_input: Path, demo_assets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, bytes]:
    """The bytes of one uninterrupted run of `command`."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(command(larger_input, out, demo_assets[1]), cwd=REPO_ROOT, check=True, capture_output=True)
    found = tree_bytes(out / "train")
    assert len([k for k in found if k.startswith("part-")]) >= 4  # two parts, shard + index each
    return found


@pytest.mark.slow
def test_kill_minus_9_at_any_moment_then_rerun_gives_the_same_bytes(
    larger_input: Path, demo_assets: tuple[Path, Path], tmp_path: Path, reference: dict[str, bytes]
) -> None:
    tokenizer = demo_assets[1]
    for n, delay in enumerate((0.5, 3.0, 5.0, "first part complete")):
        out = tmp_path / f"run{n}"
        proc = subprocess.Popen(
            command(larger_input, out, tokenizer),
            cwd=REPO_ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        if isinstance(delay, float):
            time.sleep(delay)
        else:
            while not list(out.glob("train/part-*/.complete.json")) and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):  # it may have finished: the rerun finds it complete
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        split = out / "train"
        complete = list(split.glob("part-*/.complete.json"))
        assert len(complete) == 2 or not (split / "index.json").exists()  # never looks whole half-written
        killed_holding_the_folder = (split / LOCK).exists()
        rerun = subprocess.run(command(larger_input, out, tokenizer), cwd=REPO_ROOT, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{len(complete)} already complete" in rerun.stdout
        taken_over = f"took the folder over from pid {proc.pid} on {socket.gethostname()}"
        assert (taken_over in rerun.stdout) == killed_holding_the_folder, rerun.stdout
        assert tree_bytes(split) == reference, f"kill after {delay}"


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A preprocessing run in its own process group, its output (stdout and stderr) in ``log``."""
    with log.open("wb") as fh:
        return subprocess.Popen(args, cwd=REPO_ROOT, start_new_session=True, stdout=fh, stderr=subprocess.STDOUT)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


def writing(split: Path) -> bool:
    """Workers are converting: a part is being written (the run holds the folder by then)."""
    return bool(list(split.glob(".part-*.writing-*")))


@pytest.mark.slow
def test_a_second_run_into_a_folder_being_written_stops_with_one_line_or_waits_for_it(
    larger_input: Path, demo_assets: tuple[Path, Path], tmp_path: Path, reference: dict[str, bytes]
) -> None:
    out, split, tokenizer = tmp_path / "out", tmp_path / "out" / "train", demo_assets[1]
    first = start(command(larger_input, out, tokenizer), tmp_path / "first.log")
    runs = [first]
    try:
        wait_for(lambda: writing(split), "part being written")
        os.killpg(first.pid, signal.SIGSTOP)  # keeps it writing for as long as this test needs
        refused = subprocess.run(command(larger_input, out, tokenizer), cwd=REPO_ROOT, capture_output=True, text=True)
        assert refused.returncode == 2 and refused.stdout == ""
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"preprocessing: error: {split} is being written by pid {first.pid} on ")
        assert line.endswith("wait for it to end, pass --wait to wait here, or use another --out-root")
        waiter = start([*command(larger_input, out, tokenizer), "--wait"], tmp_path / "waiter.log")
        runs.append(waiter)
        wait_for(lambda: "waiting for it to finish" in (tmp_path / "waiter.log").read_text(), "waiting line")
        assert waiter.poll() is None and not list(split.glob(f".part-*.writing-{waiter.pid}"))
        os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()
        assert waiter.wait(timeout=300) == 0, (tmp_path / "waiter.log").read_text()
    finally:
        for proc in runs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    waited = (tmp_path / "waiter.log").read_text()
    assert "2 part(s) of 2, 2 already complete" in waited and "validated" in waited  # no work done twice
    assert "validated" in (tmp_path / "first.log").read_text()
    assert tree_bytes(split) == reference
    assert not list(split.glob(".writer*")) and not list(split.glob(".part-*"))  # both left the folder clean


@pytest.mark.slow
def test_a_stopped_run_is_taken_over_after_the_lock_timeout_and_stops_when_continued(
    larger_input: Path, demo_assets: tuple[Path, Path], tmp_path: Path, reference: dict[str, bytes]
) -> None:
    out, split, tokenizer = tmp_path / "out", tmp_path / "out" / "train", demo_assets[1]
    stopped = start(command(larger_input, out, tokenizer), tmp_path / "stopped.log")
    try:
        wait_for(lambda: writing(split), "part being written")
        os.killpg(stopped.pid, signal.SIGSTOP)
        taker = subprocess.run(
            [*command(larger_input, out, tokenizer), "--wait", "--lock-timeout", "5"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert taker.returncode == 0, taker.stderr
        assert f"took the folder over from pid {stopped.pid} on {socket.gethostname()}" in taker.stdout
        assert "no heartbeat for" in taker.stdout and "validated" in taker.stdout
        assert tree_bytes(split) == reference
        os.killpg(stopped.pid, signal.SIGCONT)  # it wakes up in a folder that is no longer its own
        assert stopped.wait(timeout=120) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stopped.pid, signal.SIGCONT)
            os.killpg(stopped.pid, signal.SIGKILL)
        stopped.wait()
    assert "stopping so that two runs never write it" in (tmp_path / "stopped.log").read_text()
    assert tree_bytes(split) == reference  # what the taker wrote is untouched


@pytest.mark.slow
def test_slurm_task_shares_merge_into_the_single_task_result(
    larger_input: Path,
    demo_assets: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokenizer = demo_assets[1]
    base = [
        "--input",
        str(larger_input),
        "--split",
        "train",
        "--tokenizer",
        str(tokenizer),
        "--concat-tokens",
        "128",
        "--eos-text",
        "<|endoftext|>",
    ]
    assert main([*base, "--out-root", str(tmp_path / "single"), "--workers", "2"]) == 0
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert main([*base, "--out-root", str(tmp_path / "tasks"), "--workers", "1"]) == 0
    assert "1 part(s) of task(s) 0 are not, and task(s) 0 are not running" in capsys.readouterr().out
    assert not (tmp_path / "tasks" / "train" / "index.json").exists()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert main([*base, "--out-root", str(tmp_path / "tasks"), "--workers", "1"]) == 0
    assert "validated" in capsys.readouterr().out
    assert tree_bytes(tmp_path / "tasks" / "train") == tree_bytes(tmp_path / "single" / "train")


def test_empty_and_truncated_files_are_reported(
    demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    good = (json.dumps({"text": "Fine words about Python. " * 30}) + "\n").encode()
    (folder / "a.jsonl").write_bytes(b"")
    whole = gzip.compress(good * 50)
    (folder / "b.json.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "c.jsonl").write_bytes(good * 3)
    args = preprocess_args(folder, tmp_path / "o", "x", demo_assets[1], 64)
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "x" / "summary.json").read_text())
    reasons = {Path(s["file"]).name: s for s in summary["skipped"]}
    assert reasons["a.jsonl"]["reason"] == "empty file: no documents" and reasons["a.jsonl"]["document"] is False
    assert reasons["b.json.gz"]["reason"].startswith("truncated or corrupt gzip")
    assert summary["documents_written"] >= 3 and summary["documents_skipped"] == 2
    assert "skipped" in capsys.readouterr().out


def test_output_folder_with_another_dataset_is_refused(
    demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--input",
        str(demo_assets[0]),
        "--out-root",
        str(tmp_path),
        "--split",
        "val_small",
        "--tokenizer",
        str(demo_assets[1]),
    ]
    assert main([*args, "--concat-tokens", "64"]) == 0
    assert main([*args, "--concat-tokens", "64"]) == 0  # the same command again: nothing to do, still valid
    assert main([*args, "--concat-tokens", "32"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'val_small'} holds a different dataset (options differ)" in err
    # a validation split like val_small (a training split of these files would be refused as overlapping it)
    (tmp_path / "val_foreign").mkdir()
    (tmp_path / "val_foreign" / "index.json").write_text("{}")
    foreign = preprocess_args(demo_assets[0], tmp_path, "val_foreign", demo_assets[1], 64)
    assert main(foreign) == 2
    assert "is not empty and was not written by this tool" in capsys.readouterr().err


def test_hub_without_network_is_a_clear_error(
    demo_assets: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = preprocess_args(None, tmp_path, "train_small", demo_assets[1], 64)
    assert main(args) == 2
    assert "no --input given and the Hugging Face hub is off" in capsys.readouterr().err


def test_one_plain_file_is_split_in_byte_ranges_without_losing_a_line(
    demo_assets: tuple[Path, Path], tmp_path: Path
) -> None:
    with gzip.open(demo_assets[0] / "c4-train.00000-of-00002.json.gz", "rt", encoding="utf-8") as fh:
        lines = fh.readlines()
    lines.insert(150, "{broken\n")  # in the second half: its line number must still be 151
    source = tmp_path / "one.jsonl"
    source.write_text("".join(lines))
    args = preprocess_args(source, tmp_path / "o", "train", demo_assets[1], 128, "--workers", "3")
    assert main(args) == 0
    summary = json.loads((tmp_path / "o" / "train" / "summary.json").read_text())
    assert summary["parts"] == 3 and all(p["documents_read"] > 0 for p in summary["part_stats"])
    assert summary["documents_read"] == len(lines) and summary["documents_written"] == len(lines) - 1
    (skipped,) = summary["skipped"]
    assert skipped["line"] == 151 and skipped["reason"].startswith("invalid JSON")
    ranges = [p["files"][0] for p in summary["part_stats"]]
    assert ranges[0].endswith("[0:" + ranges[1].split("[")[1].split(":")[0] + "]")  # contiguous byte ranges
