"""``run.py status [--json] [--config F]``: stage table, risk state, positions and PnL per
strategy, and the parameter set of each strategy changed with ``run.py set`` (its version and
the values that differ from the config) (cold, operator's shell; one request to the
controller's socket)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("status", help="stage table, risk state, positions and PnL")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from pipeline.control import client_request, socket_config

    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "status"})
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(format_status(reply))
    return 0


def format_status(s: dict) -> str:
    lines = [f"instance {s['instance']}  controller pid {s['pid']}  up {s['uptime_s']} s  "
             f"run dir {s['run_dir']}", ""]
    hdr = ("stage", "state", "pid", "cpu", "hb ms", "in", "out", "lag", "lost", "err", "rst")
    # composite layout: which process runs each stage (a last column, only then)
    shared = any(r.get("process", r["stage"]) != r["stage"] for r in s["stages"])
    if shared:
        hdr += ("process",)
    rows = [hdr]
    for r in s["stages"]:
        rows.append((r["stage"], r["state"], str(r["pid"]),
                     "-" if r["cpu"] is None else str(r["cpu"]),
                     "-" if r["heartbeat_age_ms"] is None else f"{r['heartbeat_age_ms']:.0f}",
                     str(r["records_in"]), str(r["records_out"]), str(r["ring_lag"]),
                     str(r["records_lost"]), str(r["errors"]), str(r["restarts"]))
                    + ((r.get("process", r["stage"]),) if shared else ()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(hdr))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 or i == 11 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    notes = [f"  {r['stage']}: {r['reason']}" for r in s["stages"] if r.get("reason")]
    if notes:
        lines += ["", "stages not running:"] + notes
    feeds = s.get("feeds") or {}
    if feeds:
        lines += ["", "live feeds:"]
    for venue, f in feeds.items():
        books = f.get("books_valid") or {}
        lines.append(f"  {venue:<10} {f.get('kind', '?'):<11} {f['state']:<12} "
                     f"{f['messages_per_s']} msg/s  lag {f['lag_us']} us  reconnects "
                     f"{f.get('reconnects', 0)}  gaps {f.get('gaps', 0)}  resyncs "
                     f"{f.get('resyncs', 0)}  malformed {f.get('parse_errors', 0)}  books "
                     + (", ".join(f"{k} {'valid' if v else 'INVALID'}" for k, v in books.items())
                        or "none yet"))
        if f.get("reason"):
            lines.append(f"  {'':<10} {f['reason']}")
        pp = f.get("paper")
        if pp:
            lines.append(f"  {'':<10} paper venue (no order reaches {venue}): orders "
                         f"{pp['orders']}  open {pp['open']}  maker fills {pp['maker_fills']}  "
                         f"taker fills {pp['taker_fills']}")
    risk = s["risk"]
    lines += ["", f"risk: {risk['state']}" + (f" ({risk['halted_reason']})"
                                             if risk["halted_reason"] else "")
              + f"  approved {risk['approved']}  denied {risk['rejected']}  sent "
              f"{risk['orders_sent']}  fills {risk['fills']}  open {risk['open_orders']}"]
    for name, st in risk["strategies"].items():
        pos = ", ".join(f"{k} {v:+d}" for k, v in st["positions_lots"].items()) or "flat"
        lines.append(f"  {name:<16} pnl {st['pnl']:+.2f} (realized {st['realized_pnl']:+.2f}, "
                     f"unrealized {st['unrealized_pnl']:+.2f}, fees {st['fees']:.2f})  "
                     f"open {st['open_orders']}  positions (lots): {pos}")
        live = s.get("params", {}).get(name, {})
        if live.get("version"):
            diff = ", ".join(f"{k} {v['config']!r} -> {v['now']!r}"
                             for k, v in live["changed"].items()) or "as in the config"
            lines.append(f"  {'':<16} parameter set {live['version']} (run.py set by "
                         f"{live.get('who', '?')} at {live.get('at', '?')}): {diff}")
    lines += farm_lines(s.get("farms") or {})
    alerts = (s.get("monitor") or {}).get("alerts") or []
    if alerts:
        lines += ["", "alerts firing:"] + [f"  {a['severity']:<8} {a['alert']} ({a['subject']}): "
                                           f"{a['message']}" for a in alerts]
    urls = {k: v for k, v in (s.get("monitoring") or {}).items() if v}
    if urls:
        lines += ["", "monitoring: " + "  ".join(f"{k.removesuffix('_url')} {v}"
                                                 for k, v in urls.items())]
    if s.get("events"):
        lines += ["", "events:"] + [f"  {e}" for e in s["events"]]
    return "\n".join(lines)


def farm_lines(farms: dict) -> list[str]:
    """The farms section: per farm its budget, agents and shards (pipeline/farm_status.py)."""
    lines = []
    for name, f in farms.items():
        lines += ["", f"farm {name} ({f['kind']}, {len(f['shards'])} shards, "
                      f"{len(f['instruments'])} instruments): pnl {f['pnl']:+.2f}"]
        b = f.get("budget")
        if b:
            last = b.get("last") or {}
            lines.append(f"  budget notional {b['notional']:g}  loss {b['loss']:g}  "
                         f"reallocated {b['rounds']} times (every {b['rebalance_s']:g} s, next "
                         f"in {b['next_in_s']:g} s)"
                         + (f"; last {last['at']} v{last['version']} in "
                            f"{last['round_trip_ms']:.1f} ms" if last else ""))
        for a, g in f.get("agents", {}).items():
            age = g["last_publish_age_ms"]
            lines.append(f"  signal {a:<12} {g['kind']:<21} {g['state']:<10} published "
                         f"{g['published']}  last {'never' if age is None else f'{age:.0f} ms ago'}"
                         f" (stale after {g['stale_ms']:g} ms)  restarts {g['restarts']}")
        for sh in f["shards"]:
            inv = ", ".join(f"{k} {v:+d}" for k, v in sh["inventory_lots"].items())
            rate = "-" if sh["fill_rate"] is None else f"{sh['fill_rate']:.1%}"
            sig = "  ".join(f"{x['kind']} {x['valid']}/{x['cells']} valid"
                            + ("" if x["oldest_age_ms"] is None
                               else f" (oldest {x['oldest_age_ms']:.0f} ms)")
                            + (f", {x['dropouts']} dropouts" if x.get("dropouts") else "")
                            for x in sh["signals"])
            vals = ", ".join(f"{k} {v}" for k, v in sh["budget_values"].items())
            lines.append(f"  {sh['process']:<16} {sh['state']:<10} {', '.join(sh['instruments'])}"
                         f"  pnl {sh['pnl']:+.2f}  inventory {inv or 'flat'}  orders "
                         f"{sh['approved_orders']} fills {sh['fills']} (fill rate {rate})"
                         + (f"  budget {vals}" if vals else "") + (f"  signals: {sig}" if sig
                                                                   else ""))
    return lines
