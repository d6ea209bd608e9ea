"""@njit builders of records from other records. HOT PATH (risk gate, order router, backtest).

One place for "answer this order intent with an execution report", so the live gate, the router
and the backtest's in-process gate produce the same bytes for the same denial.
"""
from __future__ import annotations

from numba import njit

from shm.records import EFLAG_FROM_RISK, EXEC_CANCEL_REJECT, EXEC_REJECT, INTENT_NEW


@njit(cache=True)
def reply_to_order(r, o, kind, flags, reject_code, now):
    """Fill EXEC record ``r`` as the answer of ``kind`` to ORDER intent ``o`` at ``now``."""
    r.kind = kind
    r.side = o.side
    r.liquidity = 0
    r.flags = flags
    r.instrument_id = o.instrument_id
    r.client_order_id = o.client_order_id
    r.venue_order_id = 0
    r.px_ticks = o.px_ticks
    r.qty_lots = o.qty_lots
    r.leaves_lots = 0
    r.cum_qty_lots = 0
    r.venue_ts_ns = now
    r.cause_recv_ts_ns = o.cause_recv_ts_ns
    r.send_ts_ns = now
    r.fee_e9 = 0
    r.strategy_id = o.strategy_id
    r.reject_code = reject_code
    r.venue_id = o.venue_id
    r.order_px_ticks = o.px_ticks
    r.trade_id = 0
    r.reserved = 0


@njit(cache=True)
def deny_order(r, o, reject_code, now):
    """A risk denial: EXEC_REJECT for a new order, EXEC_CANCEL_REJECT for a cancel/replace
    (the order it names keeps resting), flagged as coming from the risk gate."""
    kind = EXEC_REJECT if o.kind == INTENT_NEW else EXEC_CANCEL_REJECT
    reply_to_order(r, o, kind, EFLAG_FROM_RISK, reject_code, now)
