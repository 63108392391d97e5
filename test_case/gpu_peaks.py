"""Peak dense throughput per GPU, the denominator of MFU, and how GPU names map to it.

Values are TFLOP/s per GPU without sparsity. NVIDIA's datasheets print tensor-core figures "with
sparsity", twice the dense rate: we halve them, as Composer's SpeedMonitor does. AMD prints dense
figures first: taken as printed. ``fp32`` is the non-tensor FP32 rate, the one Composer divides by
for ``precision: fp32`` (its ``GPU_AVAILABLE_FLOPS``, composer 0.32.1); ``tf32`` is the TF32 tensor rate.

| key       | GPU                           | fp32  | tf32   | bf16/fp16 | fp8    | source                            |
|-----------|-------------------------------|-------|--------|-----------|--------|-----------------------------------|
| gb200     | GB200 (NVL72), per GPU        | 80.0  | 1250.0 | 2500.0    | 5000.0 | GB200 NVL72 page: rack / 72       |
| b200      | B200 (HGX/DGX B200, 1000 W)   | 75.0  | 1100.0 | 2250.0    | 4500.0 | Blackwell datasheet, HGX B200     |
| h200      | H200 SXM 141 GB               | 67.0  | 494.5  | 989.5     | 1979.0 | H200 datasheet (SXM column)       |
| h200-nvl  | H200 NVL 141 GB (PCIe, 600 W) | 60.0  | 417.5  | 835.5     | 1670.5 | H200 datasheet (NVL column)       |
| h100-sxm  | H100 SXM5 80 GB (HBM3)        | 67.0  | 494.5  | 989.5     | 1979.0 | H100 datasheet                    |
| h100-pcie | H100 PCIe 80 GB (HBM2e)       | 51.0  | 378.0  | 756.5     | 1513.0 | H100 datasheet                    |
| h100-nvl  | H100 NVL 94 GB, per GPU       | 60.0  | 417.5  | 835.5     | 1670.5 | H100 datasheet (NVL column)       |
| a100-80gb | A100 80 GB (SXM or PCIe)      | 19.5  | 156.0  | 312.0     | -      | A100 datasheet                    |
| a100-40gb | A100 40 GB (SXM or PCIe)      | 19.5  | 156.0  | 312.0     | -      | A100 datasheet                    |
| mi325x    | AMD Instinct MI325X           | 163.4 | 653.7  | 1307.4    | 2614.9 | MI325X data sheet (dense)         |
| mi300x    | AMD Instinct MI300X           | 163.4 | 653.7  | 1307.4    | 2614.9 | MI300X data sheet; ROCm MI300 doc |

Sources: https://www.nvidia.com/en-us/data-center/gb200-nvl72/ ("Dense is one-half sparse spec
shown"); the NVIDIA Blackwell datasheet (https://nvdam.widen.net/s/wwnsxrhm2w/blackwell-datasheet-3384703,
"All Tensor Core numbers except FP64 with sparsity"; the HGX page's 8-GPU totals / 8 agree);
https://www.nvidia.com/en-us/data-center/h200/ (SXM and NVL columns); the H100 and A100 datasheets;
AMD's MI300X and MI325X data sheets (amd.com instinct-tech-docs) and ROCm's "MI300 series
microarchitecture". Device names as printed: "NVIDIA B200", "NVIDIA GB200", "NVIDIA H200 NVL",
"AMD Instinct MI300X" (torch on ROCm; "... VF" in cloud VMs).

Composer 0.32.1 knows h100-sxm, h100-pcie, h200 and a100 with the same numbers; it has no B200,
GB200, H100 NVL or AMD entry (it then logs no MFU), and takes an "H200 NVL" for an H200 SXM, so its
logged MFU of an H200 NVL is 15 % lower than ours. Precision names are Composer's: ``amp_bf16``,
``amp_fp16``, ``amp_fp8``, ``fp32``.
"""

from __future__ import annotations

from dataclasses import dataclass

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "gb200": {"fp32": 80.0, "tf32": 1250.0, "bf16": 2500.0, "fp8": 5000.0},
    "b200": {"fp32": 75.0, "tf32": 1100.0, "bf16": 2250.0, "fp8": 4500.0},
    "h200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp8": 1979.0},
    "h200-nvl": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp8": 1670.5},
    "h100-sxm": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp8": 1979.0},
    "h100-pcie": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp8": 1513.0},
    "h100-nvl": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp8": 1670.5},
    "a100-80gb": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "a100-40gb": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "mi325x": {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp8": 2614.9},
    "mi300x": {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "fp8": 2614.9},
}
PRECISION_CLASS = {
    "amp_bf16": "bf16",
    "bf16": "bf16",
    "amp_fp16": "bf16",
    "fp16": "bf16",
    "amp_fp8": "fp8",
    "fp8": "fp8",
    "fp32": "fp32",  # as Composer counts it: the FP32 rate, not TF32's (7-8x higher on H100)
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
    if "gb200" in n:  # before b200, which it contains
        return "gb200"
    if "b200" in n:
        return "b200"
    if "h200" in n:
        return "h200-nvl" if "nvl" in n else "h200"
    if "h100" in n:
        if "nvl" in n:
            return "h100-nvl"
        if "pcie" in n or "hbm2e" in n:
            return "h100-pcie"
        return "h100-sxm"  # "H100 80GB HBM3", "H100-SXM5-80GB"
    if "a100" in n:
        return "a100-40gb" if "40gb" in n.replace(" ", "") else "a100-80gb"
    if "mi325x" in n:
        return "mi325x"
    if "mi300x" in n:  # "AMD Instinct MI300X", "AMD Instinct MI300X VF" (a cloud VM's)
        return "mi300x"
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
