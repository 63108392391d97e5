"""The job's start and end lines: env.sh's bash writer against the one Python definition (test_case.job_lines).

Every batch script writes its first and last line through env.sh (``job_start``, ``job_end``); the
restart decisions and the report read them with `test_case.job_lines.parse`. These tests run the
writer for real (a bash that sources env.sh, exits, is stopped by SIGTERM) and read its lines back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from test_case import job_lines
from test_case.job_lines import JobEnd, JobStart
from tests.conftest import REPO_ROOT

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def _bash(body: str, **env: str) -> subprocess.Popen[str]:
    script = f'set -euo pipefail; SCRIPT=t; source "{REPO_ROOT}/slurm-scripts/env.sh"; {body}'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return subprocess.Popen(
        ["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**clean, **env}
    )


def _lines(body: str, **env: str) -> tuple[int, list[str]]:
    proc = _bash(body, **env)
    out, err = proc.communicate(timeout=60)
    assert err == "", err
    return proc.returncode, out.splitlines()


@pytest.mark.parametrize(
    ("body", "code", "why"),
    [
        ("job_start; exit 3", 3, None),
        (
            'job_start; job_end 2 "training failed; its step exited with 1"; exit 2',
            2,
            "training failed; its step exited with 1",
        ),
        ("job_start; true", 0, None),
    ],
)
def test_the_written_lines_are_the_python_definitions(body: str, code: int, why: str | None) -> None:
    rc, lines = _lines(body, JOB_ID="42", SLURM_RESTART_COUNT="2", SLURM_JOB_NODELIST="node[1-2]")
    assert rc == code and len(lines) == 2, lines
    start, end = (job_lines.parse(line) for line in lines)
    assert isinstance(start, JobStart) and isinstance(end, JobEnd), lines
    assert (start.job_id, start.start, start.nodes) == ("42", 2, "node[1-2]")
    assert (end.job_id, end.exit_code, end.why) == ("42", code, why) and 0 <= end.seconds < 60
    assert [start.line(), end.line()] == lines  # the same fields in the same form, both ways
    assert re.fullmatch(STAMP, start.time) and re.fullmatch(STAMP, end.time)


def test_a_job_stopped_by_sigterm_says_so_once_and_dies_of_the_signal(tmp_path: Path) -> None:
    pid_file = tmp_path / "sleep.pid"
    body = f'job_start; sleep 30 >/dev/null 2>&1 & echo "$!" > {pid_file}; wait'
    proc = _bash(body, JOB_ID="local-1", SLURM_JOB_NODELIST="n1")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert isinstance(job_lines.parse(first.rstrip("\n")), JobStart)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the script's own child, which the signal left
    assert proc.returncode == -signal.SIGTERM and err == ""
    (last,) = out.splitlines()
    end = job_lines.parse(last)
    assert isinstance(end, JobEnd) and (end.exit_code, end.why) == (143, "stopped by SIGTERM"), last


def test_a_start_without_slurm_names_this_host_and_start_0() -> None:
    rc, lines = _lines("job_start", JOB_ID="local-2")
    start = job_lines.parse(lines[0])
    assert rc == 0 and isinstance(start, JobStart) and (start.start, start.nodes) == (0, os.uname().nodename)


def test_lines_that_only_look_like_job_lines_are_not() -> None:
    assert job_lines.parse("[2026-12-05T10:00:00+00:00] job 7 start on node1") is None  # an old preflight's
    assert job_lines.parse("[2026-12-05T10:00:00+00:00] job 7 end: exit code x after 3 s") is None
    old = job_lines.parse("[2026-12-05T10:00:00+00:00] job 7 end: exit code 0 after 3 s")  # seconds only: older logs
    assert old == JobEnd("2026-12-05T10:00:00+00:00", "7", 0, None, 3)
