"""The controller's monitor: KPIs, staleness, windows and alerts, computed cold.

Runs in the controller process, on a thread of its own (``MonitorThread``) that wakes every
``[alerts] interval_s``: it reads what the stages already publish (status blocks, the risk
view, the latency histograms, the journal's record files, read incrementally from where the
last round stopped), never takes the supervision lock, and never writes shared memory, so it
adds no work on the hot path and no wait to supervision. ``status`` (the ``monitor`` key), the
Prometheus exporter (pipeline/exporter.py) and the dashboard read its last ``snapshot()``.

KPI definitions are market/report.py's (the backtest report's), applied to the live run:

- pnl: realized + unrealized - fees per strategy process (the risk gate's view); daily = since
  the trading day started (``[risk] trading_day_start_utc``) or since the run started.
- equity curve: the pnl sampled every round (the last ``CURVE_POINTS`` kept, for the page and
  VaR) and at each minute (the last ``MINUTE_POINTS``, for Sharpe); drawdown = the run's peak
  pnl minus now, max drawdown its largest value this run; Sharpe = market.report.sharpe of
  capital + pnl (``[backtest] initial_cash``) over 1-minute returns (0 before 3 minutes);
  VaR 95 = minus the 5th percentile of the per-round pnl changes (quote currency, one round's
  horizon; 0 before 20 rounds).
- closed trades: every fill of the journal's exec files, accounted with market.accounting's
  apply_fill (the one fill accounting): win rate and profit factor over all closed trades and
  over the last ``win_rate_min_trades`` (the alert's window).
- fill rate: approved new orders with at least one fill / approved new orders (journal).
- slippage: fill price against the order's limit price, ticks, signed so that positive is worse
  than the limit (a limit order fills at or better: <= 0; a market order's is its cost).
- position concentration: the largest |position| of one instrument / the sum of |positions|,
  lots, per strategy process (1.0 = all in one instrument; 0 when flat).
- rejects by reason: the journal's risk denials (``risk:<reason>``) and venue rejects
  (``venue:<reason>``), shm.records.REJECT_NAMES.
- staleness: per venue, seconds since the stage that writes its market data last published a
  record (its status block's records_out advanced).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from pathlib import Path

import numpy as np

CURVE_POINTS = 600
MINUTE_POINTS = 1440
HIST_FOR_ALERTS = "tick_to_trade"


class JournalTail:
    """Reads the records appended to a run's journal files since the last call. Cold."""

    def __init__(self, jdir: Path, prefix: str, dtype):
        self.jdir, self.prefix, self.dtype = Path(jdir), prefix, dtype
        self.offsets: dict[str, int] = {}   # file -> bytes consumed (header included)
        self.seen_seq = -1

    def read_new(self) -> np.ndarray:
        from market.recordfile import read_header

        parts = []
        for f in sorted(self.jdir.glob(f"{self.prefix}-*.rec"),
                        key=lambda p: int(p.stem.rsplit("-", 1)[1])):
            key = f.name
            if key not in self.offsets:
                try:
                    self.offsets[key] = int(read_header(f)["header_len"])
                except (OSError, ValueError):
                    continue   # header not written yet
            off = self.offsets[key]
            size = f.stat().st_size
            n = (size - off) // self.dtype.itemsize
            if n <= 0:
                continue
            recs = np.fromfile(f, dtype=self.dtype, count=n, offset=off)
            self.offsets[key] = off + n * self.dtype.itemsize
            parts.append(recs)
        if not parts:
            return np.zeros(0, dtype=self.dtype)
        out = np.concatenate(parts)
        # a restarted journal writes its predecessor's tail again: ring_seq only grows
        out = out[out["ring_seq"] > self.seen_seq]
        if len(out):
            _u, first = np.unique(out["ring_seq"], return_index=True)
            out = out[np.sort(first)]
            self.seen_seq = int(out["ring_seq"].max())
        return out


class StrategyBook:
    """One strategy process's trade figures, fed fill by fill (cold)."""

    def __init__(self, n_inst: int, window: int):
        from market.accounting import make_positions

        self.pos = make_positions(n_inst + 1)
        self.closed = []                       # closed-trade PnLs, quote currency
        self.recent = collections.deque(maxlen=window)
        self.fills = 0
        self.slippage_sum = 0.0
        self.filled_orders: set[int] = set()
        self.approved = 0


class Monitor:
    """Samples the controller's shared memory and journal; ``snapshot()`` is the last round."""

    def __init__(self, ctl, clock=time.monotonic, wall=time.time):
        from shm.records import EXEC_DTYPE, ORDER_DTYPE

        self.ctl = ctl
        self.cfg = ctl.cfg
        self.acfg = ctl.cfg.alerts
        self.clock, self.wall = clock, wall
        jdir = Path(ctl.run_dir) / "journal"
        self.orders_tail = JournalTail(jdir, "orders", ORDER_DTYPE)
        self.exec_tail = JournalTail(jdir, "exec", EXEC_DTYPE)
        insts = list(self.cfg.instruments)
        self.tick_value = np.array([0.0] + [float(i.tick_size * i.lot_size) for i in insts])
        self.inst_keys = [""] + [i.key for i in insts]
        self.books: dict[int, StrategyBook] = {}
        self.rejects: dict[str, int] = {}
        self.curve: dict[str, collections.deque] = {}
        self.day_start_pnl: dict[str, float] = {}
        self.day_key = None
        self.started = clock()
        self.md_last: dict[str, tuple[int, float]] = {}      # stage -> (records_out, when)
        self.restart_log: dict[str, collections.deque] = {}   # stage -> when restarts rose
        self.restart_seen: dict[str, int] = {}
        self.window: collections.deque = collections.deque()  # (t, approved, rejected, hist)
        self.alerts = AlertBook()
        self.on_alert = None                                  # callback(event dict)
        self.last: dict = {"kpis": {}, "alerts": [], "latency": {}, "sampled_at": None}
        self.lock = threading.Lock()

    # -- one round -----------------------------------------------------------------------
    def sample(self) -> dict:
        ctl = self.ctl
        now = self.clock()
        self._read_journal()
        stages = self._stage_words()
        risk = self._risk(now)
        staleness = self._staleness(stages, now)
        restarts = self._restarts(stages, now)
        latency, window = self._latency_window(now)
        snap = {"sampled_at": round(self.wall(), 3), "interval_s": self.acfg.interval_s,
                "kpis": risk, "staleness_s": staleness, "restarts_in_window": restarts,
                "window": window, "latency": latency,
                "rejects_by_reason": dict(self.rejects)}
        if self.acfg.enabled:
            fired, cleared = self.alerts.update(evaluate(snap, self.acfg, self.cfg), now,
                                                self.wall())
            snap["alerts"] = self.alerts.active_list()
            for ev in fired + cleared:
                if self.on_alert is not None:
                    self.on_alert(ev)
        else:
            snap["alerts"] = []
        with self.lock:
            self.last = snap
        del ctl
        return snap

    def snapshot(self) -> dict:
        with self.lock:
            return self.last

    # -- parts ---------------------------------------------------------------------------
    def _stage_words(self) -> dict:
        st = self.ctl.status
        return {s.name: st.read(s.slot) for s in self.ctl.topology.stages} if st else {}

    def _book(self, sid: int) -> StrategyBook:
        b = self.books.get(sid)
        if b is None:
            b = self.books[sid] = StrategyBook(len(self.tick_value) - 1,
                                               self.acfg.win_rate_min_trades)
        return b

    def _read_journal(self) -> None:
        from market.accounting import apply_fill
        from shm.records import (EFLAG_FROM_RISK, EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT,
                                 INTENT_NEW, SIDE_BUY)

        orders = self.orders_tail.read_new()
        new = orders[orders["kind"] == INTENT_NEW]
        self._count_rejects("risk:", new["reject_code"][new["reject_code"] != 0])
        sids, n = np.unique(new["strategy_id"][new["reject_code"] == 0], return_counts=True)
        for sid, k in zip(sids, n):
            self._book(int(sid)).approved += int(k)
        execs = self.exec_tail.read_new()
        vrej = execs[(execs["kind"] == EXEC_REJECT) & ((execs["flags"] & EFLAG_FROM_RISK) == 0)]
        self._count_rejects("venue:", vrej["reject_code"])
        for e in execs[np.isin(execs["kind"], (EXEC_FILL, EXEC_PARTIAL))]:
            b = self._book(int(e["strategy_id"]))
            i = int(e["instrument_id"])
            if not 0 < i < len(self.tick_value):
                continue
            side = int(e["side"])
            p = b.pos[i]
            before = p["fees"]
            realized = apply_fill(p, side, int(e["px_ticks"]), int(e["qty_lots"]),
                                  int(e["fee_e9"]))
            b.fills += 1
            b.filled_orders.add(int(e["client_order_id"]))
            if int(e["order_px_ticks"]) > 0:
                sign = 1.0 if side == SIDE_BUY else -1.0
                b.slippage_sum += sign * float(int(e["px_ticks"]) - int(e["order_px_ticks"]))
            if realized != 0.0:
                pnl = realized * self.tick_value[i] - (p["fees"] - before)
                b.closed.append(pnl)
                b.recent.append(pnl)

    def _count_rejects(self, prefix: str, codes) -> None:
        from shm.records import REJECT_NAMES

        for code, n in zip(*np.unique(codes, return_counts=True)):
            k = prefix + REJECT_NAMES.get(int(code), str(int(code)))
            self.rejects[k] = self.rejects.get(k, 0) + int(n)

    def _risk(self, now: float) -> dict:
        from market.report import profit_factor, sharpe, win_rate
        from stages.riskview import PNL_FEES, PNL_REALIZED, PNL_UNREALIZED

        rv = self.ctl.riskview
        if rv is None:
            return {}
        day = self._day_key()
        if day != self.day_key:
            self.day_key = day
            self.day_start_pnl = {}
        cap = float(self.cfg.backtest.initial_cash)
        t_ns = time.time_ns()
        minute = t_ns // 60_000_000_000
        out = {}
        for spec in self.ctl.topology.strategies():
            sid = spec.strategy_id
            pnl_w = rv.gate_pnl[sid]
            pnl = float(pnl_w[PNL_REALIZED] + pnl_w[PNL_UNREALIZED] - pnl_w[PNL_FEES])
            name = spec.process
            c = self.curve.get(name)
            if c is None:
                c = self.curve[name] = {"fine": collections.deque(maxlen=CURVE_POINTS),
                                        "minutes": collections.deque(maxlen=MINUTE_POINTS),
                                        "minute": minute, "peak": pnl, "max_dd": 0.0}
                c["minutes"].append(pnl)
            c["fine"].append((t_ns, pnl))
            if minute != c["minute"]:
                c["minute"] = minute
                c["minutes"].append(pnl)
            c["peak"] = max(c["peak"], pnl)
            dd = c["peak"] - pnl
            c["max_dd"] = max(c["max_dd"], dd)
            self.day_start_pnl.setdefault(name, pnl)
            pos = np.abs(rv.gate_pos[sid, 1:]).astype(np.float64)
            gross = float(pos.sum())
            b = self._book(sid)
            closed = np.asarray(b.closed, dtype=np.float64)
            recent = np.asarray(b.recent, dtype=np.float64)
            fine = np.fromiter((v for _t, v in c["fine"]), dtype=np.float64,
                               count=len(c["fine"]))
            d = np.diff(fine)
            minutes = np.fromiter(c["minutes"], dtype=np.float64, count=len(c["minutes"]))
            out[name] = {
                "strategy": spec.strategy.name, "shard": spec.shard,
                "venues": sorted({k.split("@", 1)[1] for k in spec.instruments}),
                "pnl_total": pnl, "pnl_daily": pnl - self.day_start_pnl[name],
                "drawdown": dd, "max_drawdown": c["max_dd"],
                "sharpe": _finite(sharpe(minutes + cap, 60.0)) if minutes.size >= 3 else 0.0,
                "var95": float(-np.percentile(d, 5)) if d.size >= 20 else 0.0,
                "closed_trades": int(closed.size),
                "win_rate": _finite(win_rate(closed)) if closed.size else None,
                "profit_factor": _finite(profit_factor(closed)) if closed.size else None,
                "recent_trades": int(recent.size),
                "recent_win_rate": _finite(win_rate(recent)) if recent.size else None,
                "fills": b.fills, "approved_orders": b.approved,
                "fill_rate": len(b.filled_orders) / b.approved if b.approved else 0.0,
                "slippage_ticks": b.slippage_sum / b.fills if b.fills else 0.0,
                "position_concentration": float(pos.max() / gross) if gross else 0.0,
                "pnl_curve": [[int(a // 1_000_000), round(v, 6)] for a, v in
                              list(c["fine"])[-120:]]}
        return out

    def _day_key(self):
        hh, mm = map(int, self.cfg.risk.trading_day_start_utc.split(":"))
        t = self.wall() - hh * 3600 - mm * 60
        return int(t // 86400)

    def _staleness(self, stages: dict, now: float) -> dict:
        from stages.topology import sim_venues

        out = {}
        writers = {"venue": sim_venues(self.cfg)}
        for f in self.ctl.topology.feeds():
            writers[f.name] = [f.venue]
        for stage, venues in writers.items():
            w = stages.get(stage)
            if w is None:
                continue
            n = w["records_out"]
            seen = self.md_last.get(stage)
            if seen is None or n != seen[0]:
                self.md_last[stage] = (n, now)
                seen = self.md_last[stage]
            for v in venues:
                out[v] = round(now - seen[1], 3)
        return out

    def _restarts(self, stages: dict, now: float) -> dict:
        out = {}
        win = self.acfg.restarts_window_s
        for name, w in stages.items():
            n = w["restarts"]
            log = self.restart_log.setdefault(name, collections.deque())
            prev = self.restart_seen.get(name, 0)
            for _ in range(max(0, n - prev)):
                log.append(now)
            self.restart_seen[name] = n
            while log and now - log[0] > win:
                log.popleft()
            out[name] = len(log)
        return out

    def _latency_window(self, now: float):
        """Latency percentiles (all run) per histogram, and the alert window: rejects per
        second, reject fraction, tick-to-trade p99 over the last ``window_s``."""
        from stages.riskview import G_APPROVED, G_REJECTED

        latency = {}
        t2t = None
        for name, h in self.ctl.hists.items():
            snap = h.snapshot()
            s = snap.summary()
            latency[name] = {k: s[k] for k in ("count", "p50_ns", "p90_ns", "p99_ns",
                                              "p999_ns", "max_ns") if k in s}
            if name == HIST_FOR_ALERTS:
                t2t = snap
        rv = self.ctl.riskview
        appr = int(rv.gate[G_APPROVED]) if rv is not None else 0
        rej = int(rv.gate[G_REJECTED]) if rv is not None else 0
        self.window.append((now, appr, rej, t2t))
        while len(self.window) > 1 and now - self.window[1][0] >= self.acfg.window_s:
            self.window.popleft()
        t0, a0, r0, h0 = self.window[0]
        span = max(now - t0, 1e-9)
        d_rej, d_all = rej - r0, (rej - r0) + (appr - a0)
        win = {"span_s": round(now - t0, 3), "rejects_per_s": d_rej / span if now > t0 else 0.0,
               "reject_fraction": d_rej / d_all if d_all > 0 else 0.0,
               "tick_to_trade_count": 0, "tick_to_trade_p99_us": None}
        if t2t is not None and h0 is not None:
            from shm.histogram import LatencyHistogram

            delta = LatencyHistogram(t2t.array.copy()).delta(h0) if h0 is not t2t else None
            if delta is not None and delta.count:   # none in the first round: no window yet
                win["tick_to_trade_count"] = delta.count
                win["tick_to_trade_p99_us"] = delta.percentile(99) / 1e3
        return latency, win


def _finite(x):
    return None if x is None or not math.isfinite(x) else float(x)


# ------------------------------------------------------------------------------------------
# Alerts: pure evaluation of a monitor snapshot, and the book of active alerts
# ------------------------------------------------------------------------------------------
ALERT_NAMES = ("win_rate_degraded", "drawdown_excessive", "latency_degraded", "feed_stale",
               "reject_spike", "stage_restarting")


def evaluate(snap: dict, a, cfg) -> dict:
    """{(alert, subject): (severity, message)} of the conditions true in ``snap`` (a monitor
    snapshot, the ``monitor`` key of ``status --json``), under thresholds ``a`` ([alerts]) and
    ``cfg`` (its [risk] max_drawdown)."""
    out = {}
    for name, k in (snap.get("kpis") or {}).items():
        wr, n = k.get("recent_win_rate"), k.get("recent_trades", 0)
        if wr is not None and n >= a.win_rate_min_trades and wr < a.win_rate_min:
            out[("win_rate_degraded", name)] = (
                "warning", f"{name}: win rate {wr:.2f} over its last {n} closed trades, below "
                f"{a.win_rate_min:.2f}")
        limit = a.drawdown_fraction * cfg.risk.max_drawdown
        if k.get("drawdown", 0.0) >= limit:
            out[("drawdown_excessive", name)] = (
                "critical", f"{name}: drawdown {k['drawdown']:.2f} from its peak, at or above "
                f"{limit:.2f} ({a.drawdown_fraction:g} of [risk] max_drawdown)")
    w = snap.get("window") or {}
    p99 = w.get("tick_to_trade_p99_us")
    if p99 is not None and w.get("tick_to_trade_count", 0) >= a.latency_min_count \
            and p99 > a.tick_to_trade_p99_us:
        out[("latency_degraded", "tick_to_trade")] = (
            "warning", f"tick-to-trade p99 {p99:.0f} us over the last {w.get('span_s', 0):.0f} "
            f"s, above {a.tick_to_trade_p99_us:.0f} us")
    for venue, age in (snap.get("staleness_s") or {}).items():
        if age >= a.stale_feed_s:
            out[("feed_stale", venue)] = (
                "critical", f"venue {venue}: no market record for {age:.1f} s "
                f"(limit {a.stale_feed_s:g} s)")
    rps, frac = w.get("rejects_per_s", 0.0), w.get("reject_fraction", 0.0)
    if rps > a.reject_rate_per_s and frac >= a.reject_fraction:
        out[("reject_spike", "risk_gate")] = (
            "warning", f"{rps:.1f} risk denials/s ({frac:.0%} of decisions) over the last "
            f"{w.get('span_s', 0):.0f} s, above {a.reject_rate_per_s:g}/s")
    for stage, n in (snap.get("restarts_in_window") or {}).items():
        if n >= a.restarts_max:
            out[("stage_restarting", stage)] = (
                "critical", f"stage {stage} restarted {n} times within "
                f"{a.restarts_window_s:g} s")
    return out


class AlertBook:
    """The alerts now firing; ``update`` returns the events (fired, cleared) of a round."""

    def __init__(self):
        self.active: dict[tuple, dict] = {}

    def update(self, conditions: dict, now: float, wall: float):
        fired, cleared = [], []
        for key, (sev, msg) in conditions.items():
            if key not in self.active:
                ev = {"alert": key[0], "subject": key[1], "severity": sev, "message": msg,
                      "state": "firing", "since": round(wall, 3)}
                self.active[key] = ev
                fired.append(dict(ev))
            else:
                self.active[key]["message"] = msg
        for key in list(self.active):
            if key not in conditions:
                ev = self.active.pop(key)
                cleared.append({**ev, "state": "cleared", "cleared_at": round(wall, 3)})
        return fired, cleared

    def active_list(self) -> list[dict]:
        return [dict(v) for v in self.active.values()]


class MonitorThread:
    """Runs ``Monitor.sample`` every ``interval_s`` on a daemon thread; ``close`` joins it."""

    def __init__(self, monitor: Monitor, interval_s: float, log):
        self.monitor, self.interval_s, self.log = monitor, interval_s, log
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.monitor.sample()
            except Exception as exc:   # the monitor must never take the controller down
                self.errors += 1
                if self.errors <= 3:
                    self.log(f"monitor round failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
