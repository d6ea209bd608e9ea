"""Hand-built MARKET_DTYPE / EXEC_DTYPE records for scripted strategy and risk scenarios.

Test helper only (not collected: no test_ prefix). Every builder returns a fresh numpy array.
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np

from shm.instruments import Instrument
from shm.records import (
    EXEC_ACK, EXEC_DTYPE, EXEC_EXPIRED, EXEC_FILL, LIQ_TAKER, MARKET_DTYPE, MSG_LEVEL,
    MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS, MSG_TOP, MSG_TRADE, SIDE_BUY, SIDE_SELL,
    STATUS_BOOK_INVALID,
)


def instrument(iid: int, venue_id: int = 1, symbol: str = "BTC-USD", tick: str = "0.01",
               lot: str = "0.0001", group: str = "BTC") -> Instrument:
    return Instrument(iid, symbol, f"sim{venue_id}", venue_id, Decimal(tick), Decimal(lot), group)


def market(n: int) -> np.ndarray:
    return np.zeros(n, dtype=MARKET_DTYPE)


def snapshot(inst: int, bids, asks, ts: int = 1) -> np.ndarray:
    """SNAP_START, one LEVEL per (px, qty), SNAP_END: leaves a valid book."""
    out = market(2 + len(bids) + len(asks))
    out["instrument_id"] = inst
    out["recv_ts_ns"] = ts
    out["exch_ts_ns"] = ts
    out[0]["kind"] = MSG_SNAP_START
    for n, (side, (p, q)) in enumerate([(SIDE_BUY, b) for b in bids] +
                                       [(SIDE_SELL, a) for a in asks]):
        r = out[1 + n]
        r["kind"], r["side"], r["px_ticks"], r["qty_lots"] = MSG_LEVEL, side, p, q
    out[-1]["kind"] = MSG_SNAP_END
    return out


def top(inst: int, bid: int, bid_qty: int, ask: int, ask_qty: int, ts: int) -> np.ndarray:
    out = market(1)
    r = out[0]
    r["kind"], r["instrument_id"], r["recv_ts_ns"], r["exch_ts_ns"] = MSG_TOP, inst, ts, ts
    r["px_ticks"], r["qty_lots"], r["aux0"], r["aux1"] = bid, bid_qty, ask, ask_qty
    return out


def level(inst: int, side: int, p: int, q: int, ts: int) -> np.ndarray:
    out = market(1)
    r = out[0]
    r["kind"], r["instrument_id"], r["side"], r["recv_ts_ns"] = MSG_LEVEL, inst, side, ts
    r["px_ticks"], r["qty_lots"], r["exch_ts_ns"] = p, q, ts
    return out


def trade(inst: int, p: int, q: int, aggressor: int, ts: int) -> np.ndarray:
    out = market(1)
    r = out[0]
    r["kind"], r["instrument_id"], r["side"], r["recv_ts_ns"] = MSG_TRADE, inst, aggressor, ts
    r["px_ticks"], r["qty_lots"], r["exch_ts_ns"] = p, q, ts
    return out


def invalidate(inst: int, ts: int) -> np.ndarray:
    out = market(1)
    r = out[0]
    r["kind"], r["instrument_id"], r["aux0"], r["recv_ts_ns"] = MSG_STATUS, inst, \
        STATUS_BOOK_INVALID, ts
    return out


def execs(*reports) -> np.ndarray:
    return np.concatenate(reports) if reports else np.zeros(0, dtype=EXEC_DTYPE)


def report(intent, kind: int, qty: int = 0, px: int | None = None, leaves: int = 0,
           fee_e9: int = 0, ts: int = 0) -> np.ndarray:
    """An execution report answering ``intent`` (one ORDER_DTYPE record)."""
    out = np.zeros(1, dtype=EXEC_DTYPE)
    r = out[0]
    r["kind"] = kind
    r["side"] = intent["side"]
    r["instrument_id"] = intent["instrument_id"]
    r["client_order_id"] = intent["client_order_id"]
    r["strategy_id"] = intent["strategy_id"]
    r["venue_id"] = intent["venue_id"]
    r["px_ticks"] = intent["px_ticks"] if px is None else px
    r["order_px_ticks"] = intent["px_ticks"]
    r["qty_lots"] = qty or intent["qty_lots"]
    r["leaves_lots"] = leaves
    r["fee_e9"] = fee_e9
    r["venue_ts_ns"] = ts
    if kind in (EXEC_FILL,):
        r["liquidity"] = LIQ_TAKER
    return out


def ack(intent, ts: int = 0) -> np.ndarray:
    return report(intent, EXEC_ACK, leaves=int(intent["qty_lots"]), ts=ts)


def fill(intent, qty: int | None = None, px: int | None = None, ts: int = 0) -> np.ndarray:
    return report(intent, EXEC_FILL, qty=qty or int(intent["qty_lots"]), px=px, ts=ts)


def expired(intent, ts: int = 0) -> np.ndarray:
    return report(intent, EXEC_EXPIRED, ts=ts)
