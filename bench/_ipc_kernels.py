"""``bench ipc`` kernels: @njit ping-pong, produce / consume loops and the cache-line floor.

Benchmark code (not the data path), run inside the forked, pinned processes of
bench/_ipc_rings.py. Every loop is resumable and bounded: after ``spin`` empty polls, or once the
TSC passes the caller's stop tick, it returns 0 with its progress saved in ``prog``; the Python
caller then yields the core and checks its deadline before re-entering. Where there are more
processes than cores (3 broadcast readers and a writer on a 2-core machine), ``spin`` is
SHARED_SPIN: the kernel yields the core itself after that many empty polls, as a stage's
backoff idle does, so the process it waits for gets to run without a trip through Python.
The ring operations are shm.ringops' own kernels, so what is measured is exactly what a stage
runs.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bench._procs import rdtsc
from shm.atomics import cpu_relax, load_acquire, sched_yield, store_release
from shm.ringops import ST_HEAD_ADDR, ST_POS, bcast_poll, bcast_publish, spsc_poll, spsc_publish

SPIN = 20_000           # empty polls (~0.5 ms with PAUSE) before returning to Python to yield
SHARED_SPIN = 64        # more processes than cores: yield after this many empty polls, in-kernel
YIELDS = 256            # in-kernel yields before returning to Python (deadline checks)
SPSC, BCAST = 0, 1
BATCH = 256
LAT_CAPACITY = 1024
THR_CAPACITY = 32768    # 2 MiB of 64-byte records (16k: the same within noise)
THR_LAG = 1024          # a caught-up throughput consumer waits for this many (see consume_kernel)



@njit(cache=True, nogil=True)
def _idle(spins, yields, spin):
    """One empty poll: PAUSE, and past ``spin`` of them either stop (dedicated cores: the
    kernel returns to Python, which yields and checks its deadline) or yield the core here
    (shared cores: let the peer we wait for run; stop after YIELDS of those).
    Returns (spins, yields, stop)."""
    spins += 1
    if spins > spin:
        if spin >= SPIN:
            return spins, yields, True
        sched_yield()
        spins = 0
        yields += 1
        if yields > YIELDS:
            return spins, yields, True
    cpu_relax()  # PAUSE: leaving a spin without it costs a memory-order pipeline flush
    return spins, yields, False


@njit(cache=True, nogil=True)
def _pub(kind, st, slots, src, n):
    if kind == SPSC:
        return spsc_publish(st, slots, src, n)
    return bcast_publish(st, slots, src, n)


@njit(cache=True, nogil=True)
def _poll(kind, st, slots, dst, n):
    if kind == SPSC:
        return spsc_poll(st, slots, dst, n)
    return bcast_poll(st, slots, dst, n)


@njit(cache=True, nogil=True)
def ping_kernel(kind, out_st, out_slots, back_sts, back_slots, src, dst, prog, n, rtt,
                stop_tick, spin):
    """prog: [next round trip, in flight?, replies so far, t0 ticks]. Returns 1 when done,
    0 when _idle says stop or once the TSC passes stop_tick (the caller's time budget)."""
    spins = 0
    yields = 0
    n_back = len(back_sts)
    while prog[0] < n:
        if prog[1] == 0:
            src[0, 1] = prog[0]
            prog[3] = rdtsc()
            _pub(kind, out_st, out_slots, src, 1)  # one record in flight: never full
            prog[1] = 1
            prog[2] = 0
        for r in range(n_back):
            prog[2] += spsc_poll(back_sts[r], back_slots[r], dst, 1)
        if prog[2] >= n_back:
            t1 = rdtsc()
            rtt[prog[0]] = t1 - prog[3]
            prog[0] += 1
            prog[1] = 0
            spins = 0
            if t1 > stop_tick:
                return 0
        else:
            spins, yields, stop = _idle(spins, yields, spin)
            if stop:
                return 0
    return 1


@njit(cache=True, nogil=True)
def pong_kernel(kind, in_st, in_slots, back_st, back_slots, buf, prog, n, spin):
    """Send every record straight back; prog[0] counts replies. Returns 1 when done."""
    spins = 0
    yields = 0
    while prog[0] < n:
        if _poll(kind, in_st, in_slots, buf, 1) == 1:
            while spsc_publish(back_st, back_slots, buf, 1) == 0:
                cpu_relax()
            prog[0] += 1
            spins = 0
        else:
            spins, yields, stop = _idle(spins, yields, spin)
            if stop:
                return 0
    return 1


@njit(cache=True, nogil=True)
def produce_kernel(kind, st, slots, src, prog, n, pace_addrs, capacity, stop_tick, spin):
    """Publish records 0..n-1 in batches of len(src); prog[0] = published. The broadcast
    producer waits while its slowest reader (cursor words at pace_addrs) is a ring behind."""
    spins = 0
    yields = 0
    batch = src.shape[0]
    while prog[0] < n:
        k = min(batch, n - prog[0])
        if pace_addrs.shape[0] > 0:
            slowest = load_acquire(pace_addrs[0])
            for r in range(1, pace_addrs.shape[0]):
                c = load_acquire(pace_addrs[r])
                if c < slowest:
                    slowest = c
            if prog[0] + k - slowest > capacity:
                spins, yields, stop = _idle(spins, yields, spin)
                if stop:
                    return 0
                continue
        for j in range(k):
            src[j, 1] = prog[0] + j
        got = _pub(kind, st, slots, src, k)
        if got == 0:
            spins, yields, stop = _idle(spins, yields, spin)
            if stop:
                return 0
            continue
        prog[0] += got
        spins = 0
        if rdtsc() > stop_tick:
            return 0
    return 1


@njit(cache=True, nogil=True)
def consume_kernel(kind, st, slots, dst, prog, n, spin, lag):
    """Poll until position n; prog: [received, out-of-order or duplicated records].

    A throughput consumer drains in batches: once a poll comes back short (it caught up), it
    waits until the writer's head (published once per batch) is ``lag`` records ahead, or
    at n, before it polls again. A consumer that stays right behind the writer reads each
    cache line while the writer is still filling its neighbours, and its core's prefetcher
    pulls lines the writer is about to store to: each line then crosses between the cores
    more than once. The SPSC reader never stays there (it is slower than its writer, so its
    ring fills), but a broadcast reader is a little faster than its writer and does: on a
    2-core EPYC VM, broadcast-1 ran at 90-110 M rec/s against SPSC's ~185 without the wait,
    150-184 with it; SPSC is unchanged. The ping-pong consumers never wait (latency).
    """
    spins = 0
    yields = 0
    head_addr = st[ST_HEAD_ADDR]
    while st[ST_POS] < n:
        got = _poll(kind, st, slots, dst, dst.shape[0])
        if got == 0:
            spins, yields, stop = _idle(spins, yields, spin)
            if stop:
                return 0
            continue
        for j in range(got):
            if dst[j, 1] != dst[j, 0]:  # payload sequence vs. the ring's own position
                prog[1] += 1
        prog[0] += got
        spins = 0
        if got < dst.shape[0]:
            while True:
                head = load_acquire(head_addr)
                if head - st[ST_POS] >= lag or head >= n:
                    break
                spins, yields, stop = _idle(spins, yields, spin)
                if stop:
                    return 0
            spins = 0
    return 1


@njit(cache=True, nogil=True)
def floor_ping(line_out, line_in, prog, n, rtt, stop_tick):
    """Bare cache-line ping-pong: store_release our counter, spin on the other's.
    prog: [next round trip, in flight?, t0 ticks]. Returns 1 when done, 0 after SPIN spins."""
    spins = 0
    while prog[0] < n:
        i = prog[0]
        if prog[1] == 0:
            prog[2] = rdtsc()
            store_release(line_out, i + 1)
            prog[1] = 1
        if load_acquire(line_in) == i + 1:
            t1 = rdtsc()
            rtt[i] = t1 - prog[2]
            prog[0] = i + 1
            prog[1] = 0
            spins = 0
            if t1 > stop_tick:
                return 0
        else:
            spins += 1
            if spins > SPIN:
                return 0
            cpu_relax()  # PAUSE: leaving a spin without it costs a memory-order pipeline flush
    return 1


@njit(cache=True, nogil=True)
def floor_pong(line_in, line_out, prog, n):
    spins = 0
    while prog[0] < n:
        if load_acquire(line_in) == prog[0] + 1:
            store_release(line_out, prog[0] + 1)
            prog[0] += 1
            spins = 0
        else:
            spins += 1
            if spins > SPIN:
                return 0
            cpu_relax()  # PAUSE: leaving a spin without it costs a memory-order pipeline flush
    return 1


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once, before anything is forked."""
    st = np.zeros(16, np.int64)
    rows = np.zeros((1, 8), np.int64)
    prog = np.zeros(4, np.int64)
    for kind in (SPSC, BCAST):
        for n_back in (1, 3):
            ping_kernel(kind, st, rows, (st,) * n_back, (rows,) * n_back, rows, rows, prog, 0,
                        prog, 0, SPIN)
        pong_kernel(kind, st, rows, st, rows, rows, prog, 0, SPIN)
        produce_kernel(kind, st, rows, rows, prog, 0, np.zeros(0, np.int64), 1, 0, SPIN)
        # st[ST_POS] = 0 >= 0: returns at once
        consume_kernel(kind, st, rows, rows, prog, 0, SPIN, 0)
    floor_ping(0, 0, prog, 0, prog, 0)
    floor_pong(0, 0, prog, 0)
