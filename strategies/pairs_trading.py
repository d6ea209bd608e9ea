"""Pairs trading on two instruments: rolling-OLS hedge ratio of log prices and a z-score rule.
Runs in a strategy process (live) or the backtest; ``pairs_kernel`` and its helpers are HOT PATH
(@njit, no allocation), the class is cold.

Model. Every ``sample_ms`` the log mids y = ln(P_Y) (first instrument) and x = ln(P_X) (second)
are sampled when both books are valid (complete, two-sided, bid < ask: market/book.py); a due
sample with a leg that has no price waits for the next call (counted in ``E_N_NO_PRICE``). Over the previous ``window`` samples an ordinary least
squares fit y = a + b x gives the hedge ratio b and the residual standard deviation sd; the
current sample's out-of-sample residual e = y - a - b x gives the z-score z = e / sd. (Fitting on
the previous samples only keeps today's price from pulling the fit towards itself; the sums are
recomputed from the ring buffer every sample, so no running-sum drift builds up.)

Rule, with dir = +1 long the spread (long Y, short X) and -1 short the spread:
- flat and z >= entry_z  -> dir = -1 (Y rich): sell Y, buy X;
  flat and z <= -entry_z -> dir = +1;
- dir = -1 exits when z <= exit_z, dir = +1 when z >= -exit_z (so |z| <= exit_z always exits);
- dir = -1 stops out when z >= stop_z, dir = +1 when z <= -stop_z; after a stop no entry for
  ``cooldown_ms``.
Sizes: the Y leg is ``notional`` (quote currency) / (P_Y * lot_Y) lots; since b is an elasticity
of log prices, the X leg hedges b * notional of X: b * notional / (P_X * lot_X) lots. Entries
need b > 0 (a negative hedge ratio is not a pair).

Orders: both legs go out together as IOC limits ``slippage_ticks`` through the touch (or market
orders with ``order_type = "market"``). The kernel trades towards its target position per leg,
so a partially filled leg is topped up on the next call; a leg with a request in flight waits.
After a reject or risk denial nothing is sent for ``reject_backoff_ms`` (a denied leg retried at
once would hammer the gate, and in a backtest would never let simulated time move on).
No resting orders: nothing to spoof, layer or self-cross.

Restart: the runtime restores positions and open orders from the journal, not the model (its
window, z and direction start empty), so a restarted instance trades any inherited legs back
to flat (target 0) and then waits for a full window again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid, valid_mid_x2
from shm.records import ORD_IOC, ORD_MARKET, SIDE_BUY, SIDE_SELL
from strategies.base import (
    CTL_LAST_REJECT_NS, OS_INST, OS_STATE, OST_FREE, PS_POS, Strategy, inst_id, make_ctl,
    make_orders, make_positions, send_new,
)


@dataclass(frozen=True)
class PairsTradingParams:
    window: int = opt(300, "samples in the rolling OLS fit of log prices", ge=10,
                      le=1_000_000)   # two float64 arrays of window + 1; a fit is O(window)
    sample_ms: float = opt(100.0, "sampling interval of the two mids, milliseconds", gt=0)
    entry_z: float = opt(2.0, "enter when |z| >= entry_z", gt=0)
    exit_z: float = opt(0.5, "leave when the spread is back to |z| <= exit_z", ge=0)
    stop_z: float = opt(4.0, "stop out when |z| >= stop_z against the position", gt=0)
    notional: float = opt(10_000.0, "quote-currency notional of the Y (first) leg per entry",
                          gt=0)
    slippage_ticks: int = opt(2, "IOC limit this many ticks through the touch", ge=0)
    order_type: str = opt("ioc", "ioc (marketable limit) or market", choices=("ioc", "market"))
    cooldown_ms: float = opt(5_000.0, "no new entry this long after a stop", ge=0)
    reject_backoff_ms: float = opt(1_000.0, "send nothing this long after a reject or risk "
                                   "denial (a denied leg is not retried in a tight loop)", ge=0)

    def validate(self):
        if not self.exit_z < self.entry_z < self.stop_z:
            yield (f"need exit_z < entry_z < stop_z, got exit_z = {self.exit_z}, "
                   f"entry_z = {self.entry_z}, stop_z = {self.stop_z}")


F_WINDOW, F_SAMPLE_NS, F_ENTRY, F_EXIT, F_STOP, F_NOTIONAL, F_SLIP, F_COOLDOWN_NS = range(8)
F_TICK_Y, F_TICK_X, F_LOT_Y, F_LOT_X, F_MARKET, F_REJECT_BACKOFF_NS = range(8, 14)
F_WORDS = 14
# est: float64 model state (read by tests and reports)
E_NEXT_SAMPLE_NS, E_N_SAMPLES, E_BETA, E_ALPHA, E_SD, E_Z, E_RESID, E_COOLDOWN_UNTIL = range(8)
E_TARGET_Y, E_TARGET_X, E_DIR, E_N_ENTRIES, E_N_STOPS = range(8, 13)
E_N_NO_PRICE = 13   # calls with a sample due while a leg had no price (invalid / one-sided book)
E_WORDS = 14


@njit(cache=True)
def rolling_fit(xs, ys, n_filled, head, window):
    """OLS of y on x over the last ``window`` samples before ``head`` of the ring buffers.

    Returns (beta, alpha, residual sd); sd = 0 when x does not vary."""
    m = window if n_filled >= window else n_filled
    cap = xs.shape[0]
    sx = 0.0
    sy = 0.0
    for j in range(m):
        p = (head - 1 - j) % cap
        sx += xs[p]
        sy += ys[p]
    mx = sx / m
    my = sy / m
    sxx = 0.0
    sxy = 0.0
    for j in range(m):
        p = (head - 1 - j) % cap
        sxx += (xs[p] - mx) * (xs[p] - mx)
        sxy += (xs[p] - mx) * (ys[p] - my)
    if sxx <= 0.0:
        return 0.0, my, 0.0
    beta = sxy / sxx
    alpha = my - beta * mx
    ss = 0.0
    for j in range(m):
        p = (head - 1 - j) % cap
        e = ys[p] - alpha - beta * xs[p]
        ss += e * e
    return beta, alpha, math.sqrt(ss / m)


@njit(cache=True)
def _leg_pending(orders, i):
    for s in range(orders.shape[0]):
        if orders[s, OS_STATE] != OST_FREE and orders[s, OS_INST] == i:
            return True
    return False


@njit(cache=True)
def _trade_leg(out, k, ctl, orders, pos, fp, px, meta, i, target, now_ns):
    inst = inst_id(ctl, i)
    diff = np.int64(target - pos[i, PS_POS])
    if diff == 0 or _leg_pending(orders, i):
        return k
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        return k   # no orders into an invalid, crossed or halted book
    market = fp[F_MARKET] != 0.0
    slip = np.int64(fp[F_SLIP])
    if diff > 0:
        p = best_ask_px(px, meta, inst)
        if p <= 0:
            return k
        k, s = send_new(out, k, ctl, orders, i, SIDE_BUY, ORD_MARKET if market else ORD_IOC,
                        0 if market else p + slip, diff, now_ns)
    else:
        p = best_bid_px(px, meta, inst)
        if p <= 0 or (not market and p - slip <= 0):
            return k
        k, s = send_new(out, k, ctl, orders, i, SIDE_SELL, ORD_MARKET if market else ORD_IOC,
                        0 if market else p - slip, -diff, now_ns)
    return k


@njit(cache=True)
def pairs_sample(fp, est, xs, ys, y_log, x_log, now_ns):
    """Push one sample; update beta, sd and z (z = 0 until ``window`` earlier samples exist).
    Returns True when z is meaningful."""
    cap = xs.shape[0]
    n = np.int64(est[E_N_SAMPLES])
    window = np.int64(fp[F_WINDOW])
    head = n % cap
    ready = False
    if n >= window:
        beta, alpha, sd = rolling_fit(xs, ys, n, head, window)
        est[E_BETA] = beta
        est[E_ALPHA] = alpha
        est[E_SD] = sd
        if sd > 0.0:
            est[E_RESID] = y_log - alpha - beta * x_log
            est[E_Z] = est[E_RESID] / sd
            ready = True
    xs[head] = x_log
    ys[head] = y_log
    est[E_N_SAMPLES] = n + 1
    return ready


@njit(cache=True)
def pairs_rule(fp, est, price_y, price_x, now_ns):
    """Entry / exit / stop on the z-score just sampled (prices > 0, quote currency)."""
    z = est[E_Z]
    d = est[E_DIR]
    if d == 0.0:
        if now_ns >= est[E_COOLDOWN_UNTIL] and est[E_BETA] > 0.0:
            nd = 0.0
            if z >= fp[F_ENTRY]:
                nd = -1.0
            elif z <= -fp[F_ENTRY]:
                nd = 1.0
            if nd != 0.0:
                qy = math.floor(fp[F_NOTIONAL] / (price_y * fp[F_LOT_Y]) + 0.5)
                qx = math.floor(est[E_BETA] * fp[F_NOTIONAL] / (price_x * fp[F_LOT_X]) + 0.5)
                if qy > 0 and qx > 0:
                    est[E_DIR] = nd
                    est[E_TARGET_Y] = nd * qy
                    est[E_TARGET_X] = -nd * qx
                    est[E_N_ENTRIES] += 1
    else:
        stop = (d < 0 and z >= fp[F_STOP]) or (d > 0 and z <= -fp[F_STOP])
        done = (d < 0 and z <= fp[F_EXIT]) or (d > 0 and z >= -fp[F_EXIT])
        if stop or done:
            est[E_DIR] = 0.0
            est[E_TARGET_Y] = 0.0
            est[E_TARGET_X] = 0.0
        if stop:
            est[E_COOLDOWN_UNTIL] = now_ns + fp[F_COOLDOWN_NS]
            est[E_N_STOPS] += 1


@njit(cache=True)
def pairs_kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out):
    ctl, orders, pos, fp, est, xs, ys = state
    # the runtime has applied md to the books and ex to orders / positions (strategies/host.py)
    iy = inst_id(ctl, 0)
    ix = inst_id(ctl, 1)
    k = 0
    if est[E_NEXT_SAMPLE_NS] == 0.0 or now_ns >= est[E_NEXT_SAMPLE_NS]:
        # A mid only from a valid book (complete, two-sided, bid < ask): an empty, one-sided,
        # crossed or locked leg has no price, so no sample (a zero mid would be log(0) and a
        # division by zero when sizing the legs).
        my2 = valid_mid_x2(px, meta, iy)
        mx2 = valid_mid_x2(px, meta, ix)
        if my2 <= 0 or mx2 <= 0:
            est[E_N_NO_PRICE] += 1
        else:
            if est[E_NEXT_SAMPLE_NS] == 0.0:
                est[E_NEXT_SAMPLE_NS] = now_ns
            # one sample per call however long the gap; the sampling grid stays aligned
            skipped = math.floor((now_ns - est[E_NEXT_SAMPLE_NS]) / fp[F_SAMPLE_NS]) + 1.0
            est[E_NEXT_SAMPLE_NS] += skipped * fp[F_SAMPLE_NS]
            price_y = my2 * 0.5 * fp[F_TICK_Y]
            price_x = mx2 * 0.5 * fp[F_TICK_X]
            if pairs_sample(fp, est, xs, ys, math.log(price_y), math.log(price_x), now_ns):
                pairs_rule(fp, est, price_y, price_x, now_ns)
    last_reject = ctl[CTL_LAST_REJECT_NS]
    if last_reject == 0 or now_ns - last_reject >= fp[F_REJECT_BACKOFF_NS]:
        k = _trade_leg(out, k, ctl, orders, pos, fp, px, meta, 0, est[E_TARGET_Y], now_ns)
        k = _trade_leg(out, k, ctl, orders, pos, fp, px, meta, 1, est[E_TARGET_X], now_ns)
    return k


class PairsTrading(Strategy):
    """Rolling-OLS pairs trade of instruments[0] (Y) against instruments[1] (X)."""

    kind = "pairs_trading"
    Params = PairsTradingParams
    n_instruments = 2
    kernel = staticmethod(pairs_kernel)

    def check_instruments(self) -> None:
        y, x = self.instruments
        if y.instrument_id == x.instrument_id:
            raise ValueError(f"pairs_trading: both legs are {y.key}; a pair needs two instruments")

    def make_state(self) -> tuple:
        p = self.params
        y, x = self.instruments
        fp = np.zeros(F_WORDS, dtype=np.float64)
        fp[F_WINDOW] = p.window
        fp[F_SAMPLE_NS] = p.sample_ms * 1e6
        fp[F_ENTRY] = p.entry_z
        fp[F_EXIT] = p.exit_z
        fp[F_STOP] = p.stop_z
        fp[F_NOTIONAL] = p.notional
        fp[F_SLIP] = p.slippage_ticks
        fp[F_COOLDOWN_NS] = p.cooldown_ms * 1e6
        # Floats here only size orders and take logs; record prices stay integer ticks.
        fp[F_TICK_Y] = float(y.tick_size)
        fp[F_TICK_X] = float(x.tick_size)
        fp[F_LOT_Y] = float(y.lot_size)
        fp[F_LOT_X] = float(x.lot_size)
        fp[F_MARKET] = 1.0 if p.order_type == "market" else 0.0
        fp[F_REJECT_BACKOFF_NS] = p.reject_backoff_ms * 1e6
        ctl = make_ctl(self.strategy_id, self.instruments)
        est = np.zeros(E_WORDS, dtype=np.float64)
        xs = np.zeros(p.window + 1, dtype=np.float64)
        ys = np.zeros(p.window + 1, dtype=np.float64)
        return (ctl, make_orders(8), make_positions(2), fp, est, xs, ys)
