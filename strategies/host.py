"""The strategy runtime's one batch step: books, bookkeeping, timer, then the hooks, guarded.

Runs in the live strategy-host stage (stages/host_codegen.py: its cached ``host_step`` polls
the rings and calls ``run_strategy_batch``), in the backtest (market/backtest.py) and in
``HostedStrategy`` (tests, tools). The same function everywhere is what makes a strategy run
unchanged live and in a backtest. ``run_strategy_batch`` is HOT PATH (@njit).

One batch, in this order (written once, here):

1. ``md[:n_md]`` into the L2 books;
2. execution reports already applied (router sequence number in ``reserved``, 0 < reserved <=
   ``hctl[H_LAST_SEQ]``: a restarted strategy rebuilt them from the journal) are dropped from
   ``ex``, exactly the dedupe the risk gate does; newer ones advance it;
3. the runtime's bookkeeping (strategies/base.py): ``note_market`` (cause time of this batch's
   intents), ``apply_execs`` (order table, positions, reject counters) and ``apply_signals``
   (the farm's signal records into ``ctx.sig``);
4. the hooks, inside one ``try / except`` (caught inside numba): ``on_exec`` if reports came,
   ``on_signal`` if signal records came, ``on_market`` if market records came, ``on_timer`` if
   the strategy's timer is due
   (``hctl[H_NEXT_TIMER]``; period ``hctl[H_TIMER_NS]``, the strategy's ``timer_ms``).

A hook that raises (or writes more intents than ``ctx.out`` holds) HALTS the strategy: the
intents of that call are discarded and rolled back in its order table (``forget_intents``),
``rt.halted`` names the hook and ``rt.halt_ns`` the time (simulated time in a backtest), and the
runtime sends a cancel for every live order, and again for any order a later report leaves live
(one that was in flight at the halt). From then on steps 1-3 still run (fills keep being
accounted, cancels get answered) but no hook is called: a broken model does not trade, does not
loop restarts, and the other strategies go on. ``hctl[H_KERNEL_ERRORS]`` counts it.

Why the hooks are arguments, and why ``inline="always"``: numba specialises this function per
hook (a dispatcher is a compile-time constant type), so the calls are direct. A compiled call
that *passes* a dispatcher as an argument embeds a pointer to the Python object, and numba then
refuses to cache the caller; inlined at numba-IR level, the arguments disappear. The live
host_step (a generated module whose globals are the hooks) therefore caches, and the backtest
compiles this into its own loop.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from common.runtime import (  # noqa: F401  (the hctl layout, used here and re-exported)
    DEFAULT_BOOK_LEVELS, DEFAULT_TIMER_MS, H_CALLS, H_DISCARDED, H_EX_IN, H_FB_N,
    H_KERNEL_ERRORS, H_LAST_SEQ, H_MD_IN, H_NEXT_TIMER, H_OUT, H_PARAMS_PENDING, H_PUSHBACK,
    H_SG_IN, H_SKIPPED, H_TIMER_NS, H_WORDS,
)
from market.book import L2Book, book_apply_batch
from shm.records import EXEC_DTYPE, MARKET_DTYPE, SIGNAL_DTYPE
from strategies.base import (HALT_BAD_COUNT, HALT_EXEC, HALT_MARKET, HALT_PARAMS, HALT_SIGNAL,
                             HALT_TIMER, apply_execs, apply_signals, cancel_all, forget_intents,
                             note_market)


# hctl, the host's int64 words (H_*): their layout is common/runtime.py's, shared with the
# backtest loop (market/backtest.py), which cannot import this module


def make_hctl(timer_ms: float = DEFAULT_TIMER_MS) -> np.ndarray:
    h = np.zeros(H_WORDS, dtype=np.int64)
    h[H_TIMER_NS] = max(1, int(round(timer_ms * 1e6)))
    h[H_NEXT_TIMER] = -1
    return h


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


@njit(cache=True)
def halt_strategy(ctx, hctl, why, now_ns):
    """A hook failed: discard what it wrote, mark the strategy halted and cancel its orders."""
    rt = ctx.rt[0]
    hctl[H_KERNEL_ERRORS] += 1
    n = min(rt.n_out, ctx.out.shape[0])
    hctl[H_DISCARDED] += n
    forget_intents(ctx, n)
    rt.n_out = 0
    if rt.halted == 0:
        rt.halted = why
        rt.halt_ns = now_ns
    cancel_all(ctx, now_ns)


@njit(cache=True)
def timer_due(hctl, now_ns):
    return hctl[H_NEXT_TIMER] < 0 or now_ns >= hctl[H_NEXT_TIMER]


@njit(cache=False, inline="always")
def run_strategy_batch(on_market, on_exec, on_timer, on_params, on_signal, ctx, st_arr, p_arr,
                       md, n_md, ex, n_ex, sg, n_sg, now_ns, hctl):
    """One batch (module docstring): books, dedupe, bookkeeping, then the hooks. Returns the
    number of intents written to ctx.out[0:k]. ``sg[:n_sg]``: signal records (SIGNAL_DTYPE) of
    the agents the strategy subscribes to (none in a backtest yet: n_sg = 0).

    A batch with no records still runs the timer when it is due; ``p_arr`` is the packed
    parameter record (a new one set between batches is announced with hctl[H_PARAMS_PENDING]:
    ``on_params`` runs first)."""
    if n_md > 0:
        book_apply_batch(ctx.px, ctx.qty, ctx.meta, md, n_md)
    if n_ex > 0:
        n_ex = skip_applied(ex, n_ex, hctl)
    note_market(ctx, md, n_md)
    apply_execs(ctx, ex, n_ex)
    if n_sg > 0:
        apply_signals(ctx, sg, n_sg)
        hctl[H_SG_IN] += n_sg
    rt = ctx.rt[0]
    rt.n_out = 0
    tick = False
    if hctl[H_NEXT_TIMER] < 0:
        hctl[H_NEXT_TIMER] = now_ns + hctl[H_TIMER_NS]
    elif now_ns >= hctl[H_NEXT_TIMER]:
        tick = True
        hctl[H_NEXT_TIMER] = now_ns + hctl[H_TIMER_NS]
    if rt.halted != 0:
        # An order that was in flight at the halt can still come back LIVE (a late ack, a
        # cancel reject): it is cancelled when that report arrives, never left resting.
        if n_ex > 0:
            cancel_all(ctx, now_ns)
        hctl[H_PARAMS_PENDING] = 0   # no hook runs again: on_params included
        return rt.n_out
    params = hctl[H_PARAMS_PENDING] != 0
    if n_ex == 0 and n_md == 0 and n_sg == 0 and not tick and not params:
        return np.int64(0)
    hctl[H_CALLS] += 1
    stage = 0
    try:
        if params:
            hctl[H_PARAMS_PENDING] = 0
            stage = HALT_PARAMS
            on_params(ctx, st_arr[0], p_arr[0], now_ns)
        if n_ex > 0:
            stage = HALT_EXEC
            on_exec(ctx, st_arr[0], p_arr[0], ex, n_ex, now_ns)
        if n_sg > 0:
            stage = HALT_SIGNAL
            on_signal(ctx, st_arr[0], p_arr[0], sg, n_sg, now_ns)
        if n_md > 0:
            stage = HALT_MARKET
            on_market(ctx, st_arr[0], p_arr[0], md, n_md, now_ns)
        if tick:
            stage = HALT_TIMER
            on_timer(ctx, st_arr[0], p_arr[0], now_ns)
        stage = 0
    except Exception:
        pass
    if stage == 0 and rt.n_out > ctx.out.shape[0]:
        stage = HALT_BAD_COUNT
    if stage != 0:
        halt_strategy(ctx, hctl, stage, now_ns)
    return rt.n_out


@njit(cache=False)
def _hosted_step(on_market, on_exec, on_timer, on_params, on_signal, ctx, st_arr, p_arr, md,
                 n_md, ex, n_ex, sg, n_sg, now_ns, hctl):
    return run_strategy_batch(on_market, on_exec, on_timer, on_params, on_signal, ctx, st_arr,
                              p_arr, md, n_md, ex, n_ex, sg, n_sg, now_ns, hctl)


def apply_params(strategy, state, hctl, params, version: int | None = None) -> None:
    """Cold, between batches: make ``params`` (a validated ``strategy.Params``, e.g. from
    ``strategy.updated_params``) the strategy's parameters. Packs them with
    ``strategy.kernel_params`` into ``state.p`` in place (the hot step holds that array), counts
    the set in ``rt.params_version`` (``version``: the controller's number of this set; default
    one more) and raises ``hctl[H_PARAMS_PENDING]``, so that the next batch calls ``on_params``
    before any other hook. The live strategy host (``run.py set``, stages/strategy_host.py) and
    ``HostedStrategy.set_params`` both apply new parameters through this one function.

    Nothing is changed when packing fails or the packed record has another layout than the
    running one (a ``derive()`` that returns other keys or types for other values: ValueError).
    """
    packed = strategy.kernel_params(params)
    if packed.dtype != state.p.dtype:
        raise ValueError(f"{strategy.kind}: the new parameters pack into another layout than "
                         f"the running ones ({packed.dtype} instead of {state.p.dtype}); "
                         "derive() must return the same keys and types for every value")
    state.p[:] = packed
    strategy.params = params
    rt = state.ctx.rt
    rt[0]["params_version"] = rt[0]["params_version"] + 1 if version is None else int(version)
    hctl[H_PARAMS_PENDING] = 1


class HostView:
    """Read access to a host's ``state`` (a StrategyState) and ``hctl``, by name: for tests and
    tools that drive a strategy (HostedStrategy here, the live host step in the tests)."""

    @property
    def ctx(self):
        return self.state.ctx

    @property
    def st(self):
        """The strategy's state record (named fields, attribute access; a view)."""
        return self.state.fields

    @property
    def rt(self):
        return self.state.ctx.rt[0]

    @property
    def positions(self):
        return self.state.ctx.pos

    @property
    def kernel_errors(self) -> int:
        return int(self.hctl[H_KERNEL_ERRORS])

    @property
    def halted(self) -> int:
        return int(self.state.ctx.rt[0]["halted"])


class HostedStrategy(HostView):
    """Cold owner of one strategy's books, state and host words, driven by hand (tests, tools,
    warm-ups). ``step`` runs one batch through ``run_strategy_batch`` and returns a *view* of
    the intents written (valid until the next call).

    ``timer_ms`` as in config (default: the strategy runtime's default); ``timer_ms=0`` makes
    every ``step`` a timer tick as well (a test that wants to drive time by hand).
    """

    def __init__(self, strategy, n_instruments: int | None = None,
                 max_levels: int = DEFAULT_BOOK_LEVELS, max_intents: int = 256,
                 timer_ms: float = DEFAULT_TIMER_MS):
        self.strategy = strategy
        n = n_instruments or max(i.instrument_id for i in strategy.instruments)
        self.book = L2Book(n, max_levels)
        self.state = strategy.make_state(*self.book.arrays, max_intents=max_intents)
        self.hctl = make_hctl(timer_ms) if timer_ms > 0 else make_hctl(1e-6)
        self._every_step = timer_ms <= 0
        self._no_md = np.zeros(0, dtype=MARKET_DTYPE)
        self._no_ex = np.zeros(0, dtype=EXEC_DTYPE)
        self._no_sg = np.zeros(0, dtype=SIGNAL_DTYPE)
        # a registered kind's step is a cached function of a generated module (compiled once
        # per source tree, loaded by every later process); a class defined elsewhere (a test)
        # compiles _hosted_step here
        from strategies.backtest_codegen import hosted_step_for

        self._step = hosted_step_for(type(strategy))


    def subscribe(self, kind: int, max_age_ns: int) -> None:
        """Read signal ``kind`` (SIG_*), missing once older than ``max_age_ns``."""
        from strategies.base import subscribe_signal

        subscribe_signal(self.state.ctx.sig, kind, max_age_ns)

    def set_params(self, params, version: int | None = None) -> None:
        """New parameters (a validated Params instance), applied before the next batch."""
        apply_params(self.strategy, self.state, self.hctl, params, version)

    def step(self, md=None, ex=None, now_ns: int = 0, sg=None) -> np.ndarray:
        """One batch of market records ``md``, reports ``ex`` and signal records ``sg``
        (SIGNAL_DTYPE; see ``subscribe`` for reading them)."""
        md = self._no_md if md is None else md
        ex = self._no_ex if ex is None else ex.copy()   # the dedupe compacts ex in place
        sg = self._no_sg if sg is None else sg
        if self._every_step:
            self.hctl[H_NEXT_TIMER] = now_ns   # due now
        s = self.state
        if self._step is not None:
            # counts as int64, not Python ints (numba would type a 0 as a literal): the types
            # of the backtest's and the live host's calls, so all three share one compilation
            k = self._step(s.ctx, s.st, s.p, md, np.int64(len(md)), ex, np.int64(len(ex)), sg,
                           np.int64(len(sg)), np.int64(now_ns), self.hctl)
        else:
            k = _hosted_step(*type(self.strategy).hooks(), s.ctx, s.st, s.p, md, len(md), ex,
                             len(ex), sg, len(sg), np.int64(now_ns), self.hctl)
        return s.ctx.out[:k]
