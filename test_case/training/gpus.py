"""How many GPUs each node of a training job trains on, agreed by every node before any rank starts.

Three counts per node (`NodeGpus`):

* ``driver``: the GPUs the node has, as the NVIDIA driver lists them (``/proc/driver/nvidia/gpus``,
  one folder per GPU), whatever the job may open;
* ``visible``: the GPUs this job can use, as ``nvidia-smi -L`` lists them: where Slurm confines
  devices (``ConstrainDevices=yes``) only those the job asked for;
* ``allocated``: what Slurm gave the job on this node (``SLURM_GPUS_ON_NODE``, set when it asked
  with ``--gpus-per-node`` or ``--gres=gpu:N``), or None.

A node that has GPUs and sees none was not asked for them (its ranks would train on the CPU, or the
preflight would judge it a CPU node); a node that sees fewer than Slurm gave lost one. Both stop the
job at its node check with one line. Then the nodes agree: each writes its count into the start's
shared folder (`record`) and waits for the others' (`agree`); a node that would train on a
different number of GPUs than the others (a world size that does not match hangs every rank until
``dist_timeout``) stops the job, named, before Composer starts anywhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

SMI_TIMEOUT_S = 30  # nvidia-smi answers in about a second; no answer in 30 s is a wedged GPU or driver


@dataclass(frozen=True)
class SmiOutput:
    """What one ``nvidia-smi`` call gave: its lines, or why there are none."""

    lines: list[str]
    problem: str | None = None  # "not found", "exit code N: <its first line>", "no answer in 30 s"
    hung: bool = False

    @property
    def missing(self) -> bool:
        return self.problem == "not found"


def smi_query(*args: str) -> SmiOutput:
    """Run ``nvidia-smi ARGS`` (from PATH) and keep apart a missing tool, a failure and a hang."""
    if not shutil.which("nvidia-smi"):
        return SmiOutput([], "not found")
    try:
        out = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return SmiOutput([], f"no answer in {SMI_TIMEOUT_S} s", hung=True)
    except OSError as err:
        return SmiOutput([], f"could not run: {err}")
    if out.returncode != 0:
        said = (out.stdout + out.stderr).strip().splitlines()
        return SmiOutput([], f"exit code {out.returncode}: {said[0].strip() if said else 'nothing printed'}")
    return SmiOutput(out.stdout.splitlines())


def nvidia_smi(*args: str) -> list[str]:
    """Lines ``nvidia-smi ARGS`` prints; none without the tool, or when it fails or hangs (`smi_query` says which)."""
    return smi_query(*args).lines


DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")
WAIT_S = 120  # how long a node waits for the others' counts (their node checks run at the same time)


@dataclass(frozen=True)
class NodeGpus:
    """One node's GPU counts (module docstring)."""

    host: str
    driver: int
    visible: int
    allocated: int | None

    @property
    def trains_on(self) -> int:
        """The GPUs this node's launch starts one rank each on (`test_case.training.node_plan.count_gpus`)."""
        return self.allocated if self.allocated is not None else self.visible


def allocated_gpus(env: Mapping[str, str]) -> int | None:
    """``SLURM_GPUS_ON_NODE`` (or the per-node request), None when the job asked for no GPU."""
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key, "").split(":")[-1]
        if value.isdigit():
            return int(value)
    return None


def node_gpus(host: str, env: Mapping[str, str], driver_dir: Path = DRIVER_GPUS) -> NodeGpus:
    """This node's counts."""
    driver = sum(1 for _ in driver_dir.iterdir()) if driver_dir.is_dir() else 0
    visible = sum(1 for line in smi_query("-L").lines if line.startswith("GPU "))
    return NodeGpus(host, driver, visible, allocated_gpus(env))


def node_problems(gpus: NodeGpus) -> list[str]:
    """What this node's own counts say is wrong (empty when nothing)."""
    if gpus.driver > 0 and gpus.visible == 0 and not gpus.allocated:
        return [
            f"{gpus.host} has {gpus.driver} GPU(s) and this job sees none: Slurm gives a job only the GPUs it "
            f"asks for where it confines devices: submit with --gpus-per-node={gpus.driver} "
            f"(3.acceptance.sh ... -- --gpus-per-node={gpus.driver})"
        ]
    if gpus.allocated is not None and gpus.visible != gpus.allocated:
        return [
            f"{gpus.host}: Slurm gave this job {gpus.allocated} GPU(s) and nvidia-smi lists {gpus.visible}: a GPU is "
            f"missing or fell off the bus (nvidia-smi -L; dmesg for Xid 79): leave the node out "
            f"(sbatch --exclude={gpus.host}) or drain it (scontrol update nodename={gpus.host} state=drain "
            "reason=gpus)"
        ]
    return []


def record(folder: Path, gpus: NodeGpus) -> None:
    """Write this node's counts for the others (atomically: a reader never sees half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{gpus.host}.json.tmp"
    part.write_text(json.dumps(asdict(gpus)))
    part.replace(folder / f"{gpus.host}.json")


def read_records(folder: Path, hosts: Sequence[str], wait_s: float = WAIT_S) -> tuple[list[NodeGpus], list[str]]:
    """Every host's counts, waiting up to ``wait_s`` for them; (the records, the hosts that wrote none)."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = [h for h in hosts if not (folder / f"{h}.json").is_file()]
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    found = [NodeGpus(**json.loads((folder / f"{h}.json").read_text())) for h in hosts if h not in missing]
    return found, missing


def agreement_problems(records: Sequence[NodeGpus], missing: Sequence[str], me: str) -> list[str]:
    """What this node (``me``) says about the job's counts: the hosts that wrote none, and, when the
    counts differ, the node itself if its count is not the job's (the most common one; of a tie, the
    larger: a node with fewer GPUs than its peers is the one that lost some)."""
    if missing:
        return [
            f"no GPU count from {', '.join(missing)} in {WAIT_S} s: its node check failed (see its lines above) "
            "or did not run"
        ]
    counts = Counter(r.trains_on for r in records)
    if len(counts) <= 1:
        return []
    agreed = max(counts, key=lambda n: (counts[n], n))
    (mine,) = [r for r in records if r.host == me]
    if mine.trains_on == agreed:
        return []
    others = sum(1 for r in records if r.trains_on == agreed)
    return [
        f"{me} would train on {mine.trains_on} GPU(s), the other {others} node(s) on {agreed}: every node must "
        f"train on as many (a world size that does not match hangs every rank until dist_timeout): check "
        f"nvidia-smi -L on {me}, then leave it out (sbatch --exclude={me}) or drain it"
    ]
