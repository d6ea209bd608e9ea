"""Binance spot handler: the recording checks clean, sync rules, gaps, resync, oracle."""
from __future__ import annotations

import orjson
import pytest

from feeds.binance import BinanceHandler
from feeds.check import check_recordings
from feeds.decimal import Scale
from feeds.handler import FeedInstrument
from feeds.meta import derive_instruments
from feeds.recording import KIND_REST, KIND_WS, Frame, feed_frames, read_recordings
from shm.records import (MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS, REASON_GAP,
                         REASON_SNAPSHOT, STATUS_BOOK_INVALID, STATUS_BOOK_VALID)


@pytest.fixture
def files(shared_data):
    return [str(shared_data / "binance/BINANCE.ws.1.0"),
            str(shared_data / "binance/BINANCE.http.0.0")]


def _run(frames, instruments):
    h = BinanceHandler(instruments, replay=True)
    feed_frames(h, frames)
    h.flush_oracle()
    return h


def _applied_diffs(frames, instruments):
    """Indices of depth frames that advanced a valid book in the clean run, per symbol."""
    h = BinanceHandler(instruments)
    out = {}
    for i, fr in enumerate(frames):
        before = {s: b.update_id for s, b in h.books.items() if b.valid}
        feed_frames(h, [fr])
        for s, b in h.books.items():
            if b.valid and s in before and b.update_id != before[s] and fr.kind == KIND_WS:
                out.setdefault(s, []).append(i)
    return out


def test_recording_checks_clean_and_every_book_ticker_comparison_matches(files):
    r = check_recordings("binance", files)
    assert r["clean"], r["problems"]
    st = r["stats"]
    assert st["gaps"] == 0 and st["parse_errors"] == 0 and st["crossed"] == 0
    assert st["snapshots"] == 4 and st["book_updates"] > 300
    o = r["book_ticker_oracle"]
    assert o["compared"] >= 20 and o["matched"] == o["compared"]
    assert all(b["valid"] for b in r["books"].values()) and len(r["books"]) == 4


def test_first_diff_with_U_equal_to_lastUpdateId_plus_one_is_a_valid_start():
    inst = {"NKNUSDT": FeedInstrument("NKNUSDT", 1, Scale("0.0001"), Scale("1"))}
    h = BinanceHandler(inst)
    snap = '{"lastUpdateId":499869752,"bids":[["0.35210000","672.00000000"]],' \
           '"asks":[["0.35290000","100.00000000"]]}'
    h.feed_rest("https://api.binance.com/api/v3/depth?symbol=NKNUSDT&limit=1000", snap, 1)
    old = '{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"NKNUSDT",' \
          '"U":499869750,"u":499869752,"b":[["0.35130000","6195.00000000"]],"a":[]}}'
    first = '{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate","E":2,"s":"NKNUSDT",' \
            '"U":499869753,"u":499869754,"b":[["0.35170000","4265.00000000"]],' \
            '"a":[["0.35290000","10968.00000000"]]}}'
    assert h.feed(old, 2) == 0 and h.stats.dropped_stale_diffs == 1
    n = h.feed(first, 3)
    assert n == 2 and h.stats.gaps == 0
    book = h.books["NKNUSDT"]
    assert book.valid and book.update_id == 499869754
    assert book.asks.best() == (3529, 10968)


def test_snapshot_arriving_after_all_diffs_is_accepted_from_the_buffer(files):
    frames = list(read_recordings(files))
    ws_then_rest = [f for f in frames if f.kind != KIND_REST] + \
        [f for f in frames if f.kind == KIND_REST]
    inst = derive_instruments("binance", frames)
    merged = _run(frames, inst)
    late = _run(ws_then_rest, inst)
    assert late.stats.gaps == 0 and late.stats.buffered > 100
    for sym, book in merged.books.items():
        other = late.books[sym]
        assert other.valid and other.update_id == book.update_id
        assert other.bids.levels() == book.bids.levels()
        assert other.asks.levels() == book.asks.levels()


def test_a_recording_split_into_two_files_is_one_stream(files, tmp_path, shared_data):
    lines = (shared_data / "binance/BINANCE.ws.1.0").read_text().splitlines(keepends=True)
    a, b = tmp_path / "BINANCE.ws.1.0.a", tmp_path / "BINANCE.ws.1.0.b"
    a.write_text("".join(lines[:140]))
    b.write_text("".join(lines[140:]))
    whole = check_recordings("binance", files)
    split = check_recordings("binance", [str(a), str(b), files[1]])
    assert split["clean"], split["problems"]
    assert split["stats"]["book_updates"] == whole["stats"]["book_updates"]
    assert split["books"] == whole["books"]


def test_deleting_any_applied_depth_update_is_detected_as_a_gap(files, run_slow):
    frames = list(read_recordings(files))
    inst = derive_instruments("binance", frames)
    applied = _applied_diffs(frames, inst)
    checked = 0
    for sym, idx in applied.items():
        # the last one has no successor to reveal it; by default every 6th (all: --run-slow)
        for i in idx[:-1][::1 if run_slow else 6]:
            h = _run(frames[:i] + frames[i + 1:], inst)
            assert h.stats.gaps >= 1, (sym, i)
            assert not h.books[sym].valid
            checked += 1
    assert checked > (100 if run_slow else 15)


def test_swapping_two_consecutive_depth_updates_is_detected_as_a_gap(files, run_slow):
    frames = list(read_recordings(files))
    inst = derive_instruments("binance", frames)
    checked = 0
    for sym, idx in _applied_diffs(frames, inst).items():
        for i, j in list(zip(idx[:-1], idx[1:]))[::1 if run_slow else 6]:
            swapped = list(frames)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            h = _run(swapped, inst)
            assert h.stats.gaps >= 1, (sym, i, j)
            checked += 1
    assert checked > (100 if run_slow else 15)


def _diff(U, u, bids=(), asks=()):
    return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1723161255308, "s": "BTCUSDT", "U": U, "u": u,
        "b": [list(x) for x in bids], "a": [list(x) for x in asks]}})


def _snap(last_id, bids, asks):
    return orjson.dumps({"lastUpdateId": last_id, "bids": [list(x) for x in bids],
                         "asks": [list(x) for x in asks]})


URL = "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"
BTC = {"BTCUSDT": FeedInstrument("BTCUSDT", 7, Scale("0.01"), Scale("0.00001"))}


def test_a_gap_invalidates_the_book_and_a_new_snapshot_resyncs_it():
    h = BinanceHandler(BTC)
    n = h.feed_rest(URL, _snap(100, [("100.00", "1.0")], [("101.00", "2.0")]), 1)
    recs = h.records().copy()
    assert n == 5 and list(recs["kind"]) == [MSG_SNAP_START, MSG_LEVEL, MSG_LEVEL, MSG_SNAP_END,
                                            MSG_STATUS]
    assert recs[-1]["aux0"] == STATUS_BOOK_VALID and recs[-1]["aux1"] == REASON_SNAPSHOT
    assert (recs["instrument_id"] == 7).all()
    h.feed(_diff(101, 102, bids=[("100.50", "3.0")]), 2)
    assert h.books["BTCUSDT"].bids.best() == (10050, 300000)
    n = h.feed(_diff(105, 106, bids=[("100.60", "3.0")]), 3)      # 103..104 missing
    st = h.records()
    assert n == 1 and st[0]["kind"] == MSG_STATUS and st[0]["aux0"] == STATUS_BOOK_INVALID \
        and st[0]["aux1"] == REASON_GAP
    assert h.stats.gaps == 1 and not h.books["BTCUSDT"].valid
    assert h.take_resync_requests() == {"BTCUSDT": REASON_GAP}
    assert h.feed(_diff(107, 108, asks=[("101.00", "0")]), 4) == 0      # buffered
    h.feed_rest(URL, _snap(106, [("100.60", "3.0")], [("101.00", "2.0")]), 5)
    book = h.books["BTCUSDT"]
    assert book.valid and book.update_id == 108 and h.stats.resyncs == 1
    assert book.asks.best() == (-1, 0)            # the buffered diff removed the only ask


def test_a_snapshot_older_than_the_buffered_diffs_is_refused_and_another_requested():
    h = BinanceHandler(BTC)
    h.feed(_diff(200, 205, bids=[("100.00", "1.0")]), 1)
    h.feed_rest(URL, _snap(150, [("99.00", "1.0")], []), 2)
    assert not h.books["BTCUSDT"].valid and h.stats.gaps == 1
    assert "BTCUSDT" in h.take_resync_requests()
    h.feed_rest(URL, _snap(202, [("99.00", "1.0")], []), 3)      # 200 <= 203 <= 205
    assert h.books["BTCUSDT"].valid and h.books["BTCUSDT"].update_id == 205


def test_book_ticker_oracle_counts_a_mismatch_at_the_same_update_id():
    h = BinanceHandler(BTC)
    h.feed_rest(URL, _snap(10, [("100.00", "1.0")], [("101.00", "2.0")]), 1)
    tick = '{"stream":"btcusdt@bookTicker","data":{"u":10,"s":"BTCUSDT","b":"100.00",' \
           '"B":"1.00000","a":"101.00","A":"2.5"}}'
    h.feed(tick, 2)
    ok = tick.replace('"2.5"', '"2.0"')
    h.feed(ok, 3)
    early = ok.replace('"u":10', '"u":12').replace('"1.00000"', '"4"')
    h.feed(early, 4)                            # waits for the diff that ends at 12
    h.feed(_diff(11, 12, bids=[("100.00", "4")]), 5)
    assert (h.stats.oracle_mismatch, h.stats.oracle_match) == (1, 2)


def test_trades_carry_the_aggressor_side_and_exact_integers():
    h = BinanceHandler(BTC)
    t = '{"stream":"btcusdt@trade","data":{"e":"trade","E":1723161255343,"s":"BTCUSDT",' \
        '"t":3735683259,"p":"61837.63000000","q":"0.02000000","T":1723161255342,"m":true,' \
        '"M":true}}'
    assert h.feed(t, 5) == 1
    r = h.records()[0]
    assert (r["px_ticks"], r["qty_lots"], r["aux0"], r["side"]) == (6183763, 2000, 3735683259, 2)
    assert r["exch_ts_ns"] == 1723161255342 * 1_000_000 and r["recv_ts_ns"] == 5
    agg = t.replace('"trade"', '"aggTrade"', 1).replace('"t":', '"a":').replace("true,", "false,", 1)
    assert h.feed(agg, 6) == 1 and h.records()[0]["side"] == 1


def test_frames_without_a_known_symbol_or_kind_are_counted_not_applied():
    h = BinanceHandler(BTC)
    assert h.feed(_diff(1, 2).replace(b"BTCUSDT", b"ETHUSDT"), 1) == 0
    assert h.feed('{"stream":"x@kline_1m","data":{"e":"kline"}}', 2) == 0
    assert h.feed_rest("https://x/api/v3/depth?limit=5", _snap(1, [], []), 3) == 0
    assert h.stats.unknown_symbol == 1 and h.stats.ignored == 2 and h.stats.parse_errors == 0
    assert Frame(0, KIND_WS, "", "").kind == "ws"
