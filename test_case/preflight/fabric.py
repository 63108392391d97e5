"""One worker process per device: its matmul throughput, its clock, and the collectives' bandwidth.

Started by the node task (`test_case.preflight.cli node`) with the rendezvous of the training
launch (``MASTER_ADDR``/``MASTER_PORT`` from `test_case.training.node_plan.plan_node`, ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``), on the same backend training uses: NCCL on GPUs, gloo on CPUs.
Every worker runs, in this order and in step with the others:

1. a dense matmul on its device for about a second (bf16 on GPUs, fp32 on CPUs): TFLOP/s; then
   the seeded workloads of the numerical agreement check (`test_case.preflight.numerics`); with
   ``--burn-in S``, S seconds of the same matmul, every device at once (`test_case.preflight.burn_in`);
2. its wall clock at a barrier, gathered: each node's offset from node 0;
3. all_reduce, all_gather, reduce_scatter, all_to_all and sendrecv (each rank sends to the next and
   receives from the previous, as nccl-tests' ``sendrecv_perf``) over message sizes on all ranks
   ("all nodes"), then within each node when it has several devices;
4. up to `ALL_PAIRS_UP_TO` nodes, an all_reduce of one size on the ranks of each pair of nodes, one
   pair at a time: a slow node is in every slow pair, a slow link in one; beyond, adaptive group
   testing (`test_case.preflight.group_testing`): rounds of all_to_all among disjoint groups of
   nodes, about 2 + 3 log2(N) rounds for one slow link, every rank running the same search on the
   gathered scores.

Figures follow nccl-tests: ``size`` is the bytes of the larger buffer (all_gather's output,
reduce_scatter's input, each rank's all_to_all buffer and sendrecv message), ``algbw = size / time``,
``busbw = algbw x 2(n-1)/n`` for all_reduce, ``x (n-1)/n`` for all_gather, reduce_scatter and
all_to_all, ``x 1`` for sendrecv; time is the slowest rank's mean over the
iterations. Results go to ``PARTS/rank-<r>.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from test_case.preflight import burn_in, numerics
from test_case.preflight.group_testing import Measure, locate
from test_case.preflight.records import Bandwidth, BandwidthPoint

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "sendrecv")
CPU_SIZES = (1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24)  # 64 KiB .. 16 MiB
GPU_SIZES = tuple(1 << s for s in range(20, 33, 2))  # 1 MiB .. 4 GiB
CPU_PAIR_BYTES, GPU_PAIR_BYTES = 1 << 22, 1 << 30
ALL_PAIRS_UP_TO = 8


def bus_factor(collective: str, n: int) -> float:
    """nccl-tests' busbw / algbw for ``n`` ranks."""
    if n <= 1 or collective == "sendrecv":
        return 1.0
    return 2 * (n - 1) / n if collective == "all_reduce" else (n - 1) / n


def iterations(nbytes: int) -> int:
    """Timed iterations of one size (after two warm-up ones): more for small messages."""
    return 20 if nbytes <= 1 << 22 else 5


def node_pairs(nodes: int, up_to: int = ALL_PAIRS_UP_TO) -> list[tuple[int, int]]:
    """The pairs of nodes tested one at a time: all of them up to ``up_to`` nodes, else none (group
    testing instead)."""
    if nodes < 3 or nodes > up_to:
        return []  # with two nodes the pair is the all-node test
    return list(itertools.combinations(range(nodes), 2))


def node_names(hosts: list[str]) -> list[str]:
    """Each node's hostname; ``host#k`` for the k-th node when several report the same one."""
    return [h if hosts.count(h) == 1 else f"{h}#{k}" for k, h in enumerate(hosts)]


def group_measure(names: list[str], local_world: int, device: Any, nbytes: int) -> Measure:
    """One round of group tests on this job's ranks: every rank creates every group's process group
    (in the same order, as torch.distributed requires), the members of each run an all_to_all of
    ``nbytes``, and every rank gets every group's busbw."""
    import torch.distributed as dist

    index = {name: k for k, name in enumerate(names)}
    rank, world = dist.get_rank(), dist.get_world_size()

    def measure(groups: list[list[str]]) -> list[float]:
        mine: tuple[int, Any, list[int]] | None = None
        for g, members_nodes in enumerate(groups):
            members = [r for n in members_nodes for r in range(index[n] * local_world, (index[n] + 1) * local_world)]
            handle = dist.new_group(members)
            if rank in members:
                mine = (g, handle, members)
        said: tuple[int, float] | None = None
        if mine is not None:
            point = time_collective("all_to_all", nbytes, mine[1], device)
            said = (mine[0], point.busbw_gbps) if rank == mine[2][0] else None
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, said)
        scores = [0.0] * len(groups)
        for item in gathered:
            if item is not None:
                scores[item[0]] = item[1]
        return scores

    return measure


def matmul_tflops(device: Any, seconds: float = 1.0) -> float:
    """Dense matmul throughput of one device: bf16 8192^3 on a GPU, fp32 1024^3 on a CPU."""
    import torch

    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(2):
        a @ b
    sync()
    count, start = 0, time.perf_counter()
    while True:
        for _ in range(5):
            a @ b
        count += 5
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * n**3 * count / elapsed / 1e12


def time_collective(collective: str, nbytes: int, group: Any, device: Any) -> BandwidthPoint:
    """One size of one collective on ``group``: the slowest rank's mean time, algbw, busbw."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size(group)
    elems = max(n, nbytes // 4 // n * n)  # float32, a multiple of n
    size = elems * 4
    big = torch.ones(elems, dtype=torch.float32, device=device)
    small = torch.ones(elems // n, dtype=torch.float32, device=device)

    received = torch.empty_like(big) if collective in ("all_to_all", "sendrecv") else big
    me, ranks = dist.get_rank(), dist.get_process_group_ranks(group) if group is not None else None
    where = ranks.index(me) if ranks else me
    following = ranks[(where + 1) % n] if ranks else (where + 1) % n
    preceding = ranks[(where - 1) % n] if ranks else (where - 1) % n

    def once() -> None:
        if collective == "all_reduce":
            dist.all_reduce(big, group=group)
        elif collective == "all_gather":
            dist.all_gather_into_tensor(big, small, group=group)
        elif collective == "reduce_scatter":
            dist.reduce_scatter_tensor(small, big, group=group)
        elif collective == "all_to_all":
            dist.all_to_all_single(received, big, group=group)
        else:  # sendrecv: to the next rank of the group, from the previous one
            ops = [dist.P2POp(dist.isend, big, following, group), dist.P2POp(dist.irecv, received, preceding, group)]
            for request in dist.batch_isend_irecv(ops):
                request.wait()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        once()
    sync()
    dist.barrier(group=group)
    iters = iterations(size)
    start = time.perf_counter()
    for _ in range(iters):
        once()
    sync()
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    per_op = float(elapsed.item()) / iters
    algbw = size / per_op / 1e9
    return BandwidthPoint(size, round(per_op, 6), round(algbw, 4), round(algbw * bus_factor(collective, n), 4))


def sweep(scope: str, group: Any, device: Any, backend: str, sizes: tuple[int, ...]) -> list[Bandwidth]:
    import torch.distributed as dist

    ranks = dist.get_world_size(group)
    return [
        Bandwidth(c, scope, ranks, backend, [time_collective(c, s, group, device) for s in sizes]) for c in COLLECTIVES
    ]


def run_worker(
    parts: Path,
    timeout_s: float = 600.0,
    max_bytes: int | None = None,
    pairs_up_to: int = ALL_PAIRS_UP_TO,
    tolerance: float = 0.25,
    burn_in_s: float = 0.0,
) -> None:
    """Everything above for this rank (and the burn-in's load for ``burn_in_s`` seconds, every device at
    once, when it is not 0); writes ``parts/rank-<r>.json``."""
    import torch
    import torch.distributed as dist

    numerics.pin_environment()  # before the first CUDA call
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = world // local_world
    cuda = torch.cuda.is_available() and os.environ.get("PREFLIGHT_DEVICE") != "cpu"
    if cuda:
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    sizes = GPU_SIZES if cuda else CPU_SIZES
    if max_bytes is not None:
        sizes = tuple(s for s in sizes if s <= max_bytes) or sizes[:1]
    pair_bytes = min(GPU_PAIR_BYTES if cuda else CPU_PAIR_BYTES, sizes[-1])
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    host = socket.gethostname()
    dist.barrier()
    tflops = matmul_tflops(device)  # every device at once, as in training
    agreement = numerics.measure(device, host, rank)
    load = None
    if burn_in_s > 0:
        dist.barrier()
        load = burn_in.run_load(device, burn_in_s)
        burn_in.done_marker(parts, host, local_rank).touch()

    hosts: list[Any] = [None] * world
    dist.all_gather_object(hosts, host)
    dist.barrier()
    stamps: list[Any] = [None] * world
    dist.all_gather_object(stamps, time.time())
    offsets = {hosts[r]: round(stamps[r] - stamps[0], 4) for r in range(0, world, local_world)}

    bandwidth: list[Bandwidth] = []
    if world > 1:
        everyone = sweep("all nodes", None, device, backend, sizes)
        if rank == 0:
            bandwidth += everyone
    node_groups = [dist.new_group(list(range(k * local_world, (k + 1) * local_world))) for k in range(nodes)]
    if local_world > 1 and nodes > 1:
        mine = sweep(f"within {host}", node_groups[rank // local_world], device, backend, sizes)
        if local_rank == 0:
            bandwidth += mine
    names = node_names([hosts[k * local_world] for k in range(nodes)])
    located = None
    if nodes > pairs_up_to:
        measure = group_measure(names, local_world, device, pair_bytes)
        located = locate(names, measure, tolerance)
    for a, b in node_pairs(nodes, pairs_up_to):
        members = [*range(a * local_world, (a + 1) * local_world), *range(b * local_world, (b + 1) * local_world)]
        group = dist.new_group(members)
        if rank in members:
            point = time_collective("all_reduce", pair_bytes, group, device)
            if rank == members[0]:
                pair = Bandwidth(
                    "all_reduce",
                    f"pair {names[a]} {names[b]}",
                    len(members),
                    backend,
                    [point],
                )
                bandwidth.append(pair)
        dist.barrier()
    pair_results: list[Any] = [None] * world
    dist.all_gather_object(pair_results, [asdict(b) for b in bandwidth if b.scope.startswith("pair ")])
    doc = {
        "hostname": host,
        "rank": rank,
        "local_rank": local_rank,
        "matmul_tflops": round(tflops, 6),
        "device": str(device),
        "numerics": asdict(agreement),
        "burn_in": asdict(load) if load is not None else None,
        "clock_offsets_s": offsets if rank == 0 else {},
        "group_testing": asdict(located) if located is not None and rank == 0 else None,
        "bandwidth": [asdict(b) for b in bandwidth if not b.scope.startswith("pair ")]
        + ([p for r in pair_results for p in r] if rank == 0 else []),
    }
    tmp = parts / f".rank-{rank}.json"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(parts / f"rank-{rank}.json")
    # No destroy_process_group: once rank 0 (which hosts the rendezvous store) has left, a rank
    # destroying its group can wait on that store for the whole timeout. The caller exits at once.
    dist.barrier()
