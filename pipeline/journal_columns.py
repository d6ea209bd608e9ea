"""Journal records as named, typed columns: the one mapping that the Parquet export
(pipeline/export_parquet.py) and the PostgreSQL sink (pipeline/pgsink.py) share. Cold path.

Prices and quantities stay exact: a column ``price`` is ``px_ticks x tick_size`` of the record's
instrument, carried as an integer *unscaled* value at one decimal scale for the whole column
(the largest number of decimals among the instruments' tick sizes), so no value passes through
binary floating point. Codes become their names (``side`` "buy" / "sell", ``kind``,
``reject_reason``), strategy ids their names where the run knows them.
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np

from shm.records import (EXEC_KIND_NAMES, INTENT_KIND_NAMES, ORDER_TYPE_NAMES, REJECT_NAMES,
                         SIDE_BUY, SIDE_SELL)

SIDE_NAMES = {SIDE_BUY: "buy", SIDE_SELL: "sell", 0: ""}
LIQUIDITY_NAMES = {0: "", 1: "maker", 2: "taker"}


def decimal_scale(sizes) -> int:
    """The number of decimals that every size in ``sizes`` (Decimals) is exact at."""
    return max([0] + [max(0, -Decimal(s).normalize().as_tuple().exponent) for s in sizes])


def unscaled(ticks: np.ndarray, instrument_ids: np.ndarray, size_by_id: dict, scale: int):
    """``ticks x size`` of each row's instrument as integers at ``scale`` decimals (int64;
    object ints if a value would not fit). Rows of an unknown instrument: size 1."""
    mult = {}
    for iid, size in size_by_id.items():
        q = Decimal(size).scaleb(scale)
        if q != q.to_integral_value():
            raise ValueError(f"size {size} is not exact at {scale} decimals")
        mult[int(iid)] = int(q)
    m = np.array([mult.get(int(i), 10 ** scale) for i in instrument_ids], dtype=np.int64) \
        if len(instrument_ids) else np.zeros(0, dtype=np.int64)
    t = np.asarray(ticks, dtype=np.int64)
    if len(t) and (np.abs(t).max() > 0 and
                   float(np.abs(t).max()) * float(m.max()) >= 2.0 ** 62):
        return np.array([int(a) * int(b) for a, b in zip(t, m)], dtype=object)
    return t * m


def _names(codes, table: dict, unknown: str = "") -> np.ndarray:
    lut = {int(k): v for k, v in table.items()}
    return np.array([lut.get(int(c), f"{unknown}{int(c)}") for c in codes], dtype=object)


def _reasons(codes) -> np.ndarray:
    return np.array([REJECT_NAMES.get(int(c), str(int(c))) if c else "" for c in codes],
                    dtype=object)


def instrument_maps(instruments):
    ticks = {i.instrument_id: i.tick_size for i in instruments}
    lots = {i.instrument_id: i.lot_size for i in instruments}
    keys = {i.instrument_id: i.key for i in instruments}
    return ticks, lots, keys


def order_columns(recs: np.ndarray, instruments, strategy_names: dict) -> dict:
    """ORDER_DTYPE records -> {column: array}; decimals as (unscaled ints, scale) tuples."""
    ticks, lots, keys = instrument_maps(instruments)
    ps, qs = decimal_scale(ticks.values()), decimal_scale(lots.values())
    iid = recs["instrument_id"]
    return {
        "ring_seq": recs["ring_seq"].astype(np.int64),
        "send_ts_ns": recs["send_ts_ns"].astype(np.int64),
        "kind": _names(recs["kind"], INTENT_KIND_NAMES),
        "side": _names(recs["side"], SIDE_NAMES),
        "order_type": _names(recs["order_type"], ORDER_TYPE_NAMES),
        "flags": recs["flags"].astype(np.uint8),
        "instrument_id": iid.astype(np.uint32),
        "instrument": _names(iid, keys, "instrument "),
        "strategy_id": recs["strategy_id"].astype(np.uint16),
        "strategy": _names(recs["strategy_id"], strategy_names, "strategy "),
        "client_order_id": recs["client_order_id"].astype(np.int64),
        "px_ticks": recs["px_ticks"].astype(np.int64),
        "price": (unscaled(recs["px_ticks"], iid, ticks, ps), ps),
        "qty_lots": recs["qty_lots"].astype(np.int64),
        "qty": (unscaled(recs["qty_lots"], iid, lots, qs), qs),
        "cause_recv_ts_ns": recs["cause_recv_ts_ns"].astype(np.int64),
        "reject_code": recs["reject_code"].astype(np.uint16),
        "reject_reason": _reasons(recs["reject_code"]),
        "venue_id": recs["venue_id"].astype(np.uint32),
    }


def exec_columns(recs: np.ndarray, instruments, strategy_names: dict) -> dict:
    """EXEC_DTYPE records -> {column: array}; decimals as (unscaled ints, scale) tuples."""
    ticks, lots, keys = instrument_maps(instruments)
    ps, qs = decimal_scale(ticks.values()), decimal_scale(lots.values())
    iid = recs["instrument_id"]
    return {
        "ring_seq": recs["ring_seq"].astype(np.int64),
        "send_ts_ns": recs["send_ts_ns"].astype(np.int64),
        "venue_ts_ns": recs["venue_ts_ns"].astype(np.int64),
        "kind": _names(recs["kind"], EXEC_KIND_NAMES),
        "side": _names(recs["side"], SIDE_NAMES),
        "liquidity": _names(recs["liquidity"], LIQUIDITY_NAMES),
        "flags": recs["flags"].astype(np.uint8),
        "instrument_id": iid.astype(np.uint32),
        "instrument": _names(iid, keys, "instrument "),
        "strategy_id": recs["strategy_id"].astype(np.uint16),
        "strategy": _names(recs["strategy_id"], strategy_names, "strategy "),
        "client_order_id": recs["client_order_id"].astype(np.int64),
        "venue_order_id": recs["venue_order_id"].astype(np.int64),
        "px_ticks": recs["px_ticks"].astype(np.int64),
        "price": (unscaled(recs["px_ticks"], iid, ticks, ps), ps),
        "qty_lots": recs["qty_lots"].astype(np.int64),
        "qty": (unscaled(recs["qty_lots"], iid, lots, qs), qs),
        "leaves_lots": recs["leaves_lots"].astype(np.int64),
        "cum_qty_lots": recs["cum_qty_lots"].astype(np.int64),
        "order_px_ticks": recs["order_px_ticks"].astype(np.int64),
        "order_price": (unscaled(recs["order_px_ticks"], iid, ticks, ps), ps),
        "fee": (recs["fee_e9"].astype(np.int64), 9),
        "cause_recv_ts_ns": recs["cause_recv_ts_ns"].astype(np.int64),
        "reject_code": recs["reject_code"].astype(np.uint16),
        "reject_reason": _reasons(recs["reject_code"]),
        "venue_id": recs["venue_id"].astype(np.uint32),
        "trade_id": recs["trade_id"].astype(np.int64),
    }


def reject_name(code: int) -> str:
    return REJECT_NAMES.get(int(code), str(int(code))) if code else ""
