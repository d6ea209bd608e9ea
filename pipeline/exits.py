"""run.py's exit codes and ``CliError``, the clean user-facing failure that carries one. Cold
path (the operator's shell).

Raised by the commands (pipeline/commands/), the control-socket client helpers
(pipeline/control.py) and the kill switch's reply printer; ``pipeline.cli.main`` prints it as
``error: <message>`` and exits with its code. A module of its own (stdlib only, imports nothing)
so that all of those can import it without importing the CLI that dispatches to them.

Exit codes used across commands: 0 ok, 1 failure (or "already running"), 2 usage or config
error, 3 "not running" for the control commands.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class CliError(Exception):
    """A clean, user-facing failure: printed as ``error: <message>`` with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE):
        super().__init__(message)
        self.exit_code = exit_code
