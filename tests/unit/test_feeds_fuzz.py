"""Fuzzed, truncated, oversized and wrongly typed frames (hypothesis) are counted and skipped:
they never crash a handler and never change a valid book."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.meta import derive_instruments, make_handler
from feeds.recording import KIND_WS, feed_frames, read_recordings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOURCES = {
    "binance": (["binance/BINANCE.ws.1.0", "binance/BINANCE.http.0.0"], None),
    "coinbase": (["coinbase/COINBASE.ws.28.0"], 400),
    "kraken-v1": (["kraken/KRAKEN.ws.50.0"], 400),
    "kraken": ([str(FIXTURES / "feeds_kraken_v2_xmrusd.jsonl")], None),
}
# dict keys whose values the handlers validate (prices, sizes, ids, checksums)
TYPED_KEYS = {"p", "q", "b", "B", "a", "A", "U", "u", "E", "T", "t", "lastUpdateId", "price",
              "size", "trade_id", "best_bid", "best_ask", "c", "product_id", "s", "type", "e",
              "changes", "bids", "asks", "qty", "symbol", "channel", "data"}
WRONG = [1.5, 7, None, [], {}, True, "x", [[1, 2]], -3]
_cache: dict = {}


def _stream(venue, shared_data):
    if venue not in _cache:
        names, limit = SOURCES[venue]
        frames = list(read_recordings([str(shared_data / n) for n in names]))
        if limit:
            frames = frames[:limit]
        inst = derive_instruments(venue, frames)
        clean = make_handler(venue, inst, capacity=4096)
        feed_frames(clean, frames)
        _cache[venue] = frames, inst, clean
    return _cache[venue]


def _typed_paths(obj, path=()):
    """Paths to leaves whose type the handler checks: list-of-string items 0 and 1 (price and
    quantity of a level, side and price of a change) and values of TYPED_KEYS."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in TYPED_KEYS:
                yield path + (k,)
            if isinstance(v, (dict, list)):
                yield from _typed_paths(v, path + (k,))
    elif isinstance(obj, list):
        if obj and all(isinstance(x, str) for x in obj) and len(obj) >= 2 and path:
            yield path + (0,)
            yield path + (1,)
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                yield from _typed_paths(v, path + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    old = obj[path[-1]]
    obj[path[-1]] = value
    return old


@st.composite
def junk(draw, frames):
    ws = [f for f in frames if f.kind == KIND_WS and f.data.startswith(("{", "["))]
    src = draw(st.sampled_from(ws)).data
    kind = draw(st.sampled_from(["truncated", "bytes", "typed", "oversized", "text"]))
    if kind == "truncated":
        return src[: draw(st.integers(0, max(0, len(src) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "oversized":
        lv = ["1.00000000", "2.00000000"]
        many = [lv] * 5000
        return orjson.dumps(draw(st.sampled_from([
            {"stream": "x", "data": {"e": "depthUpdate", "E": 1, "s": "NKNUSDT", "U": 1,
                                     "u": 10**12, "b": many, "a": []}},
            {"type": "l2update", "product_id": "SKL-USD",
             "changes": [["buy", "0.7", "1"]] * 5000},
            [1664, {"a": [lv + ["1.0"]] * 5000, "c": "1"}, "book-1000", "WAVES/EUR"],
            [1664, {"as": [lv + ["1.0"]] * 5000, "bs": []}, "book-1000", "WAVES/EUR"],
        ])))
    msg = orjson.loads(src)
    paths = list(_typed_paths(msg))
    if not paths:
        return src[:-1]
    path = draw(st.sampled_from(paths))
    old = _set(msg, path, None)
    new = draw(st.sampled_from([w for w in WRONG if type(w) is not type(old)]))
    _set(msg, path, new)
    return orjson.dumps(msg)


@pytest.mark.parametrize("venue", list(SOURCES))
def test_junk_frames_are_counted_and_never_change_a_valid_book(venue, shared_data):
    frames, inst, clean = _stream(venue, shared_data)

    @settings(max_examples=15, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inserts=st.lists(st.tuples(st.integers(0, len(frames)), junk(frames)),
                            min_size=1, max_size=8))
    def run(inserts):
        h = make_handler(venue, inst, capacity=4096)
        pos = {}
        for at, j in inserts:
            pos.setdefault(at, []).append(j)
        errors_before = 0
        for i in range(len(frames) + 1):
            for j in pos.get(i, ()):
                before = {s: (dict(b.bids.qty), dict(b.asks.qty))
                          for s, b in h.books.items()}
                h.feed(j, 0)
                for s, b in h.books.items():
                    if b.valid:      # a junk frame never changes a book that stays valid
                        assert s in before and before[s] == (b.bids.qty, b.asks.qty)
            if i < len(frames):
                feed_frames(h, [frames[i]])
        assert h.stats.parse_errors + h.stats.ignored + h.stats.unknown_symbol \
            + h.stats.dropped_stale_diffs > errors_before
        for s, b in h.books.items():
            if b.valid:
                ref = clean.books[s]
                assert b.bids.levels() == ref.bids.levels() and b.asks.levels() == \
                    ref.asks.levels(), s

    run()


def test_a_junk_frame_counts_as_a_parse_error(shared_data):
    for venue in SOURCES:
        _frames, inst, _clean = _stream(venue, shared_data)
        h = make_handler(venue, inst)
        for j in (b"", b"{", b"\xff\xfe", "[1,2", '{"data":', "null", "1", '"x"'):
            assert h.feed(j, 0) == 0
        assert h.stats.parse_errors + h.stats.ignored == 8, venue
        assert h.stats.parse_errors >= 4
