"""The health scan in a closed loop with Slurm on the local cluster (tests/local_slurm.py): every slurmd
runs ``slurm-scripts/health-check.sh`` as its HealthCheckProgram, from slurm.conf, every
`INTERVAL` seconds. node3's own /dev/shm is filled for real: node3 is drained with the finding as
its reason (read back from ``sinfo -R``), a 2-node job on its partition lands on the other two, and
the healthy nodes, each checked at least `HEALTHY_RUNS` times meanwhile, are drained never. The
health lines leave slurm.conf and node3 is resumed by hand afterwards, as an admin would."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

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


def test_health_check_program_drains_a_node_with_a_real_fault_and_never_a_healthy_one(
    cluster: LocalSlurmCluster, tmp_path: Path
) -> None:
    seen = tmp_path / "runs"
    seen.mkdir()
    program = tmp_path / "health-check"
    # slurmd runs the program with next to no environment: the cluster's slurm.conf and PATH are given
    # here, then the suite's script runs as it would on a real node (its lines go to <node>.out)
    program.write_text(
        "#!/bin/bash\n"
        f"export SLURM_CONF={cluster.conf} PATH={os.environ['PATH']}\n"
        f'echo "$(date +%s.%N)" >> {seen}/"$(hostname)"\n'
        f'exec bash {REPO_ROOT}/slurm-scripts/health-check.sh --confirm-after 1 >> {seen}/"$(hostname)".out 2>&1\n'
    )
    program.chmod(0o755)
    healthy = [n for n in cluster.node_names if n != "node3"]
    try:
        with (
            cluster.shm_filled("node3", 900),
            cluster.configured(
                f"HealthCheckProgram={program}", f"HealthCheckInterval={INTERVAL}", "HealthCheckNodeState=ANY"
            ),
        ):
            deadline = time.monotonic() + 60
            while "drain" not in cluster.node_state("node3"):
                assert time.monotonic() < deadline, (cluster.node_state("node3"), (seen / "node3.out").read_text())
                time.sleep(0.5)
            reason = drain_reasons(cluster)["node3"]
            assert reason.startswith("mpt-health reboot: shm /dev/shm: only "), reason
            assert "free (at least 50% expected)" in reason
            said = (seen / "node3.out").read_text()
            assert "health: node3: confirmed by a second scan; drained: scontrol update nodename=node3" in said
            print(f"node3 drained after {runs(seen, 'node3')} check(s): {reason}")

            job = cluster.sbatch(
                ["--partition=three", "--nodes=2", f"--output={tmp_path}/later_%j.out", "--wrap=hostname"],
                cwd=tmp_path,
            )
            info = cluster.wait(job, timeout=120)
            assert (info["JobState"], info["NodeList"]) == ("COMPLETED", "node[1-2]"), info

            deadline = time.monotonic() + INTERVAL * HEALTHY_RUNS * 4
            while min(runs(seen, n) for n in healthy) < HEALTHY_RUNS:
                assert time.monotonic() < deadline, {n: runs(seen, n) for n in healthy}
                assert not set(drain_reasons(cluster)) & set(healthy), drain_reasons(cluster)
                time.sleep(1)
            assert not set(drain_reasons(cluster)) & set(healthy), drain_reasons(cluster)
            assert all(f"health: {n}: healthy" in (seen / f"{n}.out").read_text() for n in healthy)
            print("checks per node: " + ", ".join(f"{n} {runs(seen, n)}" for n in cluster.node_names))
        # node3 stays drained with the health lines gone and its /dev/shm emptied: only a person resumes it
        assert "drain" in cluster.node_state("node3")
    finally:
        subprocess.run(
            ["scontrol", "update", "nodename=node3", "state=resume"], env=cluster.env, check=False, capture_output=True
        )
