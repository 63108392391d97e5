"""A log without an end line: the report tells a run that still runs from one that was killed by
asking what it can see (a real process on this host, Slurm's squeue), never the log's age, and names
a kill during start-up as such."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from test_case.report.liveness import liveness
from tests.conftest import REPO_ROOT
from tests.test_metrics_and_report import make_log

SCRIPT = "2.train-mpt-manual-distributed.sbatch"


def training_script_stand_in() -> subprocess.Popen[bytes]:
    """A real process whose command line is the training script's, as the local run's pid is."""
    return subprocess.Popen(["bash", "-c", "sleep 120; true", SCRIPT])  # "; true": bash stays, not exec'd


def write_log(folder: Path, pid: int, batches: bool) -> str:
    job = f"local-20261205-120000-{pid}"
    lines = [
        f"[2026-12-05T12:00:00+00:00] job {job} start 0 on {socket.gethostname()}",
        f"[run-header] job_id: {job}",
        f"[run-header] run_name: mpt-train-{job}",
        "[run-header] model: mpt-tiny-cpu",
        f"[run-header] nodelist: {socket.gethostname()}",
        "[run-header] world_size: 2",
    ]
    if batches:
        body = make_log(batches=8)[3:]
        cut = body.index("[batch=6/8]:")
        lines += [*body[:cut], '[timing] {"kind":"batch","batch":5,"time":1796472300.5}']
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"mpt-train_{job}.out").write_text("\n".join(lines) + "\n")
    return job


def report(logs: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "report.py", str(logs), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1, 3), done.stdout + done.stderr  # 1: no run, only a job that did not train
    return dict(json.loads((out / "report.json").read_text()))


def test_a_live_run_is_running_and_the_same_run_killed_with_kill_9_is_killed(tmp_path: Path) -> None:
    proc = training_script_stand_in()
    try:
        write_log(tmp_path / "logs", proc.pid, batches=True)
        (run,) = report(tmp_path / "logs", tmp_path / "r1")["runs"]
        assert run["status"] == "running", run["warnings"]
        assert f"RUNNING at batch 5/8: pid {proc.pid} is running on {socket.gethostname()}" in run["warnings"][0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        (run,) = report(tmp_path / "logs", tmp_path / "r2")["runs"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run["status"] == "killed"
    stops = time.strftime("%H:%M:%S (%Y-%m-%d)", time.localtime(1796472300.5))
    assert run["warnings"][0] == (
        f"KILLED at batch 5/8: no end line, the log stops at {stops}, and pid {proc.pid} is not running on "
        f"{socket.gethostname()}; not used for scaling or baselines"
    )
    assert run["failure"].startswith("killed: no end line")


def test_a_kill_during_start_up_is_named_and_a_starting_run_is_not(tmp_path: Path) -> None:
    proc = training_script_stand_in()
    try:
        job = write_log(tmp_path / "logs", proc.pid, batches=False)
        (starting,) = report(tmp_path / "logs", tmp_path / "r1")["jobs_without_training"]
        assert starting["failure"] is None
        proc.kill()
        proc.wait()
        (killed,) = report(tmp_path / "logs", tmp_path / "r2")["jobs_without_training"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed["job_id"] == job
    assert killed["failure"] == (
        "killed during start-up: no end line, the log stops at 12:00:00 (2026-12-05), and pid "
        f"{proc.pid} is not running on {socket.gethostname()}"
    )


def test_a_script_killed_alone_while_its_ranks_train_on_is_still_running() -> None:
    """kill -9 of the script's pid leaves the launcher and its ranks training (they carry LOCAL_JOB_ID)."""
    script = training_script_stand_in()
    job = f"local-20261205-120000-{script.pid}"
    rank = subprocess.Popen(["sleep", "120"], env={**os.environ, "LOCAL_JOB_ID": job})
    try:
        script.kill()
        script.wait()
        alive = liveness(job, socket.gethostname())
        rank.kill()
        rank.wait()
        gone = liveness(job, socket.gethostname())
    finally:
        for proc in (script, rank):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert alive.state == "running" and f"but pid {rank.pid} of its run still runs" in alive.how
    assert gone.state == "gone" and gone.how == f"pid {script.pid} is not running on {socket.gethostname()}"


def test_what_cannot_be_asked_stays_unknown(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])  # a live pid that is not the training script: a reused pid
    try:
        reused = liveness(f"local-20261205-120000-{sleeper.pid}", socket.gethostname())
    finally:
        sleeper.kill()
        sleeper.wait()
    assert reused.state == "gone" and "is another program now" in reused.how
    assert liveness("local-20261205-120000-1", "another-host").state == "unknown"
    assert liveness("local-20261205-120000", None).state == "unknown"  # an older suite's id: no pid
    empty_path = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "from test_case.report.liveness import liveness; print(liveness('1234', None))"],
        cwd=REPO_ROOT,
        env=empty_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "state='unknown', how='no squeue here to ask Slurm'" in done.stdout
