"""Signal agents' computations (strategies/signals.py) and the runtime's side of signals: the
signal table every strategy reads (missing is NaN, never 0: not subscribed, never arrived,
invalid, stale), the on_signal hook in the one runtime (HostedStrategy and the live host step
over a real broadcast ring), and a hook that raises halting the strategy like any other."""
from __future__ import annotations

import hashlib
import inspect
import math
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from market.book import L2Book, book_apply_batch
from shm.records import (SFLAG_VALID, SIG_CORRELATION, SIG_ORDER_FLOW_IMB, SIG_REALIZED_VOL,
                         SIGNAL_DTYPE)
from strategies import registry
from strategies.base import (HALT_NAMES, HALT_SIGNAL, Strategy, signal_age_ns, signal_pair,
                             signal_value)
from strategies.features import SECONDS_PER_YEAR_365D, pearson_correlation
from strategies.host import HostedStrategy
from strategies.signals import agent_step, make_agent
from tests.unit.scenario_records import instrument, invalidate, snapshot, top

MS = 1_000_000


# ------------------------------------------------------------------------------------------
# The agents' computations
# ------------------------------------------------------------------------------------------
class AgentRig:
    """One agent over its own books, stepped by hand: ``step(md, now)`` -> records published."""

    def __init__(self, kind, ids, **kw):
        self.book = L2Book(max(ids), 8)
        self.agent = make_agent(kind, ids, **kw)

    def step(self, md, now_ns):
        px, qty, meta = self.book.arrays
        if md is not None and len(md):
            book_apply_batch(px, qty, meta, md, len(md))
        n = 0 if md is None else len(md)
        md = md if md is not None else snapshot(1, [], [])[:0]
        k = agent_step(self.agent, px, qty, meta, md, n, np.int64(now_ns))
        return self.agent.out[:k].copy()


def test_realized_vol_agent_publishes_the_annualised_vol_of_its_sampled_mids():
    rig = AgentRig("realized_vol", [1], window=10, sample_ms=10.0, publish_ms=60.0)
    mids_x2 = [20000, 20010, 19990, 20030, 20000, 20020]
    t = 0
    rig.step(snapshot(1, [(9999, 5)], [(10001, 5)], ts=1), t)   # starts the timers
    published = []
    for m2 in mids_x2:
        t += 10 * MS
        bid = m2 // 2 - 1
        published.append(rig.step(top(1, bid, 5, m2 - bid, 5, t), t))
    # samples at 10 .. 60 ms: 5 returns, published at 60 ms; checked against an independent
    # computation from the same mids
    assert [len(o) for o in published] == [0, 0, 0, 0, 0, 1]
    got = published[-1]
    assert got[0]["kind"] == SIG_REALIZED_VOL
    assert got[0]["flags"] & SFLAG_VALID and got[0]["instrument_id"] == 1
    mids = np.array(mids_x2, dtype=float) / 2
    rets = np.diff(np.log(mids))
    span_s = 0.05   # first sample at 10 ms, last at 60 ms
    want = math.sqrt((rets ** 2).sum() * SECONDS_PER_YEAR_365D / span_s)
    assert got[0]["value"] == pytest.approx(want, rel=1e-9)
    assert got[0]["n_obs"] == 5


def test_realized_vol_is_published_invalid_never_zero_before_a_return_and_on_a_bad_book():
    rig = AgentRig("realized_vol", [1], window=10, sample_ms=10.0, publish_ms=10.0)
    rig.step(snapshot(1, [(9999, 5)], [(10001, 5)], ts=1), 0)
    out = rig.step(None, 10 * MS)          # one mid, no return yet
    assert len(out) == 1 and not out[0]["flags"] & SFLAG_VALID and math.isnan(out[0]["value"])
    rig.step(top(1, 9998, 5, 10000, 5, 15 * MS), 20 * MS)
    out = rig.step(invalidate(1, 25 * MS), 30 * MS)   # the book went invalid
    assert len(out) == 1 and not out[0]["flags"] & SFLAG_VALID and math.isnan(out[0]["value"])


def test_order_flow_imbalance_agent_sums_the_flow_and_tells_zero_from_missing():
    rig = AgentRig("order_flow_imbalance", [1], publish_ms=10.0)
    rig.step(snapshot(1, [(100, 5)], [(102, 5)], ts=1), 0)
    out = rig.step(None, 10 * MS)   # no e_n in the interval: missing
    assert len(out) == 1 and not out[0]["flags"] & SFLAG_VALID
    rig.step(top(1, 100, 8, 102, 5, 11 * MS), 11 * MS)     # bid size +3: e = +3
    out = rig.step(top(1, 100, 8, 102, 2, 12 * MS), 20 * MS)   # ask size -3: e = +3
    assert out[0]["flags"] & SFLAG_VALID and out[0]["value"] == 6.0
    out = rig.step(top(1, 100, 8, 102, 2, 25 * MS), 30 * MS)   # watched, unchanged: a real 0
    assert out[0]["flags"] & SFLAG_VALID and out[0]["value"] == 0.0


def test_correlation_agent_publishes_each_pair_once_from_aligned_returns():
    rig = AgentRig("correlation", [1, 2, 3], window=50, sample_ms=10.0, publish_ms=1000.0)
    rig.step(np.concatenate([snapshot(i, [(9999, 5)], [(10001, 5)], ts=1) for i in (1, 2, 3)]),
             0)
    rng = np.random.default_rng(7)
    m1 = m3 = 10000.0
    t = 0
    out = []
    for _ in range(40):
        t += 10 * MS
        step = int(rng.integers(-3, 4)) or 1
        m1 += step
        m3 -= step   # instrument 3 moves against 1, instrument 2 at random
        m2 = 10000 + int(rng.integers(-20, 21))
        md = np.concatenate([top(1, int(m1) - 1, 5, int(m1) + 1, 5, t),
                             top(2, m2 - 1, 5, m2 + 1, 5, t),
                             top(3, int(m3) - 1, 5, int(m3) + 1, 5, t)])
        out = rig.step(md, t)
    out = rig.step(None, 1000 * MS)
    pairs = {(int(r["instrument_id"]), int(r["other_inst"])): r for r in out}
    assert set(pairs) == {(1, 2), (1, 3), (2, 3)}
    assert all(r["kind"] == SIG_CORRELATION and r["flags"] & SFLAG_VALID for r in out)
    assert pairs[(1, 3)]["value"] == pytest.approx(-1.0, abs=1e-3)
    assert pairs[(1, 3)]["n_obs"] == 40   # 39 moves and the unchanged sample at 1 s
    assert abs(pairs[(1, 2)]["value"]) < 0.9


def test_pearson_correlation_matches_numpy_and_is_nan_when_undefined():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=64), rng.normal(size=64)
    y = 0.3 * x + y
    assert pearson_correlation(x, y, 64) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert pearson_correlation(x, y, 10) == pytest.approx(np.corrcoef(x[:10], y[:10])[0, 1],
                                                          rel=1e-12)
    assert math.isnan(pearson_correlation(x, np.ones(64), 64))   # no variance
    assert math.isnan(pearson_correlation(x, y, 1))
    x[3] = np.nan
    assert math.isnan(pearson_correlation(x, y, 64))


# ------------------------------------------------------------------------------------------
# The runtime's side: signal table and on_signal
# ------------------------------------------------------------------------------------------
@njit(cache=True)
def probe_on_signal(ctx, st, p, sg, n_sg, now_ns):
    st.calls += 1
    st.last_n = n_sg
    st.vol = signal_value(ctx, SIG_REALIZED_VOL, 1, now_ns)
    st.ofi = signal_value(ctx, SIG_ORDER_FLOW_IMB, 1, now_ns)
    st.corr = signal_pair(ctx, SIG_CORRELATION, 2, 1, now_ns)
    st.age = signal_age_ns(ctx, SIG_REALIZED_VOL, 1, 0, now_ns)
    if sg[0].value < -1e9:
        st.vol = 1.0 / (sg[0].value - sg[0].value)   # raises ZeroDivisionError


@njit(cache=True)
def probe_on_timer(ctx, st, p, now_ns):
    st.vol = signal_value(ctx, SIG_REALIZED_VOL, 1, now_ns)


@dataclass(frozen=True)
class NoParams:
    pass


class SignalProbe(Strategy):
    """Test-only strategy: on_signal reads its subscriptions into its state."""

    kind = "test_sigprobe_" + hashlib.sha1("".join(
        inspect.getsource(f.py_func) for f in (probe_on_signal, probe_on_timer)).encode()
    ).hexdigest()[:10]
    Params = NoParams
    n_instruments = 0
    min_instruments = 2
    on_signal = staticmethod(probe_on_signal)
    on_timer = staticmethod(probe_on_timer)

    def state_fields(self):
        return [("calls", "i8"), ("last_n", "i8"), ("vol", "f8"), ("ofi", "f8"),
                ("corr", "f8"), ("age", "i8")]


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(registry._cache, SignalProbe.kind, SignalProbe)
    return lambda: SignalProbe({}, [instrument(1, 1), instrument(2, 1)], 5)


def sig(kind, inst, value, ts, valid=True, other=0):
    r = np.zeros(1, dtype=SIGNAL_DTYPE)
    r["kind"], r["instrument_id"], r["value"], r["ts_ns"] = kind, inst, value, ts
    r["flags"], r["other_inst"], r["n_obs"] = SFLAG_VALID if valid else 0, other, 10
    return r


def test_on_signal_reads_subscribed_values_and_missing_is_nan_never_zero(probe):
    h = HostedStrategy(probe(), timer_ms=1000.0)
    h.subscribe(SIG_REALIZED_VOL, 50 * MS)
    h.subscribe(SIG_CORRELATION, 50 * MS)   # not SIG_ORDER_FLOW_IMB
    recs = np.concatenate([sig(SIG_REALIZED_VOL, 1, 0.0, 10 * MS),
                           sig(SIG_ORDER_FLOW_IMB, 1, 7.0, 10 * MS),
                           sig(SIG_CORRELATION, 1, -0.25, 10 * MS, other=2)])
    h.step(sg=recs, now_ns=20 * MS)
    assert h.st.calls == 1 and h.st.last_n == 3
    assert h.st.vol == 0.0                 # a real zero stays a zero
    assert math.isnan(h.st.ofi)            # not subscribed: missing
    assert h.st.corr == -0.25              # (2, 1) reads the pair published as (1, 2)
    assert h.st.age == 10 * MS
    # the agent says it has no value now: missing
    h.step(sg=sig(SIG_REALIZED_VOL, 1, 0.5, 30 * MS, valid=False), now_ns=31 * MS)
    assert math.isnan(h.st.vol)
    # a value that ages past the agent's stale time goes missing on its own (agent dead)
    h.step(sg=sig(SIG_REALIZED_VOL, 1, 0.4, 40 * MS), now_ns=41 * MS)
    assert h.st.vol == 0.4
    h.hctl[0] = 0   # the timer is due now: on_timer reads without any new record
    h.step(now_ns=40 * MS + 50 * MS + 1)
    assert math.isnan(h.st.vol) and h.st.calls == 3
    # an older record (a restarted agent's, read late) never overwrites a newer value
    h.step(sg=np.concatenate([sig(SIG_REALIZED_VOL, 1, 0.9, 100 * MS),
                              sig(SIG_REALIZED_VOL, 1, 0.1, 90 * MS)]), now_ns=101 * MS)
    assert h.st.vol == 0.9


def test_an_on_signal_that_raises_halts_the_strategy_with_its_reason(probe):
    h = HostedStrategy(probe(), timer_ms=1000.0)
    h.subscribe(SIG_REALIZED_VOL, 50 * MS)
    h.step(sg=sig(SIG_REALIZED_VOL, 1, -2e9, 10 * MS), now_ns=11 * MS)
    assert h.halted == HALT_SIGNAL and HALT_NAMES[HALT_SIGNAL] == "on_signal raised"
    assert h.kernel_errors == 1
    calls = int(h.st.calls)
    h.step(sg=sig(SIG_REALIZED_VOL, 1, 0.3, 20 * MS), now_ns=21 * MS)
    assert h.st.calls == calls   # halted: no hook runs again


def test_the_live_host_step_delivers_signals_from_a_broadcast_ring(probe, live_hosts):
    live = live_hosts(probe())
    from strategies.base import subscribe_signal

    subscribe_signal(live.state.ctx.sig, SIG_REALIZED_VOL, 50 * MS)
    live.step(sg=sig(SIG_REALIZED_VOL, 1, 0.35, 5 * MS), now_ns=6 * MS)
    assert live.st.calls == 1 and live.st.vol == 0.35 and live.st.age == 1 * MS
    live.step(now_ns=7 * MS)   # nothing new on the ring: no on_signal call
    assert live.st.calls == 1


from tests.unit.test_strategy_host_step import live_hosts  # noqa: E402,F401  (the fixture)


# ------------------------------------------------------------------------------------------
# A strategy that uses a signal: the market maker's sigma_from_signal
# ------------------------------------------------------------------------------------------
def test_the_market_maker_prices_with_the_farms_vol_while_valid_and_never_with_a_missing_one():
    from shm.records import INTENT_CANCEL, INTENT_NEW
    from strategies.market_making import MarketMaking
    from tests.unit.scenario_records import ack, execs

    def host(use):
        h = HostedStrategy(MarketMaking({"sigma_from_signal": use}, [instrument(1, 1)], 3),
                           timer_ms=1000.0)
        h.subscribe(SIG_REALIZED_VOL, 300 * MS)
        return h

    book = snapshot(1, [(9990, 50)], [(10010, 50)], ts=1)
    vol = sig(SIG_REALIZED_VOL, 1, 0.5, 10 * MS)
    off, on = host(False), host(True)
    # without its own estimate yet (no mid samples): only the signal can price
    assert len(off.step(book, sg=vol, now_ns=11 * MS)) == 0
    quotes = on.step(book, sg=vol, now_ns=11 * MS).copy()
    assert sorted(quotes["kind"].tolist()) == [INTENT_NEW, INTENT_NEW]
    assert on.st.sigma2 == pytest.approx((0.5 * 10000.0) ** 2 / SECONDS_PER_YEAR_365D)
    on.step(ex=execs(*(ack(q, ts=12 * MS) for q in quotes)), now_ns=12 * MS)
    # the agent died: its value ages past 300 ms and goes missing; with no own estimate the
    # market maker cannot price, so it pulls its quotes (it never prices with sigma 0)
    out = on.step(book, now_ns=10 * MS + 300 * MS + 1)
    assert sorted(out["kind"].tolist()) == [INTENT_CANCEL, INTENT_CANCEL]


# --- signal agents in the backtest (strategies/backtest.py _signal_agents, agent_round) -------
def _farm_cfg(tmp_path, sigma_from_signal=True, with_agent=True):
    from pathlib import Path

    from pipeline.config import load_config

    base = (Path(__file__).resolve().parents[2] / "config.toml").read_text()
    mm = '[[strategies]]\nname = "mm_btc"\nkind = "market_making"\ninstruments = ["BTC-USD@simA"]'
    assert mm in base
    agent = ('[[signals]]\nname = "rv"\nkind = "realized_vol"\ninstruments = ["BTC-USD@simA"]\n'
             'publish_ms = 100.0\nsample_ms = 50.0\nwindow = 20\n\n') if with_agent else ""
    subs = 'signals = ["rv"]\n' if with_agent else ""
    flag = str(sigma_from_signal).lower()
    text = base.replace(mm, agent + mm + f'\n{subs}params = {{ sigma_from_signal = {flag} }}', 1)
    p = tmp_path / f"farm_{sigma_from_signal}_{with_agent}.toml"
    p.write_text(text)
    return load_config(str(p))


def test_a_backtest_runs_the_signal_agents_its_strategies_subscribe_to(tmp_path):
    """The subscriber gets the agent's records through on_signal (as live from the ring), the
    others none; the run is deterministic; and the signal changes how the market maker
    quotes (sigma_from_signal), so it is the agent's value the strategy trades on."""
    from strategies.backtest import run_backtest

    cfg = _farm_cfg(tmp_path)
    names = ["mm_btc", "pairs_btc_eth"]
    a = run_backtest(cfg, names, duration_s=20.0, event_rate_per_s=300.0, trace=100_000)
    b = run_backtest(cfg, names, duration_s=20.0, event_rate_per_s=300.0, trace=100_000)
    ag = a.report["total"]["signal_agents"]["rv"]
    assert ag["kind"] == "realized_vol" and ag["records"] > 0
    # 20 s at one publish per 100 ms, each round at most one strategy timer (10 ms) late
    assert 150 <= ag["publishes"] <= 200
    mm, pairs = a.strategies["mm_btc"], a.strategies["pairs_btc_eth"]
    assert mm.counters["signal_records"] == ag["records"]   # every record, once
    assert pairs.counters["signal_records"] == 0
    from market.report import format_text

    assert (f"signal agent rv (realized_vol): {ag['records']:,} records in "
            f"{ag['publishes']:,} publishes") in format_text(a.report["total"], "total")
    assert a.trace["intents"].tobytes() == b.trace["intents"].tobytes()
    v = signal_value(mm.strategy_state.ctx, SIG_REALIZED_VOL, 1, np.int64(a.trace["t_end"]))
    assert math.isfinite(v) and v > 0
    # without the signal the same market maker (sigma_from_signal off) quotes otherwise
    off = run_backtest(_farm_cfg(tmp_path, sigma_from_signal=False, with_agent=False), names,
                       duration_s=20.0,
                       event_rate_per_s=300.0, trace=100_000)
    assert off.trace["intents"].tobytes() != a.trace["intents"].tobytes()
    assert "signal_agents" not in off.report["total"]
