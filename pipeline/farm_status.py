"""What ``status`` shows of each farm. Cold path: runs in the controller, inside a request.

A farm is a ``[[strategies]]`` entry with ``shards > 1``, ``signals`` or a ``budget``. Per farm:
its shards (process, state, instruments, PnL, inventory, open orders, approved new orders,
fills and fill rate (the monitor's KPIs, from the journal), the budget parameter in force, and each subscription as that shard sees it: cells valid
and the age of the oldest), its agents (state, records published, age of the last publish) and
its budget (the coordinator's last reallocation).
"""
from __future__ import annotations

import time


def is_farm(sc) -> bool:
    return sc.enabled and (sc.shards > 1 or bool(sc.signals) or sc.budget is not None)


def agent_snapshot(ctl) -> dict:
    from common.status import STATE_NAMES

    out = {}
    now = time.time_ns()
    for spec in ctl.topology.signals():
        b = ctl.status.read(spec.slot)
        last = int(b["x2"])
        out[spec.signal.name] = {
            "stage": spec.name, "kind": spec.signal.kind,
            "state": STATE_NAMES.get(int(b["state"]), "?"), "restarts": int(b["restarts"]),
            "instruments": list(spec.signal.instruments),
            "published": int(b["x0"]), "samples": int(b["x3"]),
            "last_publish_age_ms": round((now - last) / 1e6, 1) if last else None,
            "stale_ms": spec.signal.max_age_ns / 1e6}
    return out


def farm_snapshot(ctl) -> dict:
    from common.status import STATE_NAMES
    from shm.records import SIGNAL_KIND_CODES

    kind_names = {v: k for k, v in SIGNAL_KIND_CODES.items()}
    agents = agent_snapshot(ctl)
    budgets = ctl.farms.view() if getattr(ctl, "farms", None) is not None else {}
    overrides = ctl.live_params.shard_overrides
    rv = ctl.riskview
    mon = ctl.monitor.snapshot() if getattr(ctl, "monitor", None) is not None else None
    kpis = (mon or {}).get("kpis", {})
    insts = list(ctl.cfg.instruments)
    from stages.riskview import PNL_FEES, PNL_REALIZED, PNL_UNREALIZED

    out = {}
    for sc in ctl.cfg.strategies:
        if not is_farm(sc):
            continue
        shards = []
        total_pnl = 0.0
        for spec in ctl.topology.strategies():
            if spec.strategy.name != sc.name:
                continue
            b = ctl.status.read(spec.slot)
            sid = spec.strategy_id
            pnl = rv.gate_pnl[sid]
            p = float(pnl[PNL_REALIZED] + pnl[PNL_UNREALIZED] - pnl[PNL_FEES])
            total_pnl += p
            view = ctl.farmview.read(spec.slot) if ctl.farmview is not None else {}
            k = kpis.get(spec.process, {})
            shards.append({
                "process": spec.process, "shard": spec.shard, "stage": spec.name,
                "state": STATE_NAMES.get(int(b["state"]), "?"), "pid": int(b["pid"]),
                "restarts": int(b["restarts"]), "instruments": list(spec.instruments),
                "pnl": round(p, 4),
                "inventory_lots": {insts[i - 1].key: int(rv.gate_pos[sid, i])
                                   for i in range(1, len(insts) + 1)
                                   if insts[i - 1].key in spec.instruments},
                "open_orders": int(rv.router_open[sid]),
                # the monitor's KPIs (pipeline/monitor.py, from the journal): approved new
                # orders, fill reports, and the share of approved new orders that filled
                "approved_orders": k.get("approved_orders"), "fills": k.get("fills"),
                "fill_rate": None if not k.get("approved_orders") else round(k["fill_rate"], 4),
                "sharpe": k.get("sharpe"),
                "budget_values": overrides.get(sc.name, {}).get(spec.shard, {}),
                "signals": [{"kind": kind_names.get(s["kind"], s["kind"]), "cells": s["cells"],
                             "valid": s["valid"], "oldest_age_ms": s["oldest_age_ms"],
                             "dropouts": s["dropouts"]}
                            for s in view.get("signals", [])]})
        out[sc.name] = {"kind": sc.kind, "instruments": list(sc.instruments),
                        "pnl": round(total_pnl, 4), "shards": shards,
                        "agents": {a: agents[a] for a in sc.signals if a in agents},
                        "budget": budgets.get(sc.name)}
    return out
