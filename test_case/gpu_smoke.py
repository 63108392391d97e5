"""`make gpu-smoke`: what only a GPU can prove, on the machine at hand, in one command of a few minutes.

It runs with the machine's own ``python3`` and torch, from the checkout, with no ``make install``: the
suite's readers need only the standard library, and what needs more (llm-foundry, flash-attn) is a
claim of its own that says which import failed. One line per claim::

    PASS <claim>: <figures>
    FAIL <claim>: <what was found>
    not proven here: <claim>: <why>

Exit code 1 when a claim FAILs, else 0. The claims:

1. ``nvidia-smi``: the preflight's GPU count and health checks (`test_case.preflight.node_checks`)
   read on this driver: no check fails; the fields it rejects are named.
2. ``gpu``: nvidia-smi's name maps to a peak (`test_case.gpu_peaks`) and a memory
   (`test_case.training.memory_fit`) within 6 % of what nvidia-smi reports.
3. ``preflight``: the preflight's workers (`test_case.preflight.fabric`), one per GPU, over NCCL with
   ``NCCL_DEBUG=INFO`` to a file: every GPU's bf16 matmul at least half the datasheet's peak; with two
   GPUs or more, all_reduce's bus bandwidth; NCCL's version read by `test_case.preflight.nccl_network`.
4. ``burn-in``: the preflight's ``--burn-in`` for 20 s on every GPU while ``nvidia-smi -q -d
   PERFORMANCE,CLOCK,TEMPERATURE,POWER`` is sampled: SM clock, power, temperature and clock event
   reasons read under load on every GPU by `test_case.health.clocks`, with its findings.
5. ``flash attention``: an MPT block stack with ALiBi, built by llm-foundry with ``attn_impl: flash``
   (flash-attn's kernel called, counted) gives torch attention's logits within bf16 tolerance.
6. ``training``: mpt-125m for 30 batches on the demo's data, launched by the suite's own script; the
   report's MFU equals Composer's logged ``throughput/device/mfu``, and Composer's peak allocated
   memory is set beside the estimate of `test_case.training.memory_fit`.

``--cpu`` rehearses claim 6 on this machine's CPU with mpt-tiny-cpu (the tests do): the same steps,
with "not proven here" for what a CPU cannot say.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from test_case import REPO_ROOT

Result = tuple[str, str, str]  # ("PASS" | "FAIL" | "not proven here", claim, text)
NOT_PROVEN = "not proven here"
MATMUL_SHARE = 0.5  # of the dense bf16 peak: H100 SXM reaches about 0.8 with the preflight's 8192^3
MEMORY_SLACK = 0.06  # nvidia-smi's total against the datasheet's (H100 80GB: 81559 MiB = 79.6 GiB)
TRAIN_BATCHES = 30
BURN_IN_S = 20  # of the preflight's burn-in: past its warm-up, about 15 samples per GPU


def line(result: Result) -> str:
    status, claim, text = result
    return f"{NOT_PROVEN}: {claim}: {text}" if status == NOT_PROVEN else f"{status} {claim}: {text}"


def _cuda_gpus() -> tuple[int, str]:
    """(GPUs torch sees, why none)."""
    try:
        import torch
    except ImportError as err:
        return 0, f"no torch ({err})"
    if not torch.cuda.is_available():
        return 0, "no GPU (torch.cuda.is_available() is False)"
    return torch.cuda.device_count(), ""


def claim_nvidia_smi() -> Result:
    from test_case.preflight import node_checks

    if not shutil.which("nvidia-smi"):
        return NOT_PROVEN, "nvidia-smi", "nvidia-smi is not on PATH"
    checks, names = node_checks.gpu_checks(os.environ)
    checks |= node_checks.health_checks()
    failed = [f"{n} ({c.detail or c.measured})" for n, c in checks.items() if c.status == "fail"]
    skipped = [f"{n}: {c.detail}" for n, c in checks.items() if c.status == "skip"]
    said = f"{len(names)} GPU(s) ({', '.join(sorted(set(names)))}), {len(checks)} checks"
    if failed:
        return "FAIL", "nvidia-smi", f"{said}; failed: {'; '.join(failed)}"
    return "PASS", "nvidia-smi", said + (f"; not read on this driver: {'; '.join(skipped)}" if skipped else "")


def claim_gpu_known() -> Result:
    from test_case.gpu_peaks import gpu_key, peak_tflops
    from test_case.training.memory_fit import gpu_memory_gib, memory_of_this_node

    found = memory_of_this_node()
    if found is None:
        return NOT_PROVEN, "gpu", "nvidia-smi gave no name and memory.total"
    name, memory = found
    key, peak, table = gpu_key(name), peak_tflops(name, "amp_bf16"), gpu_memory_gib(name)
    said = f"{name!r} -> {key}, bf16 peak {peak.tflops} TFLOP/s, memory {memory:.1f} GiB (table {table})"
    if key is None or peak.tflops is None or table is None:
        return "FAIL", "gpu", f"{said}: add it to test_case/gpu_peaks.py and memory_fit.GPU_MEMORY_GIB"
    if abs(memory - table) > MEMORY_SLACK * table:
        return "FAIL", "gpu", f"{said}: nvidia-smi's memory is not the table's"
    return "PASS", "gpu", said


def run_workers(parts: Path, gpus: int, *args: str) -> list[int]:
    """The preflight's workers on this node's GPUs, one per GPU, as its node task starts them: exit codes."""
    parts.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workers = []
    for rank in range(gpus):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(gpus),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(gpus),
            NCCL_DEBUG="INFO",
            NCCL_DEBUG_SUBSYS="INIT,NET",
            NCCL_DEBUG_FILE=str(parts / f"nccl-{rank}.log"),
        )
        cmd = [sys.executable, "-m", "test_case.preflight", "worker", "--parts", str(parts), "--timeout", "300"]
        workers.append(subprocess.Popen([*cmd, *args], env=env, cwd=REPO_ROOT))
    return [w.wait(timeout=600) for w in workers]


def claim_burn_in(work: Path, gpus: int, why: str, seconds: float = BURN_IN_S) -> Result:
    """``seconds`` of the preflight's burn-in on every GPU while nvidia-smi is sampled: the clocks reader
    (`test_case.health.clocks`) reads this driver's fields under load, on every GPU."""
    if gpus == 0:
        return NOT_PROVEN, "burn-in", why
    from test_case.preflight import burn_in
    from test_case.preflight.expectations import Expectations

    parts = work / "burn-in"
    sampler = burn_in.Sampler().start()
    codes = run_workers(parts, gpus, "--max-bytes", str(1 << 20), "--burn-in", str(seconds))
    samples = sampler.stop()
    if any(codes):
        return "FAIL", "burn-in", f"worker exit codes {codes} (their tracebacks are above)"
    if not sampler.calls:
        return "FAIL", "burn-in", f"nvidia-smi {' '.join(burn_in.clocks.QUERY)} gave no GPU this reader could parse"
    docs = [json.loads((parts / f"rank-{r}.json").read_text()) for r in range(gpus)]
    loads = [burn_in.Load(**d["burn_in"]) for d in docs]
    checks = burn_in.burn_in_checks(loads, [d["matmul_tflops"] for d in docs], samples, Expectations(), "here", True)
    findings = {k: c for k, c in checks.items() if k.startswith("health.clocks[")}
    said = f"{checks['burn_in'].detail}; {checks['health.clocks'].detail}; " + "; ".join(
        f"{k.removeprefix('health.clocks')}: {c.measured}: {c.detail}" for k, c in findings.items()
    )
    missing = [s for s in samples if s.sm_mhz is None or s.power_w is None or s.temp_c is None]
    if missing:
        return "FAIL", "burn-in", f"{said}; fields not read on {missing[0].bus_id}: SM clock, power or temperature"
    if any("did not reach this GPU" in c.detail for c in findings.values()):
        return "FAIL", "burn-in", f"{said}; a GPU was idle under the load"
    return "PASS", "burn-in", said


def claim_preflight(work: Path, gpus: int, why: str) -> Result:
    """The preflight's own workers on this node's GPUs, as its node task starts them."""
    if gpus == 0:
        return NOT_PROVEN, "preflight", why
    from test_case.gpu_peaks import peak_tflops
    from test_case.preflight.nccl_network import read_nccl_debug
    from test_case.training.gpus import nvidia_smi

    parts = work / "preflight"
    codes = run_workers(parts, gpus, "--max-bytes", str(1 << 28))
    if any(codes):
        return "FAIL", "preflight", f"worker exit codes {codes} (their tracebacks are above)"
    docs = [json.loads((parts / f"rank-{r}.json").read_text()) for r in range(gpus)]
    tflops = [d["matmul_tflops"] for d in docs]
    names = nvidia_smi("--query-gpu=name", "--format=csv,noheader")
    peak = peak_tflops(names[0].strip() if names else None, "amp_bf16").tflops
    said = "matmul TFLOP/s " + ", ".join(f"{t:.0f}" for t in tflops)
    said += f" ({min(tflops) / peak:.0%} of the {peak:g} peak at least)" if peak else " (no peak known)"
    busbw = [b for b in docs[0]["bandwidth"] if b["collective"] == "all_reduce" and b["scope"] == "all nodes"]
    if busbw:
        said += (
            f"; all_reduce over {gpus} GPUs: busbw up to {max(p['busbw_gbps'] for p in busbw[0]['points']):.0f} GB/s"
        )
    else:
        said += "; one GPU: no all_reduce bandwidth to measure"
    lines = [x for f in sorted(parts.glob("nccl-*.log")) for x in f.read_text().splitlines()]
    nccl = next(iter(read_nccl_debug(lines).values()), None)
    said += f"; NCCL {nccl.describe()}" if nccl else "; no NCCL init lines read"
    if peak and min(tflops) < MATMUL_SHARE * peak:
        return "FAIL", "preflight", f"{said}: a GPU below {MATMUL_SHARE:.0%} of its peak"
    if nccl is None or nccl.version is None:
        return "FAIL", "preflight", f"{said}: NCCL_DEBUG_FILE held no version line"
    return "PASS", "preflight", said


def claim_flash_alibi(gpus: int, why: str) -> Result:
    """llm-foundry's MPT with ALiBi, flash against torch attention, the same weights."""
    if gpus == 0:
        return NOT_PROVEN, "flash attention", why
    try:
        import torch
        from flash_attn import __version__ as flash_version
        from flash_attn import flash_attn_interface
        from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM
    except Exception as err:  # any import failure is the reason
        return NOT_PROVEN, "flash attention", f"cannot import flash-attn and llm-foundry: {err}"
    calls = {"n": 0}
    for fn in ("flash_attn_func", "flash_attn_varlen_func"):
        original = getattr(flash_attn_interface, fn)

        def counted(*args: object, _original: Callable[..., object] = original, **kwargs: object) -> object:
            calls["n"] += 1
            return _original(*args, **kwargs)

        setattr(flash_attn_interface, fn, counted)
    shape = dict(d_model=512, n_heads=8, n_layers=2, max_seq_len=1024, vocab_size=1024, no_bias=True)
    torch.manual_seed(0)
    models = {
        impl: MPTForCausalLM(MPTConfig(**shape, attn_config={"attn_impl": impl, "alibi": True}))
        .to("cuda", torch.bfloat16)
        .eval()
        for impl in ("flash", "torch")
    }
    models["torch"].load_state_dict(models["flash"].state_dict())
    tokens = torch.randint(0, 1024, (2, 1024), device="cuda")
    with torch.no_grad():
        out = {impl: m(input_ids=tokens).logits.float() for impl, m in models.items()}
    diff = (out["flash"] - out["torch"]).abs().max().item()
    scale = out["torch"].abs().max().item()
    said = f"flash-attn {flash_version}: {calls['n']} kernel call(s); max |flash - torch| {diff:.3g} of {scale:.3g}"
    if calls["n"] == 0:
        return "FAIL", "flash attention", f"{said}: llm-foundry did not call flash-attn"
    if diff > 0.02 * scale:
        return "FAIL", "flash attention", f"{said}: more than 2 % apart"
    return "PASS", "flash attention", said


def _run(cmd: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        return subprocess.run(cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode


def claim_training(work: Path, gpus: int, why: str, cpu: bool) -> Result:
    """The demo's data, mpt-125m (mpt-tiny-cpu with ``cpu``) through the suite's own scripts, the report."""
    if gpus == 0 and not cpu:
        return NOT_PROVEN, "training", why
    missing = [m for m in ("llmfoundry", "composer", "streaming", "omegaconf") if not _importable(m)]
    scripts = Path(sys.executable).parent  # where this Python's console scripts are (composer)
    if missing or not shutil.which("composer", path=f"{scripts}:{os.environ['PATH']}"):
        return NOT_PROVEN, "training", f"not installed: {', '.join(missing) or 'the composer command'}"
    shim = work / "bin"  # the scripts call `python`: this machine may have only python3
    shim.mkdir(parents=True, exist_ok=True)
    if not (shim / "python").exists():
        (shim / "python").symlink_to(sys.executable)
    path = f"{shim}:{scripts}:{os.environ['PATH']}"
    env = dict(os.environ, PATH=path, LOG_DIR=str(work / "logs"), HF_HUB_OFFLINE="1")
    env |= {"DATA_ROOT": str(work / "data"), "TOKENIZER": str(work / "tokenizer"), "SAVE_ROOT": str(work / "ckpt")}
    log = work / "steps.log"
    model, seq = ("mpt-tiny-cpu", 128) if cpu else ("mpt-125m", 2048)
    steps = [
        [sys.executable, "-m", "test_case.demo.assets", "--out", str(work)],
        ["bash", "slurm-scripts/1.c4-preprocess.sbatch"],
        [
            "bash",
            "slurm-scripts/2.train-mpt-manual-distributed.sbatch",
            model,
            f"max_duration={TRAIN_BATCHES}ba",
            f"global_train_batch_size={16 * max(1, gpus)}",
            "eval_interval=1000ba",
        ],
        [sys.executable, "report.py", str(work / "logs"), "--out", str(work / "report")],
    ]
    step_env = env | {"C4_INPUT": str(work / "c4-sample"), "CONCAT_TOKENS": str(seq), "WORKERS": "2"}
    for cmd in steps:
        if (code := _run(cmd, step_env, log)) != 0:
            tail = " | ".join(log.read_text().strip().splitlines()[-3:])
            return "FAIL", "training", f"{' '.join(cmd[:3])} exited {code}: {tail} (all of it: {log})"
    (run,) = json.loads((work / "report" / "report.json").read_text())["runs"]
    said = (
        f"{model}: {run['status']}, {run['last_batch']} batches, {run['tokens_per_sec_per_device']:.0f} tokens/s/device"
    )
    if run["status"] != "completed":
        return "FAIL", "training", said
    if cpu:
        return NOT_PROVEN, "training", f"{said}; MFU and GPU memory: a CPU run has neither (rehearsal)"
    ours, logged = run.get("mfu"), run.get("mfu_logged")
    said += f"; MFU {ours} (report) vs {logged} (Composer)"
    if ours is None or logged is None or abs(ours - logged) > 0.01 * max(abs(logged), 1e-9):
        return "FAIL", "training", f"{said}: not equal"
    return "PASS", "training", said + _memory_note(work, gpus)


def _memory_note(work: Path, gpus: int) -> str:
    """Composer's peak allocated memory beside the estimate, for the closing notes."""
    try:
        from omegaconf import OmegaConf

        from test_case.report.log_reading import parse_log_file
        from test_case.training.memory_fit import estimate, memory_of_this_node, shape_of

        (log,) = sorted((work / "logs").glob("mpt-train_*.out"))
        peak = parse_log_file(log).train_blocks[-1].metrics.get("memory/peak_allocated_mem")
        cfg = OmegaConf.load(REPO_ROOT / "yamls" / "mpt-125m.yaml")
        shape, found = shape_of(cfg), memory_of_this_node()
        if shape is None or found is None or not isinstance(peak, float | int):
            return ""
        guess = estimate(shape, gpus, gpus, found[1])
        return f"; peak allocated {peak:.1f} GB (Composer), estimate {guess.total / 1e9:.1f} GB"
    except Exception as err:  # a note, never a failure
        return f"; memory not compared ({err})"


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m test_case.gpu_smoke", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for its data, logs and report (default: a temporary one)"
    )
    parser.add_argument("--cpu", action="store_true", help="rehearse the training claim on the CPU (mpt-tiny-cpu)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    gpus, why = _cuda_gpus()
    print(f"gpu-smoke: {gpus} GPU(s){' (' + why + ')' if why else ''}; work folder {work}", flush=True)
    claims: list[tuple[str, Callable[[], Result]]] = [
        ("nvidia-smi", claim_nvidia_smi),
        ("gpu", claim_gpu_known),
        ("preflight", lambda: claim_preflight(work, gpus, why)),
        ("burn-in", lambda: claim_burn_in(work, gpus, why)),
        ("flash attention", lambda: claim_flash_alibi(gpus, why)),
        ("training", lambda: claim_training(work, gpus, why, args.cpu)),
    ]
    results = []
    for name, claim in claims:
        try:
            result = claim()
        except Exception as err:  # a claim that breaks is a FAIL with its error, not a crash
            result = ("FAIL", name, f"{type(err).__name__}: {err}")
        results.append(result)
        print(line(result), flush=True)
    failed = sum(1 for r in results if r[0] == "FAIL")
    passed = sum(1 for r in results if r[0] == "PASS")
    print(f"gpu-smoke: {passed} passed, {failed} failed, {len(results) - passed - failed} not proven here")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
