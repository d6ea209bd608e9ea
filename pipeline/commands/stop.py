"""``run.py stop [--config F]``: graceful stop; returns when every process has exited and no
shared-memory segment of the instance is left (cold, operator's shell)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("stop", help="stop gracefully; wait until no process and no segment is "
                                    "left")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import time

    from pipeline.cli import CliError
    from pipeline.control import client_request, lock_held
    from pipeline.control import load_config_or_exit
    from shm.segment import list_segments, pid_alive

    def alive(pid: int) -> bool:
        # a controller that exited but whose parent has not reaped it yet is a zombie: gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return pid_alive(pid)

    cfg = load_config_or_exit(args.config)
    reply = client_request(cfg, {"cmd": "stop"})
    pid = int(reply.get("pid", 0))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not alive(pid) and not lock_held(cfg) and not list_segments(cfg.instance.name):
            print(f"instance {cfg.instance.name} stopped")
            return 0
        time.sleep(0.05)
    left = [s.name for s in list_segments(cfg.instance.name)]
    raise CliError(f"instance {cfg.instance.name!r} did not stop within {args.timeout:.0f} s "
                   f"(controller pid {pid} {'alive' if alive(pid) else 'gone'}; segments "
                   f"left: {', '.join(left) or 'none'}; pid {os.getpid()})", 1)
