"""The generic host step: apply a batch of market records to the L2 books, then run a kernel.

Runs in the live strategy-host stage (stages/strategy_host.py) and in the backtest; the same
function in both is what makes a strategy run unchanged in both. ``run_strategy_batch`` is HOT
PATH (@njit). ``HostedStrategy`` is a cold convenience owner (books + state + intent buffer)
for tests, warm-ups and simple in-process users.

Why the kernel is an argument: numba specialises ``run_strategy_batch`` per kernel (a
dispatcher is a compile-time constant type), so the kernel call is direct, not through a
pointer. That specialisation is keyed on the dispatcher object and so is not reusable from the
on-disk cache; it is a few lines and compiles in well under a second, while the heavy parts
(book maintenance and the kernel itself) are cached separately.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import L2Book, book_apply_batch
from shm.records import EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE


@njit(cache=False)
def run_strategy_batch(kernel, state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out):
    """md[0:n_md] into the books, then ``kernel``; returns the intents written to out[0:k].

    n_md == n_ex == 0 is a timer tick: the kernel still runs (quotes age, legs time out).
    """
    if n_md > 0:
        book_apply_batch(px, qty, meta, md, n_md)
    return kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out)


class HostedStrategy:
    """Cold owner of one strategy's books, state and intent buffer (tests, tools, backtests).

    ``step`` returns a *view* of the intents written by this call (valid until the next call).
    """

    def __init__(self, strategy, n_instruments: int | None = None, max_levels: int = 64,
                 max_intents: int = 256):
        self.strategy = strategy
        n = n_instruments or max(i.instrument_id for i in strategy.instruments)
        self.book = L2Book(n, max_levels)
        self.state = strategy.make_state()
        self.out = np.zeros(max_intents, dtype=ORDER_DTYPE)
        self._no_md = np.zeros(0, dtype=MARKET_DTYPE)
        self._no_ex = np.zeros(0, dtype=EXEC_DTYPE)

    def step(self, md=None, ex=None, now_ns: int = 0) -> np.ndarray:
        md = self._no_md if md is None else md
        ex = self._no_ex if ex is None else ex
        px, qty, meta = self.book.arrays
        k = run_strategy_batch(type(self.strategy).kernel, self.state, px, qty, meta,
                               md, len(md), ex, len(ex), np.int64(now_ns), self.out)
        return self.out[:k]
