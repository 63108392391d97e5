"""Checks before a start: what would make training fail later, found before any rank starts.

`start_problems` is what `launch check` (once, before sbatch or as the batch script's first step)
and `launch node-check` / `launch node` (on every node) print as one actionable line each: missing
dataset splits or tokenizer, a dataset that does not fit the model (`dataset_fit`), a checkpoint
folder that cannot be written or is too small, a full ``/dev/shm``, a global batch the ranks cannot
share (`config_check.batch_problem`), a model that does not fit in the GPUs' memory (`memory_fit`),
flash attention without GPUs. `share_gpu_counts` and `gpu_problems` make every node of a job agree
on its GPU count (`test_case.training.gpus`). Not the ``preflight/`` package, which measures a
cluster's health before any training.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from test_case.training import gpus
from test_case.training.config_check import batch_problem
from test_case.training.dataset_fit import dataset_facts, fit_problems
from test_case.training.gpus import NodeGpus
from test_case.training.heartbeat import heartbeat_dir
from test_case.training.memory_fit import GpuMemory, fit_line, gpu_memory_to_check, planned_gpus, shape_of
from test_case.training.node_plan import NodePlan, expand_hostlist
from test_case.training.run_config import _int_or_none, _path_like, loader_datasets, local_save_folder

if TYPE_CHECKING:
    from omegaconf import DictConfig


# Bytes per parameter of a Composer checkpoint: fp32 weights and Adam's two moments (4 + 4 + 4).
CHECKPOINT_BYTES_PER_PARAM = 12
# /dev/shm a node needs free: dataloader workers, streaming's shared index and NCCL's shared-memory
# transport between local ranks (a few MB per pair of GPUs and channel): a margin per process.
SHM_BASE_MB, SHM_PER_PROC_MB = 256, 128


def checkpoint_bytes(cfg: DictConfig) -> int | None:
    """About what one checkpoint of this MPT takes: parameters x `CHECKPOINT_BYTES_PER_PARAM`, with
    parameters ``n_layers x (4 + 2 x expansion_ratio) x d_model^2 + vocab_size x d_model`` (attention,
    MLP and the tied embedding; what Composer logs as n_params within a percent)."""
    from omegaconf import OmegaConf

    model = OmegaConf.select(cfg, "model")
    try:
        d, layers, vocab = int(model.d_model), int(model.n_layers), int(model.vocab_size)
        expansion = float(model.get("expansion_ratio", 4))
    except (AttributeError, TypeError, ValueError):
        return None
    params = layers * (4 + 2 * expansion) * d * d + vocab * d
    return int(params * CHECKPOINT_BYTES_PER_PARAM)


def space_problems(
    cfg: DictConfig, plan: NodePlan, save_folder: Path | None, shm: Path = Path("/dev/shm")
) -> list[str]:
    """Free space the run needs on this node: ``/dev/shm`` (else ranks die of SIGBUS) and the
    checkpoint folder (else a save is cut short), each as one line with the fix."""
    problems = []
    if shm.is_dir():
        usage = shutil.disk_usage(shm)
        need = (SHM_BASE_MB + SHM_PER_PROC_MB * plan.procs_per_node) << 20
        if usage.free < need:
            host = socket.gethostname()
            problems.append(
                f"{shm} on {host} has {usage.free / 2**20:,.0f} MiB free of {usage.total / 2**20:,.0f} MiB and "
                f"{plan.procs_per_node} process(es) need about {need / 2**20:,.0f} MiB (dataloader workers, NCCL): "
                f"remove what fills it (ls -la {shm}; leftovers of earlier jobs) or leave this node out "
                f"(sbatch --exclude={host})"
            )
    size = checkpoint_bytes(cfg)
    if save_folder is not None and size is not None and save_folder.is_dir():
        free = shutil.disk_usage(save_folder).free
        if free < size:
            problems.append(
                f"the checkpoint folder {save_folder} has {_size(free)} free and one checkpoint of this model "
                f"takes about {_size(size)} (parameters x {CHECKPOINT_BYTES_PER_PARAM} bytes: fp32 weights and "
                "two Adam moments): free space there or set SAVE_ROOT to a larger filesystem"
            )
    return problems


def _size(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.0f} MB"


def start_problems(
    yaml: Path,
    plan: NodePlan,
    cfg: DictConfig,
    cwd: Path,
    node_checks: bool = True,
    shm: Path = Path("/dev/shm"),
    batch: bool = True,
) -> list[str]:
    """Problems that would make training fail later, each as one actionable line (empty: all good).

    ``cfg`` is `training_config` of ``yaml``: what llm-foundry will read. ``node_checks`` adds what
    only the node that trains can answer (a writable checkpoint folder with room for a checkpoint,
    free ``/dev/shm``, GPUs for flash attention). ``batch``: whether the job's ranks can share the
    global batch (`config_check.batch_problem`). The model must fit in the GPUs' memory
    (`memory_fit`) wherever the GPUs are known.
    """
    from omegaconf import OmegaConf

    problems: list[str] = []
    tokenizer = str(OmegaConf.select(cfg, "tokenizer.name"))
    vocab_size = OmegaConf.select(cfg, "model.vocab_size")
    for loader, dataset in loader_datasets(cfg):
        if dataset.get("remote"):
            continue
        local, split = cwd / str(dataset.local), str(dataset.split)
        if not (local / split / "index.json").is_file():
            problems.append(
                f"{loader}: dataset split {split!r} not found at {local / split / 'index.json'}: run "
                f"slurm-scripts/1.c4-preprocess.sbatch with DATA_ROOT={local} (SPLITS must include {split}), "
                "or set DATA_ROOT to where it was written"
            )
        elif (facts := dataset_facts(local / split)) is not None:
            seq_len = dataset.get("max_seq_len")
            problems += fit_problems(loader, facts, _int_or_none(seq_len), _int_or_none(vocab_size), tokenizer)
    if _path_like(tokenizer) and not (cwd / tokenizer).expanduser().is_dir():
        problems.append(f"tokenizer folder {tokenizer} does not exist: set TOKENIZER to a tokenizer folder or name")
    local_save: Path | None = None
    created: list[Path] = []  # the checkpoint folders made here: removed again when the run cannot start
    if node_checks and (folder := local_save_folder(cfg, cwd)) is not None:
        created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problems.append(f"cannot create the checkpoint folder {folder}: {err.strerror}; set SAVE_ROOT")
        else:
            if not os.access(folder, os.W_OK):
                problems.append(f"the checkpoint folder {folder} is not writable; set SAVE_ROOT")
            else:
                local_save = folder
    if node_checks:
        problems += space_problems(cfg, plan, local_save, shm)
    if plan.gpus_per_node or not os.environ.get("GPU_TYPE"):
        per_node, nodes = plan.procs_per_node, plan.num_nodes
    else:  # a login node planning a GPU job (docs/training.md, "Will it fit")
        per_node, nodes = planned_gpus(os.environ, 0, plan.num_nodes)
    if batch and (unshared := batch_problem(cfg.get("global_train_batch_size"), per_node * nodes, per_node)):
        problems.append(unshared)
    fits, line = memory_fit(yaml, plan, cfg, os.environ)
    if fits is False:
        problems.append(line)
    attn = OmegaConf.select(cfg, "model.attn_config.attn_impl")
    if node_checks and attn == "flash" and plan.gpus_per_node == 0:
        problems.append(
            f"{yaml.stem} uses flash attention, which needs GPUs, and this node has none "
            "(use mpt-tiny-cpu on CPU nodes, or request GPUs with --gpus-per-node)"
        )
    if problems:  # a run that never starts leaves no empty SAVE_ROOT/<run-name>/checkpoints behind
        for made in reversed(created):
            with contextlib.suppress(OSError):
                made.rmdir()
    return problems


def memory_fit(yaml: Path, plan: NodePlan, cfg: DictConfig, env: Mapping[str, str]) -> tuple[bool | None, str]:
    """Whether the model fits in the GPUs' memory (`test_case.training.memory_fit`) and the line that
    says so; (None, why) when there is nothing to check against (a CPU node, no ``GPU_TYPE``)."""
    target = gpu_memory_to_check(env, plan.gpus_per_node, plan.num_nodes)
    shape = shape_of(cfg)
    if isinstance(target, str):
        return False, target
    if not isinstance(target, GpuMemory) or shape is None:
        return None, "memory fit not checked: no GPU here (set GPU_TYPE, e.g. GPU_TYPE=h100-sxm, to check it)"
    return fit_line(shape, yaml.stem, target.nodes, target.gpus_per_node, target.gpu, target.memory_gib)


def _several_nodes(plan: NodePlan, env: Mapping[str, str]) -> bool:
    return "SLURM_JOB_ID" in env and plan.num_nodes > 1


def share_gpu_counts(plan: NodePlan, env: Mapping[str, str]) -> NodeGpus:
    """This node's GPU counts (`test_case.training.gpus`), written into the start's shared folder on a
    job of several Slurm nodes (``gpus-job<id>``: a run name reused with RUN_NAME never reads an
    earlier job's counts): first thing in the node check, so that no node waits for one that stops
    at another problem."""
    counts = gpus.node_gpus(env.get("SLURMD_NODENAME") or socket.gethostname(), env)
    if _several_nodes(plan, env):
        gpus.record(heartbeat_dir(env, plan) / f"gpus-job{plan.job_id}", counts)
    return counts


def gpu_problems(plan: NodePlan, env: Mapping[str, str], counts: NodeGpus) -> list[str]:
    """What this node's counts say, then whether every node of the job trains on as many GPUs."""
    problems = gpus.node_problems(counts)
    if problems or not _several_nodes(plan, env):
        return problems
    hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST", ""))
    records, missing = gpus.read_records(heartbeat_dir(env, plan) / f"gpus-job{plan.job_id}", hosts)
    return gpus.agreement_problems(records, missing, counts.host)
