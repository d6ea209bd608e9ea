"""Exact local L2 book of one instrument, kept by a feed handler. Feed process, hot path.

Why not market/book.py: venue checksums (Kraken) are computed over the *exact decimal text* the
venue sent, so this book can keep, per level, the checksum fragment of the wire text next to the
integer price and quantity. Prices and quantities are integer ticks and lots.

Each side is a sorted Python list of keys plus a dict key -> qty_lots. Keys are signed so that
ascending order is best-first on both sides (asks: +px, bids: -px): the best level is
``keys[0]``, the top N are ``keys[:N]`` and truncation to a depth pops from the end. Insertion is
a bisect plus a memmove, which beats a tree for the book sizes venues send (<= 5,000 levels).
"""
from __future__ import annotations

from bisect import bisect_left, insort

__all__ = ["BookSide", "Book"]


class BookSide:
    __slots__ = ("sign", "keys", "qty", "frag")

    def __init__(self, is_bid: bool):
        self.sign = -1 if is_bid else 1
        self.keys: list[int] = []
        self.qty: dict[int, int] = {}
        self.frag: dict[int, str] = {}     # key -> checksum text (Kraken only)

    def clear(self) -> None:
        self.keys.clear()
        self.qty.clear()
        self.frag.clear()

    def set(self, px: int, qty: int) -> bool:
        """Set the level's absolute quantity (0 removes it). Returns True if the book changed."""
        k = px * self.sign
        q = self.qty
        if qty == 0:
            if k in q:
                del q[k]
                keys = self.keys
                del keys[bisect_left(keys, k)]
                self.frag.pop(k, None)
                return True
            return False          # removing a level we do not have is normal (Binance docs)
        old = q.get(k)
        if old is None:
            insort(self.keys, k)
        elif old == qty:
            q[k] = qty
            return False
        q[k] = qty
        return True

    def load(self, levels) -> None:
        """Replace the side by ``levels`` [(px, qty)] (a snapshot): one sort, no inserts.
        A price given twice keeps its last quantity; qty 0 entries are skipped."""
        sign = self.sign
        q = {px * sign: qty for px, qty in levels}
        for k in [k for k, v in q.items() if v == 0]:
            del q[k]
        self.qty = q
        self.keys = sorted(q)
        self.frag = {}

    def set_text(self, px: int, qty: int, frag: str) -> None:
        """As ``set``, also remembering the checksum text of the level."""
        self.set(px, qty)
        if qty:
            self.frag[px * self.sign] = frag

    def truncate(self, depth: int) -> int:
        """Drop levels beyond ``depth`` (worst first); returns how many were dropped."""
        keys = self.keys
        n = len(keys) - depth
        if n <= 0:
            return 0
        q = self.qty
        f = self.frag
        for k in keys[depth:]:
            del q[k]
            f.pop(k, None)
        del keys[depth:]
        return n

    def best_px(self) -> int:
        """Best price in ticks, or -1 if the side is empty."""
        return self.keys[0] * self.sign if self.keys else -1

    def best(self) -> tuple[int, int]:
        """(px_ticks, qty_lots) of the best level, or (-1, 0)."""
        if not self.keys:
            return -1, 0
        k = self.keys[0]
        return k * self.sign, self.qty[k]

    def levels(self, n: int | None = None) -> list[tuple[int, int]]:
        """Best-first (px_ticks, qty_lots) list (cold path)."""
        keys = self.keys if n is None else self.keys[:n]
        return [(k * self.sign, self.qty[k]) for k in keys]

    def top_fragments(self, n: int) -> str:
        f = self.frag
        return "".join([f[k] for k in self.keys[:n]])

    def __len__(self) -> int:
        return len(self.keys)


class Book:
    """Both sides plus sync state. ``valid`` is False until a snapshot is applied and after
    any gap, checksum failure, crossed book or staleness; ``update_id`` is the venue's id of
    the last applied event (Binance lastUpdateId/u), 0 where the venue has none."""

    __slots__ = ("instrument_id", "symbol", "bids", "asks", "valid", "update_id", "depth",
                 "last_rx_ns", "ever_valid")

    def __init__(self, instrument_id: int, symbol: str, depth: int = 0):
        self.instrument_id = instrument_id
        self.symbol = symbol
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.valid = False
        self.ever_valid = False
        self.update_id = 0
        self.depth = depth          # 0: unlimited; else the subscribed depth (Kraken)
        self.last_rx_ns = 0

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()
        self.update_id = 0

    def crossed(self) -> bool:
        """Best bid >= best ask (crossed or locked); an empty side never counts as crossed."""
        b = self.bids.keys
        a = self.asks.keys
        return bool(b) and bool(a) and -b[0] >= a[0]

    def top(self) -> tuple[int, int, int, int]:
        bp, bq = self.bids.best()
        ap, aq = self.asks.best()
        return bp, bq, ap, aq
