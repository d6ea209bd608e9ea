"""Binance spot market data: combined-stream wrapper, depthUpdate, REST depth snapshot, trade,
aggTrade, bookTicker. Feed process, hot path (``feed`` runs once per websocket frame).

Book sync (PROTOCOLS.md 1.4), per symbol:
  * Until a snapshot is applied, diffs are buffered (bounded). A snapshot may arrive after the
    first diffs; on arrival, buffered diffs with ``u <= lastUpdateId`` are dropped and the rest
    are applied through the same rule as live diffs.
  * The first applied diff must satisfy ``U <= lastUpdateId + 1 <= u``: ``U == lastUpdateId+1``
    (lastUpdateId *not* inside [U;u]) is a valid start, as the recordings show.
  * Every later diff must have ``U == prev_u + 1``; anything else is a gap: the book is marked
    invalid (STATUS_BOOK_INVALID, REASON_GAP), diffs are buffered again and a resync (a new REST
    snapshot) is requested. Diffs with ``u <= book id`` are old and dropped.
  * State lives in the handler, not in a file reader, so a recording split over several files
    is one stream.
  * bookTicker ``u`` is in the depth id space: when the local book stands at update id ``u``
    (after the diff whose final id is ``u``), its best bid/ask must equal the bookTicker's. A
    ticker that arrives before its diff waits (bounded) until the book reaches its id.

This is the exact path and the source of truth for the sync state machine. feeds.binance_fast
.BinanceFastHandler is a drop-in subclass that first hands each frame to a numba kernel on the
raw bytes (synced steady state: depth, trades, bookTicker) and gives this class every frame the
kernel declines; both emit identical records (tests/unit/test_feeds_binance_fast.py). The
factory (feeds.meta.make_handler) returns the fast subclass; ``exact=True`` returns this one.
"""
from __future__ import annotations

from collections import deque

import orjson

from feeds.handler import INT64_MAX, MS_MAX, PARSE_ERRORS, FeedHandler, ok_id, ok_ms
from shm.records import MFLAG_LAST_IN_BATCH, MSG_LEVEL, MSG_TOP, MSG_TRADE, REASON_GAP

MAX_BUFFERED_DIFFS = 10_000
MAX_PENDING_TICKERS = 256
# struct.error is the last line of defence (a value that slipped past validation); every
# other error is raised by validation, before the first mutation


class BinanceHandler(FeedHandler):
    venue = "binance"
    stale_by_connection = True

    def __init__(self, instruments, **kw):
        super().__init__(instruments, **kw)
        self._diffs: dict[str, deque] = {}       # symbol -> buffered (U, u, E, bids, asks)
        self._fresh: set[str] = set()            # symbols whose next diff is the first applied
        self._tickers: dict[str, deque] = {}     # symbol -> bookTickers waiting for their id

    def on_new_connection(self) -> None:
        # diffs and tickers of a previous connection say nothing about the new stream
        self._diffs.clear()
        self._fresh.clear()
        self._tickers.clear()

    # ---- input ---------------------------------------------------------------------------
    def feed(self, frame, recv_ts_ns: int) -> int:
        self.n = 0
        st = self.stats
        st.messages += 1
        self.last_frame_ns = recv_ts_ns
        try:
            msg = orjson.loads(frame)
            data = msg.get("data")
            if data is None:
                data = msg                    # raw (single) stream or an unwrapped REST body
            e = data.get("e")
            if e == "depthUpdate":
                self._on_diff(data, recv_ts_ns)
            elif e == "trade":
                self._on_trade(data, data["t"], recv_ts_ns)
            elif e == "aggTrade":
                self._on_trade(data, data["a"], recv_ts_ns)
            elif e is None and "B" in data and "u" in data:
                self._on_book_ticker(data, recv_ts_ns)
            elif e is None and "lastUpdateId" in data:
                self._on_unwrapped_snapshot(msg, data, recv_ts_ns)
            else:
                st.ignored += 1               # kline, serverShutdown, subscribe acks, ...
                return 0
        except PARSE_ERRORS:
            st.parse_errors += 1
            self.n = 0           # validation precedes every mutation: nothing was applied
            return 0
        st.records += self.n
        return self.n

    def feed_rest(self, url: str, frame, recv_ts_ns: int) -> int:
        """GET /api/v3/depth?symbol=S... response: the snapshot for S."""
        self.n = 0
        st = self.stats
        st.messages += 1
        symbol = _query_param(url, "symbol")
        try:
            data = orjson.loads(frame)
            if symbol is None or "lastUpdateId" not in data:
                st.ignored += 1
                return 0
            self._on_snapshot(symbol.upper(), data, recv_ts_ns)
        except PARSE_ERRORS:
            st.parse_errors += 1
            return 0
        st.records += self.n
        return self.n

    # ---- depth ---------------------------------------------------------------------------
    def _levels(self, lst, inst):
        """[[price, qty], ...] -> [(px_ticks, qty_lots)], all validated before any is used."""
        price = inst.price
        qscale = inst.qty
        pc = price.cache
        qc = qscale.cache
        out = []
        append = out.append
        for p, q in lst:
            px = pc.get(p)
            if px is None:
                px = price.units_cached(p)
                if px < 0:
                    raise ValueError
            qty = qc.get(q)
            if qty is None:
                qty = qscale.units_cached(q)
                if qty < 0:
                    raise ValueError
            append((px, qty))
        if len(out) > self.capacity - 8:
            raise ValueError("oversized")
        return out

    def _on_diff(self, d, recv):
        sym = d["s"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        U = d["U"]
        u = d["u"]
        E = d["E"]
        # ok_id/ok_ms inlined: three calls per message are measurable here
        if type(U) is not int or type(u) is not int or type(E) is not int \
                or not 0 <= U <= u <= INT64_MAX or not 0 <= E <= MS_MAX:
            raise TypeError
        bids = self._levels(d["b"], inst)
        asks = self._levels(d["a"], inst)
        book = self.books.get(sym) or self.book(sym)
        if book.valid:
            self._apply(book, U, u, E * 1_000_000, bids, asks, recv)
        else:
            self._buffer(sym, (U, u, E * 1_000_000, bids, asks))

    def _buffer(self, sym, ev):
        q = self._diffs.get(sym)
        if q is None:
            q = self._diffs[sym] = deque(maxlen=MAX_BUFFERED_DIFFS)
        q.append(ev)
        self.stats.buffered += 1

    def _apply(self, book, U, u, exch, bids, asks, recv):
        bid_id = book.update_id
        if u <= bid_id:
            self.stats.dropped_stale_diffs += 1
            return
        sym = book.symbol
        fresh = self._fresh
        if sym in fresh:
            ok = U <= bid_id + 1
            fresh.discard(sym)
        else:
            ok = U == bid_id + 1
        if not ok:
            self.stats.gaps += 1
            self.invalidate(book, REASON_GAP, recv, exch)
            self._buffer(sym, (U, u, exch, bids, asks))
            return
        # the record writes are inlined (no _rec call per level): this loop is the hot spot
        start = n = self.n
        pack = self._pack
        buf = self._buf
        fl = self.base_flags
        iid = book.instrument_id
        side_set = book.bids.set
        for px, qty in bids:
            if side_set(px, qty):
                pack(buf, n << 6, 0, MSG_LEVEL, 1, fl, iid, exch, recv, px, qty, u, -1)
                n += 1
        side_set = book.asks.set
        for px, qty in asks:
            if side_set(px, qty):
                pack(buf, n << 6, 0, MSG_LEVEL, 2, fl, iid, exch, recv, px, qty, u, -1)
                n += 1
        self.n = n
        self.stats.book_updates += n - start
        book.update_id = u
        book.last_rx_ns = recv
        if n > start:
            i = ((n - 1) << 6) + 10               # flags low byte of the last record
            buf[i] = buf[i] | MFLAG_LAST_IN_BATCH
        kb = book.bids.keys
        ka = book.asks.keys
        if kb and ka and -kb[0] >= ka[0] and self.check_crossed(book, recv, exch):
            self._diffs.pop(sym, None)
            return
        if self._tickers.get(sym):
            self._check_waiting_tickers(book)

    def _on_snapshot(self, sym, d, recv):
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        last_id = d["lastUpdateId"]
        if not ok_id(last_id):
            raise TypeError
        bids = self._levels(d["bids"], inst)
        asks = self._levels(d["asks"], inst)
        book = self.book(sym)
        buffered = self._diffs.get(sym) or ()
        pending = [ev for ev in buffered if ev[1] > last_id]
        need = len(bids) + len(asks) + 6 + sum(len(ev[3]) + len(ev[4]) + 2 for ev in pending)
        if need > self.room():
            raise ValueError("oversized: snapshot plus buffered diffs exceed the output array")
        self._diffs.pop(sym, None)
        self.stats.dropped_stale_diffs += len(buffered) - len(pending)
        if pending and pending[0][0] > last_id + 1:
            # events between the snapshot and the buffer are missing: this snapshot is too old
            self.stats.gaps += 1
            self.invalidate(book, REASON_GAP, recv)
            self._diffs[sym] = deque(pending, maxlen=MAX_BUFFERED_DIFFS)
            return
        book.bids.load(bids)
        book.asks.load(asks)
        book.update_id = last_id
        self._fresh.add(sym)
        self.emit_snapshot(book, recv, 0, last_id, MSG_LEVEL)
        if sym in self._tickers:
            self._check_waiting_tickers(book)
        for U, u, exch, b, a in pending:
            if not book.valid:
                self._buffer(sym, (U, u, exch, b, a))
            else:
                self._apply(book, U, u, exch, b, a, recv)

    def _on_unwrapped_snapshot(self, msg, data, recv):
        # A REST body in the stream file (one recorder format): the symbol is only known when
        # the handler serves exactly one instrument, or from a combined-stream wrapper.
        stream = msg.get("stream") if msg is not data else None
        if stream is not None:
            self.stats.ignored += 1          # partial-depth stream @depth5/10/20: not used
            return
        if len(self.instruments) != 1:
            self.stats.ignored += 1
            return
        self._on_snapshot(next(iter(self.instruments)), data, recv)

    # ---- trades, tickers -----------------------------------------------------------------
    def _on_trade(self, d, trade_id, recv):
        inst = self.instruments.get(d["s"])
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        px = inst.price.units_cached(d["p"])
        qty = inst.qty.units_cached(d["q"])
        t = d["T"]
        m = d["m"]
        if px < 0 or qty < 0 or not ok_ms(t) or type(m) is not bool or not ok_id(trade_id):
            raise ValueError
        # m: the buyer is the maker, so the aggressor sold
        self._rec(MSG_TRADE, 2 if m else 1, 2, inst.instrument_id, t * 1_000_000, recv, px, qty,
                  trade_id, 0)
        self.stats.trades += 1

    def _on_book_ticker(self, d, recv):
        sym = d["s"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        u = d["u"]
        ps = inst.price.units_cached
        qs = inst.qty.units_cached
        bp, bq, ap, aq = ps(d["b"]), qs(d["B"]), ps(d["a"]), qs(d["A"])
        if not ok_id(u) or min(bp, bq, ap, aq) < 0:
            raise ValueError
        if self.emit_tops:
            self._rec(MSG_TOP, 0, 2, inst.instrument_id, 0, recv, bp, bq, ap, aq)
        self.stats.tops += 1
        book = self.books.get(sym)
        if book is not None and book.valid and book.update_id == u:
            self._oracle(book, (bp, bq, ap, aq))
        elif book is not None and book.valid and book.update_id > u:
            self.stats.oracle_skipped += 1
        else:
            q = self._tickers.get(sym)
            if q is None:
                q = self._tickers[sym] = deque()
            if len(q) >= MAX_PENDING_TICKERS:
                q.popleft()
                self.stats.oracle_skipped += 1
            q.append((u, (bp, bq, ap, aq)))

    def _check_waiting_tickers(self, book):
        q = self._tickers[book.symbol]
        bid_id = book.update_id
        while q and q[0][0] <= bid_id:
            u, top = q.popleft()
            if u == bid_id:
                self._oracle(book, top)
            else:
                self.stats.oracle_skipped += 1

    def _oracle(self, book, top):
        if book.top() == top:
            self.stats.oracle_match += 1
        else:
            self.stats.oracle_mismatch += 1

    def flush_oracle(self) -> None:
        """End of a replay: tickers still waiting never met their update id."""
        for q in self._tickers.values():
            self.stats.oracle_skipped += len(q)
            q.clear()


def _query_param(url: str, name: str) -> str | None:
    q = url.partition("?")[2]
    for part in q.split("&"):
        k, _, v = part.partition("=")
        if k == name:
            return v
    return None
