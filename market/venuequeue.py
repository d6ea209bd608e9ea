"""In-flight messages of a simulated or replayed venue: strategy orders on their way to the
venue, and execution reports on their way back. Runs inside the backtest and the live venue
stage; every @njit function is HOT PATH.

Both queues are small (a strategy has tens of orders in flight), so they are unsorted arrays
scanned for the earliest (time, sequence) entry: the sequence number keeps send order among
equal times, which the FIFO channels of ``market.latency.fifo_arrival`` produce.

    q_t    int64[cap]     due time (arrival at the venue, or receipt by the strategy)
    q_seq  int64[cap]     insertion sequence (tie-break)
    q_st   int64[4]       QS_N (entries), QS_SEQ (next sequence), QS_DROPPED (full queue)
    recs   ORDER_DTYPE[cap] or EXEC_DTYPE[cap]
"""
from __future__ import annotations

import numpy as np
from numba import njit

QS_N = 0
QS_SEQ = 1
QS_DROPPED = 2
QS_WORDS = 4

NEVER = np.int64(0x7FFF_FFFF_FFFF_FFFF)


def make_queue(dtype, cap: int):
    """(recs, q_t, q_seq, q_st) for ``cap`` messages of ``dtype`` (cold)."""
    return (np.zeros(cap, dtype=dtype), np.zeros(cap, dtype=np.int64),
            np.zeros(cap, dtype=np.int64), np.zeros(QS_WORDS, dtype=np.int64))


@njit(cache=True, _nrt=False)
def q_push(recs, q_t, q_seq, q_st, rec, due_ns):
    """Copy ``rec`` in, due at ``due_ns``. Returns the slot, or -1 when full (counted)."""
    n = q_st[QS_N]
    if n >= recs.shape[0]:
        q_st[QS_DROPPED] += 1
        return -1
    recs[n] = rec
    q_t[n] = due_ns
    q_seq[n] = q_st[QS_SEQ]
    q_st[QS_SEQ] += 1
    q_st[QS_N] = n + 1
    return n


@njit(cache=True, _nrt=False)
def q_push_slot(recs, q_t, q_seq, q_st, due_ns):
    """Reserve a slot due at ``due_ns`` for the caller to fill; -1 when full (counted)."""
    n = q_st[QS_N]
    if n >= recs.shape[0]:
        q_st[QS_DROPPED] += 1
        return -1
    q_t[n] = due_ns
    q_seq[n] = q_st[QS_SEQ]
    q_st[QS_SEQ] += 1
    q_st[QS_N] = n + 1
    return n


@njit(cache=True, _nrt=False)
def q_min(q_t, q_seq, q_st):
    """Index of the earliest entry, or -1 when empty."""
    best = -1
    for j in range(q_st[QS_N]):
        if best < 0 or q_t[j] < q_t[best] or (q_t[j] == q_t[best] and q_seq[j] < q_seq[best]):
            best = j
    return best


@njit(cache=True, _nrt=False)
def q_next_ns(q_t, q_seq, q_st):
    j = q_min(q_t, q_seq, q_st)
    return NEVER if j < 0 else q_t[j]


@njit(cache=True, _nrt=False)
def q_remove(recs, q_t, q_seq, q_st, j):
    """Remove entry j (order among the rest is kept by their sequence numbers)."""
    last = q_st[QS_N] - 1
    if j != last:
        recs[j] = recs[last]
        q_t[j] = q_t[last]
        q_seq[j] = q_seq[last]
    q_st[QS_N] = last


@njit(cache=True, _nrt=False)
def q_drain_due(recs, q_t, q_seq, q_st, t_ns, out, n_out):
    """Move every entry due at or before t_ns into out[n_out:], earliest first; stops when
    out is full. Returns the new n_out."""
    while n_out < out.shape[0]:
        j = q_min(q_t, q_seq, q_st)
        if j < 0 or q_t[j] > t_ns:
            break
        out[n_out] = recs[j]
        n_out += 1
        q_remove(recs, q_t, q_seq, q_st, j)
    return n_out
