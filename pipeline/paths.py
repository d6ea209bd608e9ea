"""Where an instance's files live: its run directory and its control socket, and what its name
may be. Cold path (controller, CLI, config checks, crash recovery); stdlib only.

The config's loader checks ``[instance] name`` against ``INSTANCE_NAME_PATTERN`` and its build
checks the socket path's length (pipeline/buildcheck.py); the controller binds the socket and
takes its lock under ``instance_dir``; the CLI and the drills connect to ``socket_path``; the
kill switch's fast path resolves the same path by hand (pipeline/killswitch.py).
"""
from __future__ import annotations

from pathlib import Path

# what an [instance] name may be (pipeline/config.py checks it; control.socket_config too)
INSTANCE_NAME_PATTERN = r"[A-Za-z0-9_\-]{1,24}"


def instance_dir(cfg) -> Path:
    return Path(cfg.instance.run_dir).resolve() / cfg.instance.name


def socket_path(cfg) -> Path:
    return Path(cfg.instance.socket).resolve() if cfg.instance.socket else \
        instance_dir(cfg) / "control.sock"
