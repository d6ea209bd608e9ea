"""Statistical arbitrage over a universe of N instruments: a pair scan with rolling correlation,
a cointegration (OLS) residual per pair and Avellaneda-Lee s-scores of that residual.
Runs in a strategy process (live) or the backtest; the hooks and their helpers are HOT PATH
(@njit, no allocation), the class is cold.

Source. M. Avellaneda and J.-H. Lee (2010), "Statistical arbitrage in the U.S. equities
market", Quantitative Finance 10(7), 761-782: the residual of a factor regression, integrated,
is modelled as an Ornstein-Uhlenbeck process fitted by an AR(1) regression over the estimation
window; its s-score s = (X - m) / sigma_eq is traded (enter beyond +-s_entry, leave inside
+-s_exit). Here the "factor" of each pair (i, j) is the other leg's log price (Engle-Granger
cointegration regression, as in Vidyamurthy 2004, "Pairs Trading", ch. 5), and only pairs whose
returns are correlated at least ``correlation_threshold`` are eligible. Baskets (a residual
against several instruments or the first principal component) are not implemented: every
candidate is a pair, and an instrument may be a leg of several pairs (its target position is
the sum of its legs).

Model, on a sampling grid of ``sample_ms`` (log mids l_k of the N instruments; a sample is taken
only when every book is valid):
- the fit window is the ``lookback_window`` samples before the newest one (the newest is scored
  out of sample, so a sudden dislocation cannot bend the fit that judges it);
- returns r_k(t) = l_k(t) - l_k(t-1) within the window; for each pair i < j the Pearson
  correlation rho_ij of r_i and r_j;
- OLS of l_i on l_j over the window: l_i = a + b l_j + X; b is the hedge ratio (an elasticity:
  the j leg is b times the i leg's notional);
- AR(1) of the residual: X(t+1) = c + d X(t) + e; for |d| < 1 the (OU) equilibrium is
  m = c / (1 - d), sigma_eq = sqrt(var(e) / (1 - d^2)), half-life = ln 2 / -ln d samples
  (0 for d <= 0: the residual reverts within one sample; |d| < 1 is required), and
  the s-score of the newest sample is s = (X(T) - m) / sigma_eq with X(T) from the window's
  a and b.
- a pair is eligible when rho >= correlation_threshold, b > 0 and |d| < 1 with a half-life
  no longer than lookback_window / 2 samples (Avellaneda-Lee's "fast mean reversion" filter).

Rule, per pair, with dir = +1 long the spread (long i, short j) and -1 short it:
- the scan (every sample, on the timer: nothing of it runs per market record) ranks the flat
  eligible pairs with |s| >= zscore_entry and a deviation |X - m| of at least ``cost_bps``
  (a round trip of two legs must be able to pay its fees), and opens the most dislocated
  first (largest |s|) while the universe's gross notional of open pairs stays within
  ``max_gross_notional``; s >= zscore_entry opens dir = -1, s <= -zscore_entry dir = +1;
- an open pair leaves when s is back inside zscore_exit on its side (dir = -1: s <= zscore_exit;
  dir = +1: s >= -zscore_exit), stops out at |s| >= zscore_stop against it, and is closed when
  the model no longer holds (not eligible any more);
- sizes: the i leg is ``pair_notional`` of quote currency, the j leg b times that; both are
  scaled down so neither leg exceeds pair_notional (the per-pair position cap).

Orders: each instrument is traded towards the sum of its legs' targets with an IOC limit
``slippage_bps`` through the touch (marketable on purpose: the dislocation is the signal and
decays within its half-life; a resting order would be picked off by the reversion it bets on).
An instrument with an order in flight waits; nothing is sent for ``reject_backoff_ms`` after a
reject or risk denial; nothing is sent into an invalid, one-sided, crossed or halted book. No
resting orders: nothing to spoof, layer or self-cross.

Cost: a scan is O(N^2 x lookback_window) (two passes per pair after one per instrument).
Measured (sa_scan alone, on a shared 2-core machine at load ~14, so an upper bound): N = 8 with
100 samples 0.41 ms, N = 8 with 300 samples 1.2 ms, N = 16 with 200 samples 3.2 ms: the 1 ms
target holds for the example's universe, not for the largest one allowed (``max_instruments``
16). on_market does nothing; the hook cost per market record is the runtime's.

Parameters (``[strategies].params``; units in the names):
  lookback_window         samples (returns) in the correlation, cointegration and AR(1) fits
  sample_ms               sampling interval of the log mids, milliseconds
  correlation_threshold   minimum Pearson correlation of the two legs' returns (-1..1)
  zscore_entry            open a pair at |s| >= this (s-score, dimensionless)
  zscore_exit             close at |s| <= this on the pair's side
  zscore_stop             stop out at |s| >= this against the position
  cost_bps                minimum deviation |X - m| (basis points of log price) to open
  pair_notional           quote-currency notional cap of each leg of one pair
  max_gross_notional      quote-currency cap on the gross notional of all open pairs
  slippage_bps            IOC limit this far through the touch, basis points
  reject_backoff_ms       send nothing this long after a reject or risk denial
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid, valid_mid_x2
from shm.records import ORD_IOC, SIDE_BUY, SIDE_SELL
from strategies.base import Strategy, last_reject_ns, open_on, place, position

MAX_INSTRUMENTS = 16


@dataclass(frozen=True)
class StatArbParams:
    lookback_window: int = opt(100, "samples (returns) in the rolling fits", ge=20, le=5000)
    sample_ms: float = opt(100.0, "sampling interval of the log mids, milliseconds", gt=0)
    correlation_threshold: float = opt(0.2, "minimum correlation of the legs' returns",
                                       ge=-1.0, le=1.0)
    zscore_entry: float = opt(2.0, "open a pair at |s-score| >= this", gt=0)
    zscore_exit: float = opt(0.5, "close at |s-score| <= this on the pair's side", ge=0)
    zscore_stop: float = opt(5.0, "stop out at |s-score| >= this against the position", gt=0)
    cost_bps: float = opt(4.0, "minimum residual deviation |X - m| to open, bps", ge=0)
    pair_notional: float = opt(5_000.0, "notional cap of each leg of a pair, quote currency",
                               gt=0)
    max_gross_notional: float = opt(40_000.0, "cap on the gross notional of all open pairs, "
                                    "quote currency", gt=0)
    slippage_bps: float = opt(1.0, "IOC limit this far through the touch, bps", ge=0)
    reject_backoff_ms: float = opt(1_000.0, "send nothing this long after a reject", ge=0)

    def validate(self):
        if not self.zscore_exit < self.zscore_entry < self.zscore_stop:
            yield (f"need zscore_exit < zscore_entry < zscore_stop, got zscore_exit = "
                   f"{self.zscore_exit}, zscore_entry = {self.zscore_entry}, zscore_stop = "
                   f"{self.zscore_stop}")
        if self.max_gross_notional < 2 * self.pair_notional:
            yield (f"max_gross_notional = {self.max_gross_notional}: must hold one pair "
                   f"(>= 2 x pair_notional = {2 * self.pair_notional})")


SCALARS = [
    ("next_sample_ns", "f8"), ("n_samples", "i8"), ("n_scans", "i8"), ("n_entries", "i8"),
    ("n_exits", "i8"), ("n_stops", "i8"), ("n_no_price", "i8"), ("n_eligible", "i8"),
    ("gross_notional", "f8"), ("best_abs_s", "f8"),
]


@njit(cache=True)
def _slot(st, n_inst, t):
    """Row of the ring holding sample t (0 = the oldest of the window of lookback + 1)."""
    cap = st.logs.shape[0] // n_inst
    return (st.n_samples - cap + t) % cap


@njit(cache=True)
def sa_fit_pair(st, n_inst, L, i, j):
    """Correlation of returns, OLS hedge ratio and the AR(1) / OU s-score of pair (i, j) over
    the window (the per-instrument means and return moments are in st.mean_l / mean_r / sd_r).
    Returns (corr, beta, s, deviation X - m in log units, half-life in samples); NaNs when the
    fit fails (no variation, |d| >= 1: not stationary)."""
    logs = st.logs
    mi = st.mean_l[i]
    mj = st.mean_l[j]
    ri = st.mean_r[i]
    rj = st.mean_r[j]
    sxy = 0.0
    sxx = 0.0
    cov_r = 0.0
    prev_i = 0.0
    prev_j = 0.0
    for t in range(L):
        row = _slot(st, n_inst, t) * n_inst
        li = logs[row + i]
        lj = logs[row + j]
        sxy += (lj - mj) * (li - mi)
        sxx += (lj - mj) * (lj - mj)
        if t > 0:
            cov_r += (li - prev_i - ri) * (lj - prev_j - rj)
        prev_i = li
        prev_j = lj
    nan = np.nan
    den = st.sd_r[i] * st.sd_r[j]
    corr = cov_r / (L - 1) / den if den > 0.0 else nan
    if sxx <= 0.0:
        return corr, nan, nan, nan, nan
    beta = sxy / sxx
    alpha = mi - beta * mj
    # AR(1) of the residual X(t) = l_i - a - b l_j: regress X(t+1) on X(t) within the window
    sx = 0.0
    sy = 0.0
    sxx2 = 0.0
    sxy2 = 0.0
    syy = 0.0
    x_prev = 0.0
    for t in range(L):
        row = _slot(st, n_inst, t) * n_inst
        x = logs[row + i] - alpha - beta * logs[row + j]
        if t > 0:
            sx += x_prev
            sy += x
            sxx2 += x_prev * x_prev
            sxy2 += x_prev * x
            syy += x * x
        x_prev = x
    row = _slot(st, n_inst, L) * n_inst
    x_last = logs[row + i] - alpha - beta * logs[row + j]    # the newest: out of sample
    n = float(L - 1)
    vx = sxx2 - sx * sx / n
    if vx <= 0.0:
        return corr, beta, nan, nan, nan
    d = (sxy2 - sx * sy / n) / vx
    if not (-1.0 < d < 1.0):
        return corr, beta, nan, nan, nan
    c = (sy - d * sx) / n
    # residual variance of the AR(1): SSE / n, SSE = Syy - d Sxy (centred sums)
    sse = (syy - sy * sy / n) - d * (sxy2 - sx * sy / n)
    if sse <= 0.0:
        return corr, beta, nan, nan, nan
    m = c / (1.0 - d)
    sig_eq = math.sqrt(sse / n / (1.0 - d * d))
    # d <= 0: the residual reverts within one sample (faster than any OU the grid resolves)
    half_life = -math.log(2.0) / math.log(d) if d > 0.0 else 0.0
    return corr, beta, (x_last - m) / sig_eq, x_last - m, half_life


@njit(cache=True)
def _instrument_moments(st, n_inst, L):
    """Mean log price and return moments of each instrument over the fit window: samples
    0..L-1 of the ring (the newest, sample L, is scored out of sample)."""
    logs = st.logs
    for k in range(n_inst):
        sl = 0.0
        sr = 0.0
        prev = 0.0
        for t in range(L):
            v = logs[_slot(st, n_inst, t) * n_inst + k]
            sl += v
            if t > 0:
                sr += v - prev
            prev = v
        st.mean_l[k] = sl / L
        st.mean_r[k] = sr / (L - 1)
        ss = 0.0
        for t in range(1, L):
            v = logs[_slot(st, n_inst, t) * n_inst + k]
            w = logs[_slot(st, n_inst, t - 1) * n_inst + k]
            ss += (v - w - st.mean_r[k]) ** 2
        st.sd_r[k] = math.sqrt(ss / (L - 1))


@njit(cache=True)
def _pair_gross(st, q):
    i = st.pi[q]
    j = st.pj[q]
    return (abs(st.qy[q]) * st.price[i] * st.lot[i] + abs(st.qx[q]) * st.price[j] * st.lot[j])


@njit(cache=True)
def sa_scan(st, p, n_inst):
    """Refit every pair, close what has to close, open the most dislocated eligible pairs
    within the gross cap, and recompute the per-instrument targets."""
    L = np.int64(p.lookback_window)
    _instrument_moments(st, n_inst, L)
    n_pairs = st.pi.shape[0]
    n_elig = 0
    best = 0.0
    for q in range(n_pairs):
        corr, beta, s, dev, hl = sa_fit_pair(st, n_inst, L, st.pi[q], st.pj[q])
        st.corr[q] = corr
        st.beta[q] = beta
        st.s[q] = s
        st.dev[q] = dev
        ok = (corr >= p.correlation_threshold and beta > 0.0 and s == s
              and hl <= 0.5 * L)
        st.eligible[q] = 1 if ok else 0
        if ok:
            n_elig += 1
            if abs(s) > best:
                best = abs(s)
        d = st.dir[q]
        if d != 0:
            stop = ok and ((d < 0 and s >= p.zscore_stop) or (d > 0 and s <= -p.zscore_stop))
            done = (not ok) or (d < 0 and s <= p.zscore_exit) or (d > 0 and s >= -p.zscore_exit)
            if stop or done:
                st.dir[q] = 0
                st.qy[q] = 0.0
                st.qx[q] = 0.0
                if stop:
                    st.n_stops += 1
                else:
                    st.n_exits += 1
    st.n_eligible = n_elig
    st.best_abs_s = best
    gross = 0.0
    for q in range(n_pairs):
        if st.dir[q] != 0:
            gross += _pair_gross(st, q)
    # open the most dislocated first: repeated arg-max over the candidates (P is small)
    for _k in range(n_pairs):
        pick = -1
        pick_s = 0.0
        for q in range(n_pairs):
            if st.dir[q] != 0 or st.eligible[q] == 0 or st.tried[q] == st.n_scans + 1:
                continue
            a = abs(st.s[q])
            if a >= p.zscore_entry and abs(st.dev[q]) * 1e4 >= p.cost_bps and a > pick_s:
                pick = q
                pick_s = a
        if pick < 0:
            break
        st.tried[pick] = st.n_scans + 1
        i = st.pi[pick]
        j = st.pj[pick]
        ni = p.pair_notional
        nj = st.beta[pick] * p.pair_notional
        if nj > p.pair_notional:          # per-pair cap: neither leg above pair_notional
            ni *= p.pair_notional / nj
            nj = p.pair_notional
        qy = math.floor(ni / (st.price[i] * st.lot[i]) + 0.5)
        qx = math.floor(nj / (st.price[j] * st.lot[j]) + 0.5)
        add = qy * st.price[i] * st.lot[i] + qx * st.price[j] * st.lot[j]
        if qy <= 0 or qx <= 0 or gross + add > p.max_gross_notional:
            continue
        nd = -1 if st.s[pick] > 0 else 1
        st.dir[pick] = nd
        st.qy[pick] = nd * qy
        st.qx[pick] = -nd * qx
        gross += add
        st.n_entries += 1
    st.gross_notional = gross
    for k in range(n_inst):
        st.target[k] = 0.0
    for q in range(n_pairs):
        if st.dir[q] != 0:
            st.target[st.pi[q]] += st.qy[q]
            st.target[st.pj[q]] += st.qx[q]
    st.n_scans += 1


@njit(cache=True)
def sa_sample(ctx, st, p, now_ns):
    """Take a sample of every log mid when due; True when one was taken."""
    if st.next_sample_ns != 0.0 and now_ns < st.next_sample_ns:
        return False
    n_inst = ctx.inst.shape[0]
    for k in range(n_inst):
        if valid_mid_x2(ctx.px, ctx.meta, ctx.inst[k]) <= 0:
            st.n_no_price += 1
            return False
    if st.next_sample_ns == 0.0:
        st.next_sample_ns = now_ns
    skipped = math.floor((now_ns - st.next_sample_ns) / p.sample_ns) + 1.0
    st.next_sample_ns += skipped * p.sample_ns
    cap = st.logs.shape[0] // n_inst
    row = (st.n_samples % cap) * n_inst
    for k in range(n_inst):
        price = valid_mid_x2(ctx.px, ctx.meta, ctx.inst[k]) * 0.5 * st.tick[k]
        st.price[k] = price
        st.logs[row + k] = math.log(price)
    st.n_samples += 1
    return True


@njit(cache=True)
def _trade(ctx, st, p, k, now_ns):
    inst = ctx.inst[k]
    diff = np.int64(st.target[k]) - position(ctx, k)
    if diff == 0 or open_on(ctx, k):
        return
    px, meta = ctx.px, ctx.meta
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        return
    if diff > 0:
        a = best_ask_px(px, meta, inst)
        place(ctx, k, SIDE_BUY, ORD_IOC, a + np.int64(a * p.slippage_bps * 1e-4), diff, now_ns)
    else:
        b = best_bid_px(px, meta, inst)
        lim = b - np.int64(b * p.slippage_bps * 1e-4)
        if lim > 0:
            place(ctx, k, SIDE_SELL, ORD_IOC, lim, -diff, now_ns)


@njit(cache=True)
def sa_trade_all(ctx, st, p, now_ns):
    last = last_reject_ns(ctx)
    if last != 0 and now_ns - last < p.reject_backoff_ns:
        return
    for k in range(ctx.inst.shape[0]):
        _trade(ctx, st, p, k, now_ns)


@njit(cache=True)
def sa_on_timer(ctx, st, p, now_ns):
    if sa_sample(ctx, st, p, now_ns) and st.n_samples > p.lookback_window:
        sa_scan(st, p, ctx.inst.shape[0])
    sa_trade_all(ctx, st, p, now_ns)


@njit(cache=True)
def sa_on_exec(ctx, st, p, ex, n_ex, now_ns):
    sa_trade_all(ctx, st, p, now_ns)   # a partial leg is topped up, a final one frees the next


class StatisticalArbitrage(Strategy):
    """Pair scan over N instruments with Avellaneda-Lee s-scores (module docstring)."""

    kind = "statistical_arbitrage"
    Params = StatArbParams
    n_instruments = 0            # a universe: 2 to MAX_INSTRUMENTS instruments
    min_instruments = 2
    max_instruments = MAX_INSTRUMENTS
    max_orders = MAX_INSTRUMENTS
    on_exec = staticmethod(sa_on_exec)
    on_timer = staticmethod(sa_on_timer)

    def check_instruments(self) -> None:
        keys = [i.key for i in self.instruments]
        ids = [i.instrument_id for i in self.instruments]
        if len(set(ids)) != len(ids):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"statistical_arbitrage: {', '.join(dup)} listed twice")

    def state_fields(self):
        n = len(self.instruments)
        n_pairs = n * (n - 1) // 2
        cap = self.params.lookback_window + 1
        per_pair = [(name, "f8", (n_pairs,)) for name in
                    ("corr", "beta", "s", "dev", "qy", "qx")]
        return SCALARS + [
            ("logs", "f8", (cap * n,)), ("price", "f8", (n,)), ("tick", "f8", (n,)),
            ("lot", "f8", (n,)), ("target", "f8", (n,)), ("mean_l", "f8", (n,)),
            ("mean_r", "f8", (n,)), ("sd_r", "f8", (n,)),
            ("pi", "i8", (n_pairs,)), ("pj", "i8", (n_pairs,)), ("dir", "i8", (n_pairs,)),
            ("eligible", "i8", (n_pairs,)), ("tried", "i8", (n_pairs,)),
        ] + per_pair

    def init_state(self, st) -> None:
        n = len(self.instruments)
        q = 0
        for i in range(n):
            for j in range(i + 1, n):
                st["pi"][q] = i
                st["pj"][q] = j
                q += 1
        for k, ins in enumerate(self.instruments):
            st["tick"][k] = float(ins.tick_size)
            st["lot"][k] = float(ins.lot_size)

    def derive(self) -> dict:
        p = self.params
        return {"sample_ns": p.sample_ms * 1e6, "reject_backoff_ns": p.reject_backoff_ms * 1e6}
