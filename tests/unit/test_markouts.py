"""Markouts and fill quality (market/backtest.py's markout ring, market/report.py's
markout_report and the no-adverse-selection warning): on a hand-made recording whose mid moves
by known amounts after trades that fill the market maker's resting orders, the report's
markouts are those moves; fills whose horizon falls after the end are left out; the warning
fires on maker fills free of adverse selection and not on adversely selected ones."""
from __future__ import annotations

import numpy as np
import pytest

from market.report import build_report, format_text, markout_report
from pipeline.config import load_config
from shm.records import (EXEC_FILL, EXEC_PARTIAL, LIQ_MAKER, MARKET_DTYPE, MFLAG_LAST_IN_BATCH,
                         MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_TOP, MSG_TRADE, SIDE_BUY,
                         SIDE_SELL)

MS = 1_000_000
S = 1_000_000_000
T0 = 1_000 * MS
MID = 6_000_000            # ticks
HALF = 5                   # half the recorded spread, ticks
END_S = 38.0
# (time of a trade through every resting order of one side (s), that trade's aggressor side,
#  the mid's steps after it: (s after the trade, ticks the mid moves by, in the fill's favour
#  for the maker's side)): steps fall well clear of the horizons (100 ms, 1 s, 10 s). The
# market maker quotes once its volatility estimate is warm (a few seconds in).
EVENTS = [(10.0, SIDE_SELL, [(0.05, +4), (0.5, +4), (5.0, +12)]),   # our bid fills, mid rises
          (20.0, SIDE_BUY, [(0.05, -3), (0.5, -3), (5.0, -6)]),     # our ask fills, mid falls
          (33.0, SIDE_SELL, [(0.05, -2), (0.5, -5)])]               # 10 s after it: past the end
HORIZONS = {"100ms": 0.1, "1s": 1.0, "10s": 10.0}


def _mid_path():
    """[(t_ns, mid)] of the recording: the mid from each time on."""
    steps = [(T0, MID)]
    mid = MID
    for at, _side, moves in EVENTS:
        for dt, d in moves:
            mid += d
            steps.append((T0 + int(round((at + dt) * S)), mid))
    return sorted(steps)


def _mid_at(t_ns, path):
    m = path[0][1]
    for t, mid in path:
        if t <= t_ns:
            m = mid
    return m


def _recording(cfg, path):
    from market.recordfile import RecordFileWriter
    from shm.instruments import InstrumentTable

    table = InstrumentTable.from_config(cfg)
    inst = table.by_key("BTC-USD@simA").instrument_id
    recs = []

    def rec(t, kind, side=0, px=0, qty=0, aux0=0, aux1=0):
        r = np.zeros(1, dtype=MARKET_DTYPE)[0]
        r["kind"], r["side"], r["instrument_id"] = kind, side, inst
        r["exch_ts_ns"] = r["recv_ts_ns"] = t
        r["px_ticks"], r["qty_lots"], r["aux0"], r["aux1"] = px, qty, aux0, aux1
        r["flags"] = MFLAG_LAST_IN_BATCH
        recs.append(r)

    rec(T0, MSG_SNAP_START)
    rec(T0, MSG_LEVEL, SIDE_BUY, MID - HALF, 10**6)
    rec(T0, MSG_LEVEL, SIDE_SELL, MID + HALF, 10**6)
    rec(T0, MSG_SNAP_END)
    mids = _mid_path()
    trades = {T0 + int(round(at * S)): side for at, side, _m in EVENTS}
    for j in range(1, int(END_S / 0.05) + 1):     # the top of book every 50 ms
        t = T0 + j * 50 * MS
        mid = _mid_at(t, mids)
        if t in trades:     # far through every resting order of the side it hits
            px = mid - 100 if trades[t] == SIDE_SELL else mid + 100
            rec(t, MSG_TRADE, trades[t], px, 1)
        rec(t, MSG_TOP, 0, mid - HALF, 10**6, mid + HALF, 10**6)
    with RecordFileWriter(path, MARKET_DTYPE, list(table)) as w:
        w.append(np.array(recs, dtype=MARKET_DTYPE))
    return inst


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    from strategies.backtest import run_backtest

    cfg = load_config()
    path = tmp_path_factory.mktemp("markouts") / "scripted.rec"
    _recording(cfg, path)
    res = run_backtest(cfg, "mm_btc", data=path, trace=100_000)
    tr = res.trace["reports"]
    fills = tr[(tr["kind"] == EXEC_FILL) | (tr["kind"] == EXEC_PARTIAL)]
    return res, fills


def _expected(fills, side, horizon_s, t_end):
    """Mean and sum-of-quote markouts (ticks) of our ``side``'s fills, from the known mid path."""
    path = _mid_path()
    sign = 1 if side == SIDE_BUY else -1
    ticks, n_left = [], 0
    for f in fills[fills["side"] == side]:
        t = int(f["venue_ts_ns"]) + int(round(horizon_s * S))
        if t > t_end:
            n_left += 1
            continue
        ticks.append(sign * (_mid_at(t, path) - int(f["px_ticks"])))
    return ticks, n_left


def _drifts(fills, side, horizon_s, t_end):
    """side x (mid(t + h) - mid(t)) of our ``side``'s fills whose horizon is within the run."""
    path = _mid_path()
    sign = 1 if side == SIDE_BUY else -1
    t_fill = [int(f["venue_ts_ns"]) for f in fills[fills["side"] == side]]
    return [sign * (_mid_at(t + int(round(horizon_s * S)), path) - _mid_at(t, path))
            for t in t_fill if t + int(round(horizon_s * S)) <= t_end]


def test_the_scripted_fills_are_the_trades_through_the_resting_orders(scripted):
    res, fills = scripted
    assert len(fills) > 0
    assert (fills["liquidity"] == LIQ_MAKER).all()
    # every fill at one of the three trades, buys at the sell trades and sells at the buy one
    for f in fills:
        at = (int(f["venue_ts_ns"]) - T0) / S
        ev = [e for e in EVENTS if abs(e[0] - at) < 0.01]
        assert len(ev) == 1, at
        assert int(f["side"]) == (SIDE_BUY if ev[0][1] == SIDE_SELL else SIDE_SELL)
    assert {int(s) for s in fills["side"]} == {SIDE_BUY, SIDE_SELL}
    assert res.report["markouts"]["all"]["at_fill"]["n"] == len(fills)


@pytest.mark.parametrize("side,name", [(SIDE_BUY, "buy"), (SIDE_SELL, "sell")])
def test_each_markout_is_the_known_mid_move_against_the_fill_price(scripted, side, name):
    res, fills = scripted
    t_end = int(res.curve["t_ns"][-1])     # the run's end (its last equity point)
    for h, hs in HORIZONS.items():
        ticks, _n_left = _expected(fills, side, hs, t_end)
        cell = res.report["markouts"][name][h]
        assert cell["n"] == len(ticks)
        assert ticks, h
        assert cell["mean_ticks"] == pytest.approx(np.mean(ticks), abs=1e-12)
        drift = [d for d in _drifts(fills, side, hs, t_end)]
        assert cell["drift_ticks"] == pytest.approx(np.mean(drift), abs=1e-12)
        if len(ticks) > 1:
            assert cell["se_ticks"] == pytest.approx(np.std(ticks, ddof=1) / np.sqrt(len(ticks)),
                                                     abs=1e-9)


def test_the_sign_is_positive_when_the_mid_moves_our_way(scripted):
    res, fills = scripted
    mo = res.report["markouts"]
    # the script moves the mid up after our buys (10 s) and down after our sells (20 s): our way
    assert mo["buy"]["10s"]["mean_ticks"] > 0 and mo["sell"]["10s"]["mean_ticks"] > 0
    # the last buys (33 s) see the mid fall: adverse, and they weigh in at 100 ms and 1 s
    late = fills[(fills["side"] == SIDE_BUY) & (fills["venue_ts_ns"] > T0 + 30 * S)]
    assert len(late) > 0
    _ticks, _ = _expected(late, SIDE_BUY, 1.0, int(res.curve["t_ns"][-1]))
    assert all(t < 0 for t in _ticks)


def test_the_quote_value_is_ticks_times_lots_times_the_tick_value(scripted):
    from shm.instruments import InstrumentTable

    res, fills = scripted
    inst = InstrumentTable.from_config(load_config()).by_key("BTC-USD@simA")
    value = float(inst.tick_size * inst.lot_size)
    t_end = int(res.curve["t_ns"][-1])
    for side, name in ((SIDE_BUY, "buy"), (SIDE_SELL, "sell")):
        mine = fills[fills["side"] == side]
        path = _mid_path()
        sign = 1 if side == SIDE_BUY else -1
        want = [sign * (_mid_at(int(f["venue_ts_ns"]) + S, path) - int(f["px_ticks"]))
                * int(f["qty_lots"]) * value for f in mine if int(f["venue_ts_ns"]) + S <= t_end]
        cell = res.report["markouts"][name]["1s"]
        assert cell["mean_quote"] == pytest.approx(np.mean(want), rel=1e-12)


def test_fills_whose_horizon_is_beyond_the_end_are_left_out_and_counted(scripted):
    res, fills = scripted
    mo = res.report["markouts"]
    t_end = int(res.curve["t_ns"][-1])
    late = int(((fills["venue_ts_ns"] + 10 * S) > t_end).sum())
    assert late > 0                                     # the 33 s buys
    assert mo["left_out"] == {"100ms": 0, "1s": 0, "10s": late}
    assert mo["all"]["10s"]["n"] == len(fills) - late
    assert mo["all"]["1s"]["n"] == len(fills)


def test_edge_at_fill_and_realized_spread(scripted):
    res, fills = scripted
    fq = res.report["fill_quality"]
    path = _mid_path()
    sign = np.where(fills["side"] == SIDE_BUY, 1, -1)
    # the mark when the report arrives: the trade moves no quote, the mid is the one before it
    edge = [s * (_mid_at(int(f["venue_ts_ns"]), path) - int(f["px_ticks"]))
            for s, f in zip(sign, fills)]
    assert fq["edge_at_fill_ticks"] == pytest.approx(np.mean(edge), abs=1e-12)
    one_s = [s * (_mid_at(int(f["venue_ts_ns"]) + S, path) - int(f["px_ticks"]))
             for s, f in zip(sign, fills)]
    assert fq["realized_spread_1s_ticks"] == pytest.approx(2 * np.mean(one_s), abs=1e-12)
    assert fq["price_impact_1s_ticks"] == pytest.approx(
        fq["effective_spread_ticks"] - fq["realized_spread_1s_ticks"], abs=1e-12)
    q = res.queue_times_ns
    assert fq["time_in_queue_ms"]["p50"] == pytest.approx(np.median(q) / 1e6)
    assert fq["time_in_queue_ms"]["p90"] == pytest.approx(np.percentile(q, 90) / 1e6)
    assert "markouts:" in format_text(res.report, "mm_btc")


# ---------------------------------------------------------------------------------------------
# The warning, on constructed sums
# ---------------------------------------------------------------------------------------------
NAMES = ("at_fill", "100ms", "1s", "10s")


def _sums(maker_drift_1s, taker_drift_1s=(), edge=5.0):
    """sums[side, liquidity, horizon, 6] of buys whose mid drifted these ticks since the fill
    (at every horizon), each bought ``edge`` ticks below the mid: markout = edge + drift."""
    s = np.zeros((2, 2, len(NAMES), 6))
    for liq, drift in ((0, maker_drift_1s), (1, taker_drift_1s)):
        d = np.asarray(drift, dtype=float)
        t = d + edge
        for h in range(len(NAMES)):
            s[0, liq, h] = (t.size, t.sum(), t.sum() * 0.01, (t * t).sum(), d.sum(),
                            (d * d).sum())
    return s


def _report(sums):
    t = np.arange(0, 10 * S, S, dtype=np.int64)
    z = np.zeros(t.size)
    curve = {"t_ns": t, "equity": 1000.0 + z, "realized": z, "unrealized": z, "fees": z,
             "abs_pos": z}
    return build_report(curve=curve, trade_pnls=[], queue_times_ns=[], counters={},
                        initial_cash=1000.0, markouts={"sums": sums, "names": NAMES})


def _codes(rep):
    return [w["code"] for w in rep["warnings"]]


def test_maker_fills_free_of_adverse_selection_are_warned_about():
    rng = np.random.default_rng(3)
    rep = _report(_sums(rng.normal(0.5, 2.0, 200)))
    assert "no_adverse_selection" in _codes(rep)
    msg = [w["message"] for w in rep["warnings"] if w["code"] == "no_adverse_selection"][0]
    assert "fills with no adverse selection" in msg and "200" in msg
    # a drift just above minus one standard error still looks free of adverse selection
    d = rng.normal(0.0, 1.0, 400)
    d = d - d.mean() - 0.5 * d.std(ddof=1) / np.sqrt(d.size)
    assert "no_adverse_selection" in _codes(_report(_sums(d)))


def test_adversely_selected_maker_fills_and_few_fills_are_not_warned_about():
    rng = np.random.default_rng(4)
    d = rng.normal(0.0, 1.0, 400)
    d = d - d.mean() - 1.5 * d.std(ddof=1) / np.sqrt(d.size)     # against us by 1.5 se
    assert "no_adverse_selection" not in _codes(_report(_sums(d)))
    # the mid moves 1 tick against the fills, which still earn 4 of the 5 ticks captured: a
    # positive markout against the price, and adverse selection all the same
    rep = _report(_sums(rng.normal(-1.0, 1.0, 300)))
    assert rep["markouts"]["maker"]["1s"]["mean_ticks"] > 3.5
    assert "no_adverse_selection" not in _codes(rep)
    # favourable, but only 99 maker fills: not judged
    assert "no_adverse_selection" not in _codes(_report(_sums(rng.normal(1.0, 1.0, 99))))
    # taker fills do not count: favourable takers, adverse makers
    rep = _report(_sums(rng.normal(-1.0, 1.0, 300), rng.normal(2.0, 1.0, 300)))
    assert "no_adverse_selection" not in _codes(rep)


def test_markout_cells_give_mean_quote_and_standard_error():
    t = np.array([1.0, -2.0, 3.0, 0.0])
    mo, fq = markout_report(_sums(t, edge=0.0), NAMES, left_out=[0, 0, 1, 2])
    c = mo["buy"]["1s"]
    assert c["n"] == 4 and c["mean_ticks"] == pytest.approx(t.mean())
    assert c["se_ticks"] == pytest.approx(t.std(ddof=1) / 2.0)
    assert c["mean_quote"] == pytest.approx(t.mean() * 0.01)
    assert mo["sell"]["1s"]["n"] == 0 and mo["sell"]["1s"]["mean_ticks"] is None
    assert mo["all"]["1s"]["n"] == 4 and mo["maker"]["1s"]["n"] == 4
    assert mo["left_out"] == {"100ms": 0, "1s": 1, "10s": 2}
    assert fq["realized_spread_1s_ticks"] == pytest.approx(2 * t.mean())
    assert c["drift_ticks"] == pytest.approx(t.mean())
    assert c["se_drift_ticks"] == pytest.approx(t.std(ddof=1) / 2.0)


# ---------------------------------------------------------------------------------------------
# The ring itself: bounded, in time order, the mid at or before each horizon
# ---------------------------------------------------------------------------------------------
def _arrays(capacity):
    from market.backtest import make_backtest_arrays
    from market.risk import build_limits
    from shm.instruments import InstrumentTable
    from strategies.host import make_hctl

    cfg = load_config()
    insts = list(InstrumentTable.from_config(cfg))
    G = make_backtest_arrays([1], insts, build_limits(cfg.risk, insts, max_strategies=1),
                             [make_hctl(100.0)], n_samples=4, markout_capacity=capacity)
    return G, insts[0].instrument_id


def _fill(inst, t, side, px, qty=1):
    from shm.records import EXEC_DTYPE

    e = np.zeros(1, dtype=EXEC_DTYPE)[0]
    e["kind"], e["instrument_id"], e["venue_ts_ns"] = EXEC_FILL, inst, t
    e["side"], e["px_ticks"], e["qty_lots"], e["liquidity"] = side, px, qty, LIQ_MAKER
    return e


def test_a_full_ring_counts_the_fills_it_cannot_hold_and_takes_them_again_once_drained():
    from market.backtest import MO_N, MO_TICKS, _markout_push, _markouts_due, _markouts_end

    G, i = _arrays(4)
    G.mark[i] = 2 * 1000                                   # mid 1000
    for j in range(6):                                     # 6 buys at 999, 1 ms apart
        _markout_push(G, 0, _fill(i, T0 + j * MS, SIDE_BUY, 999))
    ctl = G.mko_ctl[0]
    assert int(ctl["tail"]) == 4 and int(ctl["overflow"]) == 2
    assert G.mko_sum[0, 0, 0, 0, MO_N] == 4 and G.mko_sum[0, 0, 0, 0, MO_TICKS] == 4.0
    G.mark[i] = 2 * 1003                                   # the mid rises to 1003
    # due exactly now, before this round's marks: still waiting (the mark at or before it
    # may be the one about to arrive)
    _markouts_due(G, np.int64(T0 + 100 * MS), True)
    assert G.mko_sum[0, 0, 0, 1, MO_N] == 0
    _markouts_due(G, np.int64(T0 + 100 * MS), False)      # now it counts: the first fill only
    assert G.mko_sum[0, 0, 0, 1, MO_N] == 1 and G.mko_sum[0, 0, 0, 1, MO_TICKS] == 4.0
    assert int(ctl["next_due"]) == T0 + 101 * MS
    _markouts_due(G, np.int64(T0 + 10 * S + 3 * MS), False)   # every horizon of all four
    assert [G.mko_sum[0, 0, 0, h, MO_N] for h in range(4)] == [4, 4, 4, 4]
    _markout_push(G, 0, _fill(i, T0 + 11 * S, SIDE_SELL, 1005))   # room again
    assert int(ctl["tail"]) == 5 and int(ctl["overflow"]) == 2
    _markouts_end(G, np.int64(T0 + 11 * S + 500 * MS))    # 100 ms due, 1 s and 10 s are not
    assert G.mko_sum[0, 1, 0, 1, MO_N] == 1 and G.mko_sum[0, 1, 0, 1, MO_TICKS] == 2.0
    assert G.mko_left[0].tolist() == [0, 0, 1, 1]


def test_a_fill_before_any_mark_is_counted_not_marked_out():
    from market.backtest import _markout_push

    G, i = _arrays(4)
    _markout_push(G, 0, _fill(i, T0, SIDE_BUY, 999))
    assert int(G.mko_ctl[0]["no_mark"]) == 1 and int(G.mko_ctl[0]["tail"]) == 0
    with pytest.raises(ValueError, match="power of two"):
        _arrays(6)
