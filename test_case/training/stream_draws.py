"""`StreamDraws`: the Composer callback that counts the samples a mixture's train loader draws from each stream.

A mixture (`test_case.training.mixture`) becomes streaming's ``streams`` on the train dataset, which
resolves each stream's samples per epoch (``proportion``, ``repeat`` or ``choose``) and shuffles
them together. This callback measures what training actually reads, from the dataset's own mapping:
at fit start it wraps the train dataset's ``get_item`` (streaming calls it for every sample it
yields, in the loader's worker processes too) so that each sample id is counted for the stream its
shard belongs to (``dataset.spanner`` maps a sample id to its shard, ``dataset.stream_per_shard`` a
shard to its stream). The counts live in shared memory made before the loader forks its workers,
one row per worker (no two processes write the same counter). Every N batches and at fit end the
ranks' counts are summed to global rank 0, which prints a `test_case.timing_events.StreamDraws`
line beside the share of each stream the dataset planned for an epoch; the report compares the two
(`test_case.report.metrics`).

What is counted is what the loader read: with loader workers that includes the batches they have
prefetched and training has not taken yet (at most ``prefetch_factor`` per worker). Added to every
run whose train dataset has streams by `test_case.training.foundry_train`; with one stream or none
it does nothing.
"""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Callable
from typing import Any

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from torch.utils.data import get_worker_info

from test_case.timing_events import StreamDraws as StreamDrawsEvent
from test_case.timing_events import line

NAME = "stream_draws"  # the callback's name in llm-foundry's registry and in a yaml's ``callbacks``
EVERY_N_BATCHES = 20


def stream_names(dataset: Any) -> list[str]:
    """A name per stream of a streaming dataset: its split (a domain folder's name), else its folder."""
    return [str(s.split or s.local) for s in dataset.streams]


def planned_shares(dataset: Any) -> list[float]:
    """Each stream's share of an epoch's samples, as the dataset resolved its weights (``choose``)."""
    chosen = [float(s.choose) for s in dataset.streams]
    total = sum(chosen)
    return [c / total if total else 0.0 for c in chosen]


class DrawCounter:
    """Per stream sample counts in shared memory, one row per loader worker and one for the main process."""

    def __init__(self, dataset: Any, workers: int) -> None:
        self.streams = len(dataset.streams)
        self.rows = max(workers, 1) + 1
        self.counts = multiprocessing.RawArray(ctypes.c_int64, self.rows * self.streams)
        self.spanner = dataset.spanner
        self.stream_per_shard = [int(s) for s in dataset.stream_per_shard]

    def count(self, sample_id: int) -> None:
        """Count one sample for its stream, in the row of the process that reads it."""
        info = get_worker_info()
        row = 0 if info is None else 1 + info.id % (self.rows - 1)
        shard, _ = self.spanner[int(sample_id)]
        self.counts[row * self.streams + self.stream_per_shard[shard]] += 1

    def totals(self) -> list[int]:
        """Samples per stream, every row added."""
        return [sum(self.counts[r * self.streams + s] for r in range(self.rows)) for s in range(self.streams)]


class StreamDraws(Callback):
    """Counts the train loader's samples per stream and prints the ranks' sum (module docstring)."""

    def __init__(self, names: list[str] | None = None, every_n_batches: int = EVERY_N_BATCHES) -> None:
        if every_n_batches < 1:
            raise ValueError(f"callbacks.{NAME}.every_n_batches must be 1 or more, not {every_n_batches}")
        self.names = list(names) if names else None
        self.every = every_n_batches
        self.counter: DrawCounter | None = None
        self.planned: list[float] = []
        self.since_batch = 0

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger
        loader = state.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None or len(getattr(dataset, "streams", None) or []) < 2:
            return
        names = stream_names(dataset)
        if self.names is not None and len(self.names) == len(names):
            names = self.names
        self.names = names
        self.planned = [round(v, 6) for v in planned_shares(dataset)]
        self.since_batch = int(state.timestamp.batch)
        counter = self.counter = DrawCounter(dataset, int(getattr(loader, "num_workers", 0) or 0))
        read: Callable[..., Any] = dataset.get_item

        def counted(sample_id: int, *args: Any, **kwargs: Any) -> Any:
            sample = read(sample_id, *args, **kwargs)
            counter.count(sample_id)
            return sample

        dataset.get_item = counted  # an instance attribute: what streaming's __getitem__ calls

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger
        if self.counter is not None and int(state.timestamp.batch) % self.every == 0:
            self._gather(state)

    def fit_end(self, state: State, logger: Logger) -> None:
        del logger
        if self.counter is not None:
            self._gather(state)

    def _gather(self, state: State) -> None:
        """Every rank's counts summed on rank 0 (a collective: every rank calls it at the same batch)."""
        assert self.counter is not None and self.names is not None
        per_rank = dist.all_gather_object(self.counter.totals())
        drawn = [sum(int(counts[s]) for counts in per_rank) for s in range(self.counter.streams)]
        if dist.get_global_rank() == 0:
            event = StreamDrawsEvent(
                "streams", int(state.timestamp.batch), self.since_batch, self.names, self.planned, drawn
            )
            print(line(event), flush=True)


def register() -> None:
    """Make ``stream_draws`` a callback name llm-foundry builds (once per process)."""
    from llmfoundry.registry import callbacks

    if NAME not in callbacks.get_all():
        callbacks.register(NAME, func=StreamDraws)
