"""Binance fast path (numba on raw bytes) against the exact Python path: bit-identical records,
identical counters and books on the recording, split files, reorderings, gaps and junk."""
from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feeds.binance import BinanceHandler
from feeds.binance_fast import BinanceFastHandler
from feeds.decimal import Scale
from feeds.handler import FeedInstrument
from feeds.meta import derive_instruments
from feeds.recording import KIND_CONNECT, KIND_REST, KIND_WS, Frame, read_recordings

WS = "binance/BINANCE.ws.1.0"
REST = "binance/BINANCE.http.0.0"
URL = "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000"
BTC = {"BTCUSDT": FeedInstrument("BTCUSDT", 7, Scale("0.01"), Scale("0.00001"))}
_cache: dict = {}


def _recording(shared_data):
    if "frames" not in _cache:
        frames = list(read_recordings([str(shared_data / WS), str(shared_data / REST)]))
        _cache["frames"] = frames
        _cache["inst"] = derive_instruments("binance", frames)
    return _cache["frames"], _cache["inst"]


def _feed(h, fr):
    if fr.kind == KIND_WS:
        return h.feed(fr.data, fr.ts_ns)
    if fr.kind == KIND_REST:
        return h.feed_rest(fr.url, fr.data, fr.ts_ns)
    if fr.kind == KIND_CONNECT:
        h.on_new_connection()
    return 0


def _book_state(h):
    return {s: (b.valid, b.update_id, b.bids.levels(), b.asks.levels())
            for s, b in sorted(h.books.items())}


def _same_run(frames, inst, check_books_each_frame=False, **kw):
    """Feed both handlers frame by frame; every frame's records must be byte-identical, and
    counters and books identical at the end. Returns the fast handler."""
    exact = BinanceHandler(inst, **kw)
    fast = BinanceFastHandler(inst, **kw)
    for i, fr in enumerate(frames):
        ne, nf = _feed(exact, fr), _feed(fast, fr)
        assert ne == nf, (i, fr.data[:120])
        assert exact.records().tobytes() == fast.records().tobytes(), (i, fr.data[:120])
        if check_books_each_frame:
            assert _book_state(exact) == _book_state(fast), i
    exact.flush_oracle()
    fast.flush_oracle()
    assert exact.stats.as_dict() == fast.stats.as_dict()
    assert _book_state(exact) == _book_state(fast)
    assert exact.take_resync_requests() == fast.take_resync_requests()
    return fast


@pytest.mark.parametrize("replay,emit_tops", [(True, False), (False, True)])
def test_fast_path_records_counters_and_books_equal_the_exact_path_on_the_recording(
        shared_data, replay, emit_tops):
    frames, inst = _recording(shared_data)
    fast = _same_run(frames, inst, replay=replay, emit_tops=emit_tops)
    st_ = fast.stats
    assert st_.oracle_match == 26 and st_.oracle_mismatch == 0 and st_.gaps == 0
    # the kernel, not the fallback, did the work: all but snapshots and pre-snapshot diffs
    assert fast.fast_frames() >= len(frames) - 12


def test_books_stay_identical_after_every_frame(shared_data):
    frames, inst = _recording(shared_data)
    _same_run(frames, inst, check_books_each_frame=True)


def test_a_recording_split_in_two_files_or_with_the_snapshots_last_is_the_same(shared_data,
                                                                               tmp_path):
    lines = (shared_data / WS).read_text().splitlines(keepends=True)
    a, b = tmp_path / "BINANCE.ws.1.0.a", tmp_path / "BINANCE.ws.1.0.b"
    a.write_text("".join(lines[:140]))
    b.write_text("".join(lines[140:]))
    frames, inst = _recording(shared_data)
    split = list(read_recordings([str(a), str(b), str(shared_data / REST)]))
    assert [f.data for f in split] == [f.data for f in frames]
    _same_run(split, inst)
    late = [f for f in frames if f.kind != KIND_REST] + [f for f in frames if f.kind == KIND_REST]
    fast = _same_run(late, inst)
    assert fast.stats.buffered > 100 and fast.stats.gaps == 0


def _applied_depth_indices(frames, inst):
    h = BinanceHandler(inst)
    out = []
    for i, fr in enumerate(frames):
        before = {s: b.update_id for s, b in h.books.items() if b.valid}
        _feed(h, fr)
        if fr.kind == KIND_WS and any(b.valid and s in before and b.update_id != before[s]
                                      for s, b in h.books.items()):
            out.append(i)
    return out


def test_deleting_or_swapping_a_depth_update_is_still_a_gap_on_the_fast_path(shared_data,
                                                                             run_slow):
    frames, inst = _recording(shared_data)
    applied = _applied_depth_indices(frames, inst)
    step = 1 if run_slow else 9
    checked = 0
    for i in applied[:-1][::step]:
        sym = orjson.loads(frames[i].data)["data"]["s"]
        later = [j for j in applied if j > i and sym in frames[j].data]
        if not later:
            continue
        fast = _same_run(frames[:i] + frames[i + 1:], inst)
        assert fast.stats.gaps >= 1 and not fast.books[sym].valid
        swapped = list(frames)
        swapped[i], swapped[later[0]] = swapped[later[0]], swapped[i]
        fast = _same_run(swapped, inst)
        assert fast.stats.gaps >= 1
        checked += 1
    assert checked >= (100 if run_slow else 12)


def _diff(U, u, bids=(), asks=(), sym="BTCUSDT"):
    return orjson.dumps({"stream": "btcusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1723161255308, "s": sym, "U": U, "u": u,
        "b": [list(x) for x in bids], "a": [list(x) for x in asks]}}).decode()


def _snap(last_id, bids, asks):
    return orjson.dumps({"lastUpdateId": last_id, "bids": [list(x) for x in bids],
                         "asks": [list(x) for x in asks]}).decode()


def _ws(data, ts=1):
    return Frame(ts, KIND_WS, "", data)


def test_a_crossing_diff_is_applied_then_the_book_invalidated_as_on_the_exact_path():
    frames = [Frame(1, KIND_REST, URL, _snap(100, [("100.00", "1")], [("101.00", "2")])),
              _ws(_diff(101, 101, bids=[("100.50", "1")])),
              _ws(_diff(102, 103, bids=[("101.50", "1")], asks=[("102.00", "3")])),
              _ws(_diff(104, 104, asks=[("101.00", "0")])),
              Frame(2, KIND_REST, URL, _snap(104, [("100.00", "1")], [("101.00", "2")])),
              _ws(_diff(105, 105, bids=[("100.10", "5")]))]
    fast = _same_run(frames, BTC)
    assert fast.stats.crossed == 1 and fast.stats.resyncs == 1
    assert fast.books["BTCUSDT"].valid and fast.books["BTCUSDT"].update_id == 105


def test_book_tickers_waiting_for_their_diff_are_compared_on_the_fast_path():
    tick = '{"stream":"btcusdt@bookTicker","data":{"u":%d,"s":"BTCUSDT","b":"100.00",' \
           '"B":"%s","a":"101.00","A":"2"}}'
    frames = [Frame(1, KIND_REST, URL, _snap(10, [("100.00", "1")], [("101.00", "2")])),
              _ws(tick % (10, "1")), _ws(_diff(11, 11, asks=[("103", "1")])),
              _ws(tick % (13, "4")), _ws(tick % (12, "9")), _ws(tick % (14, "5")),
              _ws(tick % (11, "1")), _ws(_diff(12, 13, bids=[("100.00", "4")])),
              _ws(_diff(14, 14, bids=[("99", "4")]))]
    fast = _same_run(frames, BTC)
    assert (fast.stats.oracle_match, fast.stats.oracle_mismatch) == (3, 1)
    assert fast.stats.oracle_skipped == 1
    # more waiting tickers than the queue holds: the oldest are dropped and counted alike
    many = frames[:1] + [_ws(tick % (20 + i, "1")) for i in range(300)] + \
        [_ws(_diff(11, 100, bids=[("100.00", "1")]))]
    fast = _same_run(many, BTC)
    assert fast.stats.oracle_skipped >= 44


def test_a_book_deeper_than_the_array_book_stays_on_the_exact_path(shared_data):
    frames, inst = _recording(shared_data)
    exact = BinanceHandler(inst)
    fast = BinanceFastHandler(inst, book_levels=64)
    for fr in frames:
        assert _feed(exact, fr) == _feed(fast, fr)
        assert exact.records().tobytes() == fast.records().tobytes()
    assert _book_state(exact) == _book_state(fast)
    assert fast.stats.as_dict() == exact.stats.as_dict()


def test_many_symbols_are_found_and_unknown_ones_counted_by_the_kernel():
    inst = {f"S{i:03d}USDT": FeedInstrument(f"S{i:03d}USDT", i + 1, Scale("0.01"), Scale("1"))
            for i in range(300)}
    trade = '{"e":"trade","E":1,"s":"%s","t":%d,"p":"1.25","q":"3","T":2,"m":false}'
    frames = [_ws(trade % (s, i)) for i, s in enumerate(inst)] + [_ws(trade % ("NOPE", 1))]
    fast = _same_run(frames, inst)
    assert fast.fast_frames() == len(frames)
    assert fast.stats.trades == 300 and fast.stats.unknown_symbol == 1


# ---- exact decimals ------------------------------------------------------------------------
def _units_fast(text: str, scale: Scale) -> int:
    from feeds._numtext import scale_table, units
    raw = b'"' + text.encode() + b'"'
    return int(units(raw, 1, len(raw) - 1, scale_table(scale), 0))


decimals = st.one_of(
    st.decimals(min_value=0, max_value=Decimal("1e12"), places=8, allow_nan=False).map(str),
    st.from_regex(r"\A[0-9]{0,22}(\.[0-9]{0,22})?\Z"),
    st.text(alphabet="0123456789.-+eE _x", max_size=24))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(text=decimals, step=st.sampled_from(["0.01", "0.00000001", "1", "0.05", "25", "1e-18",
                                            "0.0000000000000000001", "10000"]))
def test_decimal_text_becomes_the_exact_units_of_the_python_scale_or_declines(text, step):
    scale = Scale(step)
    want = scale.units(text)
    got = _units_fast(text, scale)
    if got >= 0:
        assert got == want
    if want < 0:
        assert got == -1
    if want >= 0 and len(text) <= 14 and step in ("0.01", "0.00000001", "1", "0.05"):
        assert got == want          # ordinary prices never leave the fast path


# ---- junk never crashes and never changes a book the exact path would not ---------------
def _mutations(msg):
    """(path, value) pairs that break a recorded message in the ways a venue or a network
    might: wrong types, huge numbers, too many decimals, missing keys, escapes, non-ASCII."""
    d = msg.get("data", msg)
    out = []
    for k, v in d.items():
        out += [(k, None), (k, 1.5), (k, "x"), (k, []), (k, {}), (k, True), (k, -3),
                (k, 10 ** 19), (k, 2 ** 63), (k, "1" * 40), (k, "0." + "1" * 19),
                (k, "1e5"), (k, "\u00e9"), (k, "a\\u0041")]
        if isinstance(v, list) and v:
            out += [((k, 0), ["1.0"]), ((k, 0), ["1.0", "2.0", "3"]), ((k, 0), [1, 2]),
                    ((k, 0), ["1." + "0" * 19, "1"]), ((k, 0), {"1.0": 0, "2.0": 0})]
        out.append((k, "<delete>"))
    return out


@st.composite
def junk(draw, frames):
    ws = [f for f in frames if f.kind == KIND_WS and f.data.startswith("{")]
    src = draw(st.sampled_from(ws)).data
    kind = draw(st.sampled_from(["truncated", "bytes", "mutated", "mutated", "spaced",
                                 "duplicate", "nested", "huge"]))
    if kind == "truncated":
        return src[: draw(st.integers(0, max(0, len(src) - 1)))]
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=300), st.text(max_size=100)))
    if kind == "spaced":           # valid JSON with whitespace: handled exactly like compact
        return src.replace(",", " ,\n").replace(":", ": ")
    if kind == "duplicate":
        return src.replace('"s":', '"s":"XRPUSDT","s":', 1)
    if kind == "huge":             # integers beyond 64 bits where ids and times go
        key = draw(st.sampled_from(['"U":', '"u":', '"E":', '"T":', '"a":', '"t":']))
        return src.replace(key, key + "9" * draw(st.integers(1, 30)), 1)
    if kind == "nested":
        return '{"data":' * 70 + "1" + "}" * 70
    msg = orjson.loads(src)
    key, value = draw(st.sampled_from(_mutations(msg)))
    d = msg.get("data", msg)
    if isinstance(key, tuple):
        if isinstance(d[key[0]], list) and d[key[0]]:
            d[key[0]][key[1]] = value
    elif value == "<delete>":
        del d[key]
    else:
        d[key] = value
    return orjson.dumps(msg).decode() if draw(st.booleans()) else orjson.dumps(msg)


def test_junk_frames_never_crash_and_leave_books_as_the_exact_path_does(shared_data):
    frames, inst = _recording(shared_data)

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(inserts=st.lists(st.tuples(st.integers(0, len(frames)), junk(frames)),
                            min_size=1, max_size=10))
    def run(inserts):
        stream = list(frames)
        for at, j in sorted(inserts, key=lambda x: -x[0]):
            stream.insert(at, _ws(j, stream[min(at, len(stream) - 1)].ts_ns))
        _same_run(stream, inst)

    run()


def test_a_junk_frame_never_changes_a_valid_book_on_the_fast_path(shared_data):
    frames, inst = _recording(shared_data)
    fast = BinanceFastHandler(inst)
    for fr in frames:
        _feed(fast, fr)
    before = _book_state(fast)
    bad = ['{"data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":499870180,"u":499870181,'
           '"b":[["0.35","1"],["0.1234567890123456789","1"]],"a":[]}}',
           '{"data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":499870180,"u":499870181,'
           '"b":[["0.35","1"]],"a":[["0.36",1]]}}',
           '{"data":{"e":"depthUpdate","E":1,"s":"NKNUSDT","U":499870180,"u":499870181,'
           '"b":[["0.35","1"]],"a":[]}',
           b'\x00\xff{"e":"depthUpdate"}', "", "[]", "null"]
    counts = (fast.stats.parse_errors, fast.stats.ignored)
    for j in bad:
        assert fast.feed(j, 5) == 0
    assert _book_state(fast) == before
    assert (fast.stats.parse_errors, fast.stats.ignored) == (counts[0] + len(bad), counts[1])


def test_feed_check_through_the_fast_handler_reports_the_same_as_the_exact_one(shared_data):
    import feeds.check as check
    from feeds.meta import make_handler

    # the factory's default for Binance is the fast path; exact=True the exact one
    assert type(make_handler("binance", {})) is BinanceFastHandler
    assert type(make_handler("binance", {}, exact=True)) is BinanceHandler
    files = [str(shared_data / WS), str(shared_data / REST)]
    exact = check.check_recordings("binance", files, handler_kw={"exact": True})
    fast = check.check_recordings("binance", files)
    assert fast == exact and fast["clean"]
    assert fast["book_ticker_oracle"]["matched"] == fast["book_ticker_oracle"]["compared"] == 26


def test_the_staleness_watchdog_agrees_and_leaves_fresh_books_on_the_fast_path(shared_data):
    frames, inst = _recording(shared_data)
    exact = BinanceHandler(inst, stale_ns=10**9)
    fast = BinanceFastHandler(inst, stale_ns=10**9)
    for fr in frames:
        _feed(exact, fr)
        _feed(fast, fr)
    adopted = fast.adoptions
    last = frames[-1].ts_ns
    assert fast.check_stale(last + 10**8) == exact.check_stale(last + 10**8) == 0
    assert fast.check_stale(last + 10**9) == 0         # the connection itself was live then
    exact.check_stale(last + 10**9)
    fast.feed(frames[-2].data, last + 10**9)            # a frame refreshes the connection
    exact.feed(frames[-2].data, last + 10**9)
    assert fast.adoptions == adopted                   # nothing was handed back and reloaded
    n = fast.check_stale(last + 3 * 10**9)
    assert n == exact.check_stale(last + 3 * 10**9) == 4
    assert fast.records().tobytes() == exact.records().tobytes()
    assert fast.stats.as_dict() == exact.stats.as_dict()
    assert _book_state(fast) == _book_state(exact)


def test_raw_stream_frames_without_the_wrapper_give_the_same_records(shared_data):
    frames, inst = _recording(shared_data)

    def unwrap(fr):
        d = fr.data
        if fr.kind != KIND_WS or not d.startswith('{"stream":'):
            return fr
        return Frame(fr.ts_ns, fr.kind, fr.url, d[d.index('"data":') + 7:-1])

    raw = [unwrap(fr) for fr in frames]
    assert sum(fr.data != r.data for fr, r in zip(frames, raw)) > 250
    fast_raw = _same_run(raw, inst)
    assert fast_raw.fast_frames() >= len(frames) - 12
    wrapped = BinanceFastHandler(inst)
    unwrapped = BinanceFastHandler(inst)
    for fr, r in zip(frames, raw):
        assert _feed(wrapped, fr) == _feed(unwrapped, r)
        assert wrapped.records().tobytes() == unwrapped.records().tobytes()


def test_oversized_diffs_and_tiny_output_arrays_take_the_exact_paths_verdict(shared_data):
    frames, inst = _recording(shared_data)
    lv = [["0.35000000", "1.00000000"]] * 5000
    huge = orjson.dumps({"stream": "x", "data": {"e": "depthUpdate", "E": 1, "s": "NKNUSDT",
                                                 "U": 499870180, "u": 499870181, "b": lv,
                                                 "a": []}}).decode()
    fast = _same_run(frames + [_ws(huge)], inst, capacity=4096)
    assert fast.stats.parse_errors == 1
    fast = _same_run(frames + [_ws(huge)], inst, capacity=8192)
    assert fast.stats.parse_errors == 0 and fast.books["NKNUSDT"].update_id == 499870181


def test_a_lost_connection_leaves_every_book_invalid_until_the_new_connections_snapshot():
    # the book is held in the arena (FAST) when the socket drops; the new connection's diffs
    # continue its update ids, so a kernel that still held the book would apply them
    from shm.records import REASON_RECONNECT
    exact, fast = BinanceHandler(BTC), BinanceFastHandler(BTC)

    def both(step):
        ne, nf = step(exact), step(fast)
        assert ne == nf and exact.records().tobytes() == fast.records().tobytes()

    both(lambda h: h.feed_rest(URL, _snap(100, [("100.00", "1")], [("101.00", "2")]), 1))
    for u in (101, 102, 103):
        both(lambda h: h.feed(_diff(u, u, bids=[("100.50", str(u - 100))]), 2))
    assert fast._n_fast == 1 and fast.adoptions == 1
    both(lambda h: h.connection_lost(3))
    for h in (exact, fast):
        assert not h.books["BTCUSDT"].valid
        assert h.take_resync_requests() == {"BTCUSDT": REASON_RECONNECT}
        h.on_new_connection()
    tick = '{"stream":"btcusdt@bookTicker","data":{"u":%d,"s":"BTCUSDT","b":"100.50",' \
           '"B":"3","a":"101.00","A":"2"}}'
    for u in range(104, 111):
        both(lambda h: h.feed(_diff(u, u, asks=[("101.00", str(u - 100))]), 4))
        both(lambda h: h.feed(tick % u, 4))
        assert not fast.books["BTCUSDT"].valid and not exact.books["BTCUSDT"].valid
    assert fast._n_fast == 0 and fast.stats.resyncs == 0
    both(lambda h: h.feed_rest(URL, _snap(107, [("100.00", "1")], [("101.00", "7")]), 5))
    both(lambda h: h.feed(_diff(111, 111, bids=[("100.20", "1")]), 6))
    assert fast.books["BTCUSDT"].valid and fast.books["BTCUSDT"].update_id == 111
    assert fast.stats.as_dict() == exact.stats.as_dict() and fast.stats.resyncs == 1
    assert _book_state(fast) == _book_state(exact)
