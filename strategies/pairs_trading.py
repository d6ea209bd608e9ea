"""Pairs trading on two instruments: rolling-OLS hedge ratio of log prices and a z-score rule.
Runs in a strategy process (live) or the backtest; the hooks and their helpers are HOT PATH
(@njit, no allocation), the class is cold.

Model. Every ``sample_ms`` the log mids y = ln(P_Y) (first instrument) and x = ln(P_X) (second)
are sampled when both books are valid (complete, two-sided, bid < ask: market/book.py); a due
sample with a leg that has no price waits for the next call (counted in ``n_no_price``). Over the previous ``window`` samples an ordinary least
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
from strategies.base import Strategy, last_reject_ns, open_on, place, position


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


STATE_FIELDS_SCALAR = [
    ("next_sample_ns", "f8"), ("n_samples", "f8"), ("beta", "f8"), ("alpha", "f8"),
    ("sd", "f8"), ("z", "f8"), ("resid", "f8"), ("cooldown_until", "f8"),
    ("target_y", "f8"), ("target_x", "f8"), ("dir", "f8"), ("n_entries", "f8"),
    ("n_stops", "f8"),
    ("n_no_price", "f8"),   # samples due while a leg had no price (invalid / one-sided book)
]


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
def _trade_leg(ctx, p, i, target, now_ns):
    inst = ctx.inst[i]
    px, meta = ctx.px, ctx.meta
    diff = np.int64(target - position(ctx, i))
    if diff == 0 or open_on(ctx, i):
        return
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        return   # no orders into an invalid, crossed or halted book
    market = p.market != 0
    slip = np.int64(p.slippage_ticks)
    if diff > 0:
        q = best_ask_px(px, meta, inst)
        if q <= 0:
            return
        place(ctx, i, SIDE_BUY, ORD_MARKET if market else ORD_IOC, 0 if market else q + slip,
              diff, now_ns)
    else:
        q = best_bid_px(px, meta, inst)
        if q <= 0 or (not market and q - slip <= 0):
            return
        place(ctx, i, SIDE_SELL, ORD_MARKET if market else ORD_IOC, 0 if market else q - slip,
              -diff, now_ns)


@njit(cache=True)
def pairs_sample(p, st, y_log, x_log, now_ns):
    """Push one sample; update beta, sd and z (z = 0 until ``window`` earlier samples exist).
    Returns True when z is meaningful."""
    xs = st.xs
    ys = st.ys
    cap = xs.shape[0]
    n = np.int64(st.n_samples)
    window = np.int64(p.window)
    head = n % cap
    ready = False
    if n >= window:
        beta, alpha, sd = rolling_fit(xs, ys, n, head, window)
        st.beta = beta
        st.alpha = alpha
        st.sd = sd
        if sd > 0.0:
            st.resid = y_log - alpha - beta * x_log
            st.z = st.resid / sd
            ready = True
    xs[head] = x_log
    ys[head] = y_log
    st.n_samples = n + 1
    return ready


@njit(cache=True)
def pairs_rule(p, st, price_y, price_x, now_ns):
    """Entry / exit / stop on the z-score just sampled (prices > 0, quote currency)."""
    z = st.z
    d = st.dir
    if d == 0.0:
        if now_ns >= st.cooldown_until and st.beta > 0.0:
            nd = 0.0
            if z >= p.entry_z:
                nd = -1.0
            elif z <= -p.entry_z:
                nd = 1.0
            if nd != 0.0:
                qy = math.floor(p.notional / (price_y * p.lot_y) + 0.5)
                qx = math.floor(st.beta * p.notional / (price_x * p.lot_x) + 0.5)
                if qy > 0 and qx > 0:
                    st.dir = nd
                    st.target_y = nd * qy
                    st.target_x = -nd * qx
                    st.n_entries += 1
    else:
        stop = (d < 0 and z >= p.stop_z) or (d > 0 and z <= -p.stop_z)
        done = (d < 0 and z <= p.exit_z) or (d > 0 and z >= -p.exit_z)
        if stop or done:
            st.dir = 0.0
            st.target_y = 0.0
            st.target_x = 0.0
        if stop:
            st.cooldown_until = now_ns + p.cooldown_ns
            st.n_stops += 1


@njit(cache=True)
def pairs_step(ctx, st, p, now_ns):
    """Sample when due, apply the rule, and trade each leg towards its target."""
    iy = ctx.inst[0]
    ix = ctx.inst[1]
    if st.next_sample_ns == 0.0 or now_ns >= st.next_sample_ns:
        # A mid only from a valid book (complete, two-sided, bid < ask): an empty, one-sided,
        # crossed or locked leg has no price, so no sample (a zero mid would be log(0) and a
        # division by zero when sizing the legs).
        my2 = valid_mid_x2(ctx.px, ctx.meta, iy)
        mx2 = valid_mid_x2(ctx.px, ctx.meta, ix)
        if my2 <= 0 or mx2 <= 0:
            st.n_no_price += 1
        else:
            if st.next_sample_ns == 0.0:
                st.next_sample_ns = now_ns
            # one sample per call however long the gap; the sampling grid stays aligned
            skipped = math.floor((now_ns - st.next_sample_ns) / p.sample_ns) + 1.0
            st.next_sample_ns += skipped * p.sample_ns
            price_y = my2 * 0.5 * p.tick_y
            price_x = mx2 * 0.5 * p.tick_x
            if pairs_sample(p, st, math.log(price_y), math.log(price_x), now_ns):
                pairs_rule(p, st, price_y, price_x, now_ns)
    last = last_reject_ns(ctx)
    if last == 0 or now_ns - last >= p.reject_backoff_ns:
        _trade_leg(ctx, p, 0, st.target_y, now_ns)
        _trade_leg(ctx, p, 1, st.target_x, now_ns)


@njit(cache=True)
def pairs_on_market(ctx, st, p, md, n_md, now_ns):
    pairs_step(ctx, st, p, now_ns)


@njit(cache=True)
def pairs_on_exec(ctx, st, p, ex, n_ex, now_ns):
    pairs_step(ctx, st, p, now_ns)   # a partial fill is topped up, a final leg frees the next


@njit(cache=True)
def pairs_on_timer(ctx, st, p, now_ns):
    pairs_step(ctx, st, p, now_ns)   # samples stay on their grid in a quiet market


class PairsTrading(Strategy):
    """Rolling-OLS pairs trade of instruments[0] (Y) against instruments[1] (X)."""

    kind = "pairs_trading"
    Params = PairsTradingParams
    n_instruments = 2
    on_market = staticmethod(pairs_on_market)
    on_exec = staticmethod(pairs_on_exec)
    on_timer = staticmethod(pairs_on_timer)

    def check_instruments(self) -> None:
        y, x = self.instruments
        if y.instrument_id == x.instrument_id:
            raise ValueError(f"pairs_trading: both legs are {y.key}; a pair needs two instruments")

    def state_fields(self):
        n = self.params.window + 1
        return STATE_FIELDS_SCALAR + [("xs", "f8", (n,)), ("ys", "f8", (n,))]

    def derive(self) -> dict:
        p = self.params
        y, x = self.instruments
        # Floats here only size orders and take logs; record prices stay integer ticks.
        return {"sample_ns": p.sample_ms * 1e6, "cooldown_ns": p.cooldown_ms * 1e6,
                "reject_backoff_ns": p.reject_backoff_ms * 1e6,
                "market": 1 if p.order_type == "market" else 0,
                "tick_y": float(y.tick_size), "tick_x": float(x.tick_size),
                "lot_y": float(y.lot_size), "lot_x": float(x.lot_size)}
