"""The mechanisms added for the simulator's calibration (market/flow.py: informed flow, value
agents, metaorders, Hawkes clustering), each shown by the statistic it exists for, with every
other parameter held; the flow parameters' file; and ``run.py sim calibrate`` on a slice of
the Bitstamp recording.

Each mechanism test runs the same seed with the mechanism off and on (common random numbers),
on an explicit parameter set (``BASE``), so a recalibration of the defaults does not move them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from market.calibrate import BANDS, check, loss
from market.facts import R_NS, build_tape, measure
from market.flowparams import FlowParams
from pipeline.commands.sim import _sim_instrument, simulate
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]
BITSTAMP = (ROOT.parent / "shared" / "data" / "calibration" / "bitstamp"
            / "bitstamp_btcusd_2015-05-01_events.log.gz")

# a market where plain market orders, not the one-sided bursts of market.flow, make most
# trades (about 1.7 a second), so that each mechanism's effect stands out of the noise
BASE = FlowParams(event_rate_per_s=10.0, vol_bps=1.0, jump_bps=3.0, half_spread_bps=1.0,
                  depth_bps=2.0, limit_notional=500.0, market_notional=500.0, p_market=0.3,
                  p_informed=0.3, informed_bps=1.0, impact_bps=0.0, p_meta=0.0,
                  meta_alpha=1.5, hawkes_jump=0.0, hawkes_half_life_s=2.0, p_value=0.0,
                  value_bps=5.0)


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def _run(cfg, params, seed=7, duration=3600.0):
    inst = _sim_instrument(cfg, None)
    recs = simulate(cfg, inst, duration, seed, params.event_rate_per_s, flow_params=params,
                    progress=False)
    return recs, inst


def _facts(cfg, params, **kw):
    recs, inst = _run(cfg, params, **kw)
    return measure(recs, inst)


def test_same_seed_same_market_and_another_seed_another(cfg):
    p = BASE.replace(impact_bps=1.0, p_meta=0.3, hawkes_jump=1.0, p_value=0.2)
    a, _ = _run(cfg, p, seed=3, duration=600.0)
    b, _ = _run(cfg, p, seed=3, duration=600.0)
    c, _ = _run(cfg, p, seed=4, duration=600.0)
    assert len(a) > 1000
    assert np.array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


def test_metaorders_raise_trade_sign_autocorrelation_at_lag_10_and_beyond(cfg):
    off = _facts(cfg, BASE)["trade_sign_acf"]
    on = _facts(cfg, BASE.replace(p_meta=0.5, meta_alpha=1.2))["trade_sign_acf"]
    assert on["5"] > off["5"] + 0.1, (off, on)
    assert on["10"] > off["10"] + 0.1, (off, on)


def _fano(trades: np.ndarray, t0: int, t1: int, step_ns: int = 1_000_000_000) -> float:
    """Variance over mean of trade counts per second: 1 for Poisson, above for bursts."""
    counts = np.bincount((trades[:, R_NS] - t0) // step_ns,
                         minlength=int((t1 - t0) // step_ns) + 1).astype(float)
    return counts.var() / counts.mean()


def test_hawkes_excitation_makes_trade_arrivals_bursty(cfg):
    fano = []
    for jump in (0.0, 0.1):     # 0.1: about 0.5 extra trades per trade (0.2 explodes)
        recs, inst = _run(cfg, BASE.replace(hawkes_jump=jump, hawkes_half_life_s=1.0))
        tape = build_tape(recs, inst.instrument_id, inst.tick_size, inst.lot_size)
        fano.append(_fano(tape.trades, tape.t_start_ns, tape.t_end_ns))
    assert 0.8 < fano[0] < 1.3, fano              # without it, near Poisson
    assert fano[1] > 1.3 * fano[0], fano


def test_informed_flow_makes_passive_fill_markouts_adverse(cfg):
    off = _facts(cfg, BASE)["markout"]["1s"]["bps"]
    on = _facts(cfg, BASE.replace(impact_bps=2.0))["markout"]["1s"]["bps"]
    assert on < 0
    assert on < off - 0.5, (off, on)


def test_value_agents_pull_the_price_back_toward_the_fundamental(cfg):
    from market.flow import GS_IMPACT
    from market.sim import SimVenue
    from shm.instruments import InstrumentTable

    dev = []
    for p_value in (0.0, 0.5):
        p = BASE.replace(impact_bps=2.0, p_meta=0.3, p_value=p_value, value_bps=2.0)
        sv = SimVenue(cfg, list(InstrumentTable.from_config(cfg)), seed=5,
                      event_rate_per_s=p.event_rate_per_s, flow_params=p)
        seen = []
        for _ in range(60):
            sv.run(5.0)
            seen.append(abs(sv.flow.gs[0, GS_IMPACT]))
        dev.append(float(np.mean(seen)) * 1e4)
    # with value agents the impact term stays near value_bps; without, it wanders off
    assert dev[1] < 0.5 * dev[0], dev
    assert dev[1] < 5.0, dev


def test_flow_parameter_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(ValueError, match="none.json.*not found"):
        FlowParams.load(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a flow parameter file"):
        FlowParams.load(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"params": {"vol_bps": 1.0}}))
    with pytest.raises(ValueError, match="missing"):
        FlowParams.load(partial)
    with pytest.raises(ValueError, match="p_market"):
        BASE.replace(p_market=1.5)


def test_the_default_flow_parameters_are_the_calibrated_file():
    doc = json.loads((ROOT / "market" / "calibrated.json").read_text())
    assert FlowParams.default().to_dict() == {k: float(v) for k, v in doc["params"].items()}
    cfg = load_config()
    assert cfg.backtest.event_rate_per_s == doc["params"]["event_rate_per_s"]
    assert all(i.volatility_bps == doc["params"]["vol_bps"] for i in cfg.instruments)


def test_loss_is_zero_on_the_recording_itself_and_bands_judge_each_fact():
    real = {k: 1.0 for k in BANDS}
    assert loss(real, real) == 0.0
    rows = {r["fact"]: r for r in check({**real, "trades_per_s": 3.0, "sign_acf_1": 1.05},
                                        real)}
    assert not rows["trades_per_s"]["in_band"]        # x3 is outside x2
    assert rows["sign_acf_1"]["in_band"]              # +0.05 is inside +-0.15
    assert loss({**real, "trades_per_s": 3.0}, real) > 0


def _cli(capsys, *argv):
    from pipeline.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.skipif(not BITSTAMP.exists(), reason="no Bitstamp recording")
def test_calibrate_command_fits_a_slice_of_the_recording(tmp_path, capsys):
    out = tmp_path / "fit.json"
    rc, stdout, stderr = _cli(capsys, "sim", "calibrate", "--data", str(BITSTAMP),
                              "--max-seconds", "1800", "--duration", "600", "--seeds", "1",
                              "--rounds", "1", "--json", "--write", str(out))
    assert rc == 0, stderr[-2000:]
    res = json.loads(stdout)
    start_loss = float(next(line for line in stderr.splitlines()
                            if "start loss" in line).split()[-1])
    assert res["loss"] < start_loss                  # the search improved on its start
    assert res["evaluations"] > 10
    assert {row["fact"] for row in res["facts"]} == set(BANDS)
    written = FlowParams.load(out)
    assert written.to_dict() == res["params"]
    assert written != FlowParams.default()           # fitted, not the defaults read back
    assert all(row["real"] is not None for row in res["facts"] if row["fact"] in
               ("spread_bps_p50", "trades_per_s", "vol_1s_bps", "markout_1s_bps"))


def test_calibrate_command_names_a_missing_or_garbled_recording(tmp_path, capsys):
    rc, _out, err = _cli(capsys, "sim", "calibrate", "--data", str(tmp_path / "nope.log.gz"))
    assert rc == 2 and "nope.log.gz" in err, err
    bad = tmp_path / "bitstamp_btcusd_x_events.log"
    bad.write_text("1430438404500 order_created {garbled\n")
    rc, _out, err = _cli(capsys, "sim", "calibrate", "--data", str(bad))
    assert rc == 2 and "bitstamp_btcusd_x_events.log" in err, err


def test_impact_and_hawkes_jump_keep_their_effect_at_another_event_rate(cfg):
    from market.flow import GL_HK_JUMP, IP_IMPACT, FlowModel
    from shm.instruments import InstrumentTable

    insts = list(InstrumentTable.from_config(cfg))
    p = BASE.replace(impact_bps=2.0, hawkes_jump=0.5)
    at_fit = FlowModel(cfg, insts, p, p.event_rate_per_s)
    busy = FlowModel(cfg, insts, p, 100.0 * p.event_rate_per_s)
    i = insts[0].instrument_id
    # impact variance per second (per-trade impact^2 x trades) and extra events per trade
    # (jump x rate) unchanged
    assert busy.ip[i, IP_IMPACT] ** 2 * 100.0 == pytest.approx(at_fit.ip[i, IP_IMPACT] ** 2)
    assert busy.gl[GL_HK_JUMP] * 100.0 == pytest.approx(at_fit.gl[GL_HK_JUMP])
    assert at_fit.ip[i, IP_IMPACT] == pytest.approx(2.0e-4)
