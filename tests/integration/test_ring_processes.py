"""Rings between real processes: nothing lost, duplicated, torn or reordered."""
from __future__ import annotations

import multiprocessing as mp

import pytest

from shm.records import MARKET_DTYPE
from shm.ring import BroadcastRing, SpscRing
from tests.integration import ring_workers as rw

CTX = mp.get_context("fork")


def _size(run_slow: bool) -> int:
    return 50_000_000 if run_slow else 5_000_000


def _run(kind, instance, name, total, n_readers, max_lag=0, timeout_s=120.0):
    q = CTX.Queue()
    readies = [CTX.Event() for _ in range(n_readers)]
    start = CTX.Event()
    consumers = [CTX.Process(target=rw.run_consumer,
                             args=(kind, instance, name, total, i, q, timeout_s, readies[i]))
                 for i in range(n_readers)]
    producer = CTX.Process(target=rw.run_producer,
                           args=(kind, instance, name, total, n_readers, max_lag, start))
    procs = consumers + [producer]
    try:
        for p in procs:
            p.start()
        for e in readies:
            assert e.wait(60), "consumer did not come up"
        start.set()
        results = [q.get(timeout=timeout_s + 30) for _ in consumers]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
        return sorted(results, key=lambda r: r["index"])
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()


def test_spsc_between_two_processes_loses_duplicates_tears_and_reorders_nothing(
        shm_prefix, run_slow):
    total = _size(run_slow)
    ring = SpscRing.create(shm_prefix, "stress", MARKET_DTYPE, 4096)
    try:
        (res,) = _run("spsc", shm_prefix, "stress", total, 1)
    finally:
        ring.unlink()
        ring.close()
    assert res == dict(index=0, received=total, bad=0, out_of_order=0, lost=0, last=total - 1)


def test_broadcast_with_three_readers_delivers_every_record_to_each_when_paced(
        shm_prefix, run_slow):
    total = _size(run_slow)
    ring = BroadcastRing.create(shm_prefix, "bstress", MARKET_DTYPE, 4096, 3)
    try:
        results = _run("broadcast", shm_prefix, "bstress", total, 3, max_lag=2048)
    finally:
        ring.unlink()
        ring.close()
    for res in results:
        assert res["received"] == total and res["lost"] == 0, res
        assert res["bad"] == 0 and res["out_of_order"] == 0 and res["last"] == total - 1, res


def test_broadcast_readers_lapped_by_an_unpaced_writer_account_for_every_record(
        shm_prefix, run_slow):
    # A small ring and no pacing: readers on a 2-core machine get lapped. Whatever they lose
    # they must count exactly, and whatever they get must be whole and in order.
    total = _size(run_slow) // 5
    ring = BroadcastRing.create(shm_prefix, "blap", MARKET_DTYPE, 256, 3)
    try:
        results = _run("broadcast", shm_prefix, "blap", total, 3)
    finally:
        ring.unlink()
        ring.close()
    for res in results:
        assert res["bad"] == 0 and res["out_of_order"] == 0, res
        assert res["received"] + res["lost"] == total, res
