"""`python -m test_case.preflight node|worker|verdict`: what `0.preflight.sbatch` runs.

* ``node``: one task per node. Its own checks (`node_checks`), then one `fabric` worker per device
  (GPUs, or one process on a CPU node) that rendezvous across all nodes as training does; writes
  ``PARTS/node-<host>.json``.
* ``worker``: one device's matmul and the collectives (`test_case.preflight.fabric`).
* ``verdict``: once, after every node: compares the nodes (`verdict`), writes
  ``logs/preflight_<job-id>.json``, prints the summary; exit code 0 when every check passes, 1
  when any fails; 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from test_case.preflight import burn_in, node_checks
from test_case.preflight.expectations import load
from test_case.preflight.fabric import ALL_PAIRS_UP_TO, run_worker
from test_case.preflight.host_health import host_health_checks
from test_case.preflight.nccl_network import network_check, rdma_devices, read_nccl_debug
from test_case.preflight.nccl_tests import NcclTestsError, read_nccl_tests
from test_case.preflight.records import (
    Bandwidth,
    BandwidthPoint,
    Check,
    DeviceNumerics,
    NodePart,
    PreflightReport,
    bandwidth_record,
    numerics_record,
    write_part,
)
from test_case.preflight.verdict import build_report
from test_case.training.node_plan import LaunchError, expand_hostlist, gpu_name, plan_node

PROG = "preflight"
PORT_OFFSET = 1  # the rendezvous port is training's + 1: a preflight and a training step never share one


def instance_type() -> str | None:
    """The EC2 instance type (or whatever the firmware calls the machine), for the expectations."""
    try:
        return Path("/sys/devices/virtual/dmi/id/product_name").read_text().strip() or None
    except OSError:
        return None


def node(args: argparse.Namespace) -> int:
    env = os.environ
    try:
        plan = plan_node(env)
    except LaunchError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    host = socket.gethostname()
    parts = args.parts
    parts.mkdir(parents=True, exist_ok=True)
    exp = load(args.expectations, args.tolerance, args.peer_tolerance)
    checks, names = node_checks.gpu_checks(env)
    checks |= node_checks.health_checks()
    checks |= node_checks.efa_checks(env, plan.gpus_per_node, instance_type())
    checks |= node_checks.shm_checks(exp)
    checks |= node_checks.save_root_checks(Path(env.get("SAVE_ROOT", "checkpoints")), exp)
    checks |= node_checks.dataset_checks(
        Path(env.get("DATA_ROOT", "data")), env.get("SPLITS", "train_small val_small").split()
    )
    checks |= node_checks.tokenizer_checks(env.get("TOKENIZER") or "EleutherAI/gpt-neox-20b")
    health, identity = host_health_checks(host, args.dcgm_level)
    checks |= health
    facts = node_checks.versions() | {"gpu": gpu_name() or "cpu", "instance": instance_type()} | identity
    if len(set(names)) > 1:
        checks["gpu_model"] = Check(
            "fail",
            ", ".join(sorted(set(names))),
            "one model",
            "",
            "nvidia-smi -L",
            "one node, one GPU model: " + node_checks.DRAIN.format(node=host),
        )

    procs = plan.procs_per_node
    failed = sorted(name for name, c in checks.items() if c.status == "fail")
    print(
        f"{PROG}: node {plan.node_rank} ({host}): {len(checks)} checks"
        + (f", failed: {', '.join(failed)}" if failed else "")
        + f"; starting {procs} worker(s)",
        flush=True,
    )
    started = time.monotonic()
    sampler = None
    if args.burn_in > 0:
        markers = [burn_in.done_marker(parts, host, local) for local in range(procs)]
        sampler = burn_in.Sampler(done=lambda: all(m.exists() for m in markers)).start()
    workers = []
    for local in range(procs):
        worker_env = {
            **env,
            "MASTER_ADDR": plan.master_addr,
            "MASTER_PORT": str(plan.master_port + PORT_OFFSET),
            "RANK": str(plan.node_rank * procs + local),
            "WORLD_SIZE": str(plan.world_size),
            "LOCAL_RANK": str(local),
            "LOCAL_WORLD_SIZE": str(procs),
            "OMP_NUM_THREADS": str(plan.threads_per_proc),
        }
        if plan.gpus_per_node and not env.get("NCCL_DEBUG_FILE"):  # NCCL's init lines, to a file per worker
            worker_env |= {
                "NCCL_DEBUG": "INFO",
                "NCCL_DEBUG_SUBSYS": env.get("NCCL_DEBUG_SUBSYS") or "INIT,NET",
                "NCCL_DEBUG_FILE": str(parts / f"nccl-{host}-{local}.log"),
            }
        cmd = [
            sys.executable,
            "-m",
            "test_case.preflight",
            "worker",
            "--parts",
            str(parts),
            "--timeout",
            str(args.timeout),
        ]
        if args.max_bytes:
            cmd += ["--max-bytes", str(args.max_bytes)]
        cmd += ["--pairs-up-to", str(args.pairs_up_to), "--burn-in", str(args.burn_in)]
        if args.expectations:
            cmd += ["--expectations", str(args.expectations)]
        workers.append(subprocess.Popen(cmd, env=worker_env))
    codes = []
    for proc in workers:
        try:
            codes.append(proc.wait(timeout=args.timeout + 120 + args.burn_in))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    elapsed = time.monotonic() - started
    samples = sampler.stop() if sampler is not None else []
    ok = all(c == 0 for c in codes)
    checks["fabric_run"] = Check(
        "pass" if ok else "fail",
        f"exit codes {codes}",
        "all 0",
        "",
        f"{procs} worker(s), {elapsed:.0f} s",
        ""
        if ok
        else "a worker failed or timed out (its traceback is above in the job log): check this node's network "
        "and GPUs, or " + node_checks.DRAIN.format(node=host),
    )
    nccl_lines = [line for f in sorted(parts.glob(f"nccl-{host}-*.log")) for line in f.read_text().splitlines()]
    mine = next(iter(read_nccl_debug(nccl_lines).values()), None)  # the files hold this node's lines only
    checks["nccl_network"] = network_check(mine, plan.num_nodes, rdma_devices(), node_checks.DRAIN.format(node=host))
    matmul: list[float] = []
    agreement: list[DeviceNumerics] = []
    bandwidth: list[Bandwidth] = []  # within this node (the all-node and pair curves are rank 0's)
    loads: list[burn_in.Load] = []
    bursts: list[float] = []
    for local in range(procs):
        path = parts / f"rank-{plan.node_rank * procs + local}.json"
        if path.is_file():
            doc = json.loads(path.read_text())
            matmul.append(doc["matmul_tflops"])
            if doc.get("burn_in"):
                loads.append(burn_in.Load(**doc["burn_in"]))
                bursts.append(doc["matmul_tflops"])
            agreement.append(numerics_record(doc["numerics"]))
            bandwidth += [bandwidth_record(b) for b in doc["bandwidth"] if b["scope"].startswith("within ")]
    if sampler is not None:
        checks |= burn_in.burn_in_checks(
            loads, bursts, samples if sampler.calls else None, exp, host, bool(plan.gpus_per_node)
        )
    if plan.gpus_per_node and shutil.which("all_reduce_perf"):
        bandwidth.append(nccl_tests(plan.gpus_per_node, host))
    write_part(
        parts / f"node-{host}.json", NodePart(host, plan.node_rank, checks, facts, matmul, None, bandwidth, agreement)
    )
    return 0


def parse_all_reduce_perf(text: str, scope: str, ranks: int) -> Bandwidth:
    """nccl-tests' out-of-place figures per message size (the table read by `nccl_tests`)."""
    run = read_nccl_tests(text, f"all_reduce_perf {scope}")
    points = [
        BandwidthPoint(r.size_bytes, r.out_of_place.time_us / 1e6, r.out_of_place.algbw_gbs, r.out_of_place.busbw_gbs)
        for r in run.results
    ]
    return Bandwidth("all_reduce_perf", scope, ranks, "nccl-tests", points)


def nccl_tests(gpus: int, host: str) -> Bandwidth:
    """nccl-tests' all_reduce_perf on this node's GPUs (one process, -g GPUS); no points when it failed."""
    cmd = ["all_reduce_perf", "-b", "1M", "-e", "4G", "-f", "4", "-g", str(gpus)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    try:
        return parse_all_reduce_perf(out.stdout, f"within {host}", gpus)
    except NcclTestsError as err:
        last = " | ".join((out.stdout + out.stderr).strip().splitlines()[-3:])
        print(
            f"{PROG}: {host}: all_reduce_perf gave no figures (exit code {out.returncode}): {err}; last lines: {last}"
        )
        return Bandwidth("all_reduce_perf", f"within {host}", gpus, "nccl-tests", [])


def summary_lines(report: PreflightReport) -> list[str]:
    """The readable summary printed in the job log."""
    head = f"{report.status.upper()} ({len(report.nodes)} node(s), {report.wall_s or 0:.0f} s)"
    lines = [f"{PROG}: job {report.job_id}: {head}"]

    def m(host: str, name: str) -> str:
        c = report.nodes[host].checks.get(name)
        return "-" if c is None or c.measured is None else str(c.measured)

    columns = [("matmul TFLOP/s", "matmul"), ("pairs GB/s", "fabric.pairs"), ("shm free", "shm_free")]
    columns += [("write MB/s", "save_root_write"), ("clock s", "clock_offset")]
    lines.append(f"{'node':<16} {'status':<6} " + " ".join(f"{title:>14}" for title, _ in columns))
    for host, n in report.nodes.items():
        lines.append(f"{host:<16} {n.status:<6} " + " ".join(f"{m(host, name):>14}" for _, name in columns))
    for b in report.bandwidth:
        curve = ", ".join(f"{_size(p.bytes)} {p.busbw_gbps:.3g}" for p in b.points)
        expected = f" (expected {b.expected_busbw_gbps})" if b.expected_busbw_gbps else ""
        lines.append(f"{b.collective} {b.scope} ({b.ranks} ranks, {b.backend}) busbw GB/s: {curve}{expected}")
    for f in report.failures:
        lines.append(f"{PROG}: FAIL {f.node}: {f.check}: measured {f.measured}, expected {f.expected}: {f.action}")
        if f.evidence:
            lines.append(f"{PROG}:   evidence ({f.finding_class}): {f.evidence}")
    for link in report.slow_links:
        measured = f"busbw {link.busbw_gbps} GB/s, " if link.busbw_gbps is not None else ""
        lines.append(
            f"{PROG}: FAIL link {link.a} - {link.b} ({link.how}): {measured}reference {link.reference_gbps} GB/s: "
            + link.action
        )
    return lines


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 0.9 * (1 << shift):
            return f"{n / (1 << shift):.0f}{unit}"
    return f"{n}B"


def verdict(args: argparse.Namespace) -> int:
    env = os.environ
    hosts = expand_hostlist(env["SLURM_JOB_NODELIST"]) if env.get("SLURM_JOB_NODELIST") else [socket.gethostname()]
    exp = load(args.expectations, args.tolerance, args.peer_tolerance)
    report = build_report(args.parts, hosts, args.job_id, exp, args.wall_s)
    report.cluster = env.get("SLURM_CLUSTER_NAME") or None  # what the results store keys it by (docs/history.md)
    report.measured_at = datetime.now(UTC).isoformat(timespec="seconds")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.to_json())
    for line in summary_lines(report):
        print(line)
    print(f"{PROG}: wrote {out}")
    if report.status == "pass":  # everything the parts held is in the result
        shutil.rmtree(args.parts, ignore_errors=True)
    else:
        print(
            f"{PROG}: the nodes' raw results and NCCL logs are kept in {args.parts} (removed when a preflight passes)"
        )
    return 0 if report.status == "pass" else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m test_case.preflight", description=__doc__.splitlines()[0] if __doc__ else None
    )
    sub = p.add_subparsers(dest="action", required=True)
    for name in ("node", "worker", "verdict"):
        s = sub.add_parser(name)
        s.add_argument("--parts", type=Path, required=True, help="folder the node tasks and workers write to")
        s.add_argument("--timeout", type=float, default=600.0, help="rendezvous and collective timeout, seconds")
        s.add_argument("--max-bytes", type=int, default=None, help="largest message of the sweep")
        s.add_argument("--expectations", type=Path, default=None, help="JSON file overriding the expected figures")
        s.add_argument("--tolerance", type=float, default=None, help="share below a published figure that fails (0.15)")
        s.add_argument(
            "--peer-tolerance", type=float, default=None, help="share below the nodes' median that fails (0.25)"
        )
        s.add_argument(  # read by the workers; accepted by all, as PREFLIGHT_ARGS passes the same to each
            "--pairs-up-to",
            type=int,
            default=ALL_PAIRS_UP_TO,
            metavar="N",
            help=f"test every pair of nodes up to N nodes, else find slow nodes and links by group testing "
            f"({ALL_PAIRS_UP_TO})",
        )
        s.add_argument(  # read by `node` and the workers; accepted by all, as PREFLIGHT_ARGS passes the same to each
            "--burn-in",
            type=float,
            default=0.0,
            metavar="S",
            help="load every device for S seconds while sampling GPU clocks, temperature, power and throttle "
            "reasons (0: no burn-in; 60 is a good first choice on GPUs)",
        )
        s.add_argument(  # read by `node`; accepted by all, as PREFLIGHT_ARGS passes the same to each
            "--dcgm-level",
            type=int,
            choices=(1, 2, 3, 4),
            default=None,
            help="run dcgmi diag -r LEVEL on every node where dcgmi is (1: seconds, 2: minutes, 3-4: long)",
        )
        if name == "verdict":
            s.add_argument("--job-id", required=True)
            s.add_argument("--out", type=Path, required=True)
            s.add_argument("--wall-s", type=float, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "worker":
        exp = load(args.expectations, args.tolerance, args.peer_tolerance)
        run_worker(args.parts, args.timeout, args.max_bytes, args.pairs_up_to, exp.link_tolerance, args.burn_in)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # without tearing down the process group (see run_worker)
    return node(args) if args.action == "node" else verdict(args)
