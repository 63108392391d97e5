"""Is a run whose log has no end line still running, or was it killed? Asked of what the report can
see, never of the log's age (a large final save is silent for minutes).

- A Slurm job: ``squeue -h -j ID -o %T`` where ``squeue`` is on PATH. Listed (RUNNING, PENDING,
  COMPLETING, ...): running. Not listed, or "Invalid job id": the job has ended, so a log without
  its end line was cut short (``scancel``, a node lost, the job killed with its batch script).
- A run without Slurm (job id ``local-<time>-<pid>``, the training script's pid): on the host the
  run header names, ``/proc/<pid>/cmdline`` of a process that is still the training script (not a
  zombie, not a reused pid), or any process whose environment carries its ``LOCAL_JOB_ID`` (the
  script killed alone, its ranks training on): running, else gone.
- Anything else (another host, no ``squeue``): unknown, and the report says it cannot tell.

`last_time` is when the log last said anything with a time (the job's start line, a batch end, a
save), for the line "the log stops at HH:MM:SS". `refine` turns the report's ``unfinished`` runs
into ``running`` or ``killed`` where it can tell, and names a job killed during start-up.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Literal

from test_case.report.log_lines import ParsedLog
from test_case.report.records import JobWithoutTraining, RunSummary
from test_case.timing_events import TimingEvent, WallEvent

LOCAL_ID = re.compile(r"^local-\d{8}-\d{6}-(\d+)$")
TRAINING_SCRIPT = "2.train-mpt-manual-distributed"  # what the local run's pid must still be running
SQUEUE_TIMEOUT_S = 10.0
# squeue's states of a job that has ended (listed only with SQUEUE_STATES or -t asking for them)
ENDED = frozenset(
    (
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    )
)


@dataclass(frozen=True)
class Liveness:
    """Whether the job behind a log without an end line still runs, and how the report knows."""

    state: Literal["running", "gone", "unknown"]
    how: str  # "Slurm job 12 is RUNNING", "pid 4711 is not running on host", "no squeue here to ask"


def liveness(job_id: str | None, host: str | None, run_name: str | None = None) -> Liveness:
    """Ask Slurm or this host's processes about ``job_id`` (`Liveness`); ``run_name``
    (``<job-name>-<job-id>``) tells the run's Slurm job from another cluster's job of the same id."""
    if not job_id:
        return Liveness("unknown", "the log names no job")
    local = LOCAL_ID.match(job_id)
    if local:
        return _local(int(local.group(1)), host, job_id)
    if job_id.startswith("local-"):
        return Liveness("unknown", f"{job_id} carries no pid (an older suite)")
    return _slurm(job_id, run_name)


def _local(pid: int, host: str | None, job_id: str) -> Liveness:
    here = socket.gethostname()
    if host and host != here:
        return Liveness("unknown", f"the run was on {host}, not on this host ({here})")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        gone = Liveness("gone", f"pid {pid} is not running on {here}")
    else:
        if state in ("Z", "X", "x"):
            gone = Liveness("gone", f"pid {pid} has exited on {here} (a zombie, not reaped yet)")
        elif TRAINING_SCRIPT.encode() not in cmdline:
            gone = Liveness("gone", f"pid {pid} on {here} is another program now (the run's process is gone)")
        else:
            return Liveness("running", f"pid {pid} is running on {here}")
    # the script killed alone (kill -9 of its pid): its launcher and ranks may train on
    if (child := _process_of_run(job_id)) is not None:
        return Liveness("running", f"the script (pid {pid}) is gone, but pid {child} of its run still runs on {here}")
    return gone


def _process_of_run(job_id: str) -> int | None:
    """A live process of this user whose environment carries ``LOCAL_JOB_ID=<job_id>`` (the training
    script exports it to the launcher and every rank), or None."""
    wanted = f"LOCAL_JOB_ID={job_id}".encode()
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if wanted in (pid_dir / "environ").read_bytes().split(b"\0"):
                state = (pid_dir / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state not in ("Z", "X", "x"):
                    return int(pid_dir.name)
        except OSError:
            continue
    return None


def _slurm(job_id: str, run_name: str | None) -> Liveness:
    squeue = shutil.which("squeue")
    if squeue is None:
        return Liveness("unknown", "no squeue here to ask Slurm")
    try:
        out = subprocess.run(
            [squeue, "-h", "-j", job_id, "-o", "%T %j"],
            capture_output=True,
            text=True,
            timeout=SQUEUE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return Liveness("unknown", f"squeue did not answer ({err})")
    states = out.stdout.split()
    if out.returncode == 0 and states and states[0] in ENDED:  # SQUEUE_STATES=all lists ended jobs too
        return Liveness("gone", f"Slurm job {job_id} has ended ({states[0]})")
    if out.returncode == 0 and states:
        name = states[1] if len(states) > 1 else ""
        if run_name and name and run_name != f"{name}-{job_id}":
            return Liveness("unknown", f"Slurm job {job_id} here is another job ({name}): a log of another cluster?")
        return Liveness("running", f"Slurm job {job_id} is {states[0]}")
    if (out.returncode == 0 and not states) or "Invalid job id" in out.stderr:
        return Liveness("gone", f"Slurm job {job_id} is no longer in squeue")
    return Liveness("unknown", f"squeue failed: {(out.stderr.strip().splitlines() or ['no output'])[-1]}")


def last_time(parsed: ParsedLog) -> datetime | None:
    """The latest time the log printed: the job's start and end lines, batch ends, timing events."""
    times: list[datetime] = []
    for mark in parsed.job_marks:
        try:
            times.append(datetime.fromisoformat(mark.time))
        except ValueError:
            continue
    unix = [*parsed.batch_ends.times, *(t for _, e in parsed.timing_events if (t := _time(e)) is not None)]
    if unix:
        times.append(datetime.fromtimestamp(max(unix)).astimezone())
    aware = [t if t.tzinfo else t.astimezone() for t in times]
    return max(aware, default=None)


def _time(event: TimingEvent) -> float | None:
    """A wall-clock event's time (Unix seconds); None for the other events."""
    return event.time if isinstance(event, WallEvent) and isinstance(event.time, float) else None


def refine(runs: list[RunSummary], jobs: list[JobWithoutTraining]) -> list[JobWithoutTraining]:
    """Ask about every run the log leaves ``unfinished`` and every job that did not train and names
    no cause: ``running`` or ``killed`` where Slurm or this host can say (the warning says how it
    knows and where the log stops), the old wording with the reason where nothing can. Returns
    ``jobs`` with a start-up kill named as such."""
    for run in runs:
        if run.status != "unfinished":
            continue
        lv = liveness(run.job_id, _first_host(run.nodelist), run.name)
        where = f"at batch {run.last_batch}/{run.max_duration}" if run.last_batch is not None else "before training"
        stops = _stops(run.log_ends_at)
        old = next((w for w in run.warnings if w.startswith("UNFINISHED")), None)
        if lv.state == "running":
            line = f"RUNNING {where}: {lv.how}; not used for scaling or baselines"
            run.status = "running"
        elif lv.state == "gone":
            line = f"KILLED {where}: no end line, {stops}, and {lv.how}; not used for scaling or baselines"
            run.status, run.failure = "killed", f"killed: no end line, {stops}, and {lv.how}"
        else:
            line = (
                f"UNFINISHED {where} (still running, or the log was cut off: {stops}; cannot tell, {lv.how}); "
                "not used for scaling or baselines"
            )
        run.warnings = [line if w is old else w for w in run.warnings] if old else [*run.warnings, line]
    refined = []
    for job in jobs:
        if (
            job.failure is None
            and (ask := liveness(job.job_id, _first_host(job.nodelist), job.run_name)).state == "gone"
        ):
            job = replace(job, failure=f"killed during start-up: no end line, {_stops(job.log_ends_at)}, and {ask.how}")
        refined.append(job)
    return refined


def _first_host(nodelist: str | None) -> str | None:
    """The host of a run outside Slurm (its nodelist is one host name); None for a hostlist."""
    return nodelist if nodelist and not any(c in nodelist for c in "[],") else None


def _stops(iso: str | None) -> str:
    if not iso:
        return "the log has no time in it"
    when = datetime.fromisoformat(iso)
    return f"the log stops at {when:%H:%M:%S} ({when:%Y-%m-%d})"
