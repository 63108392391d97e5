"""Launch decisions for `2.train-mpt-manual-distributed.sbatch`: everything that is not Slurm glue.

The sbatch script runs one task per node (``srun --ntasks-per-node=1``); each task calls
``python -m test_case.training.launch node MODEL [overrides...]``, which derives from Slurm's environment

* its node rank (``SLURM_NODEID``) and the node count (``SLURM_JOB_NUM_NODES``),
* the master address: the first host of ``SLURM_JOB_NODELIST``,
* the master port: ``20000 + job_id % 10000`` (below Linux's ephemeral range, same on all nodes),
* processes per node: GPUs on the node (``SLURM_GPUS_ON_NODE``, else ``nvidia-smi -L``), or
  ``CPU_PROCS_PER_NODE`` (default 1) on a node without GPUs (gloo backend),

and replaces itself with Composer's launcher running llm-foundry's training on every rank
(through `test_case.training.foundry_train`, which fixes a multi-node race on shared
filesystems). Outside Slurm the same code runs one node on this machine.

Before launching, every node checks what it needs (`preflight`: dataset splits, tokenizer folder,
checkpoint folder, GPUs for a flash-attention model) and stops with one clear line if something is
missing; node 0 prints the run header (`test_case.run_header`) that the report reads back (inside the container
when there is one, so the versions are those that train) and, for an autoresuming run, puts back in
order a checkpoint folder that a job killed while saving left behind (`test_case.training.checkpoints`)
and, at a start after a requeue, prints why the job restarted (`test_case.training.restarts`). Every
rank beats into `heartbeat_dir` (`test_case.training.heartbeat`), which names a rank that hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from test_case import REPO_ROOT
from test_case.run_header import RunHeader
from test_case.training import gpus
from test_case.training.config_check import batch_problem, override_problems, unknown_key_problems
from test_case.training.dataset_fit import DatasetFacts, dataset_facts, eval_data_overlap, fit_problems
from test_case.training.gpus import NodeGpus, allocated_gpus, nvidia_smi
from test_case.training.heartbeat import DIR_ENV as HEARTBEAT_DIR_ENV
from test_case.training.memory_fit import GpuMemory, fit_line, gpu_memory_to_check, planned_gpus, shape_of
from test_case.training.mixture import MixtureError, load_mixture, mixture_overrides
from test_case.training.shm_cleanup import remove_dead_segments

if TYPE_CHECKING:  # omegaconf is imported where it is used: `header` and `plan` stay light
    from omegaconf import DictConfig


PORT_BASE, PORT_SPAN = 20000, 10000


class LaunchError(RuntimeError):
    """A configuration mistake reported as one clear line."""


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist (``node[1-3,7],gpu-[01-02]-a``) like ``scontrol show hostnames``."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        pieces = re.split(r"(\[[^\]]*\])", item)
        choices: list[list[str]] = []
        for piece in pieces:
            if piece.startswith("["):
                values: list[str] = []
                for rng in piece[1:-1].split(","):
                    lo, _, hi = rng.partition("-")
                    if hi:
                        width = len(lo) if lo.startswith("0") else 0
                        values += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
                    else:
                        values.append(lo)
                choices.append(values)
            elif piece:
                choices.append([piece])
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def master_port(job_id: str | None) -> int:
    """Port of the rendezvous: derived from the Slurm job id, or a free port when not under Slurm.

    Both stay below Linux's ephemeral range (32768-60999): a rank that connects to an ephemeral
    port before the store listens can be given that same port as its own source port and connect
    to itself (TCP simultaneous open), which hangs the rendezvous.
    """
    if job_id and job_id.isdigit():
        return PORT_BASE + int(job_id) % PORT_SPAN
    start = os.getpid() % PORT_SPAN
    for offset in range(PORT_SPAN):
        port = PORT_BASE + (start + offset) % PORT_SPAN
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise LaunchError(f"no free port in {PORT_BASE}-{PORT_BASE + PORT_SPAN - 1}; set MASTER_PORT")


def count_gpus(env: Mapping[str, str]) -> int:
    """GPUs this node gives the job: Slurm's count, else what ``nvidia-smi -L`` lists, else 0."""
    allocated = allocated_gpus(env)
    if allocated is not None:
        return allocated
    return sum(1 for line in nvidia_smi("-L") if line.startswith("GPU "))


def gpu_name() -> str | None:
    """Name of this node's first GPU as ``nvidia-smi`` prints it (None without GPUs)."""
    names = [n.strip() for n in nvidia_smi("--query-gpu=name", "--format=csv,noheader") if n.strip()]
    return names[0] if names else None


@dataclass(frozen=True)
class NodePlan:
    """What one node's task launches."""

    job_id: str
    run_name: str
    node_rank: int
    num_nodes: int
    procs_per_node: int
    gpus_per_node: int
    master_addr: str
    master_port: int
    threads_per_proc: int

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        return self.num_nodes * self.procs_per_node


def plan_node(env: Mapping[str, str], gpus: int | None = None) -> NodePlan:
    """Derive this node's launch from Slurm's environment (or a single local node without it)."""
    gpus = count_gpus(env) if gpus is None else gpus
    job_id = env.get("SLURM_JOB_ID") or env.get("LOCAL_JOB_ID") or "local"
    job_name = env.get("SLURM_JOB_NAME") or "mpt-train"
    if "SLURM_JOB_ID" in env:
        hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST", ""))
        if not hosts:
            raise LaunchError("SLURM_JOB_NODELIST is empty: run this inside an allocation")
        num_nodes = int(env.get("SLURM_JOB_NUM_NODES") or len(hosts))
        node_rank = int(env.get("SLURM_NODEID", "0"))
        addr = env.get("MASTER_ADDR") or hosts[0]
    else:
        num_nodes, node_rank, addr = 1, 0, env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else master_port(env.get("SLURM_JOB_ID"))
    procs = gpus if gpus > 0 else int(env.get("CPU_PROCS_PER_NODE", "1"))
    if procs <= 0:
        raise LaunchError("CPU_PROCS_PER_NODE must be a positive integer")
    cpus = int(env.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
    return NodePlan(
        job_id=job_id,
        run_name=env.get("RUN_NAME") or f"{job_name}-{job_id}",
        node_rank=node_rank,
        num_nodes=num_nodes,
        procs_per_node=procs,
        gpus_per_node=gpus,
        master_addr=addr,
        master_port=port,
        threads_per_proc=max(1, cpus // procs),
    )


def resolve_yaml(model: str) -> Path:
    """``mpt-7b`` -> ``yamls/mpt-7b.yaml``; a path to a yaml is taken as it is."""
    path = Path(model).resolve() if model.endswith((".yaml", ".yml")) else REPO_ROOT / "yamls" / f"{model}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (REPO_ROOT / "yamls").glob("*.yaml")))
        raise LaunchError(f"no yaml for model {model!r} at {path} (known: {known})")
    return path


def config_overrides(
    plan: NodePlan, env: Mapping[str, str], yaml: Path | None = None, user: Sequence[str] = ()
) -> list[str]:
    """OmegaConf dotlist the suite always passes; the user's own overrides come after and win.

    With ``MIXTURE`` set (and the ``yaml``, whose ``eval_loader`` the per-stream eval loaders copy),
    the mixture's streams (`test_case.training.mixture`); a mistake in it raises `MixtureError`."""
    out = [f"variables.run_name={plan.run_name}"]
    for var, key in (("DATA_ROOT", "data_local"), ("TOKENIZER", "tokenizer_name"), ("SAVE_ROOT", "save_root")):
        if env.get(var):
            out.append(f"variables.{key}={env[var]}")
    if yaml is not None:
        out += published_config(plan, env, yaml, user)[0]
    if env.get("MIXTURE") and yaml is not None:
        from omegaconf import OmegaConf

        template = OmegaConf.to_container(OmegaConf.load(yaml), resolve=False).get("eval_loader")  # type: ignore[union-attr]
        out += mixture_overrides(load_mixture(Path(env["MIXTURE"])), template if isinstance(template, dict) else None)
    return out


def published_config(
    plan: NodePlan, env: Mapping[str, str], yaml: Path, user: Sequence[str] = ()
) -> tuple[list[str], str | None]:
    """With ``PUBLISHED_CONFIG=1``: the overrides of llm-foundry's published run of this model, GPU
    (this node's, or ``GPU_TYPE``), world size and sequence length (the run's: the yaml's after the
    ``user`` overrides), and the line that says what was chosen
    (`test_case.published_runs.published_row`); nothing without it."""
    if env.get("PUBLISHED_CONFIG", "0") in ("", "0"):
        return [], None
    from omegaconf import OmegaConf

    from test_case.published_runs import published_line, published_overrides, published_row

    gpu = env.get("GPU_TYPE") or (first_gpu_name() if plan.gpus_per_node else None)
    if gpu is None:
        return [], "PUBLISHED_CONFIG=1: no GPU on this node and no GPU_TYPE: the yaml's configuration runs"
    seq_len = OmegaConf.select(OmegaConf.merge(OmegaConf.load(yaml), OmegaConf.from_dotlist(list(user))), "max_seq_len")
    seq = seq_len if isinstance(seq_len, int) else 0
    per_node, nodes = planned_gpus(env, plan.gpus_per_node, plan.num_nodes)
    row = published_row(yaml.stem, gpu, per_node * nodes, seq)
    return (published_overrides(row) if row else []), published_line(yaml.stem, gpu, per_node * nodes, seq, row)


@functools.cache
def first_gpu_name() -> str | None:
    """`gpu_name`, asked once per process."""
    return gpu_name()


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


def _path_like(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~"))


def training_config(yaml: Path, plan: NodePlan, env: Mapping[str, str], overrides: Sequence[str] = ()) -> DictConfig:
    """The yaml with the launcher's and the user's overrides applied, as llm-foundry will see it."""
    from omegaconf import DictConfig, OmegaConf

    merged = OmegaConf.merge(
        OmegaConf.load(yaml), OmegaConf.from_dotlist([*config_overrides(plan, env, yaml, overrides), *overrides])
    )
    assert isinstance(merged, DictConfig)
    return merged


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


def preflight(
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


def local_save_folder(cfg: DictConfig, cwd: Path) -> Path | None:
    """The run's checkpoint folder when it is on a filesystem here (None: unset, or object storage)."""
    from omegaconf import OmegaConf

    save_folder = OmegaConf.select(cfg, "save_folder")
    if not save_folder or "://" in str(save_folder):
        return None
    return cwd / str(save_folder)


def heartbeat_dir(env: Mapping[str, str], plan: NodePlan) -> Path:
    """Where this start's ranks beat (`test_case.training.heartbeat`): beside the run's checkpoints,
    ``SAVE_ROOT/<run-name>/heartbeats/start<restart count>``, on storage every node shares."""
    root = Path(env.get("SAVE_ROOT") or "checkpoints").absolute()
    return root / plan.run_name / "heartbeats" / f"start{env.get('SLURM_RESTART_COUNT') or 0}"


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


def print_restart_events(plan: NodePlan, env: Mapping[str, str], cfg: DictConfig, cwd: Path) -> None:
    """At a start after a requeue, under Slurm: why the job restarted (`test_case.training.restarts`)."""
    from test_case.training import restarts

    if int(env.get("SLURM_RESTART_COUNT") or 0) == 0 or restarts.FACTS_ENV not in env:
        return
    try:
        lines = restarts.read_log(restarts.job_facts(env[restarts.FACTS_ENV]).get("StdOut"))
    except restarts.RestartError as err:
        print(f"launch: warning: {err}: the log does not say why the job restarted", flush=True)
        return
    events = restarts.restart_event(
        restarts.split_starts(lines, plan.job_id),
        plan.job_id,
        restarts.node_states(env.get(restarts.NODE_STATES_ENV, "")),
        restarts.newest_checkpoint_batch(local_save_folder(cfg, cwd)),
        restarts.now_iso(),
    )
    for event in events:
        if event.kind == "restart":
            print(f"restarts: job {plan.job_id} start {event.start}: {event.cause}", flush=True)
        print(event.line(), flush=True)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def loader_datasets(cfg: DictConfig) -> list[tuple[str, Any]]:
    """(name for messages, dataset config) of every dataset the run reads: the training set, or
    each of its streams, and the eval set or each labelled eval loader."""
    from omegaconf import ListConfig, OmegaConf

    found: list[tuple[str, Any]] = []
    train = OmegaConf.select(cfg, "train_loader.dataset")
    if train is not None and train.get("streams"):
        for name, stream in train.streams.items():
            merged = OmegaConf.merge({"max_seq_len": train.get("max_seq_len")}, stream)
            found.append((f"train_loader stream {name}", merged))
    elif train is not None:
        found.append(("train_loader", train))
    evals = OmegaConf.select(cfg, "eval_loader") or OmegaConf.select(cfg, "eval_loaders")
    for i, loader in enumerate(evals if isinstance(evals, ListConfig) else [evals] if evals else []):
        if loader.get("dataset") is not None:
            label = loader.get("label")
            found.append(
                (f"eval_loader {label}" if label else "eval_loader" if i == 0 else f"eval_loader {i}", loader.dataset)
            )
    return found


def train_dataset_facts(cfg: DictConfig, cwd: Path) -> DatasetFacts | None:
    """What the preprocessing recorded about the training split, or its first stream (for the run header)."""
    datasets = [d for name, d in loader_datasets(cfg) if name.startswith("train_loader")]
    if not datasets or datasets[0].get("remote"):
        return None
    return dataset_facts(cwd / str(datasets[0].local) / str(datasets[0].split))


def prepare_resume(cfg: DictConfig, cwd: Path) -> list[str]:
    """Repair the checkpoint folder a killed job left (`test_case.training.checkpoints`) when the run autoresumes."""
    from omegaconf import OmegaConf

    from test_case.training.checkpoints import repair_save_folder

    save_folder = OmegaConf.select(cfg, "save_folder")
    custom_names = OmegaConf.select(cfg, "save_filename") or OmegaConf.select(cfg, "save_latest_filename")
    if not OmegaConf.select(cfg, "autoresume") or not save_folder or "://" in str(save_folder) or custom_names:
        return []
    return repair_save_folder(cwd / str(save_folder))


def torch_cuda(version_py: Path | None = None) -> str:
    """The CUDA torch was built for, read from its ``torch/version.py`` without importing torch (two
    seconds of every start): ``none`` for a CPU build, ``not installed`` without torch."""
    if version_py is None:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return "not installed"
        version_py = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        found = re.search(r"^cuda(?:: [^=]+)? = '([^']+)'", version_py.read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return found.group(1) if found else "none"


def gpu_driver() -> str | None:
    """The NVIDIA driver version as nvidia-smi prints it (None when it does not answer)."""
    versions = [v.strip() for v in nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") if v.strip()]
    return versions[0] if versions else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def git_commit() -> str:
    """Commit of this checkout, ``-dirty`` when it has local changes; ``unknown`` without git."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_header(
    plan: NodePlan,
    model: str,
    env: Mapping[str, str],
    overrides: list[str],
    data: DatasetFacts | None = None,
    overlap: list[str] | None = None,
) -> RunHeader:
    """Facts of the run, printed once per start at the top of the log and read back by the report."""
    return RunHeader(
        job_id=plan.job_id,
        run_name=plan.run_name,
        model=model,
        nodes=plan.num_nodes,
        nodelist=env.get("SLURM_JOB_NODELIST", socket.gethostname()),
        gpus_per_node=plan.gpus_per_node,
        gpu_name=gpu_name() if plan.gpus_per_node else None,
        procs_per_node=plan.procs_per_node,
        world_size=plan.world_size,
        backend="nccl" if plan.gpus_per_node else "gloo",
        device="gpu" if plan.gpus_per_node else "cpu",
        master=f"{plan.master_addr}:{plan.master_port}",
        restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
        image=env.get("IMAGE") or "none (bare-metal venv)",
        git_commit=git_commit(),
        python=sys.version.split()[0],
        torch=_version("torch"),
        composer=_version("mosaicml"),
        llm_foundry=_version("llm-foundry"),
        streaming=_version("mosaicml-streaming"),
        flash_attn=_version("flash-attn"),
        cuda=torch_cuda(),
        nccl=_version("nvidia-nccl-cu12"),
        driver=gpu_driver() if plan.gpus_per_node else None,
        overrides=" ".join(overrides) or "none",
        mixture=_mixture_line(env),
        eval_data_overlap=None if overlap is None else "; ".join(overlap) or "none",
        dataset_sample_tokens=data.sample_tokens if data else None,
        dataset_tokenizer=data.describe_tokenizer() if data else None,
    )


def _mixture_line(env: Mapping[str, str]) -> str | None:
    """The run header's ``mixture``: each stream's weight, the scheme, the batching and the file."""
    if not env.get("MIXTURE"):
        return None
    try:
        return load_mixture(Path(env["MIXTURE"])).describe()
    except MixtureError as err:
        return f"invalid: {err}"


def print_run_header(
    plan: NodePlan,
    model: str,
    env: Mapping[str, str],
    overrides: list[str],
    data: DatasetFacts | None = None,
    overlap: list[str] | None = None,
) -> None:
    """The run header as ``[run-header] key: value`` lines (`test_case.run_header`)."""
    for line in run_header(plan, model, env, overrides, data, overlap).lines():
        print(line, flush=True)


def checked_config(
    yaml: Path, plan: NodePlan, env: Mapping[str, str], overrides: Sequence[str]
) -> tuple[DictConfig | None, list[str]]:
    """The config llm-foundry will read (`training_config`), or None and the mistakes in the yaml
    and the overrides that llm-foundry would find only once every rank has started
    (`test_case.training.config_check`)."""
    from omegaconf import OmegaConf

    problems = override_problems(OmegaConf.to_container(OmegaConf.load(yaml)), overrides)  # type: ignore[arg-type]
    if problems:
        return None, problems
    merged = training_config(yaml, plan, env, overrides)
    problems = unknown_key_problems(OmegaConf.to_container(merged), yaml.name)  # type: ignore[arg-type]
    return (None if problems else merged), problems


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
        problems = preflight(
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
        print_restart_events(plan, env, cfg, Path.cwd())
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
