"""The L3 (order-by-order) book under the matching engine: preallocated pools, no allocation.

Runs wherever a MatchingEngine runs (simulated venue, backtest). All @njit functions are HOT
PATH; ``make_engine_arrays`` is cold. ``market.matching`` is the only intended caller of the
mutating functions and of the output writers (``write_md*``, ``write_ex*``); the queries
(``l3_best_px``, ``l3_level_qty``, ``l3_queue_ahead``, ``l3_order_slot``, ``l3_depth``) are for
the backtest's queue model and for tests.

State is one tuple of arrays, ``eng``::

    orders  int64[max_orders + 1, O_WORDS]  one row per order slot (128 bytes, see O_*); at
                                            most max_orders rest (st[S_MAX_OPEN]), the extra
                                            slot is for the order being matched, so a full
                                            book still takes orders that trade against it
    levels  int64[level_pool, LV_WORDS]     price level: px, total qty, FIFO head/tail, count
    sidelv  int64[n+1, 2, max_levels]       level slot ids per instrument and side, best first
    inst    int64[n+1, I_WORDS]             level counts per side, update id, trade count
    fee     float64[n+1, 2]                 quote-currency x 1e9 per (tick x lot) x rate, for
                                            maker (0) and taker (1); see matching.fee_e9
    htab    int64[H, 2]                     client_order_id -> order slot (open addressing)
    st      int64[S_WORDS]                  free-list tops, id counters, STP mode, drop counters
    ofree   int64[max_orders + 1]           free order slots (stack)
    lfree   int64[level_pool]               free level slots (stack)

Each price level holds its orders as a doubly linked FIFO through O_NEXT / O_PREV (time
priority); levels per side are a sorted array (price priority) scanned from the touch, where
almost all activity is. Side index 0 = bid (buy orders), 1 = ask (sell orders).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.records import LIQ_NONE, MSG_LEVEL

# int64, not Python ints: numba would compile one specialisation per literal value passed on
# (see market.matching).
LIQ_NONE, MSG_LEVEL = np.int64(LIQ_NONE), np.int64(MSG_LEVEL)
_Z = np.int64(0)
_M1 = np.int64(-1)

# Hot kernels run without numba's reference counting (NRT): they never allocate, and with NRT
# every array that crosses a call costs an atomic incref/decref pair (measured here: a call
# taking the 9-array engine tuple 150 ns with NRT, 1 ns without; numba issue #2345).

O_NEXT = 0
O_PREV = 1
O_LEVEL = 2
O_PX = 3
O_LEAVES = 4
O_CUM = 5
O_OWNER = 6
O_CLIENT = 7
O_VENUE_OID = 8
O_SIDE = 9
O_INST = 10
O_TYPE = 11
O_ACTIVE = 12
O_CAUSE_TS = 13
O_ENTRY_TS = 14
O_ORIG_QTY = 15
O_WORDS = 16

LV_PX = 0
LV_QTY = 1
LV_HEAD = 2
LV_TAIL = 3
LV_COUNT = 4
LV_WORDS = 8

I_N_BID = 0
I_N_ASK = 1
I_UPDATE_ID = 2
I_N_TRADES = 3
I_WORDS = 8

S_OFREE_N = 0
S_LFREE_N = 1
S_NEXT_VENUE_OID = 2
S_NEXT_TRADE_ID = 3
S_STP_MODE = 4
S_VENUE_ID = 5
S_EX_DROPPED = 6      # exec reports that did not fit the caller's array
S_MD_DROPPED = 7      # market records that did not fit
S_OPEN_ORDERS = 8
S_HBITS = 9
S_MAX_OPEN = 10       # resting orders allowed (max_orders)
S_QUIET_ANON = 11     # 1: write no exec reports for anonymous (owner 0) orders; the simulated
                      # venue drops them unread (its background flow), so it sets this
S_WORDS = 16

NIL = -1


def make_engine_arrays(n_instruments: int, max_orders: int = 1 << 16, max_levels: int = 1024,
                       level_pool: int | None = None):
    """Allocate an empty engine state (cold). ``max_orders`` resting orders in all,
    ``max_levels`` price levels per instrument and side, ``level_pool`` levels in all (by
    default as many as can be used: every level holds at least one resting order)."""
    if n_instruments < 1 or max_orders < 1 or max_levels < 1:
        raise ValueError("make_engine_arrays needs n_instruments, max_orders, max_levels >= 1")
    if level_pool is None:
        level_pool = min(max_orders, 2 * n_instruments * max_levels)
    if level_pool < 1:
        raise ValueError(f"make_engine_arrays needs level_pool >= 1, got {level_pool}")
    slots = max_orders + 1
    hbits = max(4, int(2 * max_orders - 1).bit_length())   # load factor about 1/2 at most
    orders = np.zeros((slots, O_WORDS), dtype=np.int64)
    orders[:, O_NEXT] = NIL
    orders[:, O_PREV] = NIL
    levels = np.zeros((level_pool, LV_WORDS), dtype=np.int64)
    sidelv = np.full((n_instruments + 1, 2, max_levels), NIL, dtype=np.int64)
    inst = np.zeros((n_instruments + 1, I_WORDS), dtype=np.int64)
    fee = np.zeros((n_instruments + 1, 2), dtype=np.float64)
    htab = np.full((1 << hbits, 2), NIL, dtype=np.int64)
    st = np.zeros(S_WORDS, dtype=np.int64)
    # Stacks pop from the end: lowest slots first keeps the working set compact.
    ofree = np.arange(slots - 1, -1, -1, dtype=np.int64)
    lfree = np.arange(level_pool - 1, -1, -1, dtype=np.int64)
    st[S_OFREE_N] = slots
    st[S_MAX_OPEN] = max_orders
    st[S_LFREE_N] = level_pool
    st[S_NEXT_VENUE_OID] = 1
    st[S_NEXT_TRADE_ID] = 1
    st[S_HBITS] = hbits
    return orders, levels, sidelv, inst, fee, htab, st, ofree, lfree


# --------------------------------------------------------------------------------------------
# client_order_id -> slot: open addressing, linear probing, backward-shift deletion (no
# tombstones, so probe lengths stay short under constant churn).
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _hash(key, hbits):
    """Home slot of a key: the key's low 10 bits kept in order, its high bits Fibonacci-hashed
    into a base. Client order ids are handed out in sequence (the background flow's -1, -2, ...,
    a strategy's 1, 2, ...), and the orders resting at a time are mostly recent ones: a hash
    that spreads neighbouring keys over the whole table (2**hbits x 16 bytes, 512 KiB in the
    simulator) made nearly every lookup a cache miss, while runs of 1024 neighbouring keys
    now share a few cache lines. Any high-bit pattern still lands on spread bases."""
    x = np.uint64(key)
    base = ((x >> np.uint64(10)) * np.uint64(11400714819323198485)) >> np.uint64(64 - hbits)
    return np.int64((x + base) & ((np.uint64(1) << np.uint64(hbits)) - np.uint64(1)))


@njit(cache=True, _nrt=False)
def h_find(htab, st, key):
    mask = htab.shape[0] - 1
    i = _hash(key, st[S_HBITS])
    while htab[i, 1] != NIL:
        if htab[i, 0] == key:
            return htab[i, 1]
        i = (i + 1) & mask
    return NIL


@njit(cache=True, _nrt=False)
def h_insert(htab, st, key, slot):
    """False if the key is already present."""
    mask = htab.shape[0] - 1
    i = _hash(key, st[S_HBITS])
    while htab[i, 1] != NIL:
        if htab[i, 0] == key:
            return False
        i = (i + 1) & mask
    htab[i, 0] = key
    htab[i, 1] = slot
    return True


@njit(cache=True, _nrt=False)
def h_delete(htab, st, key):
    mask = htab.shape[0] - 1
    hbits = st[S_HBITS]
    i = _hash(key, hbits)
    while htab[i, 1] != NIL and htab[i, 0] != key:
        i = (i + 1) & mask
    if htab[i, 1] == NIL:
        return False
    j = i
    while True:
        j = (j + 1) & mask
        if htab[j, 1] == NIL:
            break
        home = _hash(htab[j, 0], hbits)
        # Move j back into the hole at i unless its home lies cyclically in (i, j].
        if (j > i and (home <= i or home > j)) or (j < i and (home <= i and home > j)):
            htab[i, 0] = htab[j, 0]
            htab[i, 1] = htab[j, 1]
            i = j
    htab[i, 1] = NIL
    return True


# --------------------------------------------------------------------------------------------
# Levels and FIFOs
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def better(side, a, b):
    """Price a is strictly better than b for resting orders on this side."""
    if side == 0:
        return a > b
    return a < b


# The mutators below are inline="always": they take ``eng`` (9 arrays, about 80 machine words
# once numba explodes them into arguments) and run once or twice per matched order, so a call
# cost more than its body (see market.matching, engine_process_inline).
@njit(cache=True, _nrt=False, inline="always")
def level_position(eng, ins, side, px):
    """(position, found): where px is or would be inserted in the side's sorted level array."""
    levels, sidelv, inst = eng[1], eng[2], eng[3]
    n = inst[ins, side]
    i = 0
    while i < n and better(side, levels[sidelv[ins, side, i], LV_PX], px):
        i += 1
    found = i < n and levels[sidelv[ins, side, i], LV_PX] == px
    return i, found


@njit(cache=True, _nrt=False, inline="always")
def get_or_add_level(eng, ins, side, px):
    """Level slot for px, created if absent; NIL when the side or the level pool is full."""
    levels, sidelv, inst, st, lfree = eng[1], eng[2], eng[3], eng[6], eng[8]
    pos, found = level_position(eng, ins, side, px)
    if found:
        return sidelv[ins, side, pos]
    n = inst[ins, side]
    if n >= sidelv.shape[2] or st[S_LFREE_N] == 0:
        return NIL
    st[S_LFREE_N] -= 1
    lv = lfree[st[S_LFREE_N]]
    levels[lv, LV_PX] = px
    levels[lv, LV_QTY] = 0
    levels[lv, LV_HEAD] = NIL
    levels[lv, LV_TAIL] = NIL
    levels[lv, LV_COUNT] = 0
    for j in range(n, pos, -1):
        sidelv[ins, side, j] = sidelv[ins, side, j - 1]
    sidelv[ins, side, pos] = lv
    inst[ins, side] = n + 1
    return lv


@njit(cache=True, _nrt=False, inline="always")
def _drop_level(eng, ins, side, lv):
    levels, sidelv, inst, st, lfree = eng[1], eng[2], eng[3], eng[6], eng[8]
    pos, found = level_position(eng, ins, side, levels[lv, LV_PX])
    n = inst[ins, side]
    for j in range(pos, n - 1):
        sidelv[ins, side, j] = sidelv[ins, side, j + 1]
    sidelv[ins, side, n - 1] = NIL
    inst[ins, side] = n - 1
    lfree[st[S_LFREE_N]] = lv
    st[S_LFREE_N] += 1


@njit(cache=True, _nrt=False, inline="always")
def append_order(eng, o, lv):
    """Put order slot o at the back of level lv's FIFO (time priority: last)."""
    orders, levels = eng[0], eng[1]
    tail = levels[lv, LV_TAIL]
    orders[o, O_PREV] = tail
    orders[o, O_NEXT] = NIL
    orders[o, O_LEVEL] = lv
    if tail == NIL:
        levels[lv, LV_HEAD] = o
    else:
        orders[tail, O_NEXT] = o
    levels[lv, LV_TAIL] = o
    levels[lv, LV_QTY] += orders[o, O_LEAVES]
    levels[lv, LV_COUNT] += 1


@njit(cache=True, _nrt=False, inline="always")
def unlink_order(eng, o):
    """Take order o out of its level; returns the level's remaining qty (0: level removed)."""
    orders, levels = eng[0], eng[1]
    lv = orders[o, O_LEVEL]
    prv = orders[o, O_PREV]
    nxt = orders[o, O_NEXT]
    if prv == NIL:
        levels[lv, LV_HEAD] = nxt
    else:
        orders[prv, O_NEXT] = nxt
    if nxt == NIL:
        levels[lv, LV_TAIL] = prv
    else:
        orders[nxt, O_PREV] = prv
    levels[lv, LV_QTY] -= orders[o, O_LEAVES]
    levels[lv, LV_COUNT] -= 1
    orders[o, O_LEVEL] = NIL
    left = levels[lv, LV_QTY]
    if levels[lv, LV_COUNT] == 0:
        _drop_level(eng, orders[o, O_INST], orders[o, O_SIDE], lv)
        left = 0
    return left


@njit(cache=True, _nrt=False, inline="always")
def alloc_order(eng):
    st, ofree = eng[6], eng[7]
    if st[S_OFREE_N] == 0:
        return NIL
    st[S_OFREE_N] -= 1
    return ofree[st[S_OFREE_N]]


@njit(cache=True, _nrt=False, inline="always")
def free_order(eng, o):
    orders, st, ofree = eng[0], eng[6], eng[7]
    orders[o, O_ACTIVE] = 0
    ofree[st[S_OFREE_N]] = o
    st[S_OFREE_N] += 1


# --------------------------------------------------------------------------------------------
# Output writers for the engine: bounds-checked, they count what does not fit the caller's
# array (st[S_EX_DROPPED] / st[S_MD_DROPPED]) instead of failing.
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def write_md(eng, md, k, kind, side, ins, px, qty, aux0, aux1, now):
    if k >= md.shape[0]:
        eng[6][S_MD_DROPPED] += 1
        return k
    r = md[k]
    r.ring_seq = 0
    r.kind = kind
    r.side = side
    r.flags = 0
    r.instrument_id = ins
    r.exch_ts_ns = now
    r.recv_ts_ns = now
    r.px_ticks = px
    r.qty_lots = qty
    r.aux0 = aux0
    r.aux1 = aux1
    return k + 1


@njit(cache=True, _nrt=False)
def write_md_level(eng, md, k, ins, side, px, qty, now):
    inst = eng[3]
    inst[ins, I_UPDATE_ID] += 1
    return write_md(eng, md, k, MSG_LEVEL, side + 1, ins, px, qty, inst[ins, I_UPDATE_ID], _M1,
                    now)


@njit(cache=True, _nrt=False)
def write_ex(eng, ex, k, kind, side, ins, client, venue_oid, owner, cause_ts, order_px, px,
             qty, leaves, cum, liq, fee, trade_id, reject, now):
    if k >= ex.shape[0]:
        eng[6][S_EX_DROPPED] += 1
        return k
    r = ex[k]
    r.ring_seq = 0
    r.kind = kind
    r.side = side
    r.liquidity = liq
    r.flags = 0
    r.instrument_id = ins
    r.client_order_id = client
    r.venue_order_id = venue_oid
    r.px_ticks = px
    r.qty_lots = qty
    r.leaves_lots = leaves
    r.cum_qty_lots = cum
    r.venue_ts_ns = now
    r.cause_recv_ts_ns = cause_ts
    r.send_ts_ns = 0
    r.fee_e9 = fee
    r.strategy_id = owner
    r.reject_code = reject
    r.venue_id = eng[6][S_VENUE_ID]
    r.order_px_ticks = order_px
    r.trade_id = trade_id
    r.reserved = 0
    return k + 1


@njit(cache=True, _nrt=False)
def write_ex_slot(eng, ex, k, o, kind, px, qty, liq, fee, trade_id, reject, now):
    orders = eng[0]
    if orders[o, O_OWNER] == 0 and eng[6][S_QUIET_ANON] != 0:
        return k
    return write_ex(eng, ex, k, kind, orders[o, O_SIDE] + 1, orders[o, O_INST],
                    orders[o, O_CLIENT], orders[o, O_VENUE_OID], orders[o, O_OWNER],
                    orders[o, O_CAUSE_TS], orders[o, O_PX], px, qty, orders[o, O_LEAVES],
                    orders[o, O_CUM], liq, fee, trade_id, reject, now)


@njit(cache=True, _nrt=False)
def write_ex_input(eng, ex, k, rec, kind, reject, now):
    if rec.strategy_id == 0 and eng[6][S_QUIET_ANON] != 0:
        return k
    return write_ex(eng, ex, k, kind, rec.side, rec.instrument_id, rec.client_order_id, _Z,
                    rec.strategy_id, rec.cause_recv_ts_ns, rec.px_ticks, rec.px_ticks,
                    rec.qty_lots, _Z, _Z, LIQ_NONE, _Z, _Z, reject, now)


# --------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def l3_best_px(eng, ins, side):
    """Best price of a side, 0 when it is empty."""
    if eng[3][ins, side] == 0:
        return 0
    return eng[1][eng[2][ins, side, 0], LV_PX]


@njit(cache=True, _nrt=False)
def l3_level_qty(eng, ins, side, px):
    pos, found = level_position(eng, ins, side, px)
    if not found:
        return 0
    return eng[1][eng[2][ins, side, pos], LV_QTY]


@njit(cache=True, _nrt=False)
def l3_order_slot(eng, client_order_id):
    return h_find(eng[5], eng[6], client_order_id)


@njit(cache=True, _nrt=False)
def l3_queue_ahead(eng, client_order_id):
    """Quantity resting ahead of an order at its level (time priority); -1 if not resting."""
    orders = eng[0]
    o = h_find(eng[5], eng[6], client_order_id)
    if o == NIL or orders[o, O_LEVEL] == NIL:
        return -1
    ahead = 0
    p = orders[o, O_PREV]
    while p != NIL:
        ahead += orders[p, O_LEAVES]
        p = orders[p, O_PREV]
    return ahead


@njit(cache=True, _nrt=False)
def l3_depth(eng, ins, side, px_out, qty_out):
    """Copy the side's levels (best first) into px_out / qty_out; returns how many."""
    levels, sidelv, inst = eng[1], eng[2], eng[3]
    n = min(inst[ins, side], px_out.shape[0])
    for i in range(n):
        lv = sidelv[ins, side, i]
        px_out[i] = levels[lv, LV_PX]
        qty_out[i] = levels[lv, LV_QTY]
    return n
