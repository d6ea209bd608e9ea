"""Mean reversion of one instrument's price to its rolling mean, with a trend filter. Runs in a
strategy process (live) or the backtest; the hooks are HOT PATH (@njit, no allocation); the
O(reversion_window) trend fit runs only on the sampling timer, never per market record.

Model. Every ``sample_ms`` the price x (the mid, or with ``use_microprice`` the size-weighted
mid at the touch: features.mid_ticks / microprice_ticks) is sampled from a usable book.
Over the previous ``reversion_window`` samples (a features rolling window) the mean m and the
population standard deviation sd give the out-of-sample z-score z = (x - m) / sd (the sample
does not pull the statistics toward itself). The price is treated as a stationary process
around m over the window (an Ornstein-Uhlenbeck view; the classic z-score rule, e.g. Avellaneda
& Lee 2010, "Statistical arbitrage in the U.S. equities market", Quantitative Finance 10(7),
applied to one price instead of a residual).

Trend filter: an OLS line through the window's samples gives the drift across the window
(slope x (n - 1), ticks); trend = drift / sd. A random walk's window has |trend| of order 1, a
steady trend about sqrt(12) = 3.5. When trend >= ``trend_threshold`` the strategy does not
sell a high price (it would fade a rising market), when trend <= -trend_threshold it does not
buy a low one; entries with the trend (buying a dip in a rising market) stay allowed.

Rule:
- flat: sell when z >= ``z_score_threshold``, buy when z <= -z_score_threshold, if the trend
  filter allows it, the distance to the mean |x - m| (bps) pays the round trip, 2 x (fee_bps +
  half spread) + ``min_edge_bps``, and no stop happened in the last ``cooldown_ms``;
- long: exit at the mean (z >= -exit_z), stop out at z <= -stop_z, or after
  ``max_hold_ms``; short mirrors it. The window keeps rolling while we hold.
Orders: IOC limits ``slippage_ticks`` through the touch, one in flight at a time, entries only
on samples (so at most one entry attempt per sample_ms), nothing for ``reject_backoff_ms``
after a reject or denial; no order into an invalid, one-sided, crossed, locked or halted book.
An IOC never rests: nothing to cancel, nothing to self-cross.

Parameters (``[strategies].params``; units in the names):
  reversion_window   samples in the rolling mean / deviation and trend fit (10..100000)
  sample_ms          sampling interval of the price, milliseconds
  use_microprice     sample the microprice instead of the mid (bool)
  z_score_threshold  |z| needed to enter
  exit_z             exit once z is back within exit_z of the mean (0 = at the mean)
  stop_z             stop out when |z| reaches this against the position
  trend_threshold    |drift across the window| / sd at which fading that drift is refused
  fee_bps            taker fee assumed per order, bps of notional (match the venue's)
  min_edge_bps       extra distance to the mean required beyond the round-trip cost, bps
  max_hold_ms        longest holding time, milliseconds
  cooldown_ms        no entry this long after a stop, milliseconds
  order_qty_lots     size of one entry, lots
  slippage_ticks     IOC limit this many ticks through the touch
  reject_backoff_ms  nothing sent this long after a reject or denial, milliseconds
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import valid_mid_x2
from strategies._orders import backoff_over, book_usable, take_to_target, taker_cost_bps
from strategies.base import Strategy, open_on, position
from strategies.features import (
    ROLLING_DTYPE, RollingWindow, microprice_ticks, mid_ticks, rolling_is_full, rolling_mean,
    rolling_push, rolling_std,
)


@dataclass(frozen=True)
class MeanReversionParams:
    reversion_window: int = opt(300, "samples in the rolling mean, deviation and trend fit",
                                ge=10, le=100_000)
    sample_ms: float = opt(100.0, "price sampling interval, ms", gt=0)
    use_microprice: bool = opt(False, "sample the microprice instead of the mid")
    z_score_threshold: float = opt(2.5, "|z| needed to enter", gt=0)
    exit_z: float = opt(0.0, "exit once |z| <= exit_z on our side (0 = at the mean)", ge=0)
    stop_z: float = opt(5.0, "stop out when |z| reaches this against the position", gt=0)
    trend_threshold: float = opt(2.0, "|drift across the window| / sd at which fading that "
                                 "drift is refused", gt=0)
    fee_bps: float = opt(1.0, "taker fee per order, bps of notional (the venue's)", ge=0)
    min_edge_bps: float = opt(0.0, "distance to the mean required beyond the round-trip "
                              "cost, bps", ge=0)
    max_hold_ms: float = opt(60_000.0, "longest holding time, ms", gt=0)
    cooldown_ms: float = opt(5_000.0, "no entry this long after a stop, ms", ge=0)
    order_qty_lots: int = opt(10, "size of one entry, lots", gt=0)
    slippage_ticks: int = opt(0, "IOC limit this many ticks through the touch", ge=0)
    reject_backoff_ms: float = opt(1000.0, "send nothing this long after a reject or risk "
                                   "denial, ms", ge=0)

    def validate(self):
        if not self.exit_z < self.z_score_threshold < self.stop_z:
            yield (f"need exit_z < z_score_threshold < stop_z, got exit_z = {self.exit_z}, "
                   f"z_score_threshold = {self.z_score_threshold}, stop_z = {self.stop_z}")


STATE_FIELDS = [
    ("next_sample_ns", "i8"), ("n_samples", "i8"), ("x", "f8"), ("mean", "f8"), ("sd", "f8"),
    ("z", "f8"), ("trend", "f8"), ("target", "i8"), ("entry_ns", "i8"),
    ("cooldown_until", "i8"), ("n_entries", "i8"), ("n_exits", "i8"), ("n_stops", "i8"),
    ("n_trend_blocked", "i8"), ("n_cost_blocked", "i8"),
]


@njit(cache=True)
def window_trend(win):
    """Drift across slot 0's window (OLS slope x (n - 1), in the values' unit) divided by its
    standard deviation; 0 when it has no spread. O(window)."""
    h = win.hdr[0]
    n = h.count
    cap = win.values.shape[1]
    start = (h.head - n) % cap
    mean = rolling_mean(win, 0)
    sd = rolling_std(win, 0)
    if n < 3 or not sd > 0.0:
        return 0.0
    tm = (n - 1) * 0.5
    sxy = 0.0
    stt = 0.0
    for j in range(n):
        dt = j - tm
        sxy += dt * (win.values[0, (start + j) % cap] - mean)
        stt += dt * dt
    return sxy / stt * (n - 1) / sd


@njit(cache=True)
def mr_sample(ctx, st, p, now_ns):
    """Take one sample and apply the rule; returns True when a sample was taken."""
    if st.next_sample_ns != 0 and now_ns < st.next_sample_ns:
        return False
    if not book_usable(ctx, 0):
        return False   # no price: the next call samples (the grid restarts then)
    st.next_sample_ns = now_ns + np.int64(p.sample_ns)
    inst = ctx.inst[0]
    if p.use_microprice != 0:
        x = microprice_ticks(ctx.px, ctx.qty, ctx.meta, inst)
    else:
        x = mid_ticks(ctx.px, ctx.meta, inst)
    win = RollingWindow(st.win_hdr, st.win_values)
    st.x = x
    if rolling_is_full(win, 0):
        st.mean = rolling_mean(win, 0)
        st.sd = rolling_std(win, 0)
        st.trend = window_trend(win)
        st.z = (x - st.mean) / st.sd if st.sd > 0.0 else 0.0
        mr_rule(ctx, st, p, now_ns)
    rolling_push(win, 0, x)
    st.n_samples += 1
    return True


@njit(cache=True)
def mr_rule(ctx, st, p, now_ns):
    z = st.z
    pos = position(ctx, 0)
    if pos == 0:
        st.target = 0
        if now_ns < st.cooldown_until or not (abs(z) >= p.z_score_threshold):
            return
        if (z > 0 and st.trend >= p.trend_threshold) or (z < 0 and st.trend <= -p.trend_threshold):
            st.n_trend_blocked += 1
            return
        mid2 = valid_mid_x2(ctx.px, ctx.meta, ctx.inst[0])
        dist_bps = abs(st.x - st.mean) / (mid2 * 0.5) * 1e4
        if dist_bps < 2.0 * taker_cost_bps(ctx, 0, p.fee_bps) + p.min_edge_bps:
            st.n_cost_blocked += 1
            return
        st.target = -p.order_qty_lots if z > 0 else p.order_qty_lots
        st.entry_ns = now_ns
        st.n_entries += 1
    else:
        side = 1.0 if pos > 0 else -1.0
        stop = side * z <= -p.stop_z
        if stop or side * z >= -p.exit_z or now_ns - st.entry_ns >= p.hold_ns:
            st.target = 0
            st.n_exits += 1
            if stop:
                st.n_stops += 1
                st.cooldown_until = now_ns + np.int64(p.cooldown_ns)
        else:
            st.target = pos   # holding: a partial entry is kept, not topped up


@njit(cache=True)
def mr_trade(ctx, st, p, now_ns):
    if open_on(ctx, 0) or not backoff_over(ctx, p.backoff_ns, now_ns):
        return
    take_to_target(ctx, 0, st.target, p.slippage_ticks, now_ns)


@njit(cache=True)
def mr_on_timer(ctx, st, p, now_ns):
    if mr_sample(ctx, st, p, now_ns):
        mr_trade(ctx, st, p, now_ns)


@njit(cache=True)
def mr_on_exec(ctx, st, p, ex, n_ex, now_ns):
    # an exit that did not fill (IOC expired) is retried; an entry is not chased
    if st.target == 0 and position(ctx, 0) != 0:
        mr_trade(ctx, st, p, now_ns)
    elif st.target != 0 and position(ctx, 0) == 0 and not open_on(ctx, 0):
        st.target = 0


class MeanReversion(Strategy):
    """Rolling z-score mean reversion with a trend filter on one instrument (module
    docstring)."""

    kind = "mean_reversion"
    Params = MeanReversionParams
    n_instruments = 1
    on_exec = staticmethod(mr_on_exec)
    on_timer = staticmethod(mr_on_timer)

    def state_fields(self):
        n = self.params.reversion_window
        return STATE_FIELDS + [("win_hdr", ROLLING_DTYPE, (1,)), ("win_values", "f8", (1, n))]

    def init_state(self, st) -> None:
        st["win_hdr"]["recompute_every"] = self.params.reversion_window

    def derive(self) -> dict:
        p = self.params
        return {"sample_ns": p.sample_ms * 1e6, "hold_ns": p.max_hold_ms * 1e6,
                "cooldown_ns": p.cooldown_ms * 1e6, "backoff_ns": p.reject_backoff_ms * 1e6}
