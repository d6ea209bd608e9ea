"""``run.py drill [--stage S ...] [--rounds N] [--json] [--config F]``: crash drills against a
running instance (cold, operator's shell). The check to run on a new box before going live.

Each drill kills one stage with SIGKILL while orders flow and measures: how long until the
controller noticed, until the stage is RUNNING again (for the risk gate and the router, until
the controller reconciled positions and resumed), approved orders without exactly one final
outcome, whether every strategy's own positions equal the gate's and the venue's, and whether
any new order reached a venue while trading was halted. ``socket-stall`` does a strategy's kill
while 50 clients hold the control socket without finishing a request; ``controller`` kills the
controller itself, times how soon the stages stop trading, runs ``run.py start`` again and
counts what the dead run left (processes, segments, orders without an outcome). Exit 1 if any
drill failed.

This disturbs trading on purpose (the gate and router drills halt it for a moment): never run
it against an instance trading real money.
"""
from __future__ import annotations

DEFAULT_STAGES = ("risk_gate", "order_router", "journal", "venue")
SPECIAL = ("socket-stall", "controller")   # drills that are not a stage's kill -9


def register(sub) -> None:
    p = sub.add_parser("drill", help="kill -9 drills against a running instance; a table of "
                                     "notice and recovery times and the journal's verdict")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--stage", action="append", default=None,
                   help="what to kill (repeatable): a stage name, 'socket-stall' (50 stalled "
                        "control clients while the first strategy is killed) or 'controller' "
                        "(kill -9 of the controller, then run.py start again). Default: "
                        "risk_gate, order_router, journal, venue, the first strategy, "
                        "socket-stall, controller")
    p.add_argument("--rounds", type=int, default=1, help="how many times to run the set")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


COLUMNS = (("drill", "drill", 46), ("notice_s", "notice", 8), ("back_s", "recover", 9),
           ("reconciled_s", "reconciled", 11),
           ("orders_without_one_outcome", "orders w/o 1 outcome", 21),
           ("positions_reconciled", "positions ok", 13), ("leftovers", "leftovers", 10),
           ("venue_orders_while_down", "venue orders halted", 20))


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.2f} s"
    return str(v)


def _failed(d) -> bool:
    return (d["back_s"] is None or d.get("error")
            or (d["stage"] in ("risk_gate", "order_router") and d["reconciled_s"] is None)
            or (d.get("venue_orders_while_down") or 0) > 0
            or (d.get("orders_without_one_outcome") or 0) > 0
            or d.get("positions_reconciled") is False or (d.get("leftovers") or 0) > 0)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from pipeline.config import DEFAULT_CONFIG
    from pipeline.control import client_request, load_config_or_exit
    from pipeline.drill import (journal_outcomes, kill_controller, kill_stage, socket_stall,
                                wait_for_flow)
    from pipeline.exits import EXIT_USAGE, CliError

    if args.rounds < 1:
        raise CliError(f"--rounds {args.rounds}: must be at least 1", EXIT_USAGE)
    cfg = load_config_or_exit(args.config)
    config_path = str(Path(args.config or DEFAULT_CONFIG).resolve())
    st = client_request(cfg, {"cmd": "status"})
    names = [r["stage"] for r in st["stages"]]
    strategies = [n for n in names if n.startswith("strategy-")]
    stages = args.stage or [*DEFAULT_STAGES, *strategies[:1], *SPECIAL]
    unknown = [s for s in stages if s not in names and s not in SPECIAL]
    if unknown:
        raise CliError(f"--stage {', '.join(unknown)}: no such stage (stages: "
                       f"{', '.join(names)}; or {', '.join(SPECIAL)})", EXIT_USAGE)
    if not args.json:
        print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                        for i, (_k, h, w) in enumerate(COLUMNS)), flush=True)
    drills = []
    try:
        wait_for_flow(cfg, 1, 60)
        for _rnd in range(args.rounds):
            for stage in stages:
                if stage == "controller":
                    d = kill_controller(cfg, config_path)
                elif stage == "socket-stall":
                    d = socket_stall(cfg, strategies[0] if strategies else "journal")
                else:
                    d = kill_stage(cfg, stage)
                drills.append(d)
                if not args.json:
                    print("  ".join(_cell(d.get(k)).ljust(w) if i == 0 else
                                    _cell(d.get(k)).rjust(w)
                                    for i, (k, _h, w) in enumerate(COLUMNS)), flush=True)
                time.sleep(0.2)
                wait_for_flow(cfg, 1, 60)
    except TimeoutError as exc:
        raise CliError(f"drill stopped: {exc}") from None
    run_dir = Path(client_request(cfg, {"cmd": "status"})["run_dir"])
    verdict = journal_outcomes(run_dir / "journal")
    failed = [d for d in drills if _failed(d)]
    if args.json:
        print(json.dumps({"drills": drills, "journal": verdict, "failed": len(failed)},
                         indent=2))
    else:
        print(f"\n{len(drills)} drill(s), {len(failed)} failed. Journal of the current run: "
              f"{verdict['approved']} approved orders, {verdict['more_than_one_final']} with "
              f"more than one final outcome ({verdict['without_final']} still open).")
        print("notice: failure noticed by the controller (controller drill: every stage "
              "stopped trading); recover: RUNNING again (controller drill: run.py start "
              "done); leftovers: processes, segments or open orders of a dead run")
    return 1 if failed or verdict["more_than_one_final"] else 0
