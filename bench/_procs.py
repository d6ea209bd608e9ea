"""Benchmark harness: forked, pinned child processes that are always reaped; a TSC clock for
@njit timing loops; a description of the machine. Runs in ``run.py bench`` only (never on the
data path).

Why fork: every kernel is compiled (or loaded from numba's cache) once in the parent before
the first fork, so children start in milliseconds with warm code and nothing to import.
Children die with the parent (PR_SET_PDEATHSIG), exit quietly on Ctrl-C (the parent's
``finally`` does the cleanup), and are killed if they outlive their phase.
"""
from __future__ import annotations

import ctypes
import mmap
import multiprocessing as mp
import os
import platform
import signal
import sys
import time
import traceback

import numpy as np

from common.tsc import TscSpan, rdtsc, read_tsc  # noqa: F401  (rdtsc: the timing loops)

_CTX = mp.get_context("fork")
_PR_SET_PDEATHSIG = 1


# -- clock ----------------------------------------------------------------------------------
def tsc_ns_per_tick(window_s: float = 0.05) -> float:
    """TSC rate against CLOCK_MONOTONIC, measured over ``window_s`` (twice; the median)."""
    read_tsc()   # compiled or loaded before the first window
    rates = []
    for _ in range(2):
        span = TscSpan().start()
        time.sleep(window_s)
        rates.append(span.ns_per_tick())
    return float(np.median(rates))


# -- cores ----------------------------------------------------------------------------------
_CORES: list[int] = []


def cores() -> list[int]:
    """The cores this benchmark may use, as found before anything was pinned (the parent
    pins itself to the first one, after which its own affinity names only that core)."""
    if not _CORES:
        _CORES.extend(sorted(os.sched_getaffinity(0)))
    return list(_CORES)


def core_for(k: int, parent_core: int | None = None) -> int | None:
    """Core of child ``k``: the parent keeps cores()[0]; children go round the others first,
    then share (3 broadcast readers on a 2-core machine: core 1, core 0, core 1)."""
    cs = cores()
    if len(cs) < 2:
        return None
    others = cs[1:] + cs[:1]
    return others[k % len(others)]


def pin(core: int | None) -> None:
    """Pin to ``core``; None: free to run on every usable core. A forked child inherits its
    parent's affinity, and the parent is pinned to cores()[0], so "not pinned" has to be set
    explicitly or every unpinned child shares the parent's core."""
    os.sched_setaffinity(0, {core} if core is not None else set(cores()))


# -- shared scratch -------------------------------------------------------------------------
def shared_int64(n: int) -> np.ndarray:
    """Anonymous MAP_SHARED memory: shared with children forked later, nothing in /dev/shm,
    gone when the last process exits. 128-byte aligned (mmap is page aligned)."""
    mm = mmap.mmap(-1, max(8 * n, 8), flags=mmap.MAP_SHARED)
    arr = np.frombuffer(mm, dtype=np.int64, count=n)
    arr[:] = 0
    return arr


# -- children -------------------------------------------------------------------------------
def _child_main(core, target, args):
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
        pin(core)
        target(*args)
    except BaseException:  # report, then exit non-zero; the parent names the transport
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


class Children:
    """``with Children() as kids: kids.start(fn, args, core)``: every child is joined, and
    killed if it is still alive when the block ends (error, timeout or Ctrl-C)."""

    def __init__(self):
        self.procs: list = []

    def start(self, target, args=(), core=None):
        p = _CTX.Process(target=_child_main, args=(core, target, args), daemon=True)
        p.start()
        self.procs.append(p)
        return p

    def check(self, what: str) -> None:
        """Raise if a child already died with an error (instead of waiting for a timeout)."""
        for p in self.procs:
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"{what}: child process {p.pid} exited with {p.exitcode}")

    def join(self, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        self.check(what)
        alive = [p.pid for p in self.procs if p.is_alive()]
        if alive:
            raise TimeoutError(f"{what}: child processes {alive} did not finish in {timeout_s}s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(5)
        self.procs.clear()


def wait_until(cond, what: str, timeout_s: float, kids: Children | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if kids is not None:
            kids.check(what)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: gave up after {timeout_s}s")
        os.sched_yield()


# -- machine --------------------------------------------------------------------------------
def machine_info() -> dict:
    import numba

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu_model": model, "cores": os.cpu_count(), "usable_cores": cores(),
        "kernel": platform.release(), "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__, "start_method": "fork",
    }
