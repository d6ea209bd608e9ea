"""``run.py kill [--flatten] [--config F]``: the kill switch (cold, operator's shell).

Halts the risk gate (every new order denied) and the router, cancels every open order at the
venues, and with ``--flatten`` the risk gate sends market orders of its own (journaled like any
order) that bring every position back to zero. Trading stays halted until ``run.py resume``.
The kill is journaled (journal/events.jsonl) with who and why.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("kill", help="kill switch: halt, cancel all open orders (--flatten: "
                                    "close positions too)")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--flatten", action="store_true", help="also flatten every position")
    p.add_argument("--why", default="", help="the reason, written to the events journal")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.control import client_request, socket_config

    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "kill", "flatten": bool(args.flatten),
                                "who": "cli", "why": args.why})
    print(f"instance {cfg.instance.name}: HALTED ({', '.join(reply['halted']) or 'no stage'} "
          f"acknowledged); open orders cancelled" + ("; flattening positions"
                                                      if args.flatten else ""))
    return 0
