"""``run.py run [--config F] [--duration S] [--json]``: run the pipeline in the foreground for S
seconds (or until Ctrl-C / SIGTERM), stop gracefully, print the final report: orders, fills,
rejects by reason, PnL per strategy, latency percentiles, records lost. Cold path; the
controller runs in this process. ``make run`` runs this on config.toml."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run in the foreground for --duration seconds, then report")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds to trade before the graceful stop (default 20; 0 = until "
                        "Ctrl-C)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--replay", metavar="FILE", default=None,
                   help="publish this market-data record file instead of simulating venues")
    p.add_argument("--replay-speed", type=float, default=1.0,
                   help="with --replay: 1 = recorded pace, 2 = twice as fast, 0 = as fast as "
                        "possible")
    p.add_argument("--sim-time", action="store_true",
                   help="run the live stages in lockstep on the backtest's market and "
                        "simulated clock (the venue simulator, or the --replay FILE matched by "
                        "the backtest's replay venue): the same input gives the same intents, "
                        "fills and PnL as `run.py backtest`. --duration is then simulated "
                        "seconds (0: the config's sim.duration_s, or the whole file)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from pipeline.config import DEFAULT_CONFIG
    from pipeline.control import load_config_or_exit, lock_held
    from pipeline.controller import Controller, ControllerError
    from pipeline.exits import EXIT_USAGE, CliError

    if args.duration < 0:
        raise CliError(f"--duration {args.duration}: must be >= 0", EXIT_USAGE)
    cfg = load_config_or_exit(args.config)
    _check_replay(args)
    if lock_held(cfg):
        raise CliError(f"instance {cfg.instance.name!r} is already running (stop it with "
                       "`run.py stop`)", 1)
    ctl = Controller(cfg, str(Path(args.config or DEFAULT_CONFIG).resolve()),
                     duration_s=None if args.sim_time else (args.duration or None),
                     replay=args.replay, replay_speed=args.replay_speed,
                     sim_time=args.sim_time,
                     sim_duration_s=(args.duration or None) if args.sim_time else None)
    live = LiveStatus(cfg)
    try:
        rc = ctl.run(on_started=live.start)
    except ControllerError as exc:
        raise CliError(str(exc), 1) from None
    finally:
        live.stop()
    if ctl.report:
        print(json.dumps(ctl.report, indent=2) if args.json else format_report(ctl.report))
    return rc


class LiveStatus:
    """The line ``run`` shows while it trades, on a terminal only (stderr), about once a
    second: elapsed time, PnL, fills, rejects, tick-to-trade p50. Read from what the controller
    already publishes, over its control socket as ``run.py status`` reads it (a thread of this
    process asks; the controller answers from its own socket threads): no hot-path work."""

    def __init__(self, cfg, period_s: float = 1.0):
        from pipeline.progress import LiveLine

        self.cfg = cfg
        self.period_s = period_s
        self.line = LiveLine()
        self.thread = None
        self.done = None

    def start(self, ctl=None, error=None) -> None:
        import threading
        import time

        if error or not self.line.enabled:
            return
        self.t0 = time.monotonic()
        self.line.take_stderr()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="live-status")
        self.thread.start()

    def _loop(self) -> None:
        from pipeline.control import NotRunning, request
        from pipeline.paths import socket_path

        path = socket_path(self.cfg)
        while not self.done.wait(self.period_s):
            try:
                st = request(path, {"cmd": "status"}, 1.0)
                lat = request(path, {"cmd": "latency"}, 1.0)
            except (NotRunning, OSError, ValueError):
                continue
            if st.get("ok"):
                self.line.show(format_live_line(st, lat if lat.get("ok") else {}))

    def stop(self) -> None:
        if self.thread is not None:
            self.done.set()
            self.thread.join(timeout=3.0)
            self.thread = None
        self.line.release_stderr()
        self.line.clear()


def format_live_line(status: dict, latency: dict) -> str:
    risk = status.get("risk") or {}
    pnl = sum(s.get("pnl", 0.0) for s in (risk.get("strategies") or {}).values())
    t2t = ((latency.get("histograms") or {}).get("tick_to_trade") or {})
    p50 = f"{t2t['p50_ns'] / 1e3:.1f} us" if t2t.get("count") else "-"
    return (f"trading {status.get('uptime_s', 0):.0f} s  PnL {pnl:+.2f}  fills "
            f"{risk.get('fills', 0)}  rejects {risk.get('rejected', 0)}  tick-to-trade p50 "
            f"{p50}  [{risk.get('state', '?')}]")


def format_report(r: dict) -> str:
    from pipeline.commands.latency import format_latency

    lines = [f"=== hftfarm final report: instance {r['instance']}, {r['duration_s']} s ===",
             f"run dir: {r['run_dir']}", ""]
    sim = r.get("sim_time")
    if sim:
        lines += [f"sim-time: {(sim['now_ns'] - sim['t_start_ns']) / 1e9:g} of "
                  f"{(sim['t_end_ns'] - sim['t_start_ns']) / 1e9:g} simulated s on "
                  f"{sim['source']}, {sim['rounds']} rounds in lockstep"
                  + ("" if sim["done"] else " (stopped before the end)")
                  + (f"; FAILED: {sim['failed']}" if sim["failed"] else ""), ""]
    o = r.get("orders") or {}
    risk = r["risk"]
    if "error" in o:
        lines.append(f"journal: could not be read ({o['error']})")
    elif o:
        lines.append(f"orders: {o['new_orders']} new intents, {o['approved_new']} approved, "
                     f"{o['intents']} intents in all (new/cancel/replace); "
                     f"{o['exec_reports']} execution reports, {o['fills']} fills; "
                     f"approved without a final state: {o['approved_without_final']}")
        rej = o.get("rejects_by_reason") or {}
        lines.append("rejects by reason: " + (", ".join(f"{k} {v}" for k, v in
                                                          sorted(rej.items())) or "none"))
    else:
        lines.append(f"orders: {risk['approved']} approved, {risk['rejected']} denied, "
                     f"{risk['orders_sent']} sent, {risk['fills']} fills (journal disabled)")
    lines += ["", "per strategy (PnL in quote currency):"]
    per = {int(k): v for k, v in (o.get("per_strategy") or {}).items()}
    for name, st in risk["strategies"].items():
        pos = ", ".join(f"{k} {v:+d}" for k, v in st["positions_lots"].items()) or "flat"
        c = per.get(st["strategy_id"], {})
        counts = (f"orders {c.get('new_orders', 0)}, fills {c.get('fills', 0)}  "
                  if o and "error" not in o else "")
        lines.append(f"  {name:<16} {counts}PnL {st['pnl']:+.2f} (realized "
                     f"{st['realized_pnl']:+.2f}, unrealized {st['unrealized_pnl']:+.2f}, fees "
                     f"{st['fees']:.2f})  positions (lots): {pos}")
    lines += ["", "latency:", format_latency(r["latency"]), "",
              f"market records lost (lapped readers): {r['records_lost']}",
              f"risk state at stop: {risk['state']}"]
    if r.get("events"):
        lines += ["events:"] + [f"  {e}" for e in r["events"]]
    return "\n".join(lines)


def _check_replay(args) -> None:
    from pathlib import Path

    from pipeline.exits import EXIT_USAGE, CliError

    if args.replay_speed < 0:
        raise CliError(f"--replay-speed {args.replay_speed}: must be >= 0", EXIT_USAGE)
    if args.replay and not Path(args.replay).is_file():
        raise CliError(f"--replay {args.replay}: no such file", EXIT_USAGE)
