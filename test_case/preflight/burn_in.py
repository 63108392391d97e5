"""The burn-in (``--burn-in S``): every device of the node under a steady matmul load for S seconds
while the node task samples its GPUs' clocks, temperature, power and clock event reasons.

* `run_load` (in each worker, every device at once, as in training): bf16 8192^3 matmuls on a GPU
  (fp32 1024^3 on a CPU) in windows of about a second; the TFLOP/s of each window.
* `Sampler` (in the node task, beside its workers): ``nvidia-smi -q -d PERFORMANCE,CLOCK,TEMPERATURE,POWER``
  about every second (`test_case.health.clocks.read_sample`), until every worker of the node has
  marked its load done (`done_marker`), so that the bandwidth tests after it run undisturbed.
* `burn_in_checks`: the samples taken while every device was loaded, past a warm-up, judged per GPU
  (`test_case.health.clocks.findings`: ``health.clocks`` and a check per finding, with its class and
  evidence), and ``burn_in``: the slowest device's sustained TFLOP/s (the median of its windows past the
  warm-up) against its own short matmul before the burn-in. A GPU that sustains less than
  ``1 - burn_in_drop_tolerance`` of its burst throughput fails: it cannot hold its clocks under a load
  of seconds. CPU nodes record the figure and are not judged by it (their cores are shared).
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_case.health import clocks
from test_case.preflight.expectations import Expectations
from test_case.preflight.host_health import finding_checks
from test_case.preflight.records import Check

Checks = dict[str, Check]
WINDOW_S = 1.0
SAMPLE_EVERY_S = 1.0


def warm_up_s(seconds: float) -> float:
    """The start of a burn-in that is not judged: clocks and temperatures settle."""
    return min(5.0, seconds / 4)


@dataclass
class Load:
    """One device's burn-in: when it ran and the TFLOP/s of each window."""

    start: float  # time.time()
    end: float
    window_tflops: list[float]

    def sustained(self) -> float:
        """The median of the windows past the warm-up (all of them when the burn-in is short)."""
        skip = int(warm_up_s(self.end - self.start) / WINDOW_S)
        kept = self.window_tflops[skip:] or self.window_tflops
        return statistics.median(kept) if kept else 0.0


def done_marker(parts: Path, host: str, local_rank: int) -> Path:
    """The file a worker writes when its load is over: the node task's sampler stops once all are there."""
    return parts / f"burn-in-done-{host}-{local_rank}"


def run_load(device: Any, seconds: float) -> Load:
    """Matmuls on ``device`` for ``seconds``, timed per window of about `WINDOW_S`."""
    import torch

    cuda = device.type == "cuda"
    n, dtype = (8192, torch.bfloat16) if cuda else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    windows: list[float] = []
    start = time.time()
    while time.time() - start < seconds:
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < WINDOW_S:
            for _ in range(5):
                a @ b
            count += 5
            sync()
        windows.append(2 * n**3 * count / (time.perf_counter() - began) / 1e12)
    return Load(start, time.time(), windows)


class Sampler:
    """``nvidia-smi`` read about every `SAMPLE_EVERY_S` in a thread, from `start` until `stop` (or until
    ``done()`` says the burn-in is over, so that it does not disturb the bandwidth tests after it)."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S, done: Callable[[], bool] | None = None) -> None:
        self.every_s = every_s
        self.done = done or (lambda: False)
        self.names: dict[str, str] = {}
        self._samples: list[clocks.GpuSample] = []
        self._calls = 0  # how many reads answered
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="burn-in-sampler", daemon=True)

    def _run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return  # a CPU node: nothing to sample
        self.names = clocks.read_names()
        while not self._stopped.is_set() and not self.done():
            began = time.monotonic()
            read = clocks.read_sample(self.names)  # None: this read failed (a busy driver); the next may not
            if read:
                with self._lock:
                    self._samples += read
                    self._calls += 1
            self._stopped.wait(max(0.0, self.every_s - (time.monotonic() - began)))

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[clocks.GpuSample]:
        """The samples so far (a copy: a read still running when this returns adds nothing to it)."""
        self._stopped.set()
        self._thread.join(timeout=45)  # one read is at most two nvidia-smi calls of 20 s
        with self._lock:
            return list(self._samples)


def burn_in_checks(
    loads: list[Load],
    bursts: list[float],
    samples: list[clocks.GpuSample] | None,
    exp: Expectations,
    host: str,
    gpus: bool,
) -> Checks:
    """``burn_in`` and the clocks' checks of one node from its devices' loads (with their burst matmul
    TFLOP/s, in the same order) and its node task's samples (None: nothing could sample them)."""
    if not loads:
        return {"burn_in": Check("fail", None, "every device loaded", "", "no worker reported a burn-in", "")}
    seconds = statistics.median(x.end - x.start for x in loads)
    start = max(x.start for x in loads) + warm_up_s(seconds)  # every device loaded, clocks settled
    end = min(x.end for x in loads)
    ratios = [x.sustained() / burst for x, burst in zip(loads, bursts, strict=True) if burst > 0]
    slowest = min(x.sustained() for x in loads)
    worst = min(ratios, default=1.0)
    floor = 1 - exp.burn_in_drop_tolerance
    detail = (
        f"{len(loads)} device(s) under load for {seconds:.0f} s in {WINDOW_S:g} s windows; sustained TFLOP/s per "
        f"device {', '.join(f'{x.sustained():.3g}' for x in loads)}; the lowest is {worst:.0%} of its own short matmul"
    )
    if gpus:
        ok = worst >= floor
        check = Check(
            "pass" if ok else "fail",
            round(slowest, 3),
            f">= {floor:.0%} of the short matmul",
            "TFLOP/s",
            detail,
            ""
            if ok
            else "a GPU cannot hold its throughput under a load of seconds (clocks, power or cooling: see "
            "health.clocks): reset it and run again, else drain "
            f"{host} (scontrol update nodename={host} state=drain reason=burn-in)",
        )
    else:
        check = Check("skip", round(slowest, 3), None, "TFLOP/s", detail + "; not judged on CPU nodes (shared cores)")
    checks = {"burn_in": check}
    if samples is None:
        how = "nvidia-smi not on PATH or it read no GPU: clocks, temperature and power not sampled"
        return checks | finding_checks("clocks", None, how, host)
    loaded = [s for s in samples if start <= s.at and (s.until or s.at) <= end]  # read wholly under load
    how = (
        f"nvidia-smi {' '.join(clocks.QUERY)} every {SAMPLE_EVERY_S:g} s: {len(loaded)} GPU sample(s) "
        f"in the {max(0.0, end - start):.0f} s every device was loaded"
    )
    found = clocks.findings(loaded, exp.clock_thresholds()) if loaded else None
    return checks | finding_checks("clocks", found, how if loaded else how + " (burn-in too short to judge)", host)
