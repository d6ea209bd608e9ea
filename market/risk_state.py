"""Risk state for the pre-trade checks: limit arrays, the open-order table, positions, PnL and
the updates that execution reports make. Used by the backtest and the risk-gate stage through
market/risk.py (which re-exports this API and holds the cold builders ``build_limits`` and
``make_risk_state``). Every @njit function here is HOT PATH.

    limits = (lf float64[LF_INST_VALUE + n + 1 + 2 * (S + 1)], li int64[n + 1, LI_WORDS])
    rstate = (g, gf, pos, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, oo, spf, agg,
              marks, oo_hash, oo_free, oo_list, oo_count)   (index constants R_* below)

PnL is in quote currency (float64; it never goes into a record): realized on the average-cost
method, fees from the reports' fee_e9, unrealized against the last reference mid per
instrument. Peak equity and the day's starting equity are kept for drawdown and daily loss.
Open orders sit in slab rows found through an open-addressing hash on client_order_id and are
listed per instrument (see the open-order section).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from market.accounting import apply_fill
from shm.coidhash import coid_delete, coid_find, coid_insert

from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL, EXEC_PARTIAL,
    EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE,
    OFLAG_RISK_SYSTEM, REJECT_DAILY_LOSS, REJECT_DRAWDOWN, RISK_ACTIVE, RISK_HALTED, SIDE_BUY,
)

# ---- limits = (lf float64[LF_INST_VALUE + n + 1 + 2 * (S + 1)], li int64[n + 1, LI_WORDS]) ----
LF_MAX_ORDER_QTY, LF_MAX_POSITION, LF_PRICE_BAND_BPS, LF_MAX_OPEN_ORDERS = 0, 1, 2, 3
LF_MAX_ORDERS_PER_S, LF_MAX_CANCELS_PER_S, LF_MAX_OTR, LF_OTR_MIN_ORDERS = 4, 5, 6, 7
LF_DAILY_LOSS, LF_MAX_DRAWDOWN, LF_REDUCING_FRACTION, LF_STP, LF_WINDOW_NS = 8, 9, 10, 11, 12
LF_N_INST, LF_N_STRAT = 13, 14
LF_GROUPED = 15        # 1.0 when some strategy runs as several shards (strategy ids)
LF_INST_VALUE = 16     # + instrument id: quote value of one tick of one lot (PnL, float)
# after the instrument values: per strategy id, its shard position limit (lots), then its group
# (the strategy id of its shard 0): shard_position_limit / group_of below
LI_VALUE_MANT = 0      # tick_mant * lot_mant: notional = px * qty * mant * 10**-(exps), exactly
LI_NOTIONAL_UNITS = 1  # max_notional * 10**(tick_exp + lot_exp), floored: the exact int limit
LI_WORDS = 2


# ---- rstate = (g, gf, pos, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, oo, spf, agg,
#                marks) ---------------------------------------------------------------------
G_KILL, G_MODE, G_OPEN_TOTAL, G_TABLE_FULL = 0, 1, 2, 3        # int64 words
# The loss latch: the first fill or mark that breaches the daily-loss or drawdown limit sets
# G_MODE = RISK_HALTED with its REJECT_* reason in G_HALT_REASON, and it stays so when the mark
# recovers: only an operator resume (set_mode ACTIVE) or the trading day's roll (roll_day)
# lifts it. G_HALTS counts the latching events (the stage journals each one it sees).
G_HALT_REASON, G_HALTS = 4, 5
G_WORDS = 6
GF_REALIZED, GF_FEES, GF_UNREAL, GF_PEAK, GF_DAY_START = 0, 1, 2, 3, 4   # float64, quote
GF_WORDS = 5
SC_ORDERS, SC_FILLS, SC_ORDER_HEAD, SC_CANCEL_HEAD = 0, 1, 2, 3         # per strategy
SC_WORDS = 4
OO_COID, OO_STRAT, OO_INST, OO_SIDE, OO_PX, OO_LEAVES, OO_STATE = 0, 1, 2, 3, 4, 5, 6
OO_NEW_PX, OO_NEW_QTY, OO_PEND_INC, OO_LIST_POS = 7, 8, 9, 10
OO_WORDS = 11
OOS_FREE, OOS_PENDING, OOS_LIVE, OOS_REPLACING = 0, 1, 2, 3
# spf: market.accounting.POSITION_DTYPE[S + 1, I + 1], per strategy x instrument: the one fill
# accounting the strategies and the backtest use too (realized in ticks x lots, fees in quote)
AG_POS, AG_COST = 0, 1                    # per instrument, summed over strategies
AG_WORDS = 2
(R_G, R_GF, R_POS, R_OPEN_BUY, R_OPEN_SELL, R_N_OPEN, R_SC, R_ORDER_TS, R_CANCEL_TS, R_OO, R_SPF,
 R_AGG, R_MARKS, R_OO_HASH, R_OO_FREE, R_OO_LIST, R_OO_COUNT) = range(17)   # rstate positions


# =============================================================================================
# Open orders: rows of a slab (stable while the order lives), found by client_order_id through
# an open-addressing hash (linear probing, backward-shift delete: no tombstones), and listed per
# instrument so self-trade prevention scans only that instrument's own orders.
#   od = rstate[9]   int64[cap, OO_WORDS]   the rows (OO_COID == 0: free)
#   oh = rstate[13]  int64[1, hcap, 2]      (client_order_id, row + 1); hcap = 2 * cap, a power of 2
#                                           (shm/coidhash.py: linear probing, backward-shift delete)
#   ofree = rstate[14] int64[cap + 1]       stack of free rows; ofree[cap] = how many
#   ilist = rstate[15] int64[n + 1, cap]    rows of each instrument's open orders (OO_LIST_POS)
#   icnt = rstate[16]  int64[n + 1]
# =============================================================================================
@njit(cache=True)
def row_of(oh, coid):
    """Slab row of the open order ``coid``, or -1 (hash ``oh`` = rstate[R_OO_HASH])."""
    i = coid_find(oh, 0, coid)
    return -1 if i < 0 else oh[0, i, 1] - 1


def oo_find(rstate, coid) -> int:
    """Cold convenience (tests, views): slab row of the open order ``coid``, or -1."""
    return int(row_of(rstate[R_OO_HASH], coid))


@njit(cache=True)
def _oo_add(od, oh, ofree, ilist, icnt, coid, inst):
    """A free row for a new order (hash entry and instrument list too); -1 if full."""
    cap = od.shape[0]
    if coid == 0 or ofree[cap] == 0 or coid_find(oh, 0, coid) >= 0:
        return -1
    ofree[cap] -= 1
    row = ofree[ofree[cap]]
    i = coid_insert(oh, 0, coid)   # 2 * cap hash rows: an empty one always exists
    oh[0, i, 1] = row + 1
    od[row, OO_COID] = coid
    od[row, OO_INST] = inst
    od[row, OO_LIST_POS] = icnt[inst]
    ilist[inst, icnt[inst]] = row
    icnt[inst] += 1
    return row


@njit(cache=True)
def _oo_drop(od, oh, ofree, ilist, icnt, row):
    inst = od[row, OO_INST]
    last = icnt[inst] - 1
    p = od[row, OO_LIST_POS]
    moved = ilist[inst, last]
    ilist[inst, p] = moved
    od[moved, OO_LIST_POS] = p
    icnt[inst] = last
    i = coid_find(oh, 0, od[row, OO_COID])
    if i >= 0:
        coid_delete(oh, 0, i)
    od[row, :] = 0
    cap = od.shape[0]
    ofree[ofree[cap]] = row
    ofree[cap] += 1


# =============================================================================================
# State updates. Public entry points take (limits, rstate) and unpack them ONCE; the cores take
# plain arrays. (Pulling arrays out of the rstate tuple inside many small functions made numba
# emit a reference-count pair per array per call: ~100 atomic operations per check.)
# =============================================================================================
@njit(cache=True)
def equity_of(gf):
    return gf[GF_REALIZED] - gf[GF_FEES] + gf[GF_UNREAL]


@njit(cache=True)
def equity(lf, rstate):
    """Realized - fees + unrealized over the instance, quote currency."""
    return equity_of(rstate[R_GF])


@njit(cache=True)
def _add_open(open_buy, open_sell, s, inst, side, delta):
    if side == SIDE_BUY:
        open_buy[s, inst] += delta
    else:
        open_sell[s, inst] += delta


@njit(cache=True)
def _remove(g, open_buy, open_sell, n_open, od, oh, ofree, ilist, icnt, j):
    s = od[j, OO_STRAT]
    _add_open(open_buy, open_sell, s, od[j, OO_INST], od[j, OO_SIDE],
              -(od[j, OO_LEAVES] + od[j, OO_PEND_INC]))
    n_open[s] -= 1
    g[G_OPEN_TOTAL] -= 1
    _oo_drop(od, oh, ofree, ilist, icnt, j)


@njit(cache=True)
def _accept(g, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, od, oh, ofree, ilist, icnt,
            rec, now_ns):
    s = np.int64(rec.strategy_id)
    kind = rec.kind
    system = (rec.flags & OFLAG_RISK_SYSTEM) != 0
    if kind == INTENT_NEW:
        j = _oo_add(od, oh, ofree, ilist, icnt, rec.client_order_id, np.int64(rec.instrument_id))
        if j < 0:
            g[G_TABLE_FULL] += 1
            return
        od[j, OO_STRAT] = s
        od[j, OO_SIDE] = rec.side
        od[j, OO_PX] = rec.px_ticks
        od[j, OO_LEAVES] = rec.qty_lots
        od[j, OO_STATE] = OOS_PENDING
        n_open[s] += 1
        g[G_OPEN_TOTAL] += 1
        _add_open(open_buy, open_sell, s, np.int64(rec.instrument_id), rec.side, rec.qty_lots)
        if not system:
            order_ts[s, sc[s, SC_ORDER_HEAD] % order_ts.shape[1]] = now_ns
            sc[s, SC_ORDER_HEAD] += 1
            sc[s, SC_ORDERS] += 1
    elif kind == INTENT_CANCEL or kind == INTENT_REPLACE:
        if not system:
            cancel_ts[s, sc[s, SC_CANCEL_HEAD] % cancel_ts.shape[1]] = now_ns
            sc[s, SC_CANCEL_HEAD] += 1
        if kind == INTENT_REPLACE:
            j = row_of(oh, rec.client_order_id)
            if j >= 0:
                # exposure grows at once (worst case) and shrinks only when the venue confirms:
                # while the replace is pending the order counts max(leaves, new qty), fills
                # included (_fill keeps it so), whichever way the venue answers, and whatever
                # the order of fills and the replace (so a replay of the journal needs no
                # more than the causal order, see replay)
                inc = max(rec.qty_lots - od[j, OO_LEAVES], 0)
                od[j, OO_PEND_INC] = inc
                od[j, OO_NEW_PX] = rec.px_ticks
                od[j, OO_NEW_QTY] = rec.qty_lots
                od[j, OO_STATE] = OOS_REPLACING
                _add_open(open_buy, open_sell, s, od[j, OO_INST], od[j, OO_SIDE], inc)


@njit(cache=True)
def on_accept(limits, rstate, rec, now_ns):
    """The gate approved ``rec`` (check_order returned 0) and sends it on: record it."""
    _accept(rstate[R_G], rstate[R_OPEN_BUY], rstate[R_OPEN_SELL], rstate[R_N_OPEN], rstate[R_SC],
            rstate[R_ORDER_TS], rstate[R_CANCEL_TS], rstate[R_OO], rstate[R_OO_HASH],
            rstate[R_OO_FREE], rstate[R_OO_LIST], rstate[R_OO_COUNT], rec, now_ns)


@njit(cache=True)
def _unrealized(lf, agg, marks, inst):
    if marks[inst] <= 0:
        return 0.0
    return (agg[inst, AG_POS] * marks[inst] * 0.5 - agg[inst, AG_COST]) * lf[LF_INST_VALUE + inst]


@njit(cache=True)
def _fill(lf, g, gf, pos, open_buy, open_sell, n_open, sc, od, oh, ofree, ilist, icnt, spf, agg,
          marks, e):
    """PARTIAL / FILL: position, open exposure, realized PnL (average cost) and fees."""
    s = np.int64(e.strategy_id)
    inst = np.int64(e.instrument_id)
    if s <= 0 or s > lf[LF_N_STRAT] or inst <= 0 or inst > lf[LF_N_INST]:
        return
    q = e.qty_lots
    signed = q if e.side == SIDE_BUY else -q
    before = _unrealized(lf, agg, marks, inst)
    acct = spf[s, inst]
    cost_before = acct.cost
    # average cost, realized PnL (ticks x lots) and fees: market/accounting.py, written once
    realized_tl = apply_fill(acct, e.side, e.px_ticks, q, e.fee_e9)
    gf[GF_REALIZED] += realized_tl * lf[LF_INST_VALUE + inst]
    agg[inst, AG_COST] += acct.cost - cost_before
    pos[s, inst] += signed
    agg[inst, AG_POS] += signed
    gf[GF_FEES] += e.fee_e9 / 1e9
    gf[GF_UNREAL] += _unrealized(lf, agg, marks, inst) - before
    sc[s, SC_FILLS] += 1
    j = row_of(oh, e.client_order_id)
    if j >= 0:
        leaves = e.leaves_lots if e.kind == EXEC_PARTIAL else 0
        before = od[j, OO_LEAVES] + od[j, OO_PEND_INC]
        od[j, OO_LEAVES] = leaves
        if od[j, OO_STATE] == OOS_REPLACING:   # still max(leaves, new qty): see _accept
            od[j, OO_PEND_INC] = max(od[j, OO_NEW_QTY] - leaves, 0)
        _add_open(open_buy, open_sell, s, inst, od[j, OO_SIDE],
                  od[j, OO_LEAVES] + od[j, OO_PEND_INC] - before)
        if od[j, OO_STATE] == OOS_PENDING:
            od[j, OO_STATE] = OOS_LIVE
        if leaves <= 0:
            _remove(g, open_buy, open_sell, n_open, od, oh, ofree, ilist, icnt, j)
    eq = equity_of(gf)
    if eq > gf[GF_PEAK]:
        gf[GF_PEAK] = eq


@njit(cache=True)
def _latch_loss(lf, g, gf):
    """Latch HALTED on a breach of the daily-loss or drawdown limit (see G_HALT_REASON)."""
    if g[G_MODE] == RISK_HALTED:
        return
    eq = equity_of(gf)
    code = 0
    if gf[GF_DAY_START] - eq > lf[LF_DAILY_LOSS]:
        code = REJECT_DAILY_LOSS
    elif gf[GF_PEAK] - eq > lf[LF_MAX_DRAWDOWN]:
        code = REJECT_DRAWDOWN
    if code != 0:
        g[G_MODE] = RISK_HALTED
        g[G_HALT_REASON] = code
        g[G_HALTS] += 1


@njit(cache=True)
def _report(lf, g, gf, pos, open_buy, open_sell, n_open, sc, od, oh, ofree, ilist, icnt, spf,
            agg, marks, e):
    kind = e.kind
    if kind == EXEC_PARTIAL or kind == EXEC_FILL:
        _fill(lf, g, gf, pos, open_buy, open_sell, n_open, sc, od, oh, ofree, ilist, icnt, spf,
              agg, marks, e)
        _latch_loss(lf, g, gf)
        return
    j = row_of(oh, e.client_order_id)
    if j < 0:
        return
    st = od[j, OO_STATE]
    if kind == EXEC_ACK:
        if st == OOS_PENDING:
            od[j, OO_STATE] = OOS_LIVE
    elif kind == EXEC_REPLACE_ACK:
        if st == OOS_REPLACING:
            new_leaves = e.leaves_lots if e.leaves_lots > 0 else od[j, OO_NEW_QTY]
            _add_open(open_buy, open_sell, od[j, OO_STRAT], od[j, OO_INST], od[j, OO_SIDE],
                      new_leaves - od[j, OO_LEAVES] - od[j, OO_PEND_INC])
            od[j, OO_LEAVES] = new_leaves
            od[j, OO_PX] = od[j, OO_NEW_PX]
            od[j, OO_PEND_INC] = 0
            od[j, OO_STATE] = OOS_LIVE
    elif kind == EXEC_CANCEL_ACK or kind == EXEC_EXPIRED:
        _remove(g, open_buy, open_sell, n_open, od, oh, ofree, ilist, icnt, j)
    elif kind == EXEC_REJECT:
        # the order itself was refused (a refused cancel or replace is EXEC_CANCEL_REJECT):
        # it is gone, whatever request of ours was still in flight for it
        _remove(g, open_buy, open_sell, n_open, od, oh, ofree, ilist, icnt, j)
    elif kind == EXEC_CANCEL_REJECT:
        # a refused replace leaves the order as it was
        if st == OOS_REPLACING:
            _add_open(open_buy, open_sell, od[j, OO_STRAT], od[j, OO_INST], od[j, OO_SIDE],
                      -od[j, OO_PEND_INC])
            od[j, OO_PEND_INC] = 0
            od[j, OO_STATE] = OOS_LIVE


@njit(cache=True)
def on_exec(limits, rstate, e, now_ns):
    """One EXEC_DTYPE report: acks, fills (positions, PnL, fees), cancels, expiries, rejects."""
    _report(limits[0], rstate[R_G], rstate[R_GF], rstate[R_POS], rstate[R_OPEN_BUY],
            rstate[R_OPEN_SELL], rstate[R_N_OPEN], rstate[R_SC], rstate[R_OO],
            rstate[R_OO_HASH], rstate[R_OO_FREE], rstate[R_OO_LIST], rstate[R_OO_COUNT],
            rstate[R_SPF], rstate[R_AGG], rstate[R_MARKS], e)


@njit(cache=True)
def _next_decision(by_coid, sorted_coids, approved, coid, kind, i):
    """Index of the first approved decision of ``kind`` for ``coid`` at or after ``i``, or -1.
    ``by_coid``: the decisions' indexes sorted (stably) by client_order_id, ``sorted_coids``
    their ids in that order."""
    p = np.searchsorted(sorted_coids, coid)
    while p < len(by_coid) and sorted_coids[p] == coid:
        k = by_coid[p]
        if k >= i and approved[k].kind == kind:
            return k
        p += 1
    return -1


@njit(cache=True)
def replay(limits, rstate, approved, execs):
    """Rebuild the state from a journal (cold, once per gate restart, compiled because a day's
    journal holds millions of records): the approved orders in the gate's decision order and
    the exec reports in the order the gate applied them (the router's), merged so that the
    result is what the live gate held. Same effect as on_accept / on_exec called in that order.

    The merge is by ``send_ts_ns`` (an order before a report stamped at the same nanosecond),
    corrected by causality where the stamps cannot be trusted: they come from two processes'
    clocks (the gate stamps its decisions, the router its reports), so a report can carry a
    stamp a little before a decision the gate took before applying it, or after. Wrong sides
    of such a pair corrupt the open-order table, so:
      1. a report for an order whose NEW is not applied yet waits for it (a venue answers only
         what it was sent);
      2. a REPLACE_ACK or CANCEL_REJECT waits for the REPLACE it answers, when the order is
         not being replaced yet and a REPLACE of it is still to come;
      3. a REPLACE of an order still being replaced waits for the reports before it (the live
         gate refuses a replace while one is pending, so it had applied the answer);
      4. a NEW that finds the open-order table full waits for the reports before it (the live
         gate refuses a NEW then, so it had applied a report that freed a row).
    Should two records wait for each other (a journal not written by one gate), time order
    decides. Fills and a REPLACE of the same order may come in either order: a pending
    replace's exposure does not depend on it (see _accept)."""
    r_oo_hash = rstate[R_OO_HASH]
    od = rstate[R_OO]
    g = rstate[R_G]
    na = len(approved)
    ne = len(execs)
    coids = np.empty(na, dtype=np.int64)
    for k in range(na):
        coids[k] = approved[k].client_order_id
    by_coid = np.argsort(coids, kind="mergesort")
    sorted_coids = coids[by_coid]
    i = 0
    j = 0
    while i < na or j < ne:
        take_exec = j < ne and (i >= na or execs[j].send_ts_ns < approved[i].send_ts_ns)
        if take_exec and i < na:
            e = execs[j]
            k = _next_decision(by_coid, sorted_coids, approved, e.client_order_id,
                               INTENT_NEW, i)
            if k < 0 and (e.kind == EXEC_REPLACE_ACK or e.kind == EXEC_CANCEL_REJECT):
                r = row_of(r_oo_hash, e.client_order_id)
                if r >= 0 and od[r, OO_STATE] != OOS_REPLACING:
                    k = _next_decision(by_coid, sorted_coids, approved,
                                       e.client_order_id, INTENT_REPLACE, i)
            if k >= 0:
                take_exec = False   # rules 1 and 2: the decisions up to k first
        elif not take_exec and j < ne:
            d = approved[i]
            first = False
            if d.kind == INTENT_REPLACE:
                r = row_of(r_oo_hash, d.client_order_id)
                first = r >= 0 and od[r, OO_STATE] == OOS_REPLACING          # rule 3
            elif d.kind == INTENT_NEW:
                first = g[G_OPEN_TOTAL] >= od.shape[0]                        # rule 4
            if first and _next_decision(by_coid, sorted_coids, approved,
                                        execs[j].client_order_id, INTENT_NEW, i) < 0:
                take_exec = True   # the reports first, one at a time
        if take_exec:
            on_exec(limits, rstate, execs[j], execs[j].send_ts_ns)
            j += 1
        else:
            on_accept(limits, rstate, approved[i], approved[i].send_ts_ns)
            i += 1


# The per-kind names of the brief; each is on_exec (which dispatches on e.kind).
on_fill = on_exec
on_ack = on_exec
on_cancel = on_exec
on_reject = on_exec


@njit(cache=True)
def _mark(lf, gf, agg, marks, inst, mid_x2):
    if mid_x2 <= 0 or inst <= 0 or inst > lf[LF_N_INST]:
        return
    before = _unrealized(lf, agg, marks, inst)
    marks[inst] = mid_x2
    gf[GF_UNREAL] += _unrealized(lf, agg, marks, inst) - before
    eq = equity_of(gf)
    if eq > gf[GF_PEAK]:
        gf[GF_PEAK] = eq


@njit(cache=True)
def mark_to_market(limits, rstate, inst, mid_x2):
    """New reference price for ``inst`` (bid + ask, ticks): unrealized PnL, peak, drawdown;
    a breach of the loss or drawdown limit latches HALTED (see G_HALT_REASON)."""
    lf = limits[0]
    _mark(lf, rstate[R_GF], rstate[R_AGG], rstate[R_MARKS], inst, mid_x2)
    _latch_loss(lf, rstate[R_G], rstate[R_GF])


@njit(cache=True)
def set_kill(rstate, on):
    rstate[R_G][G_KILL] = 1 if on else 0


@njit(cache=True)
def set_mode(rstate, mode):
    """Operator mode: RISK_ACTIVE, RISK_REDUCING or RISK_HALTED (risk_mode may be stricter).
    Any operator mode change clears a loss latch's reason; a limit still breached latches
    again on the next fill or mark (a resume cannot trade through a live breach)."""
    g = rstate[R_G]
    g[G_MODE] = mode
    g[G_HALT_REASON] = 0


@njit(cache=True)
def reset_day(limits, rstate):
    """Start a new trading day: loss counts from current equity; order-to-trade counters zero."""
    gf = rstate[R_GF]
    gf[GF_DAY_START] = equity_of(gf)
    sc = rstate[R_SC]
    for s in range(sc.shape[0]):
        sc[s, SC_ORDERS] = 0
        sc[s, SC_FILLS] = 0


@njit(cache=True)
def roll_day(limits, rstate):
    """The configured trading day rolled over: ``reset_day``, the drawdown peak restarts from
    current equity (max_drawdown is intraday), and a loss or drawdown latch is lifted (a halt
    set by the operator or the kill switch is not). Returns the lifted REJECT_* reason or 0."""
    reset_day(limits, rstate)
    gf = rstate[R_GF]
    gf[GF_PEAK] = equity_of(gf)
    g = rstate[R_G]
    lifted = g[G_HALT_REASON]
    if lifted != 0:
        g[G_MODE] = RISK_ACTIVE
        g[G_HALT_REASON] = 0
    return lifted
