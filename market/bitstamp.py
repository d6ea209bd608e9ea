"""Bitstamp BTC/USD order-by-order log (the ob-analytics recording, see
``shared/data/calibration/README.md``) -> hftfarm market records, exactly.

Cold path: runs in ``run.py sim facts --data ...`` and in tests. Every price and size goes
through ``Decimal`` (order events carry decimal strings; trade lines carry JSON floats such as
``236.61000000000001``, which are read as Decimal and rounded to the tick / the satoshi, never
through binary floating point).

The log has one event per line: ``<local receive ms> <event> <JSON>``, events
``order_created`` / ``order_changed`` / ``order_deleted`` (L3: ``amount`` is the order's
remaining size), ``trade`` (no aggressor flag) and ``order_book`` (a top-20 snapshot).

Conversion (one batch per log line; the last record of a batch carries MFLAG_LAST_IN_BATCH,
every record MFLAG_REPLAY; exch_ts_ns = recv_ts_ns = the line's receive time, because the
``datetime`` of an order event is the order's creation time, not the event's):

- order events are aggregated by price into an L2 book (lots = satoshi): a LEVEL record with
  the level's new total for every level an event changes. An order that crosses the opposite
  best when it is created is a taker: it is held back ("pending") and rests in the L2 book only
  once what it crossed has gone, so the published book is never crossed by an incoming order
  (an exchange's L2 feed never shows the taker either).
- ``order_book``: SNAP_START, the snapshot's 20 levels a side plus the deeper levels known from
  order events (MFLAG_SNAPSHOT), SNAP_END. The snapshot is the truth inside its price range:
  the L2 book there is replaced by it (orders resting before the recording started are only
  known from snapshots).
- ``trade``: a TRADE record (px, qty, aux0 = Bitstamp trade id, aux1 = the trade line's receive
  time in ns) with the aggressor inferred from the order events that executed it: an execution
  is an ``order_changed`` that lowers an order's amount or an ``order_deleted`` with amount 0,
  at or through the trade price, not yet taken by an earlier trade, in the MATCH_WINDOW_MS
  before the trade line. If executions of both sides are found, the newer order (larger id:
  Bitstamp ids grow with time) is the taker; if only one side's are found at the trade price
  they are the makers (a market order shows no order events) and the aggressor is the other
  side; an execution through the trade price can only be the taker's. The TRADE record is
  placed in the batch of its first execution event, before that event's level change, with
  that event's time (as a venue publishes a trade before the book update it causes). A trade
  with no execution event found takes the side of the book it printed against (meta
  ``trades_by_book``).

Instrument: id 1, symbol "BTC/USD", venue "BITSTAMP", tick 0.01 USD, lot 0.00000001 BTC.
"""
from __future__ import annotations

import gzip
import json
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import numpy as np

from shm.records import (MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MFLAG_REPLAY, MFLAG_SNAPSHOT,
                         MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS, MSG_TRADE,
                         SIDE_BUY, SIDE_SELL, STATUS_UNCHANGED)

TICK_SIZE = Decimal("0.01")
LOT_SIZE = Decimal("0.00000001")
MATCH_WINDOW_MS = 2000
BID, ASK = 0, 1
ORDER_EVENTS = ("order_created", "order_changed", "order_deleted")


class BitstampError(ValueError):
    """A log line that does not read as the format says; names the file and the line."""


def bitstamp_instrument():
    from shm.instruments import Instrument

    return Instrument(1, "BTC/USD", "BITSTAMP", 1, TICK_SIZE, LOT_SIZE, "BTC")


def to_ticks(value: Decimal) -> int:
    return int((Decimal(value) / TICK_SIZE).to_integral_value(ROUND_HALF_EVEN))


def to_lots(value: Decimal) -> int:
    return int((Decimal(value) / LOT_SIZE).to_integral_value(ROUND_HALF_EVEN))


def looks_like_bitstamp(path) -> bool:
    """True when the file's first line reads as ``<ms> <event> {...}`` of this log."""
    try:
        with _open(path) as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError, EOFError):
        return False
    parts = first.split(" ", 2)
    return (len(parts) == 3 and parts[0].isdigit()
            and parts[1] in ORDER_EVENTS + ("trade", "order_book"))


def _open(path):
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt")
    return open(path)


def read_events(path, max_seconds: float | None = None, max_lines: int | None = None):
    """Parsed lines: list of (recv_ms, event, dict with Decimal numbers), up to ``max_lines``
    lines or the first ``max_seconds`` after the first line."""
    out = []
    limit_ms = None
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if max_lines is not None and lineno > max_lines:
                break
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) != 3 or not parts[0].isdigit():
                raise BitstampError(f"{path}:{lineno}: not '<epoch ms> <event> <JSON>'")
            ms, event = int(parts[0]), parts[1]
            if limit_ms is None and max_seconds is not None:
                limit_ms = ms + int(Decimal(str(max_seconds)) * 1000)
            if limit_ms is not None and ms > limit_ms:
                break
            try:
                doc = json.loads(parts[2], parse_float=Decimal)
            except ValueError as exc:
                raise BitstampError(f"{path}:{lineno}: JSON unreadable: {exc}") from None
            if event not in ORDER_EVENTS + ("trade", "order_book"):
                raise BitstampError(f"{path}:{lineno}: unknown event {event!r}")
            out.append((ms, event, doc, lineno))
    return out


def _annotate_orders(events):
    """Per order event: (side, px, new amount lots, previous amount lots or None, executed
    lots or None when unknown, is_execution). Uses an order table of what was seen."""
    orders: dict[int, int] = {}
    notes = [None] * len(events)
    for k, (_ms, ev, doc, _ln) in enumerate(events):
        if ev not in ORDER_EVENTS:
            continue
        oid = int(doc["id"])
        side = BID if int(doc["order_type"]) == 0 else ASK
        px = to_ticks(Decimal(doc["price"]))
        amt = to_lots(Decimal(doc["amount"]))
        prev = orders.get(oid)
        execd, is_exec = None, False
        if ev == "order_created":
            orders[oid] = amt
        elif ev == "order_changed":
            if prev is not None:
                is_exec = amt < prev
                execd = prev - amt if is_exec else None
            else:
                is_exec = True     # an unknown order's change: a fill of unknown size
            orders[oid] = amt
        else:
            orders.pop(oid, None)
            if amt == 0:
                is_exec = True
                execd = prev
        notes[k] = (side, px, amt, prev, execd, is_exec, oid)
    return notes


def _match_trades(events, notes):
    """For each trade line index: (insert-before event index, aggressor SIDE_* or 0, method)."""
    consumed = set()
    out = {}
    lo = 0
    for j, (ms, ev, doc, _ln) in enumerate(events):
        if ev != "trade":
            continue
        px = to_ticks(doc["price"])
        qty = to_lots(doc["amount"])
        while events[lo][0] < ms - MATCH_WINDOW_MS:
            lo += 1
        cand = {BID: [], ASK: []}
        for k in range(lo, j):
            n = notes[k]
            if n is None or not n[5] or k in consumed:
                continue
            side, opx = n[0], n[1]
            if (side == BID and opx >= px) or (side == ASK and opx <= px):
                cand[side].append(k)
        for side in (BID, ASK):
            exact = [k for k in cand[side] if notes[k][4] == qty]
            if exact:
                cand[side] = exact
        chosen = [cand[s][-1] for s in (BID, ASK) if cand[s]]
        if len(chosen) == 2:
            taker = max(chosen, key=lambda k: notes[k][6])
            side = SIDE_BUY if notes[taker][0] == BID else SIDE_SELL
            method = "paired"
        elif len(chosen) == 1:
            n = notes[chosen[0]]
            through = n[1] != px
            if through:      # only a taker executes away from its own limit price
                side = SIDE_BUY if n[0] == BID else SIDE_SELL
                method = "taker"
            else:
                side = SIDE_SELL if n[0] == BID else SIDE_BUY
                method = "maker"
        else:
            out[j] = (j, 0, "book")
            continue
        consumed.update(chosen)
        out[j] = (min(chosen), side, method)
    return out


class _L2:
    """Price-aggregated book of the order events plus snapshots; levels in lots."""

    def __init__(self):
        self.levels = ({}, {})     # side -> {px: lots}
        self.resting: dict[int, tuple[int, int, int]] = {}   # oid -> (side, px, lots)
        self.pending: dict[int, tuple[int, int, int]] = {}   # crossing takers held back

    def best(self, side):
        lv = self.levels[side]
        if not lv:
            return None
        return max(lv) if side == BID else min(lv)

    def _add(self, side, px, d, changed):
        lv = self.levels[side]
        q = max(0, lv.get(px, 0) + d)
        if q > 0:
            lv[px] = q
        else:
            lv.pop(px, None)
        changed[(side, px)] = q

    def _crosses(self, side, px):
        opp = self.best(1 - side)
        return opp is not None and (px >= opp if side == BID else px <= opp)

    def order_event(self, ev, side, px, amt, oid, changed):
        if ev == "order_created":
            if self._crosses(side, px):
                self.pending[oid] = (side, px, amt)
            else:
                self.resting[oid] = (side, px, amt)
                self._add(side, px, amt, changed)
            return
        if oid in self.pending:
            if ev == "order_deleted":
                del self.pending[oid]
            else:
                self.pending[oid] = (side, px, amt)
            return
        old = self.resting.get(oid)
        if old is not None:
            d = amt - old[2] if ev == "order_changed" else -old[2]
        elif ev == "order_deleted":
            d = -amt    # an order from before the recording: its remaining size leaves
        else:
            d = 0       # unknown previous size; the next snapshot corrects the level
        if ev == "order_deleted":
            self.resting.pop(oid, None)
        else:
            self.resting[oid] = (side, px, amt)
        if d != 0:
            self._add(side, px, d, changed)

    def release_pending(self, changed):
        """Pending takers that no longer cross (what they took is gone) start resting."""
        for oid, (side, px, amt) in list(self.pending.items()):
            if not self._crosses(side, px):
                del self.pending[oid]
                if amt > 0:
                    self.resting[oid] = (side, px, amt)
                    self._add(side, px, amt, changed)

    def snapshot(self, bids, asks):
        """Replace the book inside the snapshot's price range by the snapshot. Held-back
        takers are settled by it too: what is left of them rests (and is in the snapshot)
        or is gone."""
        for side, rows in ((BID, bids), (ASK, asks)):
            snap = {}
            for p, q in rows:
                lots = to_lots(Decimal(q))
                if lots > 0:
                    snap[to_ticks(Decimal(p))] = lots
            lv = self.levels[side]
            if snap:
                edge = min(snap) if side == BID else max(snap)
                inside = [p for p in lv if (p >= edge if side == BID else p <= edge)]
                for p in inside:
                    del lv[p]
            lv.update(snap)
        for oid, (side, px, amt) in list(self.pending.items()):
            if not self._crosses(side, px):
                del self.pending[oid]
                self.resting[oid] = (side, px, amt)


def convert(path, max_seconds: float | None = None, max_lines: int | None = None,
            progress=None):
    """(MARKET_DTYPE records, meta dict) of the log (or its first ``max_seconds`` /
    ``max_lines``). ``progress(text)`` is called now and then on long files."""
    events = read_events(path, max_seconds, max_lines)
    if progress:
        progress(f"bitstamp: {len(events)} lines read from {Path(path).name}")
    notes = _annotate_orders(events)
    matches = _match_trades(events, notes)
    before: dict[int, list[int]] = {}
    for j, (k, _side, _m) in matches.items():
        before.setdefault(k, []).append(j)
    book = _L2()
    out = []
    methods = {"paired": 0, "maker": 0, "taker": 0, "book": 0}
    n_snap = 0

    def emit(batch, ms):
        ts = ms * 1_000_000
        for i, (kind, side, flags, px, q, aux0, aux1) in enumerate(batch):
            last = MFLAG_LAST_IN_BATCH if i == len(batch) - 1 else 0
            out.append((0, kind, side, flags | MFLAG_REPLAY | last, 1, ts, ts, px, q, aux0,
                        aux1))

    def level_recs(changed, uid):
        return [(MSG_LEVEL, SIDE_BUY if s == BID else SIDE_SELL, 0, p, q, uid, -1)
                for (s, p), q in sorted(changed.items())]

    for k, (ms, ev, doc, lineno) in enumerate(events):
        batch = []
        for j in before.get(k, ()):
            if j == k:
                continue       # unmatched trades are emitted at their own line below
            _ms_t, _ev, tdoc, _l = events[j]
            side = matches[j][1]
            methods[matches[j][2]] += 1
            batch.append((MSG_TRADE, side, 0, to_ticks(tdoc["price"]), to_lots(tdoc["amount"]),
                          int(tdoc["id"]), events[j][0] * 1_000_000))
        if ev in ORDER_EVENTS:
            side, px, amt, _p, _e, _x, oid = notes[k]
            changed: dict = {}
            book.order_event(ev, side, px, amt, oid, changed)
            book.release_pending(changed)
            batch += level_recs(changed, lineno)
        elif ev == "trade":
            if matches[k][0] == k:       # no execution event found: side from the book
                px = to_ticks(doc["price"])
                bid, ask = book.best(BID), book.best(ASK)
                if ask is not None and px >= ask:
                    side = SIDE_BUY
                elif bid is not None and px <= bid:
                    side = SIDE_SELL
                elif bid is not None and ask is not None:
                    side = SIDE_BUY if 2 * px >= bid + ask else SIDE_SELL
                else:
                    side = SIDE_BUY
                methods["book"] += 1
                batch.append((MSG_TRADE, side, 0, px, to_lots(doc["amount"]), int(doc["id"]),
                              ms * 1_000_000))
        else:   # order_book
            n_snap += 1
            book.snapshot(doc["bids"], doc["asks"])
            lv_b, lv_a = book.levels
            batch.append((MSG_SNAP_START, 0, 0, 0, 0, lineno, len(lv_b) + len(lv_a)))
            for p in sorted(lv_b, reverse=True):
                batch.append((MSG_LEVEL, SIDE_BUY, MFLAG_SNAPSHOT, p, lv_b[p], lineno, -1))
            for p in sorted(lv_a):
                batch.append((MSG_LEVEL, SIDE_SELL, MFLAG_SNAPSHOT, p, lv_a[p], lineno, -1))
            batch.append((MSG_SNAP_END, 0, 0, 0, 0, lineno, 0))
        if not batch:
            batch.append((MSG_STATUS, 0, 0, 0, 0, STATUS_UNCHANGED, lineno))
        emit(batch, ms)
        if progress and k and k % 20000 == 0:
            progress(f"bitstamp: {k}/{len(events)} lines converted")
    recs = np.array(out, dtype=MARKET_DTYPE) if out else np.zeros(0, MARKET_DTYPE)
    n_trades = sum(1 for e in events if e[1] == "trade")
    meta = {"source": "bitstamp", "file": Path(path).name, "lines": len(events),
            "trades": n_trades, "snapshots": n_snap,
            **{f"trades_by_{m}": v for m, v in methods.items()}}
    return recs, meta
