"""The common feed-handler interface and its record writer. Feed process, hot path.

A handler turns one raw venue frame (str or bytes) plus its receive time into MARKET_DTYPE
records (shm.records) and keeps the local books in sync:

    n = handler.feed(frame, recv_ts_ns)      # records are handler.out[:n] until the next call
    n = handler.feed_rest(url, body, recv_ts_ns)   # a REST snapshot (Binance)
    n = handler.check_stale(now_ns)          # staleness watchdog, called by the owner
    n = handler.connection_lost(now_ns)      # the socket dropped: every book invalid
    symbols = handler.take_resync_requests() # books that need a snapshot (client acts on it)

It never raises on bad input: a frame that does not parse, has the wrong types or is oversized
is counted in ``stats.parse_errors`` and skipped, and no book is touched by a message that
failed validation (levels are parsed and checked before the first one is applied).

Records are packed with one precompiled ``struct.Struct`` straight into the numpy output array's
buffer: numpy's per-field item assignment costs ~100 ns per field, ``pack_into`` one call per
record. The struct layout is asserted against MARKET_DTYPE at import.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, fields

import numpy as np
import orjson

from feeds.book import Book
from feeds.decimal import Scale
from shm.records import (
    MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS, REASON_CROSSED,
    REASON_RECONNECT, REASON_SNAPSHOT, REASON_STALE, STATUS_BOOK_INVALID, STATUS_BOOK_VALID,
)

# ring_seq kind side flags instrument_id exch_ts recv_ts px qty aux0 aux1
RECORD = struct.Struct("<qBBHIqqqqqq")
assert RECORD.size == MARKET_DTYPE.itemsize
assert [MARKET_DTYPE.fields[n][1] for n in MARKET_DTYPE.names] == [0, 8, 9, 10, 12, 16, 24, 32,
                                                                     40, 48, 56]
DEFAULT_CAPACITY = 1 << 16     # records per feed() call: a 5,000-level Binance snapshot fits
DEFAULT_STALE_NS = 10_000_000_000
INT64_MAX = (1 << 63) - 1
MS_MAX = INT64_MAX // 1_000_000      # largest millisecond time that fits ns in int64


# Everything a malformed frame can raise while parsing or applying (orjson.JSONDecodeError is a
# ValueError; struct.error comes from packing out-of-range values into records).
PARSE_ERRORS = (TypeError, KeyError, IndexError, ValueError, AttributeError, struct.error)

def ok_id(x) -> bool:
    """A venue id / sequence that fits a record's int64 field (bool is not an int here)."""
    return type(x) is int and 0 <= x <= INT64_MAX


def ok_ms(x) -> bool:
    return type(x) is int and 0 <= x <= MS_MAX


@dataclass(frozen=True)
class FeedInstrument:
    """One instrument as the handler sees it: venue symbol, record id, exact scales."""
    symbol: str
    instrument_id: int
    price: Scale
    qty: Scale


@dataclass
class FeedStats:
    messages: int = 0          # frames fed (ws + rest)
    book_updates: int = 0      # level changes applied to a valid book
    snapshots: int = 0         # snapshots applied
    trades: int = 0
    tops: int = 0              # best bid/ask messages (bookTicker, ticker)
    gaps: int = 0              # sequence / update-id gaps detected
    resyncs: int = 0           # books that became valid again after being invalid
    checksum_ok: int = 0
    checksum_fail: int = 0
    crossed: int = 0           # crossed or locked books seen after an applied message
    parse_errors: int = 0      # malformed, wrongly typed or oversized frames (skipped)
    stale: int = 0             # books invalidated by the staleness watchdog
    unknown_symbol: int = 0    # messages for instruments the handler was not given
    ignored: int = 0           # well-formed messages of kinds the handler does not use
    heartbeats: int = 0
    heartbeat_gaps: int = 0
    buffered: int = 0          # diffs held while waiting for a snapshot (Binance)
    dropped_stale_diffs: int = 0  # diffs older than the book (u <= id), dropped as the docs say
    oracle_match: int = 0      # Binance bookTicker == local best bid/ask at the same update id
    oracle_mismatch: int = 0
    oracle_skipped: int = 0    # bookTicker whose update id the local book never stood at
    records: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FeedHandler:
    """Base class: instruments, books, record output, counters, invalidation and resync."""

    venue = "?"
    # True where any frame on the connection proves the feed alive (Binance: no heartbeat
    # messages, and a quiet symbol's depth stream can be silent for seconds)
    stale_by_connection = False

    def __init__(self, instruments: dict[str, FeedInstrument], capacity: int = DEFAULT_CAPACITY,
                 stale_ns: int = DEFAULT_STALE_NS, replay: bool = False,
                 emit_tops: bool = False):
        self.instruments = dict(instruments)
        self.capacity = int(capacity)
        self.out = np.zeros(self.capacity, dtype=MARKET_DTYPE)
        self._buf = memoryview(self.out).cast("B")
        self._pack = RECORD.pack_into
        self.n = 0
        self.stats = FeedStats()
        self.stale_ns = int(stale_ns)
        self.base_flags = 4 if replay else 0   # MFLAG_REPLAY
        # Ticker streams are not synchronised with the depth stream, and market/book.py
        # applies MSG_TOP records to the book (it trims levels better than the top), so a
        # ticker published next to level records would corrupt consumers' books: off unless
        # asked for (a feed without depth, or a consumer that keeps tops apart).
        self.emit_tops = emit_tops
        self.books: dict[str, Book] = {}
        self._resync: dict[str, int] = {}      # symbol -> reason
        self.last_frame_ns = 0

    # ---- output --------------------------------------------------------------------------
    def _rec(self, kind, side, flags, iid, exch_ns, recv_ns, px, qty, aux0, aux1) -> None:
        n = self.n
        self._pack(self._buf, n << 6, 0, kind, side, flags | self.base_flags, iid, exch_ns,
                   recv_ns, px, qty, aux0, aux1)
        self.n = n + 1

    def _end_batch(self, start: int) -> None:
        """Flag the last record of this message: the book is consistent after it."""
        n = self.n
        if n > start:
            # flags is a little-endian u2 at byte 10 and the flag lives in its low byte
            i = ((n - 1) << 6) + 10
            self._buf[i] = self._buf[i] | MFLAG_LAST_IN_BATCH

    def room(self) -> int:
        return self.capacity - self.n

    def records(self) -> np.ndarray:
        return self.out[: self.n]

    # ---- books ---------------------------------------------------------------------------
    def book(self, symbol: str) -> Book | None:
        b = self.books.get(symbol)
        if b is None:
            inst = self.instruments.get(symbol)
            if inst is None:
                return None
            b = self.books[symbol] = Book(inst.instrument_id, symbol, self.default_depth())
        return b

    def default_depth(self) -> int:
        return 0

    def invalidate(self, book: Book, reason: int, recv_ns: int, exch_ns: int = 0) -> None:
        """Mark ``book`` invalid (one status record) and ask for a resync."""
        if book.valid:
            book.valid = False
            self._rec(MSG_STATUS, 0, 0, book.instrument_id, exch_ns, recv_ns, 0, 0,
                      STATUS_BOOK_INVALID, reason)
        self._resync[book.symbol] = reason

    def emit_snapshot(self, book: Book, recv_ns: int, exch_ns: int, update_id: int,
                      level_kind: int) -> None:
        """SNAP_START, every level (flag SNAPSHOT), SNAP_END, then STATUS_BOOK_VALID."""
        iid = book.instrument_id
        nlev = len(book.bids) + len(book.asks)
        self._rec(MSG_SNAP_START, 0, 1, iid, exch_ns, recv_ns, 0, 0, update_id, nlev)
        pack = self._pack
        buf = self._buf
        fl = 1 | self.base_flags            # MFLAG_SNAPSHOT
        n = self.n
        for side, s in ((1, book.bids), (2, book.asks)):
            sign = s.sign
            q = s.qty
            for i, k in enumerate(s.keys):
                pack(buf, n << 6, 0, level_kind, side, fl, iid, exch_ns, recv_ns, k * sign, q[k],
                     update_id, i)
                n += 1
        self.n = n
        self._rec(MSG_SNAP_END, 0, 1, iid, exch_ns, recv_ns, 0, 0, update_id, 0)
        self.mark_valid(book, recv_ns, exch_ns)

    def mark_valid(self, book: Book, recv_ns: int, exch_ns: int = 0) -> None:
        if book.ever_valid and not book.valid:
            self.stats.resyncs += 1
        book.valid = True
        book.ever_valid = True
        book.last_rx_ns = recv_ns
        self._resync.pop(book.symbol, None)
        self.stats.snapshots += 1
        self._rec(MSG_STATUS, 0, 0, book.instrument_id, exch_ns, recv_ns, 0, 0,
                  STATUS_BOOK_VALID, REASON_SNAPSHOT)

    def check_crossed(self, book: Book, recv_ns: int, exch_ns: int) -> bool:
        if book.crossed():
            self.stats.crossed += 1
            self.invalidate(book, REASON_CROSSED, recv_ns, exch_ns)
            return True
        return False

    # ---- control -------------------------------------------------------------------------
    def check_stale(self, now_ns: int) -> int:
        """Invalidate valid books with no message for ``stale_ns``; returns records written."""
        self.n = 0
        conn = self.last_frame_ns if self.stale_by_connection else 0
        for book in self.books.values():
            if book.valid and now_ns - max(book.last_rx_ns, conn) > self.stale_ns:
                self.stats.stale += 1
                self.invalidate(book, REASON_STALE, now_ns)
        return self.n

    def connection_lost(self, now_ns: int) -> int:
        """The connection dropped: every book is invalid until its next snapshot."""
        self.n = 0
        for book in self.books.values():
            self.invalidate(book, REASON_RECONNECT, now_ns)
        self.on_new_connection()
        return self.n

    def on_new_connection(self) -> None:
        """Reset per-connection state (sequence numbers, channel ids); venues override."""

    def take_resync_requests(self) -> dict[str, int]:
        out = self._resync
        self._resync = {}
        return out

    def wants_resync(self) -> bool:
        return bool(self._resync)

    def pending_resyncs(self) -> dict[str, int]:
        return dict(self._resync)

    def touch(self, recv_ns: int) -> None:
        """A liveness message (heartbeat) for the whole connection refreshes every book."""
        for b in self.books.values():
            b.last_rx_ns = recv_ns

    # ---- input ---------------------------------------------------------------------------
    def feed(self, frame, recv_ts_ns: int) -> int:
        """One wire frame -> records in ``out[:n]``; returns n. A frame that fails anywhere
        (bad JSON, wrong types, missing keys, oversized) is counted as a parse error and handed
        to ``_lost_update``; it never raises and never leaves half a message applied as valid.
        Venues implement ``on_message`` (and ``parse`` / ``_lost_update`` where they differ)."""
        self.n = 0
        st = self.stats
        st.messages += 1
        msg = None
        try:
            msg = self.parse(frame)
            self.on_message(msg, recv_ts_ns)
        except PARSE_ERRORS:
            st.parse_errors += 1
            self.n = 0
            self._lost_update(msg, recv_ts_ns)    # may emit a book-invalid status record
            return self.n
        st.records += self.n
        return self.n

    def parse(self, frame):
        return orjson.loads(frame)

    def on_message(self, msg, recv_ts_ns: int) -> None:
        raise NotImplementedError

    def _lost_update(self, msg, recv_ts_ns: int) -> None:
        """A message that failed part-way: invalidate the book it may have left behind."""

    def feed_rest(self, url: str, frame, recv_ts_ns: int) -> int:
        """REST responses: only venues that sync from REST snapshots use them."""
        self.n = 0
        self.stats.messages += 1
        self.stats.ignored += 1
        return 0


_DAY_CACHE: dict[str, int] = {}


def iso_to_ns(s: str) -> int:
    """RFC 3339 UTC time ('2021-04-17T16:43:37.077621Z', up to 9 fractional digits) -> epoch
    ns, exactly; 0 if it does not parse (timestamps are informational, never fatal)."""
    if type(s) is not str or len(s) > 40:
        return 0
    try:
        day = _DAY_CACHE.get(s[:10])
        if day is None:
            import calendar
            y, mo, d = int(s[0:4]), int(s[5:7]), int(s[8:10])
            day = calendar.timegm((y, mo, d, 0, 0, 0)) * 1_000_000_000
            if len(_DAY_CACHE) > 64:
                _DAY_CACHE.clear()
            _DAY_CACHE[s[:10]] = day
        secs = int(s[11:13]) * 3600 + int(s[14:16]) * 60 + int(s[17:19])
        ns = 0
        if len(s) > 19 and s[19] == ".":
            end = 20
            while end < len(s) and s[end].isdigit():
                end += 1
            frac = s[20:end][:9]
            ns = int(frac.ljust(9, "0")) if frac else 0
        return day + secs * 1_000_000_000 + ns
    except (ValueError, IndexError):
        return 0


def epoch_text_to_ns(s: str) -> int:
    """'1618678133.365913' (seconds, decimal text) -> epoch ns exactly; 0 if bad."""
    d = s.find(".")
    try:
        if d < 0:
            return int(s) * 1_000_000_000
        frac = s[d + 1:d + 10]
        v = int(s[:d]) * 1_000_000_000 + int(frac.ljust(9, "0"))
        return v if 0 <= v <= INT64_MAX else 0
    except (ValueError, TypeError, AttributeError):
        return 0
