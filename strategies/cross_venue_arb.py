"""Cross-venue arbitrage: the same asset on two venues; take both legs when one venue's bid
exceeds the other's ask by more than the costs. Runs in a strategy process (live) or the
backtest; ``arb_kernel`` is HOT PATH (@njit, no allocation), the class is cold.

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
from strategies.base import (
    CTL_REJECTS, PS_COST, PS_POS, Strategy, inst_id, make_ctl, make_orders, make_positions,
    open_count, send_new,
)


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


F_FEE_A, F_FEE_B, F_SLIP, F_THRESH, F_MAX_QTY, F_MAX_LEG, F_LEG_LOSS, F_LEG_TIMEOUT_NS = range(8)
F_MAX_AGE_NS, F_MIN_INTERVAL_NS = 8, 9
F_WORDS = 10
E_EDGE, E_COST, E_N_ARBS, E_N_HEDGES, E_N_UNWINDS, E_BREAKEVEN = range(6)
E_WORDS = 6
I_LEG_START_NS, I_LAST_ARB_NS, I_REJECTS_SEEN = 0, 1, 2   # REJECTS_SEEN: ctl[CTL_REJECTS]
I_WORDS = 3                                               # at the last call


@njit(cache=True)
def usable(px, meta, inst, now_ns, max_age_ns):
    """Valid, not halted and fresh enough to trade against."""
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        return False
    if max_age_ns > 0.0 and now_ns - meta[inst, META_RECV_TS] > max_age_ns:
        return False
    return best_bid_px(px, meta, inst) > 0 and best_ask_px(px, meta, inst) > 0


@njit(cache=True)
def arb_cost(fp, sell_px, buy_px):
    return (fp[F_FEE_A] * sell_px + fp[F_FEE_B] * buy_px) / 1e4


@njit(cache=True)
def _flatten(out, k, ctl, orders, pos, fp, est, iw, px, meta, ok_a, ok_b, net, now_ns):
    cost = pos[0, PS_COST] + pos[1, PS_COST]
    breakeven = cost / net
    est[E_BREAKEVEN] = breakeven
    timed_out = now_ns - iw[I_LEG_START_NS] >= fp[F_LEG_TIMEOUT_NS]
    slip = np.int64(math.ceil(fp[F_SLIP]))
    ia = inst_id(ctl, 0)
    ib = inst_id(ctl, 1)
    if net > 0:   # long the asset: sell on the venue with the higher bid
        pa = best_bid_px(px, meta, ia) if ok_a else 0
        pb = best_bid_px(px, meta, ib) if ok_b else 0
        i = 0 if pa >= pb else 1
        p = pa if i == 0 else pb
        if p <= 0:
            return k
        floor_px = np.int64(math.ceil(breakeven - fp[F_LEG_LOSS]))
        if timed_out:
            k, s = send_new(out, k, ctl, orders, i, SIDE_SELL, ORD_IOC, max(p - slip, 1),
                            np.int64(net), now_ns)
            est[E_N_UNWINDS] += 1
        elif p >= floor_px:
            k, s = send_new(out, k, ctl, orders, i, SIDE_SELL, ORD_IOC, floor_px, np.int64(net),
                            now_ns)
            est[E_N_HEDGES] += 1
    else:         # short the asset: buy on the venue with the lower ask
        pa = best_ask_px(px, meta, ia) if ok_a else 0
        pb = best_ask_px(px, meta, ib) if ok_b else 0
        if pa <= 0 and pb <= 0:
            return k
        i = 0 if (pb <= 0 or (pa > 0 and pa <= pb)) else 1
        p = pa if i == 0 else pb
        cap_px = np.int64(math.floor(breakeven + fp[F_LEG_LOSS]))
        if timed_out:
            k, s = send_new(out, k, ctl, orders, i, SIDE_BUY, ORD_IOC, p + slip, np.int64(-net),
                            now_ns)
            est[E_N_UNWINDS] += 1
        elif p <= cap_px:
            k, s = send_new(out, k, ctl, orders, i, SIDE_BUY, ORD_IOC, cap_px, np.int64(-net),
                            now_ns)
            est[E_N_HEDGES] += 1
    return k


@njit(cache=True)
def arb_kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out):
    ctl, orders, pos, fp, est, iw = state
    # the runtime has applied md to the books and ex to orders / positions (strategies/host.py)
    if ctl[CTL_REJECTS] != iw[I_REJECTS_SEEN]:
        iw[I_REJECTS_SEEN] = ctl[CTL_REJECTS]
        iw[I_LAST_ARB_NS] = now_ns   # denied (e.g. a rate limit): back off, do not hammer
    k = 0
    if open_count(orders) > 0:
        return k   # IOC legs still in flight: act on their outcome, not before
    if iw[I_LAST_ARB_NS] != 0 and now_ns - iw[I_LAST_ARB_NS] < fp[F_MIN_INTERVAL_NS]:
        return k   # at most one arbitrage or hedge attempt per min_interval_ms
    ia = inst_id(ctl, 0)
    ib = inst_id(ctl, 1)
    ok_a = usable(px, meta, ia, now_ns, fp[F_MAX_AGE_NS])
    ok_b = usable(px, meta, ib, now_ns, fp[F_MAX_AGE_NS])
    net = pos[0, PS_POS] + pos[1, PS_POS]
    if net != 0.0:
        if iw[I_LEG_START_NS] == 0:
            iw[I_LEG_START_NS] = now_ns
        k = _flatten(out, k, ctl, orders, pos, fp, est, iw, px, meta, ok_a, ok_b, net, now_ns)
        if k > 0:
            iw[I_LAST_ARB_NS] = now_ns
        return k
    iw[I_LEG_START_NS] = 0
    if not (ok_a and ok_b):
        return k
    bid_a = best_bid_px(px, meta, ia)
    ask_a = best_ask_px(px, meta, ia)
    bid_b = best_bid_px(px, meta, ib)
    ask_b = best_ask_px(px, meta, ib)
    fixed = 2.0 * fp[F_SLIP] + fp[F_THRESH]
    cap = min(np.int64(fp[F_MAX_QTY]), np.int64(fp[F_MAX_LEG]))
    # sell A / buy B
    edge = bid_a - ask_b
    cost = arb_cost(fp, bid_a, ask_b) + fixed
    sell_i = 0
    if not edge > cost:
        # buy A / sell B: the fee of each venue applies to its own leg
        edge = bid_b - ask_a
        cost = (fp[F_FEE_B] * bid_b + fp[F_FEE_A] * ask_a) / 1e4 + fixed
        sell_i = 1
    est[E_EDGE] = edge
    est[E_COST] = cost
    if not edge > cost:
        return k
    if sell_i == 0:
        q = min(best_bid_qty(qty, meta, ia), best_ask_qty(qty, meta, ib), cap)
        sell_px, buy_px = bid_a, ask_b
    else:
        q = min(best_bid_qty(qty, meta, ib), best_ask_qty(qty, meta, ia), cap)
        sell_px, buy_px = bid_b, ask_a
    if q <= 0 or k + 2 > out.shape[0]:
        return k
    k, s = send_new(out, k, ctl, orders, sell_i, SIDE_SELL, ORD_IOC, sell_px, q, now_ns)
    k, s = send_new(out, k, ctl, orders, 1 - sell_i, SIDE_BUY, ORD_IOC, buy_px, q, now_ns)
    iw[I_LAST_ARB_NS] = now_ns
    est[E_N_ARBS] += 1
    return k


class CrossVenueArb(Strategy):
    """Two-venue arbitrage of one asset: instruments[0] on venue A, instruments[1] on venue B."""

    kind = "cross_venue_arb"
    Params = CrossVenueArbParams
    n_instruments = 2
    kernel = staticmethod(arb_kernel)

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

    def make_state(self) -> tuple:
        p = self.params
        fp = np.zeros(F_WORDS, dtype=np.float64)
        fp[F_FEE_A] = p.taker_fee_bps_a
        fp[F_FEE_B] = p.taker_fee_bps_b
        fp[F_SLIP] = p.slippage_ticks
        fp[F_THRESH] = p.threshold_ticks
        fp[F_MAX_QTY] = p.max_qty_lots
        fp[F_MAX_LEG] = p.max_legging_lots
        fp[F_LEG_LOSS] = p.max_leg_loss_ticks
        fp[F_LEG_TIMEOUT_NS] = p.leg_timeout_ms * 1e6
        fp[F_MAX_AGE_NS] = p.max_book_age_ms * 1e6
        fp[F_MIN_INTERVAL_NS] = p.min_interval_ms * 1e6
        ctl = make_ctl(self.strategy_id, self.instruments)
        return (ctl, make_orders(8), make_positions(2), fp, np.zeros(E_WORDS, dtype=np.float64),
                np.zeros(I_WORDS, dtype=np.int64))
