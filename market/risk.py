"""Pre-trade risk checks and the risk state they read, shared by the backtest and the risk-gate
stage. Every @njit function here is HOT PATH (no allocation, no exceptions: checks return a
REJECT_* code, 0 = pass); ``build_limits`` and ``make_risk_state`` are cold.

    limits = build_limits(cfg.risk, instruments)        # cold, from pipeline.config.RiskConfig
    rstate = make_risk_state(limits)                     # cold, preallocated arrays
    code = check_order(limits, rstate, intent, ref_mid_x2, now_ns)   # hot
    if code == 0: on_accept(limits, rstate, intent, now_ns)          # the order leaves the gate
    on_exec(limits, rstate, exec_report, now_ns)         # acks, fills, cancels, rejects
    mark_to_market(limits, rstate, instrument_id, mid_x2)

The state layout, its builders and the updates from execution reports live in
market/risk_state.py; everything is re-exported here, so callers import market.risk only.

Every limit is inclusive: a value equal to its limit passes, one unit more is rejected.
Positions and open-order exposure are per strategy process (strategy id) and instrument,
against that process's shard limit; a strategy that runs as several shards is also held to
``max_position_lots`` and ``max_open_orders`` summed over its shards (its group); loss and drawdown are over
the whole instance (the gate halts everything); self-trade prevention looks at the resting
orders of every strategy of the instance (two of our strategies crossing is a wash trade too).
Orders flagged OFLAG_RISK_SYSTEM (the gate's own flattening) skip the kill switch, halt, loss
and rate checks but must still reduce exposure.

Order of the checks in check_order for NEW (the first failing one is reported): invalid, kill
switch, halted, daily loss, drawdown, max order qty, no reference, price band, max notional,
max position, reduce-only, max open orders, order rate, order-to-trade, self-trade. CANCEL:
unknown order, cancel rate. REPLACE: unknown order, kill/halt/loss, the order checks on the new
price and size, cancel rate. CANCEL_ALL always passes.
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np
from numba import njit

from market.risk_state import (  # noqa: F401  (re-exported: the risk API lives in one place)
    AG_COST, AG_POS, AG_WORDS, G_HALT_REASON, G_HALTS, G_KILL, G_MODE, G_OPEN_TOTAL,
    G_TABLE_FULL, G_WORDS, GF_DAY_START,
    GF_FEES, GF_PEAK, GF_REALIZED, GF_UNREAL, GF_WORDS, LF_DAILY_LOSS, LF_INST_VALUE,
    LF_MAX_CANCELS_PER_S, LF_MAX_DRAWDOWN, LF_MAX_OPEN_ORDERS, LF_MAX_ORDER_QTY,
    LF_GROUPED, LF_MAX_ORDERS_PER_S, LF_MAX_OTR, LF_MAX_POSITION, LF_N_INST, LF_N_STRAT,
    LF_OTR_MIN_ORDERS,
    LF_PRICE_BAND_BPS, LF_REDUCING_FRACTION, LF_STP, LF_WINDOW_NS, LI_NOTIONAL_UNITS,
    LI_VALUE_MANT, LI_WORDS, OO_COID, OO_INST, OO_LEAVES, OO_PX, OO_SIDE, OO_STATE, OO_STRAT,
    OO_WORDS, OOS_REPLACING, R_AGG, R_CANCEL_TS, R_G, R_GF, R_MARKS, R_N_OPEN, R_OO, R_OO_COUNT,
    R_OO_FREE, R_OO_HASH, R_OO_LIST, R_OPEN_BUY, R_OPEN_SELL, R_ORDER_TS, R_POS, R_SC, R_SPF,
    SC_CANCEL_HEAD, SC_FILLS, SC_ORDER_HEAD, SC_ORDERS, SC_WORDS, equity, equity_of, mark_to_market, on_accept, on_ack, on_cancel, on_exec, on_fill,
    on_reject, oo_find, reset_day, roll_day, row_of, set_kill, set_mode,
)
from market.accounting import POSITION_DTYPE
from market.book import book_apply_batch, is_valid, mid_x2
from shm.instruments import InstrumentTable
from shm.records import (
    INSTRUMENT_DTYPE, INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE,
    OFLAG_RISK_SYSTEM, ORD_LIMIT,
    ORD_MARKET, ORD_POST_ONLY, REJECT_CANCEL_RATE, REJECT_DAILY_LOSS, REJECT_DRAWDOWN,
    REJECT_HALTED, REJECT_INVALID, REJECT_KILL_SWITCH, REJECT_MAX_NOTIONAL,
    REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY, REJECT_MAX_POSITION, REJECT_NO_REFERENCE,
    REJECT_ORDER_RATE, REJECT_ORDER_TO_TRADE, REJECT_PRICE_BAND, REJECT_REDUCE_ONLY,
    REJECT_SELF_TRADE, REJECT_UNKNOWN_ORDER, RISK_ACTIVE, RISK_HALTED, RISK_REDUCING, SIDE_BUY,
    SIDE_SELL,
)

_INT_SAFE = float(2 ** 62)
# Price levels per side of the gate's own L2 books (its reference prices), live and in backtests.
GATE_BOOK_LEVELS = 64


# =============================================================================================
# The gate's market data (written once: the live gate's step and the backtest loop)
@njit(cache=True)
def gate_apply_md(px, qty, meta, md, n, touched):
    """md[0:n] into the gate's L2 book; every instrument they name is flagged in ``touched``
    for ``gate_mark`` (called once after all of a poll's market data, in any number of
    batches)."""
    book_apply_batch(px, qty, meta, md, n)
    for j in range(n):
        i = np.int64(md[j].instrument_id)
        if i < touched.shape[0]:
            touched[i] = 1


@njit(cache=True)
def gate_mark(limits, rstate, px, meta, touched):
    """Mark to market every flagged instrument whose book is valid, in instrument-id order
    (unrealized PnL, peak, loss latch), and clear the flags."""
    for inst in range(1, touched.shape[0]):
        if touched[inst]:
            touched[inst] = 0
            if is_valid(px, meta, inst):
                mark_to_market(limits, rstate, inst, mid_x2(px, meta, inst))


def pnl_view(limits, rstate, n_strat: int, n_inst: int):
    """Cold: (positions int64[n_strat + 1, n_inst + 1] in lots, pnl float64[n_strat + 1, 3]:
    realized, unrealized, fees in quote currency) by strategy id x instrument id, from the
    risk state; what the live gate publishes for status and the final report, and what a
    backtest's risk state is compared with."""
    lf = limits[0]
    s_n, i_n = n_strat + 1, n_inst + 1
    pos, spf, marks = rstate[R_POS], rstate[R_SPF], rstate[R_MARKS]
    out_pos = np.array(pos[:s_n, :i_n], dtype=np.int64)
    pnl = np.zeros((s_n, 3))
    values = lf[LF_INST_VALUE:LF_INST_VALUE + i_n]   # by instrument id
    for s in range(1, s_n):
        unreal = 0.0
        for i in range(1, i_n):
            if marks[i] > 0 and pos[s, i]:
                unreal += (pos[s, i] * marks[i] * 0.5 - spf[s, i]["cost"]) * values[i]
        pnl[s, 0] = (spf[s, 1:i_n]["realized"] * values[1:i_n]).sum()
        pnl[s, 1] = unreal
        pnl[s, 2] = spf[s, 1:i_n]["fees"].sum()
    return out_pos, pnl


# =============================================================================================
# Single checks
# =============================================================================================
@njit(cache=True)
def check_qty(lf, qty_lots):
    return REJECT_MAX_ORDER_QTY if qty_lots > lf[LF_MAX_ORDER_QTY] else 0


@njit(cache=True)
def check_price_band(lf, px_ticks, ref_mid_x2):
    # |px - mid| <= band_bps / 1e4 * mid, kept in integers-times-float exactly (x2 and x1e4)
    if abs(2 * px_ticks - ref_mid_x2) * 1e4 > lf[LF_PRICE_BAND_BPS] * ref_mid_x2:
        return REJECT_PRICE_BAND
    return 0


@njit(cache=True)
def check_notional(li, inst, px_x2, qty_lots):
    """px_x2: twice the price the order is valued at (2 * px, or the reference mid_x2)."""
    mant = li[inst, LI_VALUE_MANT]
    limit_x2 = 2 * li[inst, LI_NOTIONAL_UNITS]
    if float(px_x2) * float(qty_lots) * float(mant) > _INT_SAFE:
        return REJECT_MAX_NOTIONAL   # far beyond any limit (and beyond int64 arithmetic)
    if px_x2 * qty_lots * mant > limit_x2:
        return REJECT_MAX_NOTIONAL
    return 0


@njit(cache=True)
def check_position(limit, pos, open_same_side, side, qty_lots):
    """Worst case if every open order on this side and this one fill, against ``limit``."""
    if side == SIDE_BUY:
        worst = pos + open_same_side + qty_lots
    else:
        worst = -(pos - open_same_side - qty_lots)
    return REJECT_MAX_POSITION if worst > limit else 0


@njit(cache=True)
def shard_position_limit(lf, s):
    """Position limit (lots) of strategy id s on its own (its shard's share)."""
    return lf[np.int64(LF_INST_VALUE + lf[LF_N_INST] + 1) + s]


@njit(cache=True)
def group_of(lf, s):
    """The strategy id of shard 0 of s's strategy (s itself when unsharded)."""
    return np.int64(lf[np.int64(LF_INST_VALUE + lf[LF_N_INST] + lf[LF_N_STRAT] + 2) + s])


@njit(cache=True)
def check_group_position(lf, pos, open_buy, open_sell, s, inst, side, qty_lots):
    """The strategy's shards together: summed positions and open orders on this side."""
    g = group_of(lf, s)
    p = 0
    o = 0
    for t in range(1, np.int64(lf[LF_N_STRAT]) + 1):
        if group_of(lf, t) == g:
            p += pos[t, inst]
            o += open_buy[t, inst] if side == SIDE_BUY else open_sell[t, inst]
    return check_position(lf[LF_MAX_POSITION], p, o, side, qty_lots)


@njit(cache=True)
def group_open_orders(lf, n_open, s):
    g = group_of(lf, s)
    n = 0
    for t in range(1, np.int64(lf[LF_N_STRAT]) + 1):
        if group_of(lf, t) == g:
            n += n_open[t]
    return n


@njit(cache=True)
def check_reduce_only(pos, open_same_side, side, qty_lots):
    """Passes only if the order (with the open ones on its side) shrinks |pos| without flipping."""
    if side == SIDE_BUY:
        ok = pos < 0 and open_same_side + qty_lots <= -pos
    else:
        ok = pos > 0 and open_same_side + qty_lots <= pos
    return 0 if ok else REJECT_REDUCE_ONLY


@njit(cache=True)
def check_open_orders(lf, g, oo, n_open_strategy):
    if n_open_strategy + 1 > lf[LF_MAX_OPEN_ORDERS] or g[G_OPEN_TOTAL] + 1 > oo.shape[0]:
        return REJECT_MAX_OPEN_ORDERS
    return 0


@njit(cache=True)
def check_rate(lf, times, head, s, limit, now_ns, code):
    """Sliding window: reject if ``limit`` requests of strategy ``s`` already fall within the
    last window. ``times[s]`` is a ring of request times, ``head`` how many were ever pushed."""
    n_lim = np.int64(limit)
    cap = times.shape[1]
    if n_lim <= cap and head >= n_lim:
        if now_ns - times[s, (head - n_lim) % cap] < lf[LF_WINDOW_NS]:
            return code
    return 0


@njit(cache=True)
def check_order_to_trade(lf, orders, fills):
    ratio = lf[LF_MAX_OTR]
    if ratio <= 0.0 or orders + 1 <= lf[LF_OTR_MIN_ORDERS]:
        return 0
    return REJECT_ORDER_TO_TRADE if orders + 1 > ratio * max(fills, 1) else 0


@njit(cache=True)
def check_self_trade(lf, od, ilist, icnt, inst, side, order_type, px_ticks, own_coid):
    """Would the order cross a resting order of ours (any strategy) on this instrument?"""
    if lf[LF_STP] == 0.0:
        return 0
    for k in range(icnt[inst]):
        row = ilist[inst, k]
        if od[row, OO_SIDE] == side or od[row, OO_COID] == own_coid:
            continue
        if order_type == ORD_MARKET:
            return REJECT_SELF_TRADE
        rest = od[row, OO_PX]
        if (side == SIDE_BUY and px_ticks >= rest) or (side == SIDE_SELL and px_ticks <= rest):
            return REJECT_SELF_TRADE
    return 0


@njit(cache=True)
def check_loss(lf, gf):
    eq = equity_of(gf)
    if gf[GF_DAY_START] - eq > lf[LF_DAILY_LOSS]:
        return REJECT_DAILY_LOSS
    if gf[GF_PEAK] - eq > lf[LF_MAX_DRAWDOWN]:
        return REJECT_DRAWDOWN
    return 0


@njit(cache=True)
def mode_of(lf, g, gf):
    if g[G_KILL] != 0 or g[G_MODE] == RISK_HALTED or check_loss(lf, gf) != 0:
        return RISK_HALTED
    eq = equity_of(gf)
    frac = lf[LF_REDUCING_FRACTION]
    if (g[G_MODE] == RISK_REDUCING or gf[GF_DAY_START] - eq >= frac * lf[LF_DAILY_LOSS]
            or gf[GF_PEAK] - eq >= frac * lf[LF_MAX_DRAWDOWN]):
        return RISK_REDUCING
    return RISK_ACTIVE


@njit(cache=True)
def risk_mode(lf, rstate):
    """RISK_ACTIVE / RISK_REDUCING / RISK_HALTED from the kill flag, the operator mode and how
    close loss and drawdown are to their limits (REDUCING from ``reducing_at_fraction``)."""
    return mode_of(lf, rstate[R_G], rstate[R_GF])


# =============================================================================================
# Combined check
# =============================================================================================
@njit(cache=True)
def _exposure(lf, li, pos, open_buy, open_sell, s, inst, side, order_type, px, qty, ref_mid_x2,
              extra_qty, reducing):
    """Checks shared by NEW and REPLACE; ``extra_qty`` is what the order adds to its side."""
    code = check_qty(lf, qty)
    if code:
        return code
    if ref_mid_x2 <= 0:
        return REJECT_NO_REFERENCE
    if order_type != ORD_MARKET:
        code = check_price_band(lf, px, ref_mid_x2)
        if code:
            return code
    code = check_notional(li, inst, ref_mid_x2 if order_type == ORD_MARKET else 2 * px, qty)
    if code:
        return code
    open_side = open_buy[s, inst] if side == SIDE_BUY else open_sell[s, inst]
    code = check_position(shard_position_limit(lf, s), pos[s, inst], open_side, side, extra_qty)
    if code == 0 and lf[LF_GROUPED] != 0.0:
        code = check_group_position(lf, pos, open_buy, open_sell, s, inst, side, extra_qty)
    if code:
        return code
    if reducing:
        return check_reduce_only(pos[s, inst], open_side, side, extra_qty)
    return 0


@njit(cache=True)
def _check(lf, li, g, gf, pos, open_buy, open_sell, n_open, sc, order_ts, cancel_ts, od, oh,
           ilist, icnt, rec, ref_mid_x2, now_ns):
    # One exit on purpose: with a return per check numba's reference-count pruning gave up and
    # every array argument cost an atomic incref/decref pair per call (56 ns each on the dev VM):
    # 3.5 us per check against 0.9 us now. code < 0 means "no verdict yet".
    code = -1
    kind = rec.kind
    s = np.int64(rec.strategy_id)
    inst = np.int64(rec.instrument_id)
    system = (rec.flags & OFLAG_RISK_SYSTEM) != 0
    side = rec.side
    otype = rec.order_type
    j = -1
    if kind == INTENT_CANCEL_ALL:
        code = 0
    elif s <= 0 or s > lf[LF_N_STRAT] or inst <= 0 or inst > lf[LF_N_INST]:
        code = REJECT_INVALID
    elif kind == INTENT_CANCEL:
        j = row_of(oh, rec.client_order_id)
        if j < 0 or od[j, OO_STRAT] != s:
            code = REJECT_UNKNOWN_ORDER
        elif system:
            code = 0
        else:
            code = check_rate(lf, cancel_ts, sc[s, SC_CANCEL_HEAD], s, lf[LF_MAX_CANCELS_PER_S],
                              now_ns, REJECT_CANCEL_RATE)
    elif kind != INTENT_NEW and kind != INTENT_REPLACE:
        code = REJECT_INVALID
    elif kind == INTENT_NEW and row_of(oh, rec.client_order_id) >= 0:
        code = REJECT_INVALID   # a new order reusing the id of one still open (or id 0 below)
    elif rec.qty_lots <= 0 or (side != SIDE_BUY and side != SIDE_SELL) or \
            (kind == INTENT_NEW and rec.client_order_id == 0):
        code = REJECT_INVALID
    elif otype < ORD_LIMIT or otype > ORD_POST_ONLY or (otype != ORD_MARKET and rec.px_ticks <= 0):
        code = REJECT_INVALID
    if code < 0 and kind == INTENT_REPLACE:
        j = row_of(oh, rec.client_order_id)
        if j < 0 or od[j, OO_STRAT] != s or od[j, OO_STATE] == OOS_REPLACING:
            code = REJECT_UNKNOWN_ORDER
        else:
            side = od[j, OO_SIDE]
    if code < 0 and not system:
        if g[G_KILL] != 0:
            code = REJECT_KILL_SWITCH
        elif g[G_MODE] == RISK_HALTED:   # a latched loss halt keeps naming its reason
            code = g[G_HALT_REASON] if g[G_HALT_REASON] != 0 else REJECT_HALTED
        else:
            c = check_loss(lf, gf)
            if c:
                code = c
    if code < 0:
        reducing = system or mode_of(lf, g, gf) == RISK_REDUCING
        extra = rec.qty_lots if kind == INTENT_NEW else max(rec.qty_lots - od[j, OO_LEAVES], 0)
        c = _exposure(lf, li, pos, open_buy, open_sell, s, inst, side, otype, rec.px_ticks,
                      rec.qty_lots, ref_mid_x2, extra, reducing)
        if c:
            code = c
    if code < 0:
        if kind == INTENT_NEW:
            c = check_open_orders(lf, g, od, n_open[s])
            if c == 0 and lf[LF_GROUPED] != 0.0:
                c = check_open_orders(lf, g, od, group_open_orders(lf, n_open, s))
            if c == 0 and not system:
                c = check_rate(lf, order_ts, sc[s, SC_ORDER_HEAD], s, lf[LF_MAX_ORDERS_PER_S],
                               now_ns, REJECT_ORDER_RATE)
                if c == 0:
                    c = check_order_to_trade(lf, sc[s, SC_ORDERS], sc[s, SC_FILLS])
        elif not system:
            c = check_rate(lf, cancel_ts, sc[s, SC_CANCEL_HEAD], s, lf[LF_MAX_CANCELS_PER_S],
                           now_ns, REJECT_CANCEL_RATE)
        else:
            c = 0
        if c:
            code = c
    if code < 0:
        code = check_self_trade(lf, od, ilist, icnt, inst, side, otype, rec.px_ticks,
                                rec.client_order_id)
    return code


@njit(cache=True)
def check_order(limits, rstate, rec, ref_mid_x2, now_ns):
    """Every pre-trade check for one intent (ORDER_DTYPE); REJECT_* of the first that fails.

    ``ref_mid_x2``: the reference (bid + ask, ticks) of rec.instrument_id, <= 0 if unknown.
    Unpacks the state once and hands plain arrays to the checks (see risk_state)."""
    return _check(limits[0], limits[1], rstate[R_G], rstate[R_GF], rstate[R_POS],
                  rstate[R_OPEN_BUY], rstate[R_OPEN_SELL], rstate[R_N_OPEN], rstate[R_SC],
                  rstate[R_ORDER_TS], rstate[R_CANCEL_TS], rstate[R_OO], rstate[R_OO_HASH],
                  rstate[R_OO_LIST], rstate[R_OO_COUNT], rec, ref_mid_x2, now_ns)


# =============================================================================================
# Cold builders
# =============================================================================================
def build_limits(risk, instruments, max_strategies: int = 64, otr_min_orders: int = 100,
                 window_ns: int = 1_000_000_000, groups: dict | None = None,
                 shard_limits: dict | None = None):
    """Cold: limits from a ``RiskConfig`` and the instruments (INSTRUMENT_DTYPE array, an
    InstrumentTable or a list of Instrument). ``otr_min_orders``: the order-to-trade ratio is
    enforced only after this many orders (a new strategy has no fills yet).

    Shards: ``groups`` maps a strategy id to the id of its strategy's shard 0 (missing: itself),
    ``shard_limits`` a strategy id to its own position limit in lots (missing: the strategy's,
    ``max_position_lots``)."""
    if isinstance(instruments, np.ndarray) and instruments.dtype == INSTRUMENT_DTYPE:
        arr = instruments
    else:
        table = instruments if isinstance(instruments, InstrumentTable) else \
            InstrumentTable(list(instruments))
        arr = table.to_array()
    n = int(arr["instrument_id"].max()) if len(arr) else 0
    lf = np.zeros(LF_INST_VALUE + n + 1 + 2 * (max_strategies + 1), dtype=np.float64)
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
    shard_base = LF_INST_VALUE + n + 1
    group_base = shard_base + max_strategies + 1
    for s in range(max_strategies + 1):
        lf[shard_base + s] = float((shard_limits or {}).get(s, risk.max_position_lots))
        lf[group_base + s] = float((groups or {}).get(s, s))
    lf[LF_GROUPED] = 1.0 if any(g != s for s, g in (groups or {}).items()) else 0.0
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
    """Cold: zeroed risk state sized for ``limits`` (strategies, instruments, rate windows).

    Open-order capacity: max_open_orders for each of up to 16 strategies unless given."""
    lf, li = limits
    n = int(lf[LF_N_INST]) + 1
    s = int(lf[LF_N_STRAT]) + 1
    cap = max(open_order_capacity or int(lf[LF_MAX_OPEN_ORDERS]) * min(s - 1, 16), 16)
    hcap = 1
    while hcap < 2 * cap:
        hcap <<= 1
    ofree = np.zeros(cap + 1, np.int64)
    ofree[:cap] = np.arange(cap)[::-1]   # pops row 0 first
    ofree[cap] = cap
    return (np.zeros(G_WORDS, np.int64), np.zeros(GF_WORDS, np.float64),
            np.zeros((s, n), np.int64), np.zeros((s, n), np.int64), np.zeros((s, n), np.int64),
            np.zeros(s, np.int64), np.zeros((s, SC_WORDS), np.int64),
            np.zeros((s, max(1, int(lf[LF_MAX_ORDERS_PER_S]))), np.int64),
            np.zeros((s, max(1, int(lf[LF_MAX_CANCELS_PER_S]))), np.int64),
            np.zeros((cap, OO_WORDS), np.int64), np.zeros((s, n), POSITION_DTYPE),
            np.zeros((n, AG_WORDS), np.float64), np.zeros(n, np.int64),
            np.zeros((1, hcap, 2), np.int64), ofree, np.zeros((n, cap), np.int64),
            np.zeros(n, np.int64))
