"""market.backtest / market.replayvenue / market.report: metrics, queue models, determinism."""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest

from market.report import build_report, max_drawdown, profit_factor, sharpe, win_rate
from market.replayvenue import ReplayVenue, replay_advance, replay_submit
from pipeline.config import load_config
from shm.instruments import Instrument
from shm.records import (EXEC_ACK, EXEC_DTYPE, EXEC_FILL, EXEC_PARTIAL, INTENT_NEW,
                         MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MSG_LEVEL, MSG_SNAP_END,
                         MSG_SNAP_START, MSG_TRADE, ORD_LIMIT, ORDER_DTYPE, SIDE_BUY, SIDE_SELL)

MS = 1_000_000


# ---------------------------------------------------------------------------------------------
# Report metrics on scripted curves
# ---------------------------------------------------------------------------------------------
def test_max_drawdown_is_the_largest_drop_from_a_running_peak():
    eq = [100, 110, 105, 120, 90, 95, 130, 125]
    dd, frac = max_drawdown(eq)
    assert dd == 30 and frac == pytest.approx(30 / 120)
    assert max_drawdown([1, 2, 3]) == (0.0, 0.0)


def test_profit_factor_and_win_rate_of_scripted_trades():
    pnls = [10.0, -5.0, 20.0, -15.0, 0.0]
    assert profit_factor(pnls) == pytest.approx(30 / 20)
    assert win_rate(pnls) == pytest.approx(2 / 5)           # a flat trade is not a win
    assert profit_factor([1.0, 2.0]) == math.inf
    assert math.isnan(profit_factor([]))


def test_sharpe_annualises_per_period_returns_and_is_zero_without_variance():
    eq = [100.0, 101.0, 100.0, 101.0, 100.0]
    r = np.diff(eq) / np.array(eq[:-1])
    want = r.mean() / r.std(ddof=1) * math.sqrt(365 * 86400 / 60.0)
    assert sharpe(eq, 60.0) == pytest.approx(want)
    assert sharpe([100.0] * 10, 1.0) == 0.0


def test_report_adds_up_pnl_inventory_and_fill_rate():
    t = np.arange(0, 5_000_000_000, 1_000_000_000, dtype=np.int64)
    curve = {"t_ns": t, "equity": np.array([1000.0, 1010, 1005, 1020, 1015]),
             "realized": np.array([0.0, 5, 5, 12, 12]), "unrealized": np.array([0.0, 6, 1, 9, 4]),
             "fees": np.array([0.0, 1, 1, 1, 1]), "abs_pos": np.array([0.0, 10, 10, 0, 20])}
    rep = build_report(curve=curve, trade_pnls=[5.0, 7.0, -1.0], queue_times_ns=[2 * MS, 4 * MS],
                       counters={"fills": 3, "orders_acked": 4, "orders_filled": 2,
                                 "qty_sent": 40, "qty_filled": 10, "max_abs_pos": 25},
                       initial_cash=1000.0)
    assert rep["pnl"]["total"] == 15.0
    assert rep["pnl"]["realized"] - rep["pnl"]["fees"] + rep["pnl"]["unrealized"] == 15.0
    assert rep["max_drawdown"] == 5.0
    assert rep["fill_rate"] == 0.5 and rep["fill_rate_qty"] == 0.25
    assert rep["inventory_lots"]["max_abs"] == 25
    assert rep["inventory_lots"]["time_weighted_abs"] == pytest.approx((0 + 10 + 10 + 0) / 4)
    assert rep["time_in_queue_ms"]["mean"] == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------
# Queue-position models on scripted recorded data
# ---------------------------------------------------------------------------------------------
INST = [Instrument(1, "TEST", "REC", 1, Decimal("0.01"), Decimal("1"))]


def _rec(t, kind, side=0, px=0, qty=0):
    r = np.zeros(1, dtype=MARKET_DTYPE)[0]
    r["kind"], r["side"], r["instrument_id"] = kind, side, 1
    r["exch_ts_ns"] = r["recv_ts_ns"] = t
    r["px_ticks"], r["qty_lots"] = px, qty
    r["flags"] = MFLAG_LAST_IN_BATCH
    return r


def _book_then(events):
    recs = [_rec(1 * MS, MSG_SNAP_START), _rec(1 * MS, MSG_LEVEL, SIDE_BUY, 1000, 100),
            _rec(1 * MS, MSG_LEVEL, SIDE_SELL, 1010, 50), _rec(1 * MS, MSG_SNAP_END)]
    for t, kind, side, px, qty in events:
        recs.append(_rec(t * MS, kind, side, px, qty))
    return np.array(recs, dtype=MARKET_DTYPE)


def _run_replay(records, model, order_at_ms=10, px=1000, qty=10):
    cfg = load_config()
    rv = ReplayVenue(records, INST, cfg, queue_model=model, seed=1)
    o = np.zeros(1, dtype=ORDER_DTYPE)[0]
    o["kind"], o["side"], o["order_type"] = INTENT_NEW, SIDE_BUY, ORD_LIMIT
    o["instrument_id"], o["client_order_id"], o["strategy_id"] = 1, (1 << 48) | 1, 1
    o["px_ticks"], o["qty_lots"] = px, qty
    out_md = np.zeros(256, dtype=MARKET_DTYPE)
    out_ex = np.zeros(64, dtype=EXEC_DTYPE)
    reports = []
    sent = False
    t = 0
    while t < rv.end_ns + 10 * MS:
        if not sent and t >= order_at_ms * MS:
            replay_submit(rv.state, o, np.int64(t))
            sent = True
        _n_md, n_ex, t = replay_advance(rv.state, np.int64(t + MS), out_md, 0, out_ex, 0, False)
        reports.extend(out_ex[:n_ex].copy())
    return reports


def _fills(reports):
    return [(int(e["venue_ts_ns"]) // MS, int(e["qty_lots"])) for e in reports
            if e["kind"] in (EXEC_PARTIAL, EXEC_FILL)]


def test_conservative_queue_fills_only_after_the_volume_ahead_has_traded():
    trade = SIDE_SELL   # sell aggressors hit our bid level
    recs = _book_then([(20, MSG_TRADE, trade, 1000, 60), (20, MSG_LEVEL, SIDE_BUY, 1000, 40),
                       (30, MSG_TRADE, trade, 1000, 30), (30, MSG_LEVEL, SIDE_BUY, 1000, 10),
                       (40, MSG_TRADE, trade, 1000, 15), (40, MSG_LEVEL, SIDE_BUY, 1000, 0),
                       (50, MSG_TRADE, trade, 1000, 20)])
    reps = _run_replay(recs, "conservative")
    assert int(reps[0]["kind"]) == EXEC_ACK
    # 100 ahead: 60 + 30 traded leave 10 ahead; the 15 fill 5 of ours; the next trade the rest
    assert _fills(reps) == [(40, 5), (50, 5)]
    assert int(reps[-1]["kind"]) == EXEC_FILL and int(reps[-1]["px_ticks"]) == 1000


def test_trades_at_other_prices_do_not_advance_the_queue():
    recs = _book_then([(20, MSG_TRADE, SIDE_SELL, 1001, 500), (30, MSG_TRADE, SIDE_BUY, 1000, 500)])
    assert _fills(_run_replay(recs, "conservative")) == []


def test_a_trade_through_our_price_fills_what_is_left():
    recs = _book_then([(20, MSG_TRADE, SIDE_SELL, 999, 1)])
    assert _fills(_run_replay(recs, "conservative")) == [(20, 10)]


def test_probabilistic_queue_counts_some_cancels_ahead_and_conservative_none():
    events = [(20, MSG_LEVEL, SIDE_BUY, 1000, 200),      # 100 join behind us
              (30, MSG_LEVEL, SIDE_BUY, 1000, 140),      # 60 cancelled, ahead or behind?
              (40, MSG_TRADE, SIDE_SELL, 1000, 80), (40, MSG_LEVEL, SIDE_BUY, 1000, 60)]
    recs = _book_then(events)
    # conservative: still 100 ahead, 80 traded: no fill; probabilistic (power 3, 100 ahead and
    # 100 behind): half the cancels were ahead, 70 ahead, so 10 of the 80 reach us
    assert _fills(_run_replay(recs, "conservative")) == []
    assert _fills(_run_replay(recs, "probabilistic")) == [(40, 10)]


def test_a_marketable_order_takes_the_displayed_levels_at_arrival():
    recs = _book_then([(50, MSG_TRADE, SIDE_SELL, 1000, 1)])
    reps = _run_replay(recs, "conservative", px=1010, qty=30)
    assert _fills(reps)[0][1] == 30 and int(reps[1]["liquidity"]) == 2   # taker at 1010
    assert int(reps[1]["px_ticks"]) == 1010 and int(reps[1]["fee_e9"]) > 0


# ---------------------------------------------------------------------------------------------
# Whole backtests
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cfg():
    return load_config()


def _comparable(rep):
    rep = dict(rep)
    rep["counters"] = {k: v for k, v in rep["counters"].items()
                       if k not in ("wall_s", "cpu_s", "compile_s")}
    return rep


def test_backtest_on_sim_is_deterministic_and_its_equity_adds_up(cfg):
    from strategies.backtest import run_backtest

    a = run_backtest(cfg, "mm_btc", duration_s=8.0, event_rate_per_s=300.0)
    b = run_backtest(cfg, "market_making", duration_s=8.0, event_rate_per_s=300.0)
    assert _comparable(a.report) == _comparable(b.report)
    for k in a.curve:
        assert a.curve[k].tobytes() == b.curve[k].tobytes()
    assert a.counters["fills"] > 0 and a.counters["orders_sent"] > 0
    c = a.curve
    np.testing.assert_allclose(c["equity"], cfg.backtest.initial_cash + c["realized"]
                               + c["unrealized"] - c["fees"])
    assert a.report["pnl"]["fees"] == pytest.approx(c["fees"][-1])
    assert len(a.trade_pnls) == a.report["closed_trades"]


def test_a_backtest_with_a_progress_bar_is_the_same_run_to_the_record(cfg):
    """run.py backtest's bar runs the loop in stretches: nothing of the run may change."""
    from strategies.backtest import PROGRESS_STEPS, run_backtest

    a = run_backtest(cfg, "mm_btc", duration_s=8.0, event_rate_per_s=300.0, trace=100_000)
    seen = []
    b = run_backtest(cfg, "mm_btc", duration_s=8.0, event_rate_per_s=300.0, trace=100_000,
                     progress=lambda done, total: seen.append((done, total)))
    assert a.trace["n_intents"] > 0 and a.trace["n_reports"] > 0
    for k in ("intents", "reports"):
        assert a.trace[k].tobytes() == b.trace[k].tobytes()
    assert _comparable(a.report) == _comparable(b.report)
    for k in a.curve:
        assert a.curve[k].tobytes() == b.curve[k].tobytes()
    assert len(seen) == PROGRESS_STEPS and all(t == pytest.approx(8.0) for _d, t in seen)
    done = [d for d, _t in seen]
    assert done == sorted(done) and done[0] > 0 and done[-1] == pytest.approx(8.0)


def _hold_arrays(cfg):
    from market.backtest import make_backtest_arrays
    from market.risk import build_limits
    from strategies.host import make_hctl

    insts = [Instrument(1, "BTC-USD", "simA", 1, Decimal("0.01"), Decimal("0.001"))]
    return make_backtest_arrays([1], insts, build_limits(cfg.risk, insts, max_strategies=1),
                                [make_hctl(10.0)], n_samples=4)


def _fill(G, side, qty, t_s, px=100):
    from market.backtest import _account

    e = np.zeros(1, dtype=EXEC_DTYPE)
    e["instrument_id"] = 1
    e["side"] = side
    e["px_ticks"] = px
    e["qty_lots"] = qty
    _account(G, 0, e[0], np.int64(t_s * 1_000_000_000))


@pytest.mark.parametrize("fills, t_end_s, area, opened", [
    # (side, lots, at s): a round trip of 10 lots held 2 s
    ([(SIDE_BUY, 10, 1), (SIDE_SELL, 10, 3)], 5, 20.0, 10.0),
    # scaled in: 5 lots for 1 s, then 10 for 1 s
    ([(SIDE_BUY, 5, 0), (SIDE_BUY, 5, 1), (SIDE_SELL, 10, 2)], 5, 15.0, 10.0),
    # through zero: long 10 for 1 s, short 10 for 2 s (the flip opens 10 short lots)
    ([(SIDE_BUY, 10, 0), (SIDE_SELL, 20, 1), (SIDE_BUY, 10, 3)], 5, 30.0, 20.0),
    # partly closed, the rest still open at the end: 10 for 1 s, then 4 until t_end = 6 s
    ([(SIDE_BUY, 10, 0), (SIDE_SELL, 6, 1)], 6, 10.0 + 4 * 5.0, 10.0),
])
def test_mean_holding_time_is_lot_seconds_held_over_lots_opened(cfg, fills, t_end_s, area,
                                                                opened):
    from strategies.backtest import _holding

    G = _hold_arrays(cfg)
    for side, qty, t in fills:
        _fill(G, side, qty, t)
    h = _holding(G, [0], t_end_s * 1_000_000_000)
    assert h["lots_opened"] == pytest.approx(opened)
    assert h["mean_holding_s"] == pytest.approx(area / opened)


def test_no_lot_opened_has_no_holding_time(cfg):
    from strategies.backtest import _holding

    assert _holding(_hold_arrays(cfg), [0], 10**9) == {"mean_holding_s": None,
                                                        "lots_opened": 0.0}


def test_timed_kernels_trade_exactly_as_untimed_and_every_call_is_counted(cfg):
    """run.py bench strategies times the backtest's own step calls: the timing must not change
    a single intent, and every call must land in exactly one kind (market / exec / timer)."""
    from strategies.backtest import run_backtest

    a = run_backtest(cfg, "mm_btc", duration_s=8.0, event_rate_per_s=300.0, trace=100_000)
    b = run_backtest(cfg, "mm_btc", duration_s=8.0, event_rate_per_s=300.0, trace=100_000,
                     kernel_timing=1 << 10)
    for k in ("intents", "reports"):
        assert a.trace[k].tobytes() == b.trace[k].tobytes()
    assert "kernel_ns" not in a.report
    kn = b.report["kernel_ns"]
    calls = sum(v["calls"] for v in kn.values())
    assert calls == b.counters["strategy_calls"] > 0
    m = kn["market"]
    assert m["calls"] <= m["records"] <= b.counters["md_records"]
    assert m["kept"] == min(m["calls"], 1 << 10)
    for v in kn.values():
        assert 0 < v["p50"] <= v["p99"] <= v["max"]
        assert v["mean"] > 0
    assert kn["timer"]["calls"] > 0   # the timer ran between records, alone


def test_backtest_replays_a_lobster_recording_through_the_queue_model(cfg, shared_data,
                                                                      tmp_path):
    from strategies.backtest import run_backtest
    from market.lobster import convert_to_file

    d = shared_data / "lobster"
    path = tmp_path / "aapl.rec"
    n = convert_to_file(d / "AAPL_2012-06-21_34200000_57600000_message_10.csv",
                        d / "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv", 10, path)
    res = run_backtest(cfg, "mm_btc", data=path, queue_model="conservative")
    assert res.counters["md_records"] == n               # every record reached the strategy
    assert res.report["strategy"]["instruments"] == ["AAPL@LOBSTER"]
    assert res.counters["orders_sent"] > 0


# ---------------------------------------------------------------------------------------------
# Books without a price, kernels that raise
# ---------------------------------------------------------------------------------------------
T0 = 1_000 * MS


def _pair_recording(cfg, path, end_s=9.0, one_sided=(6.0, 7.0), trade_px_at=None):
    """BTC-USD@simA (Y) and ETH-USD@simA (X) quoted every 50 ms on a correlated random walk;
    from one_sided[0] to one_sided[1] (s) the venue's BTC book is complete but has no asks (a
    snapshot with bids only), then whole again. ``trade_px_at`` = (px, s): one BTC trade."""
    from market.recordfile import RecordFileWriter
    from shm.instruments import InstrumentTable
    from shm.records import MSG_TOP

    table = InstrumentTable.from_config(cfg)
    y, x = table.by_key("BTC-USD@simA").instrument_id, table.by_key("ETH-USD@simA").instrument_id
    rng = np.random.default_rng(5)
    n = int(end_s / 0.05)
    lx = np.cumsum(rng.normal(0, 2e-4, n))
    ly = 1.2 * lx + rng.normal(0, 1e-4, n)
    py = np.round(6_000_000 * np.exp(ly)).astype(int)
    px = np.round(300_000 * np.exp(lx)).astype(int)
    recs = []

    def rec(t, inst, kind, side=0, price=0, qty=0, aux0=0, aux1=0):
        r = _rec(t, kind, side, price, qty)
        r["instrument_id"], r["aux0"], r["aux1"] = inst, aux0, aux1
        recs.append(r)

    def snap(t, inst, bid, ask):
        rec(t, inst, MSG_SNAP_START)
        rec(t, inst, MSG_LEVEL, SIDE_BUY, bid, 10**6)
        if ask:
            rec(t, inst, MSG_LEVEL, SIDE_SELL, ask, 10**6)
        rec(t, inst, MSG_SNAP_END)

    snap(T0, y, py[0] - 1, py[0] + 1)
    snap(T0, x, px[0] - 1, px[0] + 1)
    gap = [round(s / 0.05) for s in one_sided]
    for i in range(1, n):
        t = T0 + i * 50 * MS
        if trade_px_at and i == round(trade_px_at[1] / 0.05):
            rec(t, y, MSG_TRADE, SIDE_SELL, trade_px_at[0], 1)
        if i == gap[0]:
            snap(t, y, py[i] - 1, 0)
        elif i == gap[1]:
            snap(t, y, py[i] - 1, py[i] + 1)
        elif not gap[0] < i < gap[1]:
            rec(t, y, MSG_TOP, 0, py[i] - 1, 10**6, py[i] + 1, 10**6)
        rec(t, x, MSG_TOP, 0, px[i] - 1, 10**6, px[i] + 1, 10**6)
    with RecordFileWriter(path, MARKET_DTYPE, list(table)) as w:
        w.append(np.array(recs, dtype=MARKET_DTYPE))
    return len(recs)


def test_pairs_backtest_runs_through_a_one_sided_book_without_a_kernel_error(cfg, tmp_path):
    from strategies.backtest import run_backtest
    from strategies import pairs_trading as pt

    path = tmp_path / "pairs.rec"
    n = _pair_recording(cfg, path)
    res = run_backtest(cfg, "pairs_btc_eth", data=path)   # the default config's instance
    est = res.strategy_state.fields
    assert est.n_samples > 100          # the z-score was live before the book went bad
    assert est.n_no_price > 0           # samples came due while BTC had no asks
    assert res.counters["kernel_errors"] == 0 and res.report["kernel_errors"] == 0
    assert res.counters["md_records"] == n    # ran to the end of the recording


def test_a_hook_that_raises_in_the_backtest_halts_the_strategy_and_the_run_goes_on(
        cfg, tmp_path, monkeypatch):
    """The backtest's guard is the live host's (strategies.host.run_strategy_batch): the
    strategy halts, the report names the hook and the simulated time, the run reaches its end."""
    import dataclasses

    from strategies import backtest
    from strategies import registry
    from tests.unit.test_strategy_host_step import POISON_PX, PoisonStrategy

    monkeypatch.setitem(registry._cache, PoisonStrategy.kind, PoisonStrategy)
    sc = dataclasses.replace(backtest._strategy_config(cfg, "mm_btc"), kind=PoisonStrategy.kind,
                             params={})
    monkeypatch.setattr(backtest, "_strategy_config", lambda c, which: sc)
    path = tmp_path / "poison.rec"
    n = _pair_recording(cfg, path, end_s=3.0, one_sided=(10.0, 11.0),
                        trade_px_at=(POISON_PX, 1.0))
    res = backtest.run_backtest(cfg, "mm_btc", data=path)
    assert res.counters["kernel_errors"] == 1 and res.report["kernel_errors"] == 1
    assert res.counters["intents_discarded"] == 1     # its IOC at the poison price never left
    assert res.counters["orders_sent"] == 0
    assert res.counters["md_records"] == n            # and the run reached the end
    assert res.report["halted"]["reason"] == "on_market raised"
    assert 0.9 < res.report["halted"]["at_s"] < 1.1   # the poison trade is at 1.0 s
