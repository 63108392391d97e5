"""Benchmark: what the ``rank_timing`` callback costs a training step (target: under 1 %).

    python -m benchmarks.rank_timing_overhead [--pairs 3] [--batches 80] [--workdir DIR]

Two measurements, printed side by side:

1. End to end: the training script without Slurm (the tiny MPT on this machine's CPU, real
   llm-foundry and Composer), run in pairs with the callback on and off
   (``callbacks.rank_timing.enabled=false``), alternately, in fresh processes; each run's median step
   time over its steady-state window as the report computes it. Printed: each pair, the median of
   each side and their ratio. CPU step times here vary by a few percent from run to run, more than
   the callback costs, so this bounds the overhead rather than measures it.
2. The callback's own work per batch, timed directly in this process with the real objects: the
   pair of forward hooks it puts on each transformer block (timed on an empty module, with and
   without them, alternately: a forward pass of the model is too noisy to show microseconds), times
   the blocks of the real tiny model; the clock read and the batch line printed at the end of a
   batch; and the gather of the ranks' medians (``all_gather_object`` in a 1-process gloo group)
   once per ``every_n_batches``. Printed: microseconds per batch and that as a share of the step
   time from 1. On GPUs each block adds two CUDA event records instead of two clock reads (not
   measured here: no GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train(workdir: Path, data: Path, tokenizer: Path, batches: int, enabled: bool, n: int) -> float:
    """One run of the training script; its median step time (s)."""
    from test_case.report.log_reading import parse_log_file
    from test_case.report.metrics import summarise_run

    run = Path(tempfile.mkdtemp(prefix=f"run{n}-", dir=workdir))  # a fresh run: nothing to resume
    logs = run / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env |= {"DATA_ROOT": str(data), "TOKENIZER": str(tokenizer), "SAVE_ROOT": str(run / "ckpt")}
    env |= {"LOG_DIR": str(logs), "RUN_NAME": f"overhead-{n}"}
    overrides = [f"max_duration={batches}ba", "save_interval=1000ba", "eval_interval=1000ba"]
    overrides.append(f"callbacks.rank_timing.enabled={str(enabled).lower()}")
    script = REPO / "slurm-scripts" / "2.train-mpt-manual-distributed.sbatch"
    subprocess.run(["bash", str(script), "mpt-tiny-cpu", *overrides], env=env, check=True, capture_output=True)
    (log,) = logs.glob("mpt-train_*.out")
    step = summarise_run(parse_log_file(log)).step_time_median_s
    assert step is not None, f"no step time in {log}"
    return step


def callback_cost_us(every: int, rounds: int = 200) -> dict[str, float]:
    """Microseconds per batch of the callback's own work (module docstring, 2)."""
    import torch
    import torch.distributed as tdist
    from llmfoundry.models.mpt import MPTConfig, MPTForCausalLM

    from test_case.timing_events import RankTimes, WallEvent, line
    from test_case.training.rank_timing import ComputeClock, transformer_blocks

    torch.set_num_threads(1)
    config = MPTConfig(d_model=128, n_heads=4, n_layers=2, expansion_ratio=4, max_seq_len=128, vocab_size=4096)
    config.attn_config["attn_impl"] = "torch"
    blocks = transformer_blocks(MPTForCausalLM(config))  # the real model's blocks, as the callback finds them
    clock = ComputeClock(cuda=False)
    # One block's hooks cost the same on any module: timed on an empty one, where nothing else takes time.
    empty, x = torch.nn.Identity(), torch.zeros(1)

    def calls(n: int) -> float:
        began = time.perf_counter()
        for _ in range(n):
            empty(x)
        return (time.perf_counter() - began) / n

    plain: list[float] = []
    hooked: list[float] = []
    for _ in range(15):
        plain.append(calls(rounds * 100))
        handles = [empty.register_forward_pre_hook(lambda m, a: clock.start())]
        handles.append(empty.register_forward_hook(lambda m, a, o: clock.stop()))
        hooked.append(calls(rounds * 100))
        for h in handles:
            h.remove()
    per_block = statistics.median(hooked) - statistics.median(plain)
    sink = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(sink):
        for b in range(rounds):
            clock.take()
            print(line(WallEvent("batch", b, round(time.time(), 3))), flush=True)
    batch_end = (time.perf_counter() - began) / rounds
    with tempfile.TemporaryDirectory() as store:
        tdist.init_process_group("gloo", init_method=f"file://{store}/rendezvous", rank=0, world_size=1)
        try:
            began = time.perf_counter()
            for _ in range(rounds):
                medians = [0.02]
                tdist.all_gather_object(medians, 0.02)
                with contextlib.redirect_stdout(sink):
                    print(line(RankTimes("ranks", 20, every, medians, 0, "node1", 1.0)), flush=True)
            gather = (time.perf_counter() - began) / rounds
        finally:
            tdist.destroy_process_group()
    return {
        "hooks": 1e6 * per_block * len(blocks),
        "per_block": 1e6 * per_block,
        "batch_end": 1e6 * batch_end,
        "gather_per_batch": 1e6 * gather / every,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--batches", type=int, default=80)
    p.add_argument("--every", type=int, default=20, help="callbacks.rank_timing.every_n_batches")
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rank-timing-"))
    subprocess.run(
        [sys.executable, "-m", "test_case.demo.assets", "--out", str(workdir / "assets")],
        check=True,
        capture_output=True,
    )
    data, tokenizer = workdir / "data", workdir / "assets" / "tokenizer"
    if not (data / "train_small" / "index.json").is_file():
        env = os.environ | {"C4_INPUT": str(workdir / "assets" / "c4-sample"), "DATA_ROOT": str(data)}
        env |= {"TOKENIZER": str(tokenizer), "CONCAT_TOKENS": "128", "WORKERS": "2", "LOG_DIR": str(workdir / "pre")}
        script = REPO / "slurm-scripts" / "1.c4-preprocess.sbatch"
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    on: list[float] = []
    off: list[float] = []
    for i in range(args.pairs):
        for enabled in (True, False) if i % 2 == 0 else (False, True):
            step = train(workdir, data, tokenizer, args.batches, enabled, len(on) + len(off))
            (on if enabled else off).append(step)
        print(f"pair {i + 1}: step {on[-1]:.4f} s with rank timing, {off[-1]:.4f} s without")
    step_on, step_off = statistics.median(on), statistics.median(off)
    print(f"end to end ({args.pairs} pairs of {args.batches} batches, the tiny MPT on CPU):")
    print(f"  median step {step_on:.4f} s on, {step_off:.4f} s off: ratio {step_on / step_off:.4f}")
    cost = callback_cost_us(args.every)
    per_batch = cost["hooks"] + cost["batch_end"] + cost["gather_per_batch"]
    print("the callback's own work per batch (this process, the real tiny model, 2 blocks, 1 micro-batch):")
    hooks, per_block, batch_end = cost["hooks"], cost["per_block"], cost["batch_end"]
    print(f"  block hooks {hooks:.1f} us ({per_block:.2f} us per block), batch end {batch_end:.1f} us,")
    print(
        f"  gather every {args.every} batches {cost['gather_per_batch']:.1f} us per batch: {per_batch:.1f} us in all,"
    )
    print(f"  {100 * per_batch / 1e6 / step_off:.3f} % of the median step without it ({step_off:.4f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
