"""The strategy runtime's one batch step: books, bookkeeping, then the kernel, guarded.

Runs in the live strategy-host stage (its generated ``host_step``, stages/host_codegen.py, calls
``run_strategy_batch``) and in the backtest (market/backtest.py); the same function in both is
what makes a strategy run unchanged in both. ``run_strategy_batch`` is HOT PATH (@njit).
``HostedStrategy`` is a cold convenience owner (books + state + intent buffer + host words) for
tests, warm-ups and simple in-process users.

One batch, in this order (written once, here):

1. ``md[:n_md]`` into the L2 books;
2. execution reports already applied (router sequence number in ``reserved``, 0 < reserved <=
   ``hctl[H_LAST_SEQ]``: a restarted strategy rebuilt them from the journal) are dropped from
   ``ex``, exactly the dedupe the risk gate does with K_LAST_SEQ; newer ones advance it;
3. the runtime's bookkeeping: ``note_market`` (cause time of this batch's intents) and
   ``apply_execs`` (order table, positions, reject counters) from strategies/base.py;
4. the kernel, inside ``try / except Exception`` (caught inside numba): a kernel that raises, or
   returns a count outside 0..len(out), is counted in ``hctl[H_KERNEL_ERRORS]``, the intents it
   wrote are discarded (``hctl[H_DISCARDED]``) and rolled back in its order table
   (``forget_intents``), and the batch returns 0 intents. The input of the batch is never lost:
   steps 1-3 happened before the kernel ran, so fills reach the order table and positions.

Why the kernel is an argument, and why ``inline="always"``: numba specialises
``run_strategy_batch`` per kernel (a dispatcher is a compile-time constant type), so the kernel
call is direct, not through a pointer. But a compiled call that *passes* a dispatcher as an
argument embeds a pointer to the Python dispatcher object (a "dynamic global"), and numba then
refuses to cache the caller. Inlined at numba-IR level, the argument disappears: in the live
host_step (a generated module whose global ``kernel`` is the dispatcher, stages/host_codegen.py)
the call becomes a call of that global, and host_step caches. The backtest passes the kernel
into its own (uncached) loop and compiles this with it.

``hctl`` (int64[H_WORDS]) holds the host's words; the live host_step uses all of them, the
backtest and HostedStrategy only the ones ``run_strategy_batch`` writes.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import L2Book, book_apply_batch
from shm.records import EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from strategies.base import CTL_EMITTED, apply_execs, forget_intents, note_market

# ---- hctl: int64 words of one strategy host ---------------------------------------------------
H_NEXT_TIMER = 0      # live: time of the next timer tick (ns)
H_FB_N = 1            # live: push-back answers waiting for the next batch
H_MD_IN = 2           # live: market records read
H_EX_IN = 3           # live: execution reports read from the rings
H_OUT = 4             # live: intents published to the gate
H_PUSHBACK = 5        # live: intents the full intent ring refused (answered REJECT_HALTED)
H_CALLS = 6           # kernel calls
H_KERNEL_ERRORS = 7   # kernel calls that raised (or returned a bad count): batch discarded
H_DISCARDED = 8       # intents discarded with those calls
H_LAST_SEQ = 9        # newest router sequence number applied (restored from the journal)
H_SKIPPED = 10        # exec reports skipped as already applied (reserved <= H_LAST_SEQ)
H_WORDS = 16


def make_hctl() -> np.ndarray:
    return np.zeros(H_WORDS, dtype=np.int64)


@njit(cache=True)
def skip_applied(ex, n_ex, hctl):
    """Drop reports already applied (0 < reserved <= hctl[H_LAST_SEQ]) from ex[0:n_ex], in
    place and in order; newer sequence numbers advance H_LAST_SEQ. Returns the new count."""
    last = hctl[H_LAST_SEQ]
    m = 0
    for j in range(n_ex):
        seq = ex[j].reserved
        if seq != 0 and seq <= last:
            hctl[H_SKIPPED] += 1
            continue
        if seq > last:
            last = seq
        if m != j:
            ex[m] = ex[j]
        m += 1
    hctl[H_LAST_SEQ] = last
    return m


@njit(cache=False, inline="always")
def run_strategy_batch(kernel, state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out, hctl):
    """One batch (module docstring): books, dedupe, bookkeeping, guarded kernel. Returns the
    intents written to out[0:k] (0 after a kernel error).

    n_md == n_ex == 0 is a timer tick: the kernel still runs (quotes age, legs time out).
    """
    if n_md > 0:
        book_apply_batch(px, qty, meta, md, n_md)
    if n_ex > 0:
        n_ex = skip_applied(ex, n_ex, hctl)
    ctl = state[0]
    note_market(ctl, md, n_md)
    apply_execs(ctl, state[1], state[2], ex, n_ex)
    hctl[H_CALLS] += 1
    ctl[CTL_EMITTED] = 0
    k = -1
    try:
        k = kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out)
    except Exception:
        k = -1
    if k < 0 or k > out.shape[0]:
        hctl[H_KERNEL_ERRORS] += 1
        n = ctl[CTL_EMITTED]
        hctl[H_DISCARDED] += n
        forget_intents(ctl, state[1], out, n)
        k = 0
    return k


class HostedStrategy:
    """Cold owner of one strategy's books, state, intent buffer and host words (tests, tools).

    ``step`` returns a *view* of the intents written by this call (valid until the next call).
    """

    def __init__(self, strategy, n_instruments: int | None = None, max_levels: int = 64,
                 max_intents: int = 256):
        self.strategy = strategy
        n = n_instruments or max(i.instrument_id for i in strategy.instruments)
        self.book = L2Book(n, max_levels)
        self.state = strategy.make_state()
        self.out = np.zeros(max_intents, dtype=ORDER_DTYPE)
        self.hctl = make_hctl()
        self._no_md = np.zeros(0, dtype=MARKET_DTYPE)
        self._no_ex = np.zeros(0, dtype=EXEC_DTYPE)

    @property
    def kernel_errors(self) -> int:
        return int(self.hctl[H_KERNEL_ERRORS])

    def step(self, md=None, ex=None, now_ns: int = 0) -> np.ndarray:
        md = self._no_md if md is None else md
        ex = self._no_ex if ex is None else ex.copy()   # the dedupe compacts ex in place
        px, qty, meta = self.book.arrays
        k = run_strategy_batch(type(self.strategy).kernel, self.state, px, qty, meta,
                               md, len(md), ex, len(ex), np.int64(now_ns), self.out, self.hctl)
        return self.out[:k]
