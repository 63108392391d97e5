"""`python -m test_case.demo.assets --out DIR`: the demo's offline inputs, made on this machine.

Writes ``DIR/c4-sample/`` (C4-format ``.json.gz`` files, see `test_case.demo.c4_sample`) and
``DIR/tokenizer/`` (a byte-level BPE trained on that sample's training files, see
`test_case.demo.bpe_tokenizer`). Both are skipped when already present, so reruns are instant.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from test_case.demo.bpe_tokenizer import train_bpe_tokenizer
from test_case.demo.c4_sample import write_c4_sample


def _texts(files: list[Path]) -> Iterator[str]:
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def make_demo_assets(out: Path, vocab_size: int = 4096, train_files: int = 2) -> tuple[Path, Path]:
    """Create (or reuse) the sample and tokenizer under ``out``; return their two folders."""
    sample_dir, tok_dir = out / "c4-sample", out / "tokenizer"
    done = sample_dir / ".complete"
    if not done.exists():
        files = write_c4_sample(sample_dir, train_files=train_files)
        done.write_text(f"train_docs={files.train_docs} validation_docs={files.validation_docs}\n")
        print(f"wrote {files.train_docs} train + {files.validation_docs} validation docs to {sample_dir}")
    if not (tok_dir / "tokenizer.json").exists():
        train_bpe_tokenizer(_texts(sorted(sample_dir.glob("c4-train.*.json.gz"))), tok_dir, vocab_size)
        print(f"trained a {vocab_size}-token byte-level BPE into {tok_dir}")
    return sample_dir, tok_dir


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="folder for c4-sample/ and tokenizer/")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--train-files", type=int, default=2)
    args = parser.parse_args(argv)
    make_demo_assets(args.out, args.vocab_size, args.train_files)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
