"""The feature library (strategies/features.py): each feature against an independent plain-numpy
reference over many seeded random cases, plus its edge cases (empty, one-sided, locked, crossed
and unsynchronised books; windows not yet full; constant series; NaN input)."""
from __future__ import annotations

import inspect
import math
import zlib

import numpy as np
import pytest
from numba import njit
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher
from numpy.lib.stride_tricks import sliding_window_view

import strategies.features as F
from market.book import L2Book, book_apply_market
from shm.records import (MARKET_DTYPE, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS,
                         MSG_TRADE, SIDE_BUY, SIDE_SELL, STATUS_BOOK_INVALID)
from strategies.registry import available_kinds

INST = 1


# ---- helpers -----------------------------------------------------------------------------------

def book_records(bids, asks, synced=True, status_invalid=False, inst=INST):
    """A snapshot of instrument inst: SNAP_START, the levels, SNAP_END (unless not synced)."""
    rows = [(MSG_SNAP_START, 0, 0, 0, 0)]
    rows += [(MSG_LEVEL, SIDE_BUY, p, q, 0) for p, q in bids]
    rows += [(MSG_LEVEL, SIDE_SELL, p, q, 0) for p, q in asks]
    if synced:
        rows.append((MSG_SNAP_END, 0, 0, 0, 0))
    if status_invalid:
        rows.append((MSG_STATUS, 0, 0, 0, STATUS_BOOK_INVALID))
    out = np.zeros(len(rows), dtype=MARKET_DTYPE)
    for r, (kind, side, p, q, aux0) in zip(out, rows):
        r["kind"], r["side"], r["px_ticks"], r["qty_lots"], r["aux0"] = kind, side, p, q, aux0
        r["instrument_id"] = inst
    return out


def build_book(bids, asks, synced=True, status_invalid=False, book=None):
    book = book if book is not None else L2Book(2, 16)
    book.apply(book_records(bids, asks, synced, status_invalid))
    return book


def ref_book(bids, asks, synced=True, status_invalid=False):
    """Plain-numpy truth from the level lists: None when the book has no price."""
    if not synced or status_invalid or not bids or not asks:
        return None
    bp = np.array([p for p, _ in bids], dtype=np.int64)
    bq = np.array([q for _, q in bids], dtype=np.int64)
    ap = np.array([p for p, _ in asks], dtype=np.int64)
    aq = np.array([q for _, q in asks], dtype=np.int64)
    ob, oa = np.argsort(-bp), np.argsort(ap)
    bid, ask = int(bp[ob[0]]), int(ap[oa[0]])
    if bid >= ask:
        return None
    return dict(bid=bid, ask=ask, bq_sorted=bq[ob], aq_sorted=aq[oa])


def random_case(rng):
    """Random levels of one of several shapes: normal, crossed, locked, one-sided, empty,
    unsynchronised or marked invalid."""
    center = int(rng.choice([50, 10_000, 123_456_789]))
    shape = rng.choice(["normal"] * 8 + ["crossed", "locked", "bid_only", "ask_only", "empty",
                                         "unsynced", "invalid"])
    nb, na = int(rng.integers(1, 13)), int(rng.integers(1, 13))
    gap = int(rng.integers(1, 6))
    bid_px = center - np.sort(rng.choice(40, nb, replace=False))
    ask_px = center + gap + np.sort(rng.choice(40, na, replace=False))
    if shape == "crossed":
        ask_px = ask_px - (ask_px.min() - bid_px.max()) - int(rng.integers(1, 4))
    elif shape == "locked":
        ask_px = ask_px - (ask_px.min() - bid_px.max())
    bids = [(int(p), int(rng.integers(1, 10_000))) for p in rng.permutation(bid_px)]
    asks = [(int(p), int(rng.integers(1, 10_000))) for p in rng.permutation(ask_px)]
    if shape in ("ask_only", "empty"):
        bids = []
    if shape in ("bid_only", "empty"):
        asks = []
    return bids, asks, shape != "unsynced", shape == "invalid"


# ---- the module itself -------------------------------------------------------------------------

def test_every_public_function_is_cache_compiled_without_nrt_and_documented():
    names = [n for n, obj in vars(F).items() if not n.startswith("_")
             and (isinstance(obj, CPUDispatcher) or inspect.isfunction(obj))
             and getattr(obj, "__module__", "") == F.__name__]
    hot = [n for n in names if not n.startswith("make_")]
    cold = [n for n in names if n.startswith("make_")]
    assert len(hot) >= 35 and len(cold) == 6, (hot, cold)
    for n in hot:
        fn = getattr(F, n)
        assert isinstance(fn, CPUDispatcher), f"{n} is not @njit"
        assert not isinstance(fn._cache, NullCache), f"{n} is not cache=True"
        # without numba's runtime a function cannot allocate: it would not compile
        assert fn.targetoptions.get("_nrt") is False, f"{n} may allocate (NRT on)"
        assert (fn.__doc__ or "").strip(), f"{n} has no docstring"
    for n in cold + ["RollingWindow", "RealizedVol", "Vwap"]:
        assert (getattr(F, n).__doc__ or "").strip(), f"{n} has no docstring"


def test_feature_library_is_not_registered_as_a_strategy_kind():
    assert "features" not in available_kinds()


def test_features_compile_inside_an_njit_hook_with_nrt_and_tuple_state():
    # how a strategy's on_market hook uses them: books and a state tuple of feature states
    rng = np.random.default_rng(7)
    book = L2Book(1, 8)
    md = np.concatenate([book_records([(100 + d, int(rng.integers(1, 50)))],
                                      [(103 + d, int(rng.integers(1, 50)))])
                         for d in rng.integers(-2, 3, 200)])
    md["recv_ts_ns"] = np.arange(len(md)) * 1_000_000
    tr = np.zeros(50, dtype=MARKET_DTYPE)
    tr["kind"], tr["instrument_id"], tr["px_ticks"], tr["qty_lots"] = MSG_TRADE, INST, 101, 2
    tr["recv_ts_ns"] = np.arange(50) * 7_000_000
    md = np.concatenate([md, tr])
    state = (F.make_ofi(1), F.make_ewma(0.2), F.make_rolling(128), F.make_realized_vol(16),
             F.make_vwap(8))
    px, qty, meta = book.arrays
    out = np.zeros(4)
    _hook(state, px, qty, meta, md, out)
    # the same calls from Python, one by one, on fresh state
    book2 = L2Book(1, 8)
    s2 = (F.make_ofi(1), F.make_ewma(0.2), F.make_rolling(128), F.make_realized_vol(16),
          F.make_vwap(8))
    p2, q2, m2 = book2.arrays
    for rec in md:
        book_apply_market(p2, q2, m2, rec)
        F.ofi_update(s2[0], p2, q2, m2, INST)
        mid = F.mid_ticks(p2, m2, INST)
        F.ewma_update(s2[1], 0, mid)
        F.rolling_push(s2[2], 0, F.microprice_ticks(p2, q2, m2, INST))
        F.rv_update(s2[3], 0, mid, rec["recv_ts_ns"])
        F.vwap_on_market(s2[4], 0, rec, INST)
    expect = [F.ofi_take_lots(s2[0], INST), F.ewma_mean(s2[1], 0),
              F.rolling_zscore(s2[2], 0, 101.0), F.vwap_ticks(s2[4], 0, 10**12)]
    assert np.all(np.isfinite(out)) and np.allclose(out, expect)
    assert out[3] == 101.0


@njit  # not cached: a cached caller keeps stale copies of the features it inlined
def _hook(state, px, qty, meta, md, out):
    ofi, ew, win, rv, vw = state
    for j in range(md.shape[0]):
        book_apply_market(px, qty, meta, md[j])
        F.ofi_update(ofi, px, qty, meta, INST)
        mid = F.mid_ticks(px, meta, INST)
        F.ewma_update(ew, 0, mid)
        F.rolling_push(win, 0, F.microprice_ticks(px, qty, meta, INST))
        F.rv_update(rv, 0, mid, md[j].recv_ts_ns)
        F.vwap_on_market(vw, 0, md[j], INST)
    out[0] = F.ofi_take_lots(ofi, INST)
    out[1] = F.ewma_mean(ew, 0)
    out[2] = F.rolling_zscore(win, 0, 101.0)
    out[3] = F.vwap_ticks(vw, 0, 10**12)


# ---- book features -----------------------------------------------------------------------------

def test_book_features_match_a_numpy_reference_over_random_books():
    rng = np.random.default_rng(20240613)
    book = L2Book(2, 16)
    px, qty, meta = book.arrays
    seen_invalid = seen_valid = 0
    for _ in range(1500):
        bids, asks, synced, invalid = random_case(rng)
        build_book(bids, asks, synced, invalid, book)
        ref = ref_book(bids, asks, synced, invalid)
        if ref is None:
            seen_invalid += 1
            assert F.mid_x2_ticks(px, meta, INST) == F.NO_TICKS
            assert F.spread_ticks(px, meta, INST) == F.NO_TICKS
            assert math.isnan(F.mid_ticks(px, meta, INST))
            assert math.isnan(F.microprice_ticks(px, qty, meta, INST))
            assert math.isnan(F.depth_imbalance(px, qty, meta, INST, 5))
            continue
        seen_valid += 1
        bid, ask = ref["bid"], ref["ask"]
        assert F.mid_x2_ticks(px, meta, INST) == bid + ask
        assert F.mid_ticks(px, meta, INST) == (bid + ask) / 2
        assert F.spread_ticks(px, meta, INST) == ask - bid
        bq, aq = ref["bq_sorted"][0], ref["aq_sorted"][0]
        micro = np.average([bid, ask], weights=[aq, bq])
        assert F.microprice_ticks(px, qty, meta, INST) == pytest.approx(micro, rel=1e-15)
        for n in range(1, 15):
            b, a = ref["bq_sorted"][:n].sum(), ref["aq_sorted"][:n].sum()
            assert F.depth_imbalance(px, qty, meta, INST, n) == pytest.approx((b - a) / (b + a),
                                                                              abs=1e-15)
    assert seen_valid > 600 and seen_invalid > 400


@pytest.mark.parametrize("bids,asks,synced,invalid,why", [
    ([], [], True, False, "empty"),
    ([(100, 5)], [], True, False, "bid only"),
    ([], [(101, 5)], True, False, "ask only"),
    ([(100, 5)], [(100, 3)], True, False, "locked"),
    ([(101, 5), (99, 1)], [(100, 3)], True, False, "crossed"),
    ([(100, 5)], [(101, 3)], False, False, "snapshot not finished"),
    ([(100, 5)], [(101, 3)], True, True, "venue said invalid"),
])
def test_book_features_have_no_value_on_a_book_without_a_price(bids, asks, synced, invalid, why):
    book = build_book(bids, asks, synced, invalid)
    px, qty, meta = book.arrays
    assert F.mid_x2_ticks(px, meta, INST) == F.NO_TICKS == 0, why
    assert F.spread_ticks(px, meta, INST) == F.NO_TICKS, why
    assert math.isnan(F.mid_ticks(px, meta, INST)), why
    assert math.isnan(F.microprice_ticks(px, qty, meta, INST)), why
    assert math.isnan(F.depth_imbalance(px, qty, meta, INST, 3)), why
    # the other instrument's row was never touched: no price either
    assert math.isnan(F.mid_ticks(px, meta, 2))


def test_microprice_leans_to_the_thin_side_and_imbalance_needs_a_level():
    book = build_book([(100, 90), (99, 1000)], [(104, 10)])
    px, qty, meta = book.arrays
    assert F.microprice_ticks(px, qty, meta, INST) == pytest.approx(100 + 4 * 0.9)
    assert F.depth_imbalance(px, qty, meta, INST, 1) == pytest.approx(0.8)
    assert F.depth_imbalance(px, qty, meta, INST, 2) == pytest.approx(1080 / 1100)
    assert math.isnan(F.depth_imbalance(px, qty, meta, INST, 0))
    assert math.isnan(F.depth_imbalance(px, qty, meta, INST, -1))


def test_weighted_depth_imbalance_matches_a_numpy_reference_and_weighs_the_touch_most():
    rng = np.random.default_rng(16)
    checked = 0
    for _ in range(300):
        bids, asks, synced, invalid = random_case(rng)
        ref = ref_book(bids, asks, synced, invalid)
        px, qty, meta = build_book(bids, asks, synced, invalid).arrays
        n, decay = int(rng.integers(1, 8)), float(rng.choice([0.3, 0.5, 1.0]))
        got = F.weighted_depth_imbalance(px, qty, meta, INST, n, decay)
        if ref is None:
            assert math.isnan(got)
            continue
        b = sum(decay ** k * q for k, q in enumerate(ref["bq_sorted"][:n]))
        a = sum(decay ** k * q for k, q in enumerate(ref["aq_sorted"][:n]))
        assert got == pytest.approx((b - a) / (b + a), rel=1e-12, abs=1e-12)
        if decay == 1.0:
            assert got == pytest.approx(F.depth_imbalance(px, qty, meta, INST, n))
        checked += 1
    assert checked > 150
    # 100 lots deep on the bid, 100 at the ask's touch: decay makes the ask side win
    px, qty, meta = build_book([(100, 10), (99, 100)], [(101, 100), (102, 10)]).arrays
    assert F.weighted_depth_imbalance(px, qty, meta, INST, 2, 1.0) == pytest.approx(0.0)
    assert F.weighted_depth_imbalance(px, qty, meta, INST, 2, 0.5) == pytest.approx(-45 / 165)
    assert math.isnan(F.weighted_depth_imbalance(px, qty, meta, INST, 2, 0.0))
    assert math.isnan(F.weighted_depth_imbalance(px, qty, meta, INST, 0, 0.5))


# ---- order-flow imbalance ----------------------------------------------------------------------

def ref_ofi_event(prev, cur):
    """Cont-Kukanov-Stoikov e_n by their case analysis (a bid rising adds the new size, falling
    removes the old one, unchanged adds the size change; the ask mirrors it)."""
    pb0, qb0, pa0, qa0 = prev
    pb, qb, pa, qa = cur
    eb = qb if pb > pb0 else (qb - qb0 if pb == pb0 else -qb0)
    ea = -qa if pa < pa0 else (qa0 - qa if pa == pa0 else qa0)
    return eb + ea


def test_order_flow_imbalance_matches_the_paper_over_random_top_of_book_paths():
    rng = np.random.default_rng(14)
    for case in range(12):
        book = L2Book(2, 8)
        px, qty, meta = book.arrays
        ofi = F.make_ofi(2)
        prev = None
        pending = []      # reference e_n since the last take
        bid = 10_000
        for step in range(400):
            bid += int(rng.choice([-1, 0, 0, 0, 1]))
            ask = bid + int(rng.choice([1, 1, 2, 3]))
            qb, qa = int(rng.integers(1, 6)), int(rng.integers(1, 6))
            broken = rng.random() < 0.08
            if broken:   # no price: one side gone, crossed, or the venue says invalid
                how = int(rng.integers(3))
                bids = [] if how == 0 else [(bid, qb)]
                asks = [(bid - 1 if how == 1 else ask, qa)]
                build_book(bids, asks, True, how == 2, book)
            else:
                build_book([(bid, qb), (bid - 2, 7)], [(ask, qa), (ask + 1, 9)], True, False, book)
            got = F.ofi_update(ofi, px, qty, meta, INST)
            if broken:
                prev = None
                assert got == F.NO_LOTS
            else:
                cur = (bid, qb, ask, qa)
                if prev is None:
                    assert got == F.NO_LOTS
                else:
                    e = ref_ofi_event(prev, cur)
                    assert got == e, (case, step, prev, cur)
                    pending.append(e)
                prev = cur
            if rng.random() < 0.1:
                taken = F.ofi_take_lots(ofi, INST)
                assert taken == (sum(pending) if pending else F.NO_LOTS)
                pending = []
        assert ofi[2]["n_events"] == 0 and ofi[2]["has_prev"] == 0   # other row untouched


def test_order_flow_imbalance_of_single_events():
    book = L2Book(1, 8)
    px, qty, meta = book.arrays
    ofi = F.make_ofi(1)

    def step(bid, qb, ask, qa):
        build_book([(bid, qb)], [(ask, qa)], book=book)
        return F.ofi_update(ofi, px, qty, meta, INST)

    assert step(100, 10, 102, 10) == F.NO_LOTS     # first state: nothing to compare with
    assert step(100, 15, 102, 10) == 5             # 5 lots joined the bid
    assert step(100, 15, 102, 4) == 6              # 6 lots left the ask (or were bought)
    assert step(101, 3, 102, 4) == 3               # a better bid of 3
    assert step(100, 8, 102, 4) == -3              # that bid gone: its 3 lots count against
    assert step(100, 8, 101, 2) == -2              # a better ask of 2: selling pressure
    assert step(100, 8, 101, 2) == 0               # nothing changed: a real zero
    assert F.ofi_take_lots(ofi, INST) == 5 + 6 + 3 - 3 - 2 + 0
    assert F.ofi_take_lots(ofi, INST) == F.NO_LOTS  # no e_n since: no value
    assert step(100, 8, 101, 2) == 0
    assert F.ofi_take_lots(ofi, INST) == 0          # watched, nothing happened: zero
    build_book([(100, 8)], [], book=book)           # one-sided: the reference is dropped
    assert F.ofi_update(ofi, px, qty, meta, INST) == F.NO_LOTS
    assert step(90, 1, 95, 1) == F.NO_LOTS          # no e_n across the gap
    assert step(90, 2, 95, 1) == 1
    assert ofi[INST]["n_gaps"] == 1
    F.ofi_reset(ofi, INST)
    assert step(90, 4, 95, 1) == F.NO_LOTS and F.ofi_take_lots(ofi, INST) == F.NO_LOTS


# ---- EWMA --------------------------------------------------------------------------------------

def ref_weighted(x, w):
    """Weighted mean and population variance, straight from the definition, in extended
    precision."""
    x, w = x.astype(np.longdouble), w.astype(np.longdouble)
    m = np.sum(w * x) / np.sum(w)
    return float(m), float(np.sum(w * (x - m) ** 2) / np.sum(w))


def var_tol(xs, rel):
    # float64 input of magnitude |x| carries eps |x| of rounding into every deviation
    span = np.ptp(xs)
    return dict(rel=rel, abs=64 * np.finfo(float).eps * np.max(np.abs(xs)) * span + 1e-300)


def random_stream(rng, n):
    scale = 10.0 ** rng.uniform(-3, 3)
    offset = float(rng.choice([0.0, 1e4, 1e8]))
    x = offset + scale * rng.standard_normal(n)
    x[rng.random(n) < 0.03] = np.nan
    x[rng.random(n) < 0.01] = np.inf
    return x


def test_event_ewma_matches_directly_weighted_averages():
    rng = np.random.default_rng(3)
    for case in range(40):
        alpha = float(rng.choice([1.0, 0.5, 0.1, 0.01, rng.uniform(0.001, 1)]))
        n = int(rng.integers(1, 300))
        x = random_stream(rng, n)
        ew = F.make_ewma(alpha, n_slots=3)
        seen = []
        for k in range(n):
            got = F.ewma_update(ew, 1, x[k])
            if np.isfinite(x[k]):
                seen.append(x[k])
            if not seen:
                assert math.isnan(got)
                continue
            xs = np.array(seen)
            w = (1.0 - alpha) ** np.arange(len(xs) - 1, -1, -1.0)
            m, v = ref_weighted(xs, w)
            span = np.ptp(xs) + abs(xs[-1]) * 1e-15
            assert got == pytest.approx(m, abs=1e-12 * max(abs(m), span)), (case, k)
            assert F.ewma_mean(ew, 1) == got
            if len(xs) < 2:
                assert math.isnan(F.ewma_var(ew, 1))
            else:
                assert F.ewma_var(ew, 1) == pytest.approx(v, **var_tol(xs, 1e-9)), (case, k)
        assert ew[1]["n_rejected"] == np.count_nonzero(~np.isfinite(x))
        assert ew[0]["n_updates"] == 0 and ew[2]["n_updates"] == 0


def test_event_ewma_becomes_the_classic_recursion_after_warm_up():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(3000)
    ew = F.make_ewma(0.05)
    classic = x[0]
    for v in x:
        got = F.ewma_update(ew, 0, v)
        classic += 0.05 * (v - classic)
    assert got == pytest.approx(classic, abs=1e-12)
    assert F.ewma_alpha_from_halflife(20.0) == pytest.approx(1 - 0.5 ** (1 / 20))
    assert (1 - F.ewma_alpha_from_halflife(7.0)) ** 7 == pytest.approx(0.5)
    assert math.isnan(F.ewma_alpha_from_halflife(0.0))


def test_clock_time_ewma_matches_age_weighted_averages_for_irregular_updates():
    rng = np.random.default_rng(4)
    for case in range(30):
        half_ns = float(rng.choice([1e6, 1e9, 3.7e7]))
        n = int(rng.integers(1, 250))
        x = random_stream(rng, n)
        gaps = rng.choice([0, 0, 1, 10, 1000], n) * rng.exponential(half_ns / 20, n)
        ts = (10**12 + np.cumsum(gaps)).astype(np.int64)
        back = rng.random(n) < 0.05                   # a few out-of-order stamps
        ts[back] -= np.int64(half_ns)
        ew = F.make_ewma_halflife(half_ns)
        seen_x, seen_t = [], []
        t_max = None
        for k in range(n):
            got = F.ewma_update_at(ew, 0, x[k], int(ts[k]))
            if np.isfinite(x[k]):
                t_max = ts[k] if t_max is None else max(t_max, ts[k])
                seen_x.append(x[k])
                seen_t.append(t_max)                  # an older stamp counts as the latest
            if not seen_x:
                assert math.isnan(got)
                continue
            xs, tt = np.array(seen_x), np.array(seen_t, dtype=np.float64)
            w = 0.5 ** ((tt[-1] - tt) / half_ns)
            m, v = ref_weighted(xs, w)
            span = np.ptp(xs) + abs(xs[-1]) * 1e-15
            assert got == pytest.approx(m, abs=1e-11 * max(abs(m), span)), (case, k)
            if len(xs) >= 2:
                assert F.ewma_var(ew, 0) == pytest.approx(v, **var_tol(xs, 1e-9)), (case, k)


def test_ewma_edge_cases_nan_constant_and_wrong_kind():
    ew = F.make_ewma(0.3)
    assert math.isnan(F.ewma_mean(ew, 0)) and math.isnan(F.ewma_var(ew, 0))
    assert math.isnan(F.ewma_update(ew, 0, np.nan))          # NaN in, nothing to average
    assert F.ewma_update(ew, 0, 5.0) == 5.0
    assert math.isnan(F.ewma_var(ew, 0)) and math.isnan(F.ewma_zscore(ew, 0, 6.0))
    for _ in range(50):
        F.ewma_update(ew, 0, 5.0)
    assert F.ewma_update(ew, 0, np.nan) == 5.0                 # rejected: mean kept
    assert F.ewma_mean(ew, 0) == 5.0 and F.ewma_var(ew, 0) == 0.0
    assert math.isnan(F.ewma_zscore(ew, 0, 6.0))               # zero variance: no score
    F.ewma_update(ew, 0, 7.0)
    z = F.ewma_zscore(ew, 0, 8.0)
    assert z == pytest.approx((8.0 - F.ewma_mean(ew, 0)) / math.sqrt(F.ewma_var(ew, 0)))
    assert math.isnan(F.ewma_zscore(ew, 0, np.nan))
    assert ew[0]["n_rejected"] == 2
    assert F.ewma_update_at(ew, 0, 1.0, 10) == F.ewma_mean(ew, 0)  # an event state refuses
    assert ew[0]["n_rejected"] == 3                                # a clock-time update
    F.ewma_reset(ew, 0)
    assert math.isnan(F.ewma_mean(ew, 0))
    et = F.make_ewma_halflife(1e9)
    assert math.isnan(F.ewma_update(et, 0, 1.0)) and et[0]["n_rejected"] == 1
    assert F.ewma_update_at(et, 0, 1.0, 0) == 1.0
    assert F.ewma_update_at(et, 0, 3.0, 0) == 2.0              # same time: equal weights
    assert F.ewma_update_at(et, 0, 9.0, 10**12) == pytest.approx(9.0)  # 1000 half-lives later
    for bad in (0.0, -1.0, 1.5, np.nan):
        with pytest.raises(ValueError, match="alpha"):
            F.make_ewma(bad)
    with pytest.raises(ValueError, match="halflife_ns"):
        F.make_ewma_halflife(0)
    with pytest.raises(ValueError, match="n_slots"):
        F.make_ewma(0.1, n_slots=0)


def test_zscore_is_nan_without_a_scale():
    assert F.zscore(3.0, 1.0, 2.0) == 1.0
    for x, m, s in [(1, 1, 0.0), (1, 0, -1.0), (np.nan, 0, 1), (1, np.nan, 1), (1, 0, np.nan),
                    (np.inf, 0, 1), (1, 0, np.inf)]:
        assert math.isnan(F.zscore(float(x), float(m), float(s)))


# ---- rolling windows ---------------------------------------------------------------------------

@njit  # not cached: a cached caller keeps stale copies of the features it inlined
def _drive_rolling(win, slot, xs, out):
    for k in range(xs.shape[0]):
        F.rolling_push(win, slot, xs[k])
        out[k, 0] = F.rolling_mean(win, slot)
        out[k, 1] = F.rolling_var(win, slot)
        out[k, 2] = F.rolling_sum(win, slot)
        out[k, 3] = F.rolling_count(win, slot)


def ref_rolling(x, cap, chunk=2000):
    """numpy's two-pass mean and variance of every window (partial ones at the start), in
    extended precision so the reference is not the limiting error; also each window's largest
    |x|."""
    xl = x.astype(np.longdouble)
    n = len(x)
    mean = np.empty(n, np.longdouble)
    var = np.empty(n, np.longdouble)
    absmax = np.empty(n)
    for k in range(min(cap - 1, n)):
        mean[k] = xl[:k + 1].mean()
        var[k] = xl[:k + 1].var()
        absmax[k] = np.abs(x[:k + 1]).max()
    if n >= cap:
        view = sliding_window_view(xl, cap)
        aview = sliding_window_view(np.abs(x), cap)
        for s in range(0, len(view), chunk):
            w = view[s:s + chunk]
            m = w.mean(axis=1)
            mean[cap - 1 + s:cap - 1 + s + len(w)] = m
            var[cap - 1 + s:cap - 1 + s + len(w)] = ((w - m[:, None]) ** 2).mean(axis=1)
            absmax[cap - 1 + s:cap - 1 + s + len(w)] = aview[s:s + chunk].max(axis=1)
    return mean, var, absmax


STREAMS = {
    "prices near 1e8 ticks": lambda rng, n: 1e8 + rng.standard_normal(n),
    "random walk": lambda rng, n: 5e4 + np.cumsum(rng.standard_normal(n)),
    "volatility regimes": lambda rng, n: np.repeat(10.0 ** rng.uniform(-4, 4, n // 500 + 1),
                                                   500)[:n] * rng.standard_normal(n) + 1e3,
    "heavy tails": lambda rng, n: rng.standard_t(1.5, n),
    "few distinct integers": lambda rng, n: rng.integers(0, 3, n).astype(np.float64) + 7e6,
}


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("cap", [1, 2, 7, 300])
def test_rolling_mean_and_variance_match_numpy_over_long_streams(stream, cap):
    rng = np.random.default_rng(zlib.crc32(f"{stream}|{cap}".encode()))
    n = 100_000
    x = STREAMS[stream](rng, n).astype(np.float64)
    win = F.make_rolling(cap, n_slots=2)
    out = np.empty((n, 4))
    _drive_rolling(win, 1, x, out)
    mean, var, absmax = ref_rolling(x, cap)
    count = np.minimum(np.arange(1, n + 1), cap)
    assert np.array_equal(out[:, 3], count)
    # the error a float64 algorithm may make is relative to each window's scale
    sd = np.sqrt(var.astype(np.float64))
    tol_mean = 4 * np.finfo(float).eps * absmax + 1e-12 * sd
    err_mean = np.abs(out[:, 0] - mean.astype(np.float64))
    assert np.all(err_mean <= tol_mean), np.max(err_mean / tol_mean)
    err_sum = np.abs(out[:, 2] - (mean * count).astype(np.float64))
    assert np.all(err_sum <= count * tol_mean), np.max(err_sum / (count * tol_mean))
    v = var.astype(np.float64)
    if cap == 1:
        assert np.all(np.isnan(out[:, 1]))
        return
    assert np.all(np.isnan(out[0, 1]))
    err_var = np.abs(out[1:, 1] - v[1:])
    tol = 1e-9 * v[1:] + 1e-300
    assert np.all(err_var <= tol), (np.argmax(err_var / tol), np.max(err_var / tol))
    assert np.all(out[1:, 1][v[1:] == 0] == 0.0)   # a constant window is exactly constant
    assert win.hdr[0]["count"] == 0                 # the other slot was not touched


def test_rolling_tolerance_is_one_a_sum_of_squares_would_fail():
    # the textbook running sum / sum of squares on the price stream: the test above would fail it
    rng = np.random.default_rng(1)
    x = 1e8 + rng.standard_normal(5000)
    cap = 300
    s = sliding_window_view(x, cap).sum(axis=1)
    s2 = sliding_window_view(x * x, cap).sum(axis=1)
    naive = s2 / cap - (s / cap) ** 2
    _, var, _ = ref_rolling(x, cap)
    assert np.max(np.abs(naive - var[cap - 1:].astype(np.float64)) / var[cap - 1:]) > 1e-9


def test_rolling_window_edge_cases():
    win = F.make_rolling(4)
    assert F.rolling_count(win, 0) == 0 and not F.rolling_is_full(win, 0)
    for f in (F.rolling_mean, F.rolling_sum, F.rolling_var, F.rolling_std):
        assert math.isnan(f(win, 0)), f.__name__             # empty: no value, not 0
    assert math.isnan(F.rolling_zscore(win, 0, 1.0))
    assert F.rolling_push(win, 0, 2.5)
    assert F.rolling_mean(win, 0) == 2.5 and F.rolling_sum(win, 0) == 2.5
    assert math.isnan(F.rolling_var(win, 0))                  # one value: no dispersion
    assert not F.rolling_push(win, 0, np.nan) and not F.rolling_push(win, 0, -np.inf)
    assert F.rolling_count(win, 0) == 1 and win.hdr[0]["n_rejected"] == 2
    for v in (1.0, 4.0, 6.0):
        F.rolling_push(win, 0, v)
    assert F.rolling_is_full(win, 0)
    vals = np.array([2.5, 1.0, 4.0, 6.0])
    assert F.rolling_var(win, 0) == pytest.approx(vals.var())
    # out of sample: score the next value against the window before pushing it
    assert F.rolling_zscore(win, 0, 9.0) == pytest.approx((9 - vals.mean()) / vals.std())
    for _ in range(4):
        F.rolling_push(win, 0, 0.1)
    assert F.rolling_var(win, 0) == 0.0 and F.rolling_mean(win, 0) == 0.1  # exactly
    assert F.rolling_sum(win, 0) == pytest.approx(0.4)
    assert math.isnan(F.rolling_zscore(win, 0, 0.1)) and math.isnan(F.rolling_zscore(win, 0, 5))
    F.rolling_reset(win, 0)
    assert F.rolling_count(win, 0) == 0 and math.isnan(F.rolling_mean(win, 0))
    with pytest.raises(ValueError, match="capacity"):
        F.make_rolling(0)
    with pytest.raises(ValueError, match="recompute_every"):
        F.make_rolling(3, recompute_every=-1)


def test_rolling_without_periodic_recompute_still_recovers_when_a_volatile_stretch_leaves():
    rng = np.random.default_rng(9)
    x = np.concatenate([1e6 * rng.standard_normal(1000), 1e-3 * rng.standard_normal(1000)])
    win = F.make_rolling(100, recompute_every=0)
    out = np.empty((len(x), 4))
    _drive_rolling(win, 0, x, out)
    _, var, _ = ref_rolling(x, 100)
    assert np.allclose(out[1:, 1], var[1:].astype(np.float64), rtol=1e-9, atol=0)
    assert 0 < win.hdr[0]["n_recomputes"] < 50       # only when the rounding bound asked


# ---- realized volatility -----------------------------------------------------------------------

def test_realized_volatility_matches_numpy_log_returns():
    rng = np.random.default_rng(11)
    for case in range(20):
        cap = int(rng.choice([1, 5, 64]))
        n = int(rng.integers(2, 600))
        p = 1e5 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
        if case % 3 == 0:
            p = np.round(p)                                    # integer ticks: zero returns
        bad = rng.random(n) < 0.05
        p[bad] = rng.choice([np.nan, 0.0, -5.0, np.inf], bad.sum())
        ts = np.cumsum(rng.integers(1, 10**9, n)).astype(np.int64)
        rv = F.make_realized_vol(cap, n_slots=2)
        good_p, good_t = [], []
        for k in range(n):
            r = F.rv_update(rv, 1, p[k], int(ts[k]))
            ok = np.isfinite(p[k]) and p[k] > 0
            if ok:
                good_p.append(p[k])
                good_t.append(ts[k])
            rets = np.diff(np.log(np.array(good_p, dtype=np.longdouble))).astype(np.float64)
            if not ok or len(good_p) < 2:
                assert math.isnan(r)
            else:
                assert r == pytest.approx(rets[-1], rel=1e-12, abs=1e-17)  # ref: ~1e-18 abs
            if len(rets) == 0:
                assert math.isnan(F.realized_var(rv, 1))
                assert math.isnan(F.realized_vol_annualised(rv, 1, F.SECONDS_PER_YEAR_365D))
                continue
            last = rets[-cap:]
            rvar = np.sum(last ** 2)
            # sliding updates over squared returns of very different sizes: ~1e-12 relative
            assert F.realized_var(rv, 1) == pytest.approx(rvar, rel=1e-11, abs=1e-300)
            assert F.realized_vol(rv, 1) == pytest.approx(np.sqrt(rvar), rel=1e-11, abs=1e-300)
            span_s = (good_t[-1] - good_t[-1 - len(last)]) / 1e9
            ann = np.sqrt(rvar / span_s * 365 * 86400)
            assert F.realized_vol_annualised(rv, 1, F.SECONDS_PER_YEAR_365D) == pytest.approx(
                ann, rel=1e-11, abs=1e-300)
        assert rv.hdr[1]["n_rejected"] == bad.sum() and rv.hdr[0]["last_px"] == 0.0


def test_realized_volatility_edge_cases():
    rv = F.make_realized_vol(3)
    assert math.isnan(F.rv_update(rv, 0, 100.0, 0))            # first price: no return yet
    assert math.isnan(F.realized_vol(rv, 0))
    assert F.rv_update(rv, 0, 100.0, 0) == 0.0
    assert F.realized_var(rv, 0) == 0.0                         # did not move: a real zero
    assert math.isnan(F.realized_vol_annualised(rv, 0, F.SECONDS_PER_YEAR_365D))  # no time
    F.rv_update(rv, 0, 100.0 * math.e, 10**9)                   # one log-unit in a second
    assert F.realized_var(rv, 0) == pytest.approx(1.0)
    assert F.realized_vol_annualised(rv, 0, 4.0) == pytest.approx(2.0)
    F.rv_reset(rv, 0)
    assert math.isnan(F.rv_update(rv, 0, 50.0, 0)) and math.isnan(F.realized_var(rv, 0))


# ---- VWAP --------------------------------------------------------------------------------------

def test_vwap_over_the_last_n_trades_matches_numpy():
    rng = np.random.default_rng(12)
    for cap in (1, 3, 50):
        vw = F.make_vwap(cap, n_slots=2)
        n = 2000
        p = rng.integers(-2, 10**7, n)
        q = rng.integers(-1, 10**4, n)
        ok = (p > 0) & (q > 0)
        for k in range(n):
            assert F.vwap_add_trade(vw, 0, int(p[k]), int(q[k]), k) == ok[k]
            pp, qq = p[:k + 1][ok[:k + 1]][-cap:], q[:k + 1][ok[:k + 1]][-cap:]
            got = F.vwap_ticks(vw, 0, k)
            if len(qq) == 0:
                assert math.isnan(got)
            else:
                assert got == pytest.approx(np.sum(pp * qq) / np.sum(qq), rel=1e-15)
        assert vw.hdr[0]["n_rejected"] == np.count_nonzero(~ok)
        assert vw.hdr[0]["n_overflow"] == 0 and vw.hdr[1]["count"] == 0


def test_vwap_over_a_time_window_matches_numpy():
    rng = np.random.default_rng(13)
    window = 10**9
    for case in range(10):
        vw = F.make_vwap(10_000, window_ns=window)
        n = 1500
        ts = np.cumsum(rng.choice([0, 10**6, 10**8, 2 * 10**9], n, p=[.2, .5, .28, .02]))
        p = rng.integers(1, 10**6, n)
        q = rng.integers(1, 100, n)
        for k in range(n):
            F.vwap_add_trade(vw, 0, int(p[k]), int(q[k]), int(ts[k]))
            nxt = ts[k + 1] if k + 1 < n else ts[k] + 3 * window
            now = int(rng.integers(ts[k], nxt + 1))           # any time before the next trade
            inside = ts[:k + 1] > now - window
            got = F.vwap_ticks(vw, 0, now)
            if not inside.any():
                assert math.isnan(got)
            else:
                pp, qq = p[:k + 1][inside], q[:k + 1][inside]
                assert got == pytest.approx(np.sum(pp * qq) / np.sum(qq), rel=1e-15)


def test_vwap_edge_cases_overflow_expiry_and_market_records():
    vw = F.make_vwap(2, window_ns=100)
    assert math.isnan(F.vwap_ticks(vw, 0, 0))                   # no trade: no price
    F.vwap_add_trade(vw, 0, 100, 1, 10)
    F.vwap_add_trade(vw, 0, 110, 1, 20)
    F.vwap_add_trade(vw, 0, 130, 2, 30)                         # full: the oldest leaves
    assert vw.hdr[0]["n_overflow"] == 1
    assert F.vwap_ticks(vw, 0, 30) == pytest.approx((110 + 260) / 3)
    assert F.vwap_ticks(vw, 0, 120) == 130.0                   # the 110 trade is 100 ns old
    assert math.isnan(F.vwap_ticks(vw, 0, 130))                 # all expired
    assert not F.vwap_add_trade(vw, 0, 0, 5, 200) and not F.vwap_add_trade(vw, 0, 5, 0, 200)
    assert vw.hdr[0]["n_rejected"] == 2
    recs = np.zeros(4, dtype=MARKET_DTYPE)
    recs["kind"] = [MSG_TRADE, MSG_LEVEL, MSG_TRADE, MSG_TRADE]
    recs["instrument_id"] = [INST, INST, 2, INST]
    recs["px_ticks"], recs["qty_lots"] = [50, 60, 70, 80], [1, 1, 1, 3]
    recs["recv_ts_ns"] = [1000, 1001, 1002, 1003]
    vm = F.make_vwap(8)
    assert [F.vwap_on_market(vm, 0, r, INST) for r in recs] == [True, False, False, True]
    assert F.vwap_ticks(vm, 0, 0) == pytest.approx((50 + 240) / 4)
    F.vwap_reset(vm, 0)
    assert math.isnan(F.vwap_ticks(vm, 0, 0))
    with pytest.raises(ValueError, match="window_ns"):
        F.make_vwap(4, window_ns=-1)
    with pytest.raises(ValueError, match="capacity_trades"):
        F.make_vwap(0)
