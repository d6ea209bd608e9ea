"""Kraken v1 and v2 handlers: every recorded checksum verifies; lost or reordered updates are
caught by the checksum; v2 numbers keep their exact text; truncation to the subscribed depth."""
from __future__ import annotations

import zlib
from decimal import Decimal

import orjson
import pytest

from feeds.check import check_recordings
from feeds.decimal import Scale
from feeds.handler import FeedInstrument
from feeds.kraken import KrakenV1Handler, KrakenV2Handler
from feeds.meta import derive_instruments
from feeds.recording import KIND_WS, feed_frames, read_recordings
from shm.records import (MSG_LEVEL, MSG_STATUS, REASON_CHECKSUM, REASON_GAP,
                         STATUS_BOOK_INVALID)


def ref_checksum(asks: dict[str, str], bids: dict[str, str]) -> int:
    """Independent rule from the docs: price text -> qty text, sorted by Decimal value."""
    def part(levels, reverse):
        top = sorted(levels.items(), key=lambda kv: Decimal(kv[0]), reverse=reverse)[:10]
        return "".join(p.replace(".", "").lstrip("0") + q.replace(".", "").lstrip("0")
                       for p, q in top)
    return zlib.crc32((part(asks, False) + part(bids, True)).encode())


def test_docs_fragment_rule_example():
    assert ref_checksum({"0.05000": "0.00000304"}, {}) == zlib.crc32(b"5000304")


@pytest.fixture
def v1_frames(shared_data):
    return list(read_recordings([str(shared_data / "kraken/KRAKEN.ws.50.0")]))


def test_v1_recording_checks_clean_with_all_4269_checksums_verified(shared_data):
    r = check_recordings("kraken-v1", [str(shared_data / "kraken/KRAKEN.ws.50.0")])
    assert r["clean"], r["problems"]
    assert r["stats"]["checksum_ok"] == 4269 and r["stats"]["checksum_fail"] == 0
    assert r["stats"]["snapshots"] == 10 and len(r["books"]) == 10


def test_v1_trade_and_ticker_recordings_check_clean(shared_data):
    t = check_recordings("kraken-v1", [str(shared_data / "kraken/KRAKEN.ws.48.0")])
    assert t["clean"] and t["stats"]["trades"] >= 10 and t["stats"]["parse_errors"] == 0
    k = check_recordings("kraken-v1", [str(shared_data / "kraken/KRAKEN.ws.49.0")])
    assert k["clean"] and k["stats"]["tops"] >= 10


def test_v1_multi_trade_message_keeps_order_taker_side_and_exact_time():
    inst = {"XMR/USD": FeedInstrument("XMR/USD", 3, Scale("0.01"), Scale("0.00000001"))}
    h = KrakenV1Handler(inst)
    n = h.feed('[993,[["354.04000000","0.28245396","1618678150.826417","s","m",""],'
               '["353.81000000","1.71754604","1618678150.827816","b","m",""]],"trade",'
               '"XMR/USD"]', 9)
    r = h.records()
    assert n == 2 and list(r["px_ticks"]) == [35404, 35381]
    assert list(r["qty_lots"]) == [28245396, 171754604] and list(r["side"]) == [2, 1]
    assert r[0]["exch_ts_ns"] == 1618678150826417000


def _book_updates(frames):
    """Indices of v1 book update frames, with pair and checksum."""
    out = []
    for i, fr in enumerate(frames):
        if fr.kind == KIND_WS and fr.data.startswith("[") and '"c":"' in fr.data:
            msg = orjson.loads(fr.data)
            out.append((i, msg[-1], msg[-2 - 1]["c"]))
    return out


def _ref_mismatch(frames, pair, stop) -> bool:
    """Independent replay (text dicts, Decimal order) of ``pair``'s book over frames[:stop]:
    True if any update's checksum differs from what Kraken sent."""
    asks: dict[str, str] = {}
    bids: dict[str, str] = {}
    for fr in frames[:stop]:
        if fr.kind != KIND_WS or not fr.data.startswith("[") or f'"{pair}"]' not in fr.data:
            continue
        msg = orjson.loads(fr.data)
        if not msg[-2].startswith("book"):
            continue
        for part in msg[1:-2]:
            if "as" in part:
                asks = {str(Decimal(p)): p + "|" + q for p, q, *_ in part["as"]}
                bids = {str(Decimal(p)): p + "|" + q for p, q, *_ in part["bs"]}
            for key, side in (("a", asks), ("b", bids)):
                for p, q, *_ in part.get(key, []):
                    k = str(Decimal(p))
                    if Decimal(q) == 0:
                        side.pop(k, None)
                    else:
                        side[k] = p + "|" + q
            if "c" in part:
                a = dict(v.split("|") for v in asks.values())
                b = dict(v.split("|") for v in bids.values())
                if ref_checksum(a, b) != int(part["c"]):
                    return True
    return False


def test_every_visible_deleted_or_swapped_v1_update_fails_a_checksum(v1_frames):
    frames = v1_frames[:400]
    inst = derive_instruments("kraken-v1", frames)
    by_pair: dict[str, list] = {}
    for i, pair, _c in _book_updates(frames):
        by_pair.setdefault(pair, []).append(i)
    visible = 0
    for pair, seq in by_pair.items():
        assert not _ref_mismatch(frames, pair, len(frames))     # the reference agrees
        tried = 0
        for i, nxt in zip(seq[:-1], seq[1:]):
            if tried == 1:
                break
            deleted = frames[:i] + frames[i + 1:]
            swapped = list(frames)
            swapped[i], swapped[nxt] = swapped[nxt], swapped[i]
            for stream in (deleted, swapped):
                if not _ref_mismatch(stream, pair, nxt + 1):
                    continue            # this loss is invisible to the top-10 checksum
                h = KrakenV1Handler(inst, depth=1000)
                feed_frames(h, stream[:nxt + 1])
                assert h.stats.checksum_fail >= 1, (pair, i, nxt)
                assert not h.books[pair].valid
                visible += 1
            tried += 1
    assert visible >= 6


def _v1_to_v2(frames, pair, v2_symbol):
    """Real v1 book traffic of one pair as v2 frames: same exact number text, sent as JSON
    numbers (as v2 does); update checksums are Kraken's own, the snapshot's is computed by
    ref_checksum (v1 snapshots carry none)."""
    out = [orjson.dumps({"method": "subscribe", "result": {"channel": "book", "depth": 1000,
                                                           "snapshot": True,
                                                           "symbol": v2_symbol},
                         "success": True}).decode()]
    asks: dict[str, str] = {}
    bids: dict[str, str] = {}
    for fr in frames:
        if fr.kind != KIND_WS or not fr.data.startswith("[") or f'"{pair}"]' not in fr.data:
            continue
        msg = orjson.loads(fr.data)
        if not msg[-2].startswith("book"):
            continue
        parts = msg[1:-2]
        if "as" in parts[0]:
            asks = {p: q for p, q, *_ in parts[0]["as"]}
            bids = {p: q for p, q, *_ in parts[0]["bs"]}
            lv_b = [(p, q) for p, q, *_ in parts[0]["bs"]]
            lv_a = [(p, q) for p, q, *_ in parts[0]["as"]]
            typ, checksum = "snapshot", ref_checksum(asks, bids)
        else:
            lv_a = [(p, q) for part in parts for p, q, *_ in part.get("a", [])]
            lv_b = [(p, q) for part in parts for p, q, *_ in part.get("b", [])]
            typ, checksum = "update", int(parts[-1]["c"])
        body = ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in lv_b)
        abody = ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in lv_a)
        out.append(f'{{"channel":"book","type":"{typ}","data":[{{"symbol":"{v2_symbol}",'
                   f'"bids":[{body}],"asks":[{abody}],"checksum":{checksum},'
                   f'"timestamp":"2021-04-17T16:48:53.365913Z"}}]}}')
    return out


def test_v2_book_from_real_traffic_verifies_every_checksum_with_json_number_prices(v1_frames):
    v2 = _v1_to_v2(v1_frames, "XMR/USD", "XMR/USD")
    assert len(v2) > 300 and '"price":354.' in v2[5]       # numbers, not strings
    inst = {"XMR/USD": FeedInstrument("XMR/USD", 1, Scale("0.00000001"),
                                      Scale("0.00000001"))}
    h = KrakenV2Handler(inst)
    for n, frame in enumerate(v2):
        h.feed(frame, n)
    assert h.stats.parse_errors == 0 and h.stats.checksum_fail == 0
    assert h.stats.checksum_ok == len(v2) - 1 and h.books["XMR/USD"].valid


def test_v2_truncates_after_each_level_and_publishes_the_dropped_level():
    inst = {"MINA/GBP": FeedInstrument("MINA/GBP", 4, Scale("0.0001"), Scale("0.00000001"))}
    h = KrakenV2Handler(inst, depth=3)
    bids = {"0.0286": "74198.19125726", "0.0285": "18831.49589194", "0.0279": "10.00000000"}
    asks = {"0.0288": "32416.38964164", "0.0290": "174.00000000"}
    snap = {"channel": "book", "type": "snapshot", "data": [{
        "symbol": "MINA/GBP", "bids": [{"price": p, "qty": q} for p, q in bids.items()],
        "asks": [{"price": p, "qty": q} for p, q in asks.items()],
        "checksum": ref_checksum(asks, bids), "timestamp": "2026-08-16T23:37:04.190019Z"}]}
    # the JSON numbers keep their text (0.0290 must not become 0.029)
    frame = orjson.dumps(snap).decode().replace('"0.0290"', "0.0290").replace(
        '"174.00000000"', "174.00000000")
    assert '"price":0.0290' in frame
    h.feed(frame, 1)
    assert h.stats.checksum_ok == 1 and h.books["MINA/GBP"].valid
    # remove 0.0279, the venue sends 0.0020 (enters the window), then a new 0.0277: four
    # levels, so the worst (0.0020) must go before the checksum
    expected = {"0.0286": "74198.19125726", "0.0285": "18831.49589194",
                "0.0277": "1486.59884909"}
    upd = ('{"channel":"book","type":"update","data":[{"symbol":"MINA/GBP","bids":['
           '{"price":0.0279,"qty":0.00000000},{"price":0.0020,"qty":5220.00000000},'
           '{"price":0.0277,"qty":1486.59884909}],"asks":[],"checksum":%d,'
           '"timestamp":"2026-08-16T23:37:05.723653Z"}]}' % ref_checksum(asks, expected))
    n = h.feed(upd, 2)
    recs = h.records()
    assert h.stats.checksum_ok == 2 and h.stats.checksum_fail == 0
    assert h.books["MINA/GBP"].bids.levels() == [(286, 7419819125726), (285, 1883149589194),
                                                 (277, 148659884909)]
    levels = [(int(r["px_ticks"]), int(r["qty_lots"])) for r in recs[:n] if r["kind"] == MSG_LEVEL]
    assert levels == [(279, 0), (20, 522000000000), (277, 148659884909), (20, 0)]


def test_v2_checksum_mismatch_invalidates_until_a_fresh_snapshot():
    inst = {"BTC/USD": FeedInstrument("BTC/USD", 2, Scale("0.1"), Scale("0.00000001"))}
    h = KrakenV2Handler(inst)
    asks, bids = {"45285.2": "0.00100000"}, {"45283.5": "0.10000000"}

    def book(typ, a, b, c):
        return orjson.dumps({"channel": "book", "type": typ, "data": [{
            "symbol": "BTC/USD", "bids": [{"price": p, "qty": q} for p, q in b.items()],
            "asks": [{"price": p, "qty": q} for p, q in a.items()], "checksum": c}]})

    h.feed(book("snapshot", asks, bids, ref_checksum(asks, bids)), 1)
    n = h.feed(book("update", {}, {"45283.6": "1.00000000"}, 12345), 2)
    r = h.records()[:n]
    assert h.stats.checksum_fail == 1 and not h.books["BTC/USD"].valid
    assert r[-1]["kind"] == MSG_STATUS and r[-1]["aux0"] == STATUS_BOOK_INVALID \
        and r[-1]["aux1"] == REASON_CHECKSUM
    assert h.take_resync_requests() == {"BTC/USD": REASON_CHECKSUM}
    assert h.feed(book("update", {}, {"45283.7": "1.00000000"}, 1), 3) == 0
    h.feed(book("snapshot", asks, bids, ref_checksum(asks, bids)), 4)
    assert h.books["BTC/USD"].valid and h.stats.resyncs == 1


def test_v2_trades_heartbeat_and_status_frames():
    inst = {"BTC/USD": FeedInstrument("BTC/USD", 2, Scale("0.1"), Scale("0.00000001"))}
    h = KrakenV2Handler(inst)
    n = h.feed('{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy",'
               '"price":105944.20,"qty":0.00027625,"ord_type":"limit","trade_id":10218208,'
               '"timestamp":"2023-10-06T17:35:55.440295Z"}]}', 5)
    r = h.records()[0]
    assert n == 1 and (r["px_ticks"], r["qty_lots"], r["side"], r["aux0"]) == (
        1059442, 27625, 1, 10218208)
    assert h.feed('{"channel":"heartbeat"}', 6) == 0 and h.stats.heartbeats == 1
    h.feed('{"channel":"status","type":"update","data":[{"version":"2.0.10","system":"online",'
           '"api_version":"v2","connection_id":3007355780899554854}]}', 7)
    assert h.stats.parse_errors == 0 and h.stats.ignored == 1


def test_a_malformed_book_update_for_a_known_pair_invalidates_that_book(v1_frames):
    frames = v1_frames[:60]
    inst = derive_instruments("kraken-v1", frames)
    h = KrakenV1Handler(inst, depth=1000)
    feed_frames(h, frames)
    assert h.books["XMR/USD"].valid
    n = h.feed('[992,{"b":[["354.15000000",5.0,"1618678133.365913"]],"c":"1"},"book-1000",'
               '"XMR/USD"]', 1)
    r = h.records()[:n]
    assert h.stats.parse_errors == 1 and not h.books["XMR/USD"].valid
    assert n == 1 and r[0]["aux0"] == STATUS_BOOK_INVALID and r[0]["aux1"] == REASON_GAP
    assert all(b.valid for s, b in h.books.items() if s != "XMR/USD")
