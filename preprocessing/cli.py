"""`python -m preprocessing`: convert C4-style JSON files of one split into MDS shards.

Flag names follow llm-foundry's ``convert_dataset_json`` / ``convert_dataset_hf`` where they exist
(``--out-root``, ``--split``, ``--tokenizer``, ``--concat-tokens``, ``--eos-text``, ``--bos-text``,
``--no-wrap``, ``--compression``). User mistakes end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from preprocessing.convert import ConvertOptions, StrictInputError, convert_split, load_tokenizer
from preprocessing.inputs import C4_SPLITS, InputError, resolve_input_files


def build_parser() -> argparse.ArgumentParser:
    """The command line, as documented in the README."""
    p = argparse.ArgumentParser(prog="python -m preprocessing", description=__doc__.splitlines()[0])
    p.add_argument(
        "--input", nargs="+", type=Path, required=True, help="C4-style .json.gz/.jsonl/.json files, or folders of them"
    )
    p.add_argument("--out-root", type=Path, required=True, help="dataset root; the split goes to OUT_ROOT/SPLIT")
    p.add_argument(
        "--split",
        required=True,
        help=f"split name; C4 names ({', '.join(C4_SPLITS)}) select c4-train.* or c4-validation.*",
    )
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (offline) or Hugging Face name")
    p.add_argument("--concat-tokens", type=int, required=True, help="tokens per sample (the model's max_seq_len)")
    p.add_argument("--eos-text", default="", help="text appended to every document, e.g. '<|endoftext|>'")
    p.add_argument("--bos-text", default="", help="text prepended to every document")
    p.add_argument("--no-wrap", action="store_true", help="drop a sample's overflow instead of carrying it over")
    p.add_argument("--compression", choices=["zstd", "none"], default="zstd")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument(
        "--max-docs",
        type=int,
        default=None,
        help="documents to take (default: all; train_small 100000, val_small 10000, val_xsmall 3000)",
    )
    p.add_argument("--strict", action="store_true", help="stop at the first line that cannot be converted")
    return p


def main(argv: list[str] | None = None) -> int:
    """Validate the inputs before any work, convert, print the totals."""
    args = build_parser().parse_args(argv)
    prog = "preprocessing"
    if args.concat_tokens <= 0 or args.workers <= 0:
        print(f"{prog}: error: --concat-tokens and --workers must be positive", file=sys.stderr)
        return 2
    try:
        files = resolve_input_files(args.input, args.split)
    except InputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false" if args.workers > 1 else "true")
    try:
        load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        print(f"{prog}: error: cannot load tokenizer {args.tokenizer!r}: {first}", file=sys.stderr)
        return 2
    max_docs = args.max_docs if args.max_docs is not None else C4_SPLITS.get(args.split, ("", None))[1]
    options = ConvertOptions(
        tokenizer=args.tokenizer,
        concat_tokens=args.concat_tokens,
        eos_text=args.eos_text,
        bos_text=args.bos_text,
        wrap=not args.no_wrap,
        compression=None if args.compression == "none" else args.compression,
        max_docs=max_docs,
        strict=args.strict,
    )
    split_dir = args.out_root / args.split
    print(f"{prog}: {len(files)} file(s) -> {split_dir} with {args.workers} worker(s)", flush=True)
    try:
        s = convert_split(files, split_dir, options, args.workers)
    except StrictInputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    print(
        f"{prog}: {s['split']}: {s['documents_written']}/{s['documents_read']} documents, "
        f"{s['documents_skipped']} skipped, {s['tokens']} tokens, {s['samples']} samples of "
        f"{args.concat_tokens}, {s['tokens_dropped']} tokens dropped, {s['elapsed_s']:.1f} s, "
        f"{s['tokens_per_s']:.0f} tokens/s"
    )
    for skipped in s["skipped"][:20]:
        print(f"{prog}: skipped {skipped['file']}:{skipped['line']}: {skipped['reason']}")
    if s["documents_skipped"] > 20:
        print(f"{prog}: ... {s['documents_skipped'] - 20} more in {split_dir / 'summary.json'}")
    return 0
