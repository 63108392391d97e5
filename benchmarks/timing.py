"""Wall time and peak memory of one command, run in a fresh process: what every benchmark measures.

Peak memory is the largest total memory of the command and all its descendants at one time, sampled
from /proc every 100 ms: the proportional set size of each (a page that a forked worker still shares
with its parent counts once in all, not once per process; the resident set where the kernel has no
smaps_rollup), and never less than the largest single process's peak resident set from
``getrusage``. Where /proc is missing, only the latter is measured.
"""

from __future__ import annotations

import subprocess
import sys

WRAPPER = """
import os, resource, subprocess, sys, tempfile, time

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return pids


def memory_mb(pids):
    total = 0.0
    for p in pids:
        try:  # proportional set size: a page shared by n processes counts 1/n in each
            with open(f"/proc/{p}/smaps_rollup") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024
        except (OSError, StopIteration, ValueError):
            try:
                with open(f"/proc/{p}/statm") as fh:
                    total += int(fh.read().split()[1]) * PAGE_MB
            except (OSError, IndexError, ValueError):
                pass
    return total


err = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty command cannot fill it and stall
t = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=err, text=True)
peak = 0.0
while proc.poll() is None:
    peak = max(peak, memory_mb(tree(proc.pid)))
    time.sleep(0.1)  # reading smaps_rollup costs ~2 ms per 500 MB process: keep the sampler light
seconds = time.perf_counter() - t
err.seek(0)
stderr = err.read()
peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
print(seconds, peak, proc.returncode)
sys.stderr.write(stderr[-2000:] if proc.returncode else "")
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak memory (MB, all processes of ``cmd`` together); exits with its stderr if it fails."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env, check=True)
    seconds, rss, rc = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {rc}:\n{out.stderr}")
    return float(seconds), float(rss)
