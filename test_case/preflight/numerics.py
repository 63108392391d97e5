"""Numerical agreement: every device computes the same seeded workloads, and a device whose numbers
differ from its peers' is named (silent data corruption, a wrong math library or instruction path).

Each preflight worker (`test_case.preflight.fabric`) runs two workloads on its device, with settings
it pins itself: one thread on a CPU, deterministic algorithms, no TF32, cuBLAS's deterministic
workspace (``CUBLAS_WORKSPACE_CONFIG``), inputs drawn from a seeded CPU generator and then moved to
the device, so that no device's own random generator is involved:

* ``matmul_chain``: 8 matmuls of 256x256, each followed by tanh (bf16 on a GPU, fp32 on a CPU);
* ``training_step``: one forward, backward and AdamW step of a 2-layer MPT-shaped decoder (pre-LN
  blocks, causal attention through ``scaled_dot_product_attention``, a 4x GELU MLP, tied embeddings,
  no biases), in plain torch so that the preflight does not pay llm-foundry's import (about 10 s per
  worker); fp32 on both kinds of device.

The result of each is its bytes' SHA-256 (``digest``) and its sum (``checksum``, shown beside a
disagreement to say how large it is). The verdict (`agreement_checks`) compares devices of one kind
only: same device model, torch and CUDA versions, where determinism holds and results must agree bit
for bit. Within a kind the most common digest is the reference; a device with another one fails. With
no most common digest (two devices, one each) nothing can be named and every device of the kind fails
with that said. What cannot be pinned from inside the process is recorded with the result: torch's
CPU instruction path (``ATEN_CPU_CAPABILITY`` and the CPU decide it at start-up).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from typing import Any

from test_case.preflight.records import Check, DeviceNumerics, NumericsResult

WORKLOADS = ("matmul_chain", "training_step")
SEED = 20240917
CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's documented setting for reproducible results


def pin_environment() -> None:
    """What must be set before the first CUDA call: cuBLAS's deterministic workspace."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else "unknown"."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _digest(tensor: Any) -> NumericsResult:
    data = tensor.detach().float().cpu().contiguous()
    return NumericsResult("", hashlib.sha256(data.numpy().tobytes()).hexdigest(), float(data.double().sum()))


def matmul_chain(device: Any) -> Any:
    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(256, 256, generator=g).to(device, dtype)
    for _ in range(8):
        w = (torch.randn(256, 256, generator=g) / 16).to(device, dtype)
        x = torch.tanh(x @ w)
    return x


def training_step(device: Any) -> Any:
    """The parameters after one AdamW step of a tiny MPT-shaped decoder, concatenated, with the loss."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    vocab, d, heads, layers, seq, batch = 512, 64, 4, 2, 32, 4

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
            self.qkv, self.out = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(self.ln1(x)).view(batch, seq, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.transpose(1, 2).reshape(batch, seq, d))
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    torch.manual_seed(SEED)  # the parameters' initialisation runs on the CPU, then moves
    embed, blocks, norm = nn.Embedding(vocab, d), nn.ModuleList(Block() for _ in range(layers)), nn.LayerNorm(d)
    model = nn.ModuleDict({"embed": embed, "blocks": blocks, "norm": norm}).to(device)
    g = torch.Generator().manual_seed(SEED + 1)
    tokens = torch.randint(0, vocab, (batch, seq + 1), generator=g).to(device)
    h = embed(tokens[:, :-1])
    for block in blocks:
        h = block(h)
    logits = norm(h) @ embed.weight.T
    loss = F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
    loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False).step()
    return torch.cat([loss.detach().reshape(1), *(p.detach().reshape(-1) for p in model.parameters())])


def measure(device: Any, host: str, rank: int) -> DeviceNumerics:
    """Both workloads on ``device`` with every setting pinned, restored afterwards."""
    import torch

    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"CPU {cpu_model()}"
    kind = f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        results = []
        for workload, run in (("matmul_chain", matmul_chain), ("training_step", training_step)):
            result = _digest(run(device))
            result.workload = workload
            results.append(result)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    capability = torch.backends.cpu.get_cpu_capability()
    return DeviceNumerics(host, rank, str(device), kind, capability, results)


def _where(d: DeviceNumerics) -> str:
    return f"rank {d.rank} ({d.device}, CPU path {d.cpu_capability})"


def agreement_checks(devices: list[DeviceNumerics], drain: str) -> dict[str, Check]:
    """One ``numerics`` check per host with a device: it fails, naming the ranks, when one of the
    host's devices disagrees with its kind. ``drain`` is the drain command's format (``{node}``)."""
    kinds: dict[str, list[DeviceNumerics]] = {}
    for d in devices:
        kinds.setdefault(d.kind, []).append(d)
    compared: dict[str, list[str]] = {}  # host: what its devices were compared with
    wrong: dict[str, list[tuple[DeviceNumerics, str]]] = {}  # host: (device, why)
    for kind, members in kinds.items():
        for d in members:
            others = len(members) - 1
            compared.setdefault(d.host, []).append(
                f"{d.device} against {others} other device(s) of its kind ({kind})"
                if others
                else f"{d.device}: only device of its kind ({kind}), nothing to compare with"
            )
        if len(members) < 2:
            continue
        for workload in WORKLOADS:
            found = {d.rank: r for d in members for r in d.results if r.workload == workload}
            counts = Counter(r.digest for r in found.values()).most_common()
            if len(counts) < 2:
                continue
            reference, most = counts[0]
            tie = most == counts[1][1]
            ref_sum = next(r.checksum for r in found.values() if r.digest == reference)
            for d in members:
                mine = found.get(d.rank)
                if mine is None or (mine.digest == reference and not tie):
                    continue
                why = (
                    f"{workload}: {len(counts)} different results among the {len(members)} devices of its kind "
                    "and none is the most common, so no device can be named"
                    if tie
                    else f"{workload} sha256 {mine.digest[:16]} where {most} of the {len(members)} devices of its "
                    f"kind have {reference[:16]} (checksum {mine.checksum!r} against {ref_sum!r})"
                )
                wrong.setdefault(d.host, []).append((d, why))
    checks: dict[str, Check] = {}
    for host, lines in compared.items():
        detail = f"{', '.join(WORKLOADS)} bit for bit: " + "; ".join(lines)
        bad = wrong.get(host, [])
        if not bad:
            checks[host] = Check("pass", "agrees", "bit for bit", "", detail)
            continue
        checks[host] = Check(
            "fail",
            "differs: " + ", ".join(sorted({f"rank {d.rank}" for d, _ in bad})),
            "bit for bit",
            "",
            detail,
            "a device computes other numbers than its peers from the same inputs and software (a faulty GPU, "
            "other math libraries or CPU path): rerun the preflight; if it repeats, " + drain.format(node=host),
            "drain",
            "; ".join(f"{_where(d)}: {why}" for d, why in bad),
        )
    return checks
