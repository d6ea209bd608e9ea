"""``run.py check-config [--config F]``: validate a config without starting anything.

``load_config`` builds what ``start`` would build (pipeline/buildcheck.py: instrument table,
strategies with their parameters and state, the simulated price model, risk limits, ring
sizes against shared memory, the control socket path) and reports every problem in one pass:
one ``error:`` line each and exit 2; exit 0 with a one-line summary when the config is sound.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("check-config", help="validate a config file; exit 2 naming each problem")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from common.schema import ConfigError
    from pipeline.config import load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(f"{cfg.source}: ok ({len(cfg.venues)} venues, {len(cfg.instruments)} instruments, "
          f"{len(cfg.strategies)} strategies"
          + (f", {len(cfg.signals)} signal agents" if cfg.signals else "")
          + (f", farms: {', '.join(farms)}" if (farms := [s.name for s in cfg.strategies
                                                         if s.shards > 1 or s.signals
                                                         or s.budget is not None]) else "")
          + ")")
    return 0
