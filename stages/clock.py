"""A wall clock for @njit stage kernels: the TSC, calibrated to CLOCK_REALTIME ns. Hot path.

Runs in every stage process. numba has no ``time.time_ns``, and calling clock_gettime through
ctypes would make the kernels uncacheable (the function address is a dynamic global). The
invariant TSC (constant_tsc + nonstop_tsc, the kernel's own clocksource here) ticks at a fixed
rate on every core, so ``realtime_ns = base_ns + (rdtsc() - base_tsc) * ns_per_tick`` with
(base_tsc, base_ns, ns_per_tick) re-sampled by the stage's cold path every heartbeat keeps each
process within about a microsecond of CLOCK_REALTIME; records stamped in one process can then
be subtracted in another (hop latencies, tick-to-trade).
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from common.tsc import rdtsc, read_tsc  # noqa: F401  (read_tsc: used here, re-exported)

C_BASE_TSC = 0
C_BASE_NS = 1
C_NS_PER_TICK = 2
# sim-time mode (SimClock): C_NS_PER_TICK < 0, and the simulated ns exactly, as two float64
# words that each hold a 32-bit half (a float64 cannot hold a 2026 timestamp in ns exactly)
C_SIM_HI = 3
C_SIM_LO = 4
CAL_WORDS = 5


@njit(cache=True, inline="always")
def clock_now_ns(cal):
    """Wall-clock ns from the calibration array ``cal`` (float64[CAL_WORDS]); in sim-time mode
    (a negative rate) the simulated time the stage runner set."""
    if cal[C_NS_PER_TICK] < 0.0:
        return (np.int64(cal[C_SIM_HI]) << 32) | np.int64(cal[C_SIM_LO])
    return np.int64(cal[C_BASE_NS] + (rdtsc() - cal[C_BASE_TSC]) * cal[C_NS_PER_TICK])


@njit(cache=True)
def _now(cal):
    return clock_now_ns(cal)


class TscClock:
    """Owner of one calibration array; ``recalibrate()`` from the cold path (per heartbeat)."""

    def __init__(self):
        self.cal = np.zeros(CAL_WORDS, dtype=np.float64)
        t0, n0 = self._pair()
        time.sleep(0.005)
        t1, n1 = self._pair()
        self._first = (t0, n0)
        self.cal[C_NS_PER_TICK] = (n1 - n0) / max(t1 - t0, 1)
        self.cal[C_BASE_TSC] = t1
        self.cal[C_BASE_NS] = n1

    @staticmethod
    def _pair():
        # bracket the clock read with two TSC reads and take the midpoint
        a = read_tsc()
        ns = time.time_ns()
        b = read_tsc()
        return (a + b) // 2, ns

    def recalibrate(self) -> None:
        t, n = self._pair()
        t0, n0 = self._first
        if t - t0 > 10_000_000:  # a longer baseline gives a better rate estimate
            self.cal[C_NS_PER_TICK] = (n - n0) / (t - t0)
        self.cal[C_BASE_TSC] = t
        self.cal[C_BASE_NS] = n

    def now_ns(self) -> int:
        return int(_now(self.cal))


class SimClock:
    """The sim-time mode's clock, with TscClock's interface: ``cal`` makes ``clock_now_ns``
    return the simulated time the stage runner sets before each of the stage's phases
    (pipeline/runner.py), so the kernels read simulated time through the very call that reads
    the wall clock live."""

    def __init__(self, now_ns: int = 0):
        self.cal = np.zeros(CAL_WORDS, dtype=np.float64)
        self.cal[C_NS_PER_TICK] = -1.0
        self.set(now_ns)

    def set(self, now_ns: int) -> None:
        now_ns = int(now_ns)
        if now_ns < 0:
            raise ValueError(f"simulated time {now_ns} < 0")
        self.cal[C_SIM_HI] = float(now_ns >> 32)
        self.cal[C_SIM_LO] = float(now_ns & 0xFFFFFFFF)
        self.cal[C_BASE_NS] = float(now_ns)   # approximate: for cold readers of the array

    def recalibrate(self) -> None:
        pass   # simulated time moves only with the rounds

    def now_ns(self) -> int:
        return int(_now(self.cal))


def make_clock(ctx):
    """The stage's clock: a SimClock in a sim-time (lockstep) run, else the calibrated TSC."""
    return SimClock() if ctx.extra.get("lockstep") else TscClock()
