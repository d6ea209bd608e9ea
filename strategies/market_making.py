"""Market making after Avellaneda and Stoikov (2008), with volatility and order-arrival intensity
estimated online. Runs in a strategy process (live) or the backtest; ``mm_kernel`` and its
helpers are HOT PATH (@njit, no allocation), the class is cold.

Model (all prices in ticks, time in seconds). With mid s, inventory q (in quote sizes:
position_lots / order_qty_lots), risk aversion gamma (1/tick), volatility sigma (ticks/sqrt(s)),
horizon tau = T - t (s) and order-arrival intensity lambda(d) = A exp(-k d) at distance d ticks
from the mid:

    reservation price   r     = s - q * gamma * sigma^2 * tau
    optimal spread      delta = gamma * sigma^2 * tau + (2 / gamma) * ln(1 + gamma / k)
    quotes              bid = floor(r - delta/2),  ask = ceil(r + delta/2)

We use the rolling-horizon form (tau constant = ``horizon_s``), the usual choice for a market
that never closes. Long inventory lowers r, so both quotes move down (we sell more eagerly and
buy less eagerly); higher sigma widens the spread and strengthens the skew.

Online estimation:
- sigma^2: the mid is sampled every ``sigma_sample_ms``; sigma^2 per second is the EWMA (half-life
  ``sigma_halflife_samples`` samples) of the squared mid change divided by the sampling interval.
  A gap of n intervals contributes its change divided by n (a random walk's variance adds up).
- k: for exponential intensity the distance of executions from the mid is exponential with mean
  1/k, so k = 1 / EWMA(distance of each trade from the previous batch's mid), half-life
  ``k_halflife_trades`` trades, floored at half a tick, started from ``k_init``.

Order handling (lawful quoting): one post-only quote per side; a quote is replaced only when its
price moves by at least ``requote_threshold_ticks`` (or its size changes) and not more often than
every ``min_requote_interval_ms`` per side (no quote stuffing); no new request while one is in
flight; quotes never cross the opposite touch (post-only, no self-trade: our bid is always below
our ask). At |inventory| >= ``max_inventory_lots`` the side that would add is pulled. When the
book is invalid, crossed, locked, halted or one-sided every quote is cancelled and none is sent.

Parameters (``[strategies].params``; units in the names):
  gamma                    risk aversion, 1/tick: larger -> stronger inventory skew, and the
                           spread trades the risk term against the intensity term
  horizon_s                tau = T - t of the model, held constant (rolling horizon)
  order_qty_lots           size of each quote; inventory q is measured in these units
  max_inventory_lots       at |position| >= this the quote that would add is pulled
  max_skew_ticks           cap on |r - s|, so a large inventory cannot push quotes off-market
  min_half_spread_ticks    floor on delta/2 (the model spread can fall below a tick)
  requote_threshold_ticks  a quote is replaced only when its price moves at least this much
  min_requote_interval_ms  at most one new/replace per side per this interval
  sigma_sample_ms          mid sampling interval of the volatility estimator
  sigma_halflife_samples   EWMA half-life of the squared mid changes, in samples
  sigma_init_ticks         prior sigma (ticks per sqrt(s)); 0 = none, wait for data
  min_sigma_samples        without a prior, samples needed before quoting (``warm_up`` can
                           supply them from recorded data)
  k_init                   prior k (1/tick) the trade-distance EWMA starts from
  k_halflife_trades        EWMA half-life of trade distances, in trades
  sigma_from_signal        in a farm subscribed to a realized_vol signal agent: price with the
                           agent's volatility while it is valid, and with the own estimate
                           whenever it is missing or stale (never with 0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import (META_HALTED, L2Book, best_ask_px, best_bid_px, book_apply_market,
                         is_valid, mid_x2, valid_mid_x2)
from shm.records import MSG_TRADE, SIDE_BUY, SIDE_SELL
from shm.records import SIG_REALIZED_VOL
from strategies.base import (Strategy, cancel_all, keep_quote, own_extreme, position,
                             signal_value)
from strategies.features import SECONDS_PER_YEAR_365D


@dataclass(frozen=True)
class MarketMakingParams:
    gamma: float = opt(1e-4, "risk aversion gamma, 1/tick: scales the inventory skew and the "
                       "risk part of the spread", gt=0)
    horizon_s: float = opt(1.0, "tau = T - t in seconds (rolling horizon, held constant)", gt=0)
    order_qty_lots: int = opt(10, "size of each quote, lots; inventory q is counted in these "
                              "units", gt=0)
    max_inventory_lots: int = opt(100, "at |position| >= this the side that would add is "
                                  "pulled", gt=0)
    max_skew_ticks: float = opt(50.0, "cap on |r - s|, ticks (maximum inventory skew)", gt=0)
    min_half_spread_ticks: float = opt(1.0, "floor on delta/2, ticks", gt=0)
    requote_threshold_ticks: int = opt(2, "replace a quote only when its price moves at least "
                                       "this many ticks", ge=1)
    min_requote_interval_ms: float = opt(10.0, "at most one new/replace per side per this "
                                         "interval", ge=0)
    sigma_sample_ms: float = opt(100.0, "mid sampling interval of the volatility estimator", gt=0)
    sigma_halflife_samples: float = opt(50.0, "EWMA half-life of squared mid changes, samples",
                                        gt=0)
    sigma_init_ticks: float = opt(0.0, "initial sigma, ticks per sqrt(second); 0 = unknown "
                                  "(then quote only after min_sigma_samples)", ge=0)
    min_sigma_samples: int = opt(20, "samples before sigma is trusted when sigma_init_ticks is "
                                 "0 (warm_up() can supply them)", ge=1)
    k_init: float = opt(0.5, "initial order-arrival decay k, 1/tick", gt=0)
    k_halflife_trades: float = opt(100.0, "EWMA half-life of trade distances, trades", gt=0)
    sigma_from_signal: bool = opt(False, "farms: price with the realized_vol signal agent's "
                                  "volatility while it is valid, the own estimate while it is "
                                  "missing (subscribe with signals = [...])")

    def validate(self):
        if self.max_inventory_lots < self.order_qty_lots:
            yield (f"max_inventory_lots = {self.max_inventory_lots}: must be >= "
                   f"order_qty_lots ({self.order_qty_lots})")


STATE_FIELDS = [
    # sigma estimator: EWMA of squared mid changes per sample, samples seen, last sample
    ("var", "f8"), ("n_samples", "f8"), ("sample_mid_x2", "f8"), ("next_sample_ns", "f8"),
    # k estimator: EWMA of trade distances from the mid (ticks); the mid trades are measured
    # from (the mid after the previous market batch)
    ("dist", "f8"), ("last_mid_x2", "f8"),
    # the last computed model values (read by tests and reports)
    ("r", "f8"), ("delta", "f8"), ("bid", "f8"), ("ask", "f8"), ("sigma2", "f8"), ("k", "f8"),
    # our two quotes: client order id and when each side was last (re)sent
    ("coid_bid", "i8"), ("coid_ask", "i8"), ("sent_bid_ns", "i8"), ("sent_ask_ns", "i8"),
]


def _alpha(halflife: float) -> float:
    return 1.0 - 0.5 ** (1.0 / halflife)


@njit(cache=True)
def mm_observe_mid(p, st, mid2, now_ns):
    """Sample the mid for the sigma estimator (mid2 = bid + ask, 0 = no mid)."""
    if mid2 <= 0:
        return
    if st.next_sample_ns == 0.0:
        st.sample_mid_x2 = mid2
        st.next_sample_ns = now_ns + p.sample_ns
        return
    if now_ns < st.next_sample_ns:
        return
    n = 1.0 + math.floor((now_ns - st.next_sample_ns) / p.sample_ns)
    dm = (mid2 - st.sample_mid_x2) * 0.5
    obs = dm * dm / n
    if st.n_samples == 0.0 and st.var == 0.0:
        st.var = obs
    else:
        st.var += p.sigma_alpha * (obs - st.var)
    st.n_samples += n
    st.sample_mid_x2 = mid2
    st.next_sample_ns += n * p.sample_ns


@njit(cache=True)
def mm_observe_trade(p, st, trade_px, ref_mid2):
    """One trade for the k estimator: distance from the mid that was quoted before it."""
    if ref_mid2 <= 0:
        return
    d = abs(2.0 * trade_px - ref_mid2) * 0.5
    if d < 0.5:
        d = 0.5
    st.dist += p.k_alpha * (d - st.dist)


@njit(cache=True)
def signal_sigma2(ctx, p, mid2, now_ns):
    """sigma^2 (ticks^2 per second) from the farm's realized-vol signal (annualised over a
    365-day year, a fraction of the price), or NaN when the strategy does not use it or it is
    missing / stale (strategies/base.py signal_value)."""
    if p.sigma_from_signal == 0 or mid2 <= 0:
        return np.nan
    v = signal_value(ctx, SIG_REALIZED_VOL, ctx.inst[0], now_ns)
    if not (v >= 0.0):
        return np.nan
    s = v * (mid2 * 0.5)
    return s * s / SECONDS_PER_YEAR_365D


@njit(cache=True)
def mm_quotes(p, st, mid2, inventory_lots, sigma2_signal):
    """Avellaneda-Stoikov quotes (bid, ask) in ticks for the current estimates; 0, 0 if sigma is
    not known yet. ``sigma2_signal``: sigma^2 from the farm's signal agent, used when finite
    (NaN: the own estimate). Also stores r, delta, sigma^2, k in the state."""
    bid = np.int64(0)
    ask = np.int64(0)
    own = st.n_samples >= p.min_sigma_samples
    if own or math.isfinite(sigma2_signal):
        sigma2 = sigma2_signal if math.isfinite(sigma2_signal) else \
            st.var / (p.sample_ns * 1e-9)
        k = 1.0 / st.dist
        gamma = p.gamma
        tau = p.horizon_s
        skew = inventory_lots / p.order_qty_lots * gamma * sigma2 * tau
        skew = min(max(skew, -p.max_skew_ticks), p.max_skew_ticks)
        r = mid2 * 0.5 - skew
        delta = gamma * sigma2 * tau + (2.0 / gamma) * math.log(1.0 + gamma / k)
        half = max(delta * 0.5, p.min_half_spread_ticks)
        st.r = r
        st.delta = delta
        st.sigma2 = sigma2
        st.k = k
        bid = np.int64(math.floor(r - half))
        ask = np.int64(math.ceil(r + half))
    return bid, ask


@njit(cache=True)
def mm_requote(ctx, st, p, now_ns):
    """Price both sides from the current book and estimates, and bring the quotes there."""
    inst = ctx.inst[0]
    px, meta = ctx.px, ctx.meta
    ok = is_valid(px, meta, inst) and meta[inst, META_HALTED] == 0
    mid2 = mid_x2(px, meta, inst) if ok else 0
    bid = np.int64(0)
    ask = np.int64(0)
    inv = position(ctx, 0)
    if mid2 > 0:
        mm_observe_mid(p, st, mid2, now_ns)
        bid, ask = mm_quotes(p, st, mid2, inv, signal_sigma2(ctx, p, mid2, now_ns))
    if bid <= 0 or ask <= 0:
        # Invalid, crossed, locked, halted or one-sided book, or no volatility estimate yet:
        # we cannot price, so nothing of ours rests in the book.
        cancel_all(ctx, now_ns)
        return
    best_bid = best_bid_px(px, meta, inst)
    best_ask = best_ask_px(px, meta, inst)
    if bid >= best_ask:   # post-only would be rejected: join one tick inside the touch
        bid = best_ask - 1
    if ask <= best_bid:
        ask = best_bid + 1
    qty_q = np.int64(p.order_qty_lots)
    max_inv = p.max_inventory_lots
    bid_qty = min(qty_q, np.int64(max_inv - inv)) if inv < max_inv else 0
    ask_qty = min(qty_q, np.int64(max_inv + inv)) if inv > -max_inv else 0
    st.bid = bid
    st.ask = ask
    # Never cross our own resting order (self-trade): a quote that would reach our other
    # side's old or pending price waits until that side has moved away (next call).
    # One quote per side, replaced when the price is off by requote_threshold_ticks or the
    # size changed at all.
    if bid_qty <= 0 or bid < own_extreme(ctx, SIDE_SELL):
        st.coid_bid, st.sent_bid_ns = keep_quote(ctx, 0, st.coid_bid, st.sent_bid_ns, SIDE_BUY,
                                                 bid, bid_qty, p.requote_threshold_ticks, 0,
                                                 p.requote_ns, now_ns)
    if ask_qty <= 0 or ask > own_extreme(ctx, SIDE_BUY):
        st.coid_ask, st.sent_ask_ns = keep_quote(ctx, 0, st.coid_ask, st.sent_ask_ns, SIDE_SELL,
                                                 ask, ask_qty, p.requote_threshold_ticks, 0,
                                                 p.requote_ns, now_ns)


@njit(cache=True)
def mm_on_market(ctx, st, p, md, n_md, now_ns):
    inst = ctx.inst[0]
    for j in range(n_md):
        if md[j].kind == MSG_TRADE and md[j].instrument_id == inst:
            mm_observe_trade(p, st, md[j].px_ticks, st.last_mid_x2)
    mm_requote(ctx, st, p, now_ns)
    ok = is_valid(ctx.px, ctx.meta, inst) and ctx.meta[inst, META_HALTED] == 0
    st.last_mid_x2 = mid_x2(ctx.px, ctx.meta, inst) if ok else 0


@njit(cache=True)
def mm_on_exec(ctx, st, p, ex, n_ex, now_ns):
    mm_requote(ctx, st, p, now_ns)   # a fill moves the inventory skew; an ack frees a side


@njit(cache=True)
def mm_on_timer(ctx, st, p, now_ns):
    mm_requote(ctx, st, p, now_ns)   # the requote interval may have passed


@njit(cache=True)
def _mm_warm(p, st, px, qty, meta, inst, md, n):
    for j in range(n):
        rec = md[j]
        if rec.instrument_id != inst:
            continue
        if rec.kind == MSG_TRADE:   # as the hooks: distance from the last valid mid
            mm_observe_trade(p, st, rec.px_ticks, valid_mid_x2(px, meta, inst))
        book_apply_market(px, qty, meta, rec)
        mm_observe_mid(p, st, valid_mid_x2(px, meta, inst), rec.recv_ts_ns)


class MarketMaking(Strategy):
    """Avellaneda-Stoikov market maker on one instrument (see the module docstring)."""

    kind = "market_making"
    Params = MarketMakingParams
    n_instruments = 1
    on_market = staticmethod(mm_on_market)
    on_exec = staticmethod(mm_on_exec)
    on_timer = staticmethod(mm_on_timer)

    def __init__(self, params, instruments, strategy_id, shard=0):
        super().__init__(params, instruments, strategy_id, shard)
        self._warm = None

    def state_fields(self):
        return STATE_FIELDS

    def derive(self) -> dict:
        p = self.params
        return {"requote_ns": p.min_requote_interval_ms * 1e6, "sample_ns": p.sigma_sample_ms * 1e6,
                "sigma_alpha": _alpha(p.sigma_halflife_samples),
                "k_alpha": _alpha(p.k_halflife_trades)}

    def init_state(self, st) -> None:
        if self._warm is not None:
            for name in ("var", "n_samples", "sample_mid_x2", "dist"):
                st[name] = self._warm[name]
            return
        st["dist"] = 1.0 / self.params.k_init
        if self.params.sigma_init_ticks > 0:
            st["var"] = self.params.sigma_init_ticks ** 2 * self.params.sigma_sample_ms * 1e-3
            st["n_samples"] = self.params.min_sigma_samples

    def warm_up(self, records) -> None:
        """Prime sigma and k from historical market records of our instrument (cold).

        The estimates are kept and copied into every state made afterwards; books, orders and
        inventory are not (a warm-up never trades)."""
        inst = self.instruments[0].instrument_id
        book = L2Book(inst, 64)
        self._warm = None
        state = self.make_state(*book.arrays)
        book = L2Book(inst, 64)
        _mm_warm(state.p[0], state.st[0], book.px, book.qty, book.meta, inst, records,
                 len(records))
        self._warm = state.st[0].copy()
