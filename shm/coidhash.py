"""Open-addressing hash tables keyed by client order id, in plain int64 arrays. HOT PATH
(@njit, no allocation); used by the risk gate's open-order table (market/risk_state.py) and the
order router's per-strategy table (stages/router_kernels.py).

A table is ``t[k]`` of an int64 array ``t[K, rows, words]``: K independent tables (one per
strategy in the router, a single one in the gate), ``rows`` a power of two, column 0 the key
(0 = empty row), the other columns the caller's. Linear probing; deletion shifts later rows of
the probe run back into the hole (no tombstones, so lookups never slow down with churn). Keep
the load at or below one half: an insert then always finds an empty row within a short run.

The home row multiplies by the 64-bit Fibonacci constant (a wrapping int64 product) and takes
bits 17 and up: consecutive counters and counters that agree modulo a power of two (what
client order ids are) spread over the whole table.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_MUL = np.int64(-7046029254386353131)   # 0x9E3779B97F4A7C15 as an int64


@njit(cache=True, inline="always")
def coid_home(coid, mask):
    return ((coid * _MUL) >> 17) & mask


@njit(cache=True)
def coid_find(t, k, coid):
    """Row of ``coid`` in table ``k``, or -1 (also for coid 0)."""
    if coid == 0:
        return -1
    rows = t.shape[1]
    mask = rows - 1
    i = coid_home(coid, mask)
    for _ in range(rows):
        c = t[k, i, 0]
        if c == coid:
            return i
        if c == 0:
            return -1
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def coid_insert(t, k, coid):
    """An empty row of table ``k`` with its key set to ``coid`` (the caller fills the rest and
    checked that ``coid`` is absent), or -1 if none is reachable."""
    rows = t.shape[1]
    mask = rows - 1
    i = coid_home(coid, mask)
    for _ in range(rows):
        if t[k, i, 0] == 0:
            t[k, i, 0] = coid
            return i
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def coid_delete(t, k, i):
    """Empty row ``i`` of table ``k``; later rows of its probe run move back (backward shift)."""
    mask = t.shape[1] - 1
    words = t.shape[2]
    j = i
    while True:
        j = (j + 1) & mask
        c = t[k, j, 0]
        if c == 0:
            break
        h = coid_home(c, mask)
        # row j may fill the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and (h <= i or h > j)) or (i > j and (h <= i and h > j)):
            for w in range(words):
                t[k, i, w] = t[k, j, w]
            i = j
    for w in range(words):
        t[k, i, w] = 0
