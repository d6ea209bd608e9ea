"""Stylized facts of a market: the same statistics measured on any MARKET_DTYPE record stream
(simulator output, a LOBSTER day, the Bitstamp log, an hftfarm record file), so that the
simulator can be set beside a real market (``run.py sim facts``).

Cold path (analysis, operator's shell and tests). One small @njit pass rebuilds the top of the
book over time (``market.book``'s L2Book kernels) and collects the trades; every statistic is
then a small numpy function over those arrays, tested on its own.

Definitions (docs/simulator.md explains them at more length):

- time: the venue's clock (exch_ts_ns; recv_ts_ns where a stream has no exchange times).
- top of book: the book after each batch of records (a venue message: MFLAG_LAST_IN_BATCH, or
  records sharing a time where a stream has no batch flags); a book is priced only when valid
  (complete, both sides, bid < ask); the mid of an invalid book is the last valid one.
- trade: one aggressive order's executions, that is consecutive trade prints with the same
  aggressor side and the same time (a market order that fills against three resting orders is
  one trade of the summed size). sign = +1 buyer-initiated, -1 seller-initiated.
- clock grid: values sampled at t0, t0 + step, ... (the last value at or before each time);
  t0 = the first valid book.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from market.book import META_N_ASK, META_N_BID, book_apply_market, is_valid
from shm.records import MFLAG_LAST_IN_BATCH, MSG_TRADE, SIDE_BUY

NS = 1_000_000_000
SPREAD_GRID_NS = 100_000_000        # spread and depth sampled every 100 ms
RETURN_HORIZONS_S = (1, 10, 60)
ABS_RETURN_LAGS = (1, 5, 10, 30)
SIGN_LAGS = (1, 5, 10, 50)
IMPACT_HORIZON_NS = NS
IMPACT_BUCKETS = 4
MARKOUT_HORIZONS = (("100ms", NS // 10), ("1s", NS), ("10s", 10 * NS))
BOOK_LEVELS = 4096

# columns of Tape.top
T_NS, T_VALID, T_BID, T_BID_QTY, T_ASK, T_ASK_QTY = range(6)
# columns of Tape.trades
R_NS, R_PX, R_QTY, R_SIDE, R_MID_X2 = range(5)


@dataclass
class Tape:
    """What the facts are measured on. ``top`` int64[n, 6] (time, valid, bid px, bid qty,
    ask px, ask qty) one row per change of the top of book; ``trades`` int64[m, 5] (time, px,
    qty lots, aggressor SIDE_*, mid x2 of the last valid book before the trade, 0 if none).
    ``tick_scale``: reported ticks per px_tick (1; 0.01 for LOBSTER, whose px_ticks are
    1/10000 USD while the market's tick is a cent)."""
    top: np.ndarray
    trades: np.ndarray
    t_start_ns: int
    t_end_ns: int
    tick_size: float
    lot_size: float
    tick_scale: float = 1.0

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.t_end_ns - self.t_start_ns) / NS)

    def valid_mid(self):
        """(times, mid x2) of the valid rows."""
        v = self.top[:, T_VALID] == 1
        rows = self.top[v]
        return rows[:, T_NS], rows[:, T_BID] + rows[:, T_ASK]


@njit(cache=True)
def _tape_pass(md, inst, use_recv, batch_flags, px, qty, meta, top, trades):
    n_top = 0
    n_tr = 0
    last_valid_mid = 0
    prev = np.zeros(6, dtype=np.int64)
    prev[T_VALID] = -1
    n = md.shape[0]
    for i in range(n):
        rec = md[i]
        if rec.instrument_id != inst:
            continue
        t = rec.recv_ts_ns if use_recv else rec.exch_ts_ns
        if rec.kind == MSG_TRADE:
            if (n_tr > 0 and trades[n_tr - 1, R_NS] == t and trades[n_tr - 1, R_SIDE] == rec.side
                    and trades[n_tr - 1, R_QTY] > 0):
                trades[n_tr - 1, R_QTY] += rec.qty_lots
            else:
                trades[n_tr, R_NS] = t
                trades[n_tr, R_PX] = rec.px_ticks
                trades[n_tr, R_QTY] = rec.qty_lots
                trades[n_tr, R_SIDE] = rec.side
                trades[n_tr, R_MID_X2] = last_valid_mid
                n_tr += 1
        book_apply_market(px, qty, meta, rec)
        if batch_flags:
            end = (rec.flags & MFLAG_LAST_IN_BATCH) != 0
        else:
            end = True
            for j in range(i + 1, n):
                if md[j].instrument_id == inst:
                    tj = md[j].recv_ts_ns if use_recv else md[j].exch_ts_ns
                    end = tj != t
                    break
        if not end:
            continue
        valid = 1 if is_valid(px, meta, inst) else 0
        nb = meta[inst, META_N_BID]
        na = meta[inst, META_N_ASK]
        b = px[inst, 0, 0] if nb > 0 else 0
        bq = qty[inst, 0, 0] if nb > 0 else 0
        a = px[inst, 1, 0] if na > 0 else 0
        aq = qty[inst, 1, 0] if na > 0 else 0
        if valid == 1:
            last_valid_mid = b + a
        if (valid != prev[T_VALID] or b != prev[T_BID] or bq != prev[T_BID_QTY]
                or a != prev[T_ASK] or aq != prev[T_ASK_QTY]):
            top[n_top, T_NS] = t
            top[n_top, T_VALID] = valid
            top[n_top, T_BID] = b
            top[n_top, T_BID_QTY] = bq
            top[n_top, T_ASK] = a
            top[n_top, T_ASK_QTY] = aq
            for k in range(6):
                prev[k] = top[n_top, k]
            n_top += 1
    return n_top, n_tr


def build_tape(records: np.ndarray, instrument_id: int, tick_size, lot_size) -> Tape:
    """Rebuild the top of book over time and the trades of one instrument."""
    from market.book import L2Book

    mine = records["instrument_id"] == instrument_id
    count = int(np.count_nonzero(mine))
    if count == 0:
        raise ValueError(f"no market records of instrument id {instrument_id}")
    sub = np.ascontiguousarray(records[mine])
    use_recv = bool(np.any(sub["exch_ts_ns"] == 0))
    times = sub["recv_ts_ns"] if use_recv else sub["exch_ts_ns"]
    batch_flags = bool(np.any(sub["flags"] & MFLAG_LAST_IN_BATCH))
    book = L2Book(int(instrument_id), BOOK_LEVELS)
    px, qty, meta = book.arrays
    top = np.zeros((count, 6), dtype=np.int64)
    trades = np.zeros((count, 5), dtype=np.int64)
    n_top, n_tr = _tape_pass(sub, np.uint32(instrument_id), use_recv, batch_flags, px, qty,
                             meta, top, trades)
    valid_t = top[:n_top][top[:n_top, T_VALID] == 1, T_NS]
    t_start = int(valid_t[0]) if len(valid_t) else int(times.min())
    return Tape(top[:n_top].copy(), trades[:n_tr].copy(), t_start, int(times.max()),
                float(tick_size), float(lot_size))


# ------------------------------------------------------------------------------------------
# Small statistics, each tested on its own
# ------------------------------------------------------------------------------------------
def _f(x) -> float | None:
    """A JSON-friendly float: None for NaN / inf."""
    x = float(x)
    return x if math.isfinite(x) else None


def distribution(x) -> dict:
    """mean, p10, p50, p90 and n of a sample (None where empty)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return {"n": 0, "mean": None, "p10": None, "p50": None, "p90": None}
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {"n": int(len(x)), "mean": _f(x.mean()), "p10": _f(p10), "p50": _f(p50),
            "p90": _f(p90)}


def sample_at(t: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """values[the last row with t <= at] for every time in ``at`` (values[0] before t[0])."""
    idx = np.searchsorted(t, at, side="right") - 1
    return values[np.clip(idx, 0, len(values) - 1)]


def clock_grid(t_start_ns: int, t_end_ns: int, step_ns: int) -> np.ndarray:
    n = (t_end_ns - t_start_ns) // step_ns + 1
    return t_start_ns + step_ns * np.arange(max(0, n), dtype=np.int64)


def spread_depth(tape: Tape, step_ns: int = SPREAD_GRID_NS) -> dict:
    """Spread (ticks, bps of the mid) and top-of-book depth (lots, quote value) of the valid
    book sampled on a clock grid; depth pools the bid and the ask."""
    rows = tape.top[tape.top[:, T_VALID] == 1]
    if len(rows) == 0:
        empty = distribution([])
        return {"spread_ticks": empty, "spread_bps": empty, "depth_lots": empty,
                "depth_value": empty}
    grid = clock_grid(tape.t_start_ns, tape.t_end_ns, step_ns)
    s = sample_at(rows[:, T_NS], rows, grid)
    spread = (s[:, T_ASK] - s[:, T_BID]).astype(np.float64)
    mid = (s[:, T_ASK] + s[:, T_BID]) / 2.0
    depth = np.concatenate([s[:, T_BID_QTY], s[:, T_ASK_QTY]]).astype(np.float64)
    value = np.concatenate([s[:, T_BID_QTY] * s[:, T_BID], s[:, T_ASK_QTY] * s[:, T_ASK]])
    return {"spread_ticks": distribution(spread * tape.tick_scale),
            "spread_bps": distribution(spread / mid * 1e4),
            "depth_lots": distribution(depth),
            "depth_value": distribution(value * tape.tick_size * tape.lot_size)}


def trade_sizes(qty_lots: np.ndarray, lot_size: float, duration_s: float) -> dict:
    """Trade size in the instrument's units (mean, median, p90) and trades per second."""
    q = np.asarray(qty_lots, dtype=np.float64) * lot_size
    out = {"n": int(len(q)),
           "trades_per_s": _f(len(q) / duration_s) if duration_s > 0 else None}
    if len(q) == 0:
        return {**out, "mean": None, "median": None, "p90": None}
    return {**out, "mean": _f(q.mean()), "median": _f(np.median(q)),
            "p90": _f(np.percentile(q, 90))}


def grid_log_returns(t: np.ndarray, mid: np.ndarray, t_start_ns: int, t_end_ns: int,
                     step_ns: int) -> np.ndarray:
    """Log returns of the mid sampled every ``step_ns`` from t_start_ns."""
    if len(t) == 0:
        return np.zeros(0)
    grid = clock_grid(t_start_ns, t_end_ns, step_ns)
    if len(grid) < 2:
        return np.zeros(0)
    return np.diff(np.log(sample_at(t, mid.astype(np.float64), grid)))


def excess_kurtosis(r: np.ndarray) -> float:
    """m4 / m2^2 - 3 (0 for a normal sample); NaN below 4 points or with no variance."""
    r = np.asarray(r, dtype=np.float64)
    if len(r) < 4:
        return math.nan
    d = r - r.mean()
    m2 = np.mean(d * d)
    if m2 == 0:
        return math.nan
    return float(np.mean(d ** 4) / (m2 * m2) - 3.0)


def return_stats(r: np.ndarray) -> dict:
    r = np.asarray(r, dtype=np.float64)
    return {"n": int(len(r)), "vol_bps": _f(r.std() * 1e4) if len(r) > 1 else None,
            "excess_kurtosis": _f(excess_kurtosis(r))}


def autocorr(x, lags) -> dict:
    """Sample autocorrelation at each lag: sum (x_t - m)(x_t+k - m) / sum (x_t - m)^2; None
    where the series is too short or constant."""
    x = np.asarray(x, dtype=np.float64)
    d = x - x.mean() if len(x) else x
    den = float(np.sum(d * d))
    out = {}
    for k in lags:
        if len(x) <= k + 1 or den == 0:
            out[str(k)] = None
        else:
            out[str(k)] = _f(np.sum(d[:-k] * d[k:]) / den)
    return out


def trade_signs(side: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(side) == SIDE_BUY, 1.0, -1.0)


def size_buckets(qty: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket 0..n_buckets-1 of each trade by size rank (equal counts; ties by time order)."""
    n = len(qty)
    order = np.argsort(qty, kind="stable")
    b = np.empty(n, dtype=np.int64)
    b[order] = np.arange(n) * n_buckets // max(1, n)
    return b


def _mid_move(tape: Tape, t_eval: np.ndarray, mid_before_x2: np.ndarray):
    """(move in ticks, move in bps, usable) of the mid from just before each trade to t_eval."""
    t, mid = tape.valid_mid()
    usable = (mid_before_x2 > 0) & (t_eval <= tape.t_end_ns)
    if len(t) == 0:
        z = np.zeros(len(t_eval))
        return z, z, np.zeros(len(t_eval), dtype=bool)
    after = sample_at(t, mid, t_eval)
    move = (after - mid_before_x2) / 2.0 * tape.tick_scale
    bps = np.where(usable, (after - mid_before_x2) / np.maximum(mid_before_x2, 1) * 1e4, 0.0)
    return move, bps, usable


def price_impact(tape: Tape, horizon_ns: int = IMPACT_HORIZON_NS,
                 n_buckets: int = IMPACT_BUCKETS) -> list[dict]:
    """Mean mid move (ticks, bps) from just before a trade to ``horizon_ns`` after it, signed
    by the aggressor (+ = the price went the way the aggressor traded), per size bucket."""
    tr = tape.trades
    move, bps, usable = _mid_move(tape, tr[:, R_NS] + horizon_ns, tr[:, R_MID_X2])
    sign = trade_signs(tr[:, R_SIDE])
    tr, move, bps, sign = tr[usable], move[usable], bps[usable], sign[usable]
    b = size_buckets(tr[:, R_QTY], n_buckets)
    out = []
    for k in range(n_buckets):
        m = b == k
        q = tr[m, R_QTY] * tape.lot_size
        out.append({"bucket": k + 1, "n": int(m.sum()),
                    "size_lo": _f(q.min()) if m.any() else None,
                    "size_hi": _f(q.max()) if m.any() else None,
                    "ticks": _f(np.mean(sign[m] * move[m])) if m.any() else None,
                    "bps": _f(np.mean(sign[m] * bps[m])) if m.any() else None})
    return out


def markouts(tape: Tape, horizons=MARKOUT_HORIZONS) -> dict:
    """Each trade taken as a fill of a passive order resting at the touch on the other side:
    the mid move after it, signed for that maker (negative = adverse), in ticks and bps, and
    the maker's edge against the later mid (fill price vs mid, ticks: half-spread earned minus
    the move)."""
    tr = tape.trades
    maker = -trade_signs(tr[:, R_SIDE])
    out = {}
    for name, h in horizons:
        move, bps, usable = _mid_move(tape, tr[:, R_NS] + h, tr[:, R_MID_X2])
        if not usable.any():
            out[name] = {"n": 0, "ticks": None, "bps": None, "edge_ticks": None}
            continue
        after_x2 = tr[:, R_MID_X2] + 2.0 * move / tape.tick_scale
        edge = maker * (after_x2 / 2.0 - tr[:, R_PX]) * tape.tick_scale
        out[name] = {"n": int(usable.sum()), "ticks": _f(np.mean(maker[usable] * move[usable])),
                     "bps": _f(np.mean(maker[usable] * bps[usable])),
                     "edge_ticks": _f(np.mean(edge[usable]))}
    return out


def best_level_lifetimes(t: np.ndarray, best_px: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Seconds each best price of one side stayed best: from the row where it became best (the
    row before holding a valid, different best) until the first row where the best differs or
    the book is invalid. Runs cut by the start or end of the data are left out."""
    p = np.where(valid == 1, best_px, -1)
    if len(p) < 3:
        return np.zeros(0)
    change = np.flatnonzero(p[1:] != p[:-1]) + 1
    if len(change) < 2:
        return np.zeros(0)
    starts, ends = change[:-1], change[1:]
    ok = (p[starts] != -1) & (p[starts - 1] != -1)
    return (t[ends[ok]] - t[starts[ok]]) / NS


def depletion(tape: Tape) -> dict:
    top = tape.top
    out = {}
    both = []
    for name, col in (("bid", T_BID), ("ask", T_ASK)):
        life = best_level_lifetimes(top[:, T_NS], top[:, col], top[:, T_VALID])
        both.append(life)
        out[name] = _life_stats(life)
    out["both"] = _life_stats(np.concatenate(both))
    return out


def _life_stats(life: np.ndarray) -> dict:
    if len(life) == 0:
        return {"n": 0, "median_s": None, "p90_s": None}
    return {"n": int(len(life)), "median_s": _f(np.median(life)),
            "p90_s": _f(np.percentile(life, 90))}


def measure(records: np.ndarray, instrument, source: str = "", price_tick=None) -> dict:
    """Every statistic of one instrument's records (``instrument``: an object with
    instrument_id, key, tick_size and lot_size) as a JSON-ready dict; figures in ticks are in
    ``price_tick`` (a Decimal; default the instrument's tick size)."""
    tape = build_tape(records, instrument.instrument_id, instrument.tick_size,
                      instrument.lot_size)
    if price_tick is not None:
        tape.tick_scale = float(instrument.tick_size / price_tick)
    return measure_tape(tape, source=source, instrument=instrument.key)


def measure_tape(tape: Tape, source: str = "", instrument: str = "") -> dict:
    t, mid = tape.valid_mid()
    rets = {}
    r1 = np.zeros(0)
    for h in RETURN_HORIZONS_S:
        r = grid_log_returns(t, mid, tape.t_start_ns, tape.t_end_ns, h * NS)
        if h == 1:
            r1 = r
        rets[f"{h}s"] = return_stats(r)
    tr = tape.trades
    return {
        "source": source, "instrument": instrument,
        "duration_s": _f(tape.duration_s), "book_changes": int(len(tape.top)),
        "tick_size": tape.tick_size / tape.tick_scale, "lot_size": tape.lot_size,
        "mid_first": _f(mid[0] / 2 * tape.tick_size) if len(mid) else None,
        **spread_depth(tape),
        "trade_size": trade_sizes(tr[:, R_QTY], tape.lot_size, tape.duration_s),
        "returns": rets,
        "abs_return_acf_1s": autocorr(np.abs(r1), ABS_RETURN_LAGS),
        "trade_sign_acf": autocorr(trade_signs(tr[:, R_SIDE]), SIGN_LAGS),
        "impact_1s": price_impact(tape),
        "best_level_lifetime": depletion(tape),
        "markout": markouts(tape),
    }
