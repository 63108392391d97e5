"""Progress of a conversion: a tqdm bar on a terminal, a line every 30 s in a batch log."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Documents and tokens converted so far, with the rate since start."""

    def __init__(self, label: str, total_docs: int | None = None, interval_s: float = 30.0) -> None:
        self.label, self.interval_s = label, interval_s
        self.start = self.last_print = time.monotonic()
        self.docs = self.tokens = 0
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_docs, desc=label, unit="doc", dynamic_ncols=True)

    def update(self, docs: int, tokens: int) -> None:
        """Set the running totals (absolute counts)."""
        self.docs, self.tokens = docs, tokens
        rate = tokens / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(docs - self.bar.n)
            self.bar.set_postfix_str(f"{tokens:,} tokens, {rate:,.0f} tokens/s", refresh=False)
        elif time.monotonic() - self.last_print >= self.interval_s:
            self.last_print = time.monotonic()
            print(f"{self.label}: {docs:,} documents, {tokens:,} tokens, {rate:,.0f} tokens/s", flush=True)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()
