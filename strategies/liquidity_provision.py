"""Liquidity provision: a ladder of post-only quotes on several levels per side that keeps a
target quote notional resting within a band around the mid. Runs in a strategy process (live)
or the backtest; the hooks and their helpers are HOT PATH (@njit, no allocation), the class is
cold.

How it differs from ``market_making`` (one quote per side after Avellaneda-Stoikov, sized in
lots, spread from a utility optimum): this kind is a depth provider. Its objective is a
*liquidity commitment* - ``liquidity_target`` of quote currency resting on each side within
``band_bps`` of the mid, as exchange liquidity-provider programmes measure it (e.g. Eurex /
Deutsche Boerse "Designated Market Maker" and Coinbase "Liquidity Program" presence rules: a
notional within a maximum spread for a share of the time) - and the quotes are spread over
``levels`` prices so the depth survives one fill. Pricing follows the inventory-aware ladder of
Gueant, Lehalle and Fernandez-Tapia (2013), "Dealing with the inventory risk: a solution to the
market making problem", Mathematics and Financial Economics 7(4), in its simplest closed-form
reading: the touch distance grows with volatility, the centre shifts against inventory.

Model (distances in basis points of the mid m; sigma in bps per sqrt(second)):

    half spread   h     = max(min_half_spread_bps,
                              vol_mult * sigma * sqrt(vol_horizon_s) + maker_fee_bps)
                  (a maker rebate, maker_fee_bps < 0, lets the ladder stand closer)
    inventory     q     = clip(position notional / max_inventory_notional, -1, 1)
    centre        c     = m * (1 - q * inventory_skew_bps / 1e4)      (long: quotes move down)
    level k       d_k   = h + k * (band_bps - h) / (levels - 1)        k = 0 .. levels-1
                  bid_k = floor(c (1 - d_k / 1e4)),  ask_k = ceil(c (1 + d_k / 1e4)),
                  each level at least one tick beyond the previous one and none outside the
                  band around m, none at or through the opposite touch (post-only)
    size          each level of a side rests liquidity_target / levels of notional; the side
                  that adds to the inventory is scaled by (1 - |q|) (long: smaller bids), and
                  pulled at |q| = 1.

sigma: the mid is sampled every ``sigma_sample_ms``; sigma^2 is the EWMA (features.py, half-
life ``sigma_halflife_samples`` samples) of the squared log return in bps per sample, divided
by the sampling interval; it starts from ``sigma_init_bps``. When h exceeds band_bps (a
volatility spike) the ladder cannot stand inside its band at a safe distance: every quote is
pulled until it calms down (counted in ``n_pulled``).

Order handling (lawful quoting): post-only only; each level is one order, replaced only when
its price moves by at least ``requote_threshold_bps`` or its size by more than a tenth, and not
more often than every ``min_requote_interval_ms`` per level; no new request on a level while
one is in flight; a bid never at or above any of our asks (working or pending) and vice versa,
so it cannot trade with itself. Nothing rests on an invalid, one-sided, crossed, locked or
halted book: every quote is cancelled and none is sent.

Parameters (``[strategies].params``; units in the names):
  levels                   quotes per side (1 to 8)
  liquidity_target         quote-currency notional resting per side within the band
  band_bps                 the band: every quote within this distance of the mid, bps
  min_half_spread_bps      floor on the touch distance h, bps
  vol_mult                 h per unit of sigma * sqrt(vol_horizon_s), dimensionless
  vol_horizon_s            horizon the volatility is scaled to, seconds
  maker_fee_bps            the venue's maker fee, bps (negative = rebate)
  max_inventory_notional   quote-currency inventory at which the adding side is pulled
  inventory_skew_bps       centre shift at full inventory, bps
  requote_threshold_bps    replace a level only when its price moves at least this, bps
  min_requote_interval_ms  at most one new/replace per level per this interval
  sigma_sample_ms          mid sampling interval of the volatility estimator, milliseconds
  sigma_halflife_samples   EWMA half-life of squared returns, samples
  sigma_init_bps           prior sigma, bps per sqrt(second)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid, valid_mid_x2
from shm.records import SIDE_BUY, SIDE_SELL
from strategies.base import Strategy, cancel_all, keep_quote, own_extreme, position
from strategies.features import EWMA_DTYPE, ewma_mean, ewma_update, make_ewma

MAX_LEVELS = 8


@dataclass(frozen=True)
class LiquidityProvisionParams:
    levels: int = opt(4, "quotes per side", ge=1, le=MAX_LEVELS)
    liquidity_target: float = opt(20_000.0, "quote notional resting per side within the band",
                                  gt=0)
    band_bps: float = opt(10.0, "every quote within this distance of the mid, bps", gt=0)
    min_half_spread_bps: float = opt(0.5, "floor on the touch distance, bps", gt=0)
    vol_mult: float = opt(1.0, "touch distance per sigma * sqrt(vol_horizon_s)", ge=0)
    vol_horizon_s: float = opt(1.0, "horizon the volatility is scaled to, seconds", gt=0)
    maker_fee_bps: float = opt(0.0, "maker fee of the venue, bps (negative = rebate)",
                               ge=-10, le=10)
    max_inventory_notional: float = opt(20_000.0, "inventory (quote currency) at which the "
                                        "adding side is pulled", gt=0)
    inventory_skew_bps: float = opt(2.0, "centre shift at full inventory, bps", ge=0)
    requote_threshold_bps: float = opt(0.5, "replace a level only when its price moves at "
                                       "least this, bps", gt=0)
    min_requote_interval_ms: float = opt(250.0, "at most one new/replace per level per this "
                                         "interval, ms", ge=0)
    sigma_sample_ms: float = opt(100.0, "mid sampling interval of the volatility estimator, ms",
                                 gt=0)
    sigma_halflife_samples: float = opt(50.0, "EWMA half-life of squared returns, samples",
                                        gt=0)
    sigma_init_bps: float = opt(1.0, "prior sigma, bps per sqrt(second)", ge=0)

    def validate(self):
        if self.min_half_spread_bps >= self.band_bps:
            yield (f"min_half_spread_bps = {self.min_half_spread_bps}: must be below band_bps "
                   f"({self.band_bps}), or no quote fits in the band")


STATE_FIELDS = [
    ("var", EWMA_DTYPE, (1,)),      # squared log returns per sample, bps^2
    ("sample_mid_x2", "f8"), ("next_sample_ns", "f8"),
    ("sigma_bps", "f8"), ("half_spread_bps", "f8"), ("center", "f8"), ("q", "f8"),
    ("n_pulled", "i8"), ("n_requotes", "i8"),
    ("quoted_mid_x2", "i8"), ("quoted_pos", "i8"),   # mid and inventory of the last requote
    ("bid_px", "i8", (MAX_LEVELS,)), ("ask_px", "i8", (MAX_LEVELS,)),
    ("bid_qty", "i8", (MAX_LEVELS,)), ("ask_qty", "i8", (MAX_LEVELS,)),
    ("bid_coid", "i8", (MAX_LEVELS,)), ("ask_coid", "i8", (MAX_LEVELS,)),
    ("bid_sent", "i8", (MAX_LEVELS,)), ("ask_sent", "i8", (MAX_LEVELS,)),
]


@njit(cache=True)
def lp_observe_mid(p, st, mid2, now_ns):
    """Volatility sample (mid2 = bid + ask ticks) when due."""
    if st.next_sample_ns == 0.0:
        st.sample_mid_x2 = mid2
        st.next_sample_ns = now_ns + p.sample_ns
        return
    if now_ns < st.next_sample_ns:
        return
    n = 1.0 + math.floor((now_ns - st.next_sample_ns) / p.sample_ns)
    r_bps = math.log(mid2 / st.sample_mid_x2) * 1e4
    ewma_update(st.var, 0, r_bps * r_bps / n)      # a gap of n samples: its variance / n
    st.sample_mid_x2 = mid2
    st.next_sample_ns += n * p.sample_ns


@njit(cache=True)
def lp_ladder(p, st, mid2, inv_notional):
    """Prices and sizes of the ladder into st.bid_px/ask_px/bid_qty/ask_qty (ticks, lots);
    False when the ladder cannot stand in its band (pulled)."""
    var = ewma_mean(st.var, 0)
    if var == var and st.var[0].n_updates >= 5:
        sigma = math.sqrt(var / (p.sample_ns * 1e-9))
    else:
        sigma = p.sigma_init_bps
    st.sigma_bps = sigma
    h = max(p.min_half_spread_bps, p.vol_mult * sigma * p.sqrt_horizon + p.maker_fee_bps)
    st.half_spread_bps = h
    if h > p.band_bps:
        st.n_pulled += 1
        return False
    mid = mid2 * 0.5
    q = min(1.0, max(-1.0, inv_notional / p.max_inventory_notional))
    st.q = q
    c = mid * (1.0 - q * p.inventory_skew_bps * 1e-4)
    st.center = c
    n = np.int64(p.levels)
    step = (p.band_bps - h) / (n - 1) if n > 1 else 0.0
    lo = np.int64(math.ceil(mid * (1.0 - p.band_bps * 1e-4)))
    hi = np.int64(math.floor(mid * (1.0 + p.band_bps * 1e-4)))
    per_level = p.liquidity_target / n
    lots = math.floor(per_level / (mid * p.tick * p.lot) + 0.5)
    bid_scale = 1.0 - q if q > 0 else 1.0      # long: fewer bids
    ask_scale = 1.0 + q if q < 0 else 1.0      # short: fewer asks
    for k in range(MAX_LEVELS):
        st.bid_px[k] = 0
        st.ask_px[k] = 0
        st.bid_qty[k] = 0
        st.ask_qty[k] = 0
    for k in range(n):
        d = (h + k * step) * 1e-4
        b = max(np.int64(math.floor(c * (1.0 - d))), lo)   # the outermost sits on the band
        a = min(np.int64(math.ceil(c * (1.0 + d))), hi)
        if k > 0:
            b = min(b, st.bid_px[k - 1] - 1)
            a = max(a, st.ask_px[k - 1] + 1)
        st.bid_px[k] = b
        st.ask_px[k] = a
        if b >= lo:
            st.bid_qty[k] = np.int64(math.floor(lots * bid_scale))
        if a <= hi:
            st.ask_qty[k] = np.int64(math.floor(lots * ask_scale))
    return True


@njit(cache=True)
def lp_requote(ctx, st, p, now_ns):
    inst = ctx.inst[0]
    px, meta = ctx.px, ctx.meta
    mid2 = valid_mid_x2(px, meta, inst) if meta[inst, META_HALTED] == 0 else 0
    if mid2 <= 0 or not is_valid(px, meta, inst):
        st.quoted_mid_x2 = 0
        cancel_all(ctx, now_ns)        # no price: nothing of ours rests in the book
        return
    lp_observe_mid(p, st, float(mid2), now_ns)
    inv = position(ctx, 0)
    st.quoted_mid_x2 = mid2
    st.quoted_pos = inv
    if not lp_ladder(p, st, mid2, inv * mid2 * 0.5 * p.tick * p.lot):
        cancel_all(ctx, now_ns)
        return
    best_bid = best_bid_px(px, meta, inst)
    best_ask = best_ask_px(px, meta, inst)
    own_ask = own_extreme(ctx, SIDE_SELL)
    own_bid = own_extreme(ctx, SIDE_BUY)
    for k in range(np.int64(p.levels)):
        b = st.bid_px[k]
        bq = st.bid_qty[k]
        if b >= best_ask or b >= own_ask:       # post-only / self-trade: wait this level out
            bq = 0
        a = st.ask_px[k]
        aq = st.ask_qty[k]
        if a <= best_bid or a <= own_bid:
            aq = 0
        # a level is replaced when its price is off by requote_ticks_per_px of it, or its
        # size by more than a tenth
        st.bid_coid[k], st.bid_sent[k] = keep_quote(
            ctx, 0, st.bid_coid[k], st.bid_sent[k], SIDE_BUY, b, bq,
            p.requote_ticks_per_px * b, bq / 10.0, p.requote_ns, now_ns)
        st.ask_coid[k], st.ask_sent[k] = keep_quote(
            ctx, 0, st.ask_coid[k], st.ask_sent[k], SIDE_SELL, a, aq,
            p.requote_ticks_per_px * a, aq / 10.0, p.requote_ns, now_ns)


@njit(cache=True)
def lp_on_market(ctx, st, p, md, n_md, now_ns):
    # A full requote only when it can change something: the mid moved by the requote
    # threshold since the last one or the inventory changed (no level would be replaced
    # otherwise); the timer and execution reports requote in any case. Keeps the per-record
    # cost of a quiet book low.
    inst = ctx.inst[0]
    mid2 = valid_mid_x2(ctx.px, ctx.meta, inst) if ctx.meta[inst, META_HALTED] == 0 else 0
    if (mid2 > 0 and st.quoted_mid_x2 > 0 and position(ctx, 0) == st.quoted_pos
            and abs(mid2 - st.quoted_mid_x2) < p.requote_ticks_per_px * mid2):
        lp_observe_mid(p, st, float(mid2), now_ns)
        return
    lp_requote(ctx, st, p, now_ns)


@njit(cache=True)
def lp_on_exec(ctx, st, p, ex, n_ex, now_ns):
    lp_requote(ctx, st, p, now_ns)     # a fill moves the inventory skew


@njit(cache=True)
def lp_on_timer(ctx, st, p, now_ns):
    lp_requote(ctx, st, p, now_ns)     # a rate-limited level may be free again


@njit(cache=True)
def lp_on_params(ctx, st, p, now_ns):
    st.var[0].alpha = p.sigma_alpha    # a new half-life applies from the next sample on


class LiquidityProvision(Strategy):
    """A multi-level post-only ladder that keeps liquidity_target within band_bps."""

    kind = "liquidity_provision"
    Params = LiquidityProvisionParams
    n_instruments = 1
    max_orders = 2 * MAX_LEVELS + 4
    on_market = staticmethod(lp_on_market)
    on_exec = staticmethod(lp_on_exec)
    on_timer = staticmethod(lp_on_timer)
    on_params = staticmethod(lp_on_params)

    def state_fields(self):
        return STATE_FIELDS

    def init_state(self, st) -> None:
        st["var"][:] = make_ewma(self.derive()["sigma_alpha"])

    def derive(self) -> dict:
        p = self.params
        ins = self.instruments[0]
        return {"requote_ns": p.min_requote_interval_ms * 1e6,
                "sample_ns": p.sigma_sample_ms * 1e6,
                "sqrt_horizon": math.sqrt(p.vol_horizon_s),
                "sigma_alpha": 1.0 - 0.5 ** (1.0 / p.sigma_halflife_samples),
                "requote_ticks_per_px": p.requote_threshold_bps * 1e-4,
                "tick": float(ins.tick_size), "lot": float(ins.lot_size)}
