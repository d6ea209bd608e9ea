"""Microstructure alpha: a linear forecast of the short-horizon mid return from order-book and
trade-flow features, fitted by ridge regression, traded when it beats its costs. Runs in a
strategy process (live) or the backtest; the hooks and ``msa_*`` kernels are HOT PATH (@njit,
no allocation); the class, ``fit_samples`` and ``ridge_fit`` are cold (the fit command,
``python run.py fit microstructure_alpha --data F``: pipeline/commands/fit.py).

Features, updated after every market batch of the instrument (clock-time EWMAs with half-life
``feature_halflife_ms``, features.py):
  x_ofi     order-flow imbalance (Cont, Kukanov and Stoikov 2014, "The price impact of order
            book events", J. Fin. Econometrics 12(1)): EWMA of e_n per book update divided by
            the EWMA of the mean touch size: dimensionless
  x_tsi     trade-sign imbalance by the tick rule (Lee and Ready 1991, "Inferring trade
            direction from intraday data", J. of Finance 46(2)): a trade above the previous
            trade price is a buy, below a sell, at it the previous sign; EWMA(sign x qty) /
            EWMA(qty), in [-1, 1]
  x_spread  spread change: (spread - EWMA spread) / EWMA spread
  x_depth   depth change: depth imbalance over ``depth_levels`` levels less its EWMA
  x_micro   microprice deviation (Stoikov 2018, "The micro-price", Quant. Finance 18(12), its
            size-weighted first-order form): (microprice - mid) / spread, in [-1/2, 1/2]

Model: alpha = intercept_bps + coef_ofi x_ofi + coef_tsi x_tsi + coef_spread x_spread +
coef_depth x_depth + coef_micro x_micro, the forecast of the mid's return over the next
``horizon_ms`` in basis points. The coefficients come from ``ridge_fit``: the closed form
b = (Z'Z + ridge n I)^-1 Z'(y - mean y) on standardised features Z (Hoerl and Kennard 1970,
"Ridge regression", Technometrics 12(1)), mapped back to raw units, the intercept unpenalised.
``fit_samples`` builds (X, y) from a recording by the same feature kernels on a grid of
``sample_ms``, y = the mid's return from each sample to the one horizon_ms later. Fit on data
(recordings, simulator seeds) other than the data you evaluate on; the fit command's default
hold-out is the last 30 % of the samples.

Rule: a taker. When flat and |alpha| > alpha_threshold_bps + taker_fee_bps + half the quoted
spread in bps (the cost of crossing), send an IOC at the opposite touch for ``order_notional``
of quote currency in the alpha's direction; leave (IOC at the touch) once ``horizon_ms`` has
passed, or earlier when alpha points the other way beyond the same hurdle. One entry per
horizon; nothing for ``reject_backoff_ms`` after a reject; nothing into an invalid, one-sided,
crossed or halted book (features are not updated on such a book either). No resting orders.

Parameters (``[strategies].params``; units in the names):
  coef_ofi, coef_tsi, coef_spread, coef_depth, coef_micro   bps per unit of the feature
  intercept_bps          bps
  alpha_threshold_bps    extra edge alpha must show beyond fees and half the spread, bps
  taker_fee_bps          the venue's taker fee, bps
  horizon_ms             forecast and holding horizon, milliseconds
  feature_halflife_ms    half-life of the feature EWMAs, milliseconds
  depth_levels           book levels per side in the depth imbalance
  order_notional         quote-currency size of one entry
  reject_backoff_ms      send nothing this long after a reject or risk denial
The default coefficients are a fit on simulator seed 7 (examples/catalogue_b.toml, BTC-USD@simA,
300 s at the backtest's event rate: 2,990 samples, 2,093 fitted, R^2 0.055 in sample and 0.034
on the held-out 30 %; docs/catalogue_b.md); refit for another market:
``python run.py fit microstructure_alpha --data sim --config examples/catalogue_b.toml
--instrument BTC-USD@simA --seed 7 --duration 300``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import META_HALTED, L2Book, book_apply_market, is_valid
from shm.records import MSG_TRADE, ORD_IOC, SIDE_BUY, SIDE_SELL
from strategies.base import Strategy, last_reject_ns, open_on, place, position
from strategies.features import (EWMA_DTYPE, OFI_DTYPE, NO_LOTS, depth_imbalance,
                                 ewma_mean, ewma_update_at, make_ewma_halflife, make_ofi,
                                 microprice_ticks, ofi_update, spread_ticks)
from market.book import ASK, BID

FEATURES = ("ofi", "tsi", "spread", "depth", "micro")
N_FEATURES = len(FEATURES)
# EWMA slots
E_OFI, E_TOUCH, E_SIGNQ, E_QTY, E_SPREAD, E_DEPTH = 0, 1, 2, 3, 4, 5
N_EWMA = 6


@dataclass(frozen=True)
class MicrostructureAlphaParams:
    coef_ofi: float = opt(9.34, "bps per unit of order-flow imbalance")
    coef_tsi: float = opt(0.683, "bps per unit of trade-sign imbalance")
    coef_spread: float = opt(-0.482, "bps per unit of relative spread change")
    coef_depth: float = opt(0.187, "bps per unit of depth-imbalance change")
    coef_micro: float = opt(0.465, "bps per unit of microprice deviation")
    intercept_bps: float = opt(-0.169, "constant of the forecast, bps")
    alpha_threshold_bps: float = opt(0.2, "edge beyond fees and half the spread, bps", ge=0)
    taker_fee_bps: float = opt(1.0, "taker fee, bps", ge=0)
    horizon_ms: float = opt(1000.0, "forecast and holding horizon, ms", gt=0)
    feature_halflife_ms: float = opt(200.0, "half-life of the feature EWMAs, ms", gt=0)
    depth_levels: int = opt(3, "levels per side in the depth imbalance", ge=1, le=64)
    order_notional: float = opt(2_000.0, "size of one entry, quote currency", gt=0)
    reject_backoff_ms: float = opt(1_000.0, "send nothing this long after a reject", ge=0)


def feature_state(instrument_id: int) -> list:
    """The features' state fields (the OFI rows are indexed by instrument id, as the books)."""
    return [("ew", EWMA_DTYPE, (N_EWMA,)), ("ofi", OFI_DTYPE, (instrument_id + 1,)),
            ("last_trade_px", "i8"), ("last_sign", "f8"), ("x", "f8", (N_FEATURES,)),
            ("n_updates", "i8")]


TRADE_STATE = [("alpha", "f8"), ("hurdle", "f8"), ("entry_ns", "i8"), ("target", "i8"),
               ("n_entries", "i8"), ("n_exits", "i8")]


def init_features(fs, halflife_ms: float) -> None:
    """Cold: feature state in record ``fs`` (a strategy state or a feature_state record)."""
    fs["ew"][:] = make_ewma_halflife(halflife_ms * 1e6, N_EWMA)
    fs["ofi"][:] = make_ofi(len(fs["ofi"]) - 1)


@njit(cache=True)
def msa_update(fs, px, qty, meta, inst, md, n_md, levels, now_ns):
    """Update the features from a batch already applied to the books; False (features not
    updated) when the book is not valid."""
    for j in range(n_md):
        r = md[j]
        if r.kind == MSG_TRADE and r.instrument_id == inst:
            if fs.last_trade_px != 0:
                if r.px_ticks > fs.last_trade_px:
                    fs.last_sign = 1.0
                elif r.px_ticks < fs.last_trade_px:
                    fs.last_sign = -1.0
            fs.last_trade_px = r.px_ticks
            if fs.last_sign != 0.0:
                ewma_update_at(fs.ew, E_SIGNQ, fs.last_sign * r.qty_lots, now_ns)
                ewma_update_at(fs.ew, E_QTY, float(r.qty_lots), now_ns)
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        ofi_update(fs.ofi, px, qty, meta, inst)       # drops its reference
        return False
    e = ofi_update(fs.ofi, px, qty, meta, inst)
    if e != NO_LOTS:
        ewma_update_at(fs.ew, E_OFI, float(e), now_ns)
    ewma_update_at(fs.ew, E_TOUCH, 0.5 * (qty[inst, BID, 0] + qty[inst, ASK, 0]), now_ns)
    sp = float(spread_ticks(px, meta, inst))
    ewma_update_at(fs.ew, E_SPREAD, sp, now_ns)
    di = depth_imbalance(px, qty, meta, inst, levels)
    ewma_update_at(fs.ew, E_DEPTH, di, now_ns)
    touch = ewma_mean(fs.ew, E_TOUCH)
    fs.x[0] = ewma_mean(fs.ew, E_OFI) / touch if touch > 0 and fs.ew[E_OFI].n_updates > 0 \
        else 0.0
    q = ewma_mean(fs.ew, E_QTY)
    fs.x[1] = ewma_mean(fs.ew, E_SIGNQ) / q if fs.ew[E_QTY].n_updates > 0 and q > 0 else 0.0
    msp = ewma_mean(fs.ew, E_SPREAD)
    fs.x[2] = (sp - msp) / msp if msp > 0 else 0.0
    fs.x[3] = di - ewma_mean(fs.ew, E_DEPTH)
    mid = 0.5 * (px[inst, BID, 0] + px[inst, ASK, 0])
    fs.x[4] = (microprice_ticks(px, qty, meta, inst) - mid) / sp
    fs.n_updates += 1
    return True


@njit(cache=True)
def msa_alpha(p, x):
    return (p.intercept_bps + p.coef_ofi * x[0] + p.coef_tsi * x[1] + p.coef_spread * x[2]
            + p.coef_depth * x[3] + p.coef_micro * x[4])


@njit(cache=True)
def _send(ctx, p, want, now_ns):
    inst = ctx.inst[0]
    diff = want - position(ctx, 0)
    if diff > 0:
        place(ctx, 0, SIDE_BUY, ORD_IOC, ctx.px[inst, ASK, 0], diff, now_ns)
    elif diff < 0:
        place(ctx, 0, SIDE_SELL, ORD_IOC, ctx.px[inst, BID, 0], -diff, now_ns)


@njit(cache=True)
def msa_trade(ctx, st, p, now_ns):
    inst = ctx.inst[0]
    px, meta = ctx.px, ctx.meta
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0 or st.n_updates < 2:
        return
    last = last_reject_ns(ctx)
    if (last != 0 and now_ns - last < p.reject_backoff_ns) or open_on(ctx, 0):
        return
    bid = px[inst, BID, 0]
    ask = px[inst, ASK, 0]
    half_bps = (ask - bid) / (ask + bid) * 1e4
    hurdle = p.alpha_threshold_bps + p.taker_fee_bps + half_bps
    a = msa_alpha(p, st.x)
    st.alpha = a
    st.hurdle = hurdle
    pos = position(ctx, 0)
    if st.target != 0:
        expired = now_ns - st.entry_ns >= p.horizon_ns
        flipped = (st.target > 0 and a < -hurdle) or (st.target < 0 and a > hurdle)
        if expired or flipped:
            st.target = 0
            st.n_exits += 1
    elif pos == 0 and (st.entry_ns == 0 or now_ns - st.entry_ns >= p.horizon_ns):
        if a > hurdle or a < -hurdle:
            lots = np.int64(math.floor(p.order_notional / ((ask + bid) * 0.5 * p.tick * p.lot)
                                       + 0.5))
            if lots > 0:
                st.target = lots if a > 0 else -lots
                st.entry_ns = now_ns
                st.n_entries += 1
    if st.target != pos:
        _send(ctx, p, st.target, now_ns)


@njit(cache=True)
def msa_on_market(ctx, st, p, md, n_md, now_ns):
    inst = ctx.inst[0]
    if msa_update(st, ctx.px, ctx.qty, ctx.meta, inst, md, n_md, p.depth_levels, now_ns):
        msa_trade(ctx, st, p, now_ns)


@njit(cache=True)
def msa_on_exec(ctx, st, p, ex, n_ex, now_ns):
    msa_trade(ctx, st, p, now_ns)      # an unfilled IOC is retried, an exit is completed


@njit(cache=True)
def msa_on_timer(ctx, st, p, now_ns):
    msa_trade(ctx, st, p, now_ns)      # the horizon passes in a quiet market too


class MicrostructureAlpha(Strategy):
    """Ridge-fitted linear alpha over microstructure features (module docstring)."""

    kind = "microstructure_alpha"
    Params = MicrostructureAlphaParams
    n_instruments = 1
    on_market = staticmethod(msa_on_market)
    on_exec = staticmethod(msa_on_exec)
    on_timer = staticmethod(msa_on_timer)

    def state_fields(self):
        return feature_state(self.instruments[0].instrument_id) + TRADE_STATE

    def init_state(self, st) -> None:
        init_features(st, self.params.feature_halflife_ms)

    def derive(self) -> dict:
        p = self.params
        ins = self.instruments[0]
        return {"horizon_ns": p.horizon_ms * 1e6, "reject_backoff_ns": p.reject_backoff_ms * 1e6,
                "tick": float(ins.tick_size), "lot": float(ins.lot_size)}


# =============================================================================================
# Cold: the fit (run.py fit microstructure_alpha)
# =============================================================================================
@njit(cache=True)
def _sample_loop(recs, inst, fs, px, qty, meta, levels, sample_ns, X, mids, ts):
    """Apply records one by one to the book, update the features as the strategy does, and
    take a sample (features, mid x2, time) on a grid of sample_ns; returns the count."""
    n = 0
    next_t = np.int64(-1)
    for j in range(recs.shape[0]):
        r = recs[j]
        if r.instrument_id != inst:
            continue
        t = r.exch_ts_ns if r.exch_ts_ns != 0 else r.recv_ts_ns
        book_apply_market(px, qty, meta, r)
        ok = msa_update(fs, px, qty, meta, inst, recs[j:j + 1], 1, levels, t)
        if next_t < 0:
            next_t = t
        if t >= next_t and ok and n < X.shape[0]:
            for k in range(N_FEATURES):
                X[n, k] = fs.x[k]
            mids[n] = px[inst, BID, 0] + px[inst, ASK, 0]
            ts[n] = t
            n += 1
            next_t += sample_ns * (1 + (t - next_t) // sample_ns)
    return n


def fit_samples(records, instrument_id: int, horizon_ms: float, sample_ms: float = 100.0,
                halflife_ms: float = 200.0, depth_levels: int = 3):
    """Cold: (X [n, 5], y [n] forward mid return in bps) from MARKET_DTYPE records of one
    instrument. y_k is the return from sample k to the first sample at least horizon_ms
    later; samples without one are dropped. ValueError when nothing can be fitted."""
    recs = np.ascontiguousarray(records)
    mine = recs[recs["instrument_id"] == instrument_id]
    if len(mine) == 0:
        raise ValueError(f"no records of instrument {instrument_id}")
    t = np.where(mine["exch_ts_ns"] != 0, mine["exch_ts_ns"], mine["recv_ts_ns"])
    cap = int((int(t.max()) - int(t.min())) / (sample_ms * 1e6)) + 2
    X = np.zeros((cap, N_FEATURES))
    mids = np.zeros(cap)
    ts = np.zeros(cap, dtype=np.int64)
    fs = np.zeros(1, dtype=np.dtype(feature_state(instrument_id), align=True))
    init_features(fs[0], halflife_ms)
    book = L2Book(instrument_id, 64)
    n = _sample_loop(mine, instrument_id, fs[0], book.px, book.qty, book.meta, depth_levels,
                     np.int64(sample_ms * 1e6), X, mids, ts)
    X, mids, ts = X[:n], mids[:n], ts[:n]
    fwd = np.searchsorted(ts, ts + int(horizon_ms * 1e6))
    keep = fwd < n
    if keep.sum() < 10 * N_FEATURES:
        raise ValueError(f"only {int(keep.sum())} samples with a {horizon_ms:g} ms forward "
                         "return: too little data to fit (a longer recording is needed)")
    y = (mids[fwd[keep]] / mids[keep] - 1.0) * 1e4
    return X[keep], y


def ridge_fit(X, y, ridge: float = 1e-3):
    """Cold: ridge regression in closed form on standardised columns (intercept unpenalised):
    returns (coefficients in raw feature units, intercept). ``ridge`` is per sample (the
    penalty is ridge x n)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, k = X.shape
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd
    yc = y - y.mean()
    b = np.linalg.solve(Z.T @ Z + ridge * n * np.eye(k), Z.T @ yc)
    coef = b / sd
    return coef, float(y.mean() - mu @ coef)


def r_squared(X, y, coef, intercept) -> float:
    resid = y - (X @ coef + intercept)
    tot = ((y - y.mean()) ** 2).sum()
    return float(1.0 - (resid ** 2).sum() / tot) if tot > 0 else 0.0
