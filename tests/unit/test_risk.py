"""Pre-trade risk checks (market/risk.py): every limit passes at its value and rejects one unit
beyond; state updates (open orders, positions, PnL) follow the execution reports."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from market import risk
from pipeline.config import RiskConfig, load_config
from shm.instruments import InstrumentTable
from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_FILL, EXEC_PARTIAL,
    EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE,
    OFLAG_RISK_SYSTEM, ORD_LIMIT, ORD_MARKET, ORDER_DTYPE, REJECT_CANCEL_RATE,
    REJECT_DAILY_LOSS, REJECT_DRAWDOWN, REJECT_HALTED, REJECT_INVALID, REJECT_KILL_SWITCH,
    REJECT_MAX_NOTIONAL, REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY, REJECT_MAX_POSITION,
    REJECT_NO_REFERENCE, REJECT_ORDER_RATE, REJECT_ORDER_TO_TRADE, REJECT_PRICE_BAND,
    REJECT_REDUCE_ONLY, REJECT_SELF_TRADE, REJECT_UNKNOWN_ORDER, RISK_ACTIVE, RISK_HALTED,
    RISK_REDUCING, SIDE_BUY, SIDE_SELL,
)
from tests.unit.scenario_records import instrument

SEC = 1_000_000_000
MID_X2 = 20_000          # reference mid 10000 ticks
UNIT = 1                 # instrument 1: tick 1, lot 1 -> one tick of one lot is worth 1.0
BTC = 2                  # instrument 2: tick 0.01, lot 0.0001 (config.toml's BTC-USD)

BASE = RiskConfig(max_order_qty_lots=100, max_notional=1e9, max_position_lots=1_000,
                  price_band_bps=200.0, max_open_orders=1_000, max_orders_per_s=1_000,
                  max_cancels_per_s=1_000, max_order_to_trade=0.0, daily_loss_limit=1_000.0,
                  max_drawdown=2_000.0, reducing_at_fraction=0.8, self_trade_prevention=True)


def make(**overrides):
    cfg = dataclasses.replace(BASE, **overrides)
    insts = [instrument(UNIT, 1, "UNIT", tick="1", lot="1", group="U"),
             instrument(BTC, 1, "BTC-USD")]
    limits = risk.build_limits(cfg, insts, max_strategies=8, otr_min_orders=10)
    return limits, risk.make_risk_state(limits)


class Coid:
    n = 0


def order(side=SIDE_BUY, px=10_000, qty=1, inst=UNIT, strat=1, kind=INTENT_NEW, otype=ORD_LIMIT,
          coid=None, flags=0):
    rec = np.zeros(1, dtype=ORDER_DTYPE)
    Coid.n += 1
    r = rec[0]
    r["kind"], r["side"], r["order_type"], r["flags"] = kind, side, otype, flags
    r["instrument_id"], r["strategy_id"] = inst, strat
    r["client_order_id"] = coid if coid is not None else (strat << 48) | Coid.n
    r["px_ticks"], r["qty_lots"] = px, qty
    return rec


def check(limits, rstate, rec, now=0, ref=MID_X2):
    return risk.check_order(limits, rstate, rec[0], ref, now)


def accept(limits, rstate, rec, now=0, ref=MID_X2):
    code = check(limits, rstate, rec, now, ref)
    if code == 0:
        risk.on_accept(limits, rstate, rec[0], now)
    return code


def exec_for(rec, kind, qty=0, px=None, leaves=0, fee_e9=0):
    e = np.zeros(1, dtype=EXEC_DTYPE)
    for f in ("side", "instrument_id", "client_order_id", "strategy_id"):
        e[0][f] = rec[0][f]
    e[0]["kind"] = kind
    e[0]["px_ticks"] = rec[0]["px_ticks"] if px is None else px
    e[0]["qty_lots"] = qty or rec[0]["qty_lots"]
    e[0]["leaves_lots"] = leaves
    e[0]["fee_e9"] = fee_e9
    return e


def feed(limits, rstate, e):
    risk.on_exec(limits, rstate, e[0], 0)


def filled(limits, rstate, side, qty, px, inst=UNIT, strat=1, fee_e9=0):
    """An order that is accepted and filled completely (positions and PnL move)."""
    rec = order(side, px, qty, inst, strat)
    risk.on_accept(limits, rstate, rec[0], 0)
    feed(limits, rstate, exec_for(rec, EXEC_FILL, qty, px, fee_e9=fee_e9))


def test_max_order_qty_passes_at_the_limit_and_rejects_one_lot_more():
    limits, rs = make()
    assert check(limits, rs, order(qty=100)) == 0
    assert check(limits, rs, order(qty=101)) == REJECT_MAX_ORDER_QTY


def test_max_notional_is_exact_in_decimal_ticks_and_lots():
    # 50000.00 USD x 5.0000 BTC = 250000 USD exactly; the limit is compared in integers
    limits, rs = make(max_notional=250_000.0, max_order_qty_lots=1_000_000,
                      max_position_lots=10_000_000, price_band_bps=10_000.0)
    ref = 2 * 5_000_000
    assert check(limits, rs, order(px=5_000_000, qty=50_000, inst=BTC), ref=ref) == 0
    assert check(limits, rs, order(px=5_000_000, qty=50_001, inst=BTC), ref=ref) == \
        REJECT_MAX_NOTIONAL
    assert check(limits, rs, order(px=5_000_001, qty=50_000, inst=BTC), ref=ref) == \
        REJECT_MAX_NOTIONAL
    # a market order is valued at the reference mid
    assert check(limits, rs, order(px=0, qty=50_000, inst=BTC, otype=ORD_MARKET), ref=ref) == 0
    assert check(limits, rs, order(px=0, qty=50_000, inst=BTC, otype=ORD_MARKET),
                 ref=ref + 2) == REJECT_MAX_NOTIONAL


def test_max_position_counts_the_position_and_open_orders_on_the_same_side():
    limits, rs = make(max_position_lots=150)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    assert accept(limits, rs, order(qty=30)) == 0          # open buy 30: worst case 130
    assert check(limits, rs, order(qty=20)) == 0           # 150 passes
    assert check(limits, rs, order(qty=21)) == REJECT_MAX_POSITION
    # the sell side reduces first, so a sell may go to -150 from +100
    assert check(limits, rs, order(SIDE_SELL, qty=100, px=10_001)) == 0
    filled(limits, rs, SIDE_SELL, 100, 10_000)
    filled(limits, rs, SIDE_SELL, 100, 10_000)
    assert check(limits, rs, order(SIDE_SELL, qty=50, px=10_001)) == 0
    assert check(limits, rs, order(SIDE_SELL, qty=51, px=10_001)) == REJECT_MAX_POSITION


def test_position_limits_are_per_strategy():
    limits, rs = make(max_position_lots=100)
    filled(limits, rs, SIDE_BUY, 100, 10_000, strat=1)
    assert check(limits, rs, order(qty=1, strat=1)) == REJECT_MAX_POSITION
    assert check(limits, rs, order(qty=100, strat=2)) == 0


@pytest.mark.parametrize("px_ok,px_bad", [(10_200, 10_201), (9_800, 9_799)])
def test_price_band_passes_at_the_band_edge_and_rejects_one_tick_outside(px_ok, px_bad):
    limits, rs = make(price_band_bps=200.0)     # 2 % of 10000 = 200 ticks
    side = SIDE_BUY if px_ok > 10_000 else SIDE_SELL
    assert check(limits, rs, order(side, px=px_ok)) == 0
    assert check(limits, rs, order(side, px=px_bad)) == REJECT_PRICE_BAND


def test_an_order_without_a_reference_price_is_rejected():
    limits, rs = make()
    assert check(limits, rs, order(), ref=0) == REJECT_NO_REFERENCE


def test_max_open_orders_counts_accepted_orders_until_they_are_done():
    limits, rs = make(max_open_orders=3)
    recs = [order(px=9_990 + i) for i in range(3)]
    for rec in recs:
        assert accept(limits, rs, rec) == 0
    assert check(limits, rs, order(px=9_980)) == REJECT_MAX_OPEN_ORDERS
    feed(limits, rs, exec_for(recs[0], EXEC_CANCEL_ACK))
    assert check(limits, rs, order(px=9_980)) == 0


def test_order_rate_allows_the_limit_per_sliding_second_and_rejects_one_more():
    limits, rs = make(max_orders_per_s=5)
    for i in range(5):
        assert accept(limits, rs, order(px=9_990), now=i * 100) == 0
    assert check(limits, rs, order(px=9_990), now=SEC - 1) == REJECT_ORDER_RATE
    # one second after the first order, its slot in the window is free again
    assert accept(limits, rs, order(px=9_990), now=SEC) == 0
    assert check(limits, rs, order(px=9_990), now=SEC + 99) == REJECT_ORDER_RATE
    assert check(limits, rs, order(px=9_990), now=SEC + 100) == 0


def test_cancel_rate_counts_cancels_and_replaces_and_rejects_one_more():
    limits, rs = make(max_cancels_per_s=3)
    resting = [order(px=9_990 - i) for i in range(5)]
    for rec in resting:
        accept(limits, rs, rec)
        feed(limits, rs, exec_for(rec, EXEC_ACK, leaves=1))
    for rec in resting[:2]:
        c = order(kind=INTENT_CANCEL, coid=int(rec[0]["client_order_id"]))
        assert accept(limits, rs, c, now=10) == 0
    rep = order(kind=INTENT_REPLACE, coid=int(resting[2][0]["client_order_id"]), px=9_980)
    assert accept(limits, rs, rep, now=20) == 0
    c = order(kind=INTENT_CANCEL, coid=int(resting[3][0]["client_order_id"]))
    assert check(limits, rs, c, now=30) == REJECT_CANCEL_RATE
    assert check(limits, rs, c, now=10 + SEC) == 0


def test_cancel_of_an_unknown_or_foreign_order_is_rejected():
    limits, rs = make()
    mine = order(strat=1)
    accept(limits, rs, mine)
    assert check(limits, rs, order(kind=INTENT_CANCEL, coid=12345)) == REJECT_UNKNOWN_ORDER
    theirs = order(kind=INTENT_CANCEL, strat=2, coid=int(mine[0]["client_order_id"]))
    assert check(limits, rs, theirs) == REJECT_UNKNOWN_ORDER
    assert check(limits, rs, order(kind=INTENT_CANCEL_ALL)) == 0


def test_order_to_trade_ratio_passes_at_the_ratio_and_rejects_above_it():
    limits, rs = make(max_order_to_trade=20.0)   # enforced after otr_min_orders = 10
    filled(limits, rs, SIDE_BUY, 1, 10_000)      # 1 order, 1 fill
    for i in range(19):                          # orders 2..20
        rec = order(px=9_900)
        assert accept(limits, rs, rec) == 0
        feed(limits, rs, exec_for(rec, EXEC_CANCEL_ACK))
    assert check(limits, rs, order(px=9_900)) == REJECT_ORDER_TO_TRADE   # 21 > 20 * 1
    filled(limits, rs, SIDE_SELL, 1, 10_000)     # 21 orders, 2 fills: up to 40 allowed
    assert check(limits, rs, order(px=9_900)) == 0


def test_daily_loss_limit_passes_at_the_limit_and_rejects_beyond():
    limits, rs = make(daily_loss_limit=1_000.0, max_drawdown=1e9)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_990)      # -10 ticks x 100 lots = -1000
    assert risk.equity(limits[0], rs) == -1_000.0
    assert check(limits, rs, order(SIDE_SELL, px=9_990)) == 0
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_990 - 1)  # -1005
    assert check(limits, rs, order(SIDE_SELL, px=9_990)) == REJECT_DAILY_LOSS
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED


def test_fees_count_toward_the_daily_loss():
    limits, rs = make(daily_loss_limit=1_000.0, max_drawdown=1e9)
    filled(limits, rs, SIDE_BUY, 1, 10_000, fee_e9=1_000 * 10**9)
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_000)
    assert check(limits, rs, order(SIDE_SELL)) == 0
    filled(limits, rs, SIDE_SELL, 1, 10_000, fee_e9=1)
    assert check(limits, rs, order(SIDE_SELL)) == REJECT_DAILY_LOSS


def test_drawdown_from_peak_equity_passes_at_the_limit_and_rejects_beyond():
    limits, rs = make(daily_loss_limit=1e9, max_drawdown=500.0)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_010)     # +1000: new peak
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_005)     # +500: drawdown 500
    assert check(limits, rs, order(SIDE_SELL, px=10_005), ref=2 * 10_005) == 0
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_005 - 1)
    assert check(limits, rs, order(SIDE_SELL, px=10_005), ref=2 * 10_005) == REJECT_DRAWDOWN


def test_a_daily_loss_halt_stays_latched_when_the_mark_recovers():
    limits, rs = make(daily_loss_limit=1_000.0, max_drawdown=1e9)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_980)      # -2000: beyond the limit
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_000)     # back to flat PnL
    assert risk.equity(limits[0], rs) == 0.0
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED
    assert check(limits, rs, order(SIDE_BUY)) == REJECT_DAILY_LOSS
    assert rs[risk.R_G][risk.G_HALTS] == 1


def test_a_drawdown_halt_latched_by_a_fill_stays_until_the_operator_resumes():
    limits, rs = make(daily_loss_limit=1e9, max_drawdown=500.0)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_010)     # peak +1000
    filled(limits, rs, SIDE_SELL, 100, 10_004)            # realizes +400: drawdown 600
    assert check(limits, rs, order(SIDE_BUY, px=10_004), ref=2 * 10_004) == REJECT_DRAWDOWN
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_020)     # flat: the mark changes nothing
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED
    risk.set_mode(rs, RISK_ACTIVE)                        # the operator resumes
    assert rs[risk.R_G][risk.G_HALT_REASON] == 0
    # the breach is still live (peak 1000, equity 400): the next mark latches it again
    risk.mark_to_market(limits, rs, UNIT, 2 * 10_020)
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED
    assert rs[risk.R_G][risk.G_HALTS] == 2


def test_the_trading_day_roll_lifts_a_loss_latch_but_not_an_operator_halt():
    limits, rs = make(daily_loss_limit=1_000.0, max_drawdown=1e9)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_980)
    assert risk.roll_day(limits, rs) == REJECT_DAILY_LOSS
    assert risk.risk_mode(limits[0], rs) == RISK_ACTIVE   # the new day counts from -2000
    assert check(limits, rs, order(SIDE_SELL, px=9_980), ref=2 * 9_980) == 0
    risk.set_mode(rs, RISK_HALTED)                        # an operator halt
    assert risk.roll_day(limits, rs) == 0
    assert risk.risk_mode(limits[0], rs) == RISK_HALTED


def test_a_new_order_reusing_an_open_orders_id_is_invalid_and_the_open_one_kept():
    limits, rs = make()
    first = order(qty=5)
    assert accept(limits, rs, first) == 0
    again = order(qty=7, coid=int(first[0]["client_order_id"]))
    assert check(limits, rs, again) == REJECT_INVALID
    assert rs[risk.R_OPEN_BUY][1, UNIT] == 5
    assert check(limits, rs, order(coid=0)) == REJECT_INVALID


def test_kill_switch_rejects_new_orders_but_lets_cancels_through():
    limits, rs = make()
    rec = order()
    accept(limits, rs, rec)
    risk.set_kill(rs, True)
    assert check(limits, rs, order()) == REJECT_KILL_SWITCH
    assert check(limits, rs, order(kind=INTENT_CANCEL, coid=int(rec[0]["client_order_id"]))) == 0
    risk.set_kill(rs, False)
    assert check(limits, rs, order()) == 0
    risk.set_mode(rs, RISK_HALTED)
    assert check(limits, rs, order()) == REJECT_HALTED


def test_reducing_mode_accepts_only_orders_that_shrink_the_position():
    limits, rs = make()
    filled(limits, rs, SIDE_BUY, 10, 10_000)
    risk.set_mode(rs, RISK_REDUCING)
    assert check(limits, rs, order(SIDE_BUY, qty=1)) == REJECT_REDUCE_ONLY
    assert check(limits, rs, order(SIDE_SELL, qty=10, px=10_001)) == 0
    assert check(limits, rs, order(SIDE_SELL, qty=11, px=10_001)) == REJECT_REDUCE_ONLY


def test_loss_near_the_limit_switches_to_reducing():
    limits, rs = make(daily_loss_limit=1_000.0, reducing_at_fraction=0.8, max_drawdown=1e9)
    filled(limits, rs, SIDE_BUY, 100, 10_000)
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_992 + 1)   # -750
    assert risk.risk_mode(limits[0], rs) == RISK_ACTIVE
    risk.mark_to_market(limits, rs, UNIT, 2 * 9_992)       # -800 = 0.8 x limit
    assert risk.risk_mode(limits[0], rs) == RISK_REDUCING
    assert check(limits, rs, order(SIDE_BUY, px=9_992), ref=2 * 9_992) == REJECT_REDUCE_ONLY


def test_risk_system_orders_bypass_the_kill_switch_but_must_reduce():
    limits, rs = make()
    filled(limits, rs, SIDE_BUY, 10, 10_000)
    risk.set_kill(rs, True)
    assert check(limits, rs, order(SIDE_SELL, qty=10, flags=OFLAG_RISK_SYSTEM)) == 0
    assert check(limits, rs, order(SIDE_BUY, qty=1, flags=OFLAG_RISK_SYSTEM)) == \
        REJECT_REDUCE_ONLY


def test_self_trade_prevention_rejects_an_order_that_would_cross_our_own_resting_order():
    limits, rs = make()
    ask = order(SIDE_SELL, px=10_005, strat=1)
    accept(limits, rs, ask)
    assert check(limits, rs, order(SIDE_BUY, px=10_004, strat=1)) == 0
    assert check(limits, rs, order(SIDE_BUY, px=10_005, strat=1)) == REJECT_SELF_TRADE
    # across strategies of the instance too (a wash trade either way)
    assert check(limits, rs, order(SIDE_BUY, px=10_005, strat=2)) == REJECT_SELF_TRADE
    assert check(limits, rs, order(SIDE_BUY, px=0, otype=ORD_MARKET)) == REJECT_SELF_TRADE
    assert check(limits, rs, order(SIDE_BUY, px=10_005, inst=BTC), ref=2 * 10_005) == 0
    feed(limits, rs, exec_for(ask, EXEC_CANCEL_ACK))
    assert check(limits, rs, order(SIDE_BUY, px=10_005, strat=1)) == 0
    limits_off, rs_off = make(self_trade_prevention=False)
    accept(limits_off, rs_off, order(SIDE_SELL, px=10_005))
    assert check(limits_off, rs_off, order(SIDE_BUY, px=10_005)) == 0


def test_malformed_orders_are_invalid():
    limits, rs = make()
    assert check(limits, rs, order(qty=0)) == REJECT_INVALID
    assert check(limits, rs, order(px=0)) == REJECT_INVALID
    assert check(limits, rs, order(inst=99)) == REJECT_INVALID
    assert check(limits, rs, order(strat=0)) == REJECT_INVALID
    assert check(limits, rs, order(side=0)) == REJECT_INVALID


def test_replace_is_checked_on_its_new_size_and_exposure_follows_the_venue():
    limits, rs = make(max_position_lots=50)
    rec = order(qty=20)
    accept(limits, rs, rec)
    feed(limits, rs, exec_for(rec, EXEC_ACK, leaves=20))
    coid = int(rec[0]["client_order_id"])
    assert check(limits, rs, order(kind=INTENT_REPLACE, coid=coid, qty=51)) == REJECT_MAX_POSITION
    rep = order(kind=INTENT_REPLACE, coid=coid, qty=50)
    assert accept(limits, rs, rep) == 0
    assert rs[3][1, UNIT] == 50                 # worst case while the replace is in flight
    feed(limits, rs, exec_for(rep, EXEC_CANCEL_REJECT))
    assert rs[3][1, UNIT] == 20                 # refused: back to the resting size
    rep = order(kind=INTENT_REPLACE, coid=coid, qty=5, px=9_999)
    accept(limits, rs, rep)
    feed(limits, rs, exec_for(rep, EXEC_REPLACE_ACK, leaves=5))
    assert rs[3][1, UNIT] == 5
    feed(limits, rs, exec_for(rec, EXEC_PARTIAL, qty=2, leaves=3))
    assert rs[3][1, UNIT] == 3 and rs[2][1, UNIT] == 2
    feed(limits, rs, exec_for(rec, EXEC_FILL, qty=3))
    assert rs[3][1, UNIT] == 0 and rs[5][1] == 0 and risk.oo_find(rs, coid) == -1


def test_realized_pnl_uses_average_cost_and_subtracts_fees():
    limits, rs = make()
    filled(limits, rs, SIDE_BUY, 10, 100)
    filled(limits, rs, SIDE_BUY, 10, 110)                 # avg 105
    filled(limits, rs, SIDE_SELL, 25, 120, fee_e9=2 * 10**9)   # close 20 at +15, flip to -5
    gf = rs[1]
    assert gf[risk.GF_REALIZED] == 300.0 and gf[risk.GF_FEES] == 2.0
    assert rs[2][1, UNIT] == -5
    risk.mark_to_market(limits, rs, UNIT, 2 * 118)        # short 5 from 120 at 118: +10
    assert gf[risk.GF_UNREAL] == 10.0
    assert risk.equity(limits[0], rs) == 308.0


def test_venue_reject_frees_the_open_order():
    limits, rs = make(max_open_orders=1)
    rec = order()
    accept(limits, rs, rec)
    assert check(limits, rs, order()) == REJECT_MAX_OPEN_ORDERS
    feed(limits, rs, exec_for(rec, EXEC_REJECT))
    assert check(limits, rs, order()) == 0


def test_open_order_table_stays_consistent_under_random_inserts_and_deletes():
    limits, rs = make()
    rng = np.random.default_rng(7)
    live: dict[int, np.ndarray] = {}
    for step in range(3_000):
        if live and (len(live) >= 200 or rng.random() < 0.45):
            coid = int(rng.choice(list(live)))
            feed(limits, rs, exec_for(live.pop(coid), EXEC_CANCEL_ACK))
        else:
            rec = order(px=9_000 + int(rng.integers(0, 50)), coid=int(rng.integers(1, 1 << 40)))
            if int(rec[0]["client_order_id"]) in live:
                continue
            risk.on_accept(limits, rs, rec[0], 0)
            live[int(rec[0]["client_order_id"])] = rec
    oo = rs[9]
    assert sorted(int(c) for c in oo[:, risk.OO_COID] if c) == sorted(live)
    for coid, rec in live.items():
        row = risk.oo_find(rs, coid)
        assert row >= 0 and oo[row, risk.OO_PX] == rec[0]["px_ticks"]
    listed = rs[risk.R_OO_LIST][UNIT, :rs[risk.R_OO_COUNT][UNIT]]
    assert sorted(int(oo[r, risk.OO_COID]) for r in listed) == sorted(live)
    assert risk.oo_find(rs, 1 << 41) == -1
    assert rs[5][1] == len(live) and rs[0][risk.G_OPEN_TOTAL] == len(live)
    assert rs[3][1, UNIT] == len(live)


def test_limits_build_from_the_default_config():
    cfg = load_config()
    table = InstrumentTable.from_config(cfg)
    lf, li = risk.build_limits(cfg.risk, table.to_array())
    assert lf[risk.LF_MAX_ORDER_QTY] == cfg.risk.max_order_qty_lots
    # BTC-USD: tick 0.01 x lot 0.0001 -> mant 1, exp 6; 250000 USD = 2.5e11 units
    assert li[1, risk.LI_VALUE_MANT] == 1 and li[1, risk.LI_NOTIONAL_UNITS] == 250_000 * 10**6
    assert lf[risk.LF_INST_VALUE + 1] == pytest.approx(1e-6)
    rs = risk.make_risk_state((lf, li))
    assert rs[7].shape[1] == cfg.risk.max_orders_per_s
