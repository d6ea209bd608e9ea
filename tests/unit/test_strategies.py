"""The three strategies behave as their models say, on hand-built market and execution records."""
from __future__ import annotations

import math

import numpy as np
import pytest

from common.schema import ConfigError
from shm.records import (
    EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE, ORD_IOC, ORD_POST_ONLY, SIDE_BUY,
    SIDE_SELL,
)
from strategies import cross_venue_arb as arb
from strategies import market_making as mm
from strategies import pairs_trading as pt
from strategies.host import HostedStrategy
from strategies.registry import make_strategy
from tests.unit.scenario_records import (
    ack, execs, expired, fill, instrument, invalidate, report, snapshot, top, trade,
)

MS = 1_000_000
BTC_A = instrument(1, 1)
BTC_B = instrument(2, 2)
ETH_A = instrument(3, 1, "ETH-USD", lot="0.001", group="ETH")


# ------------------------------------------------------------------------------------------
# Market making
# ------------------------------------------------------------------------------------------
MM_PARAMS = {"gamma": 0.01, "sigma_init_ticks": 10.0, "k_init": 0.5, "order_qty_lots": 10,
             "max_inventory_lots": 30, "requote_threshold_ticks": 2,
             "min_requote_interval_ms": 0.0, "max_skew_ticks": 1000.0}


def mm_host(**over):
    return HostedStrategy(make_strategy("market_making", {**MM_PARAMS, **over}, [BTC_A], 5))


def quotes(intents):
    bid = [r for r in intents if r["side"] == SIDE_BUY]
    ask = [r for r in intents if r["side"] == SIDE_SELL]
    return bid[0] if bid else None, ask[0] if ask else None


def start_quoting(h, bid=99_990, ask=100_010, t=1_000):
    out = h.step(snapshot(1, [(bid, 50)], [(ask, 50)], ts=t), now_ns=t).copy()
    h.step(ex=execs(*[ack(r) for r in out]), now_ns=t + 1)
    return out


def test_market_maker_quotes_the_avellaneda_stoikov_prices():
    h = mm_host()
    out = start_quoting(h)
    assert len(out) == 2 and all(r["order_type"] == ORD_POST_ONLY for r in out)
    # sigma^2 per second = 10^2; tau = 1; q = 0: r = s, delta = g s^2 + (2/g) ln(1 + g/k)
    delta = 0.01 * 100.0 + (2 / 0.01) * math.log(1 + 0.01 / 0.5)
    bid, ask = quotes(out)
    assert bid["px_ticks"] == math.floor(100_000 - delta / 2)
    assert ask["px_ticks"] == math.ceil(100_000 + delta / 2)
    assert bid["qty_lots"] == ask["qty_lots"] == 10
    assert bid["client_order_id"] >> 48 == 5 and bid["strategy_id"] == 5
    assert bid["cause_recv_ts_ns"] == 1_000
    assert h.st.delta == pytest.approx(delta)


@pytest.mark.parametrize("side,direction", [(SIDE_BUY, -1), (SIDE_SELL, +1)])
def test_inventory_skews_both_quotes_against_it(side, direction):
    h = mm_host(sigma_init_ticks=30.0)   # skew per quote size: g s^2 tau = 9 ticks
    out = start_quoting(h)
    r0 = h.st.r
    bid0, ask0 = quotes(out)
    filled = bid0 if side == SIDE_BUY else ask0
    # the filled side is re-quoted new; the other side is replaced: both move the same way
    out = h.step(ex=fill(filled), now_ns=2_000).copy()
    r1 = h.st.r
    assert (r1 - r0) * direction > 0           # long -> lower reservation price
    assert r1 - r0 == pytest.approx(direction * 1.0 * 0.01 * 900.0 * 1.0)   # q g s^2 tau
    bid1, ask1 = quotes(out)
    assert (bid1["px_ticks"] - bid0["px_ticks"]) * direction > 0
    assert (ask1["px_ticks"] - ask0["px_ticks"]) * direction > 0
    kinds = {int(r["side"]): int(r["kind"]) for r in out}
    assert kinds[int(side)] == INTENT_NEW
    assert kinds[int(SIDE_SELL if side == SIDE_BUY else SIDE_BUY)] == INTENT_REPLACE


def _feed_mids(h, swing, n=40):
    """Mid alternates by ``swing`` ticks every 100 ms sample, ending at 100000."""
    t = 1_000
    h.step(snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=t), now_ns=t)
    for i in range(1, n + 1):
        t = i * 100 * MS + 1_000
        off = swing if i % 2 else 0
        h.step(top(1, 99_990 + off, 50, 100_010 + off, 50, t), now_ns=t)
    return h.st


def test_spread_widens_with_estimated_volatility():
    calm = _feed_mids(mm_host(sigma_init_ticks=0.0, min_sigma_samples=10), swing=1)
    wild = _feed_mids(mm_host(sigma_init_ticks=0.0, min_sigma_samples=10), swing=20)
    assert wild.sigma2 > 100 * calm.sigma2
    assert wild.delta > calm.delta + 10
    assert wild.ask - wild.bid > calm.ask - calm.bid


def test_no_quotes_until_volatility_is_estimated():
    h = mm_host(sigma_init_ticks=0.0, min_sigma_samples=5)
    out = h.step(snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=1), now_ns=1)
    assert len(out) == 0
    for i in range(1, 6):
        t = i * 100 * MS + 1
        out = h.step(top(1, 99_990, 50, 100_010, 50, t), now_ns=t)
    assert len(out) == 2


def test_trades_far_from_the_mid_lower_k_and_widen_the_spread():
    near, far = mm_host(k_halflife_trades=1.0), mm_host(k_halflife_trades=1.0)
    for h, dist in ((near, 1), (far, 30)):
        start_quoting(h)
        h.step(trade(1, 100_000 + dist, 5, SIDE_BUY, 3_000), now_ns=3_000)
    assert far.st.k < near.st.k
    assert far.st.delta > near.st.delta


def test_small_moves_below_the_requote_threshold_send_nothing():
    h = mm_host(requote_threshold_ticks=3)
    start_quoting(h)
    assert len(h.step(top(1, 99_991, 50, 100_011, 50, 5_000), now_ns=5_000)) == 0   # r +1 tick
    out = h.step(top(1, 99_993, 50, 100_013, 50, 6_000), now_ns=6_000)               # +3 ticks
    assert len(out) == 2 and all(r["kind"] == INTENT_REPLACE for r in out)


def test_min_requote_interval_limits_replaces():
    h = mm_host(min_requote_interval_ms=10.0)
    start_quoting(h, t=1_000)
    assert len(h.step(top(1, 99_995, 50, 100_015, 50, 2_000), now_ns=2_000)) == 0
    out = h.step(top(1, 99_995, 50, 100_015, 50, 10 * MS + 1_000), now_ns=10 * MS + 1_000)
    assert len(out) == 2


def test_a_jump_through_our_own_ask_moves_the_ask_first_and_the_bid_after_its_ack():
    h = mm_host()
    out = start_quoting(h)
    bid0, ask0 = quotes(out)
    out = h.step(top(1, 100_040, 50, 100_060, 50, 5_000), now_ns=5_000).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["kind"] == INTENT_REPLACE
    assert h.step(top(1, 100_040, 50, 100_060, 50, 6_000), now_ns=6_000).size == 0   # waits
    rep_ack = report(out[0], EXEC_REPLACE_ACK, leaves=int(out[0]["qty_lots"]))
    out2 = h.step(ex=rep_ack, now_ns=7_000)
    assert len(out2) == 1 and out2[0]["side"] == SIDE_BUY and out2[0]["kind"] == INTENT_REPLACE
    assert out2[0]["px_ticks"] > ask0["px_ticks"] and out2[0]["px_ticks"] < out[0]["px_ticks"]


def test_inventory_at_the_limit_pulls_the_quote_that_would_add():
    h = mm_host(max_inventory_lots=10)
    out = start_quoting(h)
    bid, ask = quotes(out)
    out = h.step(ex=fill(bid), now_ns=2_000)
    assert not any(r["side"] == SIDE_BUY and r["kind"] == INTENT_NEW for r in out)


def test_invalid_book_cancels_every_quote_and_sends_none():
    h = mm_host()
    start_quoting(h)
    out = h.step(invalidate(1, 5_000), now_ns=5_000)
    assert len(out) == 2 and all(r["kind"] == INTENT_CANCEL for r in out)


def test_quotes_never_cross_the_touch():
    h = mm_host(gamma=0.5, sigma_init_ticks=0.1, k_init=5.0, min_half_spread_ticks=0.1)
    out = h.step(snapshot(1, [(99_999, 50)], [(100_001, 50)], ts=1), now_ns=1)
    bid, ask = quotes(out)
    assert bid["px_ticks"] < 100_001 and ask["px_ticks"] > 99_999
    assert bid["px_ticks"] < ask["px_ticks"]


def test_warm_up_primes_the_volatility_estimate():
    recs = [snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=1)]
    for i in range(1, 30):
        off = 10 if i % 2 else 0
        recs.append(top(1, 99_990 + off, 50, 100_010 + off, 50, i * 100 * MS + 1))
    s = make_strategy("market_making", {**MM_PARAMS, "sigma_init_ticks": 0.0,
                                        "min_sigma_samples": 20}, [BTC_A], 5)
    s.warm_up(np.concatenate(recs))
    h = HostedStrategy(s)
    out = h.step(snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=10**10), now_ns=10**10)
    assert len(out) == 2
    assert h.st.sigma2 == pytest.approx(1000.0, rel=0.05)   # (10 ticks)^2 / 0.1 s


def test_market_maker_params_are_validated_with_precise_messages():
    with pytest.raises(ConfigError, match=r"strategies.market_making.params.gamma = -1.0"):
        make_strategy("market_making", {"gamma": -1.0}, [BTC_A], 5)
    with pytest.raises(ConfigError, match="unknown key"):
        make_strategy("market_making", {"gama": 1.0}, [BTC_A], 5)
    with pytest.raises(ConfigError, match="needs exactly 1 instrument"):
        make_strategy("market_making", {}, [BTC_A, BTC_B], 5)


# ------------------------------------------------------------------------------------------
# Pairs trading
# ------------------------------------------------------------------------------------------
def pair_prices(n, seed=3, beta=1.2):
    rng = np.random.default_rng(seed)
    lx = np.log(3000.0) + np.cumsum(rng.normal(0, 2e-4, n))
    ly = np.log(60000.0) + beta * (lx - np.log(3000.0)) + rng.normal(0, 1e-4, n)
    return np.round(np.exp(ly) * 100).astype(np.int64), np.round(np.exp(lx) * 100).astype(np.int64)


def pairs_run(params, y_mids, x_mids, fills=False):
    """Feed one sample per 100 ms; returns (host, intents per step). With ``fills``, every
    intent is filled completely before the next step."""
    h = HostedStrategy(make_strategy("pairs_trading", {"window": 20, "sample_ms": 100.0,
                                                       **params}, [BTC_A, ETH_A], 6))
    steps, pending = [], None
    for n, (y, x) in enumerate(zip(y_mids, x_mids)):
        t = n * 100 * MS + 1
        md = np.concatenate([top(1, y - 1, 10**6, y + 1, 10**6, t),
                             top(3, x - 1, 10**6, x + 1, 10**6, t)])
        if n == 0:
            md = np.concatenate([snapshot(1, [], [], t), snapshot(3, [], [], t), md])
        ex = execs(*[fill(r) for r in pending]) if fills and pending is not None else None
        out = h.step(md, ex, now_ns=t).copy()
        steps.append(out)
        pending = out
    return h, steps


def _fit_prev(y, x, upto):
    """numpy OLS over the 20 samples before index ``upto`` (what the kernel fits)."""
    ly, lx = np.log(y * 0.01), np.log(x * 0.01)
    b, a = np.polyfit(lx[upto - 20:upto], ly[upto - 20:upto], 1)
    sd = np.std(ly[upto - 20:upto] - a - b * lx[upto - 20:upto])
    return a, b, sd


def _with_z(y, x, i, z):
    """Set y[i] so that its out-of-sample z-score is about ``z``."""
    a, b, sd = _fit_prev(y, x, i)
    y[i] = int(round(np.exp(a + b * np.log(x[i] * 0.01) + z * sd) * 100))


def test_pairs_z_score_is_the_out_of_sample_ols_residual():
    y, x = pair_prices(22)
    _with_z(y, x, 21, 3.0)
    h, _ = pairs_run({"entry_z": 50.0, "exit_z": 0.1, "stop_z": 100.0}, y, x)
    a, b, sd = _fit_prev(y, x, 21)
    est = h.st
    assert est.beta == pytest.approx(b, rel=1e-6)
    z = (np.log(y[21] * 0.01) - a - b * np.log(x[21] * 0.01)) / sd
    assert est.z == pytest.approx(z, rel=1e-6) and est.z == pytest.approx(3.0, 0.05)


def test_pairs_enters_exactly_at_the_entry_z_and_not_a_hair_below():
    y, x = pair_prices(22)
    _with_z(y, x, 21, 3.0)
    h, _ = pairs_run({"entry_z": 50.0, "exit_z": 0.1, "stop_z": 100.0}, y, x)
    z = h.st.z
    h, steps = pairs_run({"entry_z": z, "exit_z": 0.1, "stop_z": 100.0}, y, x)
    out = steps[-1]
    assert len(out) == 2 and all(r["order_type"] == ORD_IOC for r in out)
    leg_y = [r for r in out if r["instrument_id"] == 1][0]
    leg_x = [r for r in out if r["instrument_id"] == 3][0]
    assert leg_y["side"] == SIDE_SELL and leg_x["side"] == SIDE_BUY   # Y rich: sell Y, buy X
    py, px_ = y[-1] * 0.01, x[-1] * 0.01
    beta = h.st.beta
    assert leg_y["qty_lots"] == round(10_000.0 / (py * 0.0001))
    assert leg_x["qty_lots"] == round(beta * 10_000.0 / (px_ * 0.001))
    assert leg_y["px_ticks"] == y[-1] - 1 - 2 and leg_x["px_ticks"] == x[-1] + 1 + 2
    _, steps = pairs_run({"entry_z": float(np.nextafter(z, np.inf)), "exit_z": 0.1,
                          "stop_z": 100.0}, y, x)
    assert len(steps[-1]) == 0


def test_pairs_enters_long_the_spread_when_y_is_cheap():
    y, x = pair_prices(22)
    _with_z(y, x, 21, -3.0)
    _, steps = pairs_run({"entry_z": 2.0, "exit_z": 0.1, "stop_z": 100.0}, y, x)
    sides = {int(r["instrument_id"]): int(r["side"]) for r in steps[-1]}
    assert sides == {1: SIDE_BUY, 3: SIDE_SELL}


def _entry_then(z_next):
    y, x = pair_prices(23)
    _with_z(y, x, 21, 3.0)
    _with_z(y, x, 22, z_next)
    return y, x


def test_pairs_exits_when_z_is_back_to_exit_z():
    y, x = _entry_then(0.3)
    base = {"entry_z": 2.0, "stop_z": 100.0}
    h, steps = pairs_run({**base, "exit_z": 0.01}, y, x, fills=True)
    assert len(steps[-2]) == 2 and len(steps[-1]) == 0      # entered; 0.3 > exit_z: hold
    z_next = h.st.z
    assert 0.2 < z_next < 0.4
    h, steps = pairs_run({**base, "exit_z": z_next}, y, x, fills=True)
    out = steps[-1]
    assert len(out) == 2
    sides = {int(r["instrument_id"]): int(r["side"]) for r in out}
    assert sides == {1: SIDE_BUY, 3: SIDE_SELL}             # buy back Y, sell X
    assert out[0]["qty_lots"] == steps[-2][0]["qty_lots"]
    _, steps = pairs_run({**base, "exit_z": float(np.nextafter(z_next, 0))}, y, x, fills=True)
    assert len(steps[-1]) == 0


def test_pairs_stops_out_when_the_spread_keeps_diverging():
    y, x = _entry_then(8.0)
    h, steps = pairs_run({"entry_z": 2.0, "exit_z": 0.1, "stop_z": 5.0}, y, x, fills=True)
    assert h.st.z >= 5.0
    assert len(steps[-1]) == 2 and h.st.n_stops == 1
    assert h.st.target_y == 0 and h.st.dir == 0


def test_pairs_tops_up_a_partially_filled_leg():
    y, x = pair_prices(23)
    _with_z(y, x, 21, 3.0)
    _with_z(y, x, 22, 2.5)
    h, steps = pairs_run({"entry_z": 2.0, "exit_z": 0.1, "stop_z": 100.0}, y, x)
    assert len(steps[-2]) == 2 and len(steps[-1]) == 0    # legs in flight: nothing new
    leg_y = steps[-2][steps[-2]["instrument_id"] == 1][0]
    leg_x = steps[-2][steps[-2]["instrument_id"] == 3][0]
    t = 23 * 100 * MS + 1
    out = h.step(ex=execs(fill(leg_y, qty=int(leg_y["qty_lots"]) - 4), expired(leg_x)),
                 now_ns=t)
    # fill() reports a complete fill of the smaller size: Y is 4 short, X entirely missing
    by_inst = {int(r["instrument_id"]): r for r in out}
    assert by_inst[1]["qty_lots"] == 4 and by_inst[1]["side"] == SIDE_SELL
    assert by_inst[3]["qty_lots"] == leg_x["qty_lots"] and by_inst[3]["side"] == SIDE_BUY


def test_pairs_rejects_inconsistent_thresholds():
    with pytest.raises(ConfigError, match="exit_z < entry_z < stop_z"):
        make_strategy("pairs_trading", {"entry_z": 2.0, "exit_z": 3.0}, [BTC_A, ETH_A], 6)


# ------------------------------------------------------------------------------------------
# Cross-venue arbitrage
# ------------------------------------------------------------------------------------------
def arb_host(**over):
    params = {"taker_fee_bps_a": 2.0, "taker_fee_bps_b": 2.0, "slippage_ticks": 1.0,
              "threshold_ticks": 4.0, "max_qty_lots": 10, "max_legging_lots": 10,
              "max_leg_loss_ticks": 5.0, "leg_timeout_ms": 100.0, "max_book_age_ms": 500.0,
              "min_interval_ms": 0.0, **over}
    return HostedStrategy(make_strategy("cross_venue_arb", params, [BTC_A, BTC_B], 9))


def books(bid_a, ask_a, bid_b, ask_b, t=1_000, qa=7, qb=5):
    return np.concatenate([snapshot(1, [(bid_a, qa)], [(ask_a, qa)], t),
                           snapshot(2, [(bid_b, qb)], [(ask_b, qb)], t)])


def test_arb_trades_only_when_the_edge_exceeds_fees_slippage_and_threshold():
    # edge = 10005 - 9995 = 10; fees = 2 bps x (10005 + 9995) = 4.0; 2 x slippage 1 = 2
    assert len(arb_host(threshold_ticks=4.0).step(books(10_005, 10_015, 9_985, 9_995))) == 0
    out = arb_host(threshold_ticks=3.0).step(books(10_005, 10_015, 9_985, 9_995), now_ns=1_000)
    assert len(out) == 2 and all(r["order_type"] == ORD_IOC for r in out)
    sell = [r for r in out if r["side"] == SIDE_SELL][0]
    buy = [r for r in out if r["side"] == SIDE_BUY][0]
    assert (sell["instrument_id"], sell["px_ticks"]) == (1, 10_005)
    assert (buy["instrument_id"], buy["px_ticks"]) == (2, 9_995)
    assert sell["qty_lots"] == buy["qty_lots"] == 5    # the thinner touch
    assert sell["venue_id"] == 1 and buy["venue_id"] == 2


def test_arb_fees_are_part_of_the_cost():
    # without fees the same books pass at threshold 4 (cost 6 < edge 10)
    h = arb_host(taker_fee_bps_a=0.0, taker_fee_bps_b=0.0)
    assert len(h.step(books(10_005, 10_015, 9_985, 9_995), now_ns=1_000)) == 2


def test_arb_checks_the_mirror_direction():
    out = arb_host(threshold_ticks=3.0).step(books(9_985, 9_995, 10_005, 10_015), now_ns=1_000)
    sell = [r for r in out if r["side"] == SIDE_SELL][0]
    assert len(out) == 2 and sell["instrument_id"] == 2


def test_arb_ignores_stale_and_invalid_books():
    h = arb_host(threshold_ticks=0.0)
    assert len(h.step(books(10_005, 10_015, 9_985, 9_995, t=1_000), now_ns=600 * MS)) == 0
    h = arb_host(threshold_ticks=0.0)
    md = np.concatenate([books(10_005, 10_015, 9_985, 9_995), invalidate(2, 1_000)])
    assert len(h.step(md, now_ns=1_000)) == 0


def test_arb_hedges_a_missing_leg_within_the_loss_bound():
    h = arb_host(threshold_ticks=3.0)
    out = h.step(books(10_005, 10_015, 9_985, 9_995), now_ns=1_000).copy()
    sell = [r for r in out if r["side"] == SIDE_SELL][0]
    buy = [r for r in out if r["side"] == SIDE_BUY][0]
    # A's sell filled, B's buy found nothing: short 5 at 10005; B's ask moved up to 10008
    md = snapshot(2, [(9_990, 5)], [(10_008, 5)], 2_000)
    hedge = h.step(md, execs(fill(sell), expired(buy)), now_ns=2_000)
    assert len(hedge) == 1
    assert hedge[0]["side"] == SIDE_BUY and hedge[0]["instrument_id"] == 2
    assert hedge[0]["qty_lots"] == 5 and hedge[0]["px_ticks"] == 10_005 + 5   # bounded loss
    assert hedge[0]["order_type"] == ORD_IOC


def test_arb_waits_then_unwinds_at_the_touch_after_the_leg_timeout():
    h = arb_host(threshold_ticks=3.0)
    out = h.step(books(10_005, 10_015, 9_985, 9_995), now_ns=1_000).copy()
    sell = [r for r in out if r["side"] == SIDE_SELL][0]
    buy = [r for r in out if r["side"] == SIDE_BUY][0]
    md = np.concatenate([snapshot(1, [(10_010, 5)], [(10_020, 5)], 2_000),
                         snapshot(2, [(10_000, 5)], [(10_030, 5)], 2_000)])
    # both asks beyond 10005 + 5: no hedge inside the bound, and no new arbitrage while legged
    assert len(h.step(md, execs(fill(sell), expired(buy)), now_ns=2_000)) == 0
    t = 2_000 + 100 * MS
    md = np.concatenate([top(1, 10_010, 5, 10_020, 5, t), top(2, 10_000, 5, 10_030, 5, t)])
    unwind = h.step(md, now_ns=t)
    assert len(unwind) == 1 and unwind[0]["instrument_id"] == 1
    assert unwind[0]["side"] == SIDE_BUY and unwind[0]["px_ticks"] == 10_020 + 1
    assert h.st.n_unwinds == 1


def test_arb_backs_off_after_a_denial_instead_of_hammering_the_gate():
    h = arb_host(threshold_ticks=3.0, min_interval_ms=20.0)
    md = books(10_005, 10_015, 9_985, 9_995)
    out = h.step(md, now_ns=1_000).copy()
    denied = [report(r, EXEC_REJECT) for r in out]
    assert len(h.step(ex=execs(*denied), now_ns=2_000)) == 0       # same edge, but backing off
    assert len(h.step(now_ns=2_000 + 20 * MS - 1)) == 0
    assert len(h.step(top(1, 10_005, 7, 10_015, 7, 2_000 + 20 * MS), now_ns=2_000 + 20 * MS)) == 2


def test_arb_sizes_are_capped_by_the_legging_exposure():
    h = arb_host(threshold_ticks=0.0, max_qty_lots=50, max_legging_lots=3)
    out = h.step(books(10_005, 10_015, 9_985, 9_995, qa=100, qb=100), now_ns=1_000)
    assert all(r["qty_lots"] == 3 for r in out)


def test_arb_rejects_instruments_of_different_assets_or_the_same_venue():
    with pytest.raises(ValueError, match="same venue"):
        make_strategy("cross_venue_arb", {}, [BTC_A, instrument(4, 1)], 9)
    with pytest.raises(ValueError, match="tick and lot"):
        make_strategy("cross_venue_arb", {}, [BTC_A, instrument(4, 2, lot="0.001")], 9)


def test_ack_of_an_order_the_strategy_did_not_send_is_counted_not_applied():
    h = mm_host()
    out = start_quoting(h)
    stray = out[:1].copy()
    stray["client_order_id"] += 1000
    before = h.ctx.orders.copy()
    h.step(ex=ack(stray[0]), now_ns=5_000)
    assert h.rt["unknown_exec"] == 1
    assert np.array_equal(h.ctx.orders, before)
