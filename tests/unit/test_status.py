"""Status blocks: one 128-byte block per stage in shared memory, written by its stage, read by
the controller (and in another process)."""
from __future__ import annotations

import multiprocessing as mp

import pytest

from common.status import BLOCK_BYTES, ST_RUNNING, W_RECORDS_IN, W_RESTARTS, W_STATE
from shm.status import StatusTable


def test_each_stage_block_starts_on_its_own_128_byte_boundary(shm_prefix):
    t = StatusTable.create(shm_prefix, 5)
    try:
        assert t.addr % BLOCK_BYTES == 0
        addrs = [t.words[i].ctypes.data for i in range(5)]
        assert [b - a for a, b in zip(addrs, addrs[1:])] == [BLOCK_BYTES] * 4
    finally:
        t.segment.unlink()
        t.close()


def test_a_published_block_reads_back_field_by_field(shm_prefix):
    t = StatusTable.create(shm_prefix, 3)
    try:
        w = t.block(1)
        w.set(W_STATE, ST_RUNNING)
        w.set(W_RECORDS_IN, 12345)
        w.publish(999)
        b = t.read(1)
        assert b["state"] == ST_RUNNING and b["records_in"] == 12345
        assert b["heartbeat_ns"] == 999
        assert t.read(0)["records_in"] == 0 and t.read(2)["records_in"] == 0
    finally:
        t.segment.unlink()
        t.close()


def test_a_stage_publishing_never_overwrites_the_controllers_restart_count(shm_prefix):
    t = StatusTable.create(shm_prefix, 2)
    try:
        w = t.block(0)
        t.set_word(0, W_RESTARTS, 3)    # the controller, while the stage was down
        w.publish(1)
        assert t.read(0)["restarts"] == 3
    finally:
        t.segment.unlink()
        t.close()


def test_a_slot_outside_the_table_is_refused(shm_prefix):
    t = StatusTable.create(shm_prefix, 2)
    try:
        with pytest.raises(IndexError, match="status slot 2 out of range 0..1"):
            t.block(2)
    finally:
        t.segment.unlink()
        t.close()


def _child(instance, slot, n):
    t = StatusTable.attach(instance)
    w = t.block(slot)
    for i in range(1, n + 1):
        w.set(W_RECORDS_IN, i)
        w.publish(i)
    t.close()


def test_another_process_sees_its_blocks_counters_no_older_than_its_heartbeat(shm_prefix):
    t = StatusTable.create(shm_prefix, 2)
    try:
        p = mp.get_context("spawn").Process(target=_child, args=(shm_prefix, 1, 20000))
        p.start()
        seen = 0
        while p.is_alive() or seen < 20000:
            b = t.read(1)
            # heartbeat is stored last (release) and loaded first (acquire)
            assert b["records_in"] >= b["heartbeat_ns"]
            seen = b["heartbeat_ns"]
            if not p.is_alive() and seen < 20000:
                break
        p.join(30)
        assert p.exitcode == 0
        assert t.read(1)["heartbeat_ns"] == 20000 == t.read(1)["records_in"]
        assert t.read(0)[("records_in")] == 0
    finally:
        t.segment.unlink()
        t.close()
