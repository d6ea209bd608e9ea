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
    """The full path (argparse, tomllib): taken when ``pipeline.killswitch`` could not send the
    kill without it (help, an unusual config, no controller answering)."""
    from pipeline.control import client_request, socket_config
    from pipeline.killswitch import answer_line, normal_priority

    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "kill", "flatten": bool(args.flatten),
                                "who": "cli", "why": args.why})
    normal_priority()
    print(answer_line(cfg.instance.name, reply, args.flatten))
    return 0
