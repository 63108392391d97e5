"""Every environment variable the scripts and the commands they run read, with its default: one
definition for ``--help`` and docs/training.md's "Settings" tables (tests/test_settings.py keeps all three,
and the scripts' own ``${NAME:-...}`` reads, in step).

``python -m test_case.settings SCRIPT`` prints SCRIPT's header comment (what it does, how to submit
it) and the settings it reads: what every ``slurm-scripts/*`` answers to ``--help``, with no side
effect (no log, no folder, no ``sbatch``). Standard library only: it runs before the venv is known.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

ALL = ("preflight", "preprocess", "train", "acceptance")  # the scripts, by the key `SCRIPTS` gives them


@dataclass(frozen=True)
class Setting:
    name: str
    used_by: tuple[str, ...]  # keys of ALL
    default: str
    meaning: str


SETTINGS = (
    Setting("DATA_ROOT", ALL, "$ROOT/data/my-copy-c4", "MDS dataset root, one folder per split (shared storage)"),
    Setting(
        "TOKENIZER", ALL, "EleutherAI/gpt-neox-20b (training: the yaml's)", "tokenizer folder or Hugging Face name"
    ),
    Setting("SAVE_ROOT", ALL, "$ROOT/checkpoints", "checkpoints go to SAVE_ROOT/<run-name>/checkpoints"),
    Setting("LOG_DIR", ALL, "$ROOT/logs", "logs of runs outside Slurm, preflight results, sweep manifests"),
    Setting(
        "SUITE_ROOT",
        ALL,
        "the submit directory (or its parent)",
        "under Slurm: the repository, when not submitted from it",
    ),
    Setting("VENV", ALL, "$ROOT/.venv", "bare metal: the virtual environment to activate"),
    Setting(
        "IMAGE",
        ALL,
        "$ROOT/llm-foundry.sqsh when it exists, else empty",
        "a .sqsh to run the tasks in (pyxis); empty: bare metal",
    ),
    Setting(
        "CONTAINER_MOUNTS",
        ALL,
        "$ROOT:$ROOT",
        "pyxis mounts; add shared storage outside the repository, e.g. /fsx:/fsx",
    ),
    Setting("BUNDLE", ALL, "empty", "an air-gapped bundle: the hub off, TOKENIZER, C4_INPUT and IMAGE from it"),
    Setting(
        "C4_INPUT",
        ALL,
        "empty: allenai/c4 from the hub",
        "folders or files: .jsonl/.json(.gz), .jsonl.zst, .parquet",
    ),
    Setting(
        "VAL_INPUT",
        ("preprocess",),
        "empty: C4_INPUT's c4-validation.* files",
        "what the validation splits read instead: for files not named c4-validation.*",
    ),
    Setting(
        "HOLDOUT",
        ("preprocess",),
        "empty: none",
        "fraction of the documents held out for the validation splits (e.g. 0.01)",
    ),
    Setting("TEXT_FIELD", ("preprocess",), "text", "dotted path of the text in each record"),
    Setting(
        "DOMAIN_FIELD",
        ("preprocess",),
        "empty: one dataset",
        "dotted path of each record's domain: one dataset per value",
    ),
    Setting("SPLITS", ("preprocess", "preflight"), "train_small val_small", "split names"),
    Setting("CONCAT_TOKENS", ("preprocess",), "2048", "tokens per sample (the model's max_seq_len)"),
    Setting("EOS_TEXT", ("preprocess",), "<|endoftext|>", "text appended to each document"),
    Setting("COMPRESSION", ("preprocess",), "zstd", "zstd or none"),
    Setting("WORKERS", ("preprocess",), "one per 2 CPUs of the node", "worker processes per task"),
    Setting("MODEL", ("train",), "mpt-tiny-cpu", "the yaml to train when the script is given none"),
    Setting("MIXTURE", ("train",), "empty: DATA_ROOT", "a mixture file: the streams to train on and their weights"),
    Setting(
        "RUN_NAME",
        ("train",),
        "<job-name>-<job-id>",
        "the run's name and checkpoint folder: an earlier run's resumes it",
    ),
    Setting("CPU_PROCS_PER_NODE", ("train", "preflight"), "1", "processes per node without GPUs"),
    Setting("MAX_RESTARTS", ("train",), "3", "failures in a row without a new checkpoint before the job stops"),
    Setting("HEARTBEAT_SECONDS", ("train",), "5", "seconds between two heartbeats of a rank"),
    Setting("GPU_TYPE", ("train",), "unset", "login node: the GPU the memory fit is checked against (h100-sxm, ...)"),
    Setting("GPUS_PER_NODE", ("train",), "8", "login node: GPUs per node, with GPU_TYPE"),
    Setting("NODES", ("train",), "1", "login node: nodes, with GPU_TYPE"),
    Setting(
        "PUBLISHED_CONFIG", ("train",), "0", "1: llm-foundry's published configuration of this model, GPU and GPU count"
    ),
    Setting(
        "PREFLIGHT_ARGS",
        ("preflight",),
        "empty",
        'e.g. "--peer-tolerance 0.3 --expectations my.json --max-bytes 1073741824"',
    ),
    Setting("PREFLIGHT_DEVICE", ("preflight",), "unset", "cpu: the workers measure the CPU even where there are GPUs"),
    Setting(
        "NCCL_DEBUG_FILE", ("preflight",), "PARTS/nccl-<host>-<worker>.log", "where the workers' NCCL INFO lines go"
    ),
    Setting("NCCL_DEBUG_SUBSYS", ("preflight",), "INIT,NET", "the NCCL INFO subsystems the workers log"),
    Setting(
        "FI_PROVIDER",
        ALL,
        "efa where the efa module is loaded",
        "libfabric provider of aws-ofi-nccl",
    ),
    Setting("FI_EFA_USE_DEVICE_RDMA", ALL, "1", "GPUDirect RDMA over EFA"),
    Setting("FI_EFA_FORK_SAFE", ALL, "1", "libfabric safe with forking dataloader workers"),
    Setting("FI_EFA_USE_HUGE_PAGE", ALL, "0", "no huge pages for EFA buffers"),
    Setting("NCCL_DEBUG", ALL, "WARN", "NCCL's log level (INFO: the transport chosen)"),
    Setting(
        "NCCL_NET_PLUGIN",
        ALL,
        "unset: libnccl-net.so",
        "NCCL's network plugin (ofi: libnccl-net-ofi.so); the run header says which one loads",
    ),
    Setting("NCCL_IB_DISABLE", ALL, "unset", "1: NCCL's own IB transport off (sockets without a plugin)"),
    Setting("NCCL_NET", ALL, "unset", "forces NCCL's network by name (IB, Socket, AWS Libfabric)"),
    Setting("TORCH_NCCL_ASYNC_ERROR_HANDLING", ALL, "1", "a failed collective ends the rank"),
)
SCRIPTS = {
    "0.preflight.sbatch": "preflight",
    "1.c4-preprocess.sbatch": "preprocess",
    "2.train-mpt-manual-distributed.sbatch": "train",
    "3.acceptance.sh": "acceptance",
}


def header(text: str) -> list[str]:
    """The script's leading comment, without the shebang and ``#SBATCH`` lines."""
    lines = []
    for line in text.splitlines()[1:]:
        if not line.startswith("#"):
            break
        if line.startswith("#SBATCH") or line.strip() == "#":
            continue
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


def help_text(script: Path) -> str:
    """What ``SCRIPT --help`` prints."""
    key = SCRIPTS.get(script.name)
    if key is None:
        raise ValueError(f"{script.name}: not one of {', '.join(SCRIPTS)}")
    mine = [s for s in SETTINGS if key in s.used_by]
    width = max(len(s.name) for s in mine)
    rows = [f"  {s.name:<{width}}  {s.meaning} (default: {s.default})" for s in mine]
    text = "\n".join(header(script.read_text()))
    head = "Environment (export before sbatch or bash; docs/training.md, 'Settings'):"
    return f"{text}\n\n{head}\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m test_case.settings SCRIPT", file=sys.stderr)
        return 2
    try:
        print(help_text(Path(args[0])), end="")
    except (OSError, ValueError) as err:
        print(f"settings: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
