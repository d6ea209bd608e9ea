"""Backtest metrics, equity-curve CSV and PNG. Cold path (runs once after a backtest).

Definitions (each is a small function so a test can check it on a scripted curve):

- equity(t) = initial cash + realized PnL + unrealized PnL (positions marked at the mid) - fees;
  sampled by the backtest every ``sample_ns`` of simulated time.
- Sharpe (``sharpe_stats``): simple returns r_k = (E_k - E_{k-1}) / E_{k-1} of the equity
  resampled to a period: 1 minute for runs shorter than a day, 1 day for longer ones (a
  one-second return is mostly bid/ask noise of the mark, and its Sharpe annualised by
  sqrt(31,536,000) says nothing a year could bear out). The per-period Sharpe mean(r) / std(r)
  (ddof 1, risk-free rate 0) is scaled to a daily-equivalent Sharpe by sqrt(periods per day)
  and annualised by sqrt(365) (crypto venues trade every day of the year): ``sharpe`` is the
  annualised figure, ``sharpe_basis`` says how it was made. Its standard error is Lo's (2002)
  iid approximation sqrt((1 + SR_p^2 / 2) / n), annualised alike; with enough returns a 95%
  interval comes from a seeded circular block bootstrap (BOOTSTRAP_RESAMPLES resamples, blocks
  of round(sqrt(n)) returns, so short-range autocorrelation survives the resampling). 0 when
  std(r) == 0 or there are fewer than 2 returns.
- max drawdown: the largest drop from a running peak of equity, in quote currency, as a
  fraction of that peak and as a fraction of the capital (the backtest's initial cash,
  ``[backtest].initial_cash``).
- trades: fills. A *closed trade* is a fill that reduces a position; its PnL is the realized PnL
  against the average entry price minus the fees of that fill. win rate = closed trades with
  PnL > 0 / closed trades; profit factor = sum of positive PnLs / |sum of negative PnLs|
  (inf with no loss, 0 with no gain, nan with neither). ``trade_stats`` gives the sums behind
  them (gross profit, gross loss), the mean trade and the mean win / loss in quote currency and
  as fractions of the capital, and a block-bootstrap 95% interval of the mean trade PnL.
- warnings (``warnings``: code and message): figures a reader should not take at face value: an
  |annualised Sharpe| above SHARPE_IMPLAUSIBLE, a win rate above WIN_RATE_IMPLAUSIBLE over
  WIN_RATE_MIN_TRADES or more closed trades, fewer than MIN_TRADES closed trades, a Sharpe from
  less than a day of data or fewer than MIN_RETURNS returns; maker fills that show no adverse
  selection (``no_adverse_selection``): over NO_ADVERSE_MIN_FILLS or more maker fills, the mid's
  drift 1 s after the fill, side x (mid(t + 1 s) - mid(t)), is not below zero by at least one
  standard error (mean > -se). A resting order fills when someone trades into it, and that
  someone is informed often enough that the mid moves against a maker's fills on average;
  fills free of that are a simulation that fills too kindly. Why the drift and not the markout
  against the fill price: that one includes the half spread the maker captured, and a positive
  realized spread is normal for real makers in a wide market; adverse selection is the part
  after the fill.
- fill rate: orders with at least one fill / orders accepted by the venue; also filled / sent
  quantity.
- inventory: mean |q| over samples, max |q| (over fills, so nothing is missed between samples),
  time-weighted mean |q| (integral of |q| dt / duration), in lots, summed over instruments.
- time in queue: from the venue's ack of a passive order to each of its maker fills.
- turnover: traded notional, sum of price x quantity over fills, quote currency.
- mean holding time (``mean_holding_s``, set by the backtest): by Little's law, the integral of
  |position| dt summed over instruments (lot-seconds; a position still open at the end counts
  up to the end) over the lots opened (``lots_opened``): how long a lot stays in inventory on
  average. None when no lot was opened.
- rejects: risk denials and venue rejects counted by reason (shm.records.REJECT_NAMES).
- markouts (``markout_report``): for every fill, the mid move against it at +100 ms, +1 s and
  +10 s of simulated time after the fill's venue time, side x (mid(t + h) - fill price): in
  ticks and in quote currency (x lots x the instrument's tick value). Positive = the mid moved
  our way (above our buy, below our sell); negative = adverse selection. The mid "at" t + h is
  the last mark of the backtest's gate (its L2 book's mid, as market data reaches it) at or
  before t + h; fills whose t + h falls after the end of the run are left out (counted). Means
  per side, over both sides and over maker / taker fills, each with its standard error
  sqrt(var / n) (iid fills: fills close in time are correlated, so read it as a lower bound).
  Ticks of different instruments add as they are (a strategy on several instruments, the
  total): their quote figures are the comparable ones.
- fill quality (``fill_quality``): the edge at the fill, side x (mid - price) with the mid the
  gate's mark when the fill's report arrives (for a maker fill about half the spread captured,
  for a taker fill about minus half the spread); the effective spread 2 x edge; the realized
  spread at 1 s, 2 x side x (mid(t + 1 s) - price) (the standard full-spread definition, from
  our side: what the fill earns once the market has moved); the price impact (adverse
  selection) at 1 s = effective - realized = 2 x side x (mid(t) - mid(t + 1 s)); time in queue
  of maker fills, median and p90. Each markout cell also carries the drift, side x (mid(t + h)
  - mid(t)), with its own standard error: the markout less the edge at the fill, per fill.

Several strategies run together (strategies/backtest.py): each has its own report, its equity
curve being the initial cash plus its own PnL; the total's curve is the initial cash plus the
sum of theirs, and its inventory is the net position per instrument over the strategies.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

SECONDS_PER_YEAR = 365.0 * 24.0 * 3600.0
SECONDS_PER_DAY = 86_400.0
DAYS_PER_YEAR = 365.0            # crypto: every day trades
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20_240_614
MIN_BOOTSTRAP_SAMPLES = 20       # fewer returns / trades: no interval (and the report says why)
MIN_RETURNS = 30                 # fewer returns than this: the Sharpe is flagged as short
MIN_TRADES = 30                  # fewer closed trades: win rate, profit factor flagged
SHARPE_IMPLAUSIBLE = 20.0        # |annualised Sharpe| above this is flagged
WIN_RATE_IMPLAUSIBLE = 0.95
WIN_RATE_MIN_TRADES = 50
NO_ADVERSE_MIN_FILLS = 100       # maker fills before "no adverse selection" is judged
NO_ADVERSE_HORIZON = "1s"
# markout sums: sums[side, liquidity, horizon, :] with side 0 buy / 1 sell, liquidity 0 maker /
# 1 taker (market/backtest.py mko_sum)
MO_N, MO_TICKS, MO_QUOTE, MO_TICKS_SQ, MO_DRIFT, MO_DRIFT_SQ = 0, 1, 2, 3, 4, 5


def max_drawdown(equity) -> tuple[float, float]:
    """(largest peak-to-trough drop in quote currency, that drop / the peak)."""
    e = np.asarray(equity, dtype=np.float64)
    if e.size == 0:
        return 0.0, 0.0
    peak = np.maximum.accumulate(e)
    dd = peak - e
    k = int(np.argmax(dd))
    rel = float(dd[k] / peak[k]) if peak[k] > 0 else 0.0
    return float(dd[k]), rel


def sharpe(equity, period_s: float) -> float:
    """Annualised Sharpe of per-period simple returns of an equity series sampled every
    ``period_s`` seconds (365-day, 24-hour year; risk-free rate 0)."""
    e = np.asarray(equity, dtype=np.float64)
    if e.size < 3:
        return 0.0
    r = np.diff(e) / e[:-1]
    sd = float(np.std(r, ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        return 0.0
    return float(np.mean(r) / sd * math.sqrt(SECONDS_PER_YEAR / period_s))


def returns_period_s(duration_s: float) -> float:
    """The return period of the report's Sharpe: 1 minute for runs shorter than a day, else 1
    day."""
    return 60.0 if duration_s < SECONDS_PER_DAY else SECONDS_PER_DAY


def _period_name(period_s: float) -> str:
    if period_s == SECONDS_PER_DAY:
        return "daily"
    if period_s == 60.0:
        return "1-minute"
    return f"{period_s:g}-second"


def simple_returns(equity) -> np.ndarray:
    e = np.asarray(equity, dtype=np.float64)
    if e.size < 2:
        return np.zeros(0)
    return np.diff(e) / e[:-1]


def _sharpe_of_returns(r, periods_per_year: float) -> float:
    if r.size < 2:
        return 0.0
    sd = float(np.std(r, ddof=1))
    if sd == 0.0 or not math.isfinite(sd):
        return 0.0
    return float(np.mean(r) / sd * math.sqrt(periods_per_year))


def block_bootstrap_indices(n: int, *, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED, block_len: int | None = None):
    """(resamples x n index array, block length) of a circular block bootstrap: each resample
    is ceil(n / L) blocks of L consecutive indices (wrapping), started uniformly, cut to n."""
    L = max(1, int(round(math.sqrt(n)))) if block_len is None else int(block_len)
    blocks = -(-n // L)
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(resamples, blocks))
    idx = (starts[:, :, None] + np.arange(L)[None, None, :]) % n
    return idx.reshape(resamples, blocks * L)[:, :n], L


def bootstrap_ci(values, statistic, *, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED, min_samples: int = MIN_BOOTSTRAP_SAMPLES) -> dict:
    """Percentile interval of ``statistic`` (a function of a (resamples, n) array -> (resamples,)
    values, nan where undefined) under a seeded circular block bootstrap of ``values``.
    ``{"low", "high", "level", "resamples", "block_len", "seed"}``, or ``{"omitted": why}`` with
    fewer than ``min_samples`` values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < min_samples:
        return {"omitted": f"{v.size} samples, fewer than the {min_samples} a block bootstrap "
                           f"needs"}
    idx, L = block_bootstrap_indices(v.size, resamples=resamples, seed=seed)
    stats = np.asarray(statistic(v[idx]), dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if stats.size < resamples // 2:
        return {"omitted": "the statistic is undefined on most resamples (no variation)"}
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return {"low": float(lo), "high": float(hi), "level": level, "resamples": resamples,
            "block_len": L, "seed": seed}


def sharpe_stats(t_ns, equity, period_s: float | None = None) -> dict:
    """The report's Sharpe (see the module docstring): annualised, daily-equivalent, per
    period, its standard error, a block-bootstrap interval, and the basis in words."""
    t = np.asarray(t_ns, dtype=np.int64)
    duration_s = float(t[-1] - t[0]) / 1e9 if t.size else 0.0
    if period_s is None:
        period_s = returns_period_s(duration_s)
    r = simple_returns(resample(t, equity, int(period_s * 1e9)))
    per_day = SECONDS_PER_DAY / period_s
    ppy = per_day * DAYS_PER_YEAR
    sr_p = _sharpe_of_returns(r, 1.0)
    annual = sr_p * math.sqrt(ppy)
    name = _period_name(period_s)
    basis = (f"{name} returns (n={r.size}), daily-equivalent x sqrt({per_day:g}), annualised "
             f"x sqrt(365): x sqrt({ppy:g}) in all; risk-free rate 0")
    se = math.sqrt((1.0 + 0.5 * sr_p * sr_p) / r.size) * math.sqrt(ppy) if r.size >= 2 \
        else None                # undefined figures are None (JSON null), never nan

    def stat(samples):
        sd = samples.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sd > 0, samples.mean(axis=1) / sd, np.nan) * math.sqrt(ppy)

    ci = bootstrap_ci(r, stat) if r.size >= 2 else {"omitted": f"{r.size} returns"}
    return {"annualised": annual, "daily": sr_p * math.sqrt(per_day), "per_period": sr_p,
            "period_s": period_s, "returns": int(r.size), "duration_s": duration_s,
            "se_annualised": se, "ci95": ci, "basis": basis}


def _finite_or_none(x: float):
    return None if math.isnan(x) else x


def trade_stats(trade_pnls, capital: float) -> dict:
    """Closed-trade figures in quote currency and as fractions of ``capital``."""
    p = np.asarray(trade_pnls, dtype=np.float64)
    wins, losses = p[p > 0], p[p < 0]
    nan = None                   # undefined figures are None (JSON null), never nan
    out = {
        "closed_trades": int(p.size),
        "win_rate": win_rate(p) if p.size else nan,
        "profit_factor": _finite_or_none(profit_factor(p)),
        "gross_profit": float(wins.sum()),
        "gross_loss": float(0.0 - losses.sum()),     # 0.0, not -0.0, without losses
        "net": float(p.sum()),
        "mean_pnl": float(p.mean()) if p.size else nan,
        "mean_win": float(wins.mean()) if wins.size else nan,
        "mean_loss": float(losses.mean()) if losses.size else nan,
        "capital": float(capital),
    }
    for k in ("gross_profit", "gross_loss", "net", "mean_pnl", "mean_win", "mean_loss"):
        out[k + "_of_capital"] = out[k] / capital if capital > 0 and out[k] is not None \
            else nan
    out["mean_pnl_ci95"] = bootstrap_ci(p, lambda s: s.mean(axis=1))
    return out


def _mean_se(n: int, total: float, squares: float):
    """(mean, standard error sqrt(var / n), var with ddof 1) from a count and sums; the
    standard error is None under 2 values."""
    mean = total / n
    if n < 2:
        return mean, None
    var = max(0.0, (squares - n * mean * mean) / (n - 1))
    return mean, math.sqrt(var / n)


def _markout_cell(a) -> dict:
    """{n, mean_ticks, se_ticks, mean_quote, sum_quote, drift_ticks, se_drift_ticks} of one
    row of sums (count, ticks, quote, ticks^2, drift, drift^2); undefined figures None."""
    n = int(a[MO_N])
    if n == 0:
        return {"n": 0, "mean_ticks": None, "mean_quote": None, "se_ticks": None,
                "sum_quote": 0.0, "drift_ticks": None, "se_drift_ticks": None}
    mean, se = _mean_se(n, float(a[MO_TICKS]), float(a[MO_TICKS_SQ]))
    drift, se_drift = _mean_se(n, float(a[MO_DRIFT]), float(a[MO_DRIFT_SQ]))
    return {"n": n, "mean_ticks": mean, "mean_quote": float(a[MO_QUOTE]) / n, "se_ticks": se,
            "sum_quote": float(a[MO_QUOTE]), "drift_ticks": drift, "se_drift_ticks": se_drift}


def markout_report(sums, names, *, left_out=None, queue_times_ns=None,
                   dropped: dict | None = None) -> tuple[dict, dict]:
    """(markouts, fill_quality) of the report (definitions: the module docstring) from
    ``sums[side, liquidity, horizon, 6]`` (side 0 buy / 1 sell, liquidity 0 maker / 1 taker;
    count, sum of ticks, of quote value, of ticks^2, of the drift side x (mid(t + h) -
    mid(t)) and of its squares) for horizons ``names`` (the first, "at_fill", is the fill
    itself); ``left_out[h]``: fills whose horizon h fell after the end.

    markouts = {"buy" | "sell" | "all" | "maker" | "taker": {horizon name: cell}, "left_out":
    {name: n}}, cell = {"n", "mean_ticks", "mean_quote", "se_ticks", "sum_quote",
    "drift_ticks", "se_drift_ticks"}."""
    s = np.asarray(sums, dtype=np.float64)
    groups = {"buy": s[0].sum(axis=0), "sell": s[1].sum(axis=0), "all": s.sum(axis=(0, 1)),
              "maker": s[:, 0].sum(axis=0), "taker": s[:, 1].sum(axis=0)}
    mo = {g: {name: _markout_cell(a[h]) for h, name in enumerate(names)}
          for g, a in groups.items()}
    mo["left_out"] = {name: int(left_out[h]) if left_out is not None else 0
                      for h, name in enumerate(names) if h > 0}
    if dropped:
        mo.update(dropped)
    allf = mo["all"]
    edge = allf[names[0]]["mean_ticks"]
    rs = allf["1s"]["mean_ticks"] if "1s" in allf else None
    q = np.asarray(queue_times_ns if queue_times_ns is not None else [], dtype=np.float64)
    fq = {
        "fills": allf[names[0]]["n"],
        "edge_at_fill_ticks": edge,
        "effective_spread_ticks": None if edge is None else 2.0 * edge,
        "realized_spread_1s_ticks": None if rs is None else 2.0 * rs,
        "price_impact_1s_ticks": None if rs is None or edge is None else 2.0 * (edge - rs),
        "maker_edge_at_fill_ticks": mo["maker"][names[0]]["mean_ticks"],
        "maker_markout_1s_ticks": mo["maker"]["1s"]["mean_ticks"] if "1s" in allf else None,
        "maker_drift_1s_ticks": mo["maker"]["1s"]["drift_ticks"] if "1s" in allf else None,
        "time_in_queue_ms": {"n": int(q.size),
                             "p50": float(np.median(q) / 1e6) if q.size else None,
                             "p90": float(np.percentile(q, 90) / 1e6) if q.size else None},
    }
    return mo, fq


def report_warnings(sharpe_st: dict, trades: dict, markouts: dict | None = None) -> list[dict]:
    """Figures not to take at face value: [{"code", "message"}]."""
    out = []
    mk = (markouts or {}).get("maker", {}).get(NO_ADVERSE_HORIZON)
    if mk and mk["n"] >= NO_ADVERSE_MIN_FILLS and mk["se_drift_ticks"] is not None \
            and mk["drift_ticks"] > -mk["se_drift_ticks"]:
        out.append({"code": "no_adverse_selection", "message":
                    f"fills with no adverse selection: {NO_ADVERSE_HORIZON} after {mk['n']} "
                    f"maker fills the mid has moved {mk['drift_ticks']:+.3f} ticks their way "
                    f"(standard error {mk['se_drift_ticks']:.3f}), not against them by a "
                    f"standard error; real resting orders are filled by informed traders often "
                    f"enough that the mid moves against them: suspect the simulated fills"})
    sr = sharpe_st["annualised"]
    if abs(sr) > SHARPE_IMPLAUSIBLE:
        out.append({"code": "sharpe_implausible", "message":
                    f"annualised Sharpe {sr:.1f} is beyond +-{SHARPE_IMPLAUSIBLE:g}: no strategy "
                    f"sustains that; suspect the simulation (fills too easy, marks too smooth) "
                    f"or too short a sample"})
    n_ret, dur = sharpe_st["returns"], sharpe_st["duration_s"]
    if n_ret < MIN_RETURNS or dur < SECONDS_PER_DAY:
        what = (f"no Sharpe: {n_ret} {_period_name(sharpe_st['period_s'])} returns in "
                f"{dur:.3g} s (it needs 2 or more; reported as 0)" if n_ret < 2 else
                f"Sharpe from {n_ret} {_period_name(sharpe_st['period_s'])} returns over "
                f"{dur / 3600:.2g} h: an annual figure from under a day (or under "
                f"{MIN_RETURNS} returns) is an extrapolation, not an estimate (standard "
                f"error ~{sharpe_st['se_annualised']:.3g} annualised)")
        out.append({"code": "sharpe_short_sample", "message": what})
    n = trades["closed_trades"]
    if n >= WIN_RATE_MIN_TRADES and trades["win_rate"] > WIN_RATE_IMPLAUSIBLE:
        out.append({"code": "win_rate_implausible", "message":
                    f"win rate {trades['win_rate']:.3f} over {n} closed trades: real fills are "
                    f"adversely selected far more often than that"})
    if n < MIN_TRADES:
        out.append({"code": "few_trades", "message":
                    f"{n} closed trades (fewer than {MIN_TRADES}): win rate, profit factor and "
                    f"mean trade PnL rest on too few trades"})
    return out


def win_rate(trade_pnls) -> float:
    p = np.asarray(trade_pnls, dtype=np.float64)
    return float((p > 0).sum() / p.size) if p.size else float("nan")


def profit_factor(trade_pnls) -> float:
    p = np.asarray(trade_pnls, dtype=np.float64)
    gains = float(p[p > 0].sum())
    losses = float(-p[p < 0].sum())
    if losses == 0.0:
        return float("inf") if gains > 0 else float("nan")
    return gains / losses


def resample(t_ns, values, period_ns: int) -> np.ndarray:
    """Last value at or before each period boundary (t_ns sorted)."""
    t = np.asarray(t_ns, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if t.size == 0:
        return v
    # integer arithmetic: np.arange(t0, t1, step) sizes itself in float64, which at epoch
    # nanoseconds (~1.7e18, a spacing of 256 ns) can drop the last boundary
    grid = t[0] + np.arange((t[-1] - t[0]) // period_ns + 1, dtype=np.int64) * period_ns
    idx = np.searchsorted(t, grid, side="right") - 1
    return v[np.clip(idx, 0, v.size - 1)]


def time_weighted_mean(t_ns, values) -> float:
    t = np.asarray(t_ns, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size < 2 or t[-1] == t[0]:
        return float(v.mean()) if v.size else 0.0
    return float((v[:-1] * np.diff(t)).sum() / (t[-1] - t[0]))


def build_report(*, curve: dict, trade_pnls, queue_times_ns, counters: dict,
                 initial_cash: float, sharpe_period_s: float | None = None,
                 markouts: dict | None = None) -> dict:
    """The report dict from an equity curve (arrays t_ns, equity, realized, unrealized, fees,
    abs_pos), the closed-trade PnLs, the maker fills' times in queue and the backtest's
    counters (fills, orders, quantities, events, max_abs_pos...). ``initial_cash`` is the
    capital the relative figures are of; ``sharpe_period_s`` overrides the return period
    (default: ``returns_period_s`` of the curve's span). ``markouts``: ``markout_report``'s
    keyword arguments but the queue times ({"sums", "names", "left_out", "dropped"}): adds
    ``markouts`` and ``fill_quality``."""
    t = np.asarray(curve["t_ns"], dtype=np.int64)
    eq = np.asarray(curve["equity"], dtype=np.float64)
    dd, dd_rel = max_drawdown(eq)
    sst = sharpe_stats(t, eq, sharpe_period_s)
    tst = trade_stats(trade_pnls, initial_cash)
    cap = float(initial_cash)
    q = np.asarray(queue_times_ns, dtype=np.float64)
    absq = np.asarray(curve["abs_pos"], dtype=np.float64)
    orders_acked = counters.get("orders_acked", 0)
    rep = {
        "pnl": {
            "total": float(eq[-1] - initial_cash) if eq.size else 0.0,
            "realized": float(curve["realized"][-1]) if eq.size else 0.0,
            "unrealized": float(curve["unrealized"][-1]) if eq.size else 0.0,
            "fees": float(curve["fees"][-1]) if eq.size else 0.0,
        },
        "capital": cap,
        "return_on_capital": float(eq[-1] - initial_cash) / cap if eq.size and cap > 0 else 0.0,
        "sharpe": sst["annualised"],
        "sharpe_basis": sst["basis"],
        "sharpe_note": sst["basis"],          # the key older readers know
        "sharpe_stats": sst,
        "max_drawdown": dd,
        "max_drawdown_frac": dd_rel,
        "max_drawdown_of_capital": dd / cap if cap > 0 else 0.0,
        "trade_stats": tst,
        "trades": int(counters.get("fills", 0)),
        "closed_trades": int(len(trade_pnls)),
        "win_rate": win_rate(trade_pnls),
        "profit_factor": profit_factor(trade_pnls),
        "fill_rate": (counters.get("orders_filled", 0) / orders_acked) if orders_acked else 0.0,
        "fill_rate_qty": (counters.get("qty_filled", 0) / counters["qty_sent"])
        if counters.get("qty_sent") else 0.0,
        "inventory_lots": {
            "mean_abs": float(absq.mean()) if absq.size else 0.0,
            "max_abs": float(max(counters.get("max_abs_pos", 0), absq.max() if absq.size else 0)),
            "time_weighted_abs": time_weighted_mean(t, absq),
        },
        "time_in_queue_ms": {
            "maker_fills": int(q.size),
            "mean": float(q.mean() / 1e6) if q.size else float("nan"),
            "median": float(np.median(q) / 1e6) if q.size else float("nan"),
            "p90": float(np.percentile(q, 90) / 1e6) if q.size else float("nan"),
        },
        "counters": {k: (int(v) if float(v).is_integer() else float(v))
                     for k, v in counters.items()},
    }
    if markouts is not None:
        m = dict(markouts)
        rep["markouts"], rep["fill_quality"] = markout_report(
            m.pop("sums"), m.pop("names"), queue_times_ns=queue_times_ns, **m)
    rep["warnings"] = report_warnings(sst, tst, rep.get("markouts"))
    return rep


def write_equity_csv(path: Path, curve: dict) -> None:
    cols = ["t_ns", "equity", "realized", "unrealized", "fees", "abs_pos"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        arrays = [np.asarray(curve[c]) for c in cols]
        for row in zip(*arrays):
            w.writerow([int(row[0])] + [repr(float(x)) for x in row[1:]])


def write_equity_png(path: Path, curve: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray(curve["t_ns"], dtype=np.int64)
    ts = (t - t[0]) / 1e9 if t.size else t
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax1.plot(ts, curve["equity"], lw=1.0, label="equity")
    ax1.set_ylabel("equity (quote)")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    ax2.plot(ts, curve["abs_pos"], lw=0.8, color="tab:orange")
    ax2.set_ylabel("|position| (lots)")
    ax2.set_xlabel("simulated seconds")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def to_json(report: dict) -> str:
    return json.dumps(_jsonable(report), indent=2, sort_keys=True)


def _duration(s: float) -> str:
    if s < 1.0:
        return f"{s * 1e3:.1f} ms"
    if s < 120.0:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def format_text(report: dict, name: str) -> str:
    p = report["pnl"]
    inv = report["inventory_lots"]
    q = report["time_in_queue_ms"]
    lines = [
        f"backtest {name}",
        f"  pnl total {p['total']:.2f}  realized {p['realized']:.2f}  "
        f"unrealized {p['unrealized']:.2f}  fees {p['fees']:.2f}"
        f"{_return_on_capital(report)}",
        *_sharpe_lines(report),
        f"  max drawdown {report['max_drawdown']:.2f} ({_pct(report['max_drawdown_frac'])} "
        f"of peak{_of_capital(report, report.get('max_drawdown_of_capital'))})",
        f"  trades {report['trades']}  closed {report['closed_trades']}  win rate "
        f"{report['win_rate']:.3f}  profit factor {report['profit_factor']:.3f}",
        *_trade_lines(report),
        f"  fill rate {report['fill_rate']:.3f} (qty {report['fill_rate_qty']:.3f})",
        f"  inventory |q| mean {inv['mean_abs']:.1f}  max {inv['max_abs']:.1f}  "
        f"time-weighted {inv['time_weighted_abs']:.1f} lots",
        f"  time in queue: {q['maker_fills']} maker fills, mean {q['mean']:.1f} ms, "
        f"median {q['median']:.1f} ms",
    ]
    lines += _markout_lines(report)
    if "turnover" in report:
        lines.append(f"  turnover {report['turnover']:.2f}")
    for name, a in (report.get("signal_agents") or {}).items():
        lines.append(f"  signal agent {name} ({a['kind']}): {a['records']:,} records in "
                     f"{a['publishes']:,} publishes")
    n_sig = report.get("counters", {}).get("signal_records", 0)
    if n_sig:
        lines.append(f"  signal records taken: {n_sig:,}")
    if report.get("mean_holding_s") is not None:
        lines.append(f"  mean holding time {_duration(report['mean_holding_s'])} "
                     f"({report['lots_opened']:.0f} lots opened)")
    rej = report.get("rejects")
    if rej is not None:
        lines.append(f"  rejects: risk {_reasons(rej.get('risk', {}))}; venue "
                     f"{_reasons(rej.get('venue', {}))}")
    for ch in report.get("params_schedule", ()):
        who = f"{ch['strategy']}: " if "strategy" in ch else ""
        vals = ", ".join(f"{k} = {v!r}" for k, v in ch["params"].items())
        lines.append(f"  at {ch['at_s']:g} s: {who}{vals}")
    if "halted" in report:
        h = report["halted"]
        lines.append(f"  halted at {h['at_s']:.3f} s: {h['reason']}")
    for w in report.get("warnings", ()):
        lines.append(f"  warning: {w['message']}")
    c = report["counters"]
    if "events" in c and "wall_s" in c:
        per_cpu = (f", {c['events'] / c['cpu_s'] / 1e6:.2f} M/CPU-s in {c['cpu_s']:.2f} "
                   "CPU-s") if c.get("cpu_s") else ""
        lines.append(f"  {c['events']} events in {c['wall_s']:.2f} s wall "
                     f"({c['events'] / max(c['wall_s'], 1e-9) / 1e6:.2f} M events/s{per_cpu})")
    if c.get("kernel_errors"):
        lines.append(f"  strategy kernel errors {c['kernel_errors']} (their "
                     f"{c.get('intents_discarded', 0)} intents discarded; the run went on)")
    return "\n".join(lines)


def _ci(ci: dict | None, fmt: str) -> str:
    if not ci:
        return ""
    if "omitted" in ci:
        return f", no 95% interval ({ci['omitted']})"
    return (f", 95% interval [{ci['low']:{fmt}}, {ci['high']:{fmt}}] (block bootstrap, "
            f"{ci['resamples']} resamples, blocks of {ci['block_len']})")


def _num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(frac: float) -> str:
    return f"{frac * 100:.3g}%"


def _return_on_capital(report: dict) -> str:
    if "return_on_capital" not in report:
        return ""
    return f"  ({_pct(report['return_on_capital'])} of capital {report['capital']:,.0f})"


def _of_capital(report: dict, frac) -> str:
    if frac is None or "capital" not in report:
        return ""
    return f", {_pct(frac)} of capital {report['capital']:,.0f}"


def _sharpe_lines(report: dict) -> list[str]:
    st = report.get("sharpe_stats")
    if st is None:
        return [f"  sharpe {report['sharpe']:.2f} ({report.get('sharpe_note', '')})"]
    return [f"  sharpe {report['sharpe']:.2f} annualised, {st['daily']:.3f} daily-equivalent "
            f"(standard error {_num(st['se_annualised'], '.3g')}{_ci(st.get('ci95'), '.2f')})",
            f"    basis: {st['basis']}"]


def _trade_lines(report: dict) -> list[str]:
    ts = report.get("trade_stats")
    if ts is None or not ts["closed_trades"]:
        return []
    pct = _pct if ts["capital"] > 0 else (lambda v: "-")
    return [f"  closed trades: gross profit {ts['gross_profit']:.2f} "
            f"({pct(ts['gross_profit_of_capital'])} of capital), gross loss "
            f"{ts['gross_loss']:.2f} "
            f"({pct(ts['gross_loss_of_capital'])}), mean win {_num(ts['mean_win'], '.4g')}, "
            f"mean loss {_num(ts['mean_loss'], '.4g')}",
            f"    mean trade PnL {ts['mean_pnl']:.4g} ({pct(ts['mean_pnl_of_capital'])} of "
            f"capital){_ci(ts.get('mean_pnl_ci95'), '.4g')}"]


def _signed(x, fmt: str = "+.3f") -> str:
    return "-" if x is None else format(x, fmt)


def _markout_lines(report: dict) -> list[str]:
    mo = report.get("markouts")
    if not mo or not mo["all"]["at_fill"]["n"]:
        return []
    names = list(mo["all"])
    lines = ["  markouts: side x (mid after - fill price), mean ticks +- standard error "
             "(+ = our way, - = adverse); quote: mean per fill",
             "    " + f"{'':6}{'fills':>7}" + "".join(f"{n:>17}" for n in names)]
    for g in ("buy", "sell", "maker", "taker", "all"):
        row = mo[g]
        if not row[names[0]]["n"]:
            continue
        cells = []
        for n in names:
            c = row[n]
            se = f"+-{c['se_ticks']:.2f}" if c["se_ticks"] is not None else ""
            cells.append(f"{_signed(c['mean_ticks'], '+.2f') + se:>17}")
        lines.append(f"    {g:6}{row[names[0]]['n']:>7}" + "".join(cells))
    mk = mo["maker"]
    if mk[names[0]]["n"]:
        lines.append("    " + f"{'drift':6}{'':7}" + "".join(
            f"{_signed(mk[n]['drift_ticks'], '+.2f'):>17}" for n in names)
            + "   (makers: mid since the fill)")
    a = mo["all"]
    lines.append("    " + f"{'quote':6}{'':7}" + "".join(
        f"{_signed(a[n]['mean_quote'], '+.4g'):>17}" for n in names))
    left = {k: v for k, v in mo.get("left_out", {}).items() if v}
    if left:
        lines.append("    left out (horizon after the end of the run): "
                     + ", ".join(f"{k} {v}" for k, v in left.items()))
    fq = report.get("fill_quality")
    if fq:
        tq = fq["time_in_queue_ms"]
        lines.append(f"  fill quality: edge at fill {_signed(fq['edge_at_fill_ticks'])} ticks, "
                     f"effective spread {_signed(fq['effective_spread_ticks'])}, realized "
                     f"spread 1 s {_signed(fq['realized_spread_1s_ticks'])}, price impact 1 s "
                     f"{_signed(fq['price_impact_1s_ticks'])}; time in queue p50 "
                     f"{_signed(tq['p50'], '.1f')} ms, p90 {_signed(tq['p90'], '.1f')} ms")
    return lines


def _reasons(counts: dict) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda x: -x[1]))


def format_portfolio(report: dict) -> str:
    """Text of a run of several strategies: each one's report, then the total."""
    parts = [format_text(rep, name) for name, rep in report["strategies"].items()]
    names = ", ".join(report["strategies"])
    parts.append(format_text(report["total"], f"total ({names} together on "
                                               f"{report['source']})"))
    return "\n".join(parts)
