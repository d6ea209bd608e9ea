"""``bench ipc``: our rings (spsc-njit, spsc-poll, broadcast-N) and the cache-line floor.

Benchmark code, run by ``run.py bench ipc`` in forked, pinned processes. The hot loops are the
resumable @njit kernels of bench/_ipc_kernels.py; this module sets up rings and processes,
re-enters the kernels (yielding the core in between) and enforces each figure's time budget.

Ping-pong: the parent publishes one 64-byte record on the out ring, every reader sends it back on
its own SPSC ring (fan-in: one reader polls several SPSC rings), the round trip ends when all
replies are in; one-way = round trip / 2. Throughput: the parent publishes N records in batches,
the children consume and check that every sequence number arrives once and in order; a child
that caught up waits until the writer is THR_LAG records ahead before it polls again (why:
consume_kernel). The broadcast writer never waits, so to measure delivered throughput the
benchmark's producer paces itself on its slowest reader's cursor (a lapped reader would make
the figure meaningless); lost records are still counted and reported.
"""
from __future__ import annotations

import os
import time

import numpy as np

from bench._ipc_kernels import (BATCH, BCAST, LAT_CAPACITY, SHARED_SPIN, SPIN, SPSC,
                                THR_CAPACITY, THR_LAG, consume_kernel, floor_ping, floor_pong,
                                ping_kernel, pong_kernel, produce_kernel, warm_up)
from bench._procs import Children, core_for, cores, read_tsc, shared_int64, wait_until
from shm.records import MARKET_DTYPE
from shm.ring import BroadcastRing, SpscRing
from shm.ringops import BLOCK, READER_LOST, RB_CURSOR

__all__ = ["SPSC", "BCAST", "warm_up", "ring_latency", "ring_throughput", "floor_latency",
           "floor_throughput"]


def _run(kernel, hard, what, *args, soft=None):
    """Re-enter a resumable kernel until it is done (True) or ``soft`` passes (False, the
    caller keeps what was measured); yield the core between entries. ``hard``: give up."""
    while not kernel(*args):
        now = time.monotonic()
        if soft is not None and now > soft:
            return False
        if now > hard:
            raise TimeoutError(f"{what}: no progress before the deadline")
        os.sched_yield()
    return True


def _stop_tick(budget_s, tick_ns):
    return int(read_tsc() + budget_s * 1e9 / tick_ns)


def _shared(n_procs):
    return n_procs > max(1, len(cores()))


def _spin(n_procs):
    """Empty polls before yielding: spin on dedicated cores, yield soon on shared ones."""
    return SHARED_SPIN if _shared(n_procs) else SPIN


def _i64(arr):
    return arr.view(np.int64).reshape(len(arr), -1)


# -- child bodies (run in forked processes) ---------------------------------------------------
def _child_pong(kind, inst, index, n, ready, hard, spin):
    ring_cls = SpscRing if kind == SPSC else BroadcastRing
    out = ring_cls.attach(inst, "lat.out", MARKET_DTYPE)
    back = SpscRing.attach(inst, f"lat.back.{index}", MARKET_DTYPE)
    r = out.reader() if kind == SPSC else out.reader(index)
    w = back.writer()
    buf = _i64(np.zeros(1, MARKET_DTYPE))
    prog = np.zeros(2, np.int64)
    ready[16 * index] = 1  # a plain store: the parent polls it from Python
    _run(pong_kernel, hard, "pong", kind, r.st, r.slots, w.st, w.slots, buf, prog, n, spin)


def _child_pong_poll(inst, n, ready, hard):
    """spsc-poll: one Python call per batch (a reader's bound poller, a writer's publisher)."""
    r = SpscRing.attach(inst, "lat.out", MARKET_DTYPE).reader()
    w = SpscRing.attach(inst, "lat.back.0", MARKET_DTYPE).writer()
    buf = np.zeros(16, MARKET_DTYPE)
    poll, publish = r.poller(buf), w.publisher(buf)
    ready[0] = 1
    done, idle = 0, 0
    while done < n:
        k = poll()
        if k:
            publish(k)
            done += k
            idle = 0
        else:
            idle += 1
            if idle > 20_000:
                idle = 0
                if time.monotonic() > hard:
                    raise TimeoutError("pong-poll")
                os.sched_yield()


def _child_consume(kind, inst, index, poll_py, results, target_at, hard, spin):
    """Consume until the producer's final count (results[target_at], lowered if it stopped
    early); then stamp the end time and what was received, out of order and lost."""
    ring_cls = SpscRing if kind == SPSC else BroadcastRing
    ring = ring_cls.attach(inst, "thr", MARKET_DTYPE)
    r = ring.reader() if kind == SPSC else ring.reader(index, from_start=True)
    slot = 16 * index
    prog = np.zeros(2, np.int64)
    buf = np.zeros(BATCH, MARKET_DTYPE)
    dst = _i64(buf)
    poll = r.poller(buf)
    results[slot] = 1  # ready
    target = int(results[target_at])
    while r.position < target:
        if poll_py:
            k = poll()
            if k:
                prog[0] += k
                prog[1] += np.count_nonzero(dst[:k, 1] != dst[:k, 0])
                continue
            idle = 1
            while idle < 20_000 and not r.available():
                idle += 1
            if idle < 20_000:
                continue
        elif consume_kernel(kind, r.st, r.slots, dst, prog, target, spin, THR_LAG):
            break
        target = int(results[target_at])
        if time.monotonic() > hard:
            raise TimeoutError("consume")
        os.sched_yield()
    results[slot + 1] = time.perf_counter_ns()
    results[slot + 2] = prog[0]
    results[slot + 3] = prog[1]
    results[slot + 4] = r.st[READER_LOST]


def _child_floor(lines, n, hard):
    base = lines.ctypes.data
    prog = np.zeros(1, np.int64)
    _run(floor_pong, hard, "cacheline-floor pong", base + 128, base, prog, n)


# -- measurements (parent side) --------------------------------------------------------------
def _kept(samples, done, warm):
    """Drop the warm-up round trips (or the first half, if the budget cut the run short)."""
    if done == 0:
        raise TimeoutError("no round trip completed within the time budget")
    return samples[min(warm, done // 2):done]


def ring_latency(kind, n_readers, inst, n, warm, tick_ns, budget_s, poll_py=False):
    """One-way latencies (ns): up to n ping-pongs after ``warm`` untimed ones, or as many as
    ``budget_s`` allows on a loaded machine."""
    total = n + warm
    soft = time.monotonic() + budget_s
    hard = soft + 30.0
    rings = []
    try:
        if kind == SPSC:
            out = SpscRing.create(inst, "lat.out", MARKET_DTYPE, LAT_CAPACITY)
        else:
            out = BroadcastRing.create(inst, "lat.out", MARKET_DTYPE, LAT_CAPACITY, n_readers)
        rings.append(out)
        backs = [SpscRing.create(inst, f"lat.back.{i}", MARKET_DTYPE, LAT_CAPACITY)
                 for i in range(n_readers)]
        rings += backs
        ready = shared_int64(16 * n_readers)
        spin = _spin(n_readers + 1)
        with Children() as kids:
            for i in range(n_readers):
                if poll_py:
                    kids.start(_child_pong_poll, (inst, total, ready, hard), core_for(i))
                else:
                    kids.start(_child_pong, (kind, inst, i, total, ready, hard, spin),
                               core_for(i))
            wait_until(lambda: all(ready[16 * i] for i in range(n_readers)), "ping: readers",
                       30, kids)
            w = out.writer()
            rs = [b.reader() for b in backs]
            if poll_py:
                samples, done = _ping_poll(w, rs[0], total, soft, hard)
            else:
                src = _i64(np.zeros(1, MARKET_DTYPE))
                dst = _i64(np.zeros(1, MARKET_DTYPE))
                rtt = np.zeros(total, np.int64)
                prog = np.zeros(4, np.int64)
                _run(ping_kernel, hard, "ping", kind, w.st, w.slots,
                     tuple(r.st for r in rs), tuple(r.slots for r in rs), src, dst, prog,
                     total, rtt, _stop_tick(budget_s, tick_ns), spin, soft=soft)
                samples, done = rtt * tick_ns, int(prog[0])
            if done == total:
                kids.join("ping-pong", 30)
            # else: cut short by the budget; leaving the block kills the pongers
        return (_kept(samples, done, warm) / 2).astype(np.int64)
    finally:
        for ring in rings:
            ring.close()
            ring.unlink()


def _ping_poll(w, r, total, soft, hard):
    rec = np.zeros(1, MARKET_DTYPE)
    buf = np.zeros(16, MARKET_DTYPE)
    out = np.zeros(total, np.int64)
    now = time.perf_counter_ns
    poll, publish = r.poller(buf), w.publisher(rec)
    for i in range(total):
        t0 = now()
        publish(1)
        spins = 0
        while poll() == 0:
            spins += 1
            if spins > 200_000:
                spins = 0
                if time.monotonic() > hard:
                    raise TimeoutError("ping-poll")
                os.sched_yield()
        out[i] = now() - t0
        if (i & 255) == 0 and time.monotonic() > soft:
            return out, i + 1
    return out, total


THR_RUNS = 3  # throughput runs per ring transport, after one shorter warm-up run


def ring_throughput(kind, n_readers, inst, n, tick_ns, budget_s, poll_py=False):
    """Records per second from the parent to n_readers consumers (each gets every record):
    the median of THR_RUNS runs after a warm-up run (a run takes 10-200 ms, and with more
    processes than cores one run in ten or so lands in a poor schedule); the runs' rates;
    and records lost to lapping in all of them (0 unless pacing failed).

    Placement: core_for, as the ping-pong: with 3 broadcast readers and the writer on 2
    cores, readers 0 and 2 share core 1 and reader 1 shares the writer's core. On a 2-core
    EPYC VM whose vCPUs sit close (floor 60-70 ns), 5 M records per run: 87-92 M rec/s per
    reader; the 3 readers on core 1 and the writer alone 66-70; all four processes on one
    core 57-63 (SPSC 177-192 in the same runs)."""
    share = budget_s / (THR_RUNS + 1)
    _throughput_once(kind, n_readers, inst, max(1, n // 4), tick_ns, share, poll_py)
    rates, lost = [], 0
    for _ in range(THR_RUNS):
        rate, l = _throughput_once(kind, n_readers, inst, n, tick_ns, share, poll_py)
        rates.append(rate)
        lost += l
    return float(np.median(rates)), rates, lost


def _throughput_once(kind, n_readers, inst, n, tick_ns, budget_s, poll_py):
    soft = time.monotonic() + budget_s
    hard = soft + 30.0
    if kind == SPSC:
        ring = SpscRing.create(inst, "thr", MARKET_DTYPE, THR_CAPACITY)
    else:
        ring = BroadcastRing.create(inst, "thr", MARKET_DTYPE, THR_CAPACITY, n_readers)
    try:
        target_at = 16 * n_readers
        results = shared_int64(16 * (n_readers + 1))
        results[target_at] = n
        spin = _spin(n_readers + 1)
        with Children() as kids:
            for i in range(n_readers):
                kids.start(_child_consume, (kind, inst, i, poll_py, results, target_at, hard,
                                            spin), core_for(i))
            wait_until(lambda: all(results[16 * i] for i in range(n_readers)),
                       "throughput: readers", 30, kids)
            w = ring.writer()
            src = np.zeros(BATCH, MARKET_DTYPE)
            pace = np.array([ring.reader_block_addr + BLOCK * i + RB_CURSOR
                             for i in range(n_readers)] if kind == BCAST else [], np.int64)
            t0 = time.perf_counter_ns()
            if poll_py:
                sent = _produce_poll(w, src, n, soft, hard)
            else:
                prog = np.zeros(2, np.int64)
                _run(produce_kernel, hard, "produce", kind, w.st, w.slots, _i64(src), prog,
                     n, pace, THR_CAPACITY, _stop_tick(budget_s, tick_ns), spin, soft=soft)
                sent = int(prog[0])
            results[target_at] = sent  # consumers re-read it whenever they idle
            kids.join("throughput", max(1.0, hard - time.monotonic()))
        t1 = max(int(results[16 * i + 1]) for i in range(n_readers))
        bad = sum(int(results[16 * i + 3]) for i in range(n_readers))
        lost = sum(int(results[16 * i + 4]) for i in range(n_readers))
        got = [int(results[16 * i + 2]) + int(results[16 * i + 4]) for i in range(n_readers)]
        if bad or any(g != sent for g in got):
            raise RuntimeError(f"throughput check failed: readers got {got} of {sent} "
                               f"records, {bad} out of order")
        return sent / ((t1 - t0) / 1e9), lost
    finally:
        ring.close()
        ring.unlink()


def _produce_poll(w, src, n, soft, hard):
    seq = _i64(src)
    done, spins, batches = 0, 0, 0
    base = np.arange(len(src), dtype=np.int64)
    publish = w.publisher(src)
    while done < n:
        k = min(len(src), n - done)
        seq[:k, 1] = base[:k] + done
        got = publish(k)
        done += got
        batches += 1
        if (batches & 63) == 0 and time.monotonic() > soft:
            break
        if got == 0:
            spins += 1
            if spins > 20_000:
                spins = 0
                if time.monotonic() > hard:
                    raise TimeoutError("produce-poll")
                os.sched_yield()
    return done


def _floor(n, tick_ns, budget_s):
    lines = shared_int64(32)  # two words 128 bytes apart: one cache line each way
    soft = time.monotonic() + budget_s
    hard = soft + 30.0
    rtt = np.zeros(n, np.int64)
    prog = np.zeros(3, np.int64)
    with Children() as kids:
        kids.start(_child_floor, (lines, n, hard), core_for(0))
        t0 = time.perf_counter_ns()
        _run(floor_ping, hard, "cacheline-floor", lines.ctypes.data + 128, lines.ctypes.data,
             prog, n, rtt, _stop_tick(budget_s, tick_ns), soft=soft)
        t1 = time.perf_counter_ns()
        done = int(prog[0])
        if done == n:
            kids.join("cacheline-floor", 30)
    return rtt, done, t1 - t0


def floor_latency(n, warm, tick_ns, budget_s):
    rtt, done, _ = _floor(n + warm, tick_ns, budget_s)
    return (_kept(rtt, done, warm) * tick_ns / 2).astype(np.int64)


def floor_throughput(n, tick_ns, budget_s):
    """A one-slot hand-over through the bare line (no buffer, so it is bound by the RTT)."""
    _, done, elapsed_ns = _floor(n, tick_ns, budget_s)
    return done / (elapsed_ns / 1e9)
