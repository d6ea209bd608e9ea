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

Why every kernel is an address-level core behind a one-line array shim: numba keeps a reference
count on every array argument, and where its pruning pass cannot match the increments with the
decrements (a loop with ``break`` is enough) each call pays three to six atomic read-modify-
writes: ~55 ns for an empty poll on a 2-core EPYC VM, against ~1 ns without them. The cores take
plain integers (addresses), so there is nothing to count, and Python can call them with a
cheap all-integer dispatch (ring.py does). ``tests/unit/test_ringops_codegen.py`` checks that no
kernel's machine code calls into the reference counter.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.atomics import (copy_56, copy_64, fence_acquire, fence_release, fence_seq_cst,
                         load_acquire, load_relaxed, peek, poke, store_relaxed, store_release)

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
ST_CLOSED = 16          # Python ends: 1 once the ring is closed (Python entries raise)
ST_SIZE = 24

# reader block word offsets (bytes)
RB_CURSOR = 0
RB_PARKED = 8
RB_LOST = 16
RB_PID = 24


@njit(cache=True, nogil=True)
def copy_payload(dst, src, rb):
    """Copy a record of ``rb`` bytes (a multiple of 64) between addresses, except word 0 (the
    commit word: a writer must never store anything there but the release of the commit)."""
    copy_56(dst + 8, src + 8)
    for off in range(64, rb, 64):
        copy_64(dst + off, src + off)


@njit(cache=True, nogil=True)
def _check_parked(s):
    # Dekker handshake with a parking reader: our commit stores must be globally visible before
    # we read its parked flag (StoreLoad), or both sides could miss each other.
    fence_seq_cst()
    base = peek(s, ST_READER0_ADDR)
    for i in range(peek(s, ST_N_READERS)):
        if load_relaxed(base + i * BLOCK + RB_PARKED) != 0:
            poke(s, ST_WAKE, 1)
            return


# -- address-level cores: s = address of the end's int64 state, src / dst = address of the
# -- first record of a contiguous buffer of the ring's record type. Not nogil: Python calls
# -- them per batch, and releasing / re-taking the GIL would cost more than the call itself
# -- (nogil only changes the Python entry; @njit callers are unaffected).
@njit(cache=True)
def spsc_publish_at(s, src, n):
    pos = peek(s, ST_POS)
    cap = peek(s, ST_CAPACITY)
    free = cap - (pos - peek(s, ST_CACHED))
    if free < n:
        cached = load_acquire(peek(s, ST_CURSOR_ADDR))
        poke(s, ST_CACHED, cached)
        free = cap - (pos - cached)
        if free <= 0:
            return 0
    k = n if n < free else free
    mask = peek(s, ST_MASK)
    rb = peek(s, ST_WORDS) * 8
    base = peek(s, ST_SLOTS_ADDR)
    for i in range(k):
        seq = pos + i
        slot = base + (seq & mask) * rb
        copy_payload(slot, src + i * rb, rb)
        store_release(slot, seq + 1)
    poke(s, ST_POS, pos + k)
    store_release(peek(s, ST_HEAD_ADDR), pos + k)
    if peek(s, ST_WAKEUPS) != 0:
        _check_parked(s)
    return k


@njit(cache=True)
def spsc_peek_at(s, dst, max_n):
    """Copy up to max_n ready records into dst without releasing them: the reader's cursor (and
    so the writer's view of free space) stays where it was until ``spsc_commit_at``. A process
    that dies between the two leaves the records in the ring for its successor."""
    pos = peek(s, ST_POS)
    mask = peek(s, ST_MASK)
    rb = peek(s, ST_WORDS) * 8
    base = peek(s, ST_SLOTS_ADDR)
    n = 0
    while n < max_n:
        seq = pos + n
        slot = base + (seq & mask) * rb
        if load_acquire(slot) != seq + 1:
            break
        out = dst + n * rb
        copy_payload(out, slot, rb)
        poke(out, 0, seq)
        n += 1
    return n


@njit(cache=True)
def spsc_commit_at(s, n):
    """Release the next n peeked records to the writer (our loads of them finished first)."""
    if n > 0:
        pos = peek(s, ST_POS) + n
        poke(s, ST_POS, pos)
        store_release(peek(s, ST_CURSOR_ADDR), pos)


@njit(cache=True)
def spsc_free_at(s):
    """Writer: slots free for publishing now (acquire-loads the reader's cursor). Only the
    reader moves that cursor, and only forward, so the free space a writer sees can only grow
    until it publishes itself: a batch sized to it is never cut short."""
    cached = load_acquire(peek(s, ST_CURSOR_ADDR))
    poke(s, ST_CACHED, cached)
    return peek(s, ST_CAPACITY) - (peek(s, ST_POS) - cached)


@njit(cache=True)
def spsc_poll_at(s, dst, max_n):
    n = spsc_peek_at(s, dst, max_n)
    spsc_commit_at(s, n)
    return n


@njit(cache=True)
def spsc_available_at(s):
    seq = peek(s, ST_POS)
    slot = peek(s, ST_SLOTS_ADDR) + (seq & peek(s, ST_MASK)) * peek(s, ST_WORDS) * 8
    return 1 if load_acquire(slot) == seq + 1 else 0


@njit(cache=True)
def bcast_publish_at(s, src, n):
    pos = peek(s, ST_POS)
    mask = peek(s, ST_MASK)
    rb = peek(s, ST_WORDS) * 8
    base = peek(s, ST_SLOTS_ADDR)
    for i in range(n):
        seq = pos + i
        slot = base + (seq & mask) * rb
        store_relaxed(slot, -(seq + 1))
        fence_release()
        copy_payload(slot, src + i * rb, rb)
        store_release(slot, seq + 1)
    poke(s, ST_POS, pos + n)
    store_release(peek(s, ST_HEAD_ADDR), pos + n)
    if peek(s, ST_WAKEUPS) != 0:
        _check_parked(s)
    return n


@njit(cache=True, nogil=True)
def _bcast_skip(s, pos):
    """Lapped at ``pos``: jump to a position the writer will not reach soon; count the loss."""
    head = load_acquire(peek(s, ST_HEAD_ADDR))
    cap = peek(s, ST_CAPACITY)
    # A quarter ring of slack: records just behind the writer's head are safe for a while, the
    # oldest ones are about to be overwritten again (and would lap us a second time).
    new_pos = head - cap + (cap >> 2)
    if new_pos <= pos:
        new_pos = pos + 1
    lost = peek(s, READER_LOST) + new_pos - pos
    poke(s, READER_LOST, lost)
    poke(s, ST_LAPS, peek(s, ST_LAPS) + 1)
    store_relaxed(peek(s, ST_LOST_ADDR), lost)
    return new_pos


@njit(cache=True)
def bcast_poll_at(s, dst, max_n):
    pos = peek(s, ST_POS)
    mask = peek(s, ST_MASK)
    rb = peek(s, ST_WORDS) * 8
    base = peek(s, ST_SLOTS_ADDR)
    n = 0
    while n < max_n:
        slot = base + (pos & mask) * rb
        want = pos + 1
        c = load_acquire(slot)
        if c == want:
            out = dst + n * rb
            copy_payload(out, slot, rb)
            fence_acquire()
            if load_relaxed(slot) != want:
                pos = _bcast_skip(s, pos)   # overwritten while we copied: discard the copy
                continue
            poke(out, 0, pos)
            n += 1
            pos += 1
        elif c > want or -c > want:
            pos = _bcast_skip(s, pos)
        else:
            break  # not written yet (old lap, never written, or being written right now)
    poke(s, ST_POS, pos)
    store_relaxed(peek(s, ST_CURSOR_ADDR), pos)
    return n


@njit(cache=True)
def bcast_available_at(s):
    pos = peek(s, ST_POS)
    c = load_acquire(peek(s, ST_SLOTS_ADDR) + (pos & peek(s, ST_MASK)) * peek(s, ST_WORDS) * 8)
    return 1 if (c == pos + 1 or c > pos + 1 or -c > pos + 1) else 0


@njit(cache=True)
def set_parked_at(s, value):
    store_relaxed(peek(s, ST_PARKED_ADDR), value)
    fence_seq_cst()


# -- Python entries (RingReader.poll / .poller, RingWriter.publish / .publisher): all integers;
# -- a bound poller / publisher outlives any check in Python, so the kernel refuses a closed
# -- ring (its memory is unmapped) and a count outside the buffer
@njit(cache=True)
def spsc_poll_into(s, dst, max_n):
    if peek(s, ST_CLOSED) != 0:
        raise ValueError("poll on a closed ring")
    return spsc_poll_at(s, dst, max_n)


@njit(cache=True)
def bcast_poll_into(s, dst, max_n):
    if peek(s, ST_CLOSED) != 0:
        raise ValueError("poll on a closed ring")
    return bcast_poll_at(s, dst, max_n)


@njit(cache=True)
def _check_publish(s, cap, n):
    if peek(s, ST_CLOSED) != 0:
        raise ValueError("publish on a closed ring")
    if n < 0 or n > cap:
        raise ValueError("publish count outside the publisher's buffer")


@njit(cache=True)
def spsc_publish_from(s, src, cap, n):
    _check_publish(s, cap, n)
    return spsc_publish_at(s, src, n)


@njit(cache=True)
def bcast_publish_from(s, src, cap, n):
    _check_publish(s, cap, n)
    return bcast_publish_at(s, src, n)


# -- array shims (what stage kernels call): straight-line, so numba prunes every reference
# -- count; ``slots`` is kept in the signature for the callers and is not read
@njit(cache=True, nogil=True)
def spsc_publish(st, slots, src, n):
    """Copy up to n records (rows of the int64 view ``src``) into the ring; returns how many.

    Fewer than n means the ring is full: the caller keeps the rest (push-back, nothing lost).
    """
    return spsc_publish_at(st.ctypes.data, src.ctypes.data, n)


@njit(cache=True, nogil=True)
def spsc_poll(st, slots, dst, max_n):
    """Copy up to max_n ready records into rows of ``dst``; returns how many.

    ``ring_seq`` of each copied record is set to its sequence number (0-based).
    """
    return spsc_poll_at(st.ctypes.data, dst.ctypes.data, max_n)


@njit(cache=True, nogil=True)
def spsc_free(st):
    """Writer: how many records a publish would take now (see spsc_free_at)."""
    return spsc_free_at(st.ctypes.data)


@njit(cache=True, nogil=True)
def spsc_peek(st, slots, dst, max_n):
    """Like spsc_poll, but the records stay owned by the ring until ``spsc_commit``: a reader
    that must make its outputs durable before it lets go of its inputs (the risk gate, the
    journal) peeks, publishes, then commits. Peeking again before a commit re-reads the same
    records."""
    return spsc_peek_at(st.ctypes.data, dst.ctypes.data, max_n)


@njit(cache=True, nogil=True)
def spsc_commit(st, n):
    """Release the first n records of the last peek."""
    spsc_commit_at(st.ctypes.data, n)


@njit(cache=True, nogil=True)
def spsc_available(st, slots):
    """1 if at least one record is ready for this reader, else 0 (no state change)."""
    return spsc_available_at(st.ctypes.data)


@njit(cache=True, nogil=True)
def bcast_publish(st, slots, src, n):
    """Write n records; never waits for readers (a slow reader is lapped and told)."""
    return bcast_publish_at(st.ctypes.data, src.ctypes.data, n)


@njit(cache=True, nogil=True)
def bcast_poll(st, slots, dst, max_n):
    """Copy up to max_n whole records into ``dst``; returns how many. Lapping adds the exact
    number of skipped records to st[READER_LOST] and carries on from a newer position."""
    return bcast_poll_at(st.ctypes.data, dst.ctypes.data, max_n)


@njit(cache=True, nogil=True)
def bcast_available(st, slots):
    """1 if the next record is ready or this reader was lapped (poll will make progress)."""
    return bcast_available_at(st.ctypes.data)


@njit(cache=True, nogil=True)
def set_parked(st, value):
    """Reader: announce (1) or withdraw (0) that it is about to sleep on its semaphore."""
    set_parked_at(st.ctypes.data, value)


def int_entry(kernel, n_args: int):
    """A callable for Python code that runs ``kernel`` compiled for ``n_args`` int64 arguments.

    A numba dispatcher types every argument on every call (~200 ns per integer on a 2-core
    EPYC VM); the compiled overload's own entry point only unboxes them (~160 ns for three).
    Ring ends call the address-level cores once per Python-level poll / publish, so this is
    most of their cost. Falls back to the dispatcher where a numba version lacks the entry.
    """
    from numba import types

    sig = (types.int64,) * n_args
    kernel.compile(sig)  # from numba's disk cache when it is warm
    try:
        return kernel.overloads[sig].entry_point
    except (AttributeError, KeyError):  # pragma: no cover - numba internals moved
        return kernel


def new_state() -> np.ndarray:
    return np.zeros(ST_SIZE, dtype=np.int64)
