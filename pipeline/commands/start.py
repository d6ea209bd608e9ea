"""``run.py start [--config F] [--foreground]``: start the pipeline (cold, operator's shell).

Background by default: the controller is started as a daemon (``python -m
pipeline.controller``, own session, log in <run_dir>/<instance>/controller.log); this command
shows the controller's progress lines (``compiling kernels: ...``, ``kernels cached: ...``) on
stderr while it waits, returns 0 once every stage is RUNNING, or prints the error and returns
1. ``--foreground`` runs the controller in this process until ``run.py stop``, SIGTERM or
Ctrl-C (what systemd's Type=notify unit uses).
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("start", help="start every stage; return once all are RUNNING")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--foreground", action="store_true",
                   help="run the controller in this process (systemd, debugging)")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="seconds to wait for every stage to come up (default 900: a first "
                        "start compiles its kernels, minutes on a busy 2-core machine)")
    p.add_argument("--replay", metavar="FILE", default=None,
                   help="publish this market-data record file instead of simulating venues")
    p.add_argument("--replay-speed", type=float, default=1.0,
                   help="with --replay: 1 = recorded pace, 2 = twice as fast, 0 = as fast as "
                        "possible")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from pipeline.config import DEFAULT_CONFIG
    from pipeline.control import load_config_or_exit, lock_held
    from pipeline.exits import CliError
    from pipeline.paths import instance_dir

    from pipeline.commands.run import _check_replay

    cfg = load_config_or_exit(args.config)
    _check_replay(args)
    config_path = str(Path(args.config or DEFAULT_CONFIG).resolve())
    if lock_held(cfg):
        raise CliError(f"instance {cfg.instance.name!r} is already running (see "
                       f"`run.py status`; stop it with `run.py stop`)", 1)
    if args.foreground:
        from pipeline.controller import Controller, ControllerError
        from pipeline.sdnotify import SdNotifier

        try:
            return Controller(cfg, config_path, notifier=SdNotifier(), replay=args.replay,
                              replay_speed=args.replay_speed).run()
        except ControllerError as exc:
            raise CliError(str(exc), 1) from None
    idir = instance_dir(cfg)
    idir.mkdir(parents=True, exist_ok=True)
    state_file = idir / "controller.state"
    if state_file.exists():   # kept for the new controller: did the last one die running?
        os.replace(state_file, state_file.with_name("controller.state.prev"))
    log_path = idir / "controller.log"
    try:
        seen = log_path.stat().st_size   # echo only what this controller adds
    except OSError:
        seen = 0
    root = Path(__file__).resolve().parent.parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log_path, "ab") as log:
        extra = ["--replay", str(Path(args.replay).resolve()), "--replay-speed",
                 str(args.replay_speed)] if args.replay else []
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.controller", "--config",
                                 config_path, *extra], cwd=str(root), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=env)
    deadline = time.monotonic() + args.timeout
    while True:
        state = {}
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            pass
        seen = _echo_progress(log_path, seen)
        if state.get("state") == "running":
            print(f"instance {cfg.instance.name} started (controller pid {proc.pid}; "
                  f"log {log_path})")
            return 0
        if state.get("state") == "failed" or proc.poll() is not None:
            detail = state.get("detail") or _tail(log_path)
            proc.wait()
            raise CliError(f"instance {cfg.instance.name!r} failed to start: {detail}", 1)
        if time.monotonic() > deadline:
            what = _abandon(proc, cfg)
            raise CliError(f"instance {cfg.instance.name!r} not up within --timeout "
                           f"{args.timeout:g} s; {what} (see {log_path})", 1)
        time.sleep(0.05)


# the controller's start-up lines worth showing while `start` waits (pipeline.supervisor,
# pipeline.controller): a first start compiles for a minute or two
PROGRESS = ("compiling kernels", "kernels ")


def _echo_progress(path, offset: int) -> int:
    """Print (stderr) the progress lines that the controller's log gained past ``offset``;
    returns the offset after the last whole line."""
    import sys

    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode(errors="replace").splitlines():
        if line.startswith(PROGRESS):
            print(line, file=sys.stderr, flush=True)
    return offset + end


def _abandon(proc, cfg) -> str:
    """`start --timeout` ran out: stop what was started (the controller stops its stages and
    removes its segments on SIGTERM, even mid-start); SIGKILL and clean up after it if it
    does not go within 15 s. Returns what was done, for the message."""
    import os
    import signal
    import subprocess

    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(15)
        return "stopped what was started"
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return "the controller had already exited"
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    from pipeline.recovery import recover

    found = recover(cfg, drop_claim=True) or {}
    return (f"the controller did not stop within 15 s: killed, and cleaned "
            f"{found.get('segments', 0)} segment(s) and {len(found.get('stages_killed', []))} "
            "stage process(es)")


def _tail(path, n: int = 12) -> str:
    try:
        return "\n".join(open(path, errors="replace").read().splitlines()[-n:])
    except OSError:
        return "(no log)"
