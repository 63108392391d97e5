"""What a healthy node and fabric deliver: published figures per GPU and instance type, with sources.

Absolute expectations exist only where a published figure does; everything else (CPU nodes,
unknown hardware, write speed) is judged against the node's peers: a node more than
``peer_tolerance`` below the median of all nodes fails. Both tolerances and every figure can be
overridden (``--tolerance``, ``--peer-tolerance``, ``--expectations FILE.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from test_case.health import clocks, shm


@dataclass(frozen=True)
class Expected:
    """One published figure, the conditions it was measured under, and where it comes from."""

    value: float
    unit: str
    source: str


# all_reduce bus bandwidth (nccl-tests definition) at large messages.
# Keys: (GPU name as nvidia-smi prints it, scope) with scope "8 gpus in one node" or "2 nodes".
BUSBW: dict[tuple[str, str], Expected] = {
    ("NVIDIA H100 80GB HBM3", "within node"): Expected(
        368.0, "GB/s", "ml-engineering network benchmarks: 8x H100/H200 NVLink, 8-16 GiB, without NVLS"
    ),
    ("NVIDIA H200", "within node"): Expected(
        368.0, "GB/s", "ml-engineering network benchmarks: 8x H100/H200 NVLink, 8-16 GiB, without NVLS"
    ),
    # ml-engineering network/README.md (stas00/ml-engineering@744d01e), nccl-tests on p6-b200.48xlarge,
    # NCCL 2.27.7, 8 GiB: 838.0 GB/s with NVLS, 682.2 without; the without figure, as for H100/H200.
    ("NVIDIA B200", "within node"): Expected(
        682.2, "GB/s", "ml-engineering network benchmarks: 8x B200 (p6-b200) NVLink, 8 GiB, without NVLS"
    ),
    # A GB200 node (compute tray) has 4 GPUs. Azure/AI-benchmarking-guide Azure_Results/ND_GB200_v6_results.md
    # (@2a370be), NCCL 2.25.1, driver 570.133.20: 679.61 GB/s at 8 GB, ring, in-place, 4 GPUs of one VM.
    # The whole NVL72 rack (72 ranks over NVLink) reached 834.57 GB/s at 8 GiB (coreweave/nccl-tests README,
    # NCCL 2.26.2), which a "2 nodes" key cannot express: judged against peers. Drivers name it "NVIDIA
    # GB200" or "HGX GB200" (both recorded in public outputs).
    **{
        (name, "within node"): Expected(
            679.61, "GB/s", "Azure ND GB200 v6 results: 4x GB200 of one node, 8 GB, ring, in-place"
        )
        for name in ("NVIDIA GB200", "HGX GB200")
    },
    # H200 NVL (PCIe cards, 2- or 4-way NVLink bridges) and AMD MI300X/MI325X: no published all_reduce
    # figure was found, so they are judged against their peers only (never against H200 SXM's 368).
    ("p5.48xlarge", "2 nodes"): Expected(
        443.7, "GB/s", "aws-samples/awsome-distributed-training nccl-tests README: 2x p5.48xlarge at 2 GiB"
    ),
    ("p4de.24xlarge", "2 nodes"): Expected(
        78.3, "GB/s", "aws-samples/awsome-distributed-training nccl-tests README: 2x p4de at 2 GiB"
    ),
}

# Dense bf16 matmul TFLOP/s per GPU actually reached (not the datasheet peak).
MATMUL_TFLOPS: dict[str, Expected] = {
    "NVIDIA H100 80GB HBM3": Expected(794.0, "TFLOP/s", "80 % of the 989.5 dense bf16 peak of H100 SXM, as measured"),
    "NVIDIA H200": Expected(794.0, "TFLOP/s", "same GH100 compute as H100 SXM: 80 % of its 989.5 dense bf16 peak"),
    # ml-engineering compute/accelerator/README.md (@744d01e), "Maximum Achievable Matmul FLOPS" table: the
    # best shape's mean of 100 iterations. B200 SXM 1745.0 of 2250 (torch 2.7.1+cu128); GB200 1822.0 of 2500
    # per GPU. Not taken: MI300X 668.4 and MI325X 784.9, measured with TunableOp on, which the preflight's
    # matmul does not turn on (a healthy GPU would fail against them); H200 NVL, not measured there.
    "NVIDIA B200": Expected(1745.0, "TFLOP/s", "ml-engineering MAMF table: B200 SXM, bf16, torch 2.7.1+cu128"),
    **{
        name: Expected(1822.0, "TFLOP/s", "ml-engineering MAMF table: GB200, bf16, per GPU")
        for name in ("NVIDIA GB200", "HGX GB200")
    },
}


@dataclass(frozen=True)
class Expectations:
    """The tables above with their tolerances; `load` applies a user's file on top."""

    busbw: dict[tuple[str, str], Expected] = field(default_factory=lambda: dict(BUSBW))
    matmul_tflops: dict[str, Expected] = field(default_factory=lambda: dict(MATMUL_TFLOPS))
    tolerance: float = 0.15  # below (1 - tolerance) x a published figure fails
    peer_tolerance: float = 0.25  # below (1 - peer_tolerance) x the median of the nodes fails
    write_peer_tolerance: float = 0.5  # the same for the write speed to SAVE_ROOT, a noisier figure
    link_tolerance: float = 0.5  # one pair or group below (1 - this) x the reference is slow: one measurement each
    shm_min_free_fraction: float = shm.MIN_FREE_FRACTION  # /dev/shm: at least this share free
    save_root_min_free_gb: float = 10.0  # SAVE_ROOT: free space for checkpoints
    clock_max_offset_s: float = 1.0  # between any node and node 0
    # the burn-in (--burn-in S): a GPU's sustained TFLOP/s below (1 - this) x its short matmul fails
    burn_in_drop_tolerance: float = 0.25
    # GPU clocks under load (test_case.health.clocks: the rules and the published figures per GPU type)
    min_clock_fraction: float = clocks.Thresholds.min_clock_fraction
    power_cap_fraction: float = clocks.Thresholds.power_cap_fraction
    temp_margin_c: float = clocks.Thresholds.temp_margin_c
    gpu_limits: dict[str, clocks.GpuLimits] = field(default_factory=lambda: dict(clocks.GPU_LIMITS))

    def clock_thresholds(self) -> clocks.Thresholds:
        return clocks.Thresholds(
            min_clock_fraction=self.min_clock_fraction,
            power_cap_fraction=self.power_cap_fraction,
            temp_margin_c=self.temp_margin_c,
            limits=self.gpu_limits,
        )

    def busbw_for(self, gpu: str | None, instance: str | None, scope: str) -> Expected | None:
        for key in ((instance or "", scope), (gpu or "", scope)):
            if key in self.busbw:
                return self.busbw[key]
        return None


def load(path: Path | None, tolerance: float | None = None, peer_tolerance: float | None = None) -> Expectations:
    """Defaults, then a JSON file of overrides::

    {"busbw": [{"key": ["p5.48xlarge", "2 nodes"], "value": 430, "source": "our acceptance test"}],
     "matmul_tflops": [{"key": "NVIDIA H100 80GB HBM3", "value": 700, "source": "..."}],
     "gpu_limits": [{"key": "NVIDIA H100 80GB HBM3", "max_sm_mhz": 1980, "power_w": 700, "source": "..."}],
     "shm_min_free_fraction": 0.3, "save_root_min_free_gb": 100, "clock_max_offset_s": 0.5}
    """
    exp = Expectations()
    if path is not None:
        doc = json.loads(path.read_text())
        busbw = dict(exp.busbw)
        for item in doc.pop("busbw", []):
            busbw[(item["key"][0], item["key"][1])] = Expected(
                float(item["value"]), "GB/s", item.get("source", str(path))
            )
        matmul = dict(exp.matmul_tflops)
        for item in doc.pop("matmul_tflops", []):
            matmul[item["key"]] = Expected(float(item["value"]), "TFLOP/s", item.get("source", str(path)))
        limits = dict(exp.gpu_limits)
        for item in doc.pop("gpu_limits", []):
            limits[item["key"]] = clocks.GpuLimits(
                item.get("max_sm_mhz"), item.get("power_w"), item.get("source", str(path))
            )
        exp = replace(
            exp, busbw=busbw, matmul_tflops=matmul, gpu_limits=limits, **{k: float(v) for k, v in doc.items()}
        )
    if tolerance is not None:
        exp = replace(exp, tolerance=tolerance)
    if peer_tolerance is not None:
        exp = replace(exp, peer_tolerance=peer_tolerance)
    return exp
