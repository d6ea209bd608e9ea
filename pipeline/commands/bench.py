"""``run.py bench <name> [...]``: benchmarks that print figures (never timed tests).

Each benchmark is a module ``bench/<name>.py`` with ``add_arguments(parser)`` and
``main(args) -> int``. Listed here so ``run.py bench --help`` names them without importing them.
"""
from __future__ import annotations

import importlib

BENCHMARKS = {
    "ipc": "rings against the usual Python IPC: ping-pong latency and throughput",
    "backtest": "book maintenance and full backtests, events/s, against hftbacktest",
    "feeds": "venue feed handlers on the recordings: messages/s and parse+apply latency",
    "pipeline": "the live pipeline: tick-to-trade, per-hop latency, sustained records/s",
    "kill": "the kill switch under load: `run.py kill` from a shell -> risk gate halted",
    "sink": "the PostgreSQL sink: fills/s copied, and resume after a database restart",
    "execution": "vwap / is / pov against a naive twap on the same parent and seeds",
    "strategies": "each strategy's kernel ns per market record and per timer call, events/s",
}


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its figures")
    bsub = p.add_subparsers(dest="bench", metavar="<benchmark>")
    bsub.required = True
    for name, help_text in BENCHMARKS.items():
        bp = bsub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            bp.set_defaults(func=_missing(name))
            continue
        module.add_arguments(bp)
        bp.set_defaults(func=_input_errors_exit_2(module.main))


def _missing(name: str):
    def run(_args) -> int:
        from pipeline.exits import CliError

        raise CliError(f"benchmark {name!r} is not built yet in this checkout")

    return run


def _input_errors_exit_2(main):
    """A benchmark's config error is a usage error (exit 2, one line), not a traceback."""
    def run(args) -> int:
        from common.schema import ConfigError
        from pipeline.exits import EXIT_USAGE, CliError

        try:
            return main(args)
        except ConfigError as exc:
            raise CliError(f"--config: {exc}", EXIT_USAGE) from None

    return run
