"""What an acceptance sweep submits: the decisions behind `slurm-scripts/3.acceptance.sh`.

A sweep is a preflight on the largest node count (unless ``--no-preflight``), then one training
job per (model, node count), each of which starts only if the preflight passed (``afterok``; Slurm
cancels it when the preflight failed, ``--kill-on-invalid-dep=yes``) and, unless ``--parallel``,
after the training job before it has ended (``afterany``), so that no two benchmarks share the
fabric or the machine. Batch sizes:

* ``--weak`` (the default): kept per GPU. The yaml's ``global_train_batch_size`` is the batch at the
  smallest node count; at N nodes it is that times N / smallest (node counts must be multiples of
  the smallest).
* ``--strong``: the yaml's global batch at every node count.

Every training job is passed ``global_train_batch_size`` explicitly, and the manifest records it.

With ``--gpu-type`` the sweep is refused at plan time when a (model, node count) does not fit in the
GPUs' memory (`test_case.training.memory_fit`; GPUs per node from the sbatch options'
``--gpus-per-node`` or ``--gres=gpu:N``, else 8); each job checks again on its own nodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from test_case.acceptance.manifest import JobKind, Scaling
from test_case.published_runs import published_line, published_overrides, published_row
from test_case.training.config_check import batch_problem, override_problems, unknown_key_problems
from test_case.training.memory_fit import GPU_MEMORY_GIB, fit_line, gpu_memory_gib, shape_of
from test_case.training.run_config import resolve_yaml

PREFLIGHT = "slurm-scripts/0.preflight.sbatch"
TRAIN = "slurm-scripts/2.train-mpt-manual-distributed.sbatch"


class PlanError(ValueError):
    """The sweep cannot be planned; the message says what to change."""


@dataclass(frozen=True)
class Submission:
    """One ``sbatch`` of the sweep: its options, script and arguments; dependencies by index."""

    kind: JobKind
    nodes: int
    sbatch_options: list[str]
    script: str
    script_args: list[str] = field(default_factory=list)
    after_ok: int | None = None  # index of the submission that must succeed first
    after_any: int | None = None  # index of the submission that must have ended first
    model: str | None = None
    global_train_batch_size: int | None = None


def parse_list(text: str, what: str) -> list[str]:
    """``a,b,c`` -> its items; an empty item is an error."""
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise PlanError(
            f"--{what} {text!r}: give a comma-separated list, e.g. --{what} "
            + ("1,2,4" if what == "nodes" else "mpt-1b,mpt-7b")
        )
    return items


def parse_nodes(text: str) -> list[int]:
    """``1,2,4`` -> [1, 2, 4], each a positive integer, no repeats, in increasing order."""
    items = parse_list(text, "nodes")
    if not all(t.isdigit() and int(t) > 0 for t in items):
        raise PlanError(f"--nodes {text!r}: node counts are positive integers, e.g. --nodes 1,2,4")
    nodes = [int(t) for t in items]
    if len(set(nodes)) != len(nodes):
        raise PlanError(f"--nodes {text!r}: a node count is given twice")
    return sorted(nodes)


def yaml_global_batch(model: str) -> int:
    """The yaml's ``global_train_batch_size``."""
    try:
        path = resolve_yaml(model)
    except Exception as err:  # LaunchError: no such yaml
        raise PlanError(str(err)) from err
    cfg = OmegaConf.load(path)
    value = cfg.get("global_train_batch_size") if isinstance(cfg, DictConfig) else None
    if not isinstance(value, int) or value < 1:
        raise PlanError(f"{path}: global_train_batch_size must be a positive integer to plan a sweep, not {value!r}")
    return value


def override_mistakes(model: str, overrides: list[str]) -> list[str]:
    """What `launch check` would say of the ``--override``s on this model's yaml before any job
    runs (`test_case.training.config_check`): a mistyped key stops the sweep here, not in every job."""
    raw = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(resolve_yaml(model))))
    if problems := override_problems(raw, overrides):
        return problems
    merged = cast(dict[str, Any], OmegaConf.to_container(OmegaConf.merge(raw, OmegaConf.from_dotlist(overrides))))
    return unknown_key_problems(merged, resolve_yaml(model).name)


def global_batch(base: int, nodes: int, smallest: int, scaling: Scaling) -> int:
    """The global batch at ``nodes`` nodes (module docstring)."""
    if scaling == "strong":
        return base
    if nodes % smallest:
        raise PlanError(
            f"--weak keeps the batch per GPU, so every node count must be a multiple of the smallest ({smallest}); "
            f"{nodes} is not: change --nodes, or use --strong"
        )
    return base * nodes // smallest


def plan_sweep(
    models: list[str],
    nodes: list[int],
    scaling: Scaling = "weak",
    preflight: bool = True,
    parallel: bool = False,
    log_dir: str = "logs",
    sbatch_args: list[str] | None = None,
    overrides: list[str] | None = None,
    published: dict[tuple[str, int], list[str]] | None = None,
    ranks_per_node: int = 1,
) -> list[Submission]:
    """The sweep's submissions, in order: the preflight first, then model by model, node count by
    node count. ``published``: overrides per (model, node count) that come before ``overrides``.
    A global batch that the job's ranks (``ranks_per_node`` a node) cannot share evenly is a
    `PlanError`: llm-foundry would stop every rank of that job."""
    extra = list(sbatch_args or [])
    output = [f"--output={log_dir}/%x_%j.out"]
    subs: list[Submission] = []
    if preflight:
        subs.append(Submission("preflight", nodes[-1], [f"--nodes={nodes[-1]}", *output, *extra], PREFLIGHT))
    previous: int | None = None
    for model in models:
        base = yaml_global_batch(model)
        if mistakes := override_mistakes(model, overrides or []):
            raise PlanError(mistakes[0] if len(mistakes) == 1 else "; ".join(mistakes))
        for n in nodes:
            batch = global_batch(base, n, nodes[0], scaling)
            if problem := batch_problem(batch, n * ranks_per_node, ranks_per_node):
                raise PlanError(f"{model} on {n} node(s): {problem}")
            options = [f"--nodes={n}", *output, *extra]
            chosen = (published or {}).get((model, n), [])
            args = [model, f"global_train_batch_size={batch}", *chosen, *(overrides or [])]
            subs.append(
                Submission(
                    "train",
                    n,
                    options,
                    TRAIN,
                    args,
                    after_ok=0 if preflight else None,
                    after_any=None if parallel else previous,
                    model=model,
                    global_train_batch_size=batch,
                )
            )
            previous = len(subs) - 1
    return subs


def dependency_option(sub: Submission, job_ids: list[str]) -> list[str]:
    """``--dependency=afterok:X,afterany:Y`` and ``--kill-on-invalid-dep=yes`` for ``sub``, given
    the job ids of the submissions before it."""
    parts = []
    if sub.after_ok is not None:
        parts.append(f"afterok:{job_ids[sub.after_ok]}")
    if sub.after_any is not None:
        parts.append(f"afterany:{job_ids[sub.after_any]}")
    return [f"--dependency={','.join(parts)}", "--kill-on-invalid-dep=yes"] if parts else []


@dataclass(frozen=True)
class GpuTarget:
    """The GPUs a sweep is planned for (``--gpu-type`` and the sbatch options' GPUs per node)."""

    gpu: str
    memory_gib: float
    gpus_per_node: int


def gpus_per_node_of(sbatch_args: list[str]) -> int | None:
    """GPUs per node the sweep's sbatch options ask for: ``--gpus-per-node=[type:]N`` or
    ``--gres=gpu[:type]:N`` (also as two words); None when they ask for none."""
    words = " ".join(sbatch_args)
    for pattern in (r"--gpus-per-node[= ](?:\S+:)?(\d+)\b", r"--gres[= ]\S*?\bgpu(?::[^:,\s]+)?:(\d+)\b"):
        if found := re.search(pattern, words):
            return int(found.group(1))
    return None


def gpu_target(gpu: str, sbatch_args: list[str]) -> GpuTarget:
    """``--gpu-type`` and the sbatch options as a `GpuTarget`; an unknown GPU is a `PlanError`."""
    memory = gpu_memory_gib(gpu)
    if memory is None:
        raise PlanError(f"--gpu-type {gpu!r}: no memory known for it; known: {', '.join(GPU_MEMORY_GIB)}")
    return GpuTarget(gpu, memory, gpus_per_node_of(sbatch_args) or 8)


def memory_lines(subs: list[Submission], target: GpuTarget) -> tuple[list[str], list[str]]:
    """(what fits, what does not): one line per training job of the sweep, with its overrides."""
    fit: list[str] = []
    misfit: list[str] = []
    for sub in subs:
        if sub.kind != "train" or sub.model is None:
            continue
        cfg = OmegaConf.merge(OmegaConf.load(resolve_yaml(sub.model)), OmegaConf.from_dotlist(sub.script_args[1:]))
        if (shape := shape_of(cfg)) is None:
            continue
        fits, line = fit_line(shape, sub.model, sub.nodes, target.gpus_per_node, target.gpu, target.memory_gib)
        (fit if fits else misfit).append(line)
    return fit, misfit


def published_configs(
    models: list[str], nodes: list[int], target: GpuTarget, user: Sequence[str] = ()
) -> tuple[dict[tuple[str, int], list[str]], list[str]]:
    """``--published-config``: per (model, node count), the overrides of llm-foundry's published run
    of the same GPU, GPU count and sequence length (the yaml's after the ``user`` overrides;
    `test_case.published_runs.published_row`), and a line per choice."""
    overrides: dict[tuple[str, int], list[str]] = {}
    lines = []
    for model in models:
        merged = OmegaConf.merge(OmegaConf.load(resolve_yaml(model)), OmegaConf.from_dotlist(list(user)))
        seq_len = OmegaConf.select(merged, "max_seq_len")
        for n in nodes:
            gpus = n * target.gpus_per_node
            row = published_row(model, target.gpu, gpus, int(seq_len)) if isinstance(seq_len, int) else None
            overrides[(model, n)] = published_overrides(row) if row else []
            lines.append(published_line(model, target.gpu, gpus, int(seq_len or 0), row))
    return overrides, lines
