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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import (META_HALTED, L2Book, best_ask_px, best_bid_px, book_apply_market,
                         is_valid, mid_x2, valid_mid_x2)
from shm.records import MSG_TRADE, ORD_POST_ONLY, SIDE_BUY, SIDE_SELL
from strategies.base import (
    OS_COID, OS_LEAVES, OS_NEW_PX, OS_PX, OS_SIDE, OS_STATE, OST_FREE, OST_LIVE, PS_POS,
    Strategy, cancel_all, find_order, inst_id, make_ctl, make_orders, make_positions,
    send_cancel, send_new, send_replace,
)


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

    def validate(self):
        if self.max_inventory_lots < self.order_qty_lots:
            yield (f"max_inventory_lots = {self.max_inventory_lots}: must be >= "
                   f"order_qty_lots ({self.order_qty_lots})")


# fp: float64 parameters
F_GAMMA, F_TAU, F_QTY, F_MAX_INV, F_MAX_SKEW, F_MIN_HALF, F_REQUOTE, F_REQUOTE_NS = range(8)
F_SAMPLE_NS, F_SIGMA_ALPHA, F_K_ALPHA, F_MIN_SAMPLES = 8, 9, 10, 11
F_WORDS = 12
# est: float64 estimator state and the last computed model values (read by tests and reports)
E_VAR, E_N_SAMPLES, E_SAMPLE_MID_X2, E_NEXT_SAMPLE_NS, E_DIST, E_LAST_MID_X2 = range(6)
E_R, E_DELTA, E_BID, E_ASK, E_SIGMA2, E_K = range(6, 12)
E_WORDS = 12
# iw: int64 words (client order ids do not fit a float64 exactly)
I_COID_BID, I_COID_ASK, I_SENT_BID, I_SENT_ASK = range(4)
I_WORDS = 4


def _alpha(halflife: float) -> float:
    return 1.0 - 0.5 ** (1.0 / halflife)


@njit(cache=True)
def mm_observe_mid(fp, est, mid2, now_ns):
    """Sample the mid for the sigma estimator (mid2 = bid + ask, 0 = no mid)."""
    if mid2 <= 0:
        return
    if est[E_NEXT_SAMPLE_NS] == 0.0:
        est[E_SAMPLE_MID_X2] = mid2
        est[E_NEXT_SAMPLE_NS] = now_ns + fp[F_SAMPLE_NS]
        return
    if now_ns < est[E_NEXT_SAMPLE_NS]:
        return
    n = 1.0 + math.floor((now_ns - est[E_NEXT_SAMPLE_NS]) / fp[F_SAMPLE_NS])
    dm = (mid2 - est[E_SAMPLE_MID_X2]) * 0.5
    obs = dm * dm / n
    if est[E_N_SAMPLES] == 0.0 and est[E_VAR] == 0.0:
        est[E_VAR] = obs
    else:
        est[E_VAR] += fp[F_SIGMA_ALPHA] * (obs - est[E_VAR])
    est[E_N_SAMPLES] += n
    est[E_SAMPLE_MID_X2] = mid2
    est[E_NEXT_SAMPLE_NS] += n * fp[F_SAMPLE_NS]


@njit(cache=True)
def mm_observe_trade(fp, est, trade_px, ref_mid2):
    """One trade for the k estimator: distance from the mid that was quoted before it."""
    if ref_mid2 <= 0:
        return
    d = abs(2.0 * trade_px - ref_mid2) * 0.5
    if d < 0.5:
        d = 0.5
    est[E_DIST] += fp[F_K_ALPHA] * (d - est[E_DIST])


@njit(cache=True)
def mm_quotes(fp, est, mid2, inventory_lots):
    """Avellaneda-Stoikov quotes (bid, ask) in ticks for the current estimates; 0, 0 if sigma is
    not known yet. Also stores r, delta, sigma^2, k in est."""
    # Single exit in the kernels below: with early returns numba's reference-count pruning
    # gives up and each array argument costs an atomic incref/decref pair per call.
    bid = np.int64(0)
    ask = np.int64(0)
    if est[E_N_SAMPLES] >= fp[F_MIN_SAMPLES]:
        sigma2 = est[E_VAR] / (fp[F_SAMPLE_NS] * 1e-9)
        k = 1.0 / est[E_DIST]
        gamma = fp[F_GAMMA]
        tau = fp[F_TAU]
        skew = inventory_lots / fp[F_QTY] * gamma * sigma2 * tau
        skew = min(max(skew, -fp[F_MAX_SKEW]), fp[F_MAX_SKEW])
        r = mid2 * 0.5 - skew
        delta = gamma * sigma2 * tau + (2.0 / gamma) * math.log(1.0 + gamma / k)
        half = max(delta * 0.5, fp[F_MIN_HALF])
        est[E_R] = r
        est[E_DELTA] = delta
        est[E_SIGMA2] = sigma2
        est[E_K] = k
        bid = np.int64(math.floor(r - half))
        ask = np.int64(math.ceil(r + half))
    return bid, ask


@njit(cache=True)
def _manage_side(out, k, ctl, orders, iw, coid_word, sent_word, side, want_px, want_qty,
                 fp, now_ns):
    s = find_order(orders, iw[coid_word])
    can_send = iw[sent_word] == 0 or now_ns - iw[sent_word] >= fp[F_REQUOTE_NS]
    if s < 0:
        iw[coid_word] = 0
        if want_px > 0 and want_qty > 0 and can_send:
            k, s = send_new(out, k, ctl, orders, 0, side, ORD_POST_ONLY, want_px, want_qty, now_ns)
            if s >= 0:
                iw[coid_word] = orders[s, OS_COID]
                iw[sent_word] = now_ns
    elif orders[s, OS_STATE] == OST_LIVE:   # otherwise a request is in flight: wait for it
        if want_px <= 0 or want_qty <= 0:
            k = send_cancel(out, k, ctl, orders, s, now_ns)
        elif ((abs(want_px - orders[s, OS_PX]) >= fp[F_REQUOTE]
               or want_qty != orders[s, OS_LEAVES]) and can_send):
            k = send_replace(out, k, ctl, orders, s, want_px, want_qty, now_ns)
            iw[sent_word] = now_ns
    return k


@njit(cache=True)
def mm_kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out):
    ctl, orders, pos, fp, est, iw = state
    # the runtime has applied md to the books and ex to orders / positions (strategies/host.py)
    inst = inst_id(ctl, 0)
    ref_mid2 = est[E_LAST_MID_X2]
    for j in range(n_md):
        if md[j].kind == MSG_TRADE and md[j].instrument_id == inst:
            mm_observe_trade(fp, est, md[j].px_ticks, ref_mid2)
    k = 0
    ok = is_valid(px, meta, inst) and meta[inst, META_HALTED] == 0
    mid2 = mid_x2(px, meta, inst) if ok else 0
    bid = np.int64(0)
    ask = np.int64(0)
    inv = pos[0, PS_POS]
    if mid2 > 0:
        mm_observe_mid(fp, est, mid2, now_ns)
        bid, ask = mm_quotes(fp, est, mid2, inv)
    est[E_LAST_MID_X2] = mid2
    if bid <= 0 or ask <= 0:
        # Invalid, crossed, locked, halted or one-sided book, or no volatility estimate yet:
        # we cannot price, so nothing of ours rests in the book.
        k = cancel_all(out, k, ctl, orders, now_ns)
    else:
        best_bid = best_bid_px(px, meta, inst)
        best_ask = best_ask_px(px, meta, inst)
        if bid >= best_ask:   # post-only would be rejected: join one tick inside the touch
            bid = best_ask - 1
        if ask <= best_bid:
            ask = best_bid + 1
        qty_q = np.int64(fp[F_QTY])
        max_inv = fp[F_MAX_INV]
        bid_qty = min(qty_q, np.int64(max_inv - inv)) if inv < max_inv else 0
        ask_qty = min(qty_q, np.int64(max_inv + inv)) if inv > -max_inv else 0
        est[E_BID] = bid
        est[E_ASK] = ask
        # Never cross our own resting order (self-trade): a quote that would reach our other
        # side's old or pending price waits until that side has moved away (next call).
        if bid_qty <= 0 or bid < _own_extreme(orders, SIDE_SELL):
            k = _manage_side(out, k, ctl, orders, iw, I_COID_BID, I_SENT_BID, SIDE_BUY, bid,
                             bid_qty, fp, now_ns)
        if ask_qty <= 0 or ask > _own_extreme(orders, SIDE_BUY):
            k = _manage_side(out, k, ctl, orders, iw, I_COID_ASK, I_SENT_ASK, SIDE_SELL, ask,
                             ask_qty, fp, now_ns)
    return k


@njit(cache=True)
def _own_extreme(orders, side):
    """Highest price of our buy orders / lowest of our sells, counting both the working and a
    pending replace price; 0 (buys) or a huge value (sells) when there is none."""
    best = np.int64(0) if side == SIDE_BUY else np.int64(1 << 62)
    for s in range(orders.shape[0]):
        if orders[s, OS_STATE] != OST_FREE and orders[s, OS_SIDE] == side:
            for p in (orders[s, OS_PX], orders[s, OS_NEW_PX]):
                if (side == SIDE_BUY and p > best) or (side == SIDE_SELL and 0 < p < best):
                    best = p
    return best


@njit(cache=True)
def _mm_warm(fp, est, px, qty, meta, inst, md, n):
    for j in range(n):
        rec = md[j]
        if rec.instrument_id != inst:
            continue
        if rec.kind == MSG_TRADE:   # as the kernel: distance from the last valid mid
            mm_observe_trade(fp, est, rec.px_ticks, valid_mid_x2(px, meta, inst))
        book_apply_market(px, qty, meta, rec)
        mm_observe_mid(fp, est, valid_mid_x2(px, meta, inst), rec.recv_ts_ns)


class MarketMaking(Strategy):
    """Avellaneda-Stoikov market maker on one instrument (see the module docstring)."""

    kind = "market_making"
    Params = MarketMakingParams
    n_instruments = 1
    kernel = staticmethod(mm_kernel)

    def __init__(self, params, instruments, strategy_id):
        super().__init__(params, instruments, strategy_id)
        self._est0 = None

    def _fp(self) -> np.ndarray:
        p = self.params
        fp = np.zeros(F_WORDS, dtype=np.float64)
        fp[F_GAMMA] = p.gamma
        fp[F_TAU] = p.horizon_s
        fp[F_QTY] = p.order_qty_lots
        fp[F_MAX_INV] = p.max_inventory_lots
        fp[F_MAX_SKEW] = p.max_skew_ticks
        fp[F_MIN_HALF] = p.min_half_spread_ticks
        fp[F_REQUOTE] = p.requote_threshold_ticks
        fp[F_REQUOTE_NS] = p.min_requote_interval_ms * 1e6
        fp[F_SAMPLE_NS] = p.sigma_sample_ms * 1e6
        fp[F_SIGMA_ALPHA] = _alpha(p.sigma_halflife_samples)
        fp[F_K_ALPHA] = _alpha(p.k_halflife_trades)
        fp[F_MIN_SAMPLES] = p.min_sigma_samples
        return fp

    def make_state(self) -> tuple:
        ctl = make_ctl(self.strategy_id, self.instruments)
        est = np.zeros(E_WORDS, dtype=np.float64)
        if self._est0 is not None:
            est[:] = self._est0
        else:
            est[E_DIST] = 1.0 / self.params.k_init
            if self.params.sigma_init_ticks > 0:
                est[E_VAR] = self.params.sigma_init_ticks ** 2 * self.params.sigma_sample_ms * 1e-3
                est[E_N_SAMPLES] = self.params.min_sigma_samples
        return (ctl, make_orders(8), make_positions(1), self._fp(), est,
                np.zeros(I_WORDS, dtype=np.int64))

    def warm_up(self, records) -> None:
        """Prime sigma and k from historical market records of our instrument (cold).

        The estimates are kept and copied into every state made afterwards; books, orders and
        inventory are not (a warm-up never trades)."""
        inst = self.instruments[0].instrument_id
        book = L2Book(inst, 64)
        fp = self._fp()
        est = self.make_state()[4]
        _mm_warm(fp, est, book.px, book.qty, book.meta, inst, records, len(records))
        est[E_NEXT_SAMPLE_NS] = 0.0   # live time restarts the sampling clock
        est[E_LAST_MID_X2] = 0.0
        self._est0 = est.copy()
