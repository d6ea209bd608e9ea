"""Ring kernels: batch publish and batch poll for SPSC and broadcast rings. HOT PATH.

Runs inside every stage process, inside @njit loops (or one Python call per batch).

Memory layout of a ring's content (after the segment header, see shm/ring.py):

    +0            writer block (128 B): head = records published so far (release, per batch)
    +128*(1+i)    reader block i (128 B): cursor, parked flag, lost, pid
    +128*(1+R)    slots: capacity x record_size; word 0 of each slot is the commit word

Positions are int64 counters that only grow; slot = position & (capacity - 1). Each one lives
on its own 128-byte block (two cache lines: the adjacent-line prefetcher pulls pairs, so 64 B is
not enough to keep the writer's and a reader's counters from sharing traffic).

Ordering, SPSC (lossless):
  writer: payload words (plain stores) -> store_release(commit = seq + 1) per record;
          head is published once per batch (release) for monitors and blocking readers.
          It re-reads the reader's cursor (acquire) only when its cached copy says "full".
  reader: load_acquire(commit) == seq + 1 -> the payload is complete; copy it; after the batch
          store_release(cursor) so the writer may reuse the slots (our loads finished first).
  One cache line (the slot) moves per record; the reader never touches the writer's head.

Ordering, broadcast (writer never waits; a per-slot seqlock instead of a cursor check):
  writer: store(commit = -(seq + 1)) "being written"; fence_release; payload; store_release(
          commit = seq + 1).
  reader: c = load_acquire(commit); c == seq + 1 -> copy payload; fence_acquire; re-load commit:
          unchanged -> the copy is whole; changed -> the writer lapped us mid-copy (discard it).
          A commit word naming a later sequence (c > seq + 1 or -c > seq + 1) means lapped: jump
          forward past the writer's current head - capacity and count every skipped record as
          lost, exactly (lost += new_position - old_position). The reader never reads a torn
          record and always knows how many it lost.

Local state ``st`` (int64, process-private, one per ring end) caches addresses and positions, so
the kernels take (st, slots, buffer, n) and never touch a Python object.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.atomics import (fence_acquire, fence_release, fence_seq_cst, load_acquire,
                         load_relaxed, store_relaxed, store_release)

BLOCK = 128  # bytes per counter block

# st[] indexes (both ends)
ST_SLOTS_ADDR = 0
ST_HEAD_ADDR = 1        # writer block: head word
ST_CURSOR_ADDR = 2      # reader: its own cursor word; SPSC writer: the reader's cursor word
ST_CAPACITY = 3
ST_MASK = 4
ST_WORDS = 5            # int64 words per record
ST_POS = 6              # this end's position (writer head / reader cursor), process-local
ST_CACHED = 7           # writer: cached reader cursor
READER_LOST = 8         # reader: records lost to lapping (broadcast), cumulative
ST_PARKED_ADDR = 9      # reader: its parked flag; writer: parked flag of reader 0
ST_N_READERS = 10
ST_WAKEUPS = 11         # 1: writer checks parked readers after each batch (blocking idle)
ST_WAKE = 12            # writer: set to 1 when a parked reader must be woken (caller posts)
ST_LAPS = 13            # reader: number of lapping events
ST_LOST_ADDR = 14       # reader: its 'lost' word in shared memory (for monitors)
ST_READER0_ADDR = 15    # writer: address of reader block 0
ST_SIZE = 16

# reader block word offsets (bytes)
RB_CURSOR = 0
RB_PARKED = 8
RB_LOST = 16
RB_PID = 24


@njit(cache=True, nogil=True)
def _check_parked(st):
    # Dekker handshake with a parking reader: our commit stores must be globally visible before
    # we read its parked flag (StoreLoad), or both sides could miss each other.
    fence_seq_cst()
    base = st[ST_READER0_ADDR]
    for i in range(st[ST_N_READERS]):
        if load_relaxed(base + i * BLOCK + RB_PARKED) != 0:
            st[ST_WAKE] = 1
            return


@njit(cache=True, nogil=True)
def spsc_publish(st, slots, src, n):
    """Copy up to n records (rows of the int64 view ``src``) into the ring; returns how many.

    Fewer than n means the ring is full: the caller keeps the rest (push-back, nothing lost).
    """
    pos = st[ST_POS]
    cap = st[ST_CAPACITY]
    free = cap - (pos - st[ST_CACHED])
    if free < n:
        st[ST_CACHED] = load_acquire(st[ST_CURSOR_ADDR])
        free = cap - (pos - st[ST_CACHED])
        if free <= 0:
            return 0
    k = n if n < free else free
    mask = st[ST_MASK]
    words = st[ST_WORDS]
    base = st[ST_SLOTS_ADDR]
    for i in range(k):
        seq = pos + i
        idx = seq & mask
        for w in range(1, words):
            slots[idx, w] = src[i, w]
        store_release(base + idx * words * 8, seq + 1)
    st[ST_POS] = pos + k
    store_release(st[ST_HEAD_ADDR], pos + k)
    if st[ST_WAKEUPS] != 0:
        _check_parked(st)
    return k


@njit(cache=True, nogil=True)
def spsc_poll(st, slots, dst, max_n):
    """Copy up to max_n ready records into rows of ``dst``; returns how many.

    ``ring_seq`` of each copied record is set to its sequence number (0-based).
    """
    pos = st[ST_POS]
    mask = st[ST_MASK]
    words = st[ST_WORDS]
    base = st[ST_SLOTS_ADDR]
    n = 0
    while n < max_n:
        seq = pos + n
        idx = seq & mask
        if load_acquire(base + idx * words * 8) != seq + 1:
            break
        for w in range(1, words):
            dst[n, w] = slots[idx, w]
        dst[n, 0] = seq
        n += 1
    if n > 0:
        st[ST_POS] = pos + n
        store_release(st[ST_CURSOR_ADDR], pos + n)
    return n


@njit(cache=True, nogil=True)
def spsc_available(st, slots):
    """1 if at least one record is ready for this reader, else 0 (no state change)."""
    seq = st[ST_POS]
    idx = seq & st[ST_MASK]
    return 1 if load_acquire(st[ST_SLOTS_ADDR] + idx * st[ST_WORDS] * 8) == seq + 1 else 0


@njit(cache=True, nogil=True)
def bcast_publish(st, slots, src, n):
    """Write n records; never waits for readers (a slow reader is lapped and told)."""
    pos = st[ST_POS]
    mask = st[ST_MASK]
    words = st[ST_WORDS]
    base = st[ST_SLOTS_ADDR]
    for i in range(n):
        seq = pos + i
        idx = seq & mask
        addr = base + idx * words * 8
        store_relaxed(addr, -(seq + 1))
        fence_release()
        for w in range(1, words):
            slots[idx, w] = src[i, w]
        store_release(addr, seq + 1)
    st[ST_POS] = pos + n
    store_release(st[ST_HEAD_ADDR], pos + n)
    if st[ST_WAKEUPS] != 0:
        _check_parked(st)
    return n


@njit(cache=True, nogil=True)
def _bcast_skip(st, pos):
    """Lapped at ``pos``: jump to a position the writer will not reach soon; count the loss."""
    head = load_acquire(st[ST_HEAD_ADDR])
    cap = st[ST_CAPACITY]
    # A quarter ring of slack: records just behind the writer's head are safe for a while, the
    # oldest ones are about to be overwritten again (and would lap us a second time).
    new_pos = head - cap + (cap >> 2)
    if new_pos <= pos:
        new_pos = pos + 1
    st[READER_LOST] += new_pos - pos
    st[ST_LAPS] += 1
    store_relaxed(st[ST_LOST_ADDR], st[READER_LOST])
    return new_pos


@njit(cache=True, nogil=True)
def bcast_poll(st, slots, dst, max_n):
    """Copy up to max_n whole records into ``dst``; returns how many. Lapping adds the exact
    number of skipped records to st[READER_LOST] and carries on from a newer position."""
    pos = st[ST_POS]
    mask = st[ST_MASK]
    words = st[ST_WORDS]
    base = st[ST_SLOTS_ADDR]
    n = 0
    while n < max_n:
        idx = pos & mask
        addr = base + idx * words * 8
        want = pos + 1
        c = load_acquire(addr)
        if c == want:
            for w in range(1, words):
                dst[n, w] = slots[idx, w]
            fence_acquire()
            if load_relaxed(addr) != want:
                pos = _bcast_skip(st, pos)   # overwritten while we copied: discard the copy
                continue
            dst[n, 0] = pos
            n += 1
            pos += 1
        elif c > want or -c > want:
            pos = _bcast_skip(st, pos)
        else:
            break  # not written yet (old lap, never written, or being written right now)
    st[ST_POS] = pos
    store_relaxed(st[ST_CURSOR_ADDR], pos)
    return n


@njit(cache=True, nogil=True)
def bcast_available(st, slots):
    """1 if the next record is ready or this reader was lapped (poll will make progress)."""
    pos = st[ST_POS]
    idx = pos & st[ST_MASK]
    c = load_acquire(st[ST_SLOTS_ADDR] + idx * st[ST_WORDS] * 8)
    return 1 if (c == pos + 1 or c > pos + 1 or -c > pos + 1) else 0


@njit(cache=True, nogil=True)
def set_parked(st, value):
    """Reader: announce (1) or withdraw (0) that it is about to sleep on its semaphore."""
    store_relaxed(st[ST_PARKED_ADDR], value)
    fence_seq_cst()


def new_state() -> np.ndarray:
    return np.zeros(ST_SIZE, dtype=np.int64)
