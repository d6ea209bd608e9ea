"""Producer / consumer processes for the ring stress tests (real processes, @njit loops).

Every record i carries fields all derived from i, so a consumer can check each one alone:
  px_ticks = i, qty_lots = mix(i), aux0 = mix(mix(i)), aux1 = px ^ qty ^ aux0 ^ exch_ts,
  exch_ts_ns = i * 7, recv_ts_ns = ~i, instrument_id = i & 0xffff.
A torn record (half old, half new) fails the check; order and duplicates are checked by i.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from shm import ringops as ops
from shm.atomics import load_acquire, sched_yield
from shm.records import MARKET_DTYPE
from shm.ring import BroadcastRing, SpscRing

WORDS = MARKET_DTYPE.itemsize // 8
BATCH = 64


@njit(cache=True)
def mix(x):
    x = (x ^ (x >> 31)) * 0x7FB5D329728EA185
    x = (x ^ (x >> 27)) * 0x81DADEF4BC2DD44D
    return x ^ (x >> 33)


@njit(cache=True)
def fill(buf, start, n):
    for k in range(n):
        i = start + k
        q = mix(i)
        a = mix(q)
        buf[k]["px_ticks"] = i
        buf[k]["qty_lots"] = q
        buf[k]["aux0"] = a
        buf[k]["exch_ts_ns"] = i * 7
        buf[k]["recv_ts_ns"] = ~i
        buf[k]["instrument_id"] = i & 0xFFFF
        buf[k]["aux1"] = i ^ q ^ a ^ (i * 7)


@njit(cache=True)
def check(rec):
    i = rec["px_ticks"]
    q = mix(i)
    a = mix(q)
    return (rec["qty_lots"] == q and rec["aux0"] == a and rec["exch_ts_ns"] == i * 7
            and rec["recv_ts_ns"] == ~i and rec["instrument_id"] == (i & 0xFFFF)
            and rec["aux1"] == i ^ q ^ a ^ (i * 7))


@njit(cache=True)
def produce_spsc(st, slots, buf, buf64, total):
    """Publish records 0..total-1; returns how many times the ring pushed back."""
    i = 0
    pushbacks = 0
    while i < total:
        n = min(BATCH, total - i)
        fill(buf, i, n)
        done = 0
        while done < n:
            k = ops.spsc_publish(st, slots, buf64[done:], n - done)
            if k == 0:
                pushbacks += 1
            done += k
        i += n
    return pushbacks


@njit(cache=True)
def produce_bcast(st, slots, buf, buf64, total, reader_block0, n_readers, max_lag):
    """Publish 0..total-1. With max_lag > 0 the *test* paces itself on the slowest reader's
    cursor (the ring never waits; this producer chooses to)."""
    i = 0
    while i < total:
        if max_lag > 0:
            while True:
                slowest = i
                for r in range(n_readers):
                    c = load_acquire(reader_block0 + r * ops.BLOCK + ops.RB_CURSOR)
                    if c < slowest:
                        slowest = c
                if i - slowest <= max_lag:
                    break
                sched_yield()  # more processes than cores here: let the readers run
        n = min(BATCH, total - i)
        fill(buf, i, n)
        ops.bcast_publish(st, slots, buf64, n)
        i += n
    return 0


@njit(cache=True)
def consume(st, slots, buf, buf64, is_bcast, expect_next, max_polls, stats):
    """Poll up to max_polls times; check every record. stats: [received, bad, out_of_order,
    next_expected, empty_polls]. Returns records received in this call."""
    got = 0
    for _ in range(max_polls):
        if is_bcast:
            n = ops.bcast_poll(st, slots, buf64, BATCH)
        else:
            n = ops.spsc_poll(st, slots, buf64, BATCH)
        if n == 0:
            stats[4] += 1
            sched_yield()
            continue
        for k in range(n):
            rec = buf[k]
            if not check(rec):
                stats[1] += 1
            i = rec["px_ticks"]
            if is_bcast:
                # after a lap the next record may be later than expected, never earlier
                if i < expect_next:
                    stats[2] += 1
            elif i != expect_next:
                stats[2] += 1
            expect_next = i + 1
        got += n
        stats[0] += n
    stats[3] = expect_next
    return got


def run_producer(kind, instance, name, total, n_readers=1, max_lag=0, start_evt=None):
    ring_cls = SpscRing if kind == "spsc" else BroadcastRing
    ring = ring_cls.attach(instance, name, MARKET_DTYPE)
    try:
        w = ring.writer()
        buf = np.zeros(BATCH, MARKET_DTYPE)
        buf64 = buf.view(np.int64).reshape(-1, WORDS)
        if start_evt is not None:
            start_evt.wait(30)
        if kind == "spsc":
            produce_spsc(w.st, w.slots, buf, buf64, total)
        else:
            produce_bcast(w.st, w.slots, buf, buf64, total, ring.reader_block_addr, n_readers,
                          max_lag)
    finally:
        ring.close()


def run_consumer(kind, instance, name, total, index, result_q, timeout_s=60.0, ready_evt=None):
    ring_cls = SpscRing if kind == "spsc" else BroadcastRing
    ring = ring_cls.attach(instance, name, MARKET_DTYPE)
    try:
        r = ring.reader() if kind == "spsc" else ring.reader(index, from_start=True)
        buf = np.zeros(BATCH, MARKET_DTYPE)
        buf64 = buf.view(np.int64).reshape(-1, WORDS)
        stats = np.zeros(5, np.int64)
        consume(r.st, r.slots, buf, buf64, kind != "spsc", 0, 1, stats)  # compile/warm
        stats[:] = 0
        if ready_evt is not None:
            ready_evt.set()
        deadline = time.monotonic() + timeout_s
        expect = 0
        while stats[0] + r.lost < total and time.monotonic() < deadline:
            consume(r.st, r.slots, buf, buf64, kind != "spsc", expect, 10000, stats)
            expect = int(stats[3])
        result_q.put(dict(index=index, received=int(stats[0]), bad=int(stats[1]),
                          out_of_order=int(stats[2]), lost=r.lost, last=int(stats[3]) - 1))
    finally:
        ring.close()
