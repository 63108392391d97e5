"""Benchmark: `report.py` on a large Composer log against a bare Python loop over the same lines.

    python benchmarks/report_speed.py [--size-gb 1.0] [--repeats 3] [--workdir DIR]

Writes a rank-prefixed log of ``--size-gb`` (two nodes' blocks interleaved as ``srun -l`` prints
them: the 24 metric lines Composer 0.32 logs per batch for the tiny MPT, throughput once the
speed window is full, a logging line every 50 batches), then runs, alternately and each in a fresh
process, ``--repeats`` times:

* bare: ``for line in open(path, encoding="utf-8", errors="replace"): n += 1``
* report: ``python report.py LOG --no-plots --out DIR`` (all CPUs), and the same with ``--jobs 1``

and prints the median wall time and peak memory of each (all processes of the command together,
see `benchmarks.timing`) and their ratio. Targets (issue 5): report time at most 2.5x the bare
loop, report peak memory under 500 MB. The report uses every CPU (``--jobs``); the bare loop one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.timing import timed  # noqa: E402

BLOCK = """\
{r}: [batch={n}/{t}]:
{r}: \t Train time/batch: {p}
{r}: \t Train time/sample: {s}
{r}: \t Train time/batch_in_epoch: {p}
{r}: \t Train time/sample_in_epoch: {s}
{r}: \t Train time/token: {k}
{r}: \t Train time/token_in_epoch: {k}
{r}: \t Train trainer/device_train_microbatch_size: 8
{r}: \t Train loss/train/total: {loss:.4f}
{r}: \t Train metrics/train/LanguageCrossEntropy: {loss:.4f}
{r}: \t Train metrics/train/LanguagePerplexity: 702.4106
{r}: \t Train metrics/train/TokenAccuracy: 0.0945
"""
THROUGHPUT = """\
{r}: \t Train throughput/batches_per_sec: 6.3015
{r}: \t Train throughput/samples_per_sec: 100.8237
{r}: \t Train throughput/device/batches_per_sec: 3.1507
{r}: \t Train throughput/device/samples_per_sec: 50.4118
{r}: \t Train throughput/tokens_per_sec: 12905.4293
{r}: \t Train throughput/device/tokens_per_sec: 6452.7146
{r}: \t Train throughput/flops_per_sec: 76168876112.2898
{r}: \t Train throughput/device/flops_per_sec: 38084438056.1449
"""
TAIL = """\
{r}: \t Train time/train: 0.0014
{r}: \t Train time/val: 0.0000
{r}: \t Train time/total: 0.0014
{r}: \t Train lr-DecoupledAdamW/group0: 0.0018
"""
NOISE = "{r}: 2026-11-22 05:18:11,907: rank{r}[4613][MainThread]: INFO: composer.trainer.trainer: step {n}\n"
HEADER = "[run-header] job_id: 1\n[run-header] world_size: 2\n[run-header] gpus_per_node: 0\nn_params: 918144\n"


def write_log(path: Path, size_bytes: int) -> int:
    """Write the synthetic log; return the number of batches in it."""
    batches = 0
    with path.open("w", encoding="utf-8") as fh:
        fh.write(HEADER)
        written, total = 0, 10**9
        chunk: list[str] = []
        while written < size_bytes:
            batches += 1
            for r in (0, 1):
                v = {
                    "r": r,
                    "n": batches,
                    "t": total,
                    "p": batches - 1,
                    "s": 16 * batches,
                    "k": 2048 * batches,
                    "loss": 6 + 1 / batches,
                }
                text = BLOCK.format(**v) + (THROUGHPUT.format(**v) if batches > 10 else "") + TAIL.format(**v)
                if batches % 50 == 0:
                    text += NOISE.format(**v)
                chunk.append(text)
                written += len(text)
            if len(chunk) >= 2000:
                fh.write("".join(chunk))
                chunk.clear()
        fh.write("".join(chunk))
    return batches


BARE = """
import json, resource, sys, time
t = time.perf_counter()
n = 0
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    n += 1
print(json.dumps({"s": time.perf_counter() - t, "lines": n}))
"""


def main() -> int:
    """Write the log, time both sides alternately, print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="report-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "composer-large.log"
    if not log.exists() or abs(log.stat().st_size - args.size_gb * 1e9) > 5e7:
        t = time.perf_counter()
        batches = write_log(log, int(args.size_gb * 1e9))
        print(
            f"wrote {log} ({log.stat().st_size / 1e9:.2f} GB, {batches:,} batches x 2 ranks) in "
            f"{time.perf_counter() - t:.0f} s"
        )
    command = [sys.executable, str(REPO / "report.py"), str(log), "--no-plots", "--out", str(work / "out")]
    bare, report, single = [], [], []
    for i in range(args.repeats):
        bare.append(timed([sys.executable, "-c", BARE, str(log)]))
        report.append(timed(command))
        single.append(timed([*command, "--jobs", "1"]))
        print(
            f"run {i + 1}: bare {bare[-1][0]:.2f} s {bare[-1][1]:.0f} MB | report {report[-1][0]:.2f} s "
            f"{report[-1][1]:.0f} MB | report --jobs 1 {single[-1][0]:.2f} s {single[-1][1]:.0f} MB"
        )
    b, r = statistics.median(s for s, _ in bare), statistics.median(s for s, _ in report)
    one = statistics.median(s for s, _ in single)
    rss, rss_one = max(m for _, m in report), max(m for _, m in single)
    doc = json.loads((work / "out" / "report.json").read_text())
    print(
        f"median: bare loop {b:.2f} s, report {r:.2f} s, ratio {r / b:.2f}x (target <= 2.5x); "
        f"report peak memory {rss:.0f} MB (target < 500 MB); runs found: {len(doc['runs'])}, "
        f"last batch {doc['runs'][0]['last_batch']:,}\n"
        f"one process (--jobs 1): {one:.2f} s, ratio {one / b:.2f}x, peak memory {rss_one:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
