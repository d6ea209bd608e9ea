"""market/asworld.py (the Avellaneda-Stoikov model world) and strategies/paper/avellaneda_stoikov.py
(our market_making kernel in it, the symmetric benchmark and its closed form, the CLI)."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from market.asworld import (FILL_MID_MOVED, FILL_MID_QUOTED, INC_BINARY, INC_GAUSSIAN, AsWorld,
                            make_out_buffers)
from shm.records import (EXEC_ACK, EXEC_FILL, INTENT_NEW, MSG_LEVEL, ORDER_DTYPE, SIDE_BUY,
                         SIDE_SELL)
from strategies.paper.avellaneda_stoikov import (PUBLISHED, Setting, format_table, reproduce,
                                                 simulate, summarize, symmetric_closed_form)

TICK = 1e-4
A, K, DT = 140.0, 1.5, 0.005


def _world(n_steps, sigma=0.0, seed=5, increments=INC_BINARY, fill_mid=FILL_MID_QUOTED):
    return AsWorld(s0_ticks=100.0 / TICK, sigma_ticks=sigma / TICK, a_per_s=A,
                   k_per_tick=K * TICK, dt_ns=int(DT * 1e9), n_steps=n_steps, seed=seed,
                   increments=increments, fill_mid=fill_mid,
                   touch_half_ticks=int(50 / TICK))


def _order(coid, side, px_ticks):
    o = np.zeros(1, dtype=ORDER_DTYPE)[0]
    o["kind"] = INTENT_NEW
    o["side"] = side
    o["instrument_id"] = 1
    o["client_order_id"] = coid
    o["px_ticks"] = px_ticks
    o["qty_lots"] = 1
    o["strategy_id"] = 1
    return o


def _count_fills(world, quotes):
    """Keep one order at each fixed (side, px) of ``quotes`` resting through every step;
    returns fills per quote, the fill prices seen, and the steps run."""
    md, ex = make_out_buffers()
    coid = 0
    resting = {}
    fills = {q: 0 for q in quotes}
    prices = {q: set() for q in quotes}
    steps = 0
    while True:
        n_md, n_ex, t = world.advance(1 << 62, md, ex)
        if n_md == 0 and n_ex == 0:
            return fills, prices, steps
        for e in ex[:n_ex]:
            if e["kind"] == EXEC_FILL:
                q = resting.pop(int(e["client_order_id"]))
                fills[q] += 1
                prices[q].add(int(e["px_ticks"]))
        if n_md:
            steps += 1
            for q in quotes:
                if q not in resting.values():
                    coid += 1
                    resting[coid] = q
                    world.submit(_order(coid, *q), t)


def test_a_fixed_quote_is_filled_at_intensity_a_exp_minus_k_delta():
    n = 20000
    mid = round(100.0 / TICK)
    near = (SIDE_BUY, mid - round(0.3 / TICK))      # delta 0.3: p = 0.7 e^-0.45 = 0.446
    far = (SIDE_SELL, mid + round(1.5 / TICK))      # delta 1.5: p = 0.7 e^-2.25 = 0.0738
    through = (SIDE_BUY, mid + round(0.5 / TICK))   # bid above the mid: p capped at 1
    w = _world(n)
    fills, prices, steps = _count_fills(w, [near, far, through])
    assert steps == n + 1   # t_0 .. t_n
    for q, delta in ((near, 0.3), (far, 1.5)):
        p = A * math.exp(-K * delta) * DT
        sd = math.sqrt(n * p * (1 - p))
        assert abs(fills[q] - n * p) < 4 * sd, (q, fills[q], n * p)
        assert prices[q] == {q[1]}   # one lot at the order's own price
    assert fills[through] == n
    ww = w.world
    assert ww["fills"] == sum(fills.values())
    assert ww["inventory"] == fills[near] + fills[through] - fills[far]


def test_fill_intensity_doubling_delta_scales_the_rate_by_exp_minus_k_delta():
    # the shape of lambda, not only its value at two points: the ratio of two rates
    n = 20000
    mid = round(100.0 / TICK)
    a, b = (SIDE_SELL, mid + round(0.4 / TICK)), (SIDE_BUY, mid - round(0.8 / TICK))
    fills, _, _ = _count_fills(_world(n, seed=9), [a, b])
    ratio = fills[b] / fills[a]
    expected = math.exp(-K * 0.4)
    se = expected * math.sqrt(1 / fills[a] + 1 / fills[b])
    assert abs(ratio - expected) < 4 * se, (ratio, expected)


@pytest.mark.parametrize("increments", [INC_BINARY, INC_GAUSSIAN])
def test_mid_increments_have_variance_sigma2_dt(increments):
    n, sigma = 20000, 2.0
    w = _world(n, sigma=sigma, seed=3, increments=increments)
    md, ex = make_out_buffers()
    mids = []
    while True:
        n_md, n_ex, _t = w.advance(1 << 62, md, ex)
        if n_md == 0 and n_ex == 0:
            break
        lv = md[:n_md][md[:n_md]["kind"] == MSG_LEVEL]
        assert len(lv) == 2 and lv[0]["px_ticks"] < lv[1]["px_ticks"]
        mids.append((lv[0]["px_ticks"] + lv[1]["px_ticks"]) * 0.5 * TICK)
    d = np.diff(mids)
    assert len(d) == n
    var = sigma ** 2 * DT
    assert abs(d.var() / var - 1) < 4 * math.sqrt(2 / n) + 1e-3
    assert abs(d.mean()) < 4 * math.sqrt(var / n)
    if increments == INC_BINARY:   # +-sigma sqrt(dt), published to half a tick
        assert np.allclose(np.abs(d), sigma * math.sqrt(DT), atol=TICK)


def test_same_seed_same_world_and_fill_mid_does_not_change_the_mid_path():
    def path(seed, fill_mid):
        w = _world(300, sigma=2.0, seed=seed, fill_mid=fill_mid)
        md, ex = make_out_buffers()
        out = []
        while w.advance(1 << 62, md, ex)[0]:
            out.append(int(md[1]["px_ticks"]))
        return out

    assert path(4, FILL_MID_QUOTED) == path(4, FILL_MID_MOVED) == path(4, FILL_MID_QUOTED)
    assert path(4, FILL_MID_QUOTED) != path(5, FILL_MID_QUOTED)


def test_orders_are_acked_at_once_and_reports_come_before_the_next_book():
    w = _world(3)
    md, ex = make_out_buffers()
    n_md, n_ex, t0 = w.advance(1 << 62, md, ex)
    assert n_md == 4 and n_ex == 0
    w.submit(_order(1, SIDE_BUY, round(100.5 / TICK)), t0)   # through the mid: fills
    n_md, n_ex, t = w.advance(1 << 62, md, ex)
    assert (n_md, n_ex, t) == (0, 1, t0) and ex[0]["kind"] == EXEC_ACK
    n_md, n_ex, t1 = w.advance(1 << 62, md, ex)
    assert t1 == t0 + int(DT * 1e9) and n_md == 4 and n_ex == 1
    assert ex[0]["kind"] == EXEC_FILL and ex[0]["px_ticks"] == round(100.5 / TICK)


# ---- the strategy kernel in the world --------------------------------------------------
@pytest.mark.parametrize("fill_mid", ["quoted", "moved"])
def test_symmetric_benchmark_profit_matches_its_closed_form(fill_mid):
    setting = Setting(fill_mid=fill_mid)
    n = 400
    ours = summarize(simulate(0.1, "symmetric", n, seed=11, setting=setting))
    cf = symmetric_closed_form(0.1, setting)
    assert abs(ours["profit"] - cf["profit"]) < 4 * cf["std_profit"] / math.sqrt(n)
    assert abs(ours["std_final_q"] / cf["std_final_q"] - 1) < 4 / math.sqrt(2 * n)
    assert abs(ours["std_profit"] / cf["std_profit"] - 1) < 4 / math.sqrt(2 * n) + 0.02
    assert abs(ours["spread"] - cf["spread"]) < 2 * TICK


def test_closed_form_reading_of_the_fill_mid_moves_the_expected_profit():
    # the two readings differ by more than the paper's own standard error (0.42): the
    # comparison with the published figures can tell them apart
    q = symmetric_closed_form(0.1, Setting(fill_mid="quoted"))
    m = symmetric_closed_form(0.1, Setting(fill_mid="moved"))
    p = A * math.exp(-K * math.log(1 + 0.1 / K) / 0.1) * DT
    assert q["profit"] == pytest.approx(2 * 200 * p * math.log(1 + 0.1 / K) / 0.1)
    assert q["profit"] - m["profit"] > 1.0


@pytest.mark.parametrize("horizon,tau_mean", [("finite", 1.0 - DT * 199 / 2), ("rolling", 1.0)])
def test_inventory_strategy_quotes_the_papers_spread_through_the_kernel(horizon, tau_mean):
    # the kernel's spread is gamma sigma^2 tau + (2/gamma) ln(1 + gamma/k): only right when
    # gamma, sigma, k and tau are all mapped into ticks and seconds correctly
    g = 0.1
    ours = summarize(simulate(g, "inventory", 5, seed=2, horizon=horizon))
    expected = g * 4.0 * tau_mean + 2 / g * math.log(1 + g / K)
    assert ours["spread"] == pytest.approx(expected, abs=3 * TICK)


def test_inventory_strategy_holds_far_less_inventory_than_the_symmetric_one():
    n = 200
    inv = summarize(simulate(0.1, "inventory", n, seed=7))
    sym = summarize(simulate(0.1, "symmetric", n, seed=7))
    assert inv["std_final_q"] < 0.5 * sym["std_final_q"]
    assert inv["std_profit"] < 0.7 * sym["std_profit"]
    assert inv["profit"] < sym["profit"]   # it gives up some spread income for that


def test_cli_paper_subcommand_prints_ours_beside_the_published_table(capsys):
    from pipeline.sim_paper_cli import add_paper_parser

    parser = argparse.ArgumentParser(prog="run.py sim")
    add_paper_parser(parser.add_subparsers(dest="what"))
    args = parser.parse_args(["paper", "avellaneda-stoikov", "--paths", "20", "--gamma", "0.1",
                              "--json"])
    assert args.func(args) == 0
    res = json.loads(capsys.readouterr().out)
    (row,) = res["rows"]
    assert row["gamma"] == 0.1 and row["table"] == 1
    assert row["symmetric_published"] == PUBLISHED[0.1]["symmetric"]
    for strat in ("inventory", "symmetric"):
        assert row[strat]["paths"] == 20
        assert set(row[strat + "_vs_published"]) == {"spread", "profit", "std_profit",
                                                      "final_q", "std_final_q"}
    with pytest.raises(SystemExit):
        parser.parse_args(["paper", "no-such-paper"])


def test_table_text_names_every_gamma_and_the_published_figures():
    res = reproduce(10, 3, gammas=(0.01, 0.5), log=lambda _m: None)
    text = format_table(res)
    assert "gamma = 0.01" in text and "gamma = 0.5" in text and "gamma = 0.1 " not in text
    assert "66.78" in text and "33.92" in text and "closed form" in text


def _direct_paper_simulation(gamma, n, seed, fill_mid):
    """The paper's procedure written straight from its formulas (a reference model, numpy,
    continuous prices): quotes r -+ spread / 2 with r = s - q gamma sigma^2 (T - t)."""
    rng = np.random.default_rng(seed)
    sigma, steps = 2.0, 200
    s = np.full(n, 100.0)
    q = np.zeros(n)
    cash = np.zeros(n)
    for i in range(steps):
        tau = 1.0 - i * DT
        r = s - q * gamma * sigma ** 2 * tau
        half = 0.5 * (gamma * sigma ** 2 * tau + 2 / gamma * math.log(1 + gamma / K))
        ask, bid = r + half, r - half
        s_new = s + np.where(rng.random(n) < 0.5, 1.0, -1.0) * sigma * math.sqrt(DT)
        ref = s_new if fill_mid == "moved" else s
        hit_a = rng.random(n) < np.minimum(1, A * np.exp(-K * (ask - ref)) * DT)
        hit_b = rng.random(n) < np.minimum(1, A * np.exp(-K * (ref - bid)) * DT)
        q += hit_b.astype(float) - hit_a
        cash += hit_a * ask - hit_b * bid
        s = s_new
    return cash + q * s, q


@pytest.mark.parametrize("gamma,fill_mid", [(0.5, "moved"), (0.1, "quoted")])
def test_kernel_in_the_world_matches_the_papers_formulas_simulated_directly(gamma, fill_mid):
    n_ref, n = 20000, 400
    ref_profit, ref_q = _direct_paper_simulation(gamma, n_ref, 1, fill_mid)
    ours = summarize(simulate(gamma, "inventory", n, seed=21, setting=Setting(fill_mid=fill_mid)))
    se = math.sqrt(ours["se_profit"] ** 2 + ref_profit.var() / n_ref)
    assert abs(ours["profit"] - ref_profit.mean()) < 4 * se
    assert abs(ours["std_final_q"] / ref_q.std() - 1) < 4 / math.sqrt(2 * n)
    assert abs(ours["std_profit"] / ref_profit.std() - 1) < 4 / math.sqrt(2 * n)
