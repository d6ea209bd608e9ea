"""The CPU's time-stamp counter, readable from @njit code, and its rate. Hot path (``rdtsc``).

Used by the stages' wall clock (stages/clock.py) and by the backtest's optional per-call timing
of strategy kernels (market/backtest.py, ``run.py bench strategies``). The invariant TSC
(constant_tsc + nonstop_tsc) ticks at a fixed rate on every core; reading it costs a few
nanoseconds on bare metal and some tens in a VM that does not trap it.
"""
from __future__ import annotations

import time

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def rdtsc(typingctx):
    """The CPU's time-stamp counter (llvm.readcyclecounter; RDTSC on x86-64)."""

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        mod = builder.module
        fn = mod.globals.get("llvm.readcyclecounter")
        if fn is None:
            fn = ir.Function(mod, fnty, "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@njit(cache=True)
def read_tsc():
    return rdtsc()


class TscSpan:
    """Cold: ns per TSC tick over a span of work. ``start()`` before, ``ns_per_tick()`` after;
    both read the TSC and the monotonic clock together, so the longer the span, the better
    the rate (a rate from under a millisecond is refused: 0.0)."""

    def __init__(self):
        self._t0 = self._n0 = 0

    @staticmethod
    def pair() -> tuple[int, int]:
        a = read_tsc()
        ns = time.perf_counter_ns()
        b = read_tsc()
        return (a + b) // 2, ns

    def start(self) -> "TscSpan":
        self._t0, self._n0 = self.pair()
        return self

    def ns_per_tick(self) -> float:
        t, n = self.pair()
        if n - self._n0 < 1_000_000 or t <= self._t0:
            return 0.0
        return (n - self._n0) / (t - self._t0)
