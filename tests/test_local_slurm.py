"""The local Slurm cluster's own start and teardown (tests/local_slurm.py): starting a running cluster
again changes nothing; ending its jobs ends its own step daemons, by PID, and leaves every other
process named ``slurmstepd`` alone (another cluster's, a real node's)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.local_slurm import LocalSlurmCluster, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_ending_the_jobs_ends_this_clusters_step_daemons_and_no_other(
    cluster: LocalSlurmCluster, tmp_path: Path
) -> None:
    # a process named slurmstepd that belongs to another cluster (its SLURM_CONF is not ours)
    fake = tmp_path / "slurmstepd"
    shutil.copy("/bin/sleep", fake)
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": "/etc/slurm/slurm.conf"}
    outsider = subprocess.Popen([str(fake), "600"], env=env, start_new_session=True)
    try:
        job = cluster.sbatch([f"--output={tmp_path}/%j.out", "--wrap", "sleep 600"])
        cluster.wait(job, timeout=120, until={"RUNNING"})
        deadline = time.monotonic() + 60
        while not (ours := cluster.step_daemons()):
            assert time.monotonic() < deadline, "the running job's slurmstepd was not found"
            time.sleep(0.2)
        assert outsider.pid not in ours and pid_alive(outsider.pid)
        cluster.end_jobs(timeout=60)
        assert not any(pid_alive(pid) for pid in ours), "a step daemon of the cluster outlived end_jobs()"
        assert pid_alive(outsider.pid), "end_jobs() killed a slurmstepd that is not the cluster's"
        assert cluster.wait(job, timeout=60)["JobState"] == "CANCELLED"
    finally:
        outsider.kill()
        outsider.wait()


def test_cluster_start_is_idempotent(cluster: LocalSlurmCluster) -> None:
    before = cluster._pids()
    assert cluster.start()._pids() == before and cluster.running()
