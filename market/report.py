"""Backtest metrics, equity-curve CSV and PNG. Cold path (runs once after a backtest).

Definitions (each is a small function so a test can check it on a scripted curve):

- equity(t) = initial cash + realized PnL + unrealized PnL (positions marked at the mid) - fees;
  sampled by the backtest every ``sample_ns`` of simulated time.
- Sharpe: per-period simple returns r_k = (E_k - E_{k-1}) / E_{k-1} of the equity sampled every
  ``period_s`` (default 1 s), annualised as mean(r) / std(r) * sqrt(periods per year) with a
  365 x 24 x 3600 s year (crypto venues trade around the clock); 0 when std(r) == 0.
- max drawdown: the largest drop from a running peak of equity, in quote currency (and as a
  fraction of that peak).
- trades: fills. A *closed trade* is a fill that reduces a position; its PnL is the realized PnL
  against the average entry price minus the fees of that fill. win rate = closed trades with
  PnL > 0 / closed trades; profit factor = sum of positive PnLs / |sum of negative PnLs|
  (inf with no loss, 0 with no gain, nan with neither).
- fill rate: orders with at least one fill / orders accepted by the venue; also filled / sent
  quantity.
- inventory: mean |q| over samples, max |q| (over fills, so nothing is missed between samples),
  time-weighted mean |q| (integral of |q| dt / duration), in lots, summed over instruments.
- time in queue: from the venue's ack of a passive order to each of its maker fills.
- turnover: traded notional, sum of price x quantity over fills, quote currency.
- rejects: risk denials and venue rejects counted by reason (shm.records.REJECT_NAMES).

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
    grid = np.arange(t[0], t[-1] + 1, period_ns, dtype=np.int64)
    idx = np.searchsorted(t, grid, side="right") - 1
    return v[np.clip(idx, 0, v.size - 1)]


def time_weighted_mean(t_ns, values) -> float:
    t = np.asarray(t_ns, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size < 2 or t[-1] == t[0]:
        return float(v.mean()) if v.size else 0.0
    return float((v[:-1] * np.diff(t)).sum() / (t[-1] - t[0]))


def build_report(*, curve: dict, trade_pnls, queue_times_ns, counters: dict,
                 initial_cash: float, sharpe_period_s: float = 1.0) -> dict:
    """The report dict from an equity curve (arrays t_ns, equity, realized, unrealized, fees,
    abs_pos), the closed-trade PnLs, the maker fills' times in queue and the backtest's
    counters (fills, orders, quantities, events, max_abs_pos...)."""
    t = np.asarray(curve["t_ns"], dtype=np.int64)
    eq = np.asarray(curve["equity"], dtype=np.float64)
    dd, dd_rel = max_drawdown(eq)
    period_ns = int(sharpe_period_s * 1e9)
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
        "sharpe": sharpe(resample(t, eq, period_ns), sharpe_period_s),
        "sharpe_note": f"per-{sharpe_period_s:g}s returns, x sqrt(365*86400/{sharpe_period_s:g})",
        "max_drawdown": dd,
        "max_drawdown_frac": dd_rel,
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
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def to_json(report: dict) -> str:
    return json.dumps(_jsonable(report), indent=2, sort_keys=True)


def format_text(report: dict, name: str) -> str:
    p = report["pnl"]
    inv = report["inventory_lots"]
    q = report["time_in_queue_ms"]
    lines = [
        f"backtest {name}",
        f"  pnl total {p['total']:.2f}  realized {p['realized']:.2f}  "
        f"unrealized {p['unrealized']:.2f}  fees {p['fees']:.2f}",
        f"  sharpe {report['sharpe']:.2f} ({report['sharpe_note']})  max drawdown "
        f"{report['max_drawdown']:.2f} ({report['max_drawdown_frac'] * 100:.3f}%)",
        f"  trades {report['trades']}  closed {report['closed_trades']}  win rate "
        f"{report['win_rate']:.3f}  profit factor {report['profit_factor']:.3f}",
        f"  fill rate {report['fill_rate']:.3f} (qty {report['fill_rate_qty']:.3f})",
        f"  inventory |q| mean {inv['mean_abs']:.1f}  max {inv['max_abs']:.1f}  "
        f"time-weighted {inv['time_weighted_abs']:.1f} lots",
        f"  time in queue: {q['maker_fills']} maker fills, mean {q['mean']:.1f} ms, "
        f"median {q['median']:.1f} ms",
    ]
    if "turnover" in report:
        lines.append(f"  turnover {report['turnover']:.2f}")
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
