"""Benchmark: `report.py` on 1 GB Composer logs shaped like real runs, against a bare Python loop.

    python -m benchmarks.report_speed [--size-gb 1.0] [--repeats 3] [--workdir DIR] [--only long|restarts]

Both logs are built from a real one: the 2-node ``srun -l`` log of a requeued tiny-MPT job that the
Slurm tests recorded (``tests/data/slurm-2node-requeued-usr1.out.gz``). From it come, verbatim,
each start's preamble (the batch script's start line, the run header, both nodes' launch lines,
warnings, Python logging and both ranks' llm-foundry config dumps), the keys and order of a train
block, the eval section (progress lines of both ranks interleaved, then each rank's metrics) and
the end of a run; only the numbers are generated. Rank 0's rank-timing lines are added as the
callback prints them (`test_case.timing_events`): a ``batch`` line after its block every batch, a
``ranks`` line every 20 batches, ``restore``, ``fit_start`` and ``hosts`` at each start.

* ``long``: one start of a long run (``max_duration`` far away): every batch a block from each of
  the two ranks, throughput once the 10-batch speed window is full, an eval every 1,000 batches,
  a checkpoint save logged every 2,000.
* ``restarts``: one job appended across thousands of short starts, as ``--open-mode=append``
  leaves a crash-looping or often preempted job: each start resumes from the last checkpoint
  (every 10 batches), so batch numbers go back, and is killed 3 to 40 batches later (often before
  the next checkpoint), sometimes in the middle of a block; evals every 20 batches; the speed
  window refills after each resume.

Each log is timed, alternately and in fresh processes, ``--repeats`` times:

* bare: ``for line in open(path, encoding="utf-8", errors="replace"): n += 1``
* report: ``python report.py LOG --no-plots --out DIR`` (all CPUs), and the same with ``--workers 1``

It prints the median wall time and peak memory (all processes of the command together, see
`benchmarks.timing`) of each and their ratios. Targets (1 GB, 2 cores): long run at most 2.5x
the bare loop and under 500 MB; many restarts at most 4x and under 600 MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.timing import timed
from test_case import REPO_ROOT

TEMPLATE = REPO_ROOT / "tests" / "data" / "slurm-2node-requeued-usr1.out.gz"
TARGETS = {"long": (2.5, 500.0), "restarts": (4.0, 600.0)}
WINDOW = 10  # the template's speed_monitor window_size
SAMPLES, SEQ = 16, 128  # the template's global batch and sequence length


@dataclass(frozen=True)
class Template:
    """The parts of the real log that generated logs repeat."""

    preamble: list[str]  # one start, up to its first block (run header, config dumps, logging)
    keys: list[str]  # train metric keys of a block with throughput, in Composer's order
    eval_section: list[str]  # both ranks' eval progress and metrics, as interleaved in the log
    ending: list[str]  # the lines after the last eval of a finished run


def load_template(path: Path = TEMPLATE) -> Template:
    """Cut the real log into the parts above."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    first_block = next(i for i, line in enumerate(lines) if re.match(r"0: \[batch=\d+/\d+\]:$", line))
    last_block = max(i for i, line in enumerate(lines) if re.match(r"0: \[batch=\d+/\d+\]:$", line))
    keys = []  # the last block has them all: the speed window is full
    for line in lines[last_block + 1 :]:
        m = re.match(r"0: \t Train (\S+): ", line)
        if not m:
            break
        keys.append(m.group(1))
    is_eval = ["Eval on eval data" in line or "\t Eval " in line for line in lines]
    first_eval = is_eval.index(True)
    end_eval = is_eval.index(False, first_eval)
    last_eval = len(lines) - 1 - is_eval[::-1].index(True)
    return Template(
        preamble=lines[:first_block],
        keys=keys,
        eval_section=lines[first_eval:end_eval],
        ending=lines[last_eval + 1 :],
    )


def block(rank: int, batch: int, total: int, keys: list[str], rng: random.Random, measured: bool) -> str:
    """Rank ``rank``'s train block after ``batch`` of ``total``, with the template's keys."""
    done = batch - 1  # Composer prints the counters of the batches before this one
    loss = 6.0 + 3.0 / batch**0.5 + rng.uniform(-0.05, 0.05)
    speed = 6.0 + rng.uniform(-0.2, 0.2)  # batches/s
    values = {
        "time/batch": f"{done}",
        "time/sample": f"{done * SAMPLES}",
        "time/batch_in_epoch": f"{done}",
        "time/sample_in_epoch": f"{done * SAMPLES}",
        "time/token": f"{done * SAMPLES * SEQ}",
        "time/token_in_epoch": f"{done * SAMPLES * SEQ}",
        "loss/train/total": f"{loss:.4f}",
        "metrics/train/LanguageCrossEntropy": f"{loss:.4f}",
        "metrics/train/LanguagePerplexity": f"{2.718281828 ** min(loss, 50):.4f}",
        "throughput/batches_per_sec": f"{speed:.4f}",
        "throughput/samples_per_sec": f"{speed * SAMPLES:.4f}",
        "throughput/device/batches_per_sec": f"{speed / 2:.4f}",
        "throughput/device/samples_per_sec": f"{speed * SAMPLES / 2:.4f}",
        "throughput/tokens_per_sec": f"{speed * SAMPLES * SEQ:.4f}",
        "throughput/device/tokens_per_sec": f"{speed * SAMPLES * SEQ / 2:.4f}",
        "throughput/flops_per_sec": f"{speed * 1.2e10:.4f}",
        "throughput/device/flops_per_sec": f"{speed * 6e9:.4f}",
        "time/train": f"{done / speed / 3600:.4f}",
        "time/total": f"{done / speed / 3600:.4f}",
        "lr-DecoupledAdamW/group0": f"{0.003 * (1 - batch / (total + 1)):.4f}",
        "time/remaining_estimate": f"{(total - batch) / speed / 3600:.4f}",
    }
    lines = [f"{rank}: [batch={batch}/{total}]:"]
    for key in keys:
        if key.startswith("throughput/") and not measured:
            continue
        lines.append(f"{rank}: \t Train {key}: {values.get(key, '0.0000')}")
    return "\n".join(lines) + "\n"


def timing(batch: int, rng: random.Random) -> str:
    """Rank 0's rank-timing lines after ``batch``: its end, and every 20 batches both ranks' medians."""
    text = f'0: [timing] {{"kind":"batch","batch":{batch},"time":{1796000000 + batch * 0.17:.3f}}}\n'
    if batch % 20 == 0:
        a, b = rng.uniform(0.02, 0.025), rng.uniform(0.02, 0.025)
        text += (
            f'0: [timing] {{"kind":"ranks","batch":{batch},"batches":20,"compute_s":[{a:.6f},{b:.6f}],'
            f'"slowest_rank":{int(b > a)},"slowest_node":"node{1 + int(b > a)}","ratio_to_median":'
            f"{max(a, b) / ((a + b) / 2):.4f}}}\n"
        )
    return text


def start_timing(batch: int) -> str:
    """Rank 0's rank-timing lines at the start of training, resuming after ``batch``."""
    when = 1796000000 + batch * 0.17
    lines = [
        f'0: [timing] {{"kind":"restore","batch":{batch},"time":{when:.3f},"began":{when - 0.4:.3f}}}' if batch else "",
        f'0: [timing] {{"kind":"fit_start","batch":{batch},"time":{when:.3f}}}',
        '0: [timing] {"kind":"hosts","hosts":["node1","node2"]}',
    ]
    return "".join(line + "\n" for line in lines if line)


def eval_section(template: Template, rng: random.Random) -> str:
    """The template's eval section with new values."""
    out = []
    for line in template.eval_section:
        m = re.match(r"(\d: \t Eval \S+: )", line)
        out.append(f"{m.group(1)}{rng.uniform(0.05, 8):.4f}" if m else line)
    return "\n".join(out) + "\n"


def start_preamble(template: Template, job: int, start: int) -> str:
    """The template's preamble as start ``start`` of job ``job`` writes it."""
    text = "\n".join(template.preamble) + "\n"
    text = text.replace("job 4 start 0", f"job {job} start {start}")
    return text.replace("restart_count: 0", f"restart_count: {start}")


def long_run(template: Template, size: int, rng: random.Random) -> Iterator[str]:
    """Text of one start of a long run, until about ``size`` bytes."""
    total = 10**7
    yield start_preamble(template, 4, 0) + start_timing(0)
    written, batch = 0, 0
    while written < size:
        batch += 1
        parts = [block(r, batch, total, template.keys, rng, measured=batch > WINDOW) for r in (0, 1)]
        parts.insert(1, timing(batch, rng))
        if batch % 1000 == 0:
            parts.append(eval_section(template, rng))
        if batch % 2000 == 0:
            parts.append(
                f"0: 2026-11-22 06:{batch % 60:02d}:00,000: rank0[10161][MainThread]: INFO: "
                f"composer.callbacks.checkpoint_saver: Uploading checkpoint to ep0-ba{batch}-rank0.pt\n"
            )
        text = "".join(parts)
        written += len(text)
        yield text


def many_restarts(template: Template, size: int, rng: random.Random) -> Iterator[str]:
    """Text of one job's starts, each killed somewhere, until about ``size`` bytes."""
    total, written, start, checkpoint = 10**6, 0, 0, 0
    while written < size:
        parts = [start_preamble(template, 4, start), start_timing(checkpoint)]
        first = checkpoint + 1
        end = min(total, first + rng.randint(3, 40) - 1)  # killed after this batch, or finished
        for batch in range(first, end + 1):
            measured = batch - first >= WINDOW
            parts += [block(0, batch, total, template.keys, rng, measured), timing(batch, rng)]
            parts.append(block(1, batch, total, template.keys, rng, measured))
            if batch % 20 == 0:
                parts.append(eval_section(template, rng))
            if batch % 10 == 0:
                checkpoint = batch
        if end == total:
            parts.append("\n".join(template.ending) + "\n")
            break
        if rng.random() < 0.3:  # killed while printing a block
            parts.append(block(0, end + 1, total, template.keys, rng, True)[: rng.randint(10, 300)] + "\n")
        parts.append("[2026-11-22T05:45:01+00:00] time limit near: requeueing job 4\n")
        start += 1
        text = "".join(parts)
        written += len(text)
        yield text


def write_log(path: Path, kind: str, size: int) -> None:
    """Write the ``kind`` log of about ``size`` bytes (the same bytes on every run)."""
    template, rng = load_template(), random.Random(0)
    chunks = long_run(template, size, rng) if kind == "long" else many_restarts(template, size, rng)
    with path.open("w", encoding="utf-8") as fh:
        buffer: list[str] = []
        for text in chunks:
            buffer.append(text)
            if len(buffer) >= 500:
                fh.write("".join(buffer))
                buffer.clear()
        fh.write("".join(buffer))


BARE = """
import json, sys, time
t = time.perf_counter()
n = 0
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    n += 1
print(json.dumps({"s": time.perf_counter() - t, "lines": n}))
"""


def measure(kind: str, log: Path, out: Path, repeats: int) -> None:
    """Time the bare loop and the report on ``log``; print each run and the medians."""
    command = [sys.executable, str(REPO_ROOT / "report.py"), str(log), "--no-plots", "--out", str(out)]
    bare, report, single = [], [], []
    for i in range(repeats):
        bare.append(timed([sys.executable, "-c", BARE, str(log)]))
        report.append(timed(command))
        single.append(timed([*command, "--workers", "1"]))
        print(
            f"{kind} run {i + 1}: bare {bare[-1][0]:.2f} s {bare[-1][1]:.0f} MB | report {report[-1][0]:.2f} s "
            f"{report[-1][1]:.0f} MB | report --workers 1 {single[-1][0]:.2f} s {single[-1][1]:.0f} MB",
            flush=True,
        )
    b, r = statistics.median(s for s, _ in bare), statistics.median(s for s, _ in report)
    one = statistics.median(s for s, _ in single)
    mem, mem_one = max(m for _, m in report), max(m for _, m in single)
    (run,) = json.loads((out / "report.json").read_text())["runs"]
    ratio_target, mem_target = TARGETS[kind]
    print(
        f"{kind}: median bare loop {b:.2f} s, report {r:.2f} s, ratio {r / b:.2f}x (target <= {ratio_target}x); "
        f"peak memory {mem:.0f} MB (target < {mem_target:.0f} MB)\n"
        f"{kind}: one process (--workers 1) {one:.2f} s, ratio {one / b:.2f}x, peak memory {mem_one:.0f} MB\n"
        f"{kind}: report read {run['last_batch']:,}/{run['max_duration']:,} as the last batch, "
        f"{run['restarts']:,} restarts, eval {sorted(run['eval'])[:1]}, window {run['window_batches']}",
        flush=True,
    )


def main() -> int:
    """Write the logs (once: they are kept in the workdir), time both sides alternately, print medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--only", choices=sorted(TARGETS), default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="report-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gb * 1e9)
    for kind in [args.only] if args.only else sorted(TARGETS):
        log = work / f"composer-{kind}.log"
        if not log.exists() or abs(log.stat().st_size - size) > 5e7:
            t = time.perf_counter()
            write_log(log, kind, size)
            print(f"wrote {log} ({log.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.0f} s", flush=True)
        measure(kind, log, work / f"out-{kind}", args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
