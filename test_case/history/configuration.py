"""What makes two runs comparable: the published gate's columns (GPU, model, GPU count, sequence length,
precision, microbatch, activation checkpointing, FSDP sharding and mixed precision; see
`test_case.report.compare.compare_to_baseline`) and the global batch. The one definition the history's
model series (`trends.model_series`) and the cluster's own baseline (`baseline`) group runs by.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from test_case.gpu_peaks import BASELINE_NAME

# report.json's run fields, in the order `describe` names them
FIELDS = (
    "device_type",
    "model",
    "world_size",
    "max_seq_len",
    "global_batch_size",
    "precision",
    "microbatch",
    "activation_checkpointing",
    "fsdp_sharding",
    "fsdp_mixed_precision",
)
NEEDED = FIELDS[:5]  # without these a run is compared with nothing


def key(run: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The run's configuration (its GPU by the published table's name), or None where a needed field is
    missing."""
    device = run.get("device_type") or run.get("gpu")  # report.json before schema 2 named it gpu
    values = {name: run.get(name) for name in FIELDS} | {"device_type": device}
    if any(values[name] is None for name in NEEDED):
        return None
    values["device_type"] = BASELINE_NAME.get(str(device), str(device))
    values["activation_checkpointing"] = bool(values["activation_checkpointing"])
    return tuple(values[name] for name in FIELDS)


def describe(run: Mapping[str, Any]) -> str | None:
    """`key` as one line (and nothing more), e.g. ``mpt-7b on 16 h100-80gb, amp_bf16, seq 2048, batch 256,
    microbatch 8, activation checkpointing off, FSDP FULL_SHARD PURE``; None as `key`."""
    found = key(run)
    if found is None:
        return None
    gpu, model, world, seq, batch, precision, micro, ckpt, sharding, mixed = found
    fsdp = " ".join(str(v) for v in (sharding, mixed) if v) or "none"
    return (
        f"{model} on {world} {gpu}, {precision or '?'}, seq {seq}, batch {batch}, microbatch "
        f"{micro if micro is not None else '?'}, activation checkpointing {'on' if ckpt else 'off'}, FSDP {fsdp}"
    )
