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

from common.status import (ST_COMPILING, ST_RUNNING, ST_STARTING, ST_STOPPED, ST_STOPPING,
                           W_CPU, W_CTRL_ACK, W_ERRORS, W_PID, W_STARTED_NS, W_STATE)
from shm.records import CONTROL_DTYPE, CTRL_STOP

HEARTBEAT_NS = 10_000_000          # 10 ms: well inside the controller's 100 ms silence limit
MAX_CONSECUTIVE_ERRORS = 100
MANIFEST_AGAIN_NS = 2_000_000_000  # the compiled-code list again, 2 s into the run


def _no_wake() -> None:
    pass


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
        # pipeline.compile_watch.CompileWatch installed by stage_main: while the stage starts,
        # a compilation (a numba cache miss) turns its state to COMPILING
        self.compile_watch = None
        # sim-time mode (stage_main --lockstep): shm.lockstep.LockstepClock and this stage's
        # slot; the stage then works only on its turns (``_loop_lockstep``)
        self.lockstep = None
        self.lockstep_slot = -1
        # after a poll that did work: post the doorbell of any reader that parked on one of
        # this process's rings (shm.doorbell.wake_parked; a no-op without parking readers)
        self.wake = _no_wake
        self.warm = None
        self._manifest_again = 0

    def _on_signal(self, signum, frame):
        self.stop_requested = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def heartbeat(self, state: int) -> None:
        if state == ST_STARTING and self.compile_watch is not None \
                and self.compile_watch.functions:
            state = ST_COMPILING
        v = self.status.values
        v[W_STATE] = state
        v[W_PID] = os.getpid()
        v[W_CPU] = self.ctx.cpu if self.ctx.cpu is not None else -1
        if state not in (ST_STARTING, ST_COMPILING, ST_STOPPED):  # counters: on_start..on_stop
            self.stage.fill_status(v)
            v[W_ERRORS] = self.stage.errors
        self.status.publish(time.monotonic_ns())

    def write_manifest(self) -> None:
        """List the compiled code this stage uses, for the controller's warm spare (cold)."""
        run_dir = getattr(self.ctx, "run_dir", None)
        if run_dir is None:
            return
        try:
            from pipeline.numba_cache import warm_dir, write_manifest

            write_manifest(warm_dir(run_dir) / f"{self.ctx.name}.pkl")
        except Exception as exc:  # noqa: BLE001 - only a slower restart depends on it
            print(f"{self.ctx.name}: could not list its compiled code for the warm spare: "
                  f"{exc}", file=sys.stderr)

    def _report_startup(self, t_start: int) -> None:
        """One line in the stage's log: how long each step of the start took (ms)."""
        m = getattr(self, "startup_marks", None)
        if not m:
            return
        now = time.monotonic_ns()
        ms = lambda a, b: (b - a) / 1e6  # noqa: E731
        watch = self.compile_watch
        print(f"{self.ctx.name}: RUNNING {ms(m['main'], now):.0f} ms after start "
              f"(imports {ms(m['main'], m['imports']):.0f}, config+attach "
              f"{ms(m['imports'], m['attached']):.0f}, stage set-up "
              f"{ms(m['attached'], t_start):.0f}, on_start {ms(t_start, now):.0f}"
              f"{'; ' + watch.summary() if watch is not None else ''})",
              file=sys.stderr, flush=True)

    def _compiling(self) -> None:
        # inside numba's compiler lock: a plain store, no compiled code
        if self.status.values[W_STATE] != ST_COMPILING:
            self.status.set_now(W_STATE, ST_COMPILING)

    def handle_control(self) -> None:
        if self.control is None:
            return
        n = self.control.poll(self._ctrl_buf)
        for i in range(n):
            rec = self._ctrl_buf[i]
            kind = int(rec["kind"])
            ack = int(rec["arg_u4"])
            if kind == CTRL_STOP:
                self.stop_requested = True
            else:
                try:
                    self.stage.on_control(kind, rec)
                except Exception:  # a failed command is reported, the stage keeps running
                    self.stage.errors += 1
                    traceback.print_exc(file=sys.stderr)
                    ack = -ack   # answered, but not done: the controller tells the two apart
            self.status.set(W_CTRL_ACK, ack)

    def begin(self, end_compile_watch: bool = True) -> None:
        """Everything before the loop: STARTING (or COMPILING), on_start, RUNNING (cold)."""
        self.status.set(W_STARTED_NS, time.monotonic_ns())
        watch = self.compile_watch
        if watch is not None:
            watch.call_on_compile(self._compiling)
        self.heartbeat(ST_STARTING)
        t_start = time.monotonic_ns()
        self.stage.on_start(self.ctx)
        if self.warm is not None:
            self.warm()   # code the loop will need, compiled while the stage still starts
        if watch is not None and end_compile_watch:
            watch.uninstall()   # RUNNING from here: a later compile must not look like a start
        self.heartbeat(ST_RUNNING)
        self._report_startup(t_start)
        self.write_manifest()
        self._manifest_again = time.monotonic_ns() + MANIFEST_AGAIN_NS

    def service(self, now: int) -> None:
        """Once per heartbeat period: control records, the status block, the manifest."""
        self.handle_control()
        self.heartbeat(ST_RUNNING)
        if self._manifest_again and now >= self._manifest_again:
            self._manifest_again = 0   # once more: code first used after the start
            self.write_manifest()

    def run(self) -> int:
        stage = self.stage
        self.begin()
        if self.lockstep is not None:
            if self._loop_lockstep() != 0:
                return 1
            return self._stop()
        idle = self.idle
        poll = stage.poll
        wake = self.wake
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
            if n:
                wake()
            idle.idle(n)
            now = time.monotonic_ns()
            if now >= next_hb:
                next_hb = now + HEARTBEAT_NS
                self.service(now)
        return self._stop()

    def _stop(self) -> int:
        stage = self.stage
        self.heartbeat(ST_STOPPING)
        try:
            stage.drain()
        finally:
            stage.on_stop()
            self.heartbeat(ST_STOPPED)
        return self.exit_code

    def _poll_guarded(self, call) -> int:
        """``call()`` (a poll or a phase); an exception is counted and printed once per run of
        consecutive failures. Returns its work count (0 on failure), or -1 once there were
        MAX_CONSECUTIVE_ERRORS failures in a row."""
        try:
            n = call()
            self._consecutive_errors = 0
            return int(n or 0)
        except Exception:
            self.stage.errors += 1
            self._consecutive_errors += 1
            if self._consecutive_errors == 1:
                traceback.print_exc(file=sys.stderr)
            if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                print(f"{self.ctx.name}: {MAX_CONSECUTIVE_ERRORS} consecutive errors; exiting",
                      file=sys.stderr)
                self.heartbeat(ST_STOPPING)
                return -1
            return 0

    def _loop_lockstep(self) -> int:
        """Sim-time mode (shm/lockstep.py): work only on this stage's turns, in the round's
        order; sleep on the stage's doorbell in between; heartbeat and control as usual. The
        stage's SimClock is set to the round's simulated time before each phase. After the
        session ends, the venue and the router poll freely (they answer the stop's cancels),
        the others stay still until stopped. A phase that raises is counted like a poll that
        raises, and the turn is passed on all the same (the pipeline never hangs on it)."""
        from stages.clock import SimClock

        stage, clk, slot = self.stage, self.lockstep, self.lockstep_slot
        mine = {p for p, s in enumerate(clk.schedule) if s == slot}
        clock = getattr(stage, "clock", None)
        sim = clock if isinstance(clock, SimClock) else None
        free = stage.lockstep_free_after_done
        stage.lockstep_start(clk)
        next_hb = time.monotonic_ns() + HEARTBEAT_NS
        while not self.stop_requested:
            if clk.done:
                if free:
                    n = self._poll_guarded(stage.poll)
                    if n < 0:
                        return 1
                    self.idle.idle(n)
                else:
                    time.sleep(0.005)
            else:
                seen = clk.door_value(slot)
                pos = clk.position()
                if pos in mine:
                    if sim is not None:
                        sim.set(clk.now)
                    if self._poll_guarded(lambda: stage.lockstep_phase(clk, pos)) < 0:
                        return 1
                    if not clk.done:
                        clk.pass_turn()
                else:
                    clk.wait(slot, seen, 0.005)
            now = time.monotonic_ns()
            if now >= next_hb:
                next_hb = now + HEARTBEAT_NS
                self.handle_control()
                self.heartbeat(ST_RUNNING)
        return 0
