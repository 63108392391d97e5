"""What one node can say about itself: GPUs, versions, GPU health, EFA, /dev/shm, SAVE_ROOT, the
dataset and the tokenizer. Each function returns `Check` records keyed by name; nothing here
talks to other nodes (peer comparisons are the verdict's)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from test_case.preflight.expectations import Expectations
from test_case.preflight.records import Check, Value
from test_case.training.gpus import DRIVER_GPUS, SmiOutput, node_gpus, node_problems, nvidia_smi, smi_query

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


def gpu_checks(env: Mapping[str, str], driver_dir: Path = DRIVER_GPUS) -> tuple[Checks, list[str]]:
    """GPU count (`test_case.training.gpus`: the driver's GPUs, nvidia-smi's and Slurm's allocation)
    and the GPU names. A node whose GPUs the job was not given (not asked for, where Slurm confines
    devices) fails: judged as a CPU node it would pass without a GPU touched."""
    listed = [line for line in nvidia_smi("-L") if line.startswith("GPU ")]
    names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in listed]
    counts = node_gpus(env.get("SLURMD_NODENAME") or socket.gethostname(), env, driver_dir)
    if counts.driver == 0 and counts.visible == 0 and not counts.allocated:
        return {
            "gpu_count": Check("pass", 0, 0, "GPUs", "CPU node: no GPU in the driver, none listed or allocated")
        }, []
    problems = node_problems(counts)
    check = Check(
        "fail" if problems else "pass",
        counts.visible,
        counts.allocated if counts.allocated is not None else (counts.driver or counts.visible),
        "GPUs",
        "nvidia-smi -L against Slurm's SLURM_GPUS_ON_NODE, else the driver's /proc/driver/nvidia/gpus",
        problems[0] if problems else "",
    )
    return {"gpu_count": check}, names


def query_gpus(fields: Sequence[str]) -> tuple[list[dict[str, str]], dict[str, str], SmiOutput]:
    """``nvidia-smi --query-gpu=FIELDS``: one dict per GPU, the fields not read (with why), and the
    first call's outcome. When the driver rejects the call (one field it does not know fails them
    all), each field is asked alone, so that only the unknown one is lost, and said so."""
    first = smi_query(f"--query-gpu={','.join(fields)}", "--format=csv,noheader")
    if first.problem is None:
        cells = (line.split(",") for line in first.lines if line)
        return [dict(zip(fields, (c.strip() for c in row), strict=False)) for row in cells], {}, first
    if first.hung or first.missing:
        return [], {f: first.problem for f in fields}, first
    rows: list[dict[str, str]] = []
    unread: dict[str, str] = {}
    for field in fields:
        one = smi_query(f"--query-gpu={field}", "--format=csv,noheader")
        if one.problem is not None:
            unread[field] = one.problem
            continue
        values = [line.strip() for line in one.lines if line.strip()]
        rows += [{} for _ in range(len(values) - len(rows))]
        for row, value in zip(rows, values, strict=False):
            row[field] = value
    return rows, unread, first


# what each health field checks, for the line of a check it could not make
HEALTH_WHAT = {
    "ecc.errors.uncorrected.volatile.total": (
        "ecc_uncorrected",
        "volatile uncorrectable ECC errors",
        "nvidia-smi -q -d ECC",
    ),
    "remapped_rows.pending": (
        "remap_pending",
        "row remapping (nvidia-smi -q -d ROW_REMAPPER)",
        "nvidia-smi -q -d ROW_REMAPPER",
    ),
    "remapped_rows.failure": (
        "remap_failed",
        "row remapping (nvidia-smi -q -d ROW_REMAPPER)",
        "nvidia-smi -q -d ROW_REMAPPER",
    ),
    "persistence_mode": ("persistence", "persistence mode", "nvidia-smi -q"),
}


def not_checked(field: str, why: str) -> Check:
    """A health check nvidia-smi gave no value for: shown as skipped, with why and how to look."""
    _, what, look = HEALTH_WHAT[field]
    return Check("skip", None, None, "", f"{what}: not checked: {why}", f"look with `{look}` on the node")


def parse_health(rows: list[dict[str, str]], throttle: list[str], unread: Mapping[str, str] | None = None) -> Checks:
    """GPU health checks from ``nvidia-smi --query-gpu=HEALTH_FIELDS`` rows (and the throttle reasons);
    a field nvidia-smi did not read (``unread``) or reported as ``[N/A]`` is a skipped check, not none."""
    checks: Checks = {}
    unread = unread or {}
    for i, row in enumerate(rows):
        gpu = f"gpu{row.get('index', i)}"

        def value(field: str, gpu: str = gpu, row: dict[str, str] = row) -> str | None:
            """The field's value, or None after recording the skipped check."""
            if field in unread:
                checks[f"{gpu}.{HEALTH_WHAT[field][0]}"] = not_checked(field, f"nvidia-smi: {unread[field]}")
                return None
            raw = row.get(field, "")
            if raw in ("", "[N/A]", "N/A", "[Not Supported]"):
                checks[f"{gpu}.{HEALTH_WHAT[field][0]}"] = not_checked(field, f"nvidia-smi reports {raw or 'nothing'}")
                return None
            return raw

        ecc = value("ecc.errors.uncorrected.volatile.total")
        if ecc is not None and ecc.isdigit():
            checks[f"{gpu}.ecc_uncorrected"] = Check(
                "pass" if int(ecc) == 0 else "fail",
                int(ecc),
                0,
                "errors",
                "volatile uncorrectable ECC errors",
                "reset the GPU (nvidia-smi -r) or reboot, then rerun the preflight; if they return, " + DRAIN,
            )
        for field in ("remapped_rows.pending", "remapped_rows.failure"):
            remap = value(field)
            if remap is not None and remap.lower() in ("yes", "no"):
                bad = remap.lower() == "yes"
                pending = field == "remapped_rows.pending"
                checks[f"{gpu}.{HEALTH_WHAT[field][0]}"] = Check(
                    "fail" if bad else "pass",
                    remap,
                    "No",
                    "",
                    "row remapping (nvidia-smi -q -d ROW_REMAPPER)",
                    ("reboot to apply the pending remap" if pending else "the GPU needs replacing: " + DRAIN)
                    if bad
                    else "",
                )
        persistence = value("persistence_mode")
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
    """ECC, row remapping, persistence mode and throttle reasons of every GPU (none without nvidia-smi).
    nvidia-smi that hangs or fails fails the node; a field its driver rejects is a skipped check."""
    rows, unread, first = query_gpus(HEALTH_FIELDS)
    if first.missing:
        return {}  # no GPU tool: a CPU node, or gpu_checks names the GPUs Slurm gave and nvidia-smi did not list
    if first.hung or (not rows and first.problem is not None):
        return {
            "nvidia_smi": Check(
                "fail",
                first.problem,
                "an answer",
                "",
                f"nvidia-smi --query-gpu={','.join(HEALTH_FIELDS)}",
                ("a wedged GPU or driver (look for Xid 79 or 119 in dmesg): " if first.hung else "")
                + "reboot the node, or "
                + DRAIN,
            )
        }
    throttle: list[str] = []
    for field in THROTTLE_FIELDS:
        throttle = nvidia_smi(f"--query-gpu={field}", "--format=csv,noheader")
        if throttle:
            break
    return parse_health(rows, throttle, unread)


# EC2 GPU instances that come with EFA (p4d.24xlarge, p5.48xlarge, p5en, p6-b200.48xlarge, p6e-gb200...)
EFA_INSTANCE = re.compile(r"^p(4d|4de|5|5e|5en|6|6e)[.-]")


def efa_checks(env: Mapping[str, str], gpus: int, instance: str | None = None) -> Checks:
    """EFA devices (``fi_info -p efa``) where NCCL is to use them: GPU nodes with FI_PROVIDER=efa
    (env.sh sets it where the efa kernel module is loaded) or of an EC2 type that has EFA, so that
    a p5 whose EFA driver did not load is named. On InfiniBand or RoCE clusters NCCL uses its own
    transport: skipped there."""
    expected = gpus > 0 and (env.get("FI_PROVIDER") == "efa" or bool(EFA_INSTANCE.match(instance or "")))
    if not expected:
        why = "CPU node" if gpus == 0 else f"not an EFA node (FI_PROVIDER unset, instance {instance or 'unknown'})"
        return {"efa": Check("skip", None, None, "devices", f"{why}: NCCL does not use EFA")}
    if not shutil.which("fi_info"):
        return {
            "efa": Check("fail", None, ">= 1", "devices", "fi_info not found", "run in the suite's image (IMAGE=...)")
        }
    out = subprocess.run(["fi_info", "-p", "efa", "-t", "FI_EP_RDM"], capture_output=True, text=True, timeout=30)
    devices = {line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.strip().startswith("domain:")}
    said = " | ".join((out.stdout + out.stderr).strip().splitlines()[:2])
    return {
        "efa": Check(
            "pass" if devices else "fail",
            len(devices),
            ">= 1",
            "devices",
            "fi_info -p efa -t FI_EP_RDM" + ("" if devices else f": {said or 'nothing printed'}"),
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
