"""Order helpers shared by the single-instrument catalogue strategies (order_book_imbalance,
mean_reversion, volatility_trading, scalping, momentum_burst). HOT PATH: called from @njit
hooks, no allocation. Not a strategy kind (the leading underscore keeps the registry off it).

Each helper answers one question the five strategies would otherwise each write out: is this
book usable for pricing, what does a taker pay here (bps), and "trade towards this target
position with one marketable IOC". Prices are integer ticks, sizes lots, times ns.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid
from shm.records import ORD_IOC, SIDE_BUY, SIDE_SELL
from strategies.base import last_reject_ns, open_on, place, position


@njit(cache=True)
def book_usable(ctx, i):
    """True when local instrument i's book has a price (valid: complete, two-sided, bid < ask)
    and the venue has not halted it. Nothing is priced from, or sent into, any other book."""
    inst = ctx.inst[i]
    return is_valid(ctx.px, ctx.meta, inst) and ctx.meta[inst, META_HALTED] == 0


@njit(cache=True)
def taker_cost_bps(ctx, i, fee_bps):
    """What one marketable order costs against the mid, in bps of the mid: the taker fee plus
    half the quoted spread. Call only on a usable book."""
    inst = ctx.inst[i]
    bid = best_bid_px(ctx.px, ctx.meta, inst)
    ask = best_ask_px(ctx.px, ctx.meta, inst)
    return fee_bps + (ask - bid) / float(ask + bid) * 1e4


@njit(cache=True)
def backoff_over(ctx, backoff_ns, now_ns):
    """False for ``backoff_ns`` after the latest reject or risk denial: a denied order is not
    retried in a tight loop (it would hammer the gate)."""
    last = last_reject_ns(ctx)
    return last == 0 or now_ns - last >= backoff_ns


@njit(cache=True)
def take_to_target(ctx, i, target_lots, slippage_ticks, now_ns):
    """One IOC limit ``slippage_ticks`` through the touch for the difference between
    ``target_lots`` and the position; nothing while an order of instrument i is still open
    (one request in flight at a time) or the book is not usable. An IOC cannot rest, so it can
    neither be left in the book to be cancelled nor meet a resting order of ours. Returns the
    client order id sent, 0 if none."""
    diff = np.int64(target_lots) - position(ctx, i)
    if diff == 0 or open_on(ctx, i) or not book_usable(ctx, i):
        return np.int64(0)
    inst = ctx.inst[i]
    if diff > 0:
        ask = best_ask_px(ctx.px, ctx.meta, inst)
        return place(ctx, i, SIDE_BUY, ORD_IOC, ask + slippage_ticks, diff, now_ns)
    bid = best_bid_px(ctx.px, ctx.meta, inst)
    if bid - slippage_ticks <= 0:
        return np.int64(0)
    return place(ctx, i, SIDE_SELL, ORD_IOC, bid - slippage_ticks, -diff, now_ns)
