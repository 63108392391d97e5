"""What one node can say about itself: GPUs, versions, GPU health, EFA, /dev/shm, SAVE_ROOT, the
dataset and the tokenizer. Each function returns `Check` records keyed by name; nothing here
talks to other nodes (peer comparisons are the verdict's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from test_case.preflight.expectations import Expectations
from test_case.preflight.records import Check, Value
from test_case.training.launch import count_gpus, nvidia_smi

Checks = dict[str, Check]
DRAIN = (
    "drain it (scontrol update nodename={node} state=drain reason=preflight) or leave it out (sbatch --exclude={node})"
)

# nvidia-smi --query-gpu fields for the health checks (older drivers call the last one
# clocks_throttle_reasons.active; both are tried).
HEALTH_FIELDS = (
    "index",
    "name",
    "ecc.errors.uncorrected.volatile.total",
    "remapped_rows.pending",
    "remapped_rows.failure",
    "persistence_mode",
)
THROTTLE_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
# Throttle reasons that mean trouble (nvml's bitmask): HW slowdown, HW thermal, HW power brake, SW thermal.
BAD_THROTTLE_BITS = {
    0x8: "HW slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake",
    0x20: "SW thermal slowdown",
}


def versions() -> dict[str, Value]:
    """Driver, CUDA, NCCL, torch, Composer and llm-foundry versions (compared across nodes)."""
    import torch

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    driver = [d.strip() for d in nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") if d.strip()]
    nccl = None
    if torch.cuda.is_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return {
        "driver": driver[0] if driver else None,
        "cuda": torch.version.cuda,
        "nccl": nccl,
        "torch": torch.__version__,
        "composer": dist("mosaicml"),
        "llm-foundry": dist("llm-foundry"),
    }


def gpu_checks(env: Mapping[str, str]) -> tuple[Checks, list[str]]:
    """GPU count (Slurm's allocation against nvidia-smi) and the GPU names."""
    listed = [line for line in nvidia_smi("-L") if line.startswith("GPU ")]
    names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in listed]
    allocated = count_gpus(env)
    if not listed and allocated == 0:
        return {"gpu_count": Check("pass", 0, 0, "GPUs", "CPU node: no nvidia-smi GPUs and none allocated")}, []
    ok = len(listed) == allocated
    check = Check(
        "pass" if ok else "fail",
        len(listed),
        allocated,
        "GPUs",
        "nvidia-smi -L against Slurm's SLURM_GPUS_ON_NODE",
        ""
        if ok
        else "a GPU is missing or fell off the bus (nvidia-smi -L, dmesg for Xid 79): reboot the node, or " + DRAIN,
    )
    return {"gpu_count": check}, names


def parse_health(lines: list[str], throttle: list[str]) -> Checks:
    """GPU health checks from ``nvidia-smi --query-gpu=HEALTH_FIELDS`` (and the throttle reasons)."""
    checks: Checks = {}
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < len(HEALTH_FIELDS):
            continue
        index, _name, ecc, pending, failure, persistence = cells[: len(HEALTH_FIELDS)]
        gpu = f"gpu{index}"
        if ecc.isdigit():
            checks[f"{gpu}.ecc_uncorrected"] = Check(
                "pass" if int(ecc) == 0 else "fail",
                int(ecc),
                0,
                "errors",
                "volatile uncorrectable ECC errors",
                "reset the GPU (nvidia-smi -r) or reboot, then rerun the preflight; if they return, " + DRAIN,
            )
        for field, value in (("remap_pending", pending), ("remap_failed", failure)):
            if value.lower() in ("yes", "no"):
                bad = value.lower() == "yes"
                checks[f"{gpu}.{field}"] = Check(
                    "fail" if bad else "pass",
                    value,
                    "No",
                    "",
                    "row remapping (nvidia-smi -q -d ROW_REMAPPER)",
                    (
                        "reboot to apply the pending remap"
                        if field == "remap_pending"
                        else "the GPU needs replacing: " + DRAIN
                    )
                    if bad
                    else "",
                )
        if persistence in ("Enabled", "Disabled"):
            checks[f"{gpu}.persistence"] = Check(
                "pass" if persistence == "Enabled" else "fail",
                persistence,
                "Enabled",
                "",
                "persistence mode",
                "" if persistence == "Enabled" else "enable it (nvidia-smi -pm 1, or the nvidia-persistenced service)",
            )
        if i < len(throttle) and throttle[i].strip().startswith("0x"):
            mask = int(throttle[i].strip(), 16)
            reasons = [name for bit, name in BAD_THROTTLE_BITS.items() if mask & bit]
            bad = bool(reasons)
            checks[f"{gpu}.throttle"] = Check(
                "fail" if bad else "pass",
                ", ".join(reasons) or throttle[i].strip(),
                "no HW/thermal slowdown",
                "",
                "clocks event reasons (nvidia-smi -q -d PERFORMANCE)",
                "check cooling and power of the node, then " + DRAIN if bad else "",
            )
    return checks


def health_checks() -> Checks:
    """ECC, row remapping, persistence mode and throttle reasons of every GPU (none without nvidia-smi)."""
    lines = nvidia_smi(f"--query-gpu={','.join(HEALTH_FIELDS)}", "--format=csv,noheader")
    throttle: list[str] = []
    for field in THROTTLE_FIELDS:
        throttle = nvidia_smi(f"--query-gpu={field}", "--format=csv,noheader")
        if throttle:
            break
    return parse_health(lines, throttle)


def efa_checks(env: Mapping[str, str], gpus: int) -> Checks:
    """EFA devices (``fi_info -p efa``) when NCCL is to use them: GPU nodes with FI_PROVIDER=efa."""
    if gpus == 0 or env.get("FI_PROVIDER") != "efa":
        return {
            "efa": Check("skip", None, None, "devices", "CPU node or FI_PROVIDER is not efa: NCCL does not use EFA")
        }
    if not shutil.which("fi_info"):
        return {
            "efa": Check("fail", None, ">= 1", "devices", "fi_info not found", "run in the suite's image (IMAGE=...)")
        }
    out = subprocess.run(["fi_info", "-p", "efa", "-t", "FI_EP_RDM"], capture_output=True, text=True, timeout=30)
    devices = {line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.strip().startswith("domain:")}
    return {
        "efa": Check(
            "pass" if devices else "fail",
            len(devices),
            ">= 1",
            "devices",
            "fi_info -p efa -t FI_EP_RDM",
            "" if devices else "no EFA device: check the instance's network interfaces and the EFA driver, or " + DRAIN,
        )
    }


def shm_checks(exp: Expectations, shm: Path = Path("/dev/shm")) -> Checks:
    """Size and use of /dev/shm (dataloader workers and NCCL put their shared memory there)."""
    usage = shutil.disk_usage(shm)
    free = usage.free / usage.total if usage.total else 0.0
    ok = free >= exp.shm_min_free_fraction
    return {
        "shm_free": Check(
            "pass" if ok else "fail",
            round(free, 3),
            f">= {exp.shm_min_free_fraction}",
            "fraction free",
            f"{shm}: {usage.free / 2**30:.2f} of {usage.total / 2**30:.2f} GiB free",
            "" if ok else f"remove what fills {shm} (leftover shared memory of earlier jobs: ls -la {shm}) or reboot",
        )
    }


def save_root_checks(save_root: Path, exp: Expectations, write_mb: int = 64) -> Checks:
    """Free space on SAVE_ROOT and its write speed (a file of ``write_mb`` MiB written and fsynced)."""
    try:
        save_root.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(save_root)
        probe = save_root / f".preflight-{os.uname().nodename}-{os.getpid()}"
        block = os.urandom(1 << 20)
        start = time.perf_counter()
        with probe.open("wb") as fh:
            for _ in range(write_mb):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        elapsed = time.perf_counter() - start
        probe.unlink()
    except OSError as err:
        return {
            "save_root_write": Check(
                "fail", str(err.strerror), "writable", "", str(save_root), "set SAVE_ROOT to a writable shared folder"
            )
        }
    free_gb = usage.free / 1e9
    ok = free_gb >= exp.save_root_min_free_gb
    return {
        "save_root_free": Check(
            "pass" if ok else "fail",
            round(free_gb, 1),
            f">= {exp.save_root_min_free_gb}",
            "GB",
            str(save_root),
            ""
            if ok
            else f"free space on {save_root} or set SAVE_ROOT elsewhere (a checkpoint must fit, several for resume)",
        ),
        # judged against the other nodes by the verdict
        "save_root_write": Check(
            "pass", round(write_mb * 1.048576 / elapsed, 1), None, "MB/s", f"{write_mb} MiB written and fsynced"
        ),
    }


def dataset_checks(data_root: Path, splits: list[str]) -> Checks:
    """Each split under DATA_ROOT: its index readable and every shard it lists present at its size."""
    checks: Checks = {}
    for split in splits:
        index = data_root / split / "index.json"
        name = f"dataset.{split}"
        action = f"run slurm-scripts/1.c4-preprocess.sbatch with DATA_ROOT={data_root} SPLITS={split}, or fix DATA_ROOT"
        try:
            shards = json.loads(index.read_text())["shards"]
        except (OSError, ValueError, KeyError) as err:
            checks[name] = Check("fail", f"unreadable: {err}", "index.json readable", "", str(index), action)
            continue
        missing = []
        for shard in shards:
            data = shard.get("zip_data") or shard["raw_data"]
            path = data_root / split / data["basename"]
            if not path.is_file() or path.stat().st_size != data["bytes"]:
                missing.append(data["basename"])
        samples = sum(s["samples"] for s in shards)
        checks[name] = Check(
            "pass" if not missing else "fail",
            f"{len(shards) - len(missing)}/{len(shards)} shards, {samples:,} samples",
            f"{len(shards)}/{len(shards)} shards",
            "",
            str(index) + (f"; missing or wrong size: {', '.join(missing[:3])}" if missing else ""),
            "" if not missing else action,
        )
    return checks


def tokenizer_checks(tokenizer: str) -> Checks:
    """The tokenizer loads with the hub off, as on compute nodes without internet."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        return {
            "tokenizer": Check(
                "fail",
                f"not loadable: {first}",
                "loads offline",
                "",
                tokenizer,
                "download it where the nodes can read it (huggingface-cli download NAME --local-dir DIR) "
                "and set TOKENIZER=DIR",
            )
        }
    return {"tokenizer": Check("pass", f"{len(tok):,} tokens", "loads offline", "", tokenizer)}
