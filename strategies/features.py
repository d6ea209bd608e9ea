"""The feature library: book and stream features every strategy needs, written once.

Runs inside strategy kernels (the live strategy host, the backtest, tests). Every @njit function
here is HOT PATH: compiled with ``cache=True`` and ``_nrt=False``, so it cannot allocate (numba
refuses to compile an allocation without its runtime) and costs no reference counting per
array argument; no Python objects, no exceptions. Only the ``make_*`` constructors are cold:
they validate their arguments (raising ValueError) and allocate the state the caller owns.

Units follow the rest of hftfarm: prices are integer ticks (``*_ticks``), quantities integer
lots (``*_lots``), times integer nanoseconds (``*_ns``). Float results say their unit in the
name (``mid_ticks`` is a float number of ticks).

Undefined is never 0. A float feature that has no value (invalid book, empty window, fewer
than two values for a variance, zero variance for a z-score) is NaN. Integer features return a
documented sentinel: ``NO_TICKS`` (0, as market/book.py's ``valid_mid_x2``: a valid book never
has a zero mid or spread) and ``NO_LOTS`` (the most negative int64: order-flow imbalance can be
any integer, 0 included, so no small sentinel is free). NaN and infinite *inputs* to the stream
features are rejected: the state is left as it was and the row's ``n_rejected`` counter grows,
so one bad value does not poison a window or an average for good.

Book features (market/book.py layout; kernels take ``px, qty, meta`` then the instrument id)
are defined only on a *valid* book (``is_valid``: the venue said it is complete, both sides
have a level, best bid < best ask). Empty, one-sided, locked, crossed and not-yet-synchronised
books give NaN / the sentinel: they have no price, and a strategy that prices off them anyway
would be quoting against a book that is known to be wrong.

Stateful features keep their state in small structured arrays created by ``make_*``; the
caller stores them in its strategy state and passes them back. Each has ``n_slots`` rows and
takes ``(state, slot, ...)``, so one state can serve several instruments or signals (use the
instrument id as the slot with ``n_slots = n_instruments + 1``, like the books); order-flow
imbalance reads the books and so is indexed by instrument id itself. Slots are not bounds
checked on the hot path (as the books' instrument ids are not).

Public API::

    mid_x2_ticks(px, meta, inst) -> int64            bid + ask; NO_TICKS unless valid
    mid_ticks(px, meta, inst) -> float64             (bid + ask) / 2; NaN unless valid
    spread_ticks(px, meta, inst) -> int64            ask - bid (>= 1); NO_TICKS unless valid
    microprice_ticks(px, qty, meta, inst) -> float64 size-weighted mid at the touch
    depth_imbalance(px, qty, meta, inst, n_levels) -> float64   in [-1, 1]
    weighted_depth_imbalance(px, qty, meta, inst, n_levels, decay) -> float64   in [-1, 1]
    make_ofi(n_instruments) -> OFI_DTYPE[n + 1]
    ofi_update(ofi, px, qty, meta, inst) -> int64    e_n (lots) of Cont-Kukanov-Stoikov
    ofi_take_lots(ofi, inst) -> int64                sum of e_n since the last take
    ofi_reset(ofi, inst)
    make_ewma(alpha, n_slots=1) / make_ewma_halflife(halflife_ns, n_slots=1) -> EWMA_DTYPE[n]
    ewma_alpha_from_halflife(halflife_events) -> float64
    ewma_update(ew, slot, x) -> float64              event-time EWMA, returns the mean
    ewma_update_at(ew, slot, x, ts_ns) -> float64    clock-time EWMA (half-life in ns)
    ewma_mean / ewma_var / ewma_std (ew, slot) -> float64;  ewma_zscore(ew, slot, x)
    ewma_reset(ew, slot)
    make_rolling(capacity, n_slots=1, recompute_every=None) -> RollingWindow(hdr, values)
    rolling_push(win, slot, x) -> bool
    rolling_count(win, slot) -> int64;  rolling_is_full(win, slot) -> bool
    rolling_mean / rolling_sum / rolling_var / rolling_std (win, slot) -> float64
    rolling_zscore(win, slot, x) -> float64;  rolling_reset(win, slot)
    zscore(x, mean, sd) -> float64
    make_realized_vol(capacity_returns, n_slots=1) -> RealizedVol(hdr, r2, start_ts_ns)
    rv_update(rv, slot, px, ts_ns) -> float64        the log return taken, NaN if none
    realized_var / realized_vol (rv, slot) -> float64  over the window, not annualised
    realized_vol_annualised(rv, slot, seconds_per_year) -> float64
    rv_reset(rv, slot)
    make_vwap(capacity_trades, window_ns=0, n_slots=1) -> Vwap(hdr, px_ticks, qty_lots, ts_ns)
    vwap_add_trade(vw, slot, px_ticks, qty_lots, ts_ns) -> bool
    vwap_on_market(vw, slot, rec, inst) -> bool      a MARKET_DTYPE MSG_TRADE record
    vwap_ticks(vw, slot, now_ns) -> float64;  vwap_reset(vw, slot)
    pearson_correlation(x, y, n) -> float64          of x[:n] and y[:n]; NaN if undefined
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from market.book import ASK, BID, META_N_ASK, META_N_BID, is_valid, valid_mid_x2
from shm.records import MSG_TRADE

NO_TICKS = 0                                        # integer price feature without a value
NO_LOTS = np.int64(np.iinfo(np.int64).min)          # integer quantity feature without a value
SECONDS_PER_YEAR_365D = 365.0 * 86400.0             # venues that never close (crypto)
SECONDS_PER_YEAR_252D_6H30 = 252.0 * 6.5 * 3600.0   # exchange-traded hours of a US equity year
_LN2 = math.log(2.0)

_HOT = dict(cache=True, _nrt=False)


# ---- book features -----------------------------------------------------------------------------

@njit(**_HOT)
def mid_x2_ticks(px, meta, inst):
    """Twice the mid, in ticks: best bid + best ask, an exact integer (book.py's ``mid_x2``
    convention). NO_TICKS (0) unless the book is valid (empty, one-sided, locked, crossed or
    unsynchronised books have no mid)."""
    return valid_mid_x2(px, meta, inst)


@njit(**_HOT)
def mid_ticks(px, meta, inst):
    """Mid price (best bid + best ask) / 2 in ticks, float64; NaN unless the book is valid."""
    if not is_valid(px, meta, inst):
        return np.nan
    return (px[inst, BID, 0] + px[inst, ASK, 0]) * 0.5


@njit(**_HOT)
def spread_ticks(px, meta, inst):
    """Quoted spread best ask - best bid in ticks (>= 1 on a valid book); NO_TICKS (0) unless
    the book is valid (a locked book's zero spread and a crossed book's negative one are not
    spreads: the book is wrong)."""
    if not is_valid(px, meta, inst):
        return np.int64(NO_TICKS)
    return px[inst, ASK, 0] - px[inst, BID, 0]


@njit(**_HOT)
def microprice_ticks(px, qty, meta, inst):
    """Size-weighted mid at the touch, in ticks: (bid * ask_qty + ask * bid_qty) /
    (bid_qty + ask_qty). It leans toward the side with less size, the side more likely to be
    taken out. This is the "weighted mid-price" that Stoikov (2018), "The micro-price: a
    high-frequency estimator of future prices", Quantitative Finance 18(12), starts from (its
    first-order approximation), not his full micro-price (the limit of a fitted Markov chain).
    Lies in [bid, ask]. NaN unless the book is valid."""
    if not is_valid(px, meta, inst):
        return np.nan
    bq = qty[inst, BID, 0]
    aq = qty[inst, ASK, 0]
    # qty > 0 at every level of a book (book.py), so the denominator is positive.
    return (px[inst, BID, 0] * float(aq) + px[inst, ASK, 0] * float(bq)) / float(bq + aq)


@njit(**_HOT)
def depth_imbalance(px, qty, meta, inst, n_levels):
    """Depth imbalance (B - A) / (B + A) in [-1, 1], dimensionless, where B and A are the lots
    resting in the best ``n_levels`` price levels of each side (by level, not by price
    distance; a side with fewer levels contributes what it has). +1: all size on the bid.
    NaN unless the book is valid, and NaN for n_levels < 1. (book.py's ``imbalance`` returns 0
    on an empty book; this one does not pretend.)"""
    if n_levels < 1 or not is_valid(px, meta, inst):
        return np.nan
    nb = min(n_levels, meta[inst, META_N_BID])
    na = min(n_levels, meta[inst, META_N_ASK])
    b = np.int64(0)
    a = np.int64(0)
    for i in range(nb):
        b += qty[inst, BID, i]
    for i in range(na):
        a += qty[inst, ASK, i]
    return (b - a) / float(b + a)


@njit(**_HOT)
def weighted_depth_imbalance(px, qty, meta, inst, n_levels, decay):
    """Depth-weighted imbalance (B_w - A_w) / (B_w + A_w) in [-1, 1], dimensionless: as
    ``depth_imbalance`` but the lots at the k-th level (k = 0 at the touch) of each side weigh
    decay^k, so size near the touch counts more than size deep in the book (the volume
    imbalance of Cartea, Donnelly & Jaimungal 2018, "Enhancing trading strategies with order
    book signals", Applied Mathematical Finance 25(1), taken over several levels). decay = 1
    is ``depth_imbalance``; decay in (0, 1]. NaN unless the book is valid, and NaN for
    n_levels < 1 or a decay outside (0, 1]."""
    if n_levels < 1 or not (decay > 0.0 and decay <= 1.0) or not is_valid(px, meta, inst):
        return np.nan
    nb = min(n_levels, meta[inst, META_N_BID])
    na = min(n_levels, meta[inst, META_N_ASK])
    b = 0.0
    a = 0.0
    w = 1.0
    for i in range(max(nb, na)):
        if i < nb:
            b += w * qty[inst, BID, i]
        if i < na:
            a += w * qty[inst, ASK, i]
        w *= decay
    return (b - a) / (b + a)


# ---- order-flow imbalance (Cont, Kukanov & Stoikov 2014) ----------------------------------------

OFI_DTYPE = np.dtype([
    ("bid_px", "<i8"),       # the previous valid top of book (ticks, lots)
    ("bid_qty", "<i8"),
    ("ask_px", "<i8"),
    ("ask_qty", "<i8"),
    ("has_prev", "<i8"),     # 1 when the fields above hold a valid top to compare with
    ("e_lots", "<i8"),       # the latest e_n (NO_LOTS before the first)
    ("sum_lots", "<i8"),     # sum of e_n since the last ofi_take_lots
    ("n_in_sum", "<i8"),     # e_n in sum_lots
    ("n_events", "<i8"),     # e_n computed, ever
    ("n_gaps", "<i8"),       # valid -> invalid transitions (the reference was dropped)
], align=True)


def make_ofi(n_instruments: int) -> np.ndarray:
    """Cold: order-flow imbalance state, one row per instrument id (row 0 unused, as in the
    books), for ``ofi_update`` / ``ofi_take_lots``."""
    if int(n_instruments) < 1:
        raise ValueError(f"make_ofi: n_instruments must be >= 1, got {n_instruments}")
    ofi = np.zeros(int(n_instruments) + 1, dtype=OFI_DTYPE)
    ofi["e_lots"] = NO_LOTS
    return ofi


@njit(**_HOT)
def ofi_reset(ofi, inst):
    """Forget instrument inst's reference top of book and its accumulated sum (counters stay)."""
    r = ofi[inst]
    r.has_prev = 0
    r.e_lots = NO_LOTS
    r.sum_lots = 0
    r.n_in_sum = 0


@njit(**_HOT)
def ofi_update(ofi, px, qty, meta, inst):
    """One order-flow event e_n (lots) between the previous valid top of book and the current
    one, after Cont, Kukanov & Stoikov (2014), "The price impact of order book events", J. of
    Financial Econometrics 12(1), eq. (2):

        e_n = [Pb_n >= Pb_{n-1}] qb_n - [Pb_n <= Pb_{n-1}] qb_{n-1}
            - [Pa_n <= Pa_{n-1}] qa_n + [Pa_n >= Pa_{n-1}] qa_{n-1}

    (positive: buying pressure). e_n is added to the instrument's running sum (``ofi_take_lots``)
    and returned. Call it after every book update of the instrument (or every batch: successive
    states that differ by several events give their net flow; an unchanged book gives e_n = 0).
    Returns NO_LOTS when there is no e_n: the book is not valid now (this also drops the
    reference, so no e_n spans an invalid stretch such as a resynchronisation), or it is the
    first valid state after start, a reset or a gap."""
    r = ofi[inst]
    if not is_valid(px, meta, inst):
        if r.has_prev != 0:
            r.n_gaps += 1
        r.has_prev = 0
        return NO_LOTS
    pb = px[inst, BID, 0]
    qb = qty[inst, BID, 0]
    pa = px[inst, ASK, 0]
    qa = qty[inst, ASK, 0]
    e = NO_LOTS
    if r.has_prev != 0:
        e = np.int64(0)
        if pb >= r.bid_px:
            e += qb
        if pb <= r.bid_px:
            e -= r.bid_qty
        if pa <= r.ask_px:
            e -= qa
        if pa >= r.ask_px:
            e += r.ask_qty
        r.e_lots = e
        r.sum_lots += e
        r.n_in_sum += 1
        r.n_events += 1
    r.bid_px = pb
    r.bid_qty = qb
    r.ask_px = pa
    r.ask_qty = qa
    r.has_prev = 1
    return e


@njit(**_HOT)
def ofi_take_lots(ofi, inst):
    """Order-flow imbalance of the interval since the last take: the sum of the e_n computed in
    it (lots; 0 is a real value: the book was watched and its flow netted out), and start a new
    interval. NO_LOTS when no e_n was computed in the interval (no valid pair of states)."""
    r = ofi[inst]
    if r.n_in_sum == 0:
        return NO_LOTS
    s = r.sum_lots
    r.sum_lots = 0
    r.n_in_sum = 0
    return s


# ---- exponentially weighted mean and variance --------------------------------------------------

EWMA_DTYPE = np.dtype([
    ("alpha", "<f8"),        # event-time smoothing factor (0 for a clock-time EWMA)
    ("halflife_ns", "<f8"),  # clock-time half-life (0 for an event-time EWMA)
    ("mean", "<f8"),
    ("s2", "<f8"),           # weighted sum of squared deviations from the mean
    ("weight", "<f8"),       # total weight of the observations so far
    ("n_updates", "<i8"),
    ("last_ts_ns", "<i8"),
    ("n_rejected", "<i8"),   # non-finite inputs, and calls of the other kind's update
], align=True)


def make_ewma(alpha: float, n_slots: int = 1) -> np.ndarray:
    """Cold: state of ``n_slots`` event-time EWMAs with smoothing factor 0 < alpha <= 1 (each
    update decays the older observations' weights by 1 - alpha); update with ``ewma_update``.
    For a half-life of h updates use ``ewma_alpha_from_halflife(h)``."""
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"make_ewma: alpha must be in (0, 1], got {alpha}")
    ew = _make_rows(EWMA_DTYPE, n_slots, "make_ewma")
    ew["alpha"] = float(alpha)
    return ew


def make_ewma_halflife(halflife_ns: float, n_slots: int = 1) -> np.ndarray:
    """Cold: state of ``n_slots`` clock-time EWMAs for irregular updates: an observation's
    weight halves every ``halflife_ns`` nanoseconds of its age; update with ``ewma_update_at``."""
    if not (float(halflife_ns) > 0.0 and math.isfinite(float(halflife_ns))):
        raise ValueError(f"make_ewma_halflife: halflife_ns must be > 0, got {halflife_ns}")
    ew = _make_rows(EWMA_DTYPE, n_slots, "make_ewma_halflife")
    ew["halflife_ns"] = float(halflife_ns)
    return ew


@njit(**_HOT)
def ewma_alpha_from_halflife(halflife_events):
    """alpha = 1 - 2^(-1/h): the event-time smoothing factor whose weights halve every h
    updates. NaN for h <= 0."""
    if not halflife_events > 0.0:
        return np.nan
    return 1.0 - math.exp(-_LN2 / halflife_events)


@njit(**_HOT, inline="always")
def _ewma_step(r, x, decay):
    # West (1979), "Updating mean and variance estimates: an improved method", CACM 22(9),
    # with weights: the old weights decay by `decay`, the new observation weighs 1.
    w = r.weight * decay + 1.0
    d = x - r.mean
    r.mean += d / w
    r.s2 = r.s2 * decay + d * (x - r.mean)
    r.weight = w
    r.n_updates += 1


@njit(**_HOT)
def ewma_update(ew, slot, x):
    """Event-time EWMA: add x with weight 1 and decay every older observation's weight by
    (1 - alpha). The mean is the weighted average of all observations so far, normalised by
    the total weight (pandas ``ewm(alpha=alpha, adjust=True)``), so it has no start-up bias
    toward an initial value; after many updates it is the classic m += alpha (x - m). Returns
    the mean after the call. NaN/inf x, or a clock-time state, is rejected (state unchanged,
    ``n_rejected`` + 1)."""
    r = ew[slot]
    if not math.isfinite(x) or not r.alpha > 0.0:
        r.n_rejected += 1
    else:
        _ewma_step(r, x, 1.0 - r.alpha)
    return ewma_mean(ew, slot)


@njit(**_HOT)
def ewma_update_at(ew, slot, x, ts_ns):
    """Clock-time EWMA for irregularly spaced updates: the weight of an observation of age a ns
    is 2^(-a / halflife_ns); the mean is the weighted average of all observations so far,
    normalised by the total weight (pandas ``ewm(halflife=h, times=t)``). Observations with
    the same timestamp weigh the same; a gap of many half-lives forgets the past. A timestamp
    older than the last one counts as the same time. Returns the mean after the call. NaN/inf
    x, or an event-time state, is rejected (state unchanged, ``n_rejected`` + 1)."""
    r = ew[slot]
    if not math.isfinite(x) or not r.halflife_ns > 0.0:
        r.n_rejected += 1
        return ewma_mean(ew, slot)
    decay = 1.0
    if r.n_updates > 0 and ts_ns > r.last_ts_ns:
        decay = math.exp(-_LN2 * float(ts_ns - r.last_ts_ns) / r.halflife_ns)
    if r.n_updates == 0 or ts_ns > r.last_ts_ns:
        r.last_ts_ns = ts_ns
    _ewma_step(r, x, decay)
    return r.mean


@njit(**_HOT)
def ewma_mean(ew, slot):
    """The exponentially weighted mean; NaN before the first accepted update."""
    r = ew[slot]
    if r.n_updates == 0:
        return np.nan
    return r.mean


@njit(**_HOT)
def ewma_var(ew, slot):
    """Exponentially weighted variance sum w_i (x_i - mean)^2 / sum w_i (the weighted
    population variance, pandas ``ewm(...).var(bias=True)``); NaN before two updates. 0 for a
    constant series."""
    r = ew[slot]
    if r.n_updates < 2:
        return np.nan
    v = r.s2 / r.weight
    return v if v > 0.0 else 0.0


@njit(**_HOT)
def ewma_std(ew, slot):
    """sqrt(ewma_var); NaN before two updates."""
    return math.sqrt(ewma_var(ew, slot))


@njit(**_HOT)
def ewma_zscore(ew, slot, x):
    """(x - ewma_mean) / ewma_std; NaN when either is undefined, the variance is 0, or x is
    not finite. Call before ``ewma_update`` with x for an out-of-sample score."""
    return zscore(x, ewma_mean(ew, slot), ewma_std(ew, slot))


@njit(**_HOT)
def ewma_reset(ew, slot):
    """Forget the observations of one slot (parameters and n_rejected stay)."""
    r = ew[slot]
    r.mean = 0.0
    r.s2 = 0.0
    r.weight = 0.0
    r.n_updates = 0
    r.last_ts_ns = 0


@njit(**_HOT)
def zscore(x, mean, sd):
    """(x - mean) / sd; NaN unless x, mean and sd are finite and sd > 0 (a zero deviation
    has no scale, so no score: never 0 or inf pretending to be one)."""
    if not (math.isfinite(x) and math.isfinite(mean) and math.isfinite(sd) and sd > 0.0):
        return np.nan
    return (x - mean) / sd


# ---- rolling windows ---------------------------------------------------------------------------

ROLLING_DTYPE = np.dtype([
    ("head", "<i8"),             # next write position in values[slot]
    ("count", "<i8"),            # values in the window, <= capacity
    ("shift", "<f8"),            # K: statistics are kept of x - K (K ~ the mean)
    ("mean_shifted", "<f8"),     # mean - K
    ("m2", "<f8"),               # sum of squared deviations from the mean
    ("m2_err", "<f8"),           # bound on the rounding m2 took on since the last recompute
    ("last_value", "<f8"),
    ("equal_run", "<i8"),        # how many of the latest pushes equal last_value
    ("since_recompute", "<i8"),
    ("recompute_every", "<i8"),  # pushes between exact recomputations (0 = only when needed)
    ("n_recomputes", "<i8"),
    ("n_rejected", "<i8"),       # non-finite inputs
], align=True)

RollingWindow = namedtuple("RollingWindow", ["hdr", "values"])
RollingWindow.__doc__ = ("Rolling window state: hdr ROLLING_DTYPE[n_slots], values "
                         "float64[n_slots, capacity] (a ring).")

# Recompute exactly once the rounding bound on m2 exceeds this fraction of m2.
_M2_REL_TOL = 1e-10
_EPS = np.finfo(np.float64).eps


def make_rolling(capacity: int, n_slots: int = 1, recompute_every: int | None = None
                 ) -> RollingWindow:
    """Cold: ``n_slots`` rolling windows over the last ``capacity`` values each (a fixed ring
    buffer with running mean and squared deviations). ``recompute_every`` (default: capacity)
    pushes between the periodic exact recomputations, O(capacity) each; 0 recomputes only
    when the rounding bound asks for it."""
    capacity = int(capacity)
    if capacity < 1:
        raise ValueError(f"make_rolling: capacity must be >= 1, got {capacity}")
    every = capacity if recompute_every is None else int(recompute_every)
    if every < 0:
        raise ValueError(f"make_rolling: recompute_every must be >= 0, got {recompute_every}")
    hdr = _make_rows(ROLLING_DTYPE, n_slots, "make_rolling")
    hdr["recompute_every"] = every
    return RollingWindow(hdr, np.zeros((len(hdr), capacity), dtype=np.float64))


@njit(**_HOT)
def _rolling_recompute(win, slot):
    # The corrected two-pass algorithm (Chan, Golub & LeVeque 1983): K = the mean of a first
    # pass, then the deviations d = x - K give mean - K = sum(d) / n and m2 = sum(d^2) -
    # sum(d)^2 / n. K itself is rounded (half an ulp of the price: 7e-9 at 10^8), so the exact
    # mean - K matters: taking it as 0 puts that rounding into every later update of m2.
    # Cancels what the O(1) updates accumulated. O(count).
    h = win.hdr[slot]
    vals = win.values
    cap = vals.shape[1]
    n = h.count
    start = (h.head - n) % cap
    s = 0.0
    for j in range(n):
        s += vals[slot, (start + j) % cap]
    k = s / n
    sd = 0.0
    sd2 = 0.0
    for j in range(n):
        d = vals[slot, (start + j) % cap] - k
        sd += d
        sd2 += d * d
    h.shift = k
    h.mean_shifted = sd / n
    m2 = sd2 - sd * sd / n
    h.m2 = m2 if m2 > 0.0 else 0.0
    h.m2_err = 0.0
    h.since_recompute = 0
    h.n_recomputes += 1


@njit(**_HOT)
def rolling_push(win, slot, x):
    """Append x to the window, dropping the oldest value once it holds ``capacity``. Returns
    True when pushed; NaN/inf x is rejected (False, window unchanged, ``n_rejected`` + 1).

    Numerics: the mean and the sum of squared deviations m2 are updated in O(1): Welford's
    update to add a value, its sliding form to replace the oldest y (m2 += (x - y) (x -
    mean_new + y - mean_old)). They are kept of x - K with K near the mean (the shifted-data
    method of Chan, Golub & LeVeque 1983), so a price of 10^8 ticks moving by a few ticks
    keeps full precision. Removing values cancels: a bound on the rounding this adds to m2 is
    kept, and when it exceeds 1e-10 of m2 (say a volatile stretch has just left the window)
    or every ``recompute_every`` pushes (default capacity), both are recomputed exactly from
    the ring (two passes, O(capacity)). A constant window is detected exactly (a run of equal
    pushes as long as the window), so its variance is exactly 0."""
    h = win.hdr[slot]
    if not math.isfinite(x):
        h.n_rejected += 1
        return False
    vals = win.values
    cap = vals.shape[1]
    if h.count == 0:
        h.shift = x
        h.mean_shifted = 0.0
        h.m2 = 0.0
        h.m2_err = 0.0
    xs = x - h.shift
    if h.count == cap:
        ys = vals[slot, h.head] - h.shift    # the oldest value sits where the next one goes
        old = h.mean_shifted
        h.mean_shifted = old + (xs - ys) / cap
        a = xs - h.mean_shifted
        b = ys - old
        h.m2 += (xs - ys) * (a + b)
        h.m2_err += _EPS * (abs(xs) + abs(ys)) * (abs(a) + abs(b)) + _EPS * h.m2
    else:
        h.count += 1
        d = xs - h.mean_shifted
        h.mean_shifted += d / h.count
        h.m2 += d * (xs - h.mean_shifted)
    if h.m2 < 0.0:
        h.m2 = 0.0
    vals[slot, h.head] = x
    h.head = h.head + 1 if h.head + 1 < cap else 0
    if h.equal_run > 0 and x == h.last_value:
        h.equal_run += 1
    else:
        h.equal_run = 1
    h.last_value = x
    h.since_recompute += 1
    if ((h.recompute_every > 0 and h.since_recompute >= h.recompute_every)
            or h.m2_err > _M2_REL_TOL * h.m2):
        if h.equal_run < h.count:    # a constant window needs no recompute (see rolling_var)
            _rolling_recompute(win, slot)
        else:
            h.since_recompute = 0
    return True


@njit(**_HOT)
def rolling_count(win, slot):
    """Values in the window (0 .. capacity)."""
    return win.hdr[slot].count


@njit(**_HOT)
def rolling_is_full(win, slot):
    """True once the window holds ``capacity`` values (statistics before that are over the
    values there are; a strategy that needs a full window asks this)."""
    return win.hdr[slot].count == win.values.shape[1]


@njit(**_HOT)
def rolling_mean(win, slot):
    """Mean of the values in the window; NaN when it is empty."""
    h = win.hdr[slot]
    if h.count == 0:
        return np.nan
    if h.equal_run >= h.count:
        return h.last_value
    return h.shift + h.mean_shifted


@njit(**_HOT)
def rolling_sum(win, slot):
    """Sum of the values in the window; NaN when it is empty (no values, no sum to use)."""
    h = win.hdr[slot]
    if h.count == 0:
        return np.nan
    if h.equal_run >= h.count:
        return h.last_value * h.count
    return (h.shift + h.mean_shifted) * h.count


@njit(**_HOT)
def rolling_var(win, slot):
    """Population variance (ddof = 0, as numpy's default and the pairs strategy's residual sd)
    of the values in the window; NaN with fewer than 2 values; exactly 0 when they are all
    equal."""
    h = win.hdr[slot]
    if h.count < 2:
        return np.nan
    if h.equal_run >= h.count:
        return 0.0
    return h.m2 / h.count


@njit(**_HOT)
def rolling_std(win, slot):
    """sqrt(rolling_var); NaN with fewer than 2 values."""
    return math.sqrt(rolling_var(win, slot))


@njit(**_HOT)
def rolling_zscore(win, slot, x):
    """(x - rolling_mean) / rolling_std; NaN with fewer than 2 values, a constant window, or a
    non-finite x. Call before ``rolling_push`` with x for an out-of-sample score (the pairs
    strategy's convention: today's value does not pull the statistics toward itself)."""
    return zscore(x, rolling_mean(win, slot), rolling_std(win, slot))


@njit(**_HOT)
def rolling_reset(win, slot):
    """Empty one slot's window (n_rejected stays)."""
    h = win.hdr[slot]
    h.head = 0
    h.count = 0
    h.shift = 0.0
    h.mean_shifted = 0.0
    h.m2 = 0.0
    h.m2_err = 0.0
    h.last_value = 0.0
    h.equal_run = 0
    h.since_recompute = 0


# ---- realized volatility -----------------------------------------------------------------------

RV_DTYPE = np.dtype([
    ("last_px", "<f8"),      # the previous accepted price (0 = none yet)
    ("last_ts_ns", "<i8"),
    ("n_rejected", "<i8"),   # prices <= 0 or not finite
], align=True)

RealizedVol = namedtuple("RealizedVol", ["hdr", "r2", "start_ts_ns"])
RealizedVol.__doc__ = ("Realized volatility state: hdr RV_DTYPE[n_slots], r2 a RollingWindow of "
                       "squared log returns, start_ts_ns int64[n_slots, capacity] (the start "
                       "time of each return, aligned with r2's ring).")


def make_realized_vol(capacity_returns: int, n_slots: int = 1) -> RealizedVol:
    """Cold: ``n_slots`` realized-volatility windows over the last ``capacity_returns`` log
    returns each."""
    r2 = make_rolling(capacity_returns, n_slots)
    hdr = _make_rows(RV_DTYPE, n_slots, "make_realized_vol")
    return RealizedVol(hdr, r2, np.zeros(r2.values.shape, dtype=np.int64))


@njit(**_HOT)
def rv_update(rv, slot, px, ts_ns):
    """Take a price (any positive unit: ticks, mid_x2, a float mid; log returns do not care)
    observed at ts_ns and add the squared log return ln(px / previous px)^2 to the window.
    Returns that log return, or NaN when none was taken: the first price, or a price that is
    not finite or <= 0 (rejected and counted; the next good price's return then spans the
    gap, which is the return that happened)."""
    h = rv.hdr[slot]
    if not (math.isfinite(px) and px > 0.0):
        h.n_rejected += 1
        return np.nan
    ret = np.nan
    if h.last_px > 0.0:
        # log1p of the relative change: px - last is exact for nearby prices, so a small
        # return keeps full relative precision (log(px / last) has ~1e-16 absolute error,
        # 1e-10 of a 1e-6 return)
        ret = math.log1p((px - h.last_px) / h.last_px)
        rv.start_ts_ns[slot, rv.r2.hdr[slot].head] = h.last_ts_ns
        rolling_push(rv.r2, slot, ret * ret)
    h.last_px = px
    h.last_ts_ns = ts_ns
    return ret


@njit(**_HOT)
def realized_var(rv, slot):
    """Realized variance: the sum of the squared log returns in the window (dimensionless, over
    the window's span; not annualised); NaN before the first return. 0 when the price did not
    move (a real value: no variation was realised)."""
    return rolling_sum(rv.r2, slot)


@njit(**_HOT)
def realized_vol(rv, slot):
    """sqrt(realized_var): the volatility realised over the window's span, not annualised;
    NaN before the first return."""
    return math.sqrt(realized_var(rv, slot))


@njit(**_HOT)
def realized_vol_annualised(rv, slot, seconds_per_year):
    """Annualised by clock time: sqrt(realized_var * seconds_per_year / span_s), where span_s
    is the time from the start of the oldest return in the window to the latest price (so it
    assumes variance grows linearly in time, and suits irregular sampling). seconds_per_year
    says which year: SECONDS_PER_YEAR_365D for venues that never close,
    SECONDS_PER_YEAR_252D_6H30 for exchange hours. NaN before the first return or when the
    span is not positive (all prices at one timestamp)."""
    h = rv.r2.hdr[slot]
    n = h.count
    if n == 0:
        return np.nan
    cap = rv.r2.values.shape[1]
    oldest = (h.head - n) % cap
    span_ns = rv.hdr[slot].last_ts_ns - rv.start_ts_ns[slot, oldest]
    if span_ns <= 0:
        return np.nan
    return math.sqrt(realized_var(rv, slot) * seconds_per_year * 1e9 / span_ns)


@njit(**_HOT)
def rv_reset(rv, slot):
    """Forget one slot's prices and returns (n_rejected stays)."""
    rolling_reset(rv.r2, slot)
    rv.hdr[slot].last_px = 0.0
    rv.hdr[slot].last_ts_ns = 0


# ---- correlation ---------------------------------------------------------------------------------

@njit(**_HOT)
def pearson_correlation(x, y, n):
    """Pearson correlation of x[:n] and y[:n] (two-pass: means first, then the centred sums,
    so large common offsets cost no precision). The pairs may sit in any order, as long as x[k]
    and y[k] belong together (a ring buffer shared by both is fine). NaN when it is undefined:
    fewer than two pairs, a value that is not finite, or a series without variance."""
    if n < 2:
        return np.nan
    mx = 0.0
    my = 0.0
    for k in range(n):
        if not (math.isfinite(x[k]) and math.isfinite(y[k])):
            return np.nan
        mx += x[k]
        my += y[k]
    mx /= n
    my /= n
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for k in range(n):
        dx = x[k] - mx
        dy = y[k] - my
        sxx += dx * dx
        syy += dy * dy
        sxy += dx * dy
    if not (sxx > 0.0 and syy > 0.0):
        return np.nan
    r = sxy / math.sqrt(sxx * syy)
    return min(1.0, max(-1.0, r))


# ---- VWAP --------------------------------------------------------------------------------------

VWAP_DTYPE = np.dtype([
    ("head", "<i8"),
    ("count", "<i8"),
    ("sum_px_qty", "<i8"),     # sum of px_ticks * qty_lots in the window: exact integers
    ("sum_qty_lots", "<i8"),
    ("window_ns", "<i8"),      # 0: the last `capacity` trades; > 0: trades younger than this
    ("last_ts_ns", "<i8"),
    ("n_overflow", "<i8"),     # time window: trades still inside it dropped for capacity
    ("n_rejected", "<i8"),     # px <= 0 or qty <= 0
], align=True)

Vwap = namedtuple("Vwap", ["hdr", "px_ticks", "qty_lots", "ts_ns"])
Vwap.__doc__ = ("VWAP state: hdr VWAP_DTYPE[n_slots] and the trades' px_ticks, qty_lots, ts_ns "
                "as int64[n_slots, capacity] rings.")


def make_vwap(capacity_trades: int, window_ns: int = 0, n_slots: int = 1) -> Vwap:
    """Cold: ``n_slots`` VWAPs over the last ``capacity_trades`` trades (window_ns = 0) or over
    the trades of the last ``window_ns`` nanoseconds (window_ns > 0; capacity_trades then
    bounds how many trades the window can hold: size it for the busiest window). The running
    sums are exact int64: px_ticks * qty_lots * capacity_trades must stay below 9.2e18."""
    capacity_trades, window_ns = int(capacity_trades), int(window_ns)
    if capacity_trades < 1:
        raise ValueError(f"make_vwap: capacity_trades must be >= 1, got {capacity_trades}")
    if window_ns < 0:
        raise ValueError(f"make_vwap: window_ns must be >= 0 (0 = count window), got {window_ns}")
    hdr = _make_rows(VWAP_DTYPE, n_slots, "make_vwap")
    hdr["window_ns"] = window_ns
    shape = (len(hdr), capacity_trades)
    return Vwap(hdr, np.zeros(shape, np.int64), np.zeros(shape, np.int64),
                np.zeros(shape, np.int64))


@njit(**_HOT, inline="always")
def _vwap_drop_oldest(vw, slot):
    h = vw.hdr[slot]
    cap = vw.px_ticks.shape[1]
    i = (h.head - h.count) % cap
    h.sum_px_qty -= vw.px_ticks[slot, i] * vw.qty_lots[slot, i]
    h.sum_qty_lots -= vw.qty_lots[slot, i]
    h.count -= 1


@njit(**_HOT)
def _vwap_expire(vw, slot, now_ns):
    # A trade is in a time window while ts > now - window_ns (the window is (now - W, now]).
    h = vw.hdr[slot]
    if h.window_ns <= 0:
        return
    cap = vw.px_ticks.shape[1]
    cutoff = now_ns - h.window_ns
    while h.count > 0 and vw.ts_ns[slot, (h.head - h.count) % cap] <= cutoff:
        _vwap_drop_oldest(vw, slot)


@njit(**_HOT)
def vwap_add_trade(vw, slot, px_ticks, qty_lots, ts_ns):
    """Add one trade (price in ticks, size in lots, time in ns; times are taken as
    non-decreasing per slot: an older one is stored as the latest seen). When the ring is full
    the oldest trade leaves (in a time window that is counted in ``n_overflow``). Returns True
    when added; px <= 0 or qty <= 0 is rejected (False, ``n_rejected`` + 1)."""
    h = vw.hdr[slot]
    if px_ticks <= 0 or qty_lots <= 0:
        h.n_rejected += 1
        return False
    if ts_ns > h.last_ts_ns:
        h.last_ts_ns = ts_ns
    _vwap_expire(vw, slot, h.last_ts_ns)
    cap = vw.px_ticks.shape[1]
    if h.count == cap:
        if h.window_ns > 0:
            h.n_overflow += 1
        _vwap_drop_oldest(vw, slot)
    i = h.head
    vw.px_ticks[slot, i] = px_ticks
    vw.qty_lots[slot, i] = qty_lots
    vw.ts_ns[slot, i] = h.last_ts_ns
    h.sum_px_qty += px_ticks * qty_lots
    h.sum_qty_lots += qty_lots
    h.count += 1
    h.head = i + 1 if i + 1 < cap else 0
    return True


@njit(**_HOT)
def vwap_on_market(vw, slot, rec, inst):
    """Feed one MARKET_DTYPE record: a MSG_TRADE of instrument ``inst`` is added (at its
    receive time, the clock ``now_ns`` is on); anything else is ignored. Returns True when
    the record was added as a trade."""
    if rec.kind != MSG_TRADE or rec.instrument_id != inst:
        return False
    return vwap_add_trade(vw, slot, rec.px_ticks, rec.qty_lots, rec.recv_ts_ns)


@njit(**_HOT)
def vwap_ticks(vw, slot, now_ns):
    """Volume-weighted average price sum(px * qty) / sum(qty) in ticks over the window: the
    last ``capacity`` trades, or (time window) the trades with ts > now_ns - window_ns, older
    ones being dropped here. NaN when the window holds no trade."""
    _vwap_expire(vw, slot, now_ns)
    h = vw.hdr[slot]
    if h.sum_qty_lots <= 0:
        return np.nan
    return h.sum_px_qty / float(h.sum_qty_lots)


@njit(**_HOT)
def vwap_reset(vw, slot):
    """Drop one slot's trades (counters stay)."""
    h = vw.hdr[slot]
    h.head = 0
    h.count = 0
    h.sum_px_qty = 0
    h.sum_qty_lots = 0
    h.last_ts_ns = 0


# ---- cold helpers ------------------------------------------------------------------------------

def _make_rows(dtype: np.dtype, n_slots: int, who: str) -> np.ndarray:
    n_slots = int(n_slots)
    if n_slots < 1:
        raise ValueError(f"{who}: n_slots must be >= 1, got {n_slots}")
    return np.zeros(n_slots, dtype=dtype)
