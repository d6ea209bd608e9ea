"""Risk state for the pre-trade checks: limit arrays, the open-order table, positions, PnL and
the updates that execution reports make. Used by the backtest and the risk-gate stage through
market/risk.py (which re-exports this API). Every @njit function is HOT PATH; ``build_limits``
and ``make_risk_state`` are cold.

    limits = (lf float64[LF_INST_VALUE + n + 1], li int64[n + 1, LI_WORDS])
    rstate = (g, gf, pos, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, oo, spf, agg,
              marks)                               (index constants R_* below)

PnL is in quote currency (float64; it never goes into a record): realized on the average-cost
method, fees from the reports' fee_e9, unrealized against the last reference mid per
instrument. Peak equity and the day's starting equity are kept for drawdown and daily loss.
Open orders sit in an open-addressing hash table on client_order_id (linear probing with
backward-shift deletion, so there are no tombstones and lookups stay short).
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
from numba import njit

from shm.instruments import InstrumentTable
from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL, EXEC_PARTIAL,
    EXEC_REJECT, EXEC_REPLACE_ACK, INSTRUMENT_DTYPE, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE,
    OFLAG_RISK_SYSTEM, SIDE_BUY,
)

# ---- limits = (lf float64[LF_INST_VALUE + n + 1], li int64[n + 1, LI_WORDS]) ------------------
LF_MAX_ORDER_QTY, LF_MAX_POSITION, LF_PRICE_BAND_BPS, LF_MAX_OPEN_ORDERS = 0, 1, 2, 3
LF_MAX_ORDERS_PER_S, LF_MAX_CANCELS_PER_S, LF_MAX_OTR, LF_OTR_MIN_ORDERS = 4, 5, 6, 7
LF_DAILY_LOSS, LF_MAX_DRAWDOWN, LF_REDUCING_FRACTION, LF_STP, LF_WINDOW_NS = 8, 9, 10, 11, 12
LF_N_INST, LF_N_STRAT = 13, 14
LF_INST_VALUE = 16     # + instrument id: quote value of one tick of one lot (PnL, float)
LI_VALUE_MANT = 0      # tick_mant * lot_mant: notional = px * qty * mant * 10**-(exps), exactly
LI_NOTIONAL_UNITS = 1  # max_notional * 10**(tick_exp + lot_exp), floored: the exact int limit
LI_WORDS = 2


# ---- rstate = (g, gf, pos, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, oo, spf, agg,
#                marks) ---------------------------------------------------------------------
G_KILL, G_MODE, G_OPEN_TOTAL, G_TABLE_FULL = 0, 1, 2, 3        # int64 words
G_WORDS = 4
GF_REALIZED, GF_FEES, GF_UNREAL, GF_PEAK, GF_DAY_START = 0, 1, 2, 3, 4   # float64, quote
GF_WORDS = 5
SC_ORDERS, SC_FILLS, SC_ORDER_HEAD, SC_CANCEL_HEAD = 0, 1, 2, 3         # per strategy
SC_WORDS = 4
OO_COID, OO_STRAT, OO_INST, OO_SIDE, OO_PX, OO_LEAVES, OO_STATE = 0, 1, 2, 3, 4, 5, 6
OO_NEW_PX, OO_NEW_QTY, OO_PEND_INC = 7, 8, 9
OO_WORDS = 10
OOS_FREE, OOS_PENDING, OOS_LIVE, OOS_REPLACING = 0, 1, 2, 3
SP_COST, SP_REALIZED, SP_FEES = 0, 1, 2   # per strategy x instrument; cost in ticks*lots
SP_WORDS = 3
AG_POS, AG_COST = 0, 1                    # per instrument, summed over strategies
AG_WORDS = 2
(R_G, R_GF, R_POS, R_OPEN_BUY, R_OPEN_SELL, R_N_OPEN, R_SC, R_ORDER_TS, R_CANCEL_TS, R_OO, R_SPF,
 R_AGG, R_MARKS) = range(13)               # positions of the arrays in the rstate tuple


def build_limits(risk, instruments, max_strategies: int = 64, otr_min_orders: int = 100,
                 window_ns: int = 1_000_000_000):
    """Cold: limits from a ``RiskConfig`` and the instruments (INSTRUMENT_DTYPE array, an
    InstrumentTable or a list of Instrument). ``otr_min_orders``: the order-to-trade ratio is
    enforced only after this many orders (a new strategy has no fills yet)."""
    if isinstance(instruments, np.ndarray) and instruments.dtype == INSTRUMENT_DTYPE:
        arr = instruments
    else:
        table = instruments if isinstance(instruments, InstrumentTable) else \
            InstrumentTable(list(instruments))
        arr = table.to_array()
    n = int(arr["instrument_id"].max()) if len(arr) else 0
    lf = np.zeros(LF_INST_VALUE + n + 1, dtype=np.float64)
    li = np.zeros((n + 1, LI_WORDS), dtype=np.int64)
    lf[LF_MAX_ORDER_QTY] = risk.max_order_qty_lots
    lf[LF_MAX_POSITION] = risk.max_position_lots
    lf[LF_PRICE_BAND_BPS] = risk.price_band_bps
    lf[LF_MAX_OPEN_ORDERS] = risk.max_open_orders
    lf[LF_MAX_ORDERS_PER_S] = risk.max_orders_per_s
    lf[LF_MAX_CANCELS_PER_S] = risk.max_cancels_per_s
    lf[LF_MAX_OTR] = risk.max_order_to_trade
    lf[LF_OTR_MIN_ORDERS] = otr_min_orders
    lf[LF_DAILY_LOSS] = risk.daily_loss_limit
    lf[LF_MAX_DRAWDOWN] = risk.max_drawdown
    lf[LF_REDUCING_FRACTION] = risk.reducing_at_fraction
    lf[LF_STP] = 1.0 if risk.self_trade_prevention else 0.0
    lf[LF_WINDOW_NS] = window_ns
    lf[LF_N_INST] = n
    lf[LF_N_STRAT] = max_strategies
    limit = Decimal(repr(float(risk.max_notional)))
    for row in arr:
        i = int(row["instrument_id"])
        mant = int(row["tick_mant"]) * int(row["lot_mant"])
        exp = int(row["tick_exp"]) + int(row["lot_exp"])
        li[i, LI_VALUE_MANT] = mant
        units = int((limit * (Decimal(10) ** exp)).to_integral_value(rounding="ROUND_FLOOR"))
        li[i, LI_NOTIONAL_UNITS] = min(units, 2 ** 61)   # beyond: unreachable with sane orders
        lf[LF_INST_VALUE + i] = float(Decimal(mant) / (Decimal(10) ** exp))
    return lf, li


def make_risk_state(limits, open_order_capacity: int = 0):
    """Cold: zeroed risk state sized for ``limits`` (strategies, instruments, rate windows)."""
    lf, li = limits
    n = int(lf[LF_N_INST]) + 1
    s = int(lf[LF_N_STRAT]) + 1
    need = open_order_capacity or int(lf[LF_MAX_OPEN_ORDERS]) * min(s, 16) * 2
    cap = 1
    while cap < max(need, 64):
        cap <<= 1
    return (np.zeros(G_WORDS, np.int64), np.zeros(GF_WORDS, np.float64),
            np.zeros((s, n), np.int64), np.zeros((s, n), np.int64), np.zeros((s, n), np.int64),
            np.zeros(s, np.int64), np.zeros((s, SC_WORDS), np.int64),
            np.zeros((s, max(1, int(lf[LF_MAX_ORDERS_PER_S]))), np.int64),
            np.zeros((s, max(1, int(lf[LF_MAX_CANCELS_PER_S]))), np.int64),
            np.zeros((cap, OO_WORDS), np.int64), np.zeros((s, n, SP_WORDS), np.float64),
            np.zeros((n, AG_WORDS), np.float64), np.zeros(n, np.int64))


# =============================================================================================
# Open-order table: open addressing on client_order_id, linear probing, backward-shift delete
# =============================================================================================
@njit(cache=True, inline="always")
def _home(coid, mask):
    return ((coid * 0x9E3779B97F4A7C15) >> 17) & mask


@njit(cache=True)
def oo_find(oo, coid):
    mask = oo.shape[0] - 1
    i = _home(coid, mask)
    for _ in range(oo.shape[0]):
        c = oo[i, OO_COID]
        if c == coid:
            return i
        if c == 0:
            return -1
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def _oo_insert(oo, coid):
    mask = oo.shape[0] - 1
    i = _home(coid, mask)
    for _ in range(oo.shape[0]):
        if oo[i, OO_COID] == 0:
            oo[i, OO_COID] = coid
            return i
        i = (i + 1) & mask
    return -1


@njit(cache=True)
def _oo_delete(oo, i):
    mask = oo.shape[0] - 1
    j = i
    while True:
        j = (j + 1) & mask
        if oo[j, OO_COID] == 0:
            break
        h = _home(oo[j, OO_COID], mask)
        # move j back into the hole at i unless its home lies cyclically in (i, j]
        if (i <= j and (h <= i or h > j)) or (i > j and (h <= i and h > j)):
            oo[i, :] = oo[j, :]
            i = j
    oo[i, :] = 0


@njit(cache=True)
def equity(lf, rstate):
    gf = rstate[1]
    return gf[GF_REALIZED] - gf[GF_FEES] + gf[GF_UNREAL]


# =============================================================================================
# State updates
# =============================================================================================
@njit(cache=True)
def _push_time(times, sc, s, head_word, now_ns):
    times[s, sc[s, head_word] % times.shape[1]] = now_ns
    sc[s, head_word] += 1


@njit(cache=True)
def _add_open(rstate, s, inst, side, delta):
    if side == SIDE_BUY:
        rstate[3][s, inst] += delta
    else:
        rstate[4][s, inst] += delta


@njit(cache=True)
def _remove(rstate, j):
    g, n_open, oo = rstate[0], rstate[5], rstate[9]
    s = oo[j, OO_STRAT]
    _add_open(rstate, s, oo[j, OO_INST], oo[j, OO_SIDE], -(oo[j, OO_LEAVES] + oo[j, OO_PEND_INC]))
    n_open[s] -= 1
    g[G_OPEN_TOTAL] -= 1
    _oo_delete(oo, j)


@njit(cache=True)
def on_accept(limits, rstate, rec, now_ns):
    """The gate approved ``rec`` (check_order returned 0) and sends it on: record it."""
    lf = limits[0]
    g, n_open, sc, order_ts, cancel_ts, oo = (rstate[0], rstate[5], rstate[6], rstate[7],
                                              rstate[8], rstate[9])
    s = np.int64(rec.strategy_id)
    kind = rec.kind
    if kind == INTENT_NEW:
        j = _oo_insert(oo, rec.client_order_id)
        if j < 0:
            g[G_TABLE_FULL] += 1
            return
        oo[j, OO_STRAT] = s
        oo[j, OO_INST] = rec.instrument_id
        oo[j, OO_SIDE] = rec.side
        oo[j, OO_PX] = rec.px_ticks
        oo[j, OO_LEAVES] = rec.qty_lots
        oo[j, OO_STATE] = OOS_PENDING
        n_open[s] += 1
        g[G_OPEN_TOTAL] += 1
        _add_open(rstate, s, rec.instrument_id, rec.side, rec.qty_lots)
        if (rec.flags & OFLAG_RISK_SYSTEM) == 0:
            _push_time(order_ts, sc, s, SC_ORDER_HEAD, now_ns)
            sc[s, SC_ORDERS] += 1
    elif kind == INTENT_CANCEL or kind == INTENT_REPLACE:
        if (rec.flags & OFLAG_RISK_SYSTEM) == 0:
            _push_time(cancel_ts, sc, s, SC_CANCEL_HEAD, now_ns)
        if kind == INTENT_REPLACE:
            j = oo_find(oo, rec.client_order_id)
            if j >= 0:
                # exposure grows at once (worst case) and shrinks only when the venue confirms
                inc = max(rec.qty_lots - oo[j, OO_LEAVES], 0)
                oo[j, OO_PEND_INC] = inc
                oo[j, OO_NEW_PX] = rec.px_ticks
                oo[j, OO_NEW_QTY] = rec.qty_lots
                oo[j, OO_STATE] = OOS_REPLACING
                _add_open(rstate, s, oo[j, OO_INST], oo[j, OO_SIDE], inc)


@njit(cache=True)
def _unrealized(lf, rstate, inst):
    agg, marks = rstate[11], rstate[12]
    if marks[inst] <= 0:
        return 0.0
    return (agg[inst, AG_POS] * marks[inst] * 0.5 - agg[inst, AG_COST]) * lf[LF_INST_VALUE + inst]


@njit(cache=True)
def _after_pnl_change(lf, rstate):
    gf = rstate[1]
    eq = equity(lf, rstate)
    if eq > gf[GF_PEAK]:
        gf[GF_PEAK] = eq


@njit(cache=True)
def on_fill(limits, rstate, e):
    """A PARTIAL or FILL report: position, open exposure, realized PnL (average cost) and fees."""
    lf = limits[0]
    g, gf, pos, sc, oo, spf, agg = (rstate[0], rstate[1], rstate[2], rstate[6], rstate[9],
                                    rstate[10], rstate[11])
    s = np.int64(e.strategy_id)
    inst = np.int64(e.instrument_id)
    if s <= 0 or s > lf[LF_N_STRAT] or inst <= 0 or inst > lf[LF_N_INST]:
        return
    q = e.qty_lots
    signed = q if e.side == SIDE_BUY else -q
    before = _unrealized(lf, rstate, inst)
    p = pos[s, inst]
    value = lf[LF_INST_VALUE + inst]
    if p == 0 or (p > 0) == (signed > 0):
        spf[s, inst, SP_COST] += signed * e.px_ticks
        agg[inst, AG_COST] += signed * e.px_ticks
    else:
        closed = min(abs(p), q)
        avg = spf[s, inst, SP_COST] / p
        pnl_tl = closed * (e.px_ticks - avg) if p > 0 else closed * (avg - e.px_ticks)
        spf[s, inst, SP_REALIZED] += pnl_tl * value
        gf[GF_REALIZED] += pnl_tl * value
        dcost = -closed * avg if p > 0 else closed * avg
        rest = q - closed
        new_cost = spf[s, inst, SP_COST] + dcost
        if rest > 0:   # flipped through zero: the remainder opens at the fill price
            new_cost = (rest if signed > 0 else -rest) * e.px_ticks
        agg[inst, AG_COST] += new_cost - spf[s, inst, SP_COST]
        spf[s, inst, SP_COST] = new_cost
    pos[s, inst] = p + signed
    agg[inst, AG_POS] += signed
    if pos[s, inst] == 0:
        agg[inst, AG_COST] -= spf[s, inst, SP_COST]
        spf[s, inst, SP_COST] = 0.0
    fee = e.fee_e9 / 1e9
    spf[s, inst, SP_FEES] += fee
    gf[GF_FEES] += fee
    gf[GF_UNREAL] += _unrealized(lf, rstate, inst) - before
    sc[s, SC_FILLS] += 1
    j = oo_find(oo, e.client_order_id)
    if j >= 0:
        leaves = e.leaves_lots if e.kind == EXEC_PARTIAL else 0
        _add_open(rstate, s, inst, oo[j, OO_SIDE], leaves - oo[j, OO_LEAVES])
        oo[j, OO_LEAVES] = leaves
        if oo[j, OO_STATE] == OOS_PENDING:
            oo[j, OO_STATE] = OOS_LIVE
        if leaves <= 0:
            _remove(rstate, j)
    _after_pnl_change(lf, rstate)


@njit(cache=True)
def on_ack(limits, rstate, e):
    oo = rstate[9]
    j = oo_find(oo, e.client_order_id)
    if j < 0:
        return
    if e.kind == EXEC_REPLACE_ACK and oo[j, OO_STATE] == OOS_REPLACING:
        new_leaves = e.leaves_lots if e.leaves_lots > 0 else oo[j, OO_NEW_QTY]
        _add_open(rstate, oo[j, OO_STRAT], oo[j, OO_INST], oo[j, OO_SIDE],
                  new_leaves - oo[j, OO_LEAVES] - oo[j, OO_PEND_INC])
        oo[j, OO_LEAVES] = new_leaves
        oo[j, OO_PX] = oo[j, OO_NEW_PX]
        oo[j, OO_PEND_INC] = 0
        oo[j, OO_STATE] = OOS_LIVE
    elif oo[j, OO_STATE] == OOS_PENDING:
        oo[j, OO_STATE] = OOS_LIVE


@njit(cache=True)
def on_cancel(limits, rstate, e):
    """CANCEL_ACK or EXPIRED: the order is gone."""
    j = oo_find(rstate[9], e.client_order_id)
    if j >= 0:
        _remove(rstate, j)


@njit(cache=True)
def on_reject(limits, rstate, e):
    """REJECT or CANCEL_REJECT from the venue: a pending new order is gone; a refused replace
    leaves the order as it was."""
    oo = rstate[9]
    j = oo_find(oo, e.client_order_id)
    if j < 0:
        return
    if oo[j, OO_STATE] == OOS_REPLACING:
        _add_open(rstate, oo[j, OO_STRAT], oo[j, OO_INST], oo[j, OO_SIDE], -oo[j, OO_PEND_INC])
        oo[j, OO_PEND_INC] = 0
        oo[j, OO_STATE] = OOS_LIVE
    elif e.kind == EXEC_REJECT and oo[j, OO_STATE] == OOS_PENDING:
        _remove(rstate, j)


@njit(cache=True)
def on_exec(limits, rstate, e, now_ns):
    """Dispatch one EXEC_DTYPE report to the update it calls for."""
    kind = e.kind
    if kind == EXEC_PARTIAL or kind == EXEC_FILL:
        on_fill(limits, rstate, e)
    elif kind == EXEC_ACK or kind == EXEC_REPLACE_ACK:
        on_ack(limits, rstate, e)
    elif kind == EXEC_CANCEL_ACK or kind == EXEC_EXPIRED:
        on_cancel(limits, rstate, e)
    elif kind == EXEC_REJECT or kind == EXEC_CANCEL_REJECT:
        on_reject(limits, rstate, e)


@njit(cache=True)
def mark_to_market(limits, rstate, inst, mid_x2):
    """New reference price for ``inst`` (bid + ask, ticks): unrealized PnL, peak, drawdown."""
    lf = limits[0]
    if mid_x2 <= 0 or inst <= 0 or inst > lf[LF_N_INST]:
        return
    before = _unrealized(lf, rstate, inst)
    rstate[12][inst] = mid_x2
    rstate[1][GF_UNREAL] += _unrealized(lf, rstate, inst) - before
    _after_pnl_change(lf, rstate)


@njit(cache=True)
def set_kill(rstate, on):
    rstate[0][G_KILL] = 1 if on else 0


@njit(cache=True)
def set_mode(rstate, mode):
    """Operator mode: RISK_ACTIVE, RISK_REDUCING or RISK_HALTED (risk_mode may be stricter)."""
    rstate[0][G_MODE] = mode


@njit(cache=True)
def reset_day(limits, rstate):
    """Start a new trading day: loss counts from current equity; order-to-trade counters zero."""
    rstate[1][GF_DAY_START] = equity(limits[0], rstate)
    sc = rstate[6]
    for s in range(sc.shape[0]):
        sc[s, SC_ORDERS] = 0
        sc[s, SC_FILLS] = 0
