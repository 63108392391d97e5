"""The health scan in a closed loop with Slurm on the local cluster (tests/local_slurm.py): every slurmd
runs ``slurm-scripts/health-check.sh`` as its HealthCheckProgram, from slurm.conf, every
`INTERVAL` seconds. node3's own /dev/shm is filled for real and node2's slurmd held to a fifth of a
core: both are drained with their finding as the reason (read back from ``sinfo -R``), a 2-node job
lands on two of the others, and the healthy nodes, each checked at least `HEALTHY_RUNS` times
meanwhile, are drained never. The same script as Prolog (a job that lands on node3 is requeued onto
healthy nodes and node3 drained) and as Epilog (a job that leaves node3's /dev/shm full gets node3
drained as it ends). The health lines leave slurm.conf and the nodes are resumed by hand afterwards,
as an admin would."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from test_case.training.node_plan import expand_hostlist
from tests.conftest import REPO_ROOT
from tests.local_slurm import LocalSlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

INTERVAL = 2  # s: HealthCheckInterval (300 or more on a real cluster)
HEALTHY_RUNS = 20


def runs(folder: Path, node: str) -> int:
    path = folder / node
    return len(path.read_text().splitlines()) if path.is_file() else 0


def drain_reasons(cluster: LocalSlurmCluster) -> dict[str, str]:
    out = subprocess.run(
        ["sinfo", "-R", "-h", "-o", "%n|%E"], env=cluster.env, capture_output=True, text=True, check=True
    )
    return dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def resume(cluster: LocalSlurmCluster, *nodes: str) -> None:
    """``nodes`` resumed by hand, once no scan started before is still running anywhere in the cluster (one
    that read the fault before it was undone would drain the node again after the resume); then every
    node idle and answering (Slurm schedules on a resumed node only once its slurmd answered again)."""
    deadline = time.monotonic() + 60
    while any(
        b"test_case.health" in Path(f"/proc/{pid}/cmdline").read_bytes()
        for name in cluster.node_names
        for pid in cluster.node_processes(name)
        if Path(f"/proc/{pid}/cmdline").exists()
    ):
        assert time.monotonic() < deadline, "a health scan still runs after 60 s"
        time.sleep(0.2)
    for node in nodes:
        subprocess.run(
            ["scontrol", "update", f"nodename={node}", "state=resume"],
            env=cluster.env,
            check=False,
            capture_output=True,
        )
    cluster.settle(timeout=60)


def health_program(cluster: LocalSlurmCluster, folder: Path) -> Path:
    """A wrapper slurmd can run: the cluster's slurm.conf and PATH (slurmd gives next to no environment),
    a line per call in ``folder/<node>``, then the suite's script as it runs on a real node (its lines in
    ``folder/<node>.out``)."""
    folder.mkdir(exist_ok=True)
    program = folder / "health-check"
    program.write_text(
        "#!/bin/bash\n"
        f"export SLURM_CONF={cluster.conf} PATH={os.environ['PATH']}\n"
        f'echo "$(date +%s.%N) job $SLURM_JOB_ID" >> {folder}/"$(hostname)"\n'
        f'exec bash {REPO_ROOT}/slurm-scripts/health-check.sh --confirm-after 1 >> {folder}/"$(hostname)".out 2>&1\n'
    )
    program.chmod(0o755)
    return program


def test_health_check_program_drains_nodes_with_real_faults_and_never_a_healthy_one(
    cluster: LocalSlurmCluster, tmp_path: Path
) -> None:
    """node3's /dev/shm filled, node2's slurmd (and so every check it starts) held to 0.2 of a core."""
    seen = tmp_path / "runs"
    program = health_program(cluster, seen)
    faulted = {"node3": "mpt-health reboot: shm /dev/shm: only ", "node2": "mpt-health drain: cpu node: capped at 0.2"}
    healthy = [n for n in cluster.node_names if n not in faulted]
    try:
        with (
            cluster.shm_filled("node3", 900),
            cluster.cpu_quota("node2", 0.2),
            cluster.configured(
                f"HealthCheckProgram={program}", f"HealthCheckInterval={INTERVAL}", "HealthCheckNodeState=ANY"
            ),
        ):
            deadline = time.monotonic() + 60
            while not all("drain" in cluster.node_state(n) for n in faulted):
                outs = {n: (seen / f"{n}.out").read_text() if (seen / f"{n}.out").exists() else "" for n in faulted}
                assert time.monotonic() < deadline, ({n: cluster.node_state(n) for n in faulted}, outs)
                time.sleep(0.5)
            reasons = drain_reasons(cluster)
            assert all(reasons[n].startswith(start) for n, start in faulted.items()), reasons
            assert "free (at least 50% expected)" in reasons["node3"]
            for node in faulted:
                said = (seen / f"{node}.out").read_text()
                assert f"health: {node}: confirmed by a second scan; drained: scontrol update nodename={node}" in said
                print(f"{node} drained after {runs(seen, node)} check(s): {reasons[node]}")
            assert "evidence: /sys/fs/cgroup/cpu/mpt-suite-test-node2-" in (seen / "node2.out").read_text()

            job = cluster.sbatch(
                ["--partition=all", "--nodes=2", f"--output={tmp_path}/later_%j.out", "--wrap=hostname"],
                cwd=tmp_path,
            )
            info = cluster.wait(job, timeout=120)
            assert info["JobState"] == "COMPLETED" and set(expand_hostlist(info["NodeList"])) <= set(healthy), info

            deadline = time.monotonic() + INTERVAL * HEALTHY_RUNS * 4
            while min(runs(seen, n) for n in healthy) < HEALTHY_RUNS:
                assert time.monotonic() < deadline, {n: runs(seen, n) for n in healthy}
                assert not set(drain_reasons(cluster)) & set(healthy), drain_reasons(cluster)
                time.sleep(1)
            assert not set(drain_reasons(cluster)) & set(healthy), drain_reasons(cluster)
            assert all(f"health: {n}: healthy" in (seen / f"{n}.out").read_text() for n in healthy)
            print("checks per node: " + ", ".join(f"{n} {runs(seen, n)}" for n in cluster.node_names))
        # they stay drained with the health lines gone and the faults undone: only a person resumes them
        assert all("drain" in cluster.node_state(n) for n in faulted)
    finally:
        resume(cluster, "node3", "node2")


def test_as_prolog_a_faulted_node_is_drained_and_the_job_requeued_onto_healthy_ones(
    cluster: LocalSlurmCluster, tmp_path: Path
) -> None:
    """Slurm drains a node whose Prolog fails and requeues the job, held unless
    ``nohold_on_prolog_fail``; the drain keeps the scan's reason (Slurm does not overwrite it)."""
    seen = tmp_path / "runs"
    program = health_program(cluster, seen)
    try:
        with (
            cluster.shm_filled("node3", 900),
            cluster.configured(f"Prolog={program}", "SchedulerParameters=sched_interval=2,nohold_on_prolog_fail"),
        ):
            # Slurm starts it on the first free nodes after node1: node2 and node3
            job = cluster.sbatch(
                [
                    "--partition=all",
                    "--nodes=2",
                    "--exclude=node1",
                    f"--output={tmp_path}/p_%j.out",
                    "--wrap=srun hostname",
                ],
                cwd=tmp_path,
            )
            info = cluster.wait(job, timeout=120)
            states = {n: cluster.node_state(n) for n in cluster.node_names}
            assert (info["JobState"], info["Restarts"]) == ("COMPLETED", "1"), (info, states, drain_reasons(cluster))
            # its first start ran the Prolog on node3 (and failed there); its second ran on two healthy nodes
            assert runs(seen, "node3") == 1 and f"job {job}" in (seen / "node3").read_text()
            ran_on = expand_hostlist(info["NodeList"])
            assert len(ran_on) == 2 and not {"node1", "node3"} & set(ran_on), info["NodeList"]
            assert "node3" not in (tmp_path / f"p_{job}.out").read_text()
            reasons = drain_reasons(cluster)
            assert set(reasons) == {"node3"} and reasons["node3"].startswith("mpt-health reboot: shm /dev/shm: only ")
    finally:
        resume(cluster, "node3")


def test_as_epilog_a_job_that_leaves_shm_full_gets_its_node_drained(cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    seen = tmp_path / "runs"
    program = health_program(cluster, seen)
    left = "left-by-job"  # in node3's own /dev/shm; removed from its namespace afterwards
    try:
        with cluster.configured(f"Epilog={program}"):
            job = cluster.sbatch(
                [
                    "--partition=three",
                    "--nodelist=node3",
                    f"--output={tmp_path}/e_%j.out",
                    f"--wrap=dd if=/dev/zero of=/dev/shm/{left} bs=1M count=900",
                ],
                cwd=tmp_path,
            )
            info = cluster.wait(job, timeout=120)
            assert info["JobState"] == "COMPLETED", info
            deadline = time.monotonic() + 60
            while "drain" not in cluster.node_state("node3"):
                assert time.monotonic() < deadline, (seen / "node3.out").read_text()
                time.sleep(0.5)
            assert drain_reasons(cluster)["node3"].startswith("mpt-health reboot: shm /dev/shm: only ")
            assert f"job {job}" in (seen / "node3").read_text()  # the epilog of that job
    finally:
        cluster.shm_remove("node3", left)
        resume(cluster, "node3")
