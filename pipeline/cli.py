"""Command-line interface: ``python run.py <command> ...`` (runs in the operator's shell).

Cold path. Each command lives in its own module under ``pipeline/commands/`` and exposes
``register(subparsers)``, which adds one subparser whose ``func(args) -> int`` does the work.
Registration must stay cheap (no numba, no numpy imports at module level) so that ``--help``
and usage errors answer at once; handlers import what they need.

A handler fails cleanly by raising ``pipeline.exits.CliError`` (the exit codes live there too).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipeline.exits import CliError


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with ``argv`` naming a command, only that command's module is imported
    (a `run.py kill` must not pay for importing the benchmarks' modules)."""
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="hftfarm: a low-latency trading pipeline of pinned processes joined by "
        "shared-memory rings. The default config trades simulated venues only.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    import pipeline.commands as commands_pkg

    # a directory listing, not pkgutil.iter_modules (which imports inspect: 30+ ms of every
    # `run.py kill`)
    names = sorted(f[:-3] for d in commands_pkg.__path__ for f in os.listdir(d)
                   if f.endswith(".py") and not f.startswith("_"))
    wanted = (argv or [""])[0].replace("-", "_")
    if wanted in names:
        names = [wanted]
    for name in names:
        module = importlib.import_module(f"pipeline.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)  # argparse exits 2 on usage errors, with the usage line
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
