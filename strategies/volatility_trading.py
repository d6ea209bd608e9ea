"""Volatility-regime trading on one instrument: breakouts when realized volatility expands, fades
when it is compressed, position sized to a volatility target. Runs in a strategy process (live)
or the backtest; hooks are HOT PATH (@njit, no allocation, O(1) per call): ``on_market``
keeps the current bar's high / low / close; estimators and decisions run once per bar, at the first timer tick
or market batch after the bar's end (a batch that arrives after the end is not counted in the
bar it closes).

Bars. The mid of a usable book is tracked in bars of ``bar_ms`` (high H, low L, close C; a
bar opens at the previous close, so its range includes the move into it). Per bar:

    r        = ln(C / C_prev)                        close-to-close log return
    EWMA     sigma_f^2 = EWMA of r^2, half-life ``ewma_halflife_bars`` bars (RiskMetrics;
             J.P. Morgan 1996): the fast, current estimate
    Parkinson sigma_s^2 = mean over the last ``volatility_window`` bars of
             ln(H / L)^2 / (4 ln 2)  (Parkinson 1980, "The extreme value method for estimating
             the variance of the rate of return", J. of Business 53(1)): the range-based
             baseline, about five times as efficient as close-to-close returns
    ratio    = sigma_f / sigma_s                      volatility now relative to the window

Rule, at each bar close once the window is full:
- expansion (ratio >= ``volatility_threshold``): breakout, trade with the bar's move
  (buy after an up bar, sell after a down bar);
- otherwise, when the market was compressed before this bar (the ratio before it <=
  ``compression_threshold``) and the bar moved |r| >= ``fade_z`` x sigma_s (also as before
  it): the bar stretched beyond the quiet market's range without lifting volatility to a
  breakout: fade it (sell after an up bar);
- otherwise a position is held until ``hold_bars`` bars after its signal, then closed.
A new signal replaces the target (and restarts the holding clock).

Size (volatility targeting, e.g. Moreira & Muir 2017, "Volatility-managed portfolios", J. of
Finance 72(4)): |target| = floor(``risk_budget_quote`` / (price x lot x sigma_f)) lots, so
the one-bar standard deviation of the position's PnL is about risk_budget_quote; twice the
volatility, half the size. Capped at ``max_position_lots``.

Orders: IOC limits ``slippage_ticks`` through the touch toward the target, one in flight at a
time, at most one decision per bar; nothing for ``reject_backoff_ms`` after a reject or
denial; no order into an invalid, one-sided, crossed, locked or halted book (a bar without a
usable book makes no decision). An IOC never rests: nothing to cancel or self-cross.

Parameters (``[strategies].params``; units in the names):
  volatility_window      bars in the Parkinson baseline (5..10000)
  bar_ms                 bar length, milliseconds
  ewma_halflife_bars     half-life of the EWMA variance, bars
  volatility_threshold   sigma_f / sigma_s at or above which breakouts are traded (> 1)
  compression_threshold  sigma_f / sigma_s at or below which stretched bars are faded (< 1)
  fade_z                 a compressed bar is faded when |r| >= fade_z x sigma_s
  hold_bars              bars a position is held after its signal
  risk_budget_quote      target one-bar PnL standard deviation, quote currency
  max_position_lots      cap on |target|, lots
  slippage_ticks         IOC limit this many ticks through the touch
  reject_backoff_ms      nothing sent this long after a reject or denial, milliseconds
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from strategies._orders import backoff_over, book_usable, take_to_target
from strategies.base import Strategy, open_on, position
from strategies.features import (
    EWMA_DTYPE, ROLLING_DTYPE, RollingWindow, ewma_alpha_from_halflife, ewma_mean, ewma_update,
    mid_ticks, rolling_is_full, rolling_mean, rolling_push,
)

_FOUR_LN2 = 4.0 * math.log(2.0)


@dataclass(frozen=True)
class VolatilityTradingParams:
    volatility_window: int = opt(40, "bars in the Parkinson baseline", ge=5, le=10_000)
    bar_ms: float = opt(500.0, "bar length, ms", gt=0)
    ewma_halflife_bars: float = opt(2.0, "half-life of the EWMA variance, bars", gt=0)
    volatility_threshold: float = opt(1.5, "fast / baseline volatility at or above which "
                                      "breakouts are traded", gt=1)
    compression_threshold: float = opt(0.7, "fast / baseline volatility at or below which "
                                       "stretched bars are faded", gt=0, lt=1)
    fade_z: float = opt(1.5, "fade a compressed bar when |r| >= fade_z x baseline sigma", gt=0)
    hold_bars: int = opt(5, "bars a position is held after its signal", ge=1)
    risk_budget_quote: float = opt(1.0, "target one-bar PnL standard deviation, quote", gt=0)
    max_position_lots: int = opt(1000, "cap on the target position, lots", gt=0)
    slippage_ticks: int = opt(0, "IOC limit this many ticks through the touch", ge=0)
    reject_backoff_ms: float = opt(1000.0, "send nothing this long after a reject or risk "
                                   "denial, ms", ge=0)


STATE_FIELDS = [
    ("bar_end_ns", "i8"), ("bar_hi", "f8"), ("bar_lo", "f8"), ("bar_close", "f8"),
    ("prev_close", "f8"), ("r", "f8"), ("sigma_f", "f8"), ("sigma_s", "f8"), ("ratio", "f8"),
    ("ratio_prev", "f8"), ("sigma_s_prev", "f8"),   # the estimates before the latest bar
    ("target", "i8"), ("size", "i8"), ("signal_bar", "i8"), ("n_bars", "i8"),
    ("n_breakouts", "i8"), ("n_fades", "i8"),
]


@njit(cache=True)
def vt_on_market(ctx, st, p, md, n_md, now_ns):
    # a bar that ended before this batch closes on the prices it saw, not on this batch's
    vt_roll(ctx, st, p, now_ns)
    if not book_usable(ctx, 0):
        return
    m = mid_ticks(ctx.px, ctx.meta, ctx.inst[0])
    if st.bar_close <= 0.0:
        st.bar_hi = m
        st.bar_lo = m
    else:
        st.bar_hi = max(st.bar_hi, m)
        st.bar_lo = min(st.bar_lo, m)
    st.bar_close = m
    if st.bar_end_ns == 0:
        st.bar_end_ns = now_ns + np.int64(p.bar_ns)


@njit(cache=True)
def vt_close_bar(ctx, st, p):
    """Close the bar: update both estimators; True once a decision can be made."""
    c = st.bar_close
    ready = False
    st.ratio_prev = st.ratio
    st.sigma_s_prev = st.sigma_s
    if c > 0.0 and st.prev_close > 0.0:
        r = math.log(c / st.prev_close)
        st.r = r
        ewma_update(st.ew, 0, r * r)
        rng = math.log(st.bar_hi / st.bar_lo)
        win = RollingWindow(st.park_hdr, st.park_values)
        rolling_push(win, 0, rng * rng / _FOUR_LN2)
        st.sigma_f = math.sqrt(ewma_mean(st.ew, 0))
        st.sigma_s = math.sqrt(rolling_mean(win, 0))
        ready = rolling_is_full(win, 0) and st.sigma_s > 0.0
        st.ratio = st.sigma_f / st.sigma_s if st.sigma_s > 0.0 else np.nan
    st.n_bars += 1
    if c > 0.0:
        st.prev_close = c
        st.bar_hi = c   # the next bar opens at this close
        st.bar_lo = c
    return ready


@njit(cache=True)
def vt_rule(ctx, st, p, now_ns):
    r = st.r
    direction = 0
    if st.ratio >= p.volatility_threshold and r != 0.0:
        direction = 1 if r > 0 else -1
        st.n_breakouts += 1
    elif (st.ratio_prev <= p.compression_threshold and st.sigma_s_prev > 0.0
          and abs(r) >= p.fade_z * st.sigma_s_prev):
        direction = -1 if r > 0 else 1
        st.n_fades += 1
    if direction != 0:
        price_quote = st.bar_close * p.tick_size
        size = p.max_position_lots
        if st.sigma_f > 0.0:
            size = min(size, np.int64(math.floor(p.risk_budget_quote /
                                                 (price_quote * p.lot_size * st.sigma_f))))
        st.size = size
        if size > 0:
            st.target = direction * size
            st.signal_bar = st.n_bars
    elif st.target != 0 and st.n_bars - st.signal_bar >= p.hold_bars:
        st.target = 0


@njit(cache=True)
def vt_trade(ctx, st, p, now_ns):
    if open_on(ctx, 0) or not backoff_over(ctx, p.backoff_ns, now_ns):
        return
    take_to_target(ctx, 0, st.target, p.slippage_ticks, now_ns)


@njit(cache=True)
def vt_on_timer(ctx, st, p, now_ns):
    vt_roll(ctx, st, p, now_ns)


@njit(cache=True)
def vt_roll(ctx, st, p, now_ns):
    """Close the bar when its time is over, then decide and trade (O(1))."""
    if st.bar_end_ns == 0 or now_ns < st.bar_end_ns:
        return
    # one bar per call however long the gap: the grid stays aligned, an empty stretch is one bar
    skipped = (now_ns - st.bar_end_ns) // np.int64(p.bar_ns) + 1
    st.bar_end_ns += skipped * np.int64(p.bar_ns)
    if vt_close_bar(ctx, st, p) and book_usable(ctx, 0):
        vt_rule(ctx, st, p, now_ns)
        vt_trade(ctx, st, p, now_ns)


@njit(cache=True)
def vt_on_exec(ctx, st, p, ex, n_ex, now_ns):
    # closing (target 0) is retried until flat; an entry that did not fill is not chased
    if st.target == 0 and position(ctx, 0) != 0:
        vt_trade(ctx, st, p, now_ns)


class VolatilityTrading(Strategy):
    """EWMA / Parkinson volatility-regime breakout and fade on one instrument (module
    docstring)."""

    kind = "volatility_trading"
    Params = VolatilityTradingParams
    n_instruments = 1
    on_market = staticmethod(vt_on_market)
    on_exec = staticmethod(vt_on_exec)
    on_timer = staticmethod(vt_on_timer)

    def state_fields(self):
        n = self.params.volatility_window
        return STATE_FIELDS + [("ew", EWMA_DTYPE, (1,)), ("park_hdr", ROLLING_DTYPE, (1,)),
                               ("park_values", "f8", (1, n))]

    def init_state(self, st) -> None:
        st["ew"]["alpha"] = ewma_alpha_from_halflife(self.params.ewma_halflife_bars)
        st["park_hdr"]["recompute_every"] = self.params.volatility_window
        st["ratio"] = np.nan
        st["ratio_prev"] = np.nan

    def derive(self) -> dict:
        p = self.params
        inst = self.instruments[0]
        return {"bar_ns": p.bar_ms * 1e6, "backoff_ns": p.reject_backoff_ms * 1e6,
                "tick_size": float(inst.tick_size), "lot_size": float(inst.lot_size)}
