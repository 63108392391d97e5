"""`python -m test_case.acceptance submit ...`: submit an acceptance sweep and write its manifest.

    slurm-scripts/3.acceptance.sh --models mpt-1b,mpt-7b --nodes 1,2,4,8 [--no-preflight] \\
        [--tolerance 0.10] [--scaling-threshold 0.90] [--weak|--strong] [--parallel] \\
        [--gpu-type h100-sxm [--published-config]] \\
        [--override KEY=VALUE ...] [--dry-run] [-- SBATCH OPTIONS]

Submits what `test_case.acceptance.plan` plans, from the repository root (so each job finds the
suite), with ``sbatch --parsable``, then writes ``LOG_DIR/acceptance_<sweep-id>.json``
(`test_case.acceptance.manifest`) and prints each job and ``python report.py LOG_DIR`` to run when
they have ended. Exit code: 0 submitted, 2 a usage mistake or an sbatch that failed (the jobs
submitted before it are listed, to cancel).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from test_case import REPO_ROOT
from test_case.acceptance.manifest import SweepJob, SweepManifest
from test_case.acceptance.plan import (
    PlanError,
    Submission,
    dependency_option,
    gpu_target,
    gpus_per_node_of,
    memory_lines,
    parse_list,
    parse_nodes,
    plan_sweep,
    published_configs,
)

SCALING_THRESHOLD = 0.90  # lowest scaling efficiency against the smallest node count that passes


def build_parser() -> argparse.ArgumentParser:
    """The command line (docs/acceptance.md, "Acceptance sweep")."""
    p = argparse.ArgumentParser(
        prog="3.acceptance.sh",
        description="Submit a preflight and the model ladder at several node counts; the report judges them.",
        epilog="Options after -- go to every sbatch (e.g. -- --partition=p5 --account=me).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "submit",
        help="submit a sweep",
        prog="3.acceptance.sh",
        usage="3.acceptance.sh --models M1,M2 --nodes N1,N2 [options] [-- SBATCH OPTIONS]",
        epilog="Options after -- go to every sbatch (e.g. -- --partition=p5 --gpus-per-node=8).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("--models", required=True, help="yaml names, comma separated (mpt-1b,mpt-7b)")
    s.add_argument("--nodes", required=True, help="node counts, comma separated (1,2,4,8)")
    s.add_argument("--no-preflight", action="store_true", help="train without the preflight first")
    s.add_argument("--tolerance", type=float, default=0.10, help="allowed shortfall against published throughput")
    s.add_argument(
        "--scaling-threshold",
        type=float,
        default=SCALING_THRESHOLD,
        help=f"lowest scaling efficiency against the smallest node count that passes ({SCALING_THRESHOLD})",
    )
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--weak", action="store_const", const="weak", dest="scaling", help="batch per GPU kept (default)")
    mode.add_argument("--strong", action="store_const", const="strong", dest="scaling", help="global batch kept")
    s.add_argument("--parallel", action="store_true", help="let Slurm run the training jobs at the same time")
    s.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="llm-foundry override")
    s.add_argument(
        "--gpu-type",
        default=None,
        metavar="GPU",
        help="the cluster's GPU (h100-sxm, h200, a100-40gb, ...): refuse a model that does not fit in its memory "
        "before submitting (docs/training.md, 'Will it fit'); without it, each job checks on its nodes",
    )
    s.add_argument(
        "--published-config",
        action="store_true",
        help="with --gpu-type: run each model at the microbatch, activation checkpointing, precision and FSDP "
        "settings of llm-foundry's published run of the same GPU count (reference/), where there is one",
    )
    s.add_argument("--log-dir", type=Path, default=None, help="where logs and the manifest go (default: LOG_DIR)")
    s.add_argument("--dry-run", action="store_true", help="print the sbatch commands, submit nothing")
    return p


def sbatch(argv: list[str]) -> str:
    """Submit with ``sbatch --parsable``; the job id."""
    try:
        out = subprocess.run(
            ["sbatch", "--parsable", *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise RuntimeError(
            "sbatch is not on PATH: run this on a login node of the Slurm cluster, or see the plan with --dry-run"
        ) from None
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or out.stdout.strip() or f"sbatch exited {out.returncode}")
    return out.stdout.strip().split(";")[0]


def submit_all(subs: list[Submission], submit: Callable[[list[str]], str]) -> list[str]:
    """Submit in order, each with its dependencies on the job ids before it; the job ids."""
    ids: list[str] = []
    for s in subs:
        ids.append(submit([*s.sbatch_options, *dependency_option(s, ids), s.script, *s.script_args]))
    return ids


def manifest_of(subs: list[Submission], ids: list[str], args: argparse.Namespace, models: list[str]) -> SweepManifest:
    """The manifest of the submitted sweep."""
    jobs = []
    for s, job_id in zip(subs, ids, strict=True):
        depends = [ids[i] for i in (s.after_ok, s.after_any) if i is not None]
        overrides = s.script_args[1:] if s.kind == "train" else []
        jobs.append(SweepJob(s.kind, job_id, s.nodes, s.model, s.global_train_batch_size, overrides, depends))
    return SweepManifest(
        sweep_id=ids[0],
        submitted=datetime.now(UTC).isoformat(timespec="seconds"),
        models=models,
        nodes=sorted({s.nodes for s in subs if s.kind == "train"}),
        scaling=args.scaling or "weak",
        tolerance=args.tolerance,
        scaling_threshold=args.scaling_threshold,
        preflight_job_id=ids[0] if subs[0].kind == "preflight" else None,
        jobs=jobs,
        sbatch_args=list(args.sbatch_args),
    )


def main(argv: Sequence[str] | None = None, submit: Callable[[list[str]], str] = sbatch) -> int:
    """Plan, submit, write the manifest (module docstring)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    cut = raw.index("--") if "--" in raw else len(raw)
    args = build_parser().parse_args(raw[:cut])
    args.sbatch_args = raw[cut + 1 :]
    try:
        if not 0 <= args.tolerance < 1 or not 0 < args.scaling_threshold <= 1:
            raise PlanError("--tolerance must be in [0, 1) and --scaling-threshold in (0, 1]")
        models = parse_list(args.models, "models")
        nodes = parse_nodes(args.nodes)
        log_dir = args.log_dir or Path(os.environ.get("LOG_DIR") or REPO_ROOT / "logs")
        if args.published_config and not args.gpu_type:
            raise PlanError("--published-config needs --gpu-type: the published runs are per GPU type")
        target = gpu_target(args.gpu_type, args.sbatch_args) if args.gpu_type else None
        published, chosen = (
            published_configs(models, nodes, target, args.override) if target and args.published_config else ({}, [])
        )
        subs = plan_sweep(
            models,
            nodes,
            args.scaling or "weak",
            preflight=not args.no_preflight,
            parallel=args.parallel,
            log_dir=str(log_dir),
            sbatch_args=args.sbatch_args,
            overrides=args.override,
            published=published,
            ranks_per_node=target.gpus_per_node
            if target
            else gpus_per_node_of(args.sbatch_args) or int(os.environ.get("CPU_PROCS_PER_NODE") or 1),
        )
        fit, misfit = memory_lines(subs, target) if target else ([], [])
    except PlanError as err:
        print(f"3.acceptance: error: {err}", file=sys.stderr)
        return 2
    for line in chosen:
        print(f"acceptance: {line}")
    for line in misfit:
        print(f"3.acceptance: error: {line}", file=sys.stderr)
    if misfit:
        return 2
    for line in fit:
        print(f"acceptance: memory: {line}")
    if target is None:
        print(
            "acceptance: memory fit not checked before submitting (give --gpu-type, e.g. h100-sxm); each job checks it"
        )
    if args.dry_run:
        placeholders = [f"<job {i}>" for i in range(len(subs))]
        for s in subs:
            print(
                " ".join(["sbatch", *s.sbatch_options, *dependency_option(s, placeholders), s.script, *s.script_args])
            )
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    ids: list[str] = []

    def record(argv_: list[str]) -> str:
        ids.append(submit(argv_))
        return ids[-1]

    try:
        submit_all(subs, record)
    except RuntimeError as err:
        done = f"; submitted before it: {', '.join(ids)} (scancel {' '.join(ids)})" if ids else ""
        print(f"3.acceptance: error: sbatch failed: {err}{done}", file=sys.stderr)
        return 2
    path = manifest_of(subs, ids, args, models).write(log_dir)
    for s, job_id in zip(subs, ids, strict=True):
        what = "preflight" if s.kind == "preflight" else f"{s.model} global batch {s.global_train_batch_size}"
        print(f"acceptance: job {job_id}: {what} on {s.nodes} node(s)")
    print(f"acceptance: sweep {ids[0]}: manifest {path}; when the jobs have ended: python report.py {log_dir}")
    return 0
