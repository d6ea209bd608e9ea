"""Backtests on converted venue recordings (issue 14 item 5): a slice of each real recording in
../shared/data (Binance, Coinbase, Kraken; see ../shared/data/README.md for their origin and
licence) goes through ``run.py replay``'s converter and ``mm_btc`` is backtested on it; the
replay's clock (market.replayvenue.replay_clock / replay_time_span) on records without an
exchange time; record files with absurd times are refused naming the file.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from market.recordfile import RecordFileWriter, open_record_file
from market.replayvenue import (MAX_REPLAY_SPAN_NS, ReplayTimeError, replay_clock,
                                replay_time_span)
from pipeline.cli import main as cli_main
from pipeline.config import load_config
from pipeline.exits import EXIT_USAGE
from shm.instruments import Instrument
from shm.records import (MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MSG_LEVEL, MSG_SNAP_END,
                         MSG_SNAP_START, MSG_STATUS, SIDE_BUY, SIDE_SELL, STATUS_BOOK_VALID)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
S = 1_000_000_000
T0 = 1_618_678_133 * S          # an epoch time in ns, as the recordings have

# (venue, recording files, lines of the websocket recording to keep). Each slice keeps the
# opening snapshots and a few seconds of updates and trades after them.
SLICES = {
    "binance": (["binance/BINANCE.ws.1.0", "binance/BINANCE.http.0.0"], 120),
    "coinbase": (["coinbase/COINBASE.ws.28.0"], 2500),
    "kraken": (["kraken/KRAKEN.ws.50.0"], 900),
}


def _slice(tmp_path, venue) -> list[Path]:
    files, lines = SLICES[venue]
    out = []
    for i, name in enumerate(files):
        src = DATA / name
        if not src.is_file():
            pytest.skip(f"recording {src} not present")
        text = src.read_text().splitlines(keepends=True)
        dst = tmp_path / src.name
        # the websocket recording is cut; the REST snapshot file (Binance) is kept whole
        dst.write_text("".join(text[:lines] if i == 0 else text))
        out.append(dst)
    return out


@pytest.mark.parametrize("venue", sorted(SLICES))
def test_mm_backtest_runs_on_a_converted_recording_for_its_span(tmp_path, venue):
    from feeds.convert import convert_recording
    from market.report import format_text, to_json
    from strategies.backtest import run_backtest

    rec = tmp_path / f"{venue}.rec"
    summary = convert_recording(venue, [str(f) for f in _slice(tmp_path, venue)], str(rec))
    assert summary["records"] > 0
    assert summary["by_kind"]["status"] > 0           # status records: exch_ts_ns == 0
    res = run_backtest(load_config(), "mm_btc", str(rec))
    rep = res.report
    _h, recs = open_record_file(rec, MARKET_DTYPE)
    first, last = replay_time_span(np.asarray(recs))
    got = rep["counters"]["simulated_s"]
    # the run covers the file: first venue time to the last delivery (+ md latency, < 1 s)
    assert (last - first) / S <= got < (last - first) / S + 1.0
    assert got < 600                                   # the slice is seconds, not decades
    assert rep["counters"]["md_records"] == summary["records"]
    assert rep["counters"]["orders_sent"] > 0
    assert rep["counters"]["orders_acked"] > 0         # the venue saw our orders
    assert rep["kernel_errors"] == 0
    assert "halted" not in rep
    assert rep["strategy"]["instruments"][0].endswith(
        "@kraken-v1" if venue == "kraken" else f"@{venue}")
    assert "backtest mm_btc" in format_text(rep, "mm_btc")
    assert '"sharpe"' in to_json(rep)


def _recs(times):
    """Level records with the given (exch_ts, recv_ts) pairs."""
    r = np.zeros(len(times), dtype=MARKET_DTYPE)
    for k, (exch, recv) in enumerate(times):
        r[k]["kind"], r[k]["side"], r[k]["instrument_id"] = MSG_LEVEL, SIDE_BUY, 1
        r[k]["exch_ts_ns"], r[k]["recv_ts_ns"] = exch, recv
        r[k]["px_ticks"], r[k]["qty_lots"] = 100, 1
        r[k]["flags"] = MFLAG_LAST_IN_BATCH
    return r


def test_time_span_ignores_missing_exchange_times_and_uses_receive_times():
    # status + snapshot records without exchange time (0), then updates with one
    r = _recs([(0, T0), (0, T0), (T0 + 2 * S, T0 + 2 * S + 5_000_000),
               (0, T0 + 3 * S), (T0 + 4 * S, T0 + 4 * S + 1_000_000)])
    r[0]["kind"], r[0]["aux0"] = MSG_STATUS, STATUS_BOOK_VALID
    assert replay_time_span(r) == (T0, T0 + 4 * S + 1_000_000)
    venue_t = replay_clock(r)["exch_ts_ns"]
    assert list(venue_t) == [T0, T0, T0 + 2 * S, T0 + 3 * S, T0 + 4 * S]
    assert r["exch_ts_ns"][0] == 0                      # the caller's records are untouched


def test_venue_times_never_go_back_in_file_order():
    # a venue clock a little ahead of the receive clock, then a record with no exchange time
    r = _recs([(T0 + 30, T0 + 10), (0, T0 + 20), (T0 + 25, T0 + 40)])
    assert list(replay_clock(r)["exch_ts_ns"]) == [T0 + 30, T0 + 30, T0 + 30]
    assert replay_time_span(r) == (T0 + 30, T0 + 40)
    assert replay_time_span(r[:0]) == (0, 0)


def test_records_without_any_time_are_refused_naming_the_source():
    with pytest.raises(ReplayTimeError, match=r"feed\.rec: record 1 .*neither"):
        replay_clock(_recs([(T0, T0), (0, 0)]), "feed.rec")


def test_a_span_of_decades_is_refused_not_allocated():
    with pytest.raises(ReplayTimeError, match=r"x\.rec: record times span .* days"):
        replay_time_span(_recs([(1, 0), (T0, T0)]), "x.rec")
    ok = _recs([(T0, T0), (T0 + MAX_REPLAY_SPAN_NS, T0 + MAX_REPLAY_SPAN_NS)])
    assert replay_time_span(ok) == (T0, T0 + MAX_REPLAY_SPAN_NS)


def _absurd_file(path: Path) -> Path:
    """A valid record file whose book is fine but whose times jump by decades (a record stamped
    in seconds beside records stamped in epoch ns)."""
    r = _recs([(0, T0), (T0, T0), (T0, T0), (0, T0), (5 * T0, 5 * T0)])
    r[0]["kind"] = MSG_SNAP_START
    r[2]["side"], r[2]["px_ticks"] = SIDE_SELL, 101
    r[3]["kind"] = MSG_SNAP_END
    inst = [Instrument(1, "BTC-USD", "simA", 1, Decimal("0.01"), Decimal("0.0001"))]
    with RecordFileWriter(path, MARKET_DTYPE, inst) as w:
        w.append(r)
    return path


def test_backtest_refuses_a_record_file_with_absurd_times_naming_it(tmp_path):
    from strategies.backtest import run_backtest

    f = _absurd_file(tmp_path / "absurd.rec")
    with pytest.raises(ReplayTimeError, match=str(f).replace(".", r"\.") + ": record times span"):
        run_backtest(load_config(), "mm_btc", str(f))


def test_cli_backtest_on_absurd_times_exits_2_naming_the_file(tmp_path, capsys):
    f = _absurd_file(tmp_path / "absurd.rec")
    capsys.readouterr()
    try:
        code = cli_main(["backtest", "--strategy", "mm_btc", "--data", str(f),
                         "--out", str(tmp_path / "out")])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert f"{f}: record times span" in err and "Traceback" not in err
