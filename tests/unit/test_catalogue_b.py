"""Catalogue B strategies (statistical_arbitrage, liquidity_provision, vwap,
microstructure_alpha) show their models' signatures on constructed books and trades.

Each kind compiles once per session (numba cache): the tests per kind are few and share hosts
built by small helpers."""
from __future__ import annotations

import numpy as np
import pytest

from common.schema import ConfigError
from shm.records import (EXEC_FILL, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE, ORD_IOC,
                         ORD_POST_ONLY, SIDE_BUY, SIDE_SELL)
from strategies.host import HostedStrategy
from strategies.registry import make_strategy, validate_strategy
from tests.unit.scenario_records import ack, execs, fill, instrument, snapshot, top, trade

MS = 1_000_000
SEC = 1_000_000_000


# ------------------------------------------------------------------------------------------
# statistical_arbitrage
# ------------------------------------------------------------------------------------------
SA_PARAMS = {"lookback_window": 100, "sample_ms": 100.0, "correlation_threshold": 0.6,
             "zscore_entry": 2.0, "zscore_exit": 0.5, "zscore_stop": 50.0, "cost_bps": 6.0,
             "pair_notional": 1000.0, "max_gross_notional": 2000.0}
UNIVERSE = [instrument(1, 1), instrument(2, 2), instrument(3, 1, "ETH-USD", group="ETH")]


def _book(inst, mid, t, first, half=5, qty=100):
    if first:
        return snapshot(inst, [(mid - half, qty)], [(mid + half, qty)], t)
    return top(inst, mid - half, qty, mid + half, qty, t)


def _two_books(t, p1, p2):
    return np.concatenate([_book(1, p1, t, t == 100 * MS), _book(2, p2, t, t == 100 * MS)])


def _run_pair(y_log_path, x_log_path, **over):
    h = HostedStrategy(make_strategy("statistical_arbitrage", {**SA_PARAMS, **over},
                                     UNIVERSE[:2], 7), timer_ms=0)
    outs = []
    for n, (ly, lx) in enumerate(zip(y_log_path, x_log_path)):
        t = (n + 1) * 100 * MS
        py, px = int(round(100_000 * np.exp(ly))), int(round(100_000 * np.exp(lx)))
        outs.append(h.step(_two_books(t, py, px), now_ns=t).copy())
    return h, outs


def _paths(seed, cointegrated):
    rng = np.random.default_rng(seed)
    n = 160
    x = np.cumsum(rng.normal(0, 5e-4, n))
    if cointegrated:
        u = np.zeros(n)
        for k in range(1, n):
            u[k] = 0.7 * u[k - 1] + rng.normal(0, 1e-4)
        y = x + u
    else:
        y = np.cumsum(rng.normal(0, 5e-4, n))
    y[-1] += 2e-3     # the last sample: Y jumps 20 bps away from its relation to X
    return y, x


def test_stat_arb_enters_a_diverging_cointegrated_pair_and_not_an_uncorrelated_one():
    y, x = _paths(1, True)
    h, outs = _run_pair(y[:-1], x[:-1])
    assert sum(len(o) for o in outs) == 0          # no dislocation yet: nothing sent
    h, outs = _run_pair(y, x)
    q = 0
    assert h.st.corr[q] > 0.9 and 0.8 < h.st.beta[q] < 1.2
    assert h.st.s[q] > 2.0 and h.st.n_entries == 1
    out = outs[-1]
    # Y rich: sell Y (instrument 1), buy X (instrument 2), both marketable IOCs
    assert sorted((int(r["instrument_id"]), int(r["side"])) for r in out) == \
        [(1, SIDE_SELL), (2, SIDE_BUY)]
    assert all(r["order_type"] == ORD_IOC for r in out)
    notional = [r["qty_lots"] * 1000.0 * 0.0001 for r in out]   # price ~1000, lot 0.0001
    assert all(n <= 1000.0 * 1.05 for n in notional)           # the per-pair cap

    y, x = _paths(2, False)
    h, outs = _run_pair(y, x)
    assert abs(h.st.corr[0]) < 0.6 and h.st.eligible[0] == 0
    assert sum(len(o) for o in outs) == 0 and h.st.n_entries == 0


def test_stat_arb_takes_a_universe_and_rejects_bad_counts_and_params():
    assert validate_strategy("statistical_arbitrage", {}, UNIVERSE[:1], "strategies[0]") == [
        "strategies[0].instruments = ['BTC-USD@sim1']: statistical_arbitrage trades 2 to 16 "
        "instruments (SYMBOL@VENUE), got 1"]
    assert validate_strategy("statistical_arbitrage", {}, UNIVERSE, "s") == []
    with pytest.raises(ConfigError, match="zscore_exit < zscore_entry"):
        make_strategy("statistical_arbitrage", {"zscore_entry": 0.2}, UNIVERSE, 1)
    with pytest.raises(ConfigError, match="correlation_threshold"):
        make_strategy("statistical_arbitrage", {"correlation_threshold": 2.0}, UNIVERSE, 1)


# ------------------------------------------------------------------------------------------
# liquidity_provision
# ------------------------------------------------------------------------------------------
LP_PARAMS = {"levels": 4, "liquidity_target": 2000.0, "band_bps": 10.0,
             "min_half_spread_bps": 1.0, "vol_mult": 0.0, "max_inventory_notional": 1000.0,
             "inventory_skew_bps": 4.0, "min_requote_interval_ms": 0.0}
TICK_VALUE = 0.01 * 0.0001      # quote per tick per lot of instrument(1)


def _resting(h):
    o = h.ctx.orders
    live = o[o["state"] != 0]
    return live[live["side"] == SIDE_BUY], live[live["side"] == SIDE_SELL]


def _notional_in_band(rows, mid, band_bps):
    inside = np.abs(rows["px"] - mid) <= mid * band_bps * 1e-4
    return float((rows["px"][inside] * rows["leaves"][inside]).sum() * TICK_VALUE)


def test_liquidity_ladder_keeps_its_notional_in_band_and_skews_with_inventory():
    h = HostedStrategy(make_strategy("liquidity_provision", LP_PARAMS, [instrument(1, 1)], 8),
                       timer_ms=0)
    mid = 100_000
    out = h.step(snapshot(1, [(mid - 5, 50)], [(mid + 5, 50)], 1 * MS), now_ns=1 * MS).copy()
    assert len(out) == 8 and all(r["order_type"] == ORD_POST_ONLY for r in out)
    bids, asks = _resting(h)
    assert len(bids) == 4 and len(asks) == 4
    assert bids["px"].max() < mid + 5 and asks["px"].min() > mid - 5      # post-only
    assert bids["px"].max() < asks["px"].min()                            # no self-cross
    assert len(set(bids["px"])) == 4 and len(set(asks["px"])) == 4        # a ladder
    for side in (bids, asks):    # the commitment: target notional within the band, +-2 %
        assert abs(_notional_in_band(side, mid, 10.0) - 2000.0) <= 40.0
        assert np.all(np.abs(side["px"] - mid) <= mid * 10e-4)
    center_flat = h.st.center
    h.step(ex=execs(*[ack(r) for r in out]), now_ns=2 * MS)

    # buy the best bid and half the next: long ~750 of 1000 max inventory notional
    best = [r for r in out if r["side"] == SIDE_BUY]
    best.sort(key=lambda r: -r["px_ticks"])
    q = int(best[0]["qty_lots"]) + int(best[1]["qty_lots"]) // 2
    h.step(ex=execs(fill(best[0]), fill(best[1], qty=int(best[1]["qty_lots"]) // 2)),
           now_ns=3 * MS)
    assert h.positions[0]["pos"] == q and h.st.q > 0.5
    # long: the centre moves down, the bids shrink, the asks keep their full size
    assert h.st.center < center_flat
    assert h.st.bid_qty[0] < h.st.ask_qty[0]
    h.step(top(1, mid - 5, 50, mid + 5, 50, 4 * MS), now_ns=4 * MS)
    assert 0 < h.st.ask_px[0] < out[[r["side"] == SIDE_SELL for r in out]]["px_ticks"].min()
    # no quotes on a one-sided book
    h2 = HostedStrategy(make_strategy("liquidity_provision", LP_PARAMS, [instrument(1, 1)], 8),
                        timer_ms=0)
    assert len(h2.step(snapshot(1, [(mid - 5, 50)], [], MS), now_ns=MS)) == 0
    with pytest.raises(ConfigError, match="levels"):
        make_strategy("liquidity_provision", {"levels": 0}, [instrument(1, 1)], 8)


# ------------------------------------------------------------------------------------------
# vwap (modes vwap, pov, is, twap)
# ------------------------------------------------------------------------------------------
from shm.records import EXEC_CANCEL_ACK, EXEC_REPLACE_ACK  # noqa: E402
from tests.unit.scenario_records import report  # noqa: E402


def _fill_everything(out):
    """A venue that fills every new or replaced child in full at its price at once."""
    reps = []
    for r in out:
        if r["kind"] == INTENT_NEW:
            reps.append(fill(r))
        elif r["kind"] == INTENT_REPLACE:
            reps.append(report(r, EXEC_REPLACE_ACK, leaves=int(r["qty_lots"])))
            reps.append(fill(r))
        elif r["kind"] == INTENT_CANCEL:
            reps.append(report(r, EXEC_CANCEL_ACK))
    return execs(*reps) if reps else None


def _drive_parent(params, seconds=40.0, tape_lots=100, step_ms=100):
    """Run one parent on a steady book with ``tape_lots`` traded per step; every child fills.
    Returns (host, [(t_s, filled_lots, tape_lots_so_far)])."""
    h = HostedStrategy(make_strategy("vwap", params, [instrument(1, 1)], 9), timer_ms=0)
    mid, path, tape, ex = 100_000, [], 0, None
    for n in range(int(seconds * 1000 / step_ms) + 1):
        t = (n + 1) * step_ms * MS
        md = _book(1, mid, t, n == 0)
        if n > 0:
            md = np.concatenate([md, trade(1, mid + 5 if n % 2 else mid - 5, tape_lots,
                                           SIDE_BUY if n % 2 else SIDE_SELL, t)])
            tape += tape_lots
        out = h.step(md, ex, now_ns=t).copy()
        ex = _fill_everything(out)
        path.append((n * step_ms / 1000.0, int(h.st.filled_lots), tape))
    return h, path


def test_pov_never_exceeds_its_participation_cap():
    h, path = _drive_parent({"mode": "pov", "quantity_lots": 1_000_000, "end_s": 30.0,
                             "participation_rate": 0.1, "child_interval_ms": 100.0},
                            seconds=30.0)
    assert path[-1][1] > 0.08 * path[-1][2]            # it does participate ...
    for _t, filled, tape in path:                      # ... and never above 10 % of the tape
        assert filled <= 0.1 * tape
    assert h.st.max_part <= 0.1 + 1e-12


def test_vwap_follows_its_volume_curve_and_is_front_loads_with_risk_aversion():
    curve = "4,1,1,4"       # a U-shaped day in four bins: 40 %, 10 %, 10 %, 40 %
    h, path = _drive_parent({"mode": "vwap", "quantity_lots": 10_000, "end_s": 40.0,
                             "volume_curve": curve, "behind_tolerance": 0.02})
    cum = np.cumsum([0.4, 0.1, 0.1, 0.4])
    for t, filled, _tape in path:
        k = min(int(t // 10), 3)
        want = (cum[k - 1] if k else 0.0) + [0.4, 0.1, 0.1, 0.4][k] * (t - 10 * k) / 10
        # tolerance: behind_tolerance (2 %) + one child interval ahead (<= 0.8 %) + rounding
        assert abs(filled / 10_000 - min(want, 1.0)) <= 0.03, (t, filled, want)
    assert h.st.filled_lots == 10_000 and h.st.done == 1
    # the report: a buy filled at its prices against the arrival mid and the tape's VWAP
    assert h.st.arrival_px_ticks == 100_000 and abs(h.st.market_vwap_ticks - 100_000) < 0.1
    assert h.st.slippage_arrival_bps == pytest.approx(
        (h.st.avg_px_ticks / 100_000 - 1) * 1e4)

    def done_at(path, t_s):
        return [f for t, f, _ in path if t >= t_s][0] / 10_000

    twap = _drive_parent({"mode": "twap", "quantity_lots": 10_000, "end_s": 40.0})[1]
    low = _drive_parent({"mode": "is", "quantity_lots": 10_000, "end_s": 40.0,
                         "risk_aversion": 1e-4})[1]
    high = _drive_parent({"mode": "is", "quantity_lots": 10_000, "end_s": 40.0,
                          "risk_aversion": 1e-2})[1]
    # kappa = sqrt(lambda sigma^2 / eta): 0.03 / s (kappa T = 1.2) and 0.3 / s (kappa T = 12)
    x = 0.25
    want_low = 1 - np.sinh(0.03 * 40 * (1 - x)) / np.sinh(0.03 * 40)
    want_high = 1 - np.sinh(0.3 * 40 * (1 - x)) / np.sinh(0.3 * 40)
    assert abs(done_at(low, 10.0) - want_low) <= 0.03
    assert abs(done_at(high, 10.0) - want_high) <= 0.03
    assert done_at(twap, 10.0) < done_at(low, 10.0) < done_at(high, 10.0)
    with pytest.raises(ConfigError, match="volume_curve"):
        make_strategy("vwap", {"volume_curve": "1,x"}, [instrument(1, 1)], 9)
    with pytest.raises(ConfigError, match="end_s"):
        make_strategy("vwap", {"start_s": 10.0, "end_s": 5.0}, [instrument(1, 1)], 9)


# ------------------------------------------------------------------------------------------
# microstructure_alpha
# ------------------------------------------------------------------------------------------
def test_ridge_fit_recovers_known_coefficients():
    from strategies.microstructure_alpha import r_squared, ridge_fit

    rng = np.random.default_rng(3)
    X = rng.normal(0, [1.0, 0.3, 2.0, 0.5, 0.2], size=(5000, 5))
    true = np.array([1.5, -2.0, 0.25, 4.0, 10.0])
    y = 0.7 + X @ true + rng.normal(0, 0.5, 5000)
    coef, icpt = ridge_fit(X, y, ridge=1e-6)
    assert np.allclose(coef, true, rtol=0.02, atol=0.02) and abs(icpt - 0.7) < 0.05
    assert r_squared(X, y, coef, icpt) > 0.95
    shrunk, _ = ridge_fit(X, y, ridge=1.0)         # the penalty shrinks towards 0
    assert np.all(np.abs(shrunk) < np.abs(coef))


def test_microstructure_alpha_buys_a_bid_heavy_book_only_past_its_costs(tmp_path, capsys):
    params = {"coef_ofi": 0.0, "coef_tsi": 0.0, "coef_spread": 0.0, "coef_depth": 0.0,
              "coef_micro": 8.0, "intercept_bps": 0.0, "alpha_threshold_bps": 0.5, "taker_fee_bps": 1.0,
              "order_notional": 1000.0, "horizon_ms": 500.0}
    def run(bid_qty, ask_qty):
        h = HostedStrategy(make_strategy("microstructure_alpha", params, [instrument(1, 1)], 4))
        outs = []
        for n in range(3):
            t = (n + 1) * MS
            outs.append(h.step(snapshot(1, [(99_995, bid_qty)], [(100_005, ask_qty)], t),
                               now_ns=t).copy())
        return h, np.concatenate(outs)
    # microprice deviation (bid_qty heavy): (0.45 x ... ) -> alpha = 8 x 0.4 = 3.2 bps > 2.0
    h, out = run(90, 10)
    assert h.st.x[4] == pytest.approx(0.4) and h.st.alpha == pytest.approx(3.2)
    assert len(out) == 1 and out[0]["side"] == SIDE_BUY and out[0]["order_type"] == ORD_IOC
    assert out[0]["px_ticks"] == 100_005 and out[0]["qty_lots"] == 10_000
    h, out = run(50, 50)                      # balanced: alpha 0, nothing
    assert len(out) == 0
    h, out = run(60, 40)                      # alpha 0.8 bps: below fee + half spread + 0.5
    assert len(out) == 0 and 0 < h.st.alpha < h.st.hurdle
    h, out = run(10, 90)
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL

    from pipeline.cli import main as cli_main
    assert cli_main(["fit", "microstructure_alpha", "--data", str(tmp_path / "nope.rec")]) == 2
    assert "nope.rec" in capsys.readouterr().err
    bad = tmp_path / "bad.rec"
    bad.write_text("not a recording\n")
    assert cli_main(["fit", "microstructure_alpha", "--data", str(bad)]) == 2
    assert "bad.rec" in capsys.readouterr().err
