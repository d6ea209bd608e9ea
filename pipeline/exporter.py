"""Prometheus exporter of the controller: ``/metrics`` on loopback (``[metrics]``).

Runs in the controller process, on prometheus_client's HTTP server thread (a WSGI server of its
own, never the supervision loop). Each scrape runs ``HftfarmCollector.collect``: it reads the
stages' status blocks and the latency histograms in shared memory (copies, no lock, no write),
the risk view, and the monitor's last round (pipeline/monitor.py: KPIs, staleness, alerts).
Nothing is added to any stage's hot path: every figure here is one the stages publish already.

Series (all prefixed ``hftfarm_``; labels ``instance`` = the hftfarm instance name):

  per stage      stage_up, stage_state, stage_heartbeat_age_seconds, stage_records_in_total,
                 stage_records_out_total, stage_ring_lag_records, stage_records_lost_total,
                 stage_errors_total, stage_restarts_total, stage_restarts_in_window
  per strategy   strategy_pnl, strategy_pnl_daily, strategy_realized_pnl,
  (strategy, shard, process)  strategy_unrealized_pnl, strategy_fees, strategy_drawdown,
                 strategy_max_drawdown, strategy_sharpe, strategy_var95, strategy_win_rate,
                 strategy_recent_win_rate, strategy_profit_factor, strategy_closed_trades,
                 strategy_fills_total, strategy_fill_rate, strategy_slippage_ticks,
                 strategy_position_concentration, strategy_open_orders,
                 strategy_position_lots (+ instrument, venue)
  per venue      feed_staleness_seconds
  risk           risk_state (state label, 1 for the current one), risk_approved_total,
                 risk_rejected_total, rejects_total (reason), orders_sent_total,
                 fills_total, open_orders, records_lost_total, uptime_seconds,
                 alerts_firing (alert, subject, severity), reject_rate_per_second
  latency        latency_seconds (hop): histogram at LATENCY_BUCKETS_S, converted from the
                 HDR counts: each HDR slot whose highest value is <= a boundary counts under
                 it (a slot straddling a boundary counts in the next one: the HDR slots are
                 at most 0.78 % wide, so that is the error); tick-to-trade is hop
                 ``tick_to_trade``.

  farms          farm_pnl, farm_shards, farm_shards_running, farm_budget_notional,
  (farm)         farm_budget_loss, farm_budget_rounds_total, farm_budget_value (shard,
                 param: the budget parameter in force on each shard),
                 farm_signal_cells / farm_signal_valid_cells / farm_signal_oldest_age_seconds /
                 farm_signal_dropouts_total (shard, signal: each subscription as that shard
                 sees it)
  signal agents  signal_agent_up, signal_published_total, signal_last_publish_age_seconds
  (agent, kind)

The farm series are those of ``status``'s ``farms`` (pipeline/farm_status.py), computed the
same way. Goals do not exist in hftfarm yet: no series or labels for them.
"""
from __future__ import annotations

import math
import socket
import time

import numpy as np

LATENCY_BUCKETS_S = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3,
                     1e-2, 5e-2, 0.1, 1.0)
_SLOTS = None


def _boundary_slots() -> np.ndarray:
    """For each boundary, the last HDR counts slot whose highest value is <= it. The slots'
    value ranges rise with their index (HdrHistogram's layout: bucket 0 holds 0..255 at unit
    width, bucket k >= 1 its upper half 2**(k+7)..2**(k+8)-1, no slot overlaps another), so a
    cumulative sum read at these slots is the Prometheus bucket count."""
    from shm.histogram import BUCKET_HIGH

    assert np.all(np.diff(BUCKET_HIGH) > 0), "HDR slots must rise with their index"
    bounds_ns = np.array([round(b * 1e9) for b in LATENCY_BUCKETS_S], dtype=np.int64)
    return np.searchsorted(BUCKET_HIGH, bounds_ns, side="right") - 1


def hdr_to_buckets(array: np.ndarray) -> tuple[list[tuple[str, int]], float, int]:
    """(cumulative [(le, count)...,("+Inf", total)], sum in seconds, total) of an HDR array."""
    global _SLOTS
    from shm.histogram import H_SUM, HEADER_WORDS

    if _SLOTS is None:
        _SLOTS = _boundary_slots()
    cum = np.cumsum(array[HEADER_WORDS:])   # one pass: a consistent copy of the live counts
    total = int(cum[-1])
    out = [(_LE[i], int(cum[k])) if k >= 0 else (_LE[i], 0) for i, k in enumerate(_SLOTS)]
    out.append(("+Inf", total))
    return out, float(array[H_SUM]) / 1e9, total


def _le(b: float) -> str:
    return repr(float(b))


_LE = [_le(b) for b in LATENCY_BUCKETS_S]


KPI_GAUGES = (  # monitor KPI key -> (metric suffix, help)
    ("pnl_daily", "strategy_pnl_daily", "PnL since the trading day started, quote currency"),
    ("drawdown", "strategy_drawdown", "drop of the PnL curve from its peak now, quote"),
    ("max_drawdown", "strategy_max_drawdown", "largest drop of the PnL curve this run, quote"),
    ("sharpe", "strategy_sharpe", "annualised Sharpe of 1-minute returns of capital + PnL"),
    ("var95", "strategy_var95", "one-round 95 % value at risk of the PnL, quote"),
    ("win_rate", "strategy_win_rate", "closed trades with PnL > 0 / closed trades"),
    ("recent_win_rate", "strategy_recent_win_rate", "win rate of the recent closed trades "
     "([alerts] win_rate_min_trades)"),
    ("profit_factor", "strategy_profit_factor", "gross profit / gross loss of closed trades"),
    ("closed_trades", "strategy_closed_trades", "closed trades (fills that reduced a position)"),
    ("fill_rate", "strategy_fill_rate", "approved new orders with a fill / approved new orders"),
    ("slippage_ticks", "strategy_slippage_ticks", "mean fill price against the order's limit, "
     "ticks, positive = worse"),
    ("position_concentration", "strategy_position_concentration", "largest |position| of one "
     "instrument / sum of |positions| (lots)"),
)


class HftfarmCollector:
    """A prometheus_client custom collector over one controller's shared memory."""

    def __init__(self, ctl):
        self.ctl = ctl

    def describe(self):
        return []   # no describe-time collect (the registry would scrape at registration)

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)

        from common.status import STATE_NAMES
        from shm.records import RISK_STATE_NAMES
        from stages.riskview import (G_APPROVED, G_REJECTED, G_STATE, PNL_FEES, PNL_REALIZED,
                                     PNL_UNREALIZED, R_FILLS, R_OPEN, R_SENT)

        ctl = self.ctl
        inst = ctl.instance
        status, rv = ctl.status, ctl.riskview
        if status is None or rv is None:
            return
        mon = ctl.monitor.snapshot() if getattr(ctl, "monitor", None) is not None else {}

        def g(name, doc, labels=()):
            return GaugeMetricFamily(f"hftfarm_{name}", doc, labels=["instance", *labels])

        def c(name, doc, labels=()):
            return CounterMetricFamily(f"hftfarm_{name}", doc, labels=["instance", *labels])

        # -- stages ----------------------------------------------------------------------
        up = g("stage_up", "1 when the stage is RUNNING", ["stage", "role"])
        state = g("stage_state", "1 for the stage's current state", ["stage", "role", "state"])
        hb = g("stage_heartbeat_age_seconds", "seconds since the stage's last heartbeat",
               ["stage", "role"])
        rin = c("stage_records_in", "records the stage read", ["stage", "role"])
        rout = c("stage_records_out", "records the stage wrote", ["stage", "role"])
        lag = g("stage_ring_lag_records", "records visible but not yet read, over its inputs",
                ["stage", "role"])
        lost = c("stage_records_lost", "market records lost to lapping", ["stage", "role"])
        err = c("stage_errors", "errors the stage counted", ["stage", "role"])
        rst = c("stage_restarts", "restarts of the stage this run", ["stage", "role"])
        rwin = g("stage_restarts_in_window", "restarts within [alerts] restarts_window_s",
                 ["stage", "role"])
        now_ns = time.monotonic_ns()
        total_lost = 0
        rw = mon.get("restarts_in_window") or {}
        for spec in ctl.topology.stages:
            b = status.read(spec.slot)
            lb = [inst, spec.name, spec.role]
            name = STATE_NAMES.get(b["state"], "?")
            up.add_metric(lb, 1.0 if name == "RUNNING" else 0.0)
            state.add_metric(lb + [name], 1.0)
            hb.add_metric(lb, (now_ns - b["heartbeat_ns"]) / 1e9 if b["heartbeat_ns"] else
                          float("nan"))
            rin.add_metric(lb, b["records_in"])
            rout.add_metric(lb, b["records_out"])
            lag.add_metric(lb, b["ring_lag"])
            lost.add_metric(lb, b["records_lost"])
            err.add_metric(lb, b["errors"])
            rst.add_metric(lb, b["restarts"])
            rwin.add_metric(lb, rw.get(spec.name, 0))
            total_lost += b["records_lost"]
        yield from (up, state, hb, rin, rout, lag, lost, err, rst, rwin)

        # -- strategies ------------------------------------------------------------------
        sl = ["strategy", "shard", "process"]
        pnl = g("strategy_pnl", "realized + unrealized - fees, quote currency (total)", sl)
        real = g("strategy_realized_pnl", "realized PnL, quote", sl)
        unreal = g("strategy_unrealized_pnl", "unrealized PnL, quote", sl)
        fees = g("strategy_fees", "fees paid, quote", sl)
        opn = g("strategy_open_orders", "orders open at the venue", sl)
        fills = c("strategy_fills", "fills (journal)", sl)
        posm = g("strategy_position_lots", "position, lots (risk gate's view)",
                 sl + ["instrument", "venue"])
        kpi = {key: g(metric, doc, sl) for key, metric, doc in KPI_GAUGES}
        kpis = mon.get("kpis") or {}
        insts = list(ctl.cfg.instruments)
        for spec in ctl.topology.strategies():
            sid = spec.strategy_id
            lb = [inst, spec.strategy.name, str(spec.shard), spec.process]
            w = rv.gate_pnl[sid]
            pnl.add_metric(lb, float(w[PNL_REALIZED] + w[PNL_UNREALIZED] - w[PNL_FEES]))
            real.add_metric(lb, float(w[PNL_REALIZED]))
            unreal.add_metric(lb, float(w[PNL_UNREALIZED]))
            fees.add_metric(lb, float(w[PNL_FEES]))
            opn.add_metric(lb, float(rv.router_open[sid]))
            k = kpis.get(spec.process) or {}
            fills.add_metric(lb, k.get("fills", 0))
            for i, ic in enumerate(insts, start=1):
                if ic.key in spec.instruments:
                    posm.add_metric(lb + [ic.symbol, ic.venue], float(rv.gate_pos[sid, i]))
            for key, _m, _d in KPI_GAUGES:
                v = k.get(key)
                kpi[key].add_metric(lb, float("nan") if v is None else float(v))
        yield from (pnl, real, unreal, fees, opn, fills, posm, *kpi.values())

        # -- venues, risk, alerts --------------------------------------------------------
        stale = g("feed_staleness_seconds", "seconds since the venue's last market record",
                  ["venue"])
        for venue, age in (mon.get("staleness_s") or {}).items():
            stale.add_metric([inst, venue], age)
        yield stale
        rs = g("risk_state", "1 for the risk gate's current state", ["state"])
        cur = RISK_STATE_NAMES.get(int(rv.gate[G_STATE]), "?")
        for s in RISK_STATE_NAMES.values():
            rs.add_metric([inst, s], 1.0 if s == cur else 0.0)
        yield rs
        for name, doc, v in (("risk_approved", "orders the gate approved", rv.gate[G_APPROVED]),
                             ("risk_rejected", "orders the gate denied", rv.gate[G_REJECTED]),
                             ("orders_sent", "orders the router sent", rv.router[R_SENT]),
                             ("fills", "fills the router handled", rv.router[R_FILLS]),
                             ("records_lost", "market records lost, all stages", total_lost)):
            m = c(name, doc)
            m.add_metric([inst], int(v))
            yield m
        m = g("open_orders", "orders open at the venues")
        m.add_metric([inst], int(rv.router[R_OPEN]))
        yield m
        rej = c("rejects", "denials and venue rejects by reason (journal)", ["reason"])
        for reason, n in sorted((mon.get("rejects_by_reason") or {}).items()):
            rej.add_metric([inst, reason], n)
        yield rej
        m = g("reject_rate_per_second", "risk denials per second over [alerts] window_s")
        m.add_metric([inst], (mon.get("window") or {}).get("rejects_per_s", 0.0))
        yield m
        m = g("uptime_seconds", "seconds since the controller started")
        m.add_metric([inst], time.time() - ctl.started_at)
        yield m
        al = g("alerts_firing", "1 for each alert firing now (controller-evaluated)",
               ["alert", "subject", "severity"])
        for a in mon.get("alerts") or ():
            al.add_metric([inst, a["alert"], a["subject"], a["severity"]], 1.0)
        yield al

        yield from self._farms(g, c)

        # -- latency ---------------------------------------------------------------------
        lat = HistogramMetricFamily("hftfarm_latency_seconds", "per-hop and tick-to-trade "
                                    "latency (from the HDR histograms)",
                                    labels=["instance", "hop"])
        for name, h in ctl.hists.items():
            arr = h.array
            if arr is None:
                continue
            buckets, total_s, _n = hdr_to_buckets(arr)
            lat.add_metric([inst, name], buckets, total_s)
        yield lat


    def _farms(self, g, c):
        """Farms and signal agents: status's ``farms`` figures (pipeline/farm_status.py)."""
        from pipeline.farm_status import agent_snapshot, farm_snapshot, is_farm

        ctl, inst = self.ctl, self.ctl.instance
        # the families are always declared (empty without a farm), so dashboards and rules
        # over them name series that exist
        any_farm = any(is_farm(sc) for sc in ctl.cfg.strategies)
        fl = ["farm"]
        pnl = g("farm_pnl", "the farm's PnL over its shards (risk gate's view), quote", fl)
        shards = g("farm_shards", "shard processes configured", fl)
        running = g("farm_shards_running", "shard processes RUNNING", fl)
        notional = g("farm_budget_notional", "the coordinator's notional budget, quote", fl)
        loss = g("farm_budget_loss", "the coordinator's loss budget, quote", fl)
        rounds = c("farm_budget_rounds", "budget reallocations so far", fl)
        value = g("farm_budget_value", "the budget parameter in force on each shard",
                  fl + ["shard", "param"])
        sl = fl + ["shard", "signal"]
        cells = g("farm_signal_cells", "cells the shard subscribes to", sl)
        valid = g("farm_signal_valid_cells", "cells valid now (missing: stale or not yet seen)",
                  sl)
        oldest = g("farm_signal_oldest_age_seconds", "age of the oldest valid cell", sl)
        drops = c("farm_signal_dropouts", "times a valid cell went missing", sl)
        for name, f in (farm_snapshot(ctl) if any_farm else {}).items():
            lb = [inst, name]
            pnl.add_metric(lb, float(f["pnl"]))
            shards.add_metric(lb, len(f["shards"]))
            running.add_metric(lb, sum(1 for sh in f["shards"] if sh["state"] == "RUNNING"))
            b = f.get("budget")
            if b:
                notional.add_metric(lb, float(b["notional"]))
                loss.add_metric(lb, float(b["loss"]))
                rounds.add_metric(lb, int(b["rounds"]))
            for sh in f["shards"]:
                for param, v in (sh.get("budget_values") or {}).items():
                    value.add_metric(lb + [str(sh["shard"]), param], float(v))
                for sig in sh["signals"]:
                    sb = lb + [str(sh["shard"]), str(sig["kind"])]
                    cells.add_metric(sb, sig["cells"])
                    valid.add_metric(sb, sig["valid"])
                    age = sig["oldest_age_ms"]
                    oldest.add_metric(sb, float("nan") if age is None else age / 1e3)
                    drops.add_metric(sb, sig["dropouts"])
        yield from (pnl, shards, running, notional, loss, rounds, value, cells, valid, oldest,
                    drops)
        al = ["agent", "kind"]
        up = g("signal_agent_up", "1 when the signal agent is RUNNING", al)
        pub = c("signal_published", "signal records published", al)
        age = g("signal_last_publish_age_seconds", "seconds since the agent last published", al)
        for name, a in (agent_snapshot(ctl) if ctl.topology.signals() else {}).items():
            lb = [inst, name, a["kind"]]
            up.add_metric(lb, 1.0 if a["state"] == "RUNNING" else 0.0)
            pub.add_metric(lb, a["published"])
            ms = a["last_publish_age_ms"]
            age.add_metric(lb, float("nan") if ms is None else ms / 1e3)
        yield from (up, pub, age)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _value(v) -> str:
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _escape(s: str) -> str:
    if "\\" in s or "\n" in s or '"' in s:
        return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return s


def render_text(families) -> bytes:
    """Prometheus text format 0.0.4 of metric families, written straight out.

    prometheus_client's ``generate_latest`` re-validates and regex-escapes every label name of
    every sample; our names are fixed identifiers, so writing the lines directly is about 4x
    cheaper (measured: 17 -> 4 ms CPU for 20 strategies on the loaded test box), and that is
    the bulk of a scrape. The tests parse this output with prometheus_client's parser and
    compare it with ``generate_latest``'s, sample for sample."""
    out = []
    for f in families:
        doc = f.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        name = f.name + "_total" if f.type == "counter" else f.name   # as 0.0.4 writes it
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {f.type}\n")
        for smp in f.samples:
            if smp.labels:
                lab = ",".join(f'{k}="{_escape(str(v))}"' for k, v in smp.labels.items())
                out.append(f"{smp.name}{{{lab}}} {_value(smp.value)}\n")
            else:
                out.append(f"{smp.name} {_value(smp.value)}\n")
    return "".join(out).encode()


class MetricsServer:
    """``/metrics`` of one collector on a stdlib threading HTTP server (its own threads)."""

    def __init__(self, ctl, host: str, port: int):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        collector = self.collector = HftfarmCollector(ctl)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404)
                    return
                body = render_text(collector.collect())
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server((host, port), Handler)
        self.host, self.port = host, self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5.0)
