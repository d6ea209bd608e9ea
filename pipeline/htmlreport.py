"""``run.py report RUN_DIR``: one self-contained HTML page (PNG plots embedded as base64) of a
live run or a backtest. Cold path (operator's shell); matplotlib with the Agg backend.

Sections (each has an ``id`` a test looks for, and says so when its data is absent):
``summary``, ``equity`` (equity and drawdown), ``latency`` (CDFs from the .hgrm dumps),
``fills`` (fills over the price, per instrument), ``pnl`` (PnL by strategy), ``rejects``
(rejects by reason).
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from pipeline.rundir import (RunDir, equity_from_fills, fills_of, pnl_by_strategy,
                             read_hgrm, rejects_by_reason)

SECTIONS = ("summary", "equity", "latency", "fills", "pnl", "rejects")
MAX_INSTRUMENT_PLOTS = 6
MAX_FILL_MARKERS = 20_000       # more fills are thinned evenly for the scatter (all are counted)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(rows, head) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# -- sections ----------------------------------------------------------------------------
def equity_section(run: RunDir) -> str:
    plt = _plt()
    if run.kind == "backtest" and run.curves:
        series = {n: (c["t_ns"], c["equity"]) for n, c in run.curves.items() if len(c["t_ns"])}
        what = "equity (quote currency), sampled by the backtest; drawdown from its running peak"
        xlab = "simulated seconds"
    else:
        series = {n: (c["t_ns"], c["pnl"]) for n, c in equity_from_fills(run).items()}
        what = ("PnL per strategy after each fill, from the journal: cash from fills less fees, "
                "positions marked at the last fill price (report.json's final figures are "
                "marked at the mid); drawdown from the running peak")
        xlab = "seconds since the first fill"
    if not series:
        return _section("equity", "Equity and drawdown", _note("no equity curve and no fills "
                                                               "in this run"))
    t0 = min(int(t[0]) for t, _ in series.values())
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    rows = []
    for name, (t, e) in series.items():
        x = (np.asarray(t) - t0) / 1e9
        e = np.asarray(e, dtype=float)
        dd = np.maximum.accumulate(e) - e
        ax1.plot(x, e, lw=1.0, label=name)
        ax2.plot(x, -dd, lw=0.8, label=name)
        rows.append((name, f"{e[-1]:.2f}", f"{dd.max():.2f}", len(e)))
    ax1.set_ylabel("equity" if run.kind == "backtest" and run.curves else "PnL")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_ylabel("drawdown")
    ax2.set_xlabel(xlab)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    body = _note(what) + _img(_png(fig), "equity and drawdown") + \
        _table(rows, ("curve", "last", "max drawdown", "points"))
    return _section("equity", "Equity and drawdown", body)


def latency_section(run: RunDir) -> str:
    if not run.hgrm:
        why = ("a backtest's latencies are its simulated model's, not measured: no .hgrm dumps"
               if run.kind == "backtest" else "no latency/*.hgrm dumps in this run")
        return _section("latency", "Latency CDFs", _note(why))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 5))
    rows = []
    for name, path in run.hgrm.items():
        v, q, total = read_hgrm(path)
        if not total or not len(v):
            rows.append((name, 0, "-", "-", "-", "-"))
            continue
        ax.step(np.maximum(v, 1e-3), q, where="post", lw=1.0, label=name)

        def pct(p):
            k = int(np.searchsorted(q, p, side="left"))
            return f"{v[min(k, len(v) - 1)]:.2f}"
        rows.append((name, total, pct(0.5), pct(0.9), pct(0.99), f"{v[-1]:.2f}"))
    ax.set_xscale("log")
    ax.set_xlabel("latency (us, log scale)")
    ax.set_ylabel("fraction at or below")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    body = _img(_png(fig), "latency CDFs") + _table(
        rows, ("hop", "count", "p50 us", "p90 us", "p99 us", "max us"))
    return _section("latency", "Latency CDFs", body)


def fills_section(run: RunDir) -> str:
    from shm.records import SIDE_BUY

    fills = fills_of(run.execs)
    if not len(fills):
        return _section("fills", "Fills over the price", _note("no fills in the journal"))
    plt = _plt()
    ids = [int(i) for i in np.unique(fills["instrument_id"])][:MAX_INSTRUMENT_PLOTS]
    fig, axes = plt.subplots(len(ids), 1, figsize=(10, 3.2 * len(ids)), squeeze=False)
    t0 = int(fills["send_ts_ns"].min())
    rows = []
    execs = run.execs
    for ax, iid in zip(axes[:, 0], ids):
        inst = run.instrument(iid)
        tick = float(inst.tick_size) if inst else 1.0
        label = inst.key if inst else f"instrument {iid}"
        # the price: every execution report's price on this instrument (acks carry the order
        # price, fills the trade price), in time order
        ex = execs[(execs["instrument_id"] == iid) & (execs["px_ticks"] > 0)]
        ex = ex[np.argsort(ex["send_ts_ns"], kind="stable")]
        ax.plot((ex["send_ts_ns"] - t0) / 1e9, ex["px_ticks"] * tick, lw=0.5, color="0.6",
                label="order / trade prices")
        f = fills[fills["instrument_id"] == iid]
        step = max(1, len(f) // MAX_FILL_MARKERS)
        for side, color, marker, name in ((SIDE_BUY, "tab:green", "^", "buy"),
                                          (None, "tab:red", "v", "sell")):
            s = f[f["side"] == side] if side is not None else f[f["side"] != SIDE_BUY]
            s = s[::step]
            ax.scatter((s["send_ts_ns"] - t0) / 1e9, s["px_ticks"] * tick, s=12, c=color,
                       marker=marker, label=f"{name} fills", zorder=3)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("price")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        rows.append((label, len(f), int((f["side"] == SIDE_BUY).sum()),
                     int((f["side"] != SIDE_BUY).sum()), int(f["qty_lots"].sum())))
    axes[-1, 0].set_xlabel("seconds since the first fill")
    fig.tight_layout()
    body = _img(_png(fig), "fills over the price") + _table(
        rows, ("instrument", "fills", "buys", "sells", "lots"))
    return _section("fills", "Fills over the price", body)


def pnl_section(run: RunDir) -> str:
    per = pnl_by_strategy(run)
    if not per:
        return _section("pnl", "PnL by strategy", _note("no strategy figures in this run"))
    plt = _plt()
    names = list(per)
    vals = [per[n]["pnl"] for n in names]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.5))
    ax.barh(names, vals, color=["tab:green" if v >= 0 else "tab:red" for v in vals])
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("PnL (quote currency)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    rows = [(n, *(f"{per[n].get(k, float('nan')):.2f}"
                  for k in ("pnl", "realized", "unrealized", "fees"))) for n in names]
    return _section("pnl", "PnL by strategy", _img(_png(fig), "PnL by strategy") + _table(
        rows, ("strategy", "PnL", "realized", "unrealized", "fees")))


def rejects_section(run: RunDir) -> str:
    rej = rejects_by_reason(run)
    if run.kind == "backtest" and not rej:
        for name, rep in run.report.items():     # the backtest's own counts, if any
            if name.startswith("_") or not isinstance(rep.get("rejects"), dict):
                continue
            for where, counts in rep["rejects"].items():
                for reason, n in (counts or {}).items():
                    k = f"{where}:{reason}"
                    rej[k] = rej.get(k, 0) + int(n)
    if not rej:
        return _section("rejects", "Rejects by reason", _note("no rejects"))
    plt = _plt()
    items = sorted(rej.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(items) + 1.5))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:orange")
    ax.set_xlabel("rejects")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return _section("rejects", "Rejects by reason", _img(_png(fig), "rejects by reason") +
                    _table(sorted(rej.items(), key=lambda kv: -kv[1]), ("reason", "count")))


def summary_section(run: RunDir) -> str:
    fills = fills_of(run.execs)
    rows = [("run directory", str(run.path)), ("kind", run.kind),
            ("intents journaled", len(run.orders)), ("execution reports", len(run.execs)),
            ("fills", len(fills)),
            ("instruments", ", ".join(i.key for i in run.instruments) or "-")]
    if run.kind == "live" and run.report:
        r = run.report
        rows += [("instance", r.get("instance", "-")), ("duration s", r.get("duration_s", "-")),
                 ("records lost", r.get("records_lost", "-")),
                 ("risk state at stop", (r.get("risk") or {}).get("state", "-"))]
    elif run.kind == "backtest":
        tot = run.report.get("_total") or next(iter(run.report.values()), {})
        p = tot.get("pnl", {})
        rows += [("PnL total", f"{p.get('total', 0.0):.2f}"),
                 ("max drawdown", f"{tot.get('max_drawdown', 0.0):.2f}"),
                 ("sharpe (annualised)", f"{tot.get('sharpe', 0.0):.2f}"),
                 ("trades", tot.get("trades", "-"))]
    return _section("summary", "Summary", _table(rows, ("", "")))


CSS = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:right}td:first-child{text-align:left}img{max-width:100%}.note{color:#666}"""


def render_html(run: RunDir) -> str:
    parts = [summary_section(run), equity_section(run), latency_section(run),
             fills_section(run), pnl_section(run), rejects_section(run)]
    title = f"hftfarm {run.kind} run report: {run.path.name}"
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "".join(parts) + "</body></html>\n")
