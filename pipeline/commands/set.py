"""``run.py set NAME key=value [key=value ...] [--why TEXT] [--config F]``: change the
parameters of the running strategy NAME (a ``[[strategies]]`` name) in a running instance (cold,
operator's shell; one request to the controller's socket).

Each value is read as a TOML value (``gamma=0.5``, ``order_qty_lots=3``, ``enabled=true``,
``order_type="market"``); a value that is not valid TOML is taken as a string, so the shell's
quoting does not matter (``order_type=market``). The controller validates the new set exactly as
the config is (pipeline/live_params.py) before anything reaches the strategy, writes it to the
run directory, has every process of the strategy apply it between two batches (its
``on_params`` hook runs first) and journals it with who and why.

Exit codes: 0 every process of the strategy applied the set; 1 one refused it or did not answer
(the set is recorded and applies when that process starts again); 2 a bad assignment, an
unknown strategy or parameter, a bad value (every problem named, nothing changed); 3 the
instance is not running.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("set", help="change the parameters of a running strategy (validated as "
                                   "the config, applied between batches, journaled)")
    p.add_argument("strategy", metavar="NAME", help="the strategy's [[strategies]] name")
    p.add_argument("assignments", metavar="key=value", nargs="+",
                   help="parameters to change; values are TOML values (a bare word is a "
                        "string)")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--why", default="", help="the reason, written to the events journal")
    p.set_defaults(func=run)


def parse_value(text: str):
    """A TOML value (int, float, bool, string, array, inline table), or ``text`` itself when it
    is not one. Dates and times stay the text they were written as (the parameters hold
    numbers, bools and strings: the validation then names the value as typed)."""
    import datetime
    import tomllib

    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    if set(doc) != {"v"}:   # "1\nx = 2": more than one value is not a value
        return text
    value = doc["v"]
    if isinstance(value, (datetime.date, datetime.time)):
        return text
    return value


def parse_assignments(items) -> dict:
    """``["gamma=0.5", "order_qty_lots=3"]`` -> ``{"gamma": 0.5, "order_qty_lots": 3}``.
    CliError (exit 2) naming every assignment that is not ``key=value`` or repeats a key."""
    import re

    from pipeline.exits import EXIT_USAGE, CliError

    out: dict = {}
    problems = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            problems.append(f"{item!r}: expected key=value (a parameter name, '=', a TOML "
                            "value), e.g. order_qty_lots=3")
            continue
        if key in out:
            problems.append(f"{item!r}: {key} is given twice")
            continue
        out[key] = parse_value(text.strip())
    if problems:
        raise CliError("bad assignment" + ("s" if len(problems) > 1 else "") + ":\n  "
                       + "\n  ".join(problems), EXIT_USAGE)
    return out


def run(args) -> int:
    from pipeline.control import client_request, socket_config

    params = parse_assignments(args.assignments)
    cfg = socket_config(args.config)
    reply = client_request(cfg, {"cmd": "set", "strategy": args.strategy, "params": params,
                                 "who": "cli", "why": args.why})
    print(answer_line(cfg.instance.name, reply))
    return 0 if not reply["failed"] and not reply["not_acked"] else 1


def answer_line(instance: str, reply: dict) -> str:
    changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in reply["changed"].items())
    line = (f"instance {instance}: {reply['strategy']} parameter set {reply['version']} "
            f"({changed or 'no change'}); applied by {', '.join(reply['acked']) or 'no process'}")
    if reply["failed"]:
        line += (f"; refused by {', '.join(reply['failed'])} (it keeps its old parameters; see "
                 "its log)")
    if reply["not_acked"]:
        line += (f"; no answer yet from {', '.join(reply['not_acked'])} (the set is recorded: "
                 "it applies it when it reads its control ring, or when it starts)")
    return line
