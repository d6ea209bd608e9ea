"""Cross-venue arbitrage: the same asset on two venues; take both legs when one venue's bid
exceeds the other's ask by more than the costs. Runs in a strategy process (live) or the
backtest; the hooks are HOT PATH (@njit, no allocation), the class is cold.

Model (prices in ticks of the common tick size, per lot). For "sell on A, buy on B":

    edge = bid_A - ask_B
    cost = fee_A * bid_A / 1e4 + fee_B * ask_B / 1e4 + 2 * slippage_ticks + threshold_ticks

with fee_* the venues' taker fees in basis points. When edge > cost (strictly), both legs go
out in the same batch as IOC limits at the prices seen (sell A at bid_A, buy B at ask_B), sized
min(bid qty A, ask qty B, max_qty_lots, max_legging_lots). The mirror case is checked too.
Books are used only when valid (complete, neither crossed nor locked), not halted, and not older
than ``max_book_age_ms`` (receive time of their last record against now), so a stale or
one-sided venue never triggers a trade.

Legging risk: if one leg fills and the other does not, the net position pos_A + pos_B is an
open exposure to the asset. While it is non-zero no new arbitrage starts and the exposure is
flattened on whichever usable venue offers the better price (completing the missing leg or
unwinding the filled one; for one asset these are the same trade). Bounded-loss rule: for
``leg_timeout_ms`` the flattening IOC is limited to ``max_leg_loss_ticks`` per lot worse than the
break-even price of the exposure (its signed cost / net lots), and is sent only when the touch
is inside that bound; after the timeout the exposure is cut at the touch minus
``slippage_ticks`` whatever the price (time, not price, then bounds the risk). The size of one
arbitrage is capped by ``max_legging_lots``, the most that can be left legged.

Lawful: only marketable IOC orders, never resting; the two legs are on different venues, so the
strategy cannot trade with itself.

Parameters (``[strategies].params``):
  taker_fee_bps_a, taker_fee_bps_b  taker fees of the first and second instrument's venue in
                       basis points (set them to the venues' ``taker_fee_bps``)
  slippage_ticks       expected slippage per leg, added to the cost twice; also how far
                       through the touch a timed-out unwind reaches
  threshold_ticks      edge per lot required beyond fees and slippage
  max_qty_lots         largest arbitrage per leg
  max_legging_lots     most lots that can be left legged: caps one arbitrage
  max_leg_loss_ticks   loss bound per lot while flattening before the timeout
  leg_timeout_ms       how long a legged exposure may wait for a price inside the bound
  max_book_age_ms      a book whose last record is older is not used (0 = no age limit)
  min_interval_ms      minimum time between two arbitrage or hedge attempts, and the back-off
                       after a reject (a persisting dislocation must not fire an IOC pair
                       every millisecond into the gate's order-rate limit)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import (META_HALTED, META_RECV_TS, best_ask_px, best_ask_qty, best_bid_px,
                         best_bid_qty, is_valid)
from shm.records import ORD_IOC, SIDE_BUY, SIDE_SELL
from strategies.base import Strategy, open_count, place, rejects


@dataclass(frozen=True)
class CrossVenueArbParams:
    taker_fee_bps_a: float = opt(2.0, "taker fee of the first instrument's venue, bps of "
                                 "notional (match [[venues]].taker_fee_bps)", ge=-100, le=100)
    taker_fee_bps_b: float = opt(2.5, "taker fee of the second instrument's venue, bps", ge=-100,
                                 le=100)
    slippage_ticks: float = opt(0.0, "expected slippage per leg, ticks (added to the cost; "
                                "also how far through the touch a timed-out unwind goes)", ge=0)
    threshold_ticks: float = opt(1.0, "extra edge per lot required beyond fees and slippage",
                                 ge=0)
    max_qty_lots: int = opt(10, "largest arbitrage, lots per leg", gt=0)
    max_legging_lots: int = opt(10, "most lots that may be left unhedged; caps one arbitrage",
                                gt=0)
    max_leg_loss_ticks: float = opt(50.0, "bound on the loss per lot when flattening a legged "
                                    "exposure before leg_timeout_ms", ge=0)
    leg_timeout_ms: float = opt(200.0, "after this long legged, flatten at the touch", ge=0)
    max_book_age_ms: float = opt(500.0, "ignore a book whose last record is older; 0 = off",
                                 ge=0)
    min_interval_ms: float = opt(20.0, "at least this long between two arbitrage or hedge "
                                 "attempts, and after a reject", ge=0)


STATE_FIELDS = [
    ("edge", "f8"), ("cost", "f8"),            # the last opportunity priced (ticks per lot)
    ("n_arbs", "f8"), ("n_hedges", "f8"), ("n_unwinds", "f8"), ("breakeven", "f8"),
    ("leg_start_ns", "i8"),                    # when the current legged exposure began
    ("last_arb_ns", "i8"),                     # last arbitrage / hedge attempt (or reject)
    ("rejects_seen", "i8"),                    # the runtime's reject count at the last call
]


@njit(cache=True)
def usable(px, meta, inst, now_ns, max_age_ns):
    """Valid, not halted and fresh enough to trade against."""
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        return False
    if max_age_ns > 0.0 and now_ns - meta[inst, META_RECV_TS] > max_age_ns:
        return False
    return best_bid_px(px, meta, inst) > 0 and best_ask_px(px, meta, inst) > 0


@njit(cache=True)
def arb_cost(p, sell_px, buy_px):
    return (p.taker_fee_bps_a * sell_px + p.taker_fee_bps_b * buy_px) / 1e4


@njit(cache=True)
def _flatten(ctx, st, p, ok_a, ok_b, net, now_ns):
    """Bring a legged exposure back to flat (module docstring); True if an order went out."""
    px, meta = ctx.px, ctx.meta
    cost = ctx.pos[0].cost + ctx.pos[1].cost
    breakeven = cost / net
    st.breakeven = breakeven
    timed_out = now_ns - st.leg_start_ns >= p.leg_timeout_ns
    slip = np.int64(math.ceil(p.slippage_ticks))
    ia = ctx.inst[0]
    ib = ctx.inst[1]
    coid = np.int64(0)
    if net > 0:   # long the asset: sell on the venue with the higher bid
        pa = best_bid_px(px, meta, ia) if ok_a else 0
        pb = best_bid_px(px, meta, ib) if ok_b else 0
        i = 0 if pa >= pb else 1
        q = pa if i == 0 else pb
        if q <= 0:
            return False
        floor_px = np.int64(math.ceil(breakeven - p.max_leg_loss_ticks))
        if timed_out:
            coid = place(ctx, i, SIDE_SELL, ORD_IOC, max(q - slip, 1), np.int64(net), now_ns)
            st.n_unwinds += 1
        elif q >= floor_px:
            coid = place(ctx, i, SIDE_SELL, ORD_IOC, floor_px, np.int64(net), now_ns)
            st.n_hedges += 1
    else:         # short the asset: buy on the venue with the lower ask
        pa = best_ask_px(px, meta, ia) if ok_a else 0
        pb = best_ask_px(px, meta, ib) if ok_b else 0
        if pa <= 0 and pb <= 0:
            return False
        i = 0 if (pb <= 0 or (pa > 0 and pa <= pb)) else 1
        q = pa if i == 0 else pb
        cap_px = np.int64(math.floor(breakeven + p.max_leg_loss_ticks))
        if timed_out:
            coid = place(ctx, i, SIDE_BUY, ORD_IOC, q + slip, np.int64(-net), now_ns)
            st.n_unwinds += 1
        elif q <= cap_px:
            coid = place(ctx, i, SIDE_BUY, ORD_IOC, cap_px, np.int64(-net), now_ns)
            st.n_hedges += 1
    return coid != 0


@njit(cache=True)
def arb_step(ctx, st, p, now_ns):
    """Flatten a legged exposure, or take both legs of a priced dislocation."""
    if rejects(ctx) != st.rejects_seen:
        st.rejects_seen = rejects(ctx)
        st.last_arb_ns = now_ns   # denied (e.g. a rate limit): back off, do not hammer
    if open_count(ctx) > 0:
        return   # IOC legs still in flight: act on their outcome, not before
    if st.last_arb_ns != 0 and now_ns - st.last_arb_ns < p.min_interval_ns:
        return   # at most one arbitrage or hedge attempt per min_interval_ms
    px, qty, meta = ctx.px, ctx.qty, ctx.meta
    ia = ctx.inst[0]
    ib = ctx.inst[1]
    ok_a = usable(px, meta, ia, now_ns, p.max_age_ns)
    ok_b = usable(px, meta, ib, now_ns, p.max_age_ns)
    net = ctx.pos[0].pos + ctx.pos[1].pos
    if net != 0.0:
        if st.leg_start_ns == 0:
            st.leg_start_ns = now_ns
        if _flatten(ctx, st, p, ok_a, ok_b, net, now_ns):
            st.last_arb_ns = now_ns
        return
    st.leg_start_ns = 0
    if not (ok_a and ok_b):
        return
    bid_a = best_bid_px(px, meta, ia)
    ask_a = best_ask_px(px, meta, ia)
    bid_b = best_bid_px(px, meta, ib)
    ask_b = best_ask_px(px, meta, ib)
    fixed = 2.0 * p.slippage_ticks + p.threshold_ticks
    cap = min(np.int64(p.max_qty_lots), np.int64(p.max_legging_lots))
    # sell A / buy B
    edge = bid_a - ask_b
    cost = arb_cost(p, bid_a, ask_b) + fixed
    sell_i = 0
    if not edge > cost:
        # buy A / sell B: the fee of each venue applies to its own leg
        edge = bid_b - ask_a
        cost = (p.taker_fee_bps_b * bid_b + p.taker_fee_bps_a * ask_a) / 1e4 + fixed
        sell_i = 1
    st.edge = edge
    st.cost = cost
    if not edge > cost:
        return
    if sell_i == 0:
        q = min(best_bid_qty(qty, meta, ia), best_ask_qty(qty, meta, ib), cap)
        sell_px, buy_px = bid_a, ask_b
    else:
        q = min(best_bid_qty(qty, meta, ib), best_ask_qty(qty, meta, ia), cap)
        sell_px, buy_px = bid_b, ask_a
    if q <= 0 or ctx.rt[0].n_out + 2 > ctx.out.shape[0]:
        return
    place(ctx, sell_i, SIDE_SELL, ORD_IOC, sell_px, q, now_ns)
    place(ctx, 1 - sell_i, SIDE_BUY, ORD_IOC, buy_px, q, now_ns)
    st.last_arb_ns = now_ns
    st.n_arbs += 1


@njit(cache=True)
def arb_on_market(ctx, st, p, md, n_md, now_ns):
    arb_step(ctx, st, p, now_ns)


@njit(cache=True)
def arb_on_exec(ctx, st, p, ex, n_ex, now_ns):
    arb_step(ctx, st, p, now_ns)   # a missing leg is hedged as soon as the other one filled


@njit(cache=True)
def arb_on_timer(ctx, st, p, now_ns):
    arb_step(ctx, st, p, now_ns)   # the leg timeout runs on time, not on market data


class CrossVenueArb(Strategy):
    """Two-venue arbitrage of one asset: instruments[0] on venue A, instruments[1] on venue B."""

    kind = "cross_venue_arb"
    Params = CrossVenueArbParams
    n_instruments = 2
    on_market = staticmethod(arb_on_market)
    on_exec = staticmethod(arb_on_exec)
    on_timer = staticmethod(arb_on_timer)

    def check_instruments(self) -> None:
        a, b = self.instruments
        if a.venue == b.venue:
            raise ValueError(f"cross_venue_arb: {a.key} and {b.key} are on the same venue")
        if a.tick_size != b.tick_size or a.lot_size != b.lot_size:
            raise ValueError(f"cross_venue_arb: {a.key} (tick {a.tick_size}, lot {a.lot_size}) "
                             f"and {b.key} (tick {b.tick_size}, lot {b.lot_size}) must share "
                             "tick and lot size: the edge is computed in common ticks and lots")
        if a.group and b.group and a.group != b.group:
            raise ValueError(f"cross_venue_arb: {a.key} (group {a.group}) and {b.key} (group "
                             f"{b.group}) are different assets")

    def state_fields(self):
        return STATE_FIELDS

    def derive(self) -> dict:
        p = self.params
        return {"leg_timeout_ns": p.leg_timeout_ms * 1e6, "max_age_ns": p.max_book_age_ms * 1e6,
                "min_interval_ns": p.min_interval_ms * 1e6}
