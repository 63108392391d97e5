"""The command of `2.train-mpt-manual-distributed.sbatch`'s steps on each node: check, then start Composer.

The sbatch script runs one task per node (``srun --ntasks-per-node=1``); each task calls
``python -m test_case.training.launch node MODEL [overrides...]``, which

* plans this node from Slurm's environment (`test_case.training.node_plan`: node rank, node count,
  rendezvous, processes per node),
* reads the run's configuration (`test_case.training.run_config`: the yaml with the suite's and the
  user's overrides) and checks what would make training fail later (`test_case.training.start_checks`),
  stopping with one clear line per problem (exit code 2),
* on node 0: prints the run header (`test_case.training.header`; inside the container when there is
  one, so the versions are those that train), puts back in order a checkpoint folder that a job killed
  while saving left behind (`test_case.training.checkpoints`) and, at a start after a requeue, prints
  why the job restarted (`test_case.training.restarts`),
* and replaces itself with Composer's launcher running llm-foundry's training on every rank
  (`composer_command`, through `test_case.training.foundry_train`, which fixes a multi-node race on
  shared filesystems). Every rank beats into `heartbeat_dir` (`test_case.training.heartbeat`), which
  names a rank that hangs.

Outside Slurm the same code runs one node on this machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from test_case.training.dataset_fit import eval_data_overlap
from test_case.training.header import print_run_header
from test_case.training.heartbeat import DIR_ENV as HEARTBEAT_DIR_ENV
from test_case.training.heartbeat import heartbeat_dir
from test_case.training.mixture import MixtureError
from test_case.training.node_plan import LaunchError, NodePlan, plan_node
from test_case.training.restarts import print_restart_events
from test_case.training.run_config import (
    checked_config,
    config_overrides,
    loader_datasets,
    local_save_folder,
    published_config,
    resolve_yaml,
    train_dataset_facts,
)
from test_case.training.shm_cleanup import remove_dead_segments
from test_case.training.start_checks import gpu_problems, memory_fit, share_gpu_counts, start_problems

if TYPE_CHECKING:  # omegaconf is imported where it is used: `header` and `plan` stay light
    from omegaconf import DictConfig


def composer_command(plan: NodePlan, yaml: Path, overrides: list[str], env: Mapping[str, str]) -> list[str]:
    """Composer's launcher for this node, running llm-foundry's training as a module."""
    return [
        "composer",
        "--nproc",
        str(plan.procs_per_node),
        "--world_size",
        str(plan.world_size),
        "--node_rank",
        str(plan.node_rank),
        "--master_addr",
        plan.master_addr,
        "--master_port",
        str(plan.master_port),
        "-m",
        "test_case.training.foundry_train",
        str(yaml),
        *config_overrides(plan, env, yaml, overrides),
        *overrides,
    ]


def prepare_resume(cfg: DictConfig, cwd: Path) -> list[str]:
    """Repair the checkpoint folder a killed job left (`test_case.training.checkpoints`) when the run autoresumes."""
    from omegaconf import OmegaConf

    from test_case.training.checkpoints import repair_save_folder

    save_folder = OmegaConf.select(cfg, "save_folder")
    custom_names = OmegaConf.select(cfg, "save_filename") or OmegaConf.select(cfg, "save_latest_filename")
    if not OmegaConf.select(cfg, "autoresume") or not save_folder or "://" in str(save_folder) or custom_names:
        return []
    return repair_save_folder(cwd / str(save_folder))


def main(argv: list[str] | None = None) -> int:
    """``check``, ``plan``, ``header`` or ``node`` for a model and its overrides (docs/training.md, "How a
    training job starts"). Exit code 2: a configuration mistake or a missing input, one line each."""
    parser = argparse.ArgumentParser(prog="python -m test_case.training.launch")
    parser.add_argument(
        "action",
        choices=["check", "header", "node", "node-check", "plan"],
        help="check: the config and the data, without starting anything (on a login node before sbatch, "
        "or as the batch script's first step); node-check: that and what only this node can say (free "
        "/dev/shm, room for a checkpoint, GPUs), the batch script's second step on every node; plan: the "
        "Composer command; header: the run header; node: check this node, then start Composer's launcher",
    )
    parser.add_argument("model", help="yaml name under yamls/ (e.g. mpt-7b) or a path to a yaml")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="OmegaConf dotlist overrides")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        yaml = resolve_yaml(args.model)
        plan = plan_node(env)
    except (LaunchError, ValueError) as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    if args.action == "header":
        print_run_header(plan, args.model, env, args.overrides)
        return 0
    counts = share_gpu_counts(plan, env) if args.action == "node-check" else None
    try:
        cfg, problems = checked_config(yaml, plan, env, args.overrides)
    except MixtureError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    if cfg is not None and args.action != "plan":
        # the batch is checked once, by `check` (node 0) or `node` (a run without Slurm); in `node-check`
        # a node whose GPU count differs is named by the agreement below instead
        problems = start_problems(
            yaml,
            plan,
            cfg,
            Path.cwd(),
            node_checks=args.action in ("node", "node-check"),
            batch=args.action != "node-check",
        )
    where = f"node {plan.node_rank}: " if args.action in ("node", "node-check") else ""
    for problem in problems:
        print(f"launch: error: {where}{problem}", file=sys.stderr)
    if problems or cfg is None:
        return 2
    cmd = composer_command(plan, yaml, args.overrides, env)
    if args.action == "plan":
        print(" ".join(cmd))
        return 0
    if (chosen := published_config(plan, env, yaml, args.overrides)[1]) and (
        args.action == "check" or plan.node_rank == 0
    ):
        print(f"launch: {chosen}", flush=True)
    if args.action == "check":
        print(f"launch: {' '.join([args.model, *args.overrides])}: configuration and data are fine")
        print(f"launch: memory: {memory_fit(yaml, plan, cfg, env)[1]}")
        for line in eval_data_overlap(loader_datasets(cfg), Path.cwd()):
            print(f"launch: warning: {line}")
        return 0
    if counts is not None:  # node-check
        problems = gpu_problems(plan, env, counts)
        for problem in problems:
            print(f"launch: error: node {plan.node_rank}: {problem}", file=sys.stderr)
        if problems:
            return 2
        gpus = f", {plan.gpus_per_node} GPU(s)" if plan.gpus_per_node else ""
        print(f"launch: node {plan.node_rank} ({socket.gethostname()}): ready{gpus}")
        return 0
    if plan.node_rank == 0:
        overlap = eval_data_overlap(loader_datasets(cfg), Path.cwd())
        for line in overlap:
            print(f"launch: warning: {line}", flush=True)
        print_run_header(plan, args.model, env, args.overrides, train_dataset_facts(cfg, Path.cwd()), overlap)
        # before Composer starts on this node, so before any rank of the run can read the folder
        for change in prepare_resume(cfg, Path.cwd()):
            print(f"launch: {change}", flush=True)
        print_restart_events(plan, env, local_save_folder(cfg, Path.cwd()))
    env.setdefault("OMP_NUM_THREADS", str(plan.threads_per_proc))
    env[HEARTBEAT_DIR_ENV] = str(heartbeat_dir(env, plan))
    # a killed run leaves streaming's shared memory behind: start clean, never touching a live run's
    if cleaned := remove_dead_segments().line(Path("/dev/shm")):
        print(f"launch: node {plan.node_rank}: {cleaned}", flush=True)
    print(f"launch: node {plan.node_rank}/{plan.num_nodes} on {socket.gethostname()}: {' '.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 0  # pragma: no cover  (execvpe does not return)


if __name__ == "__main__":
    raise SystemExit(main())
