"""Several strategies together in one backtest (strategies/backtest.py, market/backtest.py): one
market, one risk state, one fill accounting; per-strategy and total figures; parameter
schedules; and the one-strategy mode keeping its figures."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from common.schema import ConfigError, opt
from market.book import best_ask_px, best_bid_px, is_valid
from pipeline.config import load_config
from shm.records import (EFLAG_FROM_RISK, EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, ORD_IOC,
                         ORD_POST_ONLY, SIDE_BUY, SIDE_SELL)
from strategies.base import Strategy, place

SIM = dict(duration_s=8.0, event_rate_per_s=300.0)


# The market this module's figures and behaviours were taken on: the simulator's flow before its calibration to the
# Bitstamp log (issue 14), with the volatilities config.toml gave then. Stated here, so that
# the tests pin the runtime, the accounting and the shared risk state, not whatever market
# is the default (which strategy trades, and the pairs strategy's losses, rest on it).
PRE_CALIBRATION_FLOW = dict(
    event_rate_per_s=1000.0, vol_bps=3.0, jump_bps=25.0, half_spread_bps=0.3, depth_bps=3.0,
    limit_notional=2000.0, market_notional=1000.0, p_market=0.1, p_informed=0.3,
    informed_bps=0.5, impact_bps=0.0, p_meta=0.0, meta_alpha=1.5, hawkes_jump=0.0,
    hawkes_half_life_s=1.0, p_value=0.0, value_bps=5.0)
PRE_CALIBRATION_VOL = {"BTC": 3.0, "ETH": 4.0}


@pytest.fixture(scope="module", autouse=True)
def _pre_calibration_market():
    from market.flowparams import FlowParams

    pre = FlowParams(**PRE_CALIBRATION_FLOW)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FlowParams, "default", classmethod(lambda cls: pre))
        yield


@pytest.fixture(scope="module")
def cfg():
    c = load_config()
    return dataclasses.replace(c, instruments=tuple(
        dataclasses.replace(i, volatility_bps=PRE_CALIBRATION_VOL[i.group])
        for i in c.instruments))


def _comparable(rep):
    """The report without its timings, as JSON text (NaN figures compare equal there)."""
    from market.report import to_json

    rep = dict(rep)
    rep["counters"] = {k: v for k, v in rep["counters"].items()
                       if k not in ("wall_s", "cpu_s", "compile_s")}
    return to_json(rep)


def _same_curves(a, b):
    return all(a[k].tobytes() == b[k].tobytes() for k in a)


# ---------------------------------------------------------------------------------------------
# The layers agree
# ---------------------------------------------------------------------------------------------
def test_the_runtime_words_the_loop_reads_are_the_runtimes():
    import market.backtest as mb
    import strategies.host as host

    assert mb.H_NEXT_TIMER == host.H_NEXT_TIMER
    assert mb.H_PARAMS_PENDING == host.H_PARAMS_PENDING


# ---------------------------------------------------------------------------------------------
# One strategy alone: the figures it had before the portfolio backtest and the one accounting
# ---------------------------------------------------------------------------------------------
# mm_btc alone, 8 simulated s at 300 background events/s/venue. Pinned when the backtest began
# to give each strategy only its own venues' market data (simA here, as a live host reads only
# its venues' rings) and to run the gate's market data before the reports, as the live gate
# does (the figures before: 5,753 strategy calls, 71 fills, PnL -0.0907).
MM_ALONE = {"closed_trades": 31, "curve_points": 82, "dropped_denials": 0, "events": 8106,
            "exec_reports": 587, "fills": 72, "intents": 515, "maker_fills": 72,
            "max_abs_pos": 100, "md_records": 7519, "orders_acked": 73, "orders_filled": 72,
            "orders_sent": 515, "qty_filled": 720, "qty_sent": 5150, "queue_samples": 72,
            "risk_rejects": 0, "strategy_calls": 3733, "venue_rejects": 0}
MM_ALONE_PNL = {"fees": -0.21591612799999998, "realized": -0.0077824999999999995,
                "total": -0.07079387200064957, "unrealized": -0.2789275}




def test_one_strategy_alone_keeps_the_figures_it_had_before(cfg):
    res = run(cfg, "mm_btc", **SIM)
    c = res.counters
    assert {k: c[k] for k in MM_ALONE} == MM_ALONE
    for k, v in MM_ALONE_PNL.items():   # the one accounting: equal up to float rounding
        assert res.report["pnl"][k] == pytest.approx(v, rel=1e-12, abs=1e-12)
    assert res.report["max_drawdown"] == pytest.approx(0.26021645206492394, rel=1e-12)
    assert float(res.trade_pnls.sum()) == pytest.approx(0.08518921999999998, rel=1e-9)
    assert int(res.queue_times_ns.sum()) == 1148982224
    assert res.report["strategy"]["strategy_id"] == 1


def test_a_portfolio_of_one_is_the_strategy_alone(cfg):
    alone = run(cfg, "mm_btc", **SIM)
    pf = run(cfg, ["mm_btc"], **SIM)
    assert list(pf.strategies) == ["mm_btc"]
    part = pf.strategies["mm_btc"]
    assert _same_curves(alone.curve, part.curve) and _same_curves(alone.curve, pf.total.curve)
    assert _comparable(alone.report) == _comparable(part.report)
    assert alone.report["pnl"] == pf.report["total"]["pnl"]


def run(cfg, which, **kw):
    from strategies.backtest import run_backtest

    return run_backtest(cfg, which, **kw)


# ---------------------------------------------------------------------------------------------
# The default config's three strategies together
# ---------------------------------------------------------------------------------------------
PF = dict(duration_s=20.0, event_rate_per_s=1000.0)


@pytest.fixture(scope="module")
def portfolio(cfg):
    return run(cfg, None, **PF), run(cfg, None, **PF)


def test_the_portfolio_backtest_is_deterministic(portfolio):
    a, b = portfolio
    assert list(a.strategies) == ["mm_btc", "pairs_btc_eth", "arb_btc"]
    assert _comparable(a.report["total"]) == _comparable(b.report["total"])
    assert _same_curves(a.total.curve, b.total.curve)
    for name in a.strategies:
        pa, pb = a.strategies[name], b.strategies[name]
        assert _comparable(pa.report) == _comparable(pb.report)
        assert _same_curves(pa.curve, pb.curve)
        assert pa.trade_pnls.tobytes() == pb.trade_pnls.tobytes()
    # every strategy traded: the run is not deterministic by doing nothing
    assert all(p.counters["fills"] > 0 for p in a.strategies.values())


def test_the_strategies_pnls_add_up_to_the_total(cfg, portfolio):
    res, _ = portfolio
    parts = res.strategies.values()
    tot = res.report["total"]
    for key in ("total", "realized", "unrealized", "fees"):
        assert sum(p.report["pnl"][key] for p in parts) == pytest.approx(tot["pnl"][key],
                                                                         abs=1e-6)
    cash = cfg.backtest.initial_cash
    np.testing.assert_allclose(sum(p.curve["equity"] - cash for p in parts),
                               res.total.curve["equity"] - cash, atol=1e-6)
    for key in ("fills", "orders_sent", "exec_reports", "risk_rejects", "closed_trades"):
        assert sum(p.counters[key] for p in parts) == tot["counters"][key]
    assert sum(p.report["turnover"] for p in parts) == pytest.approx(tot["turnover"])
    assert len(res.total.trade_pnls) == sum(len(p.trade_pnls) for p in parts)


def test_each_strategy_runs_with_its_live_identity_and_gets_only_its_reports(cfg, portfolio):
    from strategies.backtest import strategy_id_of

    res, _ = portfolio
    for name, part in res.strategies.items():
        rt = part.strategy_state.ctx.rt[0]
        assert int(rt["strategy_id"]) == strategy_id_of(cfg, name)
        assert part.report["strategy"]["strategy_id"] == strategy_id_of(cfg, name)
        # its runtime applied exactly the fills its books of record counted: none of another
        # strategy's (apply_execs would skip those: they would be missing here)
        assert int(rt["fills"]) == part.counters["fills"]
        # its books of record (one accounting) and its runtime's positions agree
        pos = part.strategy_state.ctx.pos
        assert sum(abs(float(p)) for p in pos["pos"]) == part.curve["abs_pos"][-1]
    # each one's own timer: the pairs strategy samples every 50 ms whatever the others do
    assert res.strategies["pairs_btc_eth"].strategy_state.fields.n_samples > 100


def test_rejects_are_counted_by_reason(portfolio):
    res, _ = portfolio
    for part in list(res.strategies.values()) + [res.total]:
        rep = part.report
        assert sum(rep["rejects"]["risk"].values()) == rep["counters"]["risk_rejects"]
        assert sum(rep["rejects"]["venue"].values()) == rep["counters"]["venue_rejects"]


def test_a_tight_shared_loss_limit_denies_in_the_portfolio_what_a_strategy_alone_may_send(cfg):
    """The loss limit is over the instance: the pairs strategy's losses (taker fees) use it up
    and the market maker's orders are denied, although alone it never comes near it."""
    tight = dataclasses.replace(cfg, risk=dataclasses.replace(cfg.risk, daily_loss_limit=8.0))
    alone = run(tight, "mm_btc", **PF)
    assert alone.counters["risk_rejects"] == 0 and alone.counters["fills"] > 0
    together = run(tight, None, **PF)
    mm = together.strategies["mm_btc"].report
    shared = ("daily_loss", "reduce_only")
    assert sum(mm["rejects"]["risk"].get(r, 0) for r in shared) > 0, mm["rejects"]
    assert together.report["total"]["pnl"]["total"] < -8.0 * 0.8   # it did reach the limit


# ---------------------------------------------------------------------------------------------
# Orders of different strategies meet: the gate stops them as live (self-trade prevention over
# every strategy of the instance); without it the venue matches them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RestParams:
    at_ns: int = opt(0, "act at the first batch at or after this time", ge=0)
    qty_lots: int = opt(1, "size", gt=0)


@dataclass(frozen=True)
class TakeParams:
    at_ns: int = opt(0, "act at the first batch at or after this time", ge=0)
    qty_lots: int = opt(1, "size", gt=0)


@njit(cache=True)
def _rest_on_market(ctx, st, p, md, n_md, now_ns):
    """One post-only sell in the middle of the spread: the best ask, alone at its price."""
    inst = ctx.inst[0]
    if st.coid != 0 or now_ns < p.at_ns or not is_valid(ctx.px, ctx.meta, inst):
        return
    bid = best_bid_px(ctx.px, ctx.meta, inst)
    ask = best_ask_px(ctx.px, ctx.meta, inst)
    if ask - bid < 2:
        return
    st.px = ask - (ask - bid) // 2
    st.coid = place(ctx, 0, SIDE_SELL, ORD_POST_ONLY, st.px, p.qty_lots, now_ns)


@njit(cache=True)
def _take_on_market(ctx, st, p, md, n_md, now_ns):
    """One IOC buy at the best ask."""
    inst = ctx.inst[0]
    if st.coid != 0 or now_ns < p.at_ns or not is_valid(ctx.px, ctx.meta, inst):
        return
    st.px = best_ask_px(ctx.px, ctx.meta, inst)
    st.sent_ns = now_ns
    st.coid = place(ctx, 0, SIDE_BUY, ORD_IOC, st.px, p.qty_lots, now_ns)


@njit(cache=True)
def _note_exec(ctx, st, p, ex, n_ex, now_ns):
    for j in range(n_ex):
        e = ex[j]
        if e.client_order_id != st.coid:
            continue
        if e.kind == EXEC_FILL or e.kind == EXEC_PARTIAL:
            st.filled_qty += e.qty_lots
            st.fill_px = e.px_ticks
            st.fill_ns = e.venue_ts_ns
            st.liquidity = e.liquidity
        elif e.kind == EXEC_REJECT and (e.flags & EFLAG_FROM_RISK) != 0:
            st.denied = e.reject_code


FIELDS = [("coid", "i8"), ("px", "i8"), ("sent_ns", "i8"), ("filled_qty", "i8"),
          ("fill_px", "i8"), ("fill_ns", "i8"), ("liquidity", "i8"), ("denied", "i8")]


class RestOnce(Strategy):
    kind = "test_rest_once"
    Params = RestParams
    on_market = staticmethod(_rest_on_market)
    on_exec = staticmethod(_note_exec)

    def state_fields(self):
        return FIELDS


class TakeOnce(Strategy):
    kind = "test_take_once"
    Params = TakeParams
    on_market = staticmethod(_take_on_market)
    on_exec = staticmethod(_note_exec)

    def state_fields(self):
        return FIELDS


def _rest_and_take(cfg, monkeypatch, stp: bool):
    from market.sim import DEFAULT_T0_NS
    from strategies import registry

    for cls in (RestOnce, TakeOnce):
        monkeypatch.setitem(registry._cache, cls.kind, cls)
    base = cfg.strategies[0]
    t1 = DEFAULT_T0_NS + 2_000_000_000
    rest = dataclasses.replace(base, name="rester", kind=RestOnce.kind,
                               params={"at_ns": t1, "qty_lots": 1})
    take = dataclasses.replace(base, name="taker", kind=TakeOnce.kind,
                               params={"at_ns": t1 + 2_000_000, "qty_lots": 1})
    c = dataclasses.replace(cfg, strategies=(rest, take),
                            risk=dataclasses.replace(cfg.risk, self_trade_prevention=stp))
    res = run(c, None, duration_s=3.0, event_rate_per_s=1000.0)
    return (res, res.strategies["rester"].strategy_state.fields,
            res.strategies["taker"].strategy_state.fields)


@pytest.mark.slow   # compiles a backtest loop for its own strategy set
def test_the_gate_stops_an_order_that_would_trade_with_another_strategys(cfg, monkeypatch):
    res, rest, take = _rest_and_take(cfg, monkeypatch, stp=True)
    assert rest.coid != 0 and take.coid != 0 and take.px == rest.px   # it aimed at the rest
    from shm.records import REJECT_SELF_TRADE

    assert take.denied == REJECT_SELF_TRADE and take.filled_qty == 0
    assert res.strategies["taker"].report["rejects"]["risk"] == {"self_trade": 1}
    assert res.strategies["taker"].counters["orders_sent"] == 0


@pytest.mark.slow   # compiles a backtest loop for its own strategy set
def test_without_the_gates_stp_the_venue_matches_two_strategies_orders(cfg, monkeypatch):
    from shm.records import LIQ_MAKER, LIQ_TAKER

    res, rest, take = _rest_and_take(cfg, monkeypatch, stp=False)
    assert take.denied == 0 and take.px == rest.px
    assert take.filled_qty == 1 and rest.filled_qty == 1
    assert take.fill_px == rest.fill_px == rest.px and take.fill_ns == rest.fill_ns
    assert rest.liquidity == LIQ_MAKER and take.liquidity == LIQ_TAKER
    assert res.strategies["rester"].strategy_state.ctx.pos[0]["pos"] == -1
    assert res.strategies["taker"].strategy_state.ctx.pos[0]["pos"] == 1


# ---------------------------------------------------------------------------------------------
# Parameter schedules
# ---------------------------------------------------------------------------------------------
def test_a_schedule_changes_the_market_makers_size_at_its_time_and_not_before(cfg):
    at_s = 4.0
    plain = run(cfg, "mm_btc", **SIM)
    sched = run(cfg, "mm_btc", schedule=[(at_s, {"order_qty_lots": 3})], **SIM)
    t = plain.curve["t_ns"]
    before = (t - t[0]) < at_s * 1e9
    for k in ("equity", "abs_pos", "realized", "fees"):
        assert plain.curve[k][before].tobytes() == sched.curve[k][before].tobytes()
    assert not _same_curves({"e": plain.curve["equity"][~before]},
                            {"e": sched.curve["equity"][~before]})
    rt = sched.strategy_state.ctx.rt[0]
    assert int(rt["params_version"]) == 1
    assert int(sched.strategy_state.p[0]["order_qty_lots"]) == 3
    def live(r):
        orders = r.strategy_state.ctx.orders
        return orders[orders["state"] != 0]

    assert set(live(plain)["leaves"].tolist()) == {10}
    assert live(sched)["leaves"].max() <= 3
    assert sched.counters["qty_sent"] / sched.counters["orders_sent"] < \
        plain.counters["qty_sent"] / plain.counters["orders_sent"]
    assert sched.report["params_schedule"] == [{"at_s": at_s, "params": {"order_qty_lots": 3}}]


def test_a_schedule_names_every_problem_with_its_key(cfg):
    bad = [{"at_s": 1.0, "strategy": "mm_btc", "params": {"gama": 0.5}},
           {"at_s": 2.0, "strategy": "nope", "params": {"gamma": 0.5}},
           {"at_s": -1.0, "params": {"gamma": 0.5}},
           {"at_s": 99.0, "strategy": "mm_btc", "params": {"order_qty_lots": 0}},
           # on top of the first good change: 200 > max_inventory_lots (100) fails the check
           {"at_s": 3.0, "strategy": "mm_btc", "params": {"order_qty_lots": 200}}]
    with pytest.raises(ConfigError) as err:
        run(cfg, "mm_btc", schedule=bad, **SIM)
    msg = str(err.value)
    assert "change[2].at_s = -1.0: must be >= 0" in msg
    with pytest.raises(ConfigError) as err:
        run(cfg, "mm_btc", schedule=[b for b in bad if b["at_s"] >= 0], **SIM)
    msg = str(err.value)
    assert "change[0].params.gama" in msg and "unknown parameter" in msg
    assert "change[1].strategy = 'nope'" in msg
    assert "change[2].at_s = 99.0" in msg and "change[2].params.order_qty_lots = 0" in msg
    assert "change[3].params" in msg and "max_inventory_lots" in msg


def test_a_portfolio_schedule_names_the_strategy(cfg):
    with pytest.raises(ConfigError, match=r"change\[0\].strategy: missing"):
        run(cfg, None, schedule=[(1.0, {"gamma": 0.5})], **PF)


def test_a_schedule_file_is_read_as_toml_or_json(tmp_path):
    from strategies.param_schedule import load_schedule

    (tmp_path / "s.toml").write_text('[[change]]\nat_s = 60\nstrategy = "mm_btc"\n'
                                     'params = { gamma = 0.5 }\n')
    (tmp_path / "s.json").write_text(json.dumps(
        [{"at_s": 60, "strategy": "mm_btc", "params": {"gamma": 0.5}}]))
    a, b = load_schedule(tmp_path / "s.toml"), load_schedule(tmp_path / "s.json")
    assert a.change == b.change and a.change[0].params == {"gamma": 0.5}
    (tmp_path / "bad.toml").write_text('[[changes]]\nat_s = 60\n')
    with pytest.raises(ConfigError, match=r"changes.*unknown key \(did you mean 'change'"):
        load_schedule(tmp_path / "bad.toml")


def test_the_default_config_runs_its_full_configured_duration_without_a_halt(cfg):
    """The default config's backtest, all strategies together, for cfg.sim.duration_s: no
    strategy's hook may raise (a crash there once shipped: pairs_btc_eth divided by zero
    after some simulated minutes)."""
    res = run(cfg, None)
    for name, part in res.strategies.items():
        assert "halted" not in part.report, (name, part.report.get("halted"))
        assert part.counters["kernel_errors"] == 0, name
    assert res.report["total"]["counters"]["simulated_s"] == pytest.approx(cfg.sim.duration_s)


@pytest.mark.slow   # compiles a backtest loop for its own strategy set
def test_a_sharded_strategy_backtests_as_its_shards_each_on_its_block(cfg):
    import dataclasses

    from common.runtime import strategy_ids

    mm = next(s for s in cfg.strategies if s.name == "mm_btc")
    sharded = dataclasses.replace(mm, shards=2, instruments=("BTC-USD@simA", "ETH-USD@simA"))
    c = dataclasses.replace(cfg, strategies=tuple(sharded if s is mm else s
                                                  for s in cfg.strategies))
    res = run(c, "mm_btc", **SIM)
    assert list(res.strategies) == ["mm_btc.0", "mm_btc.1"]
    ids = strategy_ids(c.strategies)
    for k, (name, part) in enumerate(res.strategies.items()):
        rt = part.strategy_state.ctx.rt[0]
        assert (int(rt["strategy_id"]), int(rt["shard"])) == (ids[("mm_btc", k)], k)
        assert part.report["strategy"]["instruments"] == [sharded.instruments[k]]
        assert part.counters["fills"] > 0
