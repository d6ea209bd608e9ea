"""Records out of the handlers: a consumer mirroring them (market/book.py) holds the handler's
book; recordings convert to record files; recorder and readers round-trip; the CLI; the
staleness watchdog."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feeds.check import check_recordings
from feeds.convert import convert_recording
from feeds.meta import derive_instruments, make_handler
from feeds.recording import (KIND_CONNECT, KIND_REST, KIND_SENT, KIND_WS, Recorder,
                             feed_frames, read_recording, read_recordings)
from pipeline.config import load_config
from shm.records import (MFLAG_LAST_IN_BATCH, MFLAG_REPLAY, MSG_LEVEL, MSG_SNAP_START,
                         MSG_STATUS, REASON_STALE, STATUS_BOOK_INVALID)

CASES = {
    "binance": ["binance/BINANCE.ws.1.0", "binance/BINANCE.http.0.0"],
    "coinbase": ["coinbase/COINBASE.ws.28.0"],
    "kraken-v1": ["kraken/KRAKEN.ws.50.0"],
}


@pytest.mark.parametrize("venue", list(CASES))
def test_a_consumer_applying_the_records_holds_the_handlers_book(venue, shared_data):
    from market.book import L2Book

    files = [str(shared_data / f) for f in CASES[venue]]
    inst = derive_instruments(venue, read_recordings(files))
    h = make_handler(venue, inst, replay=True)
    mirror = L2Book(len(inst), max_levels=4096)
    flags = []
    feed_frames(h, read_recordings(files), lambda r: (mirror.apply(r), flags.append(
        (int(r["flags"][-1]), int(r["kind"][-1])))))
    for sym, b in h.books.items():
        i = b.instrument_id
        assert mirror.levels(i, 0) == b.bids.levels(), sym
        assert mirror.levels(i, 1) == b.asks.levels(), sym
    # every message that changed a book ends with a LAST_IN_BATCH level record
    assert all(f & MFLAG_REPLAY for f, _ in flags)
    assert any(f & MFLAG_LAST_IN_BATCH for f, k in flags if k == MSG_LEVEL)


def test_binance_recording_converts_to_a_record_file(shared_data, tmp_path):
    from market.recordfile import instruments_from_header, open_record_file

    files = [str(shared_data / f) for f in CASES["binance"]]
    out = tmp_path / "binance.rec"
    summary = convert_recording("binance", files, str(out), None)
    header, recs = open_record_file(out)
    assert len(recs) == summary["records"] > 5000
    assert summary["by_kind"]["snap_start"] == 4 and summary["stats"]["gaps"] == 0
    assert (recs["flags"] & MFLAG_REPLAY).all()
    syms = {i.symbol: i for i in instruments_from_header(header)}
    assert set(syms) == {"NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"}
    assert str(syms["NKNUSDT"].tick_size) == "0.00001"
    assert list(recs["kind"][:1]) == [MSG_SNAP_START]


def test_kraken_replay_detects_v1_recordings(shared_data, tmp_path):
    out = tmp_path / "k.rec"
    s = convert_recording("kraken", [str(shared_data / CASES["kraken-v1"][0])], str(out))
    assert s["venue"] == "kraken-v1" and s["stats"]["checksum_ok"] == 4269


def test_recorder_round_trips_and_replays_like_the_original(shared_data, tmp_path):
    files = [str(shared_data / f) for f in CASES["binance"]]
    frames = list(read_recordings(files))
    assert {f.kind for f in frames} == {KIND_WS, KIND_REST, KIND_CONNECT}
    path = tmp_path / "rec.jsonl"
    with Recorder(path) as rec:
        for f in frames:
            if f.kind in (KIND_WS, KIND_REST):
                rec.write(f.kind, f.url, f.data, f.ts_ns)
    back = list(read_recording(path))
    assert [(f.ts_ns, f.kind, f.url, f.data) for f in back] == [
        (f.ts_ns, f.kind, f.url, f.data) for f in frames if f.kind in (KIND_WS, KIND_REST)]
    assert json.loads(path.read_text().splitlines()[0]).keys() == {"ts_ns", "kind", "url",
                                                                  "data"}
    a = check_recordings("binance", files)
    b = check_recordings("binance", [str(path)])
    assert b["clean"] and a["books"] == b["books"]
    assert a["book_ticker_oracle"] == b["book_ticker_oracle"]


def test_cryptofeed_reader_knows_connections_sent_frames_and_rest(shared_data):
    frames = list(read_recording(shared_data / "coinbase/COINBASE.ws.28.0"))
    kinds = [f.kind for f in frames]
    assert kinds[0] == KIND_CONNECT and kinds.count(KIND_SENT) == 3
    assert frames[0].url == "wss://ws-feed.pro.coinbase.com" and frames[0].ts_ns == \
        1618677816843429800
    rest = list(read_recording(shared_data / "binance/BINANCE.http.0.0"))
    assert [f.kind for f in rest] == [KIND_REST] * 4
    assert rest[0].url.endswith("symbol=NKNUSDT&limit=1000")
    with pytest.raises(FileNotFoundError):
        read_recording(shared_data / "nope")


def test_feed_check_cli_reports_and_exits_by_verdict(shared_data, capsys):
    from pipeline.cli import main

    f = str(shared_data / CASES["kraken-v1"][0])
    assert main(["feed", "check", "--venue", "kraken-v1", "--file", f, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"]["checksum_ok"] == 4269 and report["clean"]
    files = [str(shared_data / x) for x in CASES["binance"]]
    assert main(["feed", "check", "--venue", "binance", "--file", files[0], "--file",
                 files[1]]) == 0
    assert "bookTicker oracle: 26/26 matched" in capsys.readouterr().out
    # the ws file without its snapshots never syncs: not clean
    assert main(["feed", "check", "--venue", "binance", "--file", files[0]]) == 1
    assert "NOT CLEAN" in capsys.readouterr().out
    assert main(["feed", "check", "--venue", "binance", "--file", "/nonexistent"]) == 2
    capsys.readouterr()
    fixture = Path(__file__).resolve().parent.parent / "fixtures/feeds_kraken_v2_xmrusd.jsonl"
    assert main(["feed", "check", "--venue", "kraken", "--file", str(fixture), "--json"]) == 0
    v2 = json.loads(capsys.readouterr().out)
    assert v2["stats"]["checksum_ok"] == 120 and v2["stats"]["checksum_fail"] == 0


def test_stale_books_are_invalidated_and_heartbeats_keep_them_alive(shared_data):
    files = [str(shared_data / CASES["kraken-v1"][0])]
    inst = derive_instruments("kraken-v1", read_recordings(files))
    h = make_handler("kraken-v1", inst, stale_ns=5_000_000_000)
    frames = list(read_recordings(files))
    feed_frames(h, frames)
    last = max(f.ts_ns for f in frames)
    assert h.check_stale(last + 1_000_000_000) == 0          # heartbeats refreshed every book
    n = h.check_stale(last + 6_000_000_000)
    r = h.records()[:n]
    assert n == 10 and h.stats.stale == 10
    assert (r["kind"] == MSG_STATUS).all() and (r["aux0"] == STATUS_BOOK_INVALID).all()
    assert (r["aux1"] == REASON_STALE).all()
    assert set(h.take_resync_requests()) == set(inst)
    assert np.all(~np.array([b.valid for b in h.books.values()]))


def test_instruments_come_from_config_when_given(shared_data, tmp_path):
    cfg = tmp_path / "feeds.toml"
    body = ['[instance]', 'allow_live = true   # only so the config validates; nothing connects',
            '[[venues]]', 'name = "bn"', 'kind = "binance"']
    for sym, tick, lot in [("NKNUSDT", "0.00001", "0.1"), ("BLZETH", "0.00000001", "1"),
                           ("LRCBTC", "0.00000001", "1"), ("RUNEEUR", "0.01", "0.01")]:
        body += ["[[instruments]]", f'symbol = "{sym}"', 'venue = "bn"',
                 f'tick_size = "{tick}"', f'lot_size = "{lot}"']
    cfg.write_text("\n".join(body) + "\n")
    files = [str(shared_data / f) for f in CASES["binance"]]
    r = check_recordings("binance", files, load_config(cfg))
    assert r["instrument_source"] == "config"
    assert r["instruments"]["NKNUSDT"] == {"id": 1, "tick": "0.00001", "lot": "0.1"}
    # RUNEEUR prices have 3 decimals: a 0.01 tick cannot hold them exactly, so those frames
    # are refused (counted), never rounded
    assert r["stats"]["parse_errors"] > 0 and not r["clean"]
    assert r["books"]["NKNUSDT"]["valid"]
