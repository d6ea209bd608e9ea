"""Catalogue A (issue 16): order_book_imbalance, mean_reversion, volatility_trading, scalping and
momentum_burst show their model's signature on hand-built books and trades, driven through the
strategy runtime (``HostedStrategy``) as tests/unit/test_strategies.py does. Each kind compiles
once per parameter-record type (about 10-20 s cold), so every test of a kind builds its host
from the same parameter set (only values change, never the fields)."""
from __future__ import annotations

import numpy as np
import pytest

from common.schema import ConfigError
from shm.records import (
    EXEC_CANCEL_ACK, INTENT_CANCEL, INTENT_NEW, ORD_IOC, ORD_POST_ONLY, SIDE_BUY, SIDE_SELL,
)
from strategies.host import HostedStrategy
from strategies.registry import make_strategy
from tests.unit.scenario_records import (
    ack, execs, fill, instrument, report, snapshot, top, trade,
)

MS = 1_000_000
BTC = instrument(1, 1)          # tick 0.01, lot 0.0001: 100_000 ticks = 1_000.00


def host(kind, params, timer_ms=10.0):
    return HostedStrategy(make_strategy(kind, params, [BTC], 7), timer_ms=timer_ms)


def news(out):
    return [r for r in out if r["kind"] == INTENT_NEW]


def book(bid_sizes, ask_sizes, ts, bid=99_999, ask=100_001):
    """A five-level book around 100_000 with the given sizes per level."""
    return snapshot(1, [(bid - k, q) for k, q in enumerate(bid_sizes)],
                    [(ask + k, q) for k, q in enumerate(ask_sizes)], ts)


def test_bad_parameters_name_their_key():
    cases = [("order_book_imbalance", {"imbalance_threshold": 1.5}, "imbalance_threshold"),
             ("order_book_imbalance", {"book_depth": 0}, "book_depth"),
             ("order_book_imbalance", {"exit_threshold": 0.9, "imbalance_threshold": 0.5},
              "exit_threshold")]
    for kind, params, key in cases:
        with pytest.raises(ConfigError, match=key):
            make_strategy(kind, params, [BTC], 7)


# ------------------------------------------------------------------------------------------
# order_book_imbalance
# ------------------------------------------------------------------------------------------
OBI = {"book_depth": 5, "depth_decay": 0.6, "ofi_weight": 0.0, "imbalance_threshold": 0.5,
       "signal_bps": 5.0, "fee_bps": 1.0, "max_hold_ms": 1000.0, "order_qty_lots": 3}


def test_obi_buys_after_a_bid_heavy_book_and_not_after_a_balanced_one():
    heavy = host("order_book_imbalance", OBI)
    out = heavy.step(book([90] * 5, [10] * 5, 1_000), now_ns=1_000)
    assert len(out) == 1
    r = out[0]
    assert (r["side"], r["order_type"], r["px_ticks"], r["qty_lots"]) == (SIDE_BUY, ORD_IOC,
                                                                          100_001, 3)
    assert heavy.st.sig == pytest.approx(0.8)
    balanced = host("order_book_imbalance", OBI)
    for n in range(20):
        t = 1_000 + n * 50 * MS
        assert len(balanced.step(book([40 + n % 3] * 5, [40] * 5, t), now_ns=t)) == 0
    light = host("order_book_imbalance", OBI)
    out = light.step(book([10] * 5, [90] * 5, 1_000), now_ns=1_000)
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["px_ticks"] == 99_999


def test_obi_does_not_trade_a_signal_that_does_not_pay_the_spread_and_fees():
    # the same lean with a 40-tick spread: half spread 2 bps + 1 bp fee, each way, > 5 x 0.8
    h = host("order_book_imbalance", OBI)
    out = h.step(book([90] * 5, [10] * 5, 1_000, bid=99_980, ask=100_020), now_ns=1_000)
    assert len(out) == 0 and h.st.n_cost_blocked == 1


def test_obi_leaves_when_the_imbalance_flips_or_the_holding_time_is_over():
    h = host("order_book_imbalance", OBI)
    out = h.step(book([90] * 5, [10] * 5, 1_000), now_ns=1_000).copy()
    h.step(ex=fill(out[0]), now_ns=2_000)
    assert h.positions[0]["pos"] == 3
    # still bid-heavy: holds
    assert len(h.step(book([80] * 5, [10] * 5, 3_000), now_ns=3_000)) == 0
    out = h.step(book([10] * 5, [80] * 5, 4_000), now_ns=4_000).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["qty_lots"] == 3
    h.step(ex=fill(out[0]), now_ns=5_000)
    # flat, the lean is the other way: enters short after the entry interval
    t = 200 * MS
    out = h.step(book([10] * 5, [80] * 5, t), now_ns=t).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL
    h.step(ex=fill(out[0]), now_ns=t + 1)
    assert h.positions[0]["pos"] == -3
    # the lean stays but max_hold_ms passes: covers on the timer
    out = h.step(now_ns=t + 1_001 * MS).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_BUY and out[0]["qty_lots"] == 3


# ------------------------------------------------------------------------------------------
# mean_reversion
# ------------------------------------------------------------------------------------------
MR = {"reversion_window": 50, "sample_ms": 100.0, "z_score_threshold": 2.5, "exit_z": 0.0,
      "stop_z": 8.0, "trend_threshold": 2.0, "order_qty_lots": 4, "max_hold_ms": 60_000.0}


def drive(h, mids, t0=1_000, fill_all=True):
    """One top-of-book update per 100 ms sample at each mid (spread 2 ticks); every intent is
    filled at its limit on the next step. Returns [(sample index, intent), ...]."""
    sent = []
    ex = None
    for n, m in enumerate(mids):
        t = t0 + n * 100 * MS
        md = top(1, m - 1, 10, m + 1, 10, t)
        if n == 0:
            md = np.concatenate([snapshot(1, [], [], t), md])
        out = h.step(md, ex, now_ns=t).copy()
        ex = execs(*[fill(r) for r in out]) if (fill_all and len(out)) else None
        sent += [(n, r) for r in out]
    return sent


def quiet(n, rng, center=100_000):
    return [center + int(v) for v in rng.integers(-3, 4, n)]


def test_mean_reversion_sells_above_its_band_and_buys_back_at_the_mean():
    rng = np.random.default_rng(1)
    h = host("mean_reversion", MR)
    mids = quiet(80, rng) + [100_040] + quiet(3, rng) + quiet(5, rng)
    sent = drive(h, mids)
    assert [n for n, _ in sent][:1] == [80]    # sold on the spike's own sample
    first, second = sent[0][1], sent[1][1]
    assert first["side"] == SIDE_SELL and first["order_type"] == ORD_IOC
    assert first["qty_lots"] == 4 and first["px_ticks"] == 100_039
    assert second["side"] == SIDE_BUY and second["qty_lots"] == 4   # back at the mean
    assert h.positions[0]["pos"] == 0 and h.st.n_entries == 1 and h.st.n_exits == 1


def test_mean_reversion_stays_flat_in_a_trend_and_fades_the_same_jump_without_the_filter():
    def trend_path():
        rng = np.random.default_rng(2)
        up = [100_000 + 2 * n + int(v) for n, v in enumerate(rng.integers(-2, 3, 80))]
        return up + [up[-1] + 45] + [up[-1] + 47 + 2 * n for n in range(5)]
    h = host("mean_reversion", MR)
    assert drive(h, trend_path()) == []
    assert h.st.n_trend_blocked >= 1 and h.st.trend > 3.0
    no_filter = host("mean_reversion", {**MR, "trend_threshold": 100.0})
    sent = drive(no_filter, trend_path())
    assert sent and sent[0][1]["side"] == SIDE_SELL


# ------------------------------------------------------------------------------------------
# volatility_trading
# ------------------------------------------------------------------------------------------
VT = {"volatility_window": 20, "bar_ms": 100.0, "ewma_halflife_bars": 5.0,
      "volatility_threshold": 1.3, "compression_threshold": 0.7, "fade_z": 1.5, "hold_bars": 3,
      "risk_budget_quote": 0.1, "max_position_lots": 100_000}


def bars(h, a, jump, n_calm=30, t0=1_000):
    """Bars of 100 ms: each calm bar goes c -> c + a (range a, close unchanged); then one bar
    jumps by ``jump`` ticks; then calm bars at the new level. Intents are filled at their limit
    on the next step. Returns [(bar index, intent), ...]."""
    c = 100_000
    sent, ex = [], None
    for b in range(n_calm + 6):
        lo = c if b != n_calm else c + a
        hi = c + a if b != n_calm else c + a + jump
        if b > n_calm:
            lo, hi = c + jump, c + jump + a
        for k, m in enumerate((lo, hi)):
            t = t0 + b * 100 * MS + k * 40 * MS
            md = top(1, m - 1, 10, m + 1, 10, t)
            if b == 0 and k == 0:
                md = np.concatenate([snapshot(1, [], [], t), md])
            out = h.step(md, ex, now_ns=t).copy()
            ex = execs(*[fill(r) for r in out]) if len(out) else None
            sent += [(b, r) for r in out]
    return sent


def test_volatility_trading_breaks_out_on_expansion_and_fades_a_stretch_in_compression():
    h = host("volatility_trading", VT, timer_ms=10.0)
    sent = bars(h, a=10, jump=90)
    assert sent and sent[0][1]["side"] == SIDE_BUY and sent[0][1]["order_type"] == ORD_IOC
    assert h.st.n_breakouts >= 1 and h.st.n_fades == 0
    # closed hold_bars after the signal
    assert sent[-1][1]["side"] == SIDE_SELL and h.positions[0]["pos"] == 0
    fade = host("volatility_trading", VT, timer_ms=10.0)
    sent = bars(fade, a=10, jump=20)
    assert sent and sent[0][1]["side"] == SIDE_SELL     # a stretched quiet market is faded
    assert fade.st.n_fades >= 1 and fade.st.n_breakouts == 0


def test_volatility_trading_halves_its_size_when_volatility_doubles():
    sizes = []
    for a in (10, 20):
        h = host("volatility_trading", VT, timer_ms=10.0)
        sent = bars(h, a=a, jump=9 * a)
        assert sent and sent[0][1]["side"] == SIDE_BUY
        sizes.append(int(sent[0][1]["qty_lots"]))
    assert sizes[0] > 100
    assert abs(sizes[0] - 2 * sizes[1]) <= 2, sizes


# ------------------------------------------------------------------------------------------
# momentum_burst
# ------------------------------------------------------------------------------------------
MB = {"momentum_window_ms": 500.0, "ignition_threshold": 1.0, "imbalance_confirm": 0.6,
      "volume_confirm": 1.5, "volume_halflife_s": 10.0, "exit_imbalance": 0.2,
      "stop_bps": 20.0, "max_hold_time_ms": 3000.0, "cooldown_ms": 2000.0, "order_qty_lots": 5}


def flow(h, t0, n, mid_of, trade_of, ex=None):
    """n steps 25 ms apart: a top of book at mid_of(k) (spread 2 ticks) and, where trade_of(k)
    gives (side, qty), an aggressor trade at the touch. Intents are filled at their limit on
    the next step. Returns the intents and the last step's fills."""
    sent = []
    for k in range(n):
        t = t0 + k * 25 * MS
        m = mid_of(k)
        recs = [top(1, m - 1, 20, m + 1, 20, t)]
        if t0 == 1_000 and k == 0:
            recs.insert(0, snapshot(1, [], [], t))
        tr = trade_of(k)
        if tr is not None:
            side, q = tr
            recs.append(trade(1, m + 1 if side == SIDE_BUY else m - 1, q, side, t))
        out = h.step(np.concatenate(recs), ex, now_ns=t).copy()
        ex = execs(*[fill(r) for r in out]) if len(out) else None
        sent += list(out)
    return sent, ex


def test_momentum_burst_joins_a_one_sided_burst_and_leaves_when_it_decays():
    h = host("momentum_burst", MB)
    rng = np.random.default_rng(5)
    walk = 100_000 + np.cumsum(rng.integers(-1, 2, 240))
    sides = rng.integers(1, 3, 240)
    # 6 s of noise: random-walk mid, random aggressor sides, 2 lots every 50 ms: nothing fires
    sent, ex = flow(h, 1_000, 240, lambda k: int(walk[k]),
                    lambda k: (int(sides[k]), 2) if k % 2 else None)
    assert sent == [] and h.st.n_ignitions == 0
    # a burst started by others: buyers lift 8 lots every 25 ms and the mid climbs a tick a step
    base = int(walk[-1])
    t1 = 1_000 + 240 * 25 * MS
    sent, ex = flow(h, t1, 30, lambda k: base + 2 * k, lambda k: (SIDE_BUY, 8), ex)
    assert len(sent) == 1
    assert (sent[0]["side"], sent[0]["order_type"], sent[0]["qty_lots"]) == (SIDE_BUY, ORD_IOC, 5)
    assert h.st.n_ignitions == 1
    # the burst is over: sellers and buyers alternate, flat mid: it sells out, once
    t2 = t1 + 30 * 25 * MS
    top_px = base + 58
    sent, ex = flow(h, t2, 80, lambda k: top_px,
                    lambda k: (SIDE_SELL if k % 2 else SIDE_BUY, 2), ex)
    assert len(sent) == 1 and sent[0]["side"] == SIDE_SELL and sent[0]["qty_lots"] == 5
    assert h.positions[0]["pos"] == 0 and h.st.n_exits == 1


def test_momentum_burst_ignores_price_moves_without_one_sided_flow():
    # the same climbing mid, but the prints are two-sided: no ignition
    h = host("momentum_burst", MB)
    sent, ex = flow(h, 1_000, 240, lambda k: 100_000,
                    lambda k: (1 + k % 2, 2) if k % 2 == 0 else None)
    sent2, _ = flow(h, 1_000 + 240 * 25 * MS, 30, lambda k: 100_000 + 2 * k,
                    lambda k: (SIDE_BUY if k % 2 else SIDE_SELL, 8), ex)
    assert sent + sent2 == [] and h.st.n_ignitions == 0


# ------------------------------------------------------------------------------------------
# scalping
# ------------------------------------------------------------------------------------------
SC = {"tick_sensitivity": 3, "pattern_window_ms": 200.0, "volume_spike_mult": 2.0,
      "confidence_threshold": 0.6, "target_profit_bps": 2.0, "stop_bps": 30.0,
      "max_hold_time_ms": 2000.0, "entry_timeout_ms": 500.0, "entry_interval_ms": 1000.0,
      "order_qty_lots": 4}


def scalp_to_entry(h):
    """3 s of a quiet balanced market, then a burst: the mid climbs a tick per 25 ms on heavy
    buying into a bid-heavy book. Returns the entry intent and the time."""
    t = 1_000
    h.step(snapshot(1, [(99_999, 20)], [(100_001, 20)], t), now_ns=t)
    for k in range(1, 120):
        t = 1_000 + k * 25 * MS
        md = [top(1, 99_999, 20, 100_001, 20, t)]
        if k % 4 == 0:
            buy = k % 8 != 0
            md.append(trade(1, 100_001 if buy else 99_999, 1, SIDE_BUY if buy else SIDE_SELL, t))
        assert len(h.step(np.concatenate(md), now_ns=t)) == 0
    for k in range(1, 12):
        t = 1_000 + (120 + k) * 25 * MS
        m = 100_000 + k
        out = h.step(np.concatenate([top(1, m - 1, 60, m + 1, 10, t),
                                     trade(1, m + 1, 10, SIDE_BUY, t)]), now_ns=t).copy()
        if len(out):
            return out[0], t
    raise AssertionError(f"no entry: conf {h.st.conf}, pattern {h.st.pattern}")


def test_scalping_enters_post_only_on_a_burst_and_exits_at_its_target():
    h = host("scalping", SC)
    entry, t = scalp_to_entry(h)
    assert (entry["side"], entry["order_type"], entry["qty_lots"]) == (SIDE_BUY, ORD_POST_ONLY, 4)
    bid = entry["px_ticks"]
    assert h.st.pattern == 1 and h.st.conf >= 0.6
    # filled: a post-only take-profit 2 bps above the entry goes out at once
    out = h.step(ex=execs(ack(entry), fill(entry)), now_ns=t + MS).copy()
    assert len(out) == 1
    tp = out[0]
    assert (tp["side"], tp["order_type"], tp["qty_lots"]) == (SIDE_SELL, ORD_POST_ONLY, 4)
    assert tp["px_ticks"] == bid + 21      # ceil(2e-4 x ~100_010)
    h.step(ex=ack(tp), now_ns=t + 2 * MS)
    h.step(ex=fill(tp), now_ns=t + 3 * MS)
    assert h.positions[0]["pos"] == 0 and h.st.n_targets == 1
    # a quiet market afterwards: no new entry
    for k in range(1, 40):
        tt = t + k * 25 * MS
        assert len(h.step(top(1, 100_010, 20, 100_012, 20, tt), now_ns=tt)) == 0


def test_scalping_leaves_at_max_hold_time_and_never_stays_balanced_out():
    h = host("scalping", SC)
    entry, t = scalp_to_entry(h)
    out = h.step(ex=execs(ack(entry), fill(entry)), now_ns=t + MS).copy()
    tp = out[0]
    h.step(ex=ack(tp), now_ns=t + 2 * MS)
    m = 100_011
    sent = []
    for k in range(1, 100):     # the mid idles below the target for 2.5 s
        tt = t + 2 * MS + k * 25 * MS
        out = h.step(top(1, m - 1, 20, m + 1, 20, tt), now_ns=tt).copy()
        sent += list(out)
        if any(r["kind"] == INTENT_CANCEL for r in out):
            out = h.step(ex=execs(*[report(r, EXEC_CANCEL_ACK) for r in out
                                    if r["kind"] == INTENT_CANCEL]),
                         now_ns=tt + 1).copy()
            assert len(out) == 1
            ioc = out[0]
            assert (ioc["side"], ioc["order_type"], ioc["qty_lots"]) == (SIDE_SELL, ORD_IOC, 4)
            assert tt - (t + MS) >= 2000 * MS     # not before max_hold_time_ms
            h.step(ex=fill(ioc), now_ns=tt + 2)
            break
    assert h.positions[0]["pos"] == 0 and h.st.n_timeouts == 1
    assert [r["kind"] for r in sent] == [INTENT_CANCEL]
