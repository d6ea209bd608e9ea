"""``run.py stop [--config F]``: graceful stop; returns when every process has exited and no
shared-memory segment of the instance is left (cold, operator's shell).

On an instance whose controller died without stopping (kill -9, OOM), ``stop`` clears what it
left (pipeline/recovery.py: stage processes, segments, semaphores, socket, state; its open
orders recorded as closed) and says what it found; exit 3 only when there was nothing."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("stop", help="stop gracefully; wait until no process and no segment is "
                                    "left")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")
    p.add_argument("--why", default="", help="the reason, written to the events journal")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    import time

    from pipeline.control import client_request, lock_held
    from pipeline.control import load_config_or_exit
    from pipeline.exits import EXIT_NOT_RUNNING, CliError
    from shm.segment import list_segments, pid_alive

    cfg = load_config_or_exit(args.config)
    try:
        reply = client_request(cfg, {"cmd": "stop", "who": "cli", "why": args.why})
    except CliError as exc:
        if exc.exit_code != EXIT_NOT_RUNNING or lock_held(cfg):
            raise
        return _clean_dead(cfg, exc)
    pid = int(reply.get("pid", 0))
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid) and not lock_held(cfg) and not list_segments(cfg.instance.name):
            print(f"instance {cfg.instance.name} stopped")
            return 0
        time.sleep(0.05)
    left = [s.name for s in list_segments(cfg.instance.name)]
    raise CliError(f"instance {cfg.instance.name!r} did not stop within {args.timeout:.0f} s "
                   f"(controller pid {pid} {'alive' if pid_alive(pid) else 'gone'}; segments "
                   f"left: {', '.join(left) or 'none'}; pid {os.getpid()})", 1)


def _clean_dead(cfg, not_running) -> int:
    """No controller answers and none holds the lock: clear what a dead one left, if any."""
    from pipeline.recovery import recover
    from shm.segment import claim_holder

    holder = claim_holder(cfg.instance.name)
    if holder is not None:   # the name is in use by another config's controller
        from pipeline.exits import EXIT_NOT_RUNNING, CliError

        raise CliError(f"instance {cfg.instance.name!r} of this config is not running, but "
                       f"its name is in use by controller pid {holder.get('pid', '?')} (run "
                       f"dir {holder.get('run_dir', '?')}); nothing touched",
                       EXIT_NOT_RUNNING)
    found = recover(cfg, drop_claim=True)
    if found is None:
        raise not_running
    print(f"instance {cfg.instance.name} was not running: its controller (pid "
          f"{found['controller_pid']}) died without stopping. Cleaned: "
          f"{len(found['stages_killed'])} stage process(es), {found['segments']} segment(s), "
          f"{found['semaphores']} semaphore(s), control socket "
          f"{'removed' if found['socket'] else 'absent'}; {found['orders_closed']} approved "
          f"order(s) without a final outcome recorded as cancelled"
          + (f" in {found['run_dir']}/journal" if found["run_dir"] else ""))
    return 0
