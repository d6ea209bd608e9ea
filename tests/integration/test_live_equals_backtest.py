"""Live equals backtest: the same input through the live pipeline (real stage processes, real
rings, ``run.py run --sim-time``) and through ``run.py backtest``'s loop gives the identical
sequence of intents (as the gate decided them), the identical venue execution reports, and the
same final positions and PnL, for every strategy kind, on the simulated venues and on a
recording (LOBSTER AAPL from ../shared/data, matched by the backtest's replay venue).

What is compared:
- intents: the live journal's every decision (``jorder``) against the backtest's trace, every
  field but the ring's own sequence number;
- reports: the live journal's execution reports (``jexec``) against the backtest's venue
  reports, every field but the ring sequence, the router's sequence number and its stamp
  (``reserved``, ``send_ts_ns``: the router adds them live). After the session the live
  venue only acknowledges the stop's cancels: those extra reports must be cancel-acks or
  rejects, never a fill;
- the risk gate's final positions and realized / unrealized PnL and fees per strategy
  (market.risk.pnl_view over both risk states), and each strategy's own positions.
Each strategy must have traded in the window, or the comparison would prove nothing about it.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import ROOT, write_config

SIM_S = 20.0   # the calibrated market (spreads of a few bps) gives the arbitrage its first
              # crossing between 6 and 20 s at the busy rate below (seed 42); 6 s was enough before
BUSY = "\n[backtest]\nevent_rate_per_s = 1000.0\n"
# the pairs strategy's warm-up in the default config is 5 s of samples: shorter here
PAIRS_DEFAULT = "params = { window = 100, sample_ms = 50.0, entry_z = 2.0, exit_z = 0.5 }"
PAIRS_FAST = "params = { window = 30, sample_ms = 20.0, entry_z = 1.0, exit_z = 0.3 }"
# and the arbitrage's edge threshold lower, so that it trades within the short window too
ARB_DEFAULT = "params = { taker_fee_bps_a = 1.0, taker_fee_bps_b = 1.0 }"
ARB_EAGER = "params = { taker_fee_bps_a = 0.0, taker_fee_bps_b = 0.0, threshold_ticks = 0.0 }"


def _run_sim_time(cfg_path: Path, instance: str, *extra) -> dict:
    from shm.segment import list_segments, unlink_instance

    try:
        r = subprocess.run([sys.executable, "run.py", "run", "--sim-time", "--json", "--config",
                            str(cfg_path), *extra], cwd=ROOT, capture_output=True, text=True,
                           timeout=COLD_START_S + 300)
    finally:
        leaked = [s.name for s in list_segments(instance)]
        unlink_instance(instance)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not leaked, f"segments left behind: {leaked}"
    rep = json.loads(r.stdout)
    assert rep["sim_time"]["done"] and not rep["sim_time"]["failed"], rep["sim_time"]
    return rep


def _assert_same(bt_res, rep, cfg) -> dict:
    """Every comparison of the module docstring; returns per strategy id (intents, fills)."""
    from market.risk import pnl_view
    from shm.records import EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_REJECT
    from stages.journal import read_journal_exec, read_journal_orders

    tr = bt_res.trace
    jdir = Path(rep["run_dir"]) / "journal"
    live_o, live_e = read_journal_orders(jdir), read_journal_exec(jdir)
    bt_o, bt_e = tr["intents"], tr["reports"]
    assert tr["n_intents"] == len(bt_o) and tr["n_reports"] == len(bt_e)   # all kept

    def same(a, b, skip, what):
        n = min(len(a), len(b))   # the first record that differs, then the counts
        first = n
        for name in a.dtype.names:
            if name not in skip:
                bad = np.flatnonzero(a[name][:n] != b[name][:n])
                if len(bad):
                    first = min(first, int(bad[0]))
        assert first == n, (f"{what} #{first} differs: backtest {a[first]}, live {b[first]}")
        assert len(a) == len(b), f"{what}s: backtest {len(a)}, live {len(b)}"

    same(bt_o, live_o, {"ring_seq"}, "intent")
    n_rep = rep["sim_time"]["venue_reports"]
    assert n_rep == len(bt_e)
    same(bt_e, live_e[:n_rep], {"ring_seq", "reserved", "send_ts_ns"}, "venue report")
    after = live_e[n_rep:]   # the stop's cancels, answered after the session
    assert np.isin(after["kind"], [EXEC_CANCEL_ACK, EXEC_REJECT, EXEC_CANCEL_REJECT]).all()

    insts = list(cfg.instruments)
    n_strat = len(rep["risk"]["strategies"])
    pos, pnl = pnl_view(tr["limits"], tr["rstate"], n_strat, len(insts))
    per = {}
    for name, st in rep["risk"]["strategies"].items():
        sid = st["strategy_id"]
        bt_pos = {insts[i - 1].key: int(pos[sid, i]) for i in range(1, len(insts) + 1)
                  if pos[sid, i]}
        assert st["positions_lots"] == bt_pos, name
        assert st["own_positions_lots"] == bt_pos, name
        assert (st["realized_pnl"], st["unrealized_pnl"], st["fees"]) == tuple(pnl[sid]), name
        fills = int(np.isin(bt_e["kind"], [3, 4])[bt_e["strategy_id"] == sid].sum())
        per[name] = (int((bt_o["strategy_id"] == sid).sum()), fills)
    return per


def test_live_sim_time_equals_the_backtest_for_every_strategy_kind(tmp_path, shm_prefix):
    from pipeline.config import load_config
    from strategies.backtest import run_backtest

    # every strategy kind must trade within SIM_S: an explicit, busy background flow (the
    # calibrated default rate is a thin 2015 market's, a few events per second)
    path = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs", BUSY)
    text = path.read_text()
    assert PAIRS_DEFAULT in text and ARB_DEFAULT in text
    path.write_text(text.replace(PAIRS_DEFAULT, PAIRS_FAST).replace(ARB_DEFAULT, ARB_EAGER))
    cfg = load_config(path)
    rep = _run_sim_time(path, shm_prefix, "--duration", str(SIM_S))
    bt = run_backtest(cfg, None, duration_s=SIM_S, trace=1 << 16)
    per = _assert_same(bt, rep, cfg)
    kinds = {s.kind for s in cfg.strategies}
    assert kinds == {"market_making", "pairs_trading", "cross_venue_arb"}
    for name, (intents, fills) in per.items():   # each kind took part
        assert intents > 0 and fills > 0, (name, per)


def test_live_sim_time_equals_the_backtest_on_a_recording(tmp_path, shm_prefix, shared_data):
    from market.lobster import convert_to_file
    from pipeline.config import load_config
    from strategies.backtest import run_backtest

    d = shared_data / "lobster"
    rec = tmp_path / "aapl.rec"
    convert_to_file(d / "AAPL_2012-06-21_34200000_57600000_message_10.csv",
                    d / "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv", 10, rec)
    text = (ROOT / "config.toml").read_text()
    head = text[:text.index("[[venues]]")]
    tail = text[text.index("[risk]"):]
    head = head.replace('name = "default"', f'name = "{shm_prefix}"', 1).replace(
        'run_dir = "runs"', f'run_dir = "{tmp_path / "runs"}"', 1)
    path = tmp_path / "lob.toml"
    path.write_text(head + '''
[[venues]]
name = "LOBSTER"
kind = "sim"
maker_fee_bps = -0.2
taker_fee_bps = 0.3
order_latency_us = 100
order_jitter_us = 30

[[instruments]]
symbol = "AAPL"
venue = "LOBSTER"
tick_size = "0.0001"
lot_size = "1"
start_price = "580"

[[strategies]]
name = "mm_aapl"
kind = "market_making"
instruments = ["AAPL@LOBSTER"]

''' + tail)
    cfg = load_config(path)
    rep = _run_sim_time(path, shm_prefix, "--replay", str(rec), "--duration", "0")
    bt = run_backtest(cfg, None, data=rec, trace=1 << 16)
    per = _assert_same(bt, rep, cfg)
    assert per["mm_aapl"][0] > 0, per
