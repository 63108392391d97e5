"""Will a training config fit in each GPU's memory? The estimate behind ``launch check`` and the
acceptance sweep's plan (docs/training.md, "Will it fit").

Per GPU, for an MPT trained by Composer's FSDP (one FSDP unit per MPT block, as llm-foundry wraps it),
in bytes, with P parameters, L blocks of d_model h, microbatch b, sequence s, vocabulary V:

* model state, sharded over the GPUs that share it (all of them for FULL_SHARD and SHARD_GRAD_OP,
  one node's for HYBRID_SHARD, none for NO_SHARD): P x (4 + 4 + optimizer). FSDP keeps the sharded
  parameters and their gradients in the model's dtype (fp32: llm-foundry builds the model in fp32
  whatever ``mixed_precision`` says); AdamW keeps two fp32 moments (8 bytes), Lion one (4).
* gathered parameters: FSDP all-gathers one unit at a time in ``param_dtype`` (bf16 for ``amp_bf16``
  with mixed precision DEFAULT or PURE, fp32 for FULL: Composer 0.32.1 ``get_mixed_precision``),
  and prefetches the next: two blocks' parameters, plus one block's unsharded gradients in
  ``reduce_dtype`` (fp32 for DEFAULT) before the reduce-scatter, plus the root unit (the embedding,
  not resharded between forward and backward). SHARD_GRAD_OP keeps every gathered parameter from
  the forward to the backward: P x param_dtype instead of two blocks.
* activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", section 4.1: 34 bytes x s b h per layer in 16 bits with a 4x MLP; flash attention stores
  no s x s scores, so their term is left out): 34 s b h x L without activation checkpointing; with it,
  each block keeps only its input (2 s b h) and one block is recomputed at a time (+ 34 s b h).
  Doubled in fp32.
* logits and the loss: b s V x 10 bytes (the bf16 logits, the fp32 copy cross-entropy makes, its
  fp32 gradient); 4 bytes with ``fused_crossentropy``.

Usable memory: the GPU's total (``nvidia-smi --query-gpu=memory.total`` on a node; the datasheet's
figure at plan time) less ``RESERVE_GIB`` for the CUDA context, NCCL's buffers and the caching
allocator's fragmentation. The estimate is checked against llm-foundry's published sweep: every
configuration it ran (reference/llm-foundry-mpt-benchmarks.csv, 216 rows on A100 40/80 GB and
H100 80 GB) comes out "fits" (tests/test_memory_fit.py), and 70B on 16 GPUs of 80 GB does not
(llm-foundry ran it from 32 GPUs up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from test_case.gpu_peaks import gpu_key

GIB = 1024**3
RESERVE_GIB = 2.0  # CUDA context (~0.5 GiB), NCCL buffers (~1 GiB), allocator fragmentation
# Each GPU's memory in GiB as its datasheet states it (NVIDIA's "80GB" is what nvidia-smi reports
# as 81559 MiB, with 551 MiB reserved: shared/gpu-outputs nvidia-smi_q_h100x8_driver535.183.01.txt).
GPU_MEMORY_GIB: dict[str, float] = {
    "gb200": 186.0,
    "b200": 180.0,
    "h200": 141.0,
    "h200-nvl": 141.0,
    "h100-sxm": 80.0,
    "h100-pcie": 80.0,
    "h100-nvl": 94.0,
    "a100-80gb": 80.0,
    "a100-40gb": 40.0,
    "mi325x": 256.0,
    "mi300x": 192.0,
}
OPTIMIZER_STATE_BYTES = {"adam": 8, "adamw": 8, "decoupled_adamw": 8, "lion": 4, "decoupled_lionw": 4, "sgd": 4}
ACTIVATION_BYTES_PER_SBH = 34  # per layer, 16-bit, 4x MLP, no attention scores (module docstring)


def gpu_memory_gib(gpu: str) -> float | None:
    """Datasheet memory of a GPU named as nvidia-smi, torch or the reference table names it."""
    key = gpu_key(gpu)
    return GPU_MEMORY_GIB.get(key) if key else None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU by part (module docstring), and what the GPU has."""

    model_state: float
    gathered: float
    activations: float
    logits: float
    usable: float  # the GPU's memory less RESERVE_GIB

    @property
    def total(self) -> float:
        return self.model_state + self.gathered + self.activations + self.logits

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def describe(self) -> str:
        """``needs about 88 GiB per GPU (model state 60, gathered 6, ...), 78 GiB usable``."""
        parts = ", ".join(
            f"{name} {value / GIB:.1f}"
            for name, value in (
                ("model state", self.model_state),
                ("gathered parameters", self.gathered),
                ("activations", self.activations),
                ("logits", self.logits),
            )
        )
        return f"needs about {self.total / GIB:.1f} GiB per GPU ({parts}), {self.usable / GIB:.1f} GiB usable"


@dataclass(frozen=True)
class TrainingShape:
    """What of a training config decides its memory (read from llm-foundry's config by `shape_of`)."""

    d_model: int
    n_layers: int
    expansion_ratio: float
    vocab_size: int
    seq_len: int
    microbatch: int
    precision: str = "amp_bf16"
    mixed_precision: str = "DEFAULT"
    sharding: str = "FULL_SHARD"
    activation_checkpointing: bool = False
    optimizer: str = "decoupled_adamw"
    fused_loss: bool = True  # llm-foundry 0.21's default loss_fn: flash-attn's fused cross-entropy
    global_batch: int | None = None  # llm-foundry lowers a microbatch larger than the batch per GPU to it

    @property
    def block_params(self) -> float:
        """Attention (4 h^2) and MLP (2 x expansion x h^2), no biases (MPT's ``no_bias``), two norms."""
        h = self.d_model
        return (4 + 2 * self.expansion_ratio) * h * h + 2 * h

    @property
    def embedding_params(self) -> float:
        return self.vocab_size * self.d_model  # tied with the output projection

    @property
    def params(self) -> float:
        return self.n_layers * self.block_params + self.embedding_params + self.d_model


def shape_of(cfg: Any) -> TrainingShape | None:
    """The memory-relevant part of an llm-foundry training config (a DictConfig or a plain mapping);
    None when it is not an MPT config with the keys the estimate needs."""
    model = _get(cfg, "model") or {}
    fsdp = _get(cfg, "fsdp_config") or {}
    try:
        micro = _get(cfg, "device_train_microbatch_size")
        seq = _get(model, "max_seq_len") or _get(cfg, "max_seq_len")
        shape = TrainingShape(
            d_model=int(_get(model, "d_model")),
            n_layers=int(_get(model, "n_layers")),
            expansion_ratio=float(_get(model, "expansion_ratio") or 4),
            vocab_size=int(_get(model, "vocab_size")),
            seq_len=int(seq),
            microbatch=int(micro) if isinstance(micro, int | str) and str(micro).isdigit() else 1,
            precision=str(_get(cfg, "precision") or "fp32"),
            mixed_precision=str(_get(fsdp, "mixed_precision") or "DEFAULT").upper(),
            sharding=str(_get(fsdp, "sharding_strategy") or "FULL_SHARD").upper(),
            activation_checkpointing=bool(_get(fsdp, "activation_checkpointing")),
            optimizer=str(_get(_get(cfg, "optimizer") or {}, "name") or "decoupled_adamw"),
            fused_loss=str(_get(model, "loss_fn") or "fused_crossentropy") == "fused_crossentropy",
            global_batch=batch if isinstance(batch := _get(cfg, "global_train_batch_size"), int) else None,
        )
    except (TypeError, ValueError):
        return None
    return shape


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    getter = getattr(cfg, "get", None)
    return getter(key) if getter else None


def estimate(shape: TrainingShape, gpus: int, gpus_per_node: int, gpu_memory_gib: float) -> MemoryEstimate:
    """Per-GPU memory of ``shape`` trained on ``gpus`` GPUs, ``gpus_per_node`` to a node."""
    low = shape.precision.lower() not in ("fp32", "tf32")
    param_bytes = 2 if low and shape.mixed_precision in ("DEFAULT", "PURE") else 4
    reduce_bytes = 2 if low and shape.mixed_precision == "PURE" else 4
    sharded_over = {"NO_SHARD": 1, "HYBRID_SHARD": gpus_per_node, "_HYBRID_SHARD_ZERO2": gpus_per_node}.get(
        shape.sharding, gpus
    )
    optimizer = OPTIMIZER_STATE_BYTES.get(shape.optimizer.lower(), 8)
    model_state = shape.params * (4 + 4 + optimizer) / max(1, min(sharded_over, gpus))
    if shape.sharding in ("SHARD_GRAD_OP", "_HYBRID_SHARD_ZERO2", "NO_SHARD"):
        gathered = shape.params * param_bytes
    else:
        gathered = 2 * shape.block_params * param_bytes + shape.embedding_params * param_bytes
    gathered += shape.block_params * reduce_bytes
    micro = shape.microbatch
    if shape.global_batch:  # llm-foundry's calculate_batch_size_info: never more than the batch per GPU
        micro = max(1, min(micro, shape.global_batch // max(1, gpus)))
    sbh = shape.seq_len * micro * shape.d_model
    per_layer = ACTIVATION_BYTES_PER_SBH * sbh * (1 if low else 2)
    if shape.activation_checkpointing:
        activations = shape.n_layers * sbh * (2 if low else 4) + per_layer
    else:
        activations = shape.n_layers * per_layer
    logits = micro * shape.seq_len * shape.vocab_size * (4 if shape.fused_loss else 10)
    usable = (gpu_memory_gib - RESERVE_GIB) * GIB
    return MemoryEstimate(model_state, gathered, activations, logits, usable)


def smallest_fitting_nodes(
    shape: TrainingShape, gpus_per_node: int, gpu_memory_gib: float, most: int = 1024
) -> int | None:
    """The fewest nodes (up to ``most``) on which ``shape`` fits; None when none does (activations
    and logits do not shrink with more GPUs)."""
    for nodes in range(1, most + 1):
        if estimate(shape, nodes * gpus_per_node, gpus_per_node, gpu_memory_gib).fits:
            return nodes
    return None


def largest_fitting_microbatch(shape: TrainingShape, nodes: int, gpus_per_node: int, gpu_memory_gib: float) -> int:
    """The largest ``device_train_microbatch_size`` below the shape's that fits (0: none does)."""
    for micro in range(shape.microbatch - 1, 0, -1):
        if estimate(replace(shape, microbatch=micro), nodes * gpus_per_node, gpus_per_node, gpu_memory_gib).fits:
            return micro
    return 0


NEAR_THE_LIMIT = 0.90  # an estimate above this share of the usable memory is printed as a warning


def fit_line(
    shape: TrainingShape, name: str, nodes: int, gpus_per_node: int, gpu: str, memory_gib: float
) -> tuple[bool, str]:
    """(fits, one line): the estimate against the GPU's memory, and when it does not fit, what does:
    the fewest nodes, a smaller microbatch, activation checkpointing."""
    found = estimate(shape, nodes * gpus_per_node, gpus_per_node, memory_gib)
    where = f"{nodes} node(s) x {gpus_per_node} {gpu} ({memory_gib:g} GiB)"
    if found.fits:
        near = found.total > NEAR_THE_LIMIT * found.usable
        warning = f"; within {100 - 100 * NEAR_THE_LIMIT:.0f} % of the limit: it may run out of memory" if near else ""
        return True, f"{name} on {where} {found.describe()}{warning}"
    fixes = []
    smallest = smallest_fitting_nodes(shape, gpus_per_node, memory_gib)
    if smallest is not None and smallest > nodes:
        fixes.append(f"run it on {smallest} node(s) or more (--nodes={smallest})")
    if micro := largest_fitting_microbatch(shape, nodes, gpus_per_node, memory_gib):
        fixes.append(f"lower the microbatch (device_train_microbatch_size={micro})")
    if not shape.activation_checkpointing:
        fixes.append("turn on fsdp_config.activation_checkpointing=true")
    fix = "; ".join(fixes) or "no node count or microbatch makes it fit: shorten max_seq_len"
    where_to_read = "(docs/training.md, 'Will it fit')"
    return False, f"{name} does not fit in GPU memory on {where}: {found.describe()}: {fix} {where_to_read}"


@dataclass(frozen=True)
class GpuMemory:
    """Whose memory the check compares with: the GPU's name, its memory, GPUs per node, nodes."""

    gpu: str
    memory_gib: float
    gpus_per_node: int
    nodes: int


def memory_of_this_node() -> tuple[str, float] | None:
    """(name, memory in GiB) of this node's first GPU from ``nvidia-smi`` (None: no answer)."""
    from test_case.training.gpus import nvidia_smi

    for line in nvidia_smi("--query-gpu=name,memory.total", "--format=csv,noheader,nounits"):
        name, _, mib = line.rpartition(",")
        try:
            return name.strip(), float(mib) / 1024
        except ValueError:
            continue
    return None


def planned_gpus(env: Mapping[str, str], gpus_here: int, nodes: int) -> tuple[int, int]:
    """(GPUs per node, nodes) the job trains on: this node's GPUs and the job's nodes when it has
    GPUs; else, for a login node planning a job with ``GPU_TYPE``, ``GPUS_PER_NODE`` (default 8) and
    ``NODES`` (default the job's)."""
    if gpus_here > 0:
        return gpus_here, nodes
    return int(env.get("GPUS_PER_NODE") or 8), int(env.get("NODES") or nodes)


def gpu_memory_to_check(env: Mapping[str, str], gpus_here: int, nodes: int) -> GpuMemory | str | None:
    """What to check against: this node's GPUs when it has some; else ``GPU_TYPE`` (`planned_gpus`);
    None on a CPU node with no ``GPU_TYPE``; a string when ``GPU_TYPE`` names no GPU we know."""
    per_node, nodes = planned_gpus(env, gpus_here, nodes)
    if gpus_here > 0 and (found := memory_of_this_node()) is not None:
        return GpuMemory(found[0], found[1], per_node, nodes)
    if gpu := env.get("GPU_TYPE"):
        memory = gpu_memory_gib(gpu)
        if memory is None:
            return f"GPU_TYPE={gpu}: no memory known for it (known: {', '.join(GPU_MEMORY_GIB)})"
        return GpuMemory(gpu, memory, per_node, nodes)
    return None
