"""Coinbase Exchange and Advanced Trade handlers."""
from __future__ import annotations

import orjson

from feeds.check import check_recordings
from feeds.coinbase import CoinbaseAdvancedHandler, CoinbaseHandler
from feeds.decimal import Scale
from feeds.handler import FeedInstrument
from shm.records import MSG_STATUS, MSG_TRADE, REASON_GAP, STATUS_BOOK_INVALID


def test_exchange_recording_checks_clean(shared_data):
    r = check_recordings("coinbase", [str(shared_data / "coinbase/COINBASE.ws.28.0")])
    assert r["clean"], r["problems"]
    st = r["stats"]
    assert st["snapshots"] == 10 and st["book_updates"] > 9000 and st["trades"] == 107
    assert st["crossed"] == 0 and st["parse_errors"] == 0
    assert all(b["valid"] for b in r["books"].values()) and len(r["books"]) == 10


SKL = {"SKL-GBP": FeedInstrument("SKL-GBP", 8, Scale("0.0001"), Scale("1"))}


def test_match_side_is_the_maker_so_the_aggressor_is_the_other_side():
    h = CoinbaseHandler(SKL)
    n = h.feed('{"type":"match","trade_id":82008,"maker_order_id":"f7","taker_order_id":"d3",'
               '"side":"sell","size":"335","price":"0.5762","product_id":"SKL-GBP",'
               '"sequence":27883501,"time":"2021-04-17T16:43:37.270697Z"}', 11)
    r = h.records()[0]
    assert n == 1 and r["kind"] == MSG_TRADE and r["side"] == 1          # the taker bought
    assert (r["px_ticks"], r["qty_lots"], r["aux0"]) == (5762, 335, 82008)
    assert r["exch_ts_ns"] == 1618677817270697000


def test_exchange_l2update_applies_and_a_malformed_one_invalidates_its_book():
    h = CoinbaseHandler(SKL)
    h.feed('{"type":"snapshot","product_id":"SKL-GBP","bids":[["0.5742","10"]],'
           '"asks":[["0.5771","20"]]}', 1)
    h.feed('{"type":"l2update","product_id":"SKL-GBP","changes":[["buy","0.5750","5"],'
           '["sell","0.5771","0.0"]],"time":"2021-04-17T16:43:37.077621Z"}', 2)
    b = h.books["SKL-GBP"]
    assert b.valid and b.bids.best() == (5750, 5) and b.asks.best() == (-1, 0)
    n = h.feed('{"type":"l2update","product_id":"SKL-GBP","changes":[["buy","0.57x","5"]]}', 3)
    assert h.stats.parse_errors == 1 and not b.valid
    assert n == 1 and h.records()[0]["aux0"] == STATUS_BOOK_INVALID
    assert b.bids.levels() == [(5750, 5), (5742, 10)]       # untouched by the bad update


def test_a_crossed_book_is_counted_and_invalidated():
    h = CoinbaseHandler(SKL)
    h.feed('{"type":"snapshot","product_id":"SKL-GBP","bids":[["0.5742","10"]],'
           '"asks":[["0.5771","20"]]}', 1)
    h.feed('{"type":"l2update","product_id":"SKL-GBP","changes":[["buy","0.5771","5"]]}', 2)
    assert h.stats.crossed == 1 and not h.books["SKL-GBP"].valid


def _at(seq, channel, events):
    return orjson.dumps({"channel": channel, "client_id": "", "timestamp":
                         "2026-08-09T21:05:48.483587501Z", "sequence_num": seq,
                         "events": events})


BTC = {"BTC-USD": FeedInstrument("BTC-USD", 1, Scale("0.01"), Scale("0.00000001"))}


def test_advanced_trade_sequence_gap_invalidates_every_book_of_the_connection():
    h = CoinbaseAdvancedHandler(BTC)
    h.feed(_at(0, "subscriptions", [{"subscriptions": {"level2": ["BTC-USD"]}}]), 1)
    h.feed(_at(1, "l2_data", [{"type": "snapshot", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": "x", "price_level": "65083.66",
         "new_quantity": "0.20371215"},
        {"side": "offer", "event_time": "x", "price_level": "65090.00", "new_quantity": "1"}]}]),
        2)
    h.feed(_at(2, "l2_data", [{"type": "update", "product_id": "BTC-USD", "updates": [
        {"side": "bid", "event_time": "x", "price_level": "65083.66", "new_quantity": "0"}]}]),
        3)
    b = h.books["BTC-USD"]
    assert b.valid and b.bids.best() == (-1, 0) and b.asks.best() == (6509000, 100000000)
    assert b.last_rx_ns == 3
    n = h.feed(_at(4, "heartbeats", [{"current_time": "t", "heartbeat_counter": 41691}]), 4)
    assert h.stats.gaps == 1 and not b.valid
    r = h.records()[:n]
    assert r[0]["kind"] == MSG_STATUS and r[0]["aux1"] == REASON_GAP
    h.feed(_at(5, "heartbeats", [{"current_time": "t", "heartbeat_counter": "41693"}]), 5)
    assert h.stats.heartbeat_gaps == 1 and h.stats.heartbeats == 2
    # a malformed frame does not advance the sequence, so it surfaces as a gap as well
    h.feed(b'{"channel":"l2_data","sequence_num":6,"events":[{"type":"update"}]}', 6)
    h.feed(_at(7, "heartbeats", [{"current_time": "t", "heartbeat_counter": 41694}]), 7)
    assert h.stats.parse_errors == 1 and h.stats.gaps == 2
    # a new connection restarts at 0 and a fresh snapshot resyncs
    h.feed(_at(0, "subscriptions", [{}]), 8)
    h.feed(_at(1, "l2_data", [{"type": "snapshot", "product_id": "BTC-USD", "updates": []}]), 9)
    assert b.valid and h.stats.resyncs == 1 and h.stats.gaps == 2


def test_advanced_trade_market_trades_parse_string_trade_ids():
    h = CoinbaseAdvancedHandler(BTC)
    n = h.feed(_at(0, "market_trades", [{"type": "update", "trades": [
        {"product_id": "BTC-USD", "trade_id": "833140788", "price": "1919.48",
         "size": "0.058662", "time": "2026-08-09T21:05:56.147332Z", "side": "SELL"}]}]), 1)
    r = h.records()[0]
    assert n == 1 and (r["px_ticks"], r["qty_lots"], r["aux0"]) == (191948, 5866200, 833140788)
    assert r["side"] == 1        # read as the maker's side by default (see module docstring)
    h2 = CoinbaseAdvancedHandler(BTC, at_trade_side_is_maker=False)
    h2.feed(_at(0, "market_trades", [{"type": "update", "trades": [
        {"product_id": "BTC-USD", "trade_id": "1", "price": "1", "size": "1",
         "side": "SELL"}]}]), 1)
    assert h2.records()[0]["side"] == 2
