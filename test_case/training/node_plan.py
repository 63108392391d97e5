"""This node's plan, from Slurm's environment: which node of how many, how many processes, the rendezvous.

The lowest layer of a training start, below `run_config` (the yaml), `launch` (the command that
starts Composer), `restarts` (the decision after a failure) and the preflight: each reads Slurm's
facts through this module only. From the environment of one srun task per node it derives

* its node rank (``SLURM_NODEID``) and the node count (``SLURM_JOB_NUM_NODES``),
* the master address: the first host of ``SLURM_JOB_NODELIST`` (`expand_hostlist`),
* the master port: ``20000 + job_id % 10000`` (below Linux's ephemeral range, same on all nodes),
* processes per node: GPUs on the node (``SLURM_GPUS_ON_NODE``, else ``nvidia-smi -L``), or
  ``CPU_PROCS_PER_NODE`` (default 1) on a node without GPUs (gloo backend).

Outside Slurm the same code plans one node on this machine.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from test_case.training.gpus import allocated_gpus, nvidia_smi

PORT_BASE, PORT_SPAN = 20000, 10000


class LaunchError(RuntimeError):
    """A configuration mistake reported as one clear line."""


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm hostlist (``node[1-3,7],gpu-[01-02]-a``) like ``scontrol show hostnames``."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        pieces = re.split(r"(\[[^\]]*\])", item)
        choices: list[list[str]] = []
        for piece in pieces:
            if piece.startswith("["):
                values: list[str] = []
                for rng in piece[1:-1].split(","):
                    lo, _, hi = rng.partition("-")
                    if hi:
                        width = len(lo) if lo.startswith("0") else 0
                        values += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
                    else:
                        values.append(lo)
                choices.append(values)
            elif piece:
                choices.append([piece])
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def master_port(job_id: str | None) -> int:
    """Port of the rendezvous: derived from the Slurm job id, or a free port when not under Slurm.

    Both stay below Linux's ephemeral range (32768-60999): a rank that connects to an ephemeral
    port before the store listens can be given that same port as its own source port and connect
    to itself (TCP simultaneous open), which hangs the rendezvous.
    """
    if job_id and job_id.isdigit():
        return PORT_BASE + int(job_id) % PORT_SPAN
    start = os.getpid() % PORT_SPAN
    for offset in range(PORT_SPAN):
        port = PORT_BASE + (start + offset) % PORT_SPAN
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return port
    raise LaunchError(f"no free port in {PORT_BASE}-{PORT_BASE + PORT_SPAN - 1}; set MASTER_PORT")


def count_gpus(env: Mapping[str, str]) -> int:
    """GPUs this node gives the job: Slurm's count, else what ``nvidia-smi -L`` lists, else 0."""
    allocated = allocated_gpus(env)
    if allocated is not None:
        return allocated
    return sum(1 for line in nvidia_smi("-L") if line.startswith("GPU "))


def gpu_name() -> str | None:
    """Name of this node's first GPU as ``nvidia-smi`` prints it (None without GPUs)."""
    names = [n.strip() for n in nvidia_smi("--query-gpu=name", "--format=csv,noheader") if n.strip()]
    return names[0] if names else None


@dataclass(frozen=True)
class NodePlan:
    """What one node's task launches."""

    job_id: str
    run_name: str
    node_rank: int
    num_nodes: int
    procs_per_node: int
    gpus_per_node: int
    master_addr: str
    master_port: int
    threads_per_proc: int

    @property
    def world_size(self) -> int:
        """Processes in the whole job."""
        return self.num_nodes * self.procs_per_node


def plan_node(env: Mapping[str, str], gpus: int | None = None) -> NodePlan:
    """Derive this node's launch from Slurm's environment (or a single local node without it)."""
    gpus = count_gpus(env) if gpus is None else gpus
    job_id = env.get("SLURM_JOB_ID") or env.get("LOCAL_JOB_ID") or "local"
    job_name = env.get("SLURM_JOB_NAME") or "mpt-train"
    if "SLURM_JOB_ID" in env:
        hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST", ""))
        if not hosts:
            raise LaunchError("SLURM_JOB_NODELIST is empty: run this inside an allocation")
        num_nodes = int(env.get("SLURM_JOB_NUM_NODES") or len(hosts))
        node_rank = int(env.get("SLURM_NODEID", "0"))
        addr = env.get("MASTER_ADDR") or hosts[0]
    else:
        num_nodes, node_rank, addr = 1, 0, env.get("MASTER_ADDR", "127.0.0.1")
    port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else master_port(env.get("SLURM_JOB_ID"))
    procs = gpus if gpus > 0 else int(env.get("CPU_PROCS_PER_NODE", "1"))
    if procs <= 0:
        raise LaunchError("CPU_PROCS_PER_NODE must be a positive integer")
    cpus = int(env.get("SLURM_CPUS_ON_NODE") or os.cpu_count() or 1)
    return NodePlan(
        job_id=job_id,
        run_name=env.get("RUN_NAME") or f"{job_name}-{job_id}",
        node_rank=node_rank,
        num_nodes=num_nodes,
        procs_per_node=procs,
        gpus_per_node=gpus,
        master_addr=addr,
        master_port=port,
        threads_per_proc=max(1, cpus // procs),
    )


@functools.cache
def first_gpu_name() -> str | None:
    """`gpu_name`, asked once per process."""
    return gpu_name()
