"""The run header of this start, gathered on node 0: the plan, the software, the data.

`run_header` fills in the `test_case.run_header.RunHeader` contract (the one record the report reads
back from the log) from the node plan, the environment, the installed versions (read from package
metadata and ``torch/version.py`` without importing torch), the git commit of the checkout, the
mixture and what the preprocessing recorded about the training split; `print_run_header` prints it
as ``[run-header] key: value`` lines.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from test_case import REPO_ROOT
from test_case.preflight.nccl_network import expected_network
from test_case.run_header import RunHeader
from test_case.training.dataset_fit import DatasetFacts
from test_case.training.gpus import nvidia_smi
from test_case.training.mixture import MixtureError, load_mixture
from test_case.training.node_plan import NodePlan, gpu_name


def torch_cuda(version_py: Path | None = None) -> str:
    """The CUDA torch was built for, read from its ``torch/version.py`` without importing torch (two
    seconds of every start): ``none`` for a CPU build, ``not installed`` without torch."""
    if version_py is None:
        spec = importlib.util.find_spec("torch")
        if spec is None or not spec.submodule_search_locations:
            return "not installed"
        version_py = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        found = re.search(r"^cuda(?:: [^=]+)? = '([^']+)'", version_py.read_text(), re.MULTILINE)
    except OSError:
        return "unknown"
    return found.group(1) if found else "none"


def gpu_driver() -> str | None:
    """The NVIDIA driver version as nvidia-smi prints it (None when it does not answer)."""
    versions = [v.strip() for v in nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader") if v.strip()]
    return versions[0] if versions else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def git_commit() -> str:
    """Commit of this checkout, ``-dirty`` when it has local changes; ``unknown`` without git."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_header(
    plan: NodePlan,
    model: str,
    env: Mapping[str, str],
    overrides: list[str],
    data: DatasetFacts | None = None,
    overlap: list[str] | None = None,
) -> RunHeader:
    """Facts of the run, printed once per start at the top of the log and read back by the report."""
    return RunHeader(
        job_id=plan.job_id,
        run_name=plan.run_name,
        cluster=env.get("SLURM_CLUSTER_NAME") or None,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model,
        nodes=plan.num_nodes,
        nodelist=env.get("SLURM_JOB_NODELIST", socket.gethostname()),
        gpus_per_node=plan.gpus_per_node,
        gpu_name=gpu_name() if plan.gpus_per_node else None,
        procs_per_node=plan.procs_per_node,
        world_size=plan.world_size,
        backend="nccl" if plan.gpus_per_node else "gloo",
        device="gpu" if plan.gpus_per_node else "cpu",
        master=f"{plan.master_addr}:{plan.master_port}",
        restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
        image=env.get("IMAGE") or "none (bare-metal venv)",
        git_commit=git_commit(),
        python=sys.version.split()[0],
        torch=_version("torch"),
        composer=_version("mosaicml"),
        llm_foundry=_version("llm-foundry"),
        streaming=_version("mosaicml-streaming"),
        flash_attn=_version("flash-attn"),
        cuda=torch_cuda(),
        nccl=_version("nvidia-nccl-cu12"),
        driver=gpu_driver() if plan.gpus_per_node else None,
        nccl_network=expected_network(env) if plan.gpus_per_node else None,
        overrides=" ".join(overrides) or "none",
        mixture=_mixture_line(env),
        eval_data_overlap=None if overlap is None else "; ".join(overlap) or "none",
        dataset_sample_tokens=data.sample_tokens if data else None,
        dataset_tokenizer=data.describe_tokenizer() if data else None,
    )


def _mixture_line(env: Mapping[str, str]) -> str | None:
    """The run header's ``mixture``: each stream's weight, the scheme, the batching and the file."""
    if not env.get("MIXTURE"):
        return None
    try:
        return load_mixture(Path(env["MIXTURE"])).describe()
    except MixtureError as err:
        return f"invalid: {err}"


def print_run_header(
    plan: NodePlan,
    model: str,
    env: Mapping[str, str],
    overrides: list[str],
    data: DatasetFacts | None = None,
    overlap: list[str] | None = None,
) -> None:
    """The run header as ``[run-header] key: value`` lines (`test_case.run_header`)."""
    for line in run_header(plan, model, env, overrides, data, overlap).lines():
        print(line, flush=True)
