"""`python -m preprocessing`: convert JSON-lines, zstd or Parquet files (or C4 from the hub) of one split into MDS.

Flag names follow llm-foundry's ``convert_dataset_json`` / ``convert_dataset_hf`` where they exist
(``--out-root``, ``--split``, ``--tokenizer``, ``--concat-tokens``, ``--eos-text``, ``--bos-text``,
``--no-wrap``, ``--compression``). Under Slurm, each task (``SLURM_PROCID`` of ``SLURM_NTASKS``)
converts its own share with ``--workers`` processes; rerunning the same command resumes. User
mistakes end with one line on stderr and exit code 2; ``--strict`` input errors with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from preprocessing.claim import OutputConflict, claim_output, fingerprint
from preprocessing.convert import ConvertOptions, run_parts
from preprocessing.inputs import (
    C4_SPLITS,
    InputError,
    TextField,
    hub_source,
    record_location,
    resolve_input_files,
    splittable,
)
from preprocessing.merge import merge_parts
from preprocessing.shares import Share, plan_shares
from preprocessing.splits import Holdout, is_validation_split, overlap_problem
from preprocessing.stats import read_part
from preprocessing.tokenizer import load_tokenizer, vocab_size
from preprocessing.validate import ValidationError, validate_split
from preprocessing.writer_lock import STALE_AFTER_S, SplitBusy, SplitLock, SplitLost

PROG = "preprocessing"
# The defaults of this command, which 1.c4-preprocess.sbatch uses too (it passes only what is set):
# the data every GPU yaml trains on.
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"
DEFAULT_CONCAT_TOKENS = 2048
DEFAULT_EOS_TEXT = "<|endoftext|>"


def build_parser() -> argparse.ArgumentParser:
    """The command line, as documented in docs/preprocessing.md."""
    p = argparse.ArgumentParser(
        prog="python -m preprocessing", description=__doc__.splitlines()[0] if __doc__ else None
    )
    p.add_argument(
        "--input",
        nargs="+",
        type=Path,
        help="files or folders of .jsonl/.json, .json.gz/.jsonl.gz, .jsonl.zst/.json.zst or .parquet; "
        "omit to stream allenai/c4 (en) from the Hugging Face hub",
    )
    p.add_argument(
        "--text-field",
        default="text",
        metavar="PATH",
        help="dotted path of the text in each record: text (C4), raw_content (RedPajama v2), meta.body",
    )
    p.add_argument(
        "--domain-field",
        default="",
        metavar="PATH",
        help="dotted path of each record's domain (meta.redpajama_set_name): one MDS dataset per value "
        "under OUT_ROOT/SPLIT/<domain>/, written in the same pass",
    )
    p.add_argument(
        "--val-input",
        nargs="+",
        type=Path,
        metavar="VAL_INPUT",
        help="what a validation split (val, val_small, val_xsmall, validation, test...) reads instead of "
        "--input: files or folders of its own, for corpora whose files are not named c4-validation.*",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="hold out this fraction of the documents (by a hash of their text) for the validation splits, "
        "the rest for the others: give the same value to every split's command (default: none)",
    )
    p.add_argument("--out-root", type=Path, required=True, help="dataset root; the split goes to OUT_ROOT/SPLIT")
    p.add_argument(
        "--split",
        required=True,
        help=f"split name; C4 names ({', '.join(C4_SPLITS)}) select c4-train.* or c4-validation.*",
    )
    p.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        help=f"tokenizer folder (offline) or Hugging Face name (default {DEFAULT_TOKENIZER}, the GPU yamls')",
    )
    p.add_argument(
        "--concat-tokens",
        type=int,
        default=DEFAULT_CONCAT_TOKENS,
        help=f"tokens per sample: the model's max_seq_len (default {DEFAULT_CONCAT_TOKENS}, the GPU yamls')",
    )
    p.add_argument(
        "--eos-text",
        default=DEFAULT_EOS_TEXT,
        help=f"text appended to every document (default {DEFAULT_EOS_TEXT}; '' for none)",
    )
    p.add_argument("--bos-text", default="", help="text prepended to every document")
    p.add_argument("--no-wrap", action="store_true", help="drop a sample's overflow instead of carrying it over")
    p.add_argument("--compression", choices=["zstd", "none"], default="zstd")
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="worker processes of this task, each tokenizing with CPUs / workers threads (default: one per "
        f"{THREADS_PER_WORKER} CPUs Slurm gives the task, else of this machine's)",
    )
    p.add_argument(
        "--max-docs",
        type=int,
        default=None,
        help="documents to take, in file order (default: all; train_small 100000, val_small 10000, val_xsmall 3000)",
    )
    p.add_argument("--strict", action="store_true", help="stop at the first line that cannot be converted")
    p.add_argument(
        "--wait",
        action="store_true",
        help="when another run is writing the split, wait for it instead of stopping (exit 2) at once",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=STALE_AFTER_S,
        metavar="SECONDS",
        help=f"a run that wrote no heartbeat for this long is taken as gone (default {STALE_AFTER_S:.0f})",
    )
    return p


# Tokenizer threads per worker process by default. Measured on 2 cores (docs/preprocessing.md, "Preprocessing"):
# one process whose Rust tokenizer runs 2 threads converts 45 MB in 11-14 s, two single-threaded
# processes take 16 s; the ceiling (tokenizing alone on 2 threads) 10-11 s.
THREADS_PER_WORKER = 2


def task_cpus() -> int:
    """The CPUs of this task: ``SLURM_CPUS_ON_NODE`` under Slurm, else the CPUs this may use."""
    cpus = os.environ.get("SLURM_CPUS_ON_NODE", "")
    if cpus.isdigit() and int(cpus) > 0:
        return int(cpus)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers() -> int:
    """Worker processes by default: one per `THREADS_PER_WORKER` CPUs of the task (at least one)."""
    return max(1, task_cpus() // THREADS_PER_WORKER)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Check everything a user can get wrong, convert this task's parts, merge when all are done."""
    args = build_parser().parse_args(argv)
    if args.concat_tokens <= 0 or args.workers <= 0 or (args.max_docs is not None and args.max_docs < 0):
        return _error("--concat-tokens and --workers must be positive, --max-docs not negative")
    try:
        TextField(args.text_field)
        if args.domain_field:
            TextField(args.domain_field, "--domain-field")
    except InputError as err:
        return _error(str(err))
    validation = is_validation_split(args.split)
    if args.val_input and validation:
        args.input = args.val_input
    if not args.input and (args.text_field != "text" or args.domain_field):
        return _error("--text-field and --domain-field apply to --input files: C4 from the hub has only 'text'")
    try:
        holdout = Holdout(args.holdout, validation) if args.holdout else None
    except ValueError as err:
        return _error(str(err))
    task, tasks = int(os.environ.get("SLURM_PROCID", "0")), int(os.environ.get("SLURM_NTASKS", "1"))
    if args.input:
        try:
            files = resolve_input_files(args.input, args.split)
        except InputError as err:
            return _error(str(err))
        if validation and holdout is None and not any(f.name.startswith("c4-validation.") for f in files):
            print(
                f"{PROG}: {args.split}: no c4-validation.* files among the inputs: every file given is "
                "validation data (a split of this --out-root that reads one of them too is refused)",
                flush=True,
            )
        # no part without input: plain files can be split in byte ranges, compressed and Parquet ones cannot
        if not any(splittable(f) for f in files):
            workers = max(1, min(args.workers, math.ceil(len(files) / tasks)))
        else:
            workers = args.workers
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            return _error(
                "no --input given and the Hugging Face hub is off (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1): "
                "pass --input with local C4 files"
            )
        files, workers = [Path(hub_source(args.split))], args.workers
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
        text_field=args.text_field,
        domain_field=args.domain_field,
        holdout=args.holdout,
        held_out=holdout is not None and holdout.held_out,
    )
    split_dir = args.out_root / args.split
    total = tasks * workers
    made_of = fingerprint(files, options, total)
    overlap = overlap_problem(args.out_root, args.split, made_of)
    if overlap:
        return _error(overlap)
    try:
        tokenizer = load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        return _error(f"cannot load tokenizer {args.tokenizer!r}: {first}")
    shares = plan_shares(files, total, max_docs, holdout, args.text_field, args.domain_field)
    try:
        claim_output(split_dir, made_of)
    except OutputConflict as err:
        return _error(str(err))
    lock = SplitLock(split_dir, task, args.lock_timeout)
    try:
        note = lock.wait_and_acquire(lambda line: print(f"{PROG}: {line}", flush=True)) if args.wait else lock.acquire()
    except SplitBusy as busy:
        return _error(
            f"{busy}: wait for it to end{_squeue_hint(busy)}, pass --wait to wait here, or use another --out-root"
        )
    if note:
        print(f"{PROG}: {note}", flush=True)
    try:
        return _convert_and_merge(args, files, shares, task, tasks, workers, options, tokenizer, lock)
    except SplitLost as lost:
        print(f"{PROG}: error: {lost}", file=sys.stderr)
        return 1
    finally:
        lock.release()


def _squeue_hint(busy: SplitBusy) -> str:
    return f" (squeue -j {busy.holder.job_id})" if busy.holder.job_id else ""


def _convert_and_merge(
    args: argparse.Namespace,
    files: list[Path],
    shares: list[Share],
    task: int,
    tasks: int,
    workers: int,
    options: ConvertOptions,
    tokenizer: Any,
    lock: SplitLock,
) -> int:
    """This task's parts, then (when every part is complete) the merged index, validated."""
    split_dir = args.out_root / args.split
    total = len(shares)
    mine = shares[task * workers : (task + 1) * workers]
    todo = [s for s in mine if read_part(split_dir, s.name) is None]
    if todo:  # a dataset with an unfinished part must never look whole
        (split_dir / "index.json").unlink(missing_ok=True)
        (split_dir / "summary.json").unlink(missing_ok=True)
    where = f"task {task} of {tasks}, " if tasks > 1 else ""
    print(
        f"{PROG}: {len(files)} file(s) -> {split_dir}: {where}{len(mine)} part(s) of {total}, "
        f"{len(mine) - len(todo)} already complete",
        flush=True,
    )
    if todo:
        errors = run_parts(
            todo,
            split_dir,
            options,
            f"{PROG} {args.split}",
            total_docs=options.max_docs,
            tokenizer=tokenizer,
            on_tick=lock.beat,
            threads=max(1, task_cpus() // workers),
        )
        lock.beat(force=True)  # a run taken over while it was stopped says so, whatever its workers did
        if errors:
            for message in errors:
                print(f"{PROG}: error: {message}", file=sys.stderr)
            return 1
    lock.keep_alive()  # no fork from here on: a thread keeps the heartbeat through merge and validation
    waiting = [s.index for s in shares if read_part(split_dir, s.name) is None]
    if waiting:
        print(f"{PROG}: this task's parts are complete; {_who_finishes(waiting, workers, lock)}")
        return 0
    s = merge_parts(split_dir, shares, options)
    vocab = vocab_size(tokenizer)
    try:
        checked = validate_split(args.out_root, args.split, s, args.concat_tokens, vocab)
        for domain in s.get("domains", {}).values():  # each domain is a dataset of its own too
            domain_summary = json.loads((split_dir / domain["folder"] / "summary.json").read_text())
            validate_split(split_dir, domain["folder"], domain_summary, args.concat_tokens, vocab)
    except ValidationError as err:
        print(f"{PROG}: error: validation failed: {err}", file=sys.stderr)
        return 1
    print(
        f"{PROG}: {s['split']}: {s['documents_written']:,}/{s['documents_read']:,} documents, "
        f"{s['documents_skipped']:,} skipped, {s['tokens']:,} tokens, {s['samples']:,} samples of "
        f"{args.concat_tokens}, {s['tokens_dropped']:,} tokens dropped, {s['elapsed_s']:.1f} s, "
        f"{s['tokens_per_s'] or 0:,.0f} tokens/s"
    )
    print(
        f"{PROG}: validated {split_dir}/index.json (shards read back): {len(shares)} parts, {s['samples']:,} samples "
        f"({checked:,} read back), max token id {s['max_token_id']} < vocabulary {vocab}"
    )
    for name, domain in s.get("domains", {}).items():
        print(
            f"{PROG}: domain {name}: {domain['documents_written']:,} documents, {domain['tokens']:,} tokens, "
            f"{domain['samples']:,} samples -> {split_dir / domain['folder']}"
        )
    for skipped in s["skipped"][:20]:
        print(f"{PROG}: skipped {record_location(skipped)}: {skipped['reason']}")
    if s["documents_skipped"] > 20:
        print(f"{PROG}: ... {s['documents_skipped'] - 20} more in {split_dir / 'summary.json'}")
    return 0


def _who_finishes(waiting: list[int], workers: int, lock: SplitLock) -> str:
    """Which tasks own the parts not complete yet, and whether they are still at work: the line
    must never promise a merge that nobody will do."""
    owners = sorted({index // workers for index in waiting})
    working = set(lock.members()) - {lock.task}
    running = [t for t in owners if t in working]
    gone = [t for t in owners if t not in working]
    parts = f"{len(waiting)} part(s) of task(s) {', '.join(map(str, owners))} are not"
    if not gone:
        busy = ", ".join(map(str, running))
        return f"{parts} yet: task(s) {busy} are converting them, and the last to finish merges the index"
    return (
        f"{parts}, and task(s) {', '.join(map(str, gone))} are not running (failed, or not started yet): "
        "the index is merged when every part is complete; rerun this command to finish them"
    )
