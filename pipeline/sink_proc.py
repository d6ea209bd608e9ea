"""The controller's side of the PostgreSQL sink: spawn ``python -m pipeline.pgsink --follow`` for
the run when ``[sink.postgres] enabled``, and stop it (it drains what is left, up to
``drain_s``) after the stages stopped: the stop is the EOF of its stdin, a pipe from the
controller, which also comes if the controller dies. Cold path, in the controller; the sink is a process of
its own at nice 10, so its COPY work never competes with a stage for the GIL or a core's
priority, and its failures never reach the controller. The DSN never appears in its argv (the
child reads it from the environment or the 0600 file)."""
from __future__ import annotations

import os
import subprocess
import sys


def start_sink(ctl):
    pc = ctl.cfg.sink.postgres
    if not pc.enabled:
        return None
    logs = ctl.run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / "pgsink.log", "ab", buffering=0)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.pgsink", "--config", str(ctl.config_path),
             "--run-dir", str(ctl.run_dir), "--follow", "--until-stdin-eof"],
            cwd=root, stdin=subprocess.PIPE, stdout=log, stderr=log, close_fds=True,
            preexec_fn=lambda: os.nice(10))
    finally:
        log.close()
    ctl.log(f"postgres sink: pid {proc.pid} copying {ctl.run_dir.name} (log: logs/pgsink.log)")
    return proc


def stop_sink(ctl, proc) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.stdin.close()     # EOF: "stop, drain what is left" (a signal could arrive before
    try:                   # its handler is installed, and kill it with nothing drained)
        proc.wait(timeout=ctl.cfg.sink.postgres.drain_s + 5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        ctl.log("postgres sink: killed after its drain time; `run.py sink RUN_DIR` copies the "
                "rest")
