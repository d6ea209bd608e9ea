"""Matching engine: price-time priority over the L3 book of ``market.l3book``.

Runs inside the simulated venue and the backtest (one engine per venue, several instruments).
``engine_process`` and everything it calls are @njit HOT PATH (no allocation, no exceptions;
capacity problems are reject codes and drop counters). ``MatchingEngine`` is the cold wrapper.

Kernel API::

    eng = make_engine_arrays(n_instruments, max_orders, max_levels)     # l3book, cold
    engine_set_fees(eng, ins, value_e9_per_tick_lot, maker_bps, taker_bps)  # cold setup
    n_done, n_ex, n_md = engine_process(eng, orders, n, ex, md, now_ns)
    n_md = engine_snapshot(eng, ins, md, k, now_ns)   # SNAP_START, levels, SNAP_END at md[k:]

``orders`` are ORDER_DTYPE records (``kind`` INTENT_NEW / CANCEL / REPLACE / CANCEL_ALL);
reports go to ``ex`` (EXEC_DTYPE), market data to ``md`` (MARKET_DTYPE), both caller-owned.
Processing stops early, before an order, when fewer than ``OUT_MARGIN`` free slots remain in
either output; ``n_done`` says how many orders were consumed. Records that still do not fit
(one order sweeping more than about 90 resting orders: two reports per fill) are counted in
st[S_EX_DROPPED] / st[S_MD_DROPPED]; the book itself stays correct. State words (STP mode,
venue id, counters) are ``st = eng[6]`` indexed by l3book.S_*; set the STP mode with
``eng[6][S_STP_MODE] = STP_CANCEL_NEWEST | STP_REJECT | STP_NONE``.

Semantics:
- Owner = ``strategy_id``; 0 means anonymous (background flow) and is never self-trade checked.
  ``client_order_id`` names an order for cancel/replace and must be unique among open orders.
- NEW: ACK (with venue_order_id), then fills; LIMIT rests its remainder; IOC and MARKET expire
  it (EXEC_EXPIRED); FOK fills completely or is rejected (REJECT_FOK) without touching the
  book; POST_ONLY is rejected (REJECT_POST_ONLY) if it would take; MARKET into an empty side
  is rejected (REJECT_NO_LIQUIDITY); malformed orders REJECT_INVALID (qty <= 0, a non-market
  price <= 0, unknown side, type or instrument, a client_order_id already open).
- Capacity (make_engine_arrays): at most max_orders resting orders, max_levels price levels per
  instrument and side, level_pool levels in all; a level's FIFO has no limit of its own. With
  max_orders resting, an order that cannot trade at once is rejected (REJECT_MAX_OPEN_ORDERS)
  and a marketable one is still taken (the table keeps a spare slot for the order being
  matched). A remainder that cannot rest is cancelled after its fills (EXEC_CANCEL_ACK with
  REJECT_MAX_OPEN_ORDERS: no order slot, level or level slot free; REJECT_MAX_ORDER_QTY: its
  level's total would pass int64 max). A REPLACE whose quantity plus the order's cum_qty
  would pass int64 max is refused (EXEC_CANCEL_REJECT + REJECT_MAX_ORDER_QTY). So no level
  total, cum_qty or leaves ever wraps; fees beyond int64 saturate at +-(2**63 - 1).
- Fills: the taker gets one report per maker matched (EXEC_PARTIAL, the last EXEC_FILL), each
  maker one (liquidity LIQ_MAKER / LIQ_TAKER), trade price = maker's price. fee_e9 =
  round(px * qty * value_e9_per_tick_lot * bps / 1e4), bps maker or taker, negative = rebate.
- CANCEL: EXEC_CANCEL_ACK, or EXEC_CANCEL_REJECT + REJECT_UNKNOWN_ORDER (not open, or not the
  owner's). CANCEL_ALL cancels every open order of strategy_id (instrument_id 0 = all).
- REPLACE: px_ticks = new price (0 keeps it), qty_lots = new open (leaves) quantity. Same price
  and a smaller or equal quantity keeps time priority; anything else goes to the back of the
  new level and may trade at once (a POST_ONLY that would take is refused:
  EXEC_CANCEL_REJECT + REJECT_POST_ONLY, order unchanged).
- Self-trade prevention (st[S_STP_MODE]): STP_CANCEL_NEWEST stops matching at the first own
  resting order and cancels the incoming remainder (EXEC_CANCEL_ACK + REJECT_SELF_TRADE);
  STP_REJECT rejects an order that would reach its own resting order before being filled
  (REJECT_SELF_TRADE, nothing traded); STP_NONE allows it.
- Market data: MSG_TRADE per fill (side = aggressor, aux0 = trade id) and MSG_LEVEL with the
  new total quantity of every level an order changed (aux0 = per-instrument update id); the
  last record of each order carries MFLAG_LAST_IN_BATCH. Times are now_ns.
- CANCEL_ALL reports in order-slot order (not time order) and needs one exec report and one
  market record per order it cancels; only OUT_MARGIN free slots are guaranteed, so what does
  not fit is counted in the drop counters like a long sweep's (all orders are cancelled).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from market.l3book import (I_N_TRADES, I_UPDATE_ID, LV_HEAD, LV_PX, LV_QTY, NIL, O_ACTIVE,
                           O_CAUSE_TS, O_CLIENT, O_CUM, O_ENTRY_TS, O_INST, O_LEAVES, O_LEVEL,
                           O_NEXT, O_ORIG_QTY, O_OWNER, O_PX, O_SIDE, O_TYPE, O_VENUE_OID,
                           S_EX_DROPPED, S_MAX_OPEN, S_MD_DROPPED, S_NEXT_TRADE_ID,
                           S_NEXT_VENUE_OID, S_OPEN_ORDERS, S_STP_MODE, S_VENUE_ID, alloc_order,
                           append_order, free_order, get_or_add_level, h_delete, h_find,
                           h_insert, l3_best_px, l3_depth, make_engine_arrays, unlink_order,
                           write_ex_input, write_ex_slot, write_md, write_md_level)
from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE,
                         EXEC_EXPIRED, EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE, LIQ_MAKER,
                         LIQ_NONE, LIQ_TAKER, MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MFLAG_SNAPSHOT,
                         MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_TRADE, ORD_FOK,
                         ORD_LIMIT, ORD_MARKET, ORD_POST_ONLY, REJECT_FOK, REJECT_INVALID,
                         REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY, REJECT_NO_LIQUIDITY,
                         REJECT_NONE, REJECT_POST_ONLY, REJECT_SELF_TRADE, REJECT_UNKNOWN_ORDER,
                         SIDE_BUY, SIDE_SELL)

# numba types a Python int constant passed to another @njit function as Literal[int] and
# compiles one specialisation per distinct value (write_ex_input was compiled 5 times, the
# engine took 45 s of CPU to compile; 13 s now): int64 scalars give each function one signature.
Z = np.int64(0)
ONE = np.int64(1)
(EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL,
 EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, LIQ_MAKER, LIQ_NONE,
 LIQ_TAKER, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_TRADE,
 REJECT_FOK, REJECT_INVALID, REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY,
 REJECT_NO_LIQUIDITY, REJECT_NONE, REJECT_POST_ONLY, REJECT_SELF_TRADE, REJECT_UNKNOWN_ORDER) = \
    tuple(np.int64(v) for v in (
        EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL,
        EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, LIQ_MAKER, LIQ_NONE,
        LIQ_TAKER, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_TRADE,
        REJECT_FOK, REJECT_INVALID, REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY,
        REJECT_NO_LIQUIDITY, REJECT_NONE, REJECT_POST_ONLY, REJECT_SELF_TRADE,
        REJECT_UNKNOWN_ORDER))

# Hot kernels run without numba's reference counting (NRT): they never allocate, and with NRT
# every array that crosses a call costs an atomic incref/decref pair (measured here: a call
# taking the 9-array engine tuple 150 ns with NRT, 1 ns without; numba issue #2345).

STP_NONE = 0
STP_CANCEL_NEWEST = 1
STP_REJECT = 2
STP_MODES = {"none": STP_NONE, "cancel_newest": STP_CANCEL_NEWEST, "reject": STP_REJECT}

OUT_MARGIN = 192
I64_MAX = np.int64(0x7FFFFFFFFFFFFFFF)
_MARKET_BUY_PX = I64_MAX   # a market buy's limit: no ask is above it (asks may rest at 2**62+)
_TWO_63 = 9223372036854775808.0


@njit(cache=True, _nrt=False)
def _fee(eng, ins, liq_col, px, qty):
    # In float: px * qty passes int64 long before a fee does (2**33 ticks x 2**31 lots), and
    # float -> int64 of a value out of range is undefined in LLVM, so saturate first.
    x = np.floor(np.float64(px) * np.float64(qty) * eng[4][ins, liq_col] + 0.5)
    if x >= _TWO_63:
        return I64_MAX
    if x <= -_TWO_63:
        return -I64_MAX
    return np.int64(x)


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def _crosses(taker_side, limit, level_px):
    if taker_side == 0:
        return level_px <= limit
    return level_px >= limit


@njit(cache=True, _nrt=False)
def _walk(eng, ins, side, limit, qty, owner):
    """(fillable qty up to ``qty``, met an own order first) without changing anything."""
    orders, levels, sidelv, inst, st = eng[0], eng[1], eng[2], eng[3], eng[6]
    opp = 1 - side
    check = st[S_STP_MODE] != STP_NONE and owner != 0
    avail = 0
    for i in range(inst[ins, opp]):
        lv = sidelv[ins, opp, i]
        if not _crosses(side, limit, levels[lv, LV_PX]):
            break
        m = levels[lv, LV_HEAD]
        while m != NIL:
            if check and orders[m, O_OWNER] == owner:
                return avail, True
            left = orders[m, O_LEAVES]
            if left >= qty - avail:   # not avail + left >= qty: that sum can pass int64
                return qty, False
            avail += left
            m = orders[m, O_NEXT]
    return avail, False


@njit(cache=True, _nrt=False, inline="always")
def _match(eng, o, limit, ex, kx, md, km, now):
    """Match taker slot o against the opposite side; returns (kx, km, stopped_by_stp)."""
    orders, levels, sidelv, inst, st = eng[0], eng[1], eng[2], eng[3], eng[6]
    ins = orders[o, O_INST]
    side = orders[o, O_SIDE]
    opp = 1 - side
    owner = orders[o, O_OWNER]
    check = st[S_STP_MODE] != STP_NONE and owner != 0
    while orders[o, O_LEAVES] > 0 and inst[ins, opp] > 0:
        lv = sidelv[ins, opp, 0]
        lpx = levels[lv, LV_PX]
        if not _crosses(side, limit, lpx):
            break
        m = levels[lv, LV_HEAD]
        left = levels[lv, LV_QTY]
        stp_hit = False
        while m != NIL and orders[o, O_LEAVES] > 0:
            if check and orders[m, O_OWNER] == owner:
                stp_hit = True
                break
            q = min(orders[o, O_LEAVES], orders[m, O_LEAVES])
            nxt = orders[m, O_NEXT]
            tid = st[S_NEXT_TRADE_ID]
            st[S_NEXT_TRADE_ID] = tid + 1
            inst[ins, I_N_TRADES] += 1
            orders[m, O_LEAVES] -= q
            orders[m, O_CUM] += q
            levels[lv, LV_QTY] -= q
            orders[o, O_LEAVES] -= q
            orders[o, O_CUM] += q
            left = levels[lv, LV_QTY]
            km = write_md(eng, md, km, MSG_TRADE, side + 1, ins, lpx, q, tid, Z, now)
            mk = EXEC_FILL if orders[m, O_LEAVES] == 0 else EXEC_PARTIAL
            kx = write_ex_slot(eng, ex, kx, m, mk, lpx, q, LIQ_MAKER, _fee(eng, ins, Z, lpx, q),
                          tid, REJECT_NONE, now)
            tk = EXEC_FILL if orders[o, O_LEAVES] == 0 else EXEC_PARTIAL
            kx = write_ex_slot(eng, ex, kx, o, tk, lpx, q, LIQ_TAKER, _fee(eng, ins, ONE, lpx, q),
                          tid, REJECT_NONE, now)
            if orders[m, O_LEAVES] == 0:
                left = unlink_order(eng, m)   # may drop the level; lv is not used after that
                h_delete(eng[5], st, orders[m, O_CLIENT])
                free_order(eng, m)
                st[S_OPEN_ORDERS] -= 1
            m = nxt
        km = write_md_level(eng, md, km, ins, opp, lpx, left, now)
        if stp_hit:
            return kx, km, True
    return kx, km, False


@njit(cache=True, _nrt=False, inline="always")
def _after_match(eng, o, ex, kx, md, km, stp_hit, now):
    """Rest, expire or cancel what is left of taker slot o; frees the slot when done."""
    orders, st = eng[0], eng[6]
    if orders[o, O_LEAVES] == 0:
        pass
    elif stp_hit:
        left = orders[o, O_LEAVES]
        orders[o, O_LEAVES] = 0
        kx = write_ex_slot(eng, ex, kx, o, EXEC_CANCEL_ACK, orders[o, O_PX], left, LIQ_NONE, Z, Z,
                      REJECT_SELF_TRADE, now)
    elif orders[o, O_TYPE] == ORD_LIMIT or orders[o, O_TYPE] == ORD_POST_ONLY:
        ins = orders[o, O_INST]
        side = orders[o, O_SIDE]
        left = orders[o, O_LEAVES]
        why = REJECT_MAX_OPEN_ORDERS
        if st[S_OPEN_ORDERS] < st[S_MAX_OPEN]:
            lv = get_or_add_level(eng, ins, side, orders[o, O_PX])
            if lv != NIL:
                # A level just made holds 0, so this never leaves an empty level behind.
                if eng[1][lv, LV_QTY] <= I64_MAX - left:
                    append_order(eng, o, lv)
                    st[S_OPEN_ORDERS] += 1
                    km = write_md_level(eng, md, km, ins, side, orders[o, O_PX],
                                        eng[1][lv, LV_QTY], now)
                    return kx, km
                why = REJECT_MAX_ORDER_QTY
        orders[o, O_LEAVES] = 0
        kx = write_ex_slot(eng, ex, kx, o, EXEC_CANCEL_ACK, orders[o, O_PX], left, LIQ_NONE, Z, Z,
                      why, now)
    else:
        left = orders[o, O_LEAVES]
        orders[o, O_LEAVES] = 0
        kx = write_ex_slot(eng, ex, kx, o, EXEC_EXPIRED, orders[o, O_PX], left, LIQ_NONE, Z, Z,
                      REJECT_NONE, now)
    h_delete(eng[5], st, orders[o, O_CLIENT])
    free_order(eng, o)
    return kx, km


@njit(cache=True, _nrt=False, inline="always")
def _new(eng, rec, ex, kx, md, km, now):
    orders, inst, st = eng[0], eng[3], eng[6]
    ins = np.int64(rec.instrument_id)
    otype = rec.order_type
    qty = rec.qty_lots
    ok = (rec.side == SIDE_BUY or rec.side == SIDE_SELL) and ins >= 1 and \
        ins < inst.shape[0] and qty > 0 and otype >= ORD_LIMIT and otype <= ORD_POST_ONLY and \
        (otype == ORD_MARKET or rec.px_ticks > 0)
    if not ok or h_find(eng[5], st, rec.client_order_id) != NIL:
        return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_INVALID, now), km
    side = np.int64(rec.side) - 1
    opp_best = l3_best_px(eng, ins, 1 - side)
    limit = rec.px_ticks
    if otype == ORD_MARKET:
        if opp_best == 0:
            return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_NO_LIQUIDITY, now), km
        limit = _MARKET_BUY_PX if side == 0 else np.int64(1)
    if otype == ORD_POST_ONLY and opp_best != 0 and _crosses(side, limit, opp_best):
        return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_POST_ONLY, now), km
    if otype == ORD_FOK or (st[S_STP_MODE] == STP_REJECT and rec.strategy_id != 0):
        avail, own = _walk(eng, ins, side, limit, qty, np.int64(rec.strategy_id))
        if own and st[S_STP_MODE] == STP_REJECT:
            return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_SELF_TRADE, now), km
        if otype == ORD_FOK and avail < qty:
            return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_FOK, now), km
    if st[S_OPEN_ORDERS] >= st[S_MAX_OPEN] and (opp_best == 0 or
                                                 not _crosses(side, limit, opp_best)):
        # Full: refuse what could only rest; what trades uses the spare slot and frees others.
        return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_MAX_OPEN_ORDERS, now), km
    o = alloc_order(eng)
    if o == NIL:   # unreachable while fewer than all slots rest; the bound check stays
        return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_MAX_OPEN_ORDERS, now), km
    orders[o, O_PX] = limit if otype != ORD_MARKET else 0
    orders[o, O_LEAVES] = qty
    orders[o, O_CUM] = 0
    orders[o, O_ORIG_QTY] = qty
    orders[o, O_OWNER] = rec.strategy_id
    orders[o, O_CLIENT] = rec.client_order_id
    orders[o, O_VENUE_OID] = st[S_NEXT_VENUE_OID]
    st[S_NEXT_VENUE_OID] += 1
    orders[o, O_SIDE] = side
    orders[o, O_INST] = ins
    orders[o, O_TYPE] = otype
    orders[o, O_ACTIVE] = 1
    orders[o, O_CAUSE_TS] = rec.cause_recv_ts_ns
    orders[o, O_ENTRY_TS] = now
    h_insert(eng[5], st, rec.client_order_id, o)
    kx = write_ex_slot(eng, ex, kx, o, EXEC_ACK, orders[o, O_PX], qty, LIQ_NONE, Z, Z, REJECT_NONE,
                  now)
    kx, km, stp_hit = _match(eng, o, limit, ex, kx, md, km, now)
    return _after_match(eng, o, ex, kx, md, km, stp_hit, now)


@njit(cache=True, _nrt=False, inline="always")
def _cancel_slot(eng, o, ex, kx, md, km, now):
    orders, st = eng[0], eng[6]
    left = unlink_order(eng, o)
    km = write_md_level(eng, md, km, orders[o, O_INST], orders[o, O_SIDE], orders[o, O_PX], left,
                        now)
    qty = orders[o, O_LEAVES]
    orders[o, O_LEAVES] = 0
    kx = write_ex_slot(eng, ex, kx, o, EXEC_CANCEL_ACK, orders[o, O_PX], qty, LIQ_NONE, Z, Z,
                  REJECT_NONE, now)
    h_delete(eng[5], st, orders[o, O_CLIENT])
    free_order(eng, o)
    st[S_OPEN_ORDERS] -= 1
    return kx, km


@njit(cache=True, _nrt=False, inline="always")
def _find_own(eng, rec):
    o = h_find(eng[5], eng[6], rec.client_order_id)
    if o != NIL and eng[0][o, O_OWNER] != rec.strategy_id:
        return NIL   # another owner's order: answer as if it did not exist
    return o


@njit(cache=True, _nrt=False)
def _replace(eng, rec, ex, kx, md, km, now):
    orders, st = eng[0], eng[6]
    o = _find_own(eng, rec)
    if o == NIL:
        return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_UNKNOWN_ORDER, now), km
    new_px = rec.px_ticks if rec.px_ticks != 0 else orders[o, O_PX]
    new_qty = rec.qty_lots
    if new_qty <= 0 or new_px < 0:
        return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_INVALID, now), km
    if new_qty > I64_MAX - orders[o, O_CUM]:
        # cum + leaves is the order's quantity (O_ORIG_QTY, cum_qty of later fills): an int64
        return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_MAX_ORDER_QTY,
                              now), km
    ins = orders[o, O_INST]
    side = orders[o, O_SIDE]
    if new_px == orders[o, O_PX] and new_qty <= orders[o, O_LEAVES]:
        # Size down in place: time priority kept.
        lv = orders[o, O_LEVEL]
        eng[1][lv, LV_QTY] -= orders[o, O_LEAVES] - new_qty
        orders[o, O_LEAVES] = new_qty
        orders[o, O_ORIG_QTY] = orders[o, O_CUM] + new_qty
        kx = write_ex_slot(eng, ex, kx, o, EXEC_REPLACE_ACK, new_px, new_qty, LIQ_NONE, Z, Z,
                      REJECT_NONE, now)
        km = write_md_level(eng, md, km, ins, side, new_px, eng[1][lv, LV_QTY], now)
        return kx, km
    opp_best = l3_best_px(eng, ins, 1 - side)
    if orders[o, O_TYPE] == ORD_POST_ONLY and opp_best != 0 and _crosses(side, new_px, opp_best):
        return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_POST_ONLY, now), km
    if st[S_STP_MODE] == STP_REJECT and orders[o, O_OWNER] != 0:
        avail, own = _walk(eng, ins, side, new_px, new_qty, orders[o, O_OWNER])
        if own:
            return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_SELF_TRADE, now), km
    left = unlink_order(eng, o)
    st[S_OPEN_ORDERS] -= 1
    km = write_md_level(eng, md, km, ins, side, orders[o, O_PX], left, now)
    orders[o, O_PX] = new_px
    orders[o, O_LEAVES] = new_qty
    orders[o, O_ORIG_QTY] = orders[o, O_CUM] + new_qty
    kx = write_ex_slot(eng, ex, kx, o, EXEC_REPLACE_ACK, new_px, new_qty, LIQ_NONE, Z, Z,
                  REJECT_NONE, now)
    kx, km, stp_hit = _match(eng, o, new_px, ex, kx, md, km, now)
    return _after_match(eng, o, ex, kx, md, km, stp_hit, now)


@njit(cache=True, _nrt=False, inline="always")
def _process_one(eng, rec, ex, kx, md, km, now):
    kind = rec.kind
    if kind == INTENT_NEW:
        return _new(eng, rec, ex, kx, md, km, now)
    if kind == INTENT_CANCEL:
        o = _find_own(eng, rec)
        if o == NIL:
            return write_ex_input(eng, ex, kx, rec, EXEC_CANCEL_REJECT, REJECT_UNKNOWN_ORDER,
                                  now), km
        return _cancel_slot(eng, o, ex, kx, md, km, now)
    if kind == INTENT_REPLACE:
        return _replace(eng, rec, ex, kx, md, km, now)
    if kind == INTENT_CANCEL_ALL:
        return _cancel_all(eng, rec, ex, kx, md, km, now)
    return write_ex_input(eng, ex, kx, rec, EXEC_REJECT, REJECT_INVALID, now), km


@njit(cache=True, _nrt=False)
def _cancel_all(eng, rec, ex, kx, md, km, now):
    orders = eng[0]
    for o in range(orders.shape[0]):
        if orders[o, O_ACTIVE] == 1 and orders[o, O_OWNER] == rec.strategy_id and \
                (rec.instrument_id == 0 or orders[o, O_INST] == rec.instrument_id):
            kx, km = _cancel_slot(eng, o, ex, kx, md, km, now)
    return kx, km


@njit(cache=True, _nrt=False)
def engine_process(eng, orders_in, n, ex, md, now_ns):
    """Process orders_in[0:n]; returns (orders consumed, exec reports written, md written)."""
    return engine_process_inline(eng, orders_in, n, ex, md, now_ns)


# Why inline="always" on the path of a NEW and a CANCEL (``engine_process_inline``,
# ``_process_one``, ``_new``, ``_match``, ``_after_match``, ``_cancel_slot`` and the l3book
# mutators they call): numba passes each array argument as its exploded struct, so every call
# taking ``eng`` (9 arrays) pushes about 80 words; these copies cost more than the matching
# itself. The rare paths (REPLACE, CANCEL_ALL) stay calls, so the engine is compiled into its
# one hot caller (market.sim.sim_advance) once, and into ``engine_process`` once.
@njit(cache=True, _nrt=False, inline="always")
def engine_process_inline(eng, orders_in, n, ex, md, now_ns):
    """``engine_process``, inlined into its caller (see above)."""
    kx = Z
    km = Z
    done = Z
    while done < n:
        if ex.shape[0] - kx < OUT_MARGIN or md.shape[0] - km < OUT_MARGIN:
            break
        km0 = km
        kx, km = _process_one(eng, orders_in[done], ex, kx, md, km, now_ns)
        if km > km0:
            md[km - 1].flags |= MFLAG_LAST_IN_BATCH
        done += 1
    return done, kx, km


@njit(cache=True, _nrt=False)
def engine_snapshot(eng, ins, md, k, now_ns):
    """Write the instrument's whole L2 book as SNAP_START, levels, SNAP_END into md[k:];
    returns the new k. Writes nothing (and returns k) when the snapshot does not fit."""
    levels, sidelv, inst = eng[1], eng[2], eng[3]
    n_levels = inst[ins, 0] + inst[ins, 1]
    if md.shape[0] - k < n_levels + 2:
        eng[6][S_MD_DROPPED] += n_levels + 2
        return k
    uid = inst[ins, I_UPDATE_ID]
    k = write_md(eng, md, k, MSG_SNAP_START, Z, ins, Z, Z, uid, n_levels, now_ns)
    for side in range(2):
        for i in range(inst[ins, side]):
            lv = sidelv[ins, side, i]
            k = write_md(eng, md, k, MSG_LEVEL, side + 1, ins, levels[lv, LV_PX],
                         levels[lv, LV_QTY], uid, i, now_ns)
            md[k - 1].flags = MFLAG_SNAPSHOT
    k = write_md(eng, md, k, MSG_SNAP_END, Z, ins, Z, Z, uid, Z, now_ns)
    md[k - 1].flags = MFLAG_LAST_IN_BATCH
    return k


def engine_set_fees(eng, ins: int, value_e9_per_tick_lot: float, maker_bps: float,
                    taker_bps: float) -> None:
    """Cold: fee factors for one instrument (quote currency x 1e9 per tick x lot, bps)."""
    maker = value_e9_per_tick_lot * maker_bps / 1e4
    taker = value_e9_per_tick_lot * taker_bps / 1e4
    for name, v in (("value_e9_per_tick_lot", value_e9_per_tick_lot), ("maker_bps", maker_bps),
                    ("taker_bps", taker_bps), ("maker fee factor", maker),
                    ("taker fee factor", taker)):
        if not math.isfinite(v):
            raise ValueError(f"engine_set_fees: instrument {ins}: {name} must be finite, "
                             f"got {v!r}")
    eng[4][ins, 0] = maker
    eng[4][ins, 1] = taker


class MatchingEngine:
    """Cold wrapper for tests and backtests: one venue, several instruments.

    ``value_e9`` per instrument id (1..n) is the quote-currency value of one tick x one lot,
    times 1e9 (tick_size * lot_size * 1e9); ``from_instruments`` computes it exactly from the
    instrument table. Fees are in bps of notional, negative = rebate.
    """

    def __init__(self, n_instruments: int, *, venue_id: int = 1, maker_fee_bps: float = 0.0,
                 taker_fee_bps: float = 0.0, value_e9=None, stp: str = "cancel_newest",
                 max_orders: int = 1 << 16, max_levels: int = 1024,
                 level_pool: int | None = None):
        if stp not in STP_MODES:
            raise ValueError(f"unknown self-trade prevention mode {stp!r}; "
                             f"choose one of {sorted(STP_MODES)}")
        self.n_instruments = n_instruments
        self.eng = make_engine_arrays(n_instruments, max_orders, max_levels, level_pool)
        self.eng[6][S_STP_MODE] = STP_MODES[stp]
        self.eng[6][S_VENUE_ID] = venue_id
        self.maker_fee_bps = maker_fee_bps
        self.taker_fee_bps = taker_fee_bps
        for ins in range(1, n_instruments + 1):
            v = 1e9 if value_e9 is None else float(value_e9[ins - 1])
            engine_set_fees(self.eng, ins, v, maker_fee_bps, taker_fee_bps)
        self._ex = np.zeros(4096, dtype=EXEC_DTYPE)
        self._md = np.zeros(4096, dtype=MARKET_DTYPE)

    @classmethod
    def from_instruments(cls, instruments, *, venue_id: int, maker_fee_bps: float,
                         taker_fee_bps: float, stp: str = "cancel_newest", **kw):
        """instruments: shm.instruments.Instrument list with ids 1..n of this venue."""
        value = [float(i.tick_size * i.lot_size * 1_000_000_000) for i in
                 sorted(instruments, key=lambda i: i.instrument_id)]
        return cls(len(value), venue_id=venue_id, maker_fee_bps=maker_fee_bps,
                   taker_fee_bps=taker_fee_bps, value_e9=value, stp=stp, **kw)

    def submit(self, orders: np.ndarray, now_ns: int = 0):
        """Process all orders; returns (exec reports, market records) as new arrays."""
        exs, mds = [], []
        done = 0
        while done < len(orders):
            n, kx, km = engine_process(self.eng, orders[done:], len(orders) - done, self._ex,
                                       self._md, now_ns)
            exs.append(self._ex[:kx].copy())
            mds.append(self._md[:km].copy())
            done += n
        if self.eng[6][S_EX_DROPPED] or self.eng[6][S_MD_DROPPED]:
            raise RuntimeError(f"matching engine output overflow: {self.eng[6][S_EX_DROPPED]} "
                               f"exec reports, {self.eng[6][S_MD_DROPPED]} market records lost")
        return (np.concatenate(exs) if exs else self._ex[:0].copy(),
                np.concatenate(mds) if mds else self._md[:0].copy())

    def snapshot(self, ins: int, now_ns: int = 0) -> np.ndarray:
        n = int(self.eng[3][ins, 0] + self.eng[3][ins, 1]) + 2
        out = np.zeros(n, dtype=MARKET_DTYPE)
        engine_snapshot(self.eng, ins, out, 0, now_ns)
        return out

    def depth(self, ins: int, side: int) -> list[tuple[int, int]]:
        """[(px, qty)] best first; side 0 = bid, 1 = ask."""
        n = int(self.eng[3][ins, side])
        px = np.zeros(max(n, 1), dtype=np.int64)
        q = np.zeros(max(n, 1), dtype=np.int64)
        l3_depth(self.eng, ins, side, px, q)
        return [(int(a), int(b)) for a, b in zip(px[:n], q[:n])]

    def best(self, ins: int) -> tuple[int, int]:
        """(best bid px, best ask px), 0 for an empty side."""
        return int(l3_best_px(self.eng, ins, 0)), int(l3_best_px(self.eng, ins, 1))

    @property
    def open_orders(self) -> int:
        return int(self.eng[6][S_OPEN_ORDERS])
