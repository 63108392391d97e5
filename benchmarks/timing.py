"""Wall time and peak memory of one command, run in a fresh process: what every benchmark measures."""

from __future__ import annotations

import subprocess
import sys

WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(time.perf_counter() - t, rss, r.returncode)
sys.stderr.write(r.stderr[-2000:] if r.returncode else "")
"""


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd``; exits with its stderr if it fails."""
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, env=env, check=True)
    seconds, rss, rc = out.stdout.split()
    if int(rc) != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... exited {rc}:\n{out.stderr}")
    return float(seconds), float(rss)
