"""StageRunner: the loop ``idle.idle(stage.poll())`` of one stage process. Cold wrapper around
the hot poll.

Runs in every stage process. Per iteration it calls ``stage.poll()`` (the hot path, an @njit
batch) and hands the work count to the stage's idle strategy. Once per heartbeat period
(``HEARTBEAT_NS``) it publishes the status block (state, counters, heartbeat) and handles
control records from the controller's control ring. SIGTERM / SIGINT set a flag; the loop then
drains the stage's inputs and calls ``on_stop``: a clean stop never loses a record already in a
lossless ring.

Exceptions from ``poll`` are bugs, not control flow: each one is counted as an error and printed
once; ``MAX_CONSECUTIVE_ERRORS`` in a row end the process with exit code 1 (the supervisor then
restarts it or declares it failed).
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback

import numpy as np

from pipeline.status import (ST_RUNNING, ST_STARTING, ST_STOPPED, ST_STOPPING, W_CPU,
                             W_CTRL_ACK, W_ERRORS, W_PID, W_STARTED_NS, W_STATE)
from shm.records import CONTROL_DTYPE, CTRL_STOP

HEARTBEAT_NS = 10_000_000          # 10 ms: well inside the controller's 100 ms silence limit
MAX_CONSECUTIVE_ERRORS = 100


class StageRunner:
    def __init__(self, stage, ctx, status_writer, control_reader, idle):
        self.stage = stage
        self.ctx = ctx
        self.status = status_writer
        self.control = control_reader
        self.idle = idle
        self.stop_requested = False
        self.exit_code = 0
        self._ctrl_buf = np.zeros(16, dtype=CONTROL_DTYPE)
        self._consecutive_errors = 0

    def _on_signal(self, signum, frame):
        self.stop_requested = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def heartbeat(self, state: int) -> None:
        v = self.status.values
        v[W_STATE] = state
        v[W_PID] = os.getpid()
        v[W_CPU] = self.ctx.cpu if self.ctx.cpu is not None else -1
        if state not in (ST_STARTING, ST_STOPPED):  # counters live between on_start/on_stop
            self.stage.fill_status(v)
            v[W_ERRORS] = self.stage.errors
        self.status.publish(time.monotonic_ns())

    def handle_control(self) -> None:
        if self.control is None:
            return
        n = self.control.poll(self._ctrl_buf)
        for i in range(n):
            rec = self._ctrl_buf[i]
            kind = int(rec["kind"])
            if kind == CTRL_STOP:
                self.stop_requested = True
            else:
                try:
                    self.stage.on_control(kind, rec)
                except Exception:  # a failed command is reported, the stage keeps running
                    self.stage.errors += 1
                    traceback.print_exc(file=sys.stderr)
            self.status.set(W_CTRL_ACK, int(rec["arg_u4"]))

    def run(self) -> int:
        stage = self.stage
        self.status.set(W_STARTED_NS, time.monotonic_ns())
        self.heartbeat(ST_STARTING)
        stage.on_start(self.ctx)
        self.heartbeat(ST_RUNNING)
        idle = self.idle
        poll = stage.poll
        next_hb = time.monotonic_ns() + HEARTBEAT_NS
        while not self.stop_requested:
            try:
                n = poll()
                self._consecutive_errors = 0
            except Exception:
                n = 0
                stage.errors += 1
                self._consecutive_errors += 1
                if self._consecutive_errors == 1:
                    traceback.print_exc(file=sys.stderr)
                if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                    print(f"{self.ctx.name}: {MAX_CONSECUTIVE_ERRORS} consecutive errors in "
                          "poll(); exiting", file=sys.stderr)
                    self.heartbeat(ST_STOPPING)
                    return 1
            idle.idle(n)
            now = time.monotonic_ns()
            if now >= next_hb:
                next_hb = now + HEARTBEAT_NS
                self.handle_control()
                self.heartbeat(ST_RUNNING)
        self.heartbeat(ST_STOPPING)
        try:
            stage.drain()
        finally:
            stage.on_stop()
            self.heartbeat(ST_STOPPED)
        return self.exit_code
