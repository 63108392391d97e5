"""`RankTiming`: the Composer callback that times every rank and the run's wall clock.

Wired into every training run by `test_case.training.foundry_train` (llm-foundry's callback
``rank_timing``; off with the override ``callbacks.rank_timing.enabled=false``, gathered every
``callbacks.rank_timing.every_n_batches`` batches, default `EVERY_N_BATCHES`). What it prints is
`test_case.timing_events` (global rank 0 prints; every rank measures):

* per batch, each rank's compute time: the forward pass of its transformer blocks (llm-foundry's
  ``MPTBlock``; the whole model's forward where there are none), summed over the batch's
  micro-batches. A block's forward hooks run inside FSDP's wrapper, after it has gathered the
  block's parameters, so no collective is inside what is timed, with DDP or FSDP: a slow GPU or
  node is a slow rank, not a run in which every rank waits as long. Recomputation of activation
  checkpointing runs in the backward pass and is not counted. On GPUs the times are CUDA events
  (read at the end of the batch, when the forward pass is long finished); on CPUs the clock;
* every N batches each rank's median over the window, gathered to rank 0 (one float per rank,
  ``all_gather_object``): one `RankTimes` line naming the slowest rank, its node and its ratio to
  the median;
* wall-clock `WallEvent` lines: fit start (after model, data and checkpoint loading), each batch's
  end, each checkpoint save (the ``CheckpointSaver``'s hooks, timed), each restore (Composer's
  ``load_checkpoint``, timed from ``Event.INIT`` to ``Event.AFTER_LOAD``), each eval (all
  evaluators) and fit end.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from composer.callbacks import CheckpointSaver
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import checkpoint as composer_checkpoint
from composer.utils import dist

from test_case.timing_events import RankHosts, RankTimes, TimingEvent, WallEvent, WallKind, line, slowest_rank

NAME = "rank_timing"  # the callback's name in llm-foundry's registry and in a yaml's ``callbacks``
EVERY_N_BATCHES = 20
SAVE_HOOKS = ("batch_checkpoint", "epoch_checkpoint", "iteration_checkpoint")  # where a CheckpointSaver saves


class ComputeClock:
    """Adds up timed spans of one batch: the wall clock on CPUs, CUDA events on GPUs."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.began = 0.0
        self.total = 0.0
        self.pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.spare: list[torch.cuda.Event] = []

    def _event(self) -> torch.cuda.Event:
        event = self.spare.pop() if self.spare else torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        """A span starts."""
        if self.cuda:
            self.pending.append((self._event(), self._event()))  # the end is recorded again by stop
        else:
            self.began = time.perf_counter()

    def stop(self) -> None:
        """The span started last ends."""
        if self.cuda:
            if self.pending:
                self.pending[-1][1].record()
        else:
            self.total += time.perf_counter() - self.began

    def take(self) -> float:
        """Seconds in this batch's spans; starts the next batch at 0."""
        if self.cuda and self.pending:
            self.pending[-1][1].synchronize()
            self.total = sum(s.elapsed_time(e) for s, e in self.pending) / 1000.0
            self.spare.extend(ev for pair in self.pending for ev in pair)
            self.pending = []
        seconds, self.total = self.total, 0.0
        return seconds


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's llm-foundry ``MPTBlock`` modules (inside any FSDP, DDP or checkpoint wrapper)."""
    try:
        from llmfoundry.models.layers.blocks import MPTBlock
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, MPTBlock)]


class RankTiming(Callback):
    """Times each rank's compute per batch and the run's wall-clock events (module docstring)."""

    def __init__(self, every_n_batches: int = EVERY_N_BATCHES, enabled: bool = True) -> None:
        if every_n_batches < 1:
            raise ValueError(f"callbacks.{NAME}.every_n_batches must be 1 or more, not {every_n_batches}")
        self.every = every_n_batches
        self.enabled = enabled
        self.rank = 0
        self.hosts: list[str] = []
        self.clock: ComputeClock | None = None
        self.timing_forward = False
        self.hooked_blocks = False
        self.window: list[float] = []
        self.eval_began: float | None = None
        self.restore: tuple[float, float] | None = None
        self._load_checkpoint: Callable[..., Any] | None = None

    def _print(self, event: TimingEvent) -> None:
        if self.rank == 0:
            print(line(event), flush=True)

    def _wall(self, kind: WallKind, state: State, began: float | None = None, at: float | None = None) -> None:
        self._print(WallEvent(kind, int(state.timestamp.batch), round(time.time() if at is None else at, 3), began))

    # Event.INIT comes before checkpoint loading, and after the CheckpointSaver is among the callbacks.
    def init(self, state: State, logger: Logger) -> None:
        del logger
        if not self.enabled:
            return
        self.rank = dist.get_global_rank()
        for callback in state.callbacks:
            if isinstance(callback, CheckpointSaver):
                self._time_saves(callback)
        original = self._load_checkpoint = composer_checkpoint.load_checkpoint

        def timed_load(*args: Any, **kwargs: Any) -> Any:
            began = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.restore = (began, time.time())

        composer_checkpoint.load_checkpoint = timed_load

    def after_load(self, state: State, logger: Logger) -> None:
        del state, logger
        if self._load_checkpoint is not None:
            composer_checkpoint.load_checkpoint = self._load_checkpoint
            self._load_checkpoint = None

    def _time_saves(self, saver: CheckpointSaver) -> None:
        """Wrap the saver's checkpoint hooks (instance attributes, which Composer's engine calls):
        a call after which the saver holds one more saved checkpoint was a save."""

        def timed(hook: Callable[[State, Logger], None]) -> Callable[[State, Logger], None]:
            def call(state_: State, logger_: Logger) -> None:
                before, began = len(saver.all_saved_checkpoints_to_timestamp), time.time()
                hook(state_, logger_)
                if len(saver.all_saved_checkpoints_to_timestamp) > before:
                    self._wall("checkpoint_save", state_, round(began, 3))

            return call

        for name in SAVE_HOOKS:
            setattr(saver, name, timed(getattr(saver, name)))

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger
        if not self.enabled:
            return
        now = time.time()
        self.clock = ComputeClock(torch.cuda.is_available() and state.device.name == "gpu")
        blocks = transformer_blocks(state.model)
        for block in blocks:
            block.register_forward_pre_hook(self._block_starts)
            block.register_forward_hook(self._block_ends)
        self.hooked_blocks = bool(blocks)
        self.hosts = [str(h) for h in dist.all_gather_object(socket.gethostname())]
        if self.restore is not None:
            self._wall("restore", state, round(self.restore[0], 3), self.restore[1])
        self._wall("fit_start", state, at=now)
        self._print(RankHosts("hosts", self.hosts))

    def _block_starts(self, module: torch.nn.Module, args: Any) -> None:
        if self.timing_forward and self.clock is not None:
            self.clock.start()

    def _block_ends(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self.timing_forward and self.clock is not None:
            self.clock.stop()

    def before_forward(self, state: State, logger: Logger) -> None:
        self.timing_forward = self.enabled
        if self.enabled and not self.hooked_blocks and self.clock is not None:
            self.clock.start()

    def after_forward(self, state: State, logger: Logger) -> None:
        if self.enabled and not self.hooked_blocks and self.clock is not None:
            self.clock.stop()
        self.timing_forward = False

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger
        if not self.enabled or self.clock is None:
            return
        self._wall("batch", state)
        self.window.append(self.clock.take())
        if int(state.timestamp.batch) % self.every == 0:
            self._gather(state)

    def _gather(self, state: State) -> None:
        """Every rank's median over the window, to rank 0 (a collective: every rank calls it at the
        same batch)."""
        if not self.window:
            return
        medians = [float(v) for v in dist.all_gather_object(statistics.median(self.window))]
        batches, self.window = len(self.window), []
        rank, ratio = slowest_rank(medians)
        host = self.hosts[rank] if rank < len(self.hosts) else None
        compute = [round(v, 6) for v in medians]
        self._print(RankTimes("ranks", int(state.timestamp.batch), batches, compute, rank, host, round(ratio, 4)))

    def eval_before_all(self, state: State, logger: Logger) -> None:
        self.eval_began = time.time()

    def eval_after_all(self, state: State, logger: Logger) -> None:
        if self.enabled and self.eval_began is not None:
            self._wall("eval", state, round(self.eval_began, 3))
            self.eval_began = None

    def fit_end(self, state: State, logger: Logger) -> None:
        if not self.enabled or self.clock is None:
            return
        self._gather(state)  # the batches since the last window
        self._wall("fit_end", state)


def register() -> None:
    """Make ``rank_timing`` a callback name llm-foundry builds (once per process)."""
    from llmfoundry.registry import callbacks

    if NAME not in callbacks.get_all():
        callbacks.register(NAME, func=RankTiming)
