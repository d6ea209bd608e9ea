"""Idle strategies: what a stage does when a poll found no work. Runs in every stage process.

Called once per poll from the stage runner (Python level, between @njit batches):
``idle.idle(work_count)``. Work > 0 resets the strategy; 0 advances it.

Costs measured on this kind of machine (CONVENTIONS.md): a Python call 0.15-0.6 us,
``sched_yield`` about 0.8 us, ``time.sleep`` never less than about 55 us (timer slack). Hence:

  busy-spin  never gives the core away: lowest latency, burns 100% of a core. Only for stages
             pinned to isolated cores on bare metal (isolcpus/nohz_full).
  yield      sched_yield() when idle: gives the core to anything runnable, else comes back at
             once; still ~100% CPU on an idle machine.
  backoff    spin a little, then yield a little, then sleep with exponential growth up to a cap
             (default 1 ms): near-zero CPU when idle, tens of microseconds of wake-up latency
             at worst after a quiet period. The default: this machine has 2 cores and more
             stages than that.
  blocking   spin a few polls (``max_spins``), then park on the process's doorbell
             (shm/doorbell.py: one semaphore, rung by whichever input ring gets a record; the
             writer posts only when a reader is parked, so the busy path stays free of
             syscalls). Wake-up costs a futex round trip (~5-20 us) plus the scheduler's.
  hybrid     spin for a time budget (``[stages] spin_us`` since the last work), then park like
             blocking. While records arrive closer together than the budget the loop never
             sleeps (no wake-up cost on the hot chain); a quiet process costs nothing but its
             heartbeat. A park that timed out parks again at once (no new spin).

Parking needs a ``park(timeout_s) -> bool`` (the process's Doorbell); without one (unit
tests, a process with no doorbell) blocking and hybrid sleep ``timeout_s`` instead.
"""
from __future__ import annotations

import os
import time

IDLE_NAMES = ("busy-spin", "yield", "backoff", "blocking", "hybrid")


class IdleStrategy:
    name = ""

    def idle(self, work_count: int) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        pass


class BusySpin(IdleStrategy):
    name = "busy-spin"

    def idle(self, work_count: int) -> None:
        pass


class Yield(IdleStrategy):
    name = "yield"

    def idle(self, work_count: int) -> None:
        if work_count <= 0:
            os.sched_yield()


class Backoff(IdleStrategy):
    """Spin ``max_spins`` polls, yield ``max_yields`` polls, then sleep from ``min_sleep_s``
    doubling up to ``max_sleep_s`` (agrona's BackoffIdleStrategy, in Python units)."""

    name = "backoff"

    def __init__(self, max_spins: int = 100, max_yields: int = 20,
                 min_sleep_s: float = 50e-6, max_sleep_s: float = 1e-3):
        if max_spins < 0 or max_yields < 0 or not 0 < min_sleep_s <= max_sleep_s:
            raise ValueError("backoff: need max_spins, max_yields >= 0 and "
                             "0 < min_sleep_s <= max_sleep_s")
        self.max_spins = max_spins
        self.max_yields = max_yields
        self.min_sleep_s = min_sleep_s
        self.max_sleep_s = max_sleep_s
        self.reset()

    def reset(self) -> None:
        self.spins = 0
        self.yields = 0
        self.sleep_s = self.min_sleep_s

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            if self.spins or self.yields or self.sleep_s != self.min_sleep_s:
                self.reset()
            return
        if self.spins < self.max_spins:
            self.spins += 1
        elif self.yields < self.max_yields:
            self.yields += 1
            os.sched_yield()
        else:
            time.sleep(self.sleep_s)
            self.sleep_s = min(self.sleep_s * 2, self.max_sleep_s)


def _sleep_park(timeout_s: float) -> bool:
    time.sleep(timeout_s)
    return False


class Blocking(IdleStrategy):
    """Spin ``max_spins`` polls, then ``park`` for at most ``timeout_s`` (the bound also
    covers heartbeats and control messages)."""

    name = "blocking"

    def __init__(self, park=None, max_spins: int = 100, timeout_s: float = 1e-3):
        self.park = park or _sleep_park
        self.max_spins = max_spins
        self.timeout_s = timeout_s
        self.spins = 0
        self.parks = 0

    def reset(self) -> None:
        self.spins = 0

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self.spins = 0
            return
        if self.spins < self.max_spins:
            self.spins += 1
            return
        self.parks += 1
        self.park(self.timeout_s)


class Hybrid(IdleStrategy):
    """Poll for ``spin_us`` after the last work, then ``park`` (at most ``timeout_s``). A park
    that was woken starts a new spin budget; one that timed out parks again at once."""

    name = "hybrid"

    def __init__(self, park=None, spin_us: float = 50.0, timeout_s: float = 5e-3):
        if spin_us < 0 or timeout_s <= 0:
            raise ValueError("hybrid: need spin_us >= 0 and timeout_s > 0")
        self.park = park or _sleep_park
        self.spin_ns = int(spin_us * 1000)
        self.timeout_s = timeout_s
        self.idle_since = 0     # monotonic ns of the first empty poll; 0 while working
        self.parks = 0

    def reset(self) -> None:
        self.idle_since = 0

    def idle(self, work_count: int) -> None:
        if work_count > 0:
            self.idle_since = 0
            return
        now = time.monotonic_ns()
        if self.idle_since == 0:
            self.idle_since = now
            return
        if now - self.idle_since < self.spin_ns:
            return
        self.parks += 1
        if self.park(self.timeout_s):
            self.idle_since = 0   # woken by a writer: spin again for the burst that follows


def make_idle(name: str, **kwargs) -> IdleStrategy:
    """The idle strategy called ``name`` (busy-spin, yield, backoff, blocking, hybrid)."""
    classes = {c.name: c for c in (BusySpin, Yield, Backoff, Blocking, Hybrid)}
    try:
        cls = classes[name]
    except KeyError:
        raise ValueError(f"unknown idle strategy {name!r} (choose from: "
                         f"{', '.join(IDLE_NAMES)})") from None
    return cls(**kwargs)


def idle_for(name: str, park=None, spin_us: float = 50.0, timeout_s: float = 5e-3):
    """The idle strategy of a stage process: the parking ones get ``park`` (its Doorbell's),
    hybrid its spin budget, both the park timeout; the others need nothing."""
    if name == "hybrid":
        return Hybrid(park=park, spin_us=spin_us, timeout_s=timeout_s)
    if name == "blocking":
        return Blocking(park=park, timeout_s=timeout_s)
    return make_idle(name)


PARKING_IDLES = ("blocking", "hybrid")
