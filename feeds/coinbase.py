"""Coinbase market data: the Exchange feed (snapshot, l2update, match/last_match, ticker,
heartbeat) and the Advanced Trade feed (l2_data, market_trades, ticker, heartbeats,
sequence_num). Feed process, hot path (``feed`` runs once per websocket frame).

Exchange level2 has no in-band gap detector: a book is valid from its ``snapshot`` until the
connection drops (``connection_lost``), a crossed book appears, or a malformed l2update for it
arrives (an update we could not apply is a lost update); then it waits for a new snapshot
(resubscribe). ``match.side`` is the *maker's* side, so the aggressor is the other side;
``ticker.side`` is the taker's side (PROTOCOLS.md 2.1, verified on the recording).

Advanced Trade: ``sequence_num`` counts every message of one connection across channels; any
jump is a lost message, and since it may have been an l2 update, every book of the connection
becomes invalid (REASON_GAP) until resubscribed. ``sequence_num`` only advances on a message
that was processed, so a malformed frame also shows up as a gap. 0 starts a new connection.
Whether ``market_trades.side`` is the maker's or the taker's side is not documented
(PROTOCOLS.md 2.2, open question): ``at_trade_side_is_maker`` (default True, as on the
Exchange feed) says how to read it.
"""
from __future__ import annotations


import orjson

from feeds.handler import PARSE_ERRORS, FeedHandler, iso_to_ns, ok_id
from shm.records import MSG_LEVEL, MSG_TOP, MSG_TRADE, REASON_GAP

_EX_SIDE = {"buy": 1, "sell": 2}
_AT_SIDE = {"bid": 1, "offer": 2}


class _CoinbaseBase(FeedHandler):
    def _levels_pairs(self, lst, ps, qs):
        out = []
        for lv in lst:
            px = ps(lv[0])
            qty = qs(lv[1])
            if px < 0 or qty < 0:
                raise ValueError
            out.append((px, qty))
        return out

    def _install(self, book, bids, asks, recv, exch):
        if len(bids) + len(asks) > self.capacity - 8:
            raise ValueError("oversized snapshot")
        book.bids.load(bids)
        book.asks.load(asks)
        book.update_id = 0
        self.emit_snapshot(book, recv, exch, 0, MSG_LEVEL)
        self.check_crossed(book, recv, exch)

    def _room_for(self, work) -> bool:
        need = 0
        for fn, args in work:
            if fn is not None:
                need += 8 + sum(len(a) for a in args if isinstance(a, list))
        return need <= self.room()

    def _apply(self, book, changes, recv, exch):
        """changes: validated [(side, px, qty)]; only called on a valid book."""
        start = n = self.n
        pack = self._pack
        buf = self._buf
        fl = self.base_flags
        iid = book.instrument_id
        bset = book.bids.set
        aset = book.asks.set
        for side, px, qty in changes:
            if (bset if side == 1 else aset)(px, qty):
                pack(buf, n << 6, 0, MSG_LEVEL, side, fl, iid, exch, recv, px, qty, 0, -1)
                n += 1
        self.n = n
        self.stats.book_updates += n - start
        book.last_rx_ns = recv
        self._end_batch(start)
        self.check_crossed(book, recv, exch)


class CoinbaseHandler(_CoinbaseBase):
    venue = "coinbase"

    def on_message(self, msg, recv_ts_ns: int) -> None:
        st = self.stats
        t = msg["type"]
        if t == "l2update":
            self._on_l2update(msg, recv_ts_ns)
        elif t == "match" or t == "last_match":
            self._on_match(msg, recv_ts_ns)
        elif t == "ticker":
            self._on_ticker(msg, recv_ts_ns)
        elif t == "snapshot":
            self._on_snapshot(msg, recv_ts_ns)
        elif t == "heartbeat":
            st.heartbeats += 1
            self.touch(recv_ts_ns)
        else:
            st.ignored += 1            # subscriptions, error, unknown types (must ignore)

    def _lost_update(self, msg, recv):
        # An l2update we could not apply leaves its book behind the venue: invalidate it.
        if isinstance(msg, dict) and msg.get("type") == "l2update":
            book = self.books.get(msg.get("product_id")) if isinstance(
                msg.get("product_id"), str) else None
            if book is not None:
                self.invalidate(book, REASON_GAP, recv)

    def _on_snapshot(self, m, recv):
        sym = m["product_id"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        bids = self._levels_pairs(m["bids"], ps, qs)
        asks = self._levels_pairs(m["asks"], ps, qs)
        self._install(self.book(sym), bids, asks, recv, 0)

    def _on_l2update(self, m, recv):
        sym = m["product_id"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        changes = []
        if len(m["changes"]) > self.capacity - 8:
            raise ValueError("oversized")
        for side, p, q in m["changes"]:
            s = _EX_SIDE[side]
            px = ps(p)
            qty = qs(q)
            if px < 0 or qty < 0:
                raise ValueError
            changes.append((s, px, qty))
        book = self.book(sym)
        if not book.valid:
            self.stats.ignored += 1       # waiting for a snapshot; nothing to apply it to
            return
        self._apply(book, changes, recv, iso_to_ns(m.get("time") or ""))

    def _on_match(self, m, recv):
        inst = self.instruments.get(m["product_id"])
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        px = inst.price.units_cached(m["price"])
        qty = inst.qty.units_cached(m["size"])
        maker = _EX_SIDE[m["side"]]
        tid = m["trade_id"]
        if px < 0 or qty < 0 or not ok_id(tid):
            raise ValueError
        self._rec(MSG_TRADE, 3 - maker, 2, inst.instrument_id, iso_to_ns(m.get("time") or ""),
                  recv, px, qty, tid, 0)
        self.stats.trades += 1

    def _on_ticker(self, m, recv):
        inst = self.instruments.get(m["product_id"])
        if inst is None:
            self.stats.unknown_symbol += 1
            return
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        bp = ps(m["best_bid"])
        ap = ps(m["best_ask"])
        # best_*_size appeared on the feed after 2021; absent means unknown (0)
        bq = qs(m["best_bid_size"]) if "best_bid_size" in m else 0
        aq = qs(m["best_ask_size"]) if "best_ask_size" in m else 0
        if min(bp, ap, bq, aq) < 0:
            raise ValueError
        if self.emit_tops:
            self._rec(MSG_TOP, _EX_SIDE.get(m.get("side"), 0), 2, inst.instrument_id,
                      iso_to_ns(m.get("time") or ""), recv, bp, bq, ap, aq)
        self.stats.tops += 1


class CoinbaseAdvancedHandler(_CoinbaseBase):
    venue = "coinbase-at"

    def __init__(self, instruments, at_trade_side_is_maker: bool = True, **kw):
        super().__init__(instruments, **kw)
        self.trade_side_is_maker = at_trade_side_is_maker
        self._seq: int | None = None
        self._hb: int | None = None

    def on_new_connection(self) -> None:
        self._seq = None
        self._hb = None

    def feed(self, frame, recv_ts_ns: int) -> int:
        self.n = 0
        st = self.stats
        st.messages += 1
        try:
            msg = orjson.loads(frame)
            seq = msg["sequence_num"]
            ch = msg["channel"]
            events = msg["events"]
            if not ok_id(seq) or type(events) is not list:
                raise TypeError
            if seq == 0:
                self.on_new_connection()
            work = []
            if ch == "l2_data":
                work = [self._parse_l2(ev) for ev in events]
            elif ch == "market_trades":
                work = [self._parse_trades(ev) for ev in events]
            elif ch == "ticker" or ch == "ticker_batch":
                work = [self._parse_tickers(ev) for ev in events]
            elif ch == "heartbeats":
                for ev in events:
                    c = int(ev["heartbeat_counter"])   # an int in the spec, a string in prose
                    if self._hb is not None and c != self._hb + 1:
                        st.heartbeat_gaps += 1
                    self._hb = c
                st.heartbeats += 1
                self.touch(recv_ts_ns)
            else:
                st.ignored += 1                # subscriptions, candles, status, ...
            if not self._room_for(work):
                raise ValueError("oversized")
        except PARSE_ERRORS:
            st.parse_errors += 1
            self.n = 0
            return 0
        # validated: now the sequence check, then apply
        if self._seq is not None and seq != self._seq + 1:
            st.gaps += 1
            for book in self.books.values():
                self.invalidate(book, REASON_GAP, recv_ts_ns)
        self._seq = seq
        exch = iso_to_ns(msg.get("timestamp") or "") if isinstance(msg.get("timestamp"),
                                                                     str) else 0
        for fn, args in work:
            if fn is not None:
                fn(*args, recv_ts_ns, exch)
        st.records += self.n
        return self.n

    def _parse_l2(self, ev):
        sym = ev["product_id"]
        typ = ev["type"]
        inst = self.instruments.get(sym)
        if inst is None:
            self.stats.unknown_symbol += 1
            return None, ()
        ps, qs = inst.price.units_cached, inst.qty.units_cached
        changes = []
        for u in ev["updates"]:
            side = _AT_SIDE[u["side"]]
            px = ps(u["price_level"])
            qty = qs(u["new_quantity"])
            if px < 0 or qty < 0:
                raise ValueError
            changes.append((side, px, qty))
        if typ == "snapshot":
            return self._on_snapshot, (sym, changes)
        if typ == "update":
            return self._on_update, (sym, changes)
        raise ValueError

    def _on_snapshot(self, sym, changes, recv, exch):
        bids = [(px, q) for s, px, q in changes if s == 1 and q]
        asks = [(px, q) for s, px, q in changes if s == 2 and q]
        self._install(self.book(sym), bids, asks, recv, exch)

    def _on_update(self, sym, changes, recv, exch):
        book = self.book(sym)
        if not book.valid:
            self.stats.ignored += 1
            return
        self._apply(book, changes, recv, exch)

    def _parse_trades(self, ev):
        out = []
        for t in ev["trades"]:
            inst = self.instruments.get(t["product_id"])
            if inst is None:
                self.stats.unknown_symbol += 1
                continue
            px = inst.price.units_cached(t["price"])
            qty = inst.qty.units_cached(t["size"])
            side = {"BUY": 1, "SELL": 2}[t["side"]]
            tid = int(t["trade_id"])
            if px < 0 or qty < 0 or not ok_id(tid):
                raise ValueError
            aggressor = 3 - side if self.trade_side_is_maker else side
            out.append((inst.instrument_id, aggressor, px, qty, tid,
                        iso_to_ns(t.get("time") or "")))
        return self._on_trades, (out,)

    def _on_trades(self, trades, recv, exch):
        for iid, side, px, qty, tid, ts in trades:
            self._rec(MSG_TRADE, side, 2, iid, ts, recv, px, qty, tid, 0)
            self.stats.trades += 1

    def _parse_tickers(self, ev):
        out = []
        for t in ev["tickers"]:
            inst = self.instruments.get(t["product_id"])
            if inst is None:
                self.stats.unknown_symbol += 1
                continue
            ps, qs = inst.price.units_cached, inst.qty.units_cached
            bp, ap = ps(t["best_bid"]), ps(t["best_ask"])
            bq = qs(t["best_bid_quantity"]) if "best_bid_quantity" in t else 0
            aq = qs(t["best_ask_quantity"]) if "best_ask_quantity" in t else 0
            if min(bp, ap, bq, aq) < 0:
                raise ValueError
            out.append((inst.instrument_id, bp, bq, ap, aq))
        return self._on_tickers, (out,)

    def _on_tickers(self, tops, recv, exch):
        for iid, bp, bq, ap, aq in tops:
            if self.emit_tops:
                self._rec(MSG_TOP, 0, 2, iid, exch, recv, bp, bq, ap, aq)
            self.stats.tops += 1
