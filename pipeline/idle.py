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
  blocking   spin a little, then park on the reader's POSIX semaphore; the writer posts only
             when a reader is parked (ring created with wakeups=True), so the busy path stays
             free of syscalls. Wake-up costs a futex round trip (~5-20 us).
"""
from __future__ import annotations

import os
import time

IDLE_NAMES = ("busy-spin", "yield", "backoff", "blocking")


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


class Blocking(IdleStrategy):
    """Spin ``max_spins`` polls, then park on the first reader's semaphore for at most
    ``timeout_s`` (the bound also covers other inputs of the stage and control messages)."""

    name = "blocking"

    def __init__(self, readers=(), max_spins: int = 100, timeout_s: float = 1e-3):
        self.readers = list(readers)
        self.max_spins = max_spins
        self.timeout_s = timeout_s
        self.spins = 0
        self.parks = 0

    def attach(self, reader) -> None:
        self.readers.append(reader)

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
        if self.readers:
            self.readers[0].park(self.timeout_s)
        else:
            time.sleep(self.timeout_s)


def make_idle(name: str, **kwargs) -> IdleStrategy:
    """The idle strategy called ``name`` (busy-spin, yield, backoff, blocking)."""
    classes = {c.name: c for c in (BusySpin, Yield, Backoff, Blocking)}
    try:
        cls = classes[name]
    except KeyError:
        raise ValueError(f"unknown idle strategy {name!r} (choose from: "
                         f"{', '.join(IDLE_NAMES)})") from None
    return cls(**kwargs)
