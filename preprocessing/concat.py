"""Token concatenation: documents in, fixed-length samples out, as llm-foundry's converters do it.

Each document contributes ``bos + tokens + eos``. The buffer is cut into ``concat_tokens``-long
samples; with wrapping the remainder carries into the next document, without it the remainder is
dropped after each cut. Whatever is left at the end of the input is dropped (and counted).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import NDArray


class TokenConcatenator:
    """Accumulates token ids and emits ``int32`` samples of exactly ``length`` tokens."""

    def __init__(self, length: int, bos: Sequence[int] = (), eos: Sequence[int] = (), wrap: bool = True):
        if length <= 0:
            raise ValueError(f"concat length must be positive, got {length}")
        self.length = length
        self.bos, self.eos, self.wrap = list(bos), list(eos), wrap
        self._buffer: list[int] = []
        self.tokens_in = 0
        self.tokens_dropped = 0
        self.max_token_id = -1  # the largest id added, BOS and EOS included: what the samples can hold

    def add(self, ids: Sequence[int]) -> Iterator[NDArray[np.int32]]:
        """Add one document's ids; yield every sample that became complete."""
        piece = self.bos + list(ids) + self.eos
        self.tokens_in += len(piece)
        if piece:
            self.max_token_id = max(self.max_token_id, *piece)
        self._buffer.extend(piece)
        while len(self._buffer) >= self.length:
            sample = self._buffer[: self.length]
            rest = self._buffer[self.length :]
            if not self.wrap:
                self.tokens_dropped += len(rest)
                rest = []
            self._buffer = rest
            yield np.asarray(sample, dtype=np.int32)

    def add_batch(self, docs: Sequence[Sequence[int]]) -> Iterator[NDArray[np.int32]]:
        """Add several documents' ids; yield the same samples as `add` on each in turn.

        With wrapping the documents are joined in one array and cut with a reshape, without a
        Python step per token or per sample."""
        if not self.wrap:
            for ids in docs:
                yield from self.add(ids)
            return
        joined = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(self.bos, ids, self.eos) for ids in docs), dtype=np.int32
        )
        self.tokens_in += len(joined)
        if len(joined):
            self.max_token_id = max(self.max_token_id, int(joined.max()))
        tokens = np.concatenate([np.asarray(self._buffer, dtype=np.int32), joined])
        whole = len(tokens) // self.length * self.length
        self._buffer = tokens[whole:].tolist()
        yield from tokens[:whole].reshape(-1, self.length)

    def finish(self) -> int:
        """Drop the final partial sample; return how many tokens that was."""
        left = len(self._buffer)
        self.tokens_dropped += left
        self._buffer = []
        return left
