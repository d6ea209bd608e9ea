"""Kraken market data: websocket v2 (``book`` snapshot/update with checksum, ``trade``,
heartbeat, status) and v1 (``book-N`` arrays with ``c``, ``trade``, ``ticker``). Feed process,
hot path (``feed`` runs once per websocket frame).

The CRC32 checksum is the only gap detector (PROTOCOLS.md 3.2): after every level of a message
is applied in order, with the book truncated to the subscribed depth after *each* level (Kraken
sends no qty 0 for levels that leave the window), the top 10 asks (low to high) and top 10 bids
(high to low) are written as price text + qty text with the '.' removed and leading zeros
stripped, and CRC32 of that string must equal the venue's. The text is the exact wire text: v1
sends strings; v2 sends JSON numbers at full precision, which are quoted *before* decoding
(``quote_kraken_v2_numbers``) so no float ever sees them. Each book level keeps its checksum
fragment, so a checksum costs a join of 20 short strings and one zlib.crc32.

A mismatch marks the book invalid (REASON_CHECKSUM) and asks for a resubscribe; updates are
ignored until a fresh snapshot arrives. A book message that fails to parse for a known book
invalidates it too (REASON_GAP): an update we could not apply is a lost update, and a lost
update below the top 10 would stay invisible to the checksum. Levels dropped by truncation are published as qty 0
level records, so a consumer mirroring the records holds the same book.
"""
from __future__ import annotations

import re
import zlib

import orjson

from feeds.decimal import checksum_fragment
from feeds.handler import FeedHandler, epoch_text_to_ns, iso_to_ns, ok_id
from shm.records import MSG_LEVEL, MSG_TOP, MSG_TRADE, REASON_CHECKSUM, REASON_GAP

CHECKSUM_LEVELS = 10
V2_DEPTHS = (10, 25, 100, 500, 1000)
_KRAKEN_V2_NUM = re.compile(rb'"(price|qty)":(-?[0-9][0-9.eE+\-]*)')


def quote_kraken_v2_numbers(frame) -> bytes:
    """Kraken v2 sends prices and quantities as JSON numbers at full precision; quote them so
    the JSON decoder hands over their exact text instead of a float."""
    if isinstance(frame, str):
        frame = frame.encode()
    return _KRAKEN_V2_NUM.sub(rb'"\1":"\2"', frame)


def book_checksum(book) -> int:
    """CRC32 (unsigned) of the top 10 asks then the top 10 bids, Kraken's string rule."""
    s = book.asks.top_fragments(CHECKSUM_LEVELS) + book.bids.top_fragments(CHECKSUM_LEVELS)
    return zlib.crc32(s.encode())


class _KrakenBase(FeedHandler):
    def __init__(self, instruments, depth: int = 10, **kw):
        super().__init__(instruments, **kw)
        self.depth = int(depth)
        self._depths: dict[str, int] = {}        # per symbol, from subscribe acks

    def default_depth(self) -> int:
        return self.depth

    def _parse_levels(self, inst, lst, side, out):
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        for p, q in lst:
            if type(p) is not str or type(q) is not str:
                raise TypeError
            px = ps(p)
            qty = qs(q)
            if px < 0 or qty < 0:
                raise ValueError
            out.append((side, px, qty, checksum_fragment(p) + checksum_fragment(q)))

    def _set(self, book, side, px, qty, frag, recv, exch, emit):
        """Apply one level, truncate to depth, emit what changed (drops as qty 0)."""
        s = book.bids if side == 1 else book.asks
        changed = s.set(px, qty)
        if qty:
            s.frag[px * s.sign] = frag
        if emit and changed:
            self._rec(MSG_LEVEL, side, 0, book.instrument_id, exch, recv, px, qty, 0, -1)
        n = 0
        if book.depth and len(s.keys) > book.depth:
            keys = s.keys
            for k in keys[book.depth:]:
                if emit:
                    self._rec(MSG_LEVEL, side, 0, book.instrument_id, exch, recv, k * s.sign, 0,
                              0, -1)
                n += 1
            s.truncate(book.depth)
        return changed + n

    def _snapshot(self, book, levels, checksum, recv, exch) -> None:
        if len(levels) > self.capacity - 8:
            raise ValueError("oversized snapshot")
        book.clear()
        for side, px, qty, frag in levels:
            self._set(book, side, px, qty, frag, recv, exch, False)
        if checksum is not None and book_checksum(book) != checksum:
            self.stats.checksum_fail += 1
            self.invalidate(book, REASON_CHECKSUM, recv, exch)
            return
        if checksum is not None:
            self.stats.checksum_ok += 1
        self.emit_snapshot(book, recv, exch, 0, MSG_LEVEL)
        self.check_crossed(book, recv, exch)

    def _update(self, book, levels, checksum, recv, exch) -> None:
        if 2 * len(levels) + 4 > self.room():
            raise ValueError("oversized")         # checked before the first level is applied
        if not book.valid:
            self.stats.ignored += 1        # waiting for the resubscribe snapshot
            return
        start = self.n
        changed = 0
        for side, px, qty, frag in levels:
            changed += self._set(book, side, px, qty, frag, recv, exch, True)
        self.stats.book_updates += changed
        book.last_rx_ns = recv
        self._end_batch(start)
        if checksum is not None:
            if book_checksum(book) != checksum:
                self.stats.checksum_fail += 1
                self.invalidate(book, REASON_CHECKSUM, recv, exch)
                return
            self.stats.checksum_ok += 1
        self.check_crossed(book, recv, exch)


class KrakenV1Handler(_KrakenBase):
    venue = "kraken-v1"

    def on_message(self, msg, recv_ts_ns: int) -> None:
        st = self.stats
        if type(msg) is list:
            name = msg[-2]
            if type(name) is not str or len(msg) < 4:
                raise TypeError
            if name.startswith("book"):
                self._on_book(msg, name, recv_ts_ns)
            elif name == "trade":
                self._on_trades(msg, recv_ts_ns)
            elif name == "ticker":
                self._on_ticker(msg, recv_ts_ns)
            else:
                st.ignored += 1
        elif msg.get("event") == "heartbeat":
            st.heartbeats += 1
            self.touch(recv_ts_ns)
        else:
            st.ignored += 1                 # systemStatus, subscriptionStatus, pong

    def _lost_update(self, msg, recv):
        # A book message we could not apply leaves the book behind the venue; the next
        # checksum would probably notice, but do not wait for it.
        if type(msg) is list and len(msg) >= 4 and type(msg[-2]) is str \
                and msg[-2].startswith("book") and type(msg[-1]) is str:
            book = self.books.get(msg[-1])
            if book is not None:
                self.invalidate(book, REASON_GAP, recv)

    def _on_book(self, msg, name, recv):
        pair = msg[-1]
        inst = self.instruments.get(pair)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        levels = []
        checksum = None
        snapshot = False
        exch = 0
        for part in msg[1:-2]:
            for key, lst in part.items():
                if key == "as" or key == "bs":
                    snapshot = True
                    self._parse_levels(inst, [lv[:2] for lv in lst], 2 if key == "as" else 1,
                                       levels)
                elif key == "a" or key == "b":
                    self._parse_levels(inst, [lv[:2] for lv in lst], 2 if key == "a" else 1,
                                       levels)
                    if lst:
                        exch = max(exch, epoch_text_to_ns(lst[-1][2]))
                elif key == "c":
                    checksum = int(lst)
                    if not 0 <= checksum < 1 << 32 or type(lst) is not str:
                        raise ValueError
                else:
                    raise KeyError(key)
        book = self.book(pair)
        if snapshot:
            depth = name.partition("-")[2]
            book.depth = int(depth) if depth.isdigit() else self.depth
            self._snapshot(book, levels, None, recv, exch)
        else:
            self._update(book, levels, checksum, recv, exch)

    def _on_trades(self, msg, recv):
        inst = self.instruments.get(msg[-1])
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        out = []
        for t in msg[1]:
            px = inst.price.units_cached(t[0])
            qty = inst.qty.units_cached(t[1])
            side = {"b": 1, "s": 2}[t[3]]            # the taker's side
            if px < 0 or qty < 0:
                raise ValueError
            out.append((side, px, qty, epoch_text_to_ns(t[2])))
        for side, px, qty, ts in out:
            self._rec(MSG_TRADE, side, 2, inst.instrument_id, ts, recv, px, qty, 0, 0)
            self.stats.trades += 1

    def _on_ticker(self, msg, recv):
        inst = self.instruments.get(msg[-1])
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        d = msg[1]
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        bp, bq = ps(d["b"][0]), qs(d["b"][2])
        ap, aq = ps(d["a"][0]), qs(d["a"][2])
        if min(bp, bq, ap, aq) < 0:
            raise ValueError
        if self.emit_tops:
            self._rec(MSG_TOP, 0, 2, inst.instrument_id, 0, recv, bp, bq, ap, aq)
        self.stats.tops += 1


class KrakenV2Handler(_KrakenBase):
    venue = "kraken"

    def parse(self, frame):
        return orjson.loads(quote_kraken_v2_numbers(frame))

    def on_message(self, msg, recv_ts_ns: int) -> None:
        st = self.stats
        ch = msg.get("channel")
        if ch == "book":
            typ = msg["type"]
            if typ != "snapshot" and typ != "update":
                raise ValueError
            work = [self._parse_book(d) for d in msg["data"]]
            if sum(2 * len(w[1] or ()) + 4 for w in work) > self.capacity:
                raise ValueError("oversized")
            for book, levels, checksum, exch in work:
                if book is None:
                    continue
                if typ == "snapshot":
                    self._snapshot(book, levels, checksum, recv_ts_ns, exch)
                else:
                    self._update(book, levels, checksum, recv_ts_ns, exch)
        elif ch == "trade":
            self._on_trades(msg["data"], recv_ts_ns)
        elif ch == "heartbeat":
            st.heartbeats += 1
            self.touch(recv_ts_ns)
        elif msg.get("method") == "subscribe":
            self._on_ack(msg)
        else:
            st.ignored += 1                   # status, instrument, pong, ...

    def _lost_update(self, msg, recv):
        if type(msg) is dict and msg.get("channel") == "book" and type(msg.get("data")) is list:
            for d in msg["data"]:
                book = self.books.get(d.get("symbol")) if type(d) is dict \
                    and type(d.get("symbol")) is str else None
                if book is not None:
                    self.invalidate(book, REASON_GAP, recv)

    def _on_ack(self, msg):
        res = msg.get("result") or {}
        if msg.get("success") is True and res.get("channel") == "book":
            depth = res.get("depth")
            if depth in V2_DEPTHS:
                self._depths[res["symbol"]] = depth
                b = self.books.get(res["symbol"])
                if b is not None:
                    b.depth = depth
        self.stats.ignored += 1

    def book(self, symbol):
        b = self.books.get(symbol)
        if b is None:
            b = super().book(symbol)
            if b is not None and symbol in self._depths:
                b.depth = self._depths[symbol]
        return b

    def _parse_book(self, d):
        sym = d["symbol"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return None, None, None, 0
        levels = []
        self._parse_levels(inst, [(lv["price"], lv["qty"]) for lv in d["bids"]], 1, levels)
        self._parse_levels(inst, [(lv["price"], lv["qty"]) for lv in d["asks"]], 2, levels)
        checksum = d["checksum"]
        if type(checksum) is not int or not 0 <= checksum < 1 << 32:
            raise ValueError
        ts = d.get("timestamp")
        return self.book(sym), levels, checksum, iso_to_ns(ts) if type(ts) is str else 0

    def _on_trades(self, data, recv):
        out = []
        for t in data:
            inst = self.instruments.get(t["symbol"])
            if inst is None:
                self.stats.unknown_symbol += 1
                continue
            px = inst.price.units_cached(t["price"])
            qty = inst.qty.units_cached(t["qty"])
            side = {"buy": 1, "sell": 2}[t["side"]]     # the taker's side
            tid = t["trade_id"]
            if px < 0 or qty < 0 or not ok_id(tid):
                raise ValueError
            ts = t.get("timestamp")
            out.append((inst.instrument_id, side, px, qty, tid,
                        iso_to_ns(ts) if type(ts) is str else 0))
        for iid, side, px, qty, tid, ts in out:
            self._rec(MSG_TRADE, side, 2, iid, ts, recv, px, qty, tid, 0)
            self.stats.trades += 1
