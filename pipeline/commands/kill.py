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
    from pipeline.killswitch import normal_priority

    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "kill", "flatten": bool(args.flatten),
                                "who": "cli", "why": args.why})
    normal_priority()
    print(_answer(cfg.instance.name, reply, args.flatten))
    return 0


def _answer(name: str, reply: dict, flatten: bool) -> str:
    return (f"instance {name}: HALTED ({', '.join(reply['halted']) or 'no stage'} "
            f"acknowledged); open orders cancelled" + ("; flattening positions"
                                                      if flatten else ""))


def report(name: str, data: bytes, flatten: bool) -> int:
    """Print the controller's answer to a kill sent by ``pipeline.killswitch``; the exit code
    (as ``run`` would give it)."""
    import json
    import sys

    from pipeline.cli import EXIT_NOT_RUNNING, EXIT_FAILURE

    try:
        reply = json.loads(data) if data else None
    except ValueError:
        reply = {"ok": False, "error": f"unreadable answer {data[:80]!r}"}
    if reply is None:
        print(f"error: the kill was sent, but instance {name!r}'s controller closed the "
              "connection without an answer; check `run.py status`", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if not reply.get("ok"):
        print(f"error: controller: {reply.get('error', 'request failed')}", file=sys.stderr)
        return EXIT_FAILURE
    print(_answer(name, reply, flatten))
    return 0
