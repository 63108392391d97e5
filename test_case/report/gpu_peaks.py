"""Peak dense tensor throughput per GPU, the denominator of MFU, and how GPU names map to it.

Values are TFLOP/s per GPU without sparsity: NVIDIA's datasheets print tensor-core figures "with
sparsity", which are twice the dense rate; we halve them as Composer's SpeedMonitor does.

| key       | GPU                          | tf32  | bf16 / fp16 | fp8    | source                         |
|-----------|------------------------------|-------|-------------|--------|--------------------------------|
| h100-sxm  | H100 SXM5 80 GB (HBM3)       | 494.5 | 989.5       | 1979.0 | H100 datasheet                 |
| h100-pcie | H100 PCIe 80 GB (HBM2e)      | 378.0 | 756.5       | 1513.0 | H100 datasheet                 |
| h100-nvl  | H100 NVL 94 GB, per GPU      | 417.5 | 835.5       | 1670.5 | H100 datasheet (NVL column)    |
| h200      | H200 SXM 141 GB              | 494.5 | 989.5       | 1979.0 | H200 datasheet (H100 SXM core) |
| a100-80gb | A100 80 GB (SXM or PCIe)     | 156.0 | 312.0       | -      | A100 datasheet                 |
| a100-40gb | A100 40 GB (SXM or PCIe)     | 156.0 | 312.0       | -      | A100 datasheet                 |

Composer knows h100-sxm, h100-pcie, h200 and a100 with the same numbers and no H100 NVL (it then
logs no MFU). Precision names are Composer's: ``amp_bf16``, ``amp_fp16``, ``amp_fp8``, ``fp32``
(tf32 tensor cores are used for fp32 matmuls only when enabled, so fp32 maps to the tf32 peak).
"""

from __future__ import annotations

from dataclasses import dataclass

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h100-sxm": {"tf32": 494.5, "bf16": 989.5, "fp8": 1979.0},
    "h100-pcie": {"tf32": 378.0, "bf16": 756.5, "fp8": 1513.0},
    "h100-nvl": {"tf32": 417.5, "bf16": 835.5, "fp8": 1670.5},
    "h200": {"tf32": 494.5, "bf16": 989.5, "fp8": 1979.0},
    "a100-80gb": {"tf32": 156.0, "bf16": 312.0},
    "a100-40gb": {"tf32": 156.0, "bf16": 312.0},
}
PRECISION_CLASS = {
    "amp_bf16": "bf16",
    "bf16": "bf16",
    "amp_fp16": "bf16",
    "fp16": "bf16",
    "amp_fp8": "fp8",
    "fp8": "fp8",
    "fp32": "tf32",
    "tf32": "tf32",
}
# The reference table (llm-foundry's published benchmarks) names GPUs by memory size.
BASELINE_NAME = {"h100-sxm": "h100-80gb", "a100-80gb": "a100-80gb", "a100-40gb": "a100-40gb"}


@dataclass(frozen=True)
class Peak:
    """A peak throughput, or why there is none."""

    tflops: float | None
    gpu: str | None
    reason: str = ""


def gpu_key(name: str) -> str | None:
    """Map an ``nvidia-smi`` / torch device name (or one of our keys) to a table key."""
    n = name.lower().replace("nvidia", "").strip()
    if n in PEAK_TFLOPS:
        return n
    if "h200" in n:
        return "h200"
    if "h100" in n:
        if "nvl" in n:
            return "h100-nvl"
        if "pcie" in n or "hbm2e" in n:
            return "h100-pcie"
        return "h100-sxm"  # "H100 80GB HBM3", "H100-SXM5-80GB"
    if "a100" in n:
        return "a100-40gb" if "40gb" in n.replace(" ", "") else "a100-80gb"
    return None


def peak_tflops(gpu: str | None, precision: str | None) -> Peak:
    """Peak TFLOP/s per GPU for ``gpu`` at ``precision``; ``tflops`` is None with a reason when unknown."""
    if not gpu:
        return Peak(None, None, "GPU type unknown: pass --gpu NAME or --peak-tflops X")
    key = gpu_key(gpu)
    if key is None:
        known = ", ".join(PEAK_TFLOPS)
        return Peak(None, None, f"no peak known for GPU {gpu!r} (known: {known}); pass --peak-tflops X")
    cls = PRECISION_CLASS.get((precision or "amp_bf16").lower())
    if cls is None or cls not in PEAK_TFLOPS[key]:
        return Peak(None, key, f"no {precision} peak for {key}; pass --peak-tflops X")
    return Peak(PEAK_TFLOPS[key][cls], key)
