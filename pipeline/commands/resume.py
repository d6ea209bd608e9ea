"""``run.py resume [--why TEXT] [--config F]``: leave HALTED (cold, operator's shell).

Lifts the kill switch and the operator halt in the risk gate and the router, and a daily-loss
or drawdown halt the gate latched. A loss limit that is still breached latches again at the
gate's next mark. The resume is journaled (journal/events.jsonl) with who and why.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("resume", help="leave HALTED: lift the kill switch and a latched loss "
                                      "halt (journaled)")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--why", default="", help="the reason, written to the events journal")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.control import client_request, socket_config

    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "resume", "who": "cli", "why": args.why})
    state = reply.get("risk_state", "?")
    print(f"instance {cfg.instance.name}: resume sent ({', '.join(reply['resumed']) or 'no stage'}"
          f" acknowledged); the risk gate is now {state}"
          + (f" ({reply['halted_reason']})" if state != "ACTIVE" and reply.get("halted_reason")
             else ""))
    return 0 if state == "ACTIVE" else 1
