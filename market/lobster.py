"""LOBSTER (NASDAQ) message + order book files -> hftfarm market records, and back to rows.

Cold path: runs in ``run.py replay lobster``, ``run.py book``, ``run.py sim facts`` and in
tests. The files may be gzip-compressed (``.csv.gz``, as in shared/data/calibration/lobster/).
All parsing is integer/Decimal-exact (prices are already USD x 10000 integers; times are
decimal seconds after midnight and become integer nanoseconds without passing through float).

Conversion (one batch of records per LOBSTER message; the last record of each batch carries
MFLAG_LAST_IN_BATCH, every record MFLAG_REPLAY):

- message 1: the book is unknown before it, so its order book row is sent as a snapshot:
  SNAP_START, LEVEL records (MFLAG_SNAPSHOT), SNAP_END.
- message i > 1: the order book row i is diffed against row i-1; every level that left becomes a
  LEVEL record with qty 0, then every new or changed level a LEVEL with its new total size.
  Removals go first so that a book of exactly ``levels`` depth never overflows.
- types 4 and 5 also produce a TRADE record before the level records: px, size, side = the
  aggressor (an executed sell order -1 means a buyer-initiated trade: SIDE_BUY), aux0 = the
  LOBSTER order id, aux1 = the message type (4 visible, 5 hidden).
- type 7 (halt) produces STATUS HALTED (price -1 halt, 0 quoting resumes) or TRADING (1).
- a message that changes nothing visible and is not a trade produces STATUS_UNCHANGED, so every
  message is exactly one batch and ``run.py book`` writes exactly one row per message.

Instrument: id 1, symbol = the ticker from the file name, venue "LOBSTER", tick 0.0001 (the
files' price unit, so px_ticks is the file's integer price), lot 1 share. Times: exch_ts_ns =
recv_ts_ns = New York midnight of the file's date in Unix ns + the message time; the header's
meta keeps ``midnight_ns`` so seconds after midnight are recovered exactly.
"""
from __future__ import annotations

import gzip
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import numpy as np

from shm.records import (MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MFLAG_REPLAY, MFLAG_SNAPSHOT,
                         MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS, MSG_TRADE,
                         SIDE_BUY, SIDE_SELL, STATUS_HALTED, STATUS_TRADING, STATUS_UNCHANGED)

DUMMY_ASK_PX = 9999999999
DUMMY_BID_PX = -9999999999
TICK_SIZE = Decimal("0.0001")
_NAME_RE = re.compile(r"^(?P<ticker>[^_]+)_(?P<date>\d{4}-\d{2}-\d{2})_\d+_\d+_"
                      r"(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv(\.gz)?$")


class LobsterError(ValueError):
    """A LOBSTER file that does not read as its format says; names the file and line."""


def seconds_to_ns(text: str) -> int:
    """'34200.004241176' -> 34200004241176000, exactly (at most 9 decimals)."""
    whole, _, frac = text.strip().partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()) or len(frac) > 9:
        raise ValueError(f"not a LOBSTER time (seconds after midnight, <= 9 decimals): {text!r}")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


def parse_name(path) -> dict:
    m = _NAME_RE.match(Path(path).name)
    if not m:
        return {"ticker": "LOBSTER", "date": None, "levels": None, "kind": None}
    return {"ticker": m["ticker"], "date": m["date"], "levels": int(m["levels"]),
            "kind": m["kind"]}


def midnight_ns(date: str | None) -> int:
    """Unix ns of midnight America/New_York on ``date`` (NASDAQ's clock); 0 if unknown."""
    if not date:
        return 0
    from zoneinfo import ZoneInfo

    d = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=ZoneInfo("America/New_York"))
    return int(d.timestamp()) * 1_000_000_000


def open_text(path):
    """A LOBSTER CSV for reading as text, gzip-compressed (``.gz``) or not."""
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def read_messages(path, max_seconds: float | None = None) -> np.ndarray:
    """int64[rows, 6]: time ns after midnight, type, order id, size, price, direction; with
    ``max_seconds`` only the messages up to that long after the first one."""
    rows = []
    limit = None
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(",")
            if len(parts) < 6:
                raise LobsterError(f"{path}:{lineno}: {len(parts)} columns, a LOBSTER message "
                                   f"has 6")
            try:
                row = (seconds_to_ns(parts[0]), *(int(p) for p in parts[1:6]))
            except ValueError as exc:
                raise LobsterError(f"{path}:{lineno}: {exc}") from None
            if max_seconds is not None:
                if limit is None:
                    limit = row[0] + int(max_seconds * 1_000_000_000)
                if row[0] > limit:
                    break
            rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def read_orderbook(path, levels: int, max_rows: int | None = None) -> np.ndarray:
    """int64[rows, 4 * levels] (ask px, ask size, bid px, bid size per level); the first
    ``max_rows`` rows only when given."""
    try:
        with open_text(path) as f:
            ob = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2, max_rows=max_rows)
    except ValueError as exc:
        raise LobsterError(f"{path}: not an integer LOBSTER order book file: {exc}") from None
    if ob.shape[1] < 4 * levels:
        have = ob.shape[1] // 4
        raise LobsterError(f"{path}: the file holds {have} levels ({ob.shape[1]} columns) but "
                           f"{levels} were asked for; use --levels {have} or fewer")
    return ob[:, : 4 * levels]


def _side_map(row, levels, side):
    # side 0 = bid (columns 2, 3), 1 = ask (columns 0, 1); empty levels have size 0.
    off = 2 if side == 0 else 0
    out = {}
    for lvl in range(levels):
        px, q = int(row[4 * lvl + off]), int(row[4 * lvl + off + 1])
        if q > 0:
            out[px] = q
    return out


def convert(message_path, orderbook_path, levels: int, max_seconds: float | None = None):
    """(MARKET_DTYPE records, meta dict) for a LOBSTER pair (files may be gzip-compressed);
    with ``max_seconds`` only the first that many seconds of the day."""
    msgs = read_messages(message_path, max_seconds)
    ob = read_orderbook(orderbook_path, levels, len(msgs) if max_seconds is not None else None)
    if len(msgs) != len(ob):
        raise LobsterError(f"{message_path} has {len(msgs)} messages but {orderbook_path} has "
                           f"{len(ob)} order book rows; LOBSTER pairs have equal row counts")
    name = parse_name(message_path)
    t0 = midnight_ns(name["date"])
    out = []
    prev = ({}, {})
    for i in range(len(msgs)):
        t, mtype, oid, size, price, direction = (int(v) for v in msgs[i])
        ts = t0 + t
        batch = []
        if mtype in (4, 5):
            aggressor = SIDE_BUY if direction == -1 else SIDE_SELL
            batch.append((MSG_TRADE, aggressor, 0, price, size, oid, mtype))
        cur = (_side_map(ob[i], levels, 0), _side_map(ob[i], levels, 1))
        if i == 0:
            batch.append((MSG_SNAP_START, 0, 0, 0, 0, 1, len(cur[0]) + len(cur[1])))
            for side in (0, 1):
                for px, q in sorted(cur[side].items(), reverse=(side == 0)):
                    batch.append((MSG_LEVEL, side + 1, MFLAG_SNAPSHOT, px, q, 1, -1))
            batch.append((MSG_SNAP_END, 0, 0, 0, 0, 1, 0))
        else:
            for side in (0, 1):
                for px in sorted(set(prev[side]) - set(cur[side])):
                    batch.append((MSG_LEVEL, side + 1, 0, px, 0, i + 1, -1))
            for side in (0, 1):
                for px, q in sorted(cur[side].items()):
                    if prev[side].get(px) != q:
                        batch.append((MSG_LEVEL, side + 1, 0, px, q, i + 1, -1))
        if mtype == 7:
            code = STATUS_TRADING if price == 1 else STATUS_HALTED
            batch.append((MSG_STATUS, 0, 0, 0, 0, code, price))
        if not batch:
            batch.append((MSG_STATUS, 0, 0, 0, 0, STATUS_UNCHANGED, i + 1))
        for j, (kind, side, flags, px, q, aux0, aux1) in enumerate(batch):
            last = MFLAG_LAST_IN_BATCH if j == len(batch) - 1 else 0
            out.append((0, kind, side, flags | MFLAG_REPLAY | last, 1, ts, ts, px, q, aux0, aux1))
        prev = cur
    recs = np.array(out, dtype=MARKET_DTYPE) if out else np.zeros(0, MARKET_DTYPE)
    meta = {"source": "lobster", "message_file": Path(message_path).name,
            "orderbook_file": Path(orderbook_path).name, "levels": levels,
            "date": name["date"], "midnight_ns": t0, "messages": len(msgs)}
    return recs, meta


def lobster_instrument(ticker: str):
    from shm.instruments import Instrument

    return Instrument(1, ticker, "LOBSTER", 1, TICK_SIZE, Decimal(1), "")


def convert_to_file(message_path, orderbook_path, levels: int, out_path) -> int:
    """Write the record file; returns the number of records."""
    from market.recordfile import RecordFileWriter

    recs, meta = convert(message_path, orderbook_path, levels)
    inst = lobster_instrument(parse_name(message_path)["ticker"])
    with RecordFileWriter(out_path, MARKET_DTYPE, [inst], meta=meta) as w:
        w.append(recs)
    return len(recs)


def book_rows(records: np.ndarray, instrument_id: int, levels: int, px_scale: int = 1,
              max_levels: int | None = None) -> np.ndarray:
    """int64[batches, 4 * levels]: the book after every batch of ``instrument_id`` in LOBSTER's
    order book layout (prices x px_scale; empty levels as LOBSTER's dummy prices, size 0)."""
    from market.book import L2Book, book_rows_after_batches

    book = L2Book(max(1, int(records["instrument_id"].max()) if len(records) else 1),
                  max_levels or levels)
    px, qty, meta = book.arrays
    last = (records["flags"] & MFLAG_LAST_IN_BATCH) != 0
    n_rows = int(np.count_nonzero(last & (records["instrument_id"] == instrument_id)))
    rows = np.zeros((n_rows, 4 * levels), dtype=np.int64)
    book_rows_after_batches(px, qty, meta, records, instrument_id, levels, px_scale, rows,
                            DUMMY_ASK_PX, DUMMY_BID_PX)
    return rows
