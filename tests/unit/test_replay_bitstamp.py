"""``run.py replay bitstamp``: the Bitstamp BTC/USD order-event log into a record file that the
backtest replays (its trades and levels exactly what market.bitstamp makes of the log)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _run(*args):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_replay_bitstamp_writes_the_log_s_records_and_a_backtest_trades_on_them(tmp_path,
                                                                               shared_data):
    from market.bitstamp import convert
    from market.recordfile import instruments_from_header, open_record_file
    from shm.records import MARKET_DTYPE, MSG_TRADE
    from strategies.backtest import run_backtest
    from pipeline.config import load_config

    log = shared_data / "calibration" / "bitstamp" / "bitstamp_btcusd_2015-05-01_events.log.gz"
    out = tmp_path / "bs.rec"
    r = _run("replay", "bitstamp", "--file", str(log), "--max-seconds", "120", "--out", str(out))
    assert r.returncode == 0, r.stderr
    header, recs = open_record_file(out, MARKET_DTYPE)
    [inst] = instruments_from_header(header)
    assert inst.key == "BTC/USD@BITSTAMP"
    want, _meta = convert(log, max_seconds=120)
    assert len(recs) == len(want) and (np.asarray(recs) == want).all()
    assert (recs["kind"] == MSG_TRADE).sum() > 0
    res = run_backtest(load_config(ROOT / "config.toml"), "mm_btc", data=out)
    assert res.report["strategy"]["instruments"] == ["BTC/USD@BITSTAMP"]
    assert res.counters["orders_sent"] > 0


def test_replay_bitstamp_refuses_a_file_that_is_not_the_log(tmp_path):
    bad = tmp_path / "x.log"
    bad.write_text("not,a,bitstamp,log\n")
    r = _run("replay", "bitstamp", "--file", str(bad), "--out", str(tmp_path / "o.rec"))
    assert r.returncode == 2
    assert "not a Bitstamp event log" in r.stderr and str(bad) in r.stderr
    r = _run("replay", "bitstamp", "--file", str(bad), "--max-seconds", "-1", "--out",
             str(tmp_path / "o.rec"))
    assert r.returncode == 2 and "--max-seconds" in r.stderr
