"""Ring behaviour within one process: push-back, lapping, layouts, permissions, clean-up."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from shm import ringops as ops
from shm.records import CONTROL_DTYPE, EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from shm.ring import BroadcastRing, RingLayoutError, SpscRing
from shm.segment import SegmentError, list_segments, unlink_instance


def _records(dtype, start, n):
    r = np.zeros(n, dtype)
    r["px_ticks"] = np.arange(start, start + n)
    return r


@pytest.fixture
def spsc(shm_prefix):
    ring = SpscRing.create(shm_prefix, "r", MARKET_DTYPE, 16)
    yield ring
    ring.unlink()
    ring.close()


def test_full_spsc_ring_pushes_back_and_overwrites_nothing(spsc):
    w, r = spsc.writer(), spsc.reader()
    assert w.publish(_records(MARKET_DTYPE, 0, 20)) == 16      # 4 refused: ring full
    assert w.publish(_records(MARKET_DTYPE, 16, 4)) == 0
    out = np.zeros(32, MARKET_DTYPE)
    assert r.poll(out[:5]) == 5
    assert w.publish(_records(MARKET_DTYPE, 16, 4)) == 4       # room again after the read
    n = r.poll(out)
    assert n == 15
    assert list(out["px_ticks"][:n]) == list(range(5, 20))
    assert list(out["ring_seq"][:n]) == list(range(5, 20))
    assert r.poll(out) == 0


def test_spsc_reader_restarted_resumes_where_the_last_one_stopped(spsc):
    w = spsc.writer()
    w.publish(_records(MARKET_DTYPE, 0, 10))
    out = np.zeros(4, MARKET_DTYPE)
    spsc.reader().poll(out)
    again = spsc.reader()
    assert again.poll(out) == 4 and list(out["px_ticks"]) == [4, 5, 6, 7]


def test_spsc_writer_restarted_resumes_after_its_last_committed_record(spsc):
    w = spsc.writer()
    w.publish(_records(MARKET_DTYPE, 0, 3))
    # simulate a crash between the last commit and the head store of a batch
    spsc._ctrl[0] = 1
    w2 = spsc.writer()
    assert w2.position == 3
    w2.publish(_records(MARKET_DTYPE, 3, 2))
    out = np.zeros(8, MARKET_DTYPE)
    assert spsc.reader().poll(out) == 5 and list(out["px_ticks"][:5]) == [0, 1, 2, 3, 4]


def test_reader_lapped_by_writer_reports_exactly_how_many_records_it_lost(shm_prefix):
    cap = 64
    ring = BroadcastRing.create(shm_prefix, "b", MARKET_DTYPE, cap, 2)
    try:
        w, slow, fast = ring.writer(), ring.reader(0), ring.reader(1)
        out = np.zeros(1000, MARKET_DTYPE)
        total = 1000
        for start in range(0, total, 50):
            w.publish(_records(MARKET_DTYPE, start, 50))
            assert fast.poll(out) == 50                     # keeps up: loses nothing
        assert fast.lost == 0
        n = slow.poll(out)
        # the slow reader jumps to head - capacity + capacity/4 and counts what it skipped
        assert slow.lost == total - cap + cap // 4
        assert n == cap - cap // 4
        assert list(out["px_ticks"][:n]) == list(range(total - n, total))
        assert ring.stats()["readers"][0]["lost"] == slow.lost
    finally:
        ring.unlink()
        ring.close()


def test_broadcast_writer_never_waits_for_readers(shm_prefix):
    ring = BroadcastRing.create(shm_prefix, "b", MARKET_DTYPE, 8, 1)
    try:
        w = ring.writer()
        ring.reader(0)
        assert w.publish(_records(MARKET_DTYPE, 0, 100)) == 100
        assert ring.head() == 100
    finally:
        ring.unlink()
        ring.close()


def test_attaching_with_another_record_layout_names_the_fields_that_differ(spsc, shm_prefix):
    with pytest.raises(RingLayoutError) as err:
        SpscRing.attach(shm_prefix, "r", ORDER_DTYPE)
    msg = str(err.value)
    assert "client_order_id@16" in msg and "exch_ts_ns@16" in msg and "order records" in msg
    with pytest.raises(RingLayoutError, match="record size 64 bytes in the segment, 128"):
        SpscRing.attach(shm_prefix, "r", EXEC_DTYPE)
    with pytest.raises(RingLayoutError, match="'spsc' ring, not 'broadcast'"):
        BroadcastRing.attach(shm_prefix, "r", MARKET_DTYPE)
    custom = np.dtype([("ring_seq", "<i8"), ("x", "<i8"), ("pad", "<i8", (6,))], align=True)
    with pytest.raises(RingLayoutError, match="layout differs"):
        SpscRing.attach(shm_prefix, "r", custom)


def test_attaching_a_missing_ring_says_which(shm_prefix):
    with pytest.raises(SegmentError, match=f"hftfarm.{shm_prefix}.nope does not exist"):
        SpscRing.attach(shm_prefix, "nope", MARKET_DTYPE, timeout_s=0)


def test_creating_a_ring_twice_is_refused_with_a_hint(spsc, shm_prefix):
    with pytest.raises(SegmentError, match="already exists"):
        SpscRing.create(shm_prefix, "r", MARKET_DTYPE, 16)


def test_a_semaphore_left_by_a_crashed_ring_is_replaced_not_reused(shm_prefix):
    """A crash left a reader's semaphore (with a stale count) but not its segment: creating
    the ring again works, and the parked reader is not woken by the stale count."""
    import posix_ipc

    name = f"/hftfarm.{shm_prefix}.blk.r0"
    posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=3).close()
    ring = SpscRing.create(shm_prefix, "blk", MARKET_DTYPE, 16, wakeups=True)
    try:
        assert posix_ipc.Semaphore(name).value == 0
        assert ring.reader().park(0.001) is False
    finally:
        ring.unlink()
        ring.close()
    assert list_segments(shm_prefix) == []


def test_ring_rejects_bad_capacity_and_wrong_record_array(shm_prefix, spsc):
    with pytest.raises(ValueError, match="power of two"):
        SpscRing.create(shm_prefix, "x", MARKET_DTYPE, 12)
    with pytest.raises(TypeError, match="carries market records, got an array of control"):
        spsc.writer().publish(np.zeros(1, CONTROL_DTYPE))


def test_python_ends_reuse_one_buffer_publish_its_first_n_and_refuse_bad_ones(spsc):
    w, r = spsc.writer(), spsc.reader()
    buf = _records(MARKET_DTYPE, 0, 8)
    assert w.publish(buf, 3) == 3
    buf["px_ticks"] = np.arange(100, 108)           # the same buffer, refilled
    assert w.publish(buf, 2) == 2
    assert w.publish(buf, 0) == 0
    out = np.zeros(8, MARKET_DTYPE)
    assert r.poll(out) == 5
    assert list(out["px_ticks"][:5]) == [0, 1, 2, 100, 101]
    with pytest.raises(ValueError, match=r"ring r: publish n=9 outside 0\.\.8"):
        w.publish(buf, 9)
    with pytest.raises(ValueError, match="publish n=-1"):
        w.publish(buf, -1)
    with pytest.raises(ValueError, match="contiguous 1-D"):
        w.publish(buf[::2])
    with pytest.raises(ValueError, match="contiguous 1-D"):
        r.poll(out[::2])
    assert r.poll(out) == 0                          # nothing was taken by the refused calls


@pytest.mark.parametrize("kind", ["spsc", "broadcast"])
def test_bound_poller_and_publisher_move_the_same_records_as_poll_and_publish(shm_prefix, kind):
    if kind == "spsc":
        ring = SpscRing.create(shm_prefix, "b", MARKET_DTYPE, 16)
        r = ring.reader()
    else:
        ring = BroadcastRing.create(shm_prefix, "b", MARKET_DTYPE, 16, 1)
        r = ring.reader(0)
    try:
        w = ring.writer()
        src, out = _records(MARKET_DTYPE, 0, 8), np.zeros(4, MARKET_DTYPE)
        publish, poll = w.publisher(src), r.poller(out)
        assert publish(5) == 5
        assert poll() == 4 and list(out["px_ticks"]) == [0, 1, 2, 3]
        assert list(out["ring_seq"]) == [0, 1, 2, 3]
        assert r.poll(out) == 1 and out["px_ticks"][0] == 4      # the method, interleaved
        src["px_ticks"] = np.arange(50, 58)
        assert publish(2) == 2 and poll() == 2 and list(out["px_ticks"][:2]) == [50, 51]
        assert poll() == 0
        with pytest.raises(ValueError, match="outside the publisher's buffer"):
            publish(9)
        with pytest.raises(TypeError, match="carries market records"):
            r.poller(np.zeros(4, CONTROL_DTYPE))
        with pytest.raises(ValueError, match="contiguous 1-D"):
            w.publisher(src[::2])
    finally:
        ring.unlink()
        ring.close()
    with pytest.raises(ValueError, match="poll on a closed ring"):
        poll()
    with pytest.raises(ValueError, match="publish on a closed ring"):
        publish(1)


def test_python_calls_follow_an_end_whose_state_a_stage_stacked(shm_prefix):
    from stages.base import stack_states

    ring = SpscRing.create(shm_prefix, "s", MARKET_DTYPE, 16)
    try:
        w, r = ring.writer(), ring.reader()
        buf, out = _records(MARKET_DTYPE, 0, 4), np.zeros(4, MARKET_DTYPE)
        stale = r.poller(out)
        assert w.publish(buf, 2) == 2 and r.poll(out) == 2
        sts = stack_states([r])
        assert r.st.base is sts
        # the kernel path (the stacked row) and the Python path share one position
        w.publish(buf, 1)
        assert ops.spsc_poll(sts[0], r.slots, out.view(np.int64).reshape(-1, 8), 4) == 1
        w.publish(buf, 3)
        assert r.available() and r.poll(out) == 3 and list(out["px_ticks"][:3]) == [0, 1, 2]
        assert r.position == sts[0][ops.ST_POS] == 6
        with pytest.raises(ValueError, match="closed ring"):
            stale()                                    # bound to the replaced state
    finally:
        ring.unlink()
        ring.close()


def test_closed_ends_refuse_calls_instead_of_touching_unmapped_memory(shm_prefix):
    ring = SpscRing.create(shm_prefix, "c", MARKET_DTYPE, 16)
    w, r = ring.writer(), ring.reader()
    buf = np.zeros(2, MARKET_DTYPE)
    w.publish(buf)
    r.poll(buf)
    ring.unlink()
    ring.close()
    with pytest.raises(ValueError, match="ring c: this writer is closed"):
        w.publish(buf)
    with pytest.raises(ValueError, match="ring c: this reader is closed"):
        r.poll(buf)
    with pytest.raises(ValueError, match="this reader is closed"):
        r.available()
    with pytest.raises(ValueError, match="this reader is closed"):
        r.park(0.01)


def test_segments_are_owner_only_and_listed_with_their_kind(spsc, shm_prefix):
    ring = BroadcastRing.create(shm_prefix, "b", MARKET_DTYPE, 8, 2)
    try:
        mode = stat.S_IMODE(os.stat(f"/dev/shm/hftfarm.{shm_prefix}.r").st_mode)
        assert mode == 0o600
        sem_mode = stat.S_IMODE(os.stat(f"/dev/shm/sem.hftfarm.{shm_prefix}.b.r1").st_mode)
        assert sem_mode == 0o600
        infos = {i.name: i for i in list_segments(shm_prefix)}
        assert infos[f"hftfarm.{shm_prefix}.r"].kind == "spsc"
        assert infos[f"hftfarm.{shm_prefix}.b"].kind == "broadcast"
        assert infos[f"hftfarm.{shm_prefix}.b"].alive
        assert f"sem.hftfarm.{shm_prefix}.b.r0" in infos
    finally:
        ring.close()
        unlink_instance(shm_prefix)
    assert list_segments(shm_prefix) == []


def test_blocking_reader_is_woken_by_the_writer_only_when_parked(shm_prefix):
    import threading
    import time

    ring = SpscRing.create(shm_prefix, "blk", MARKET_DTYPE, 16, wakeups=True)
    try:
        w, r = ring.writer(), ring.reader()
        assert r.park(0.001) is False                         # nothing: times out
        w.publish(_records(MARKET_DTYPE, 0, 1))
        assert w.st[ops.ST_WAKE] == 0                         # nobody parked: no post
        assert r.park(5.0) is True                            # data already there: no sleep
        out = np.zeros(4, MARKET_DTYPE)
        assert r.poll(out) == 1
        woke = []
        t = threading.Thread(target=lambda: woke.append(r.park(5.0)))
        t.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        w.publish(_records(MARKET_DTYPE, 1, 1))
        t.join(5)
        assert woke == [True] and time.monotonic() - t0 < 4.0
        assert r.poll(out) == 1 and out["px_ticks"][0] == 1
        # a bound publisher wakes a parked reader too
        publish = w.publisher(_records(MARKET_DTYPE, 2, 1))
        woke.clear()
        t = threading.Thread(target=lambda: woke.append(r.park(5.0)))
        t.start()
        time.sleep(0.05)
        assert publish(1) == 1
        t.join(5)
        assert woke == [True] and r.poll(out) == 1 and out["px_ticks"][0] == 2
    finally:
        ring.unlink()
        ring.close()
