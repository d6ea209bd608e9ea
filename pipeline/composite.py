"""CompositeRunner: several stages polled in one loop of one process, on one core. Runs in a
composite stage process (``[[composites]]``, pipeline/stage_main.py); its round is the hot path.

The models are agrona's ``CompositeAgent`` and Aeron's SHARED threading mode: when cores are
fewer than stages, the stages take turns in one thread instead of seven processes taking turns
on two cores through the scheduler (each wake-up a context switch, each sleep the timer's
slack). Each member keeps everything it has in a dedicated process: its own StageRunner (its
status block, heartbeat, counters, control ring), its rings and its journal entries. What an
operator sees is the same; only who runs the loop changes.

One round (``run_once``) polls the live members in the order records flow (venue, then each
strategy followed by the gate and the router, then the journal: an intent reaches the gate and
its approval the router right after the strategy that wrote it) and hands the
summed work to the composite's one idle strategy: the loop idles only when no member found
work. A member whose input rings are all empty is skipped (a look at each ring costs ~0.2 us,
a stage's poll 10-20 us of Python and dispatch), but polled at least every
``[stages] member_poll_us`` for its timers; the clock-driven venue is polled every round. Each member's heartbeat and control records are served
once per heartbeat period, as in a dedicated process.

Faults stay inside their member: a member whose ``poll`` raised ``MAX_CONSECUTIVE_ERRORS``
times in a row is retired (FAILED in its status block, ``on_stop`` called, its readers no longer
parked on), and the others keep running. The controller sees the FAILED member and decides
(a strategy is left down with its orders cancelled; any other member takes the composite
through a restart, with the risk gate's halt and reconciliation). A strategy's own hook fault
never reaches here: the strategy host halts that strategy and keeps polling.

A CTRL_STOP on one member's control ring stops that member alone (drain, on_stop, STOPPED);
SIGTERM stops every member, strategies first (reverse start order). The process exits when
no member is left.
"""
from __future__ import annotations

import signal
import sys
import time
import traceback

from common.status import ST_FAILED, W_STATE
from pipeline.runner import HEARTBEAT_NS, MAX_CONSECUTIVE_ERRORS
from shm.ring import LIVE_READERS


# polled every round whatever their rings hold: the simulated venue runs on the clock, a feed
# stage on its socket thread's queue
CLOCK_DRIVEN = ("venue", "feed")
ORDER_PATH = ("risk_gate", "order_router")
POLL_RANK = {"venue": 0, "feed": 0, "strategy": 1, "risk_gate": 2, "order_router": 3,
             "journal": 4}


def _no_wake() -> None:
    pass


class CompositeRunner:
    def __init__(self, name: str, runners, idle, wake=None, compile_watch=None,
                 member_poll_us: float = 1000.0):
        self.name = name
        self.member_poll_ns = int(member_poll_us * 1000)
        # one beat serves every member (counters, risk snapshot, control records): twice a
        # dedicated stage's period, still five beats inside the controller's 100 ms limit
        self.heartbeat_ns = 2 * HEARTBEAT_NS
        self.members = list(runners)
        self.live: list = []
        self.retired: list = []
        self.idle = idle
        self.wake = wake or _no_wake
        self.compile_watch = compile_watch
        self.stop_requested = False
        self._polls: list = []   # (runner, its stage's bound poll) of the live members

    def _on_signal(self, signum, frame):
        self.stop_requested = True

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the members in order; each is RUNNING (and heartbeating) once its on_start
        is done, while the later ones start."""
        for r in self.members:
            before = list(LIVE_READERS)
            r.begin(end_compile_watch=False)
            r.inputs = [e for e in LIVE_READERS if not any(e is b for b in before)]
            if r.control is not None:
                r.inputs.append(r.control)
            r.last_poll_ns = 0
            self.live.append(r)
            self._relist()
            self.service(time.monotonic_ns())
        if self.compile_watch is not None:
            self.compile_watch.uninstall()

    # -- the round ---------------------------------------------------------------------------
    def run_once(self) -> int:
        """Poll each live member once (one whose input rings are all empty only if its last
        poll is ``member_poll_ns`` old: its timers); returns the work done by all of them. A
        member whose poll keeps raising is retired; the others are not disturbed."""
        work = 0
        now = 0
        for r, poll, inputs in self._polls:
            if inputs is not None:
                for e in inputs:   # ~0.2 us a ring, against 10-20 us for a stage's poll
                    sa = e._sa
                    if sa == 0 or e._avail(sa):
                        break
                else:
                    if not now:
                        now = time.monotonic_ns()
                    if now - r.last_poll_ns < self.member_poll_ns:
                        continue
                    r.last_poll_ns = now
            try:
                n = poll()
            except Exception:
                r.stage.errors += 1
                r._consecutive_errors += 1
                if r._consecutive_errors == 1:
                    traceback.print_exc(file=sys.stderr)
                if r._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                    self.retire(r)
                    break   # the member list changed: the next round goes on with the others
                continue
            if n:
                work += n
            if r._consecutive_errors:
                r._consecutive_errors = 0
        return work

    def _relist(self) -> None:
        # polled in the order records flow (market data, strategies, gate, router; the
        # journal last): an intent written by a strategy is read by the gate in the same
        # round, an approval by the router; start order is the other way round
        live = sorted(self.live, key=lambda r: POLL_RANK.get(r.ctx.role, len(POLL_RANK)))
        entry = {id(r): (r, r.stage.poll, None if r.ctx.role in CLOCK_DRIVEN
                         or not getattr(r, "inputs", None) else tuple(r.inputs))
                 for r in live}
        # after each strategy, the order path again (gate, router: skipped at the cost of a
        # look at their rings when the strategy wrote nothing), so the intent of the first
        # strategy does not wait for the polls of the others
        downstream = [entry[id(r)] for r in live if r.ctx.role in ORDER_PATH
                      and entry[id(r)][2] is not None]
        polls = []
        for r in live:
            if r.ctx.role in ORDER_PATH and downstream:
                continue
            polls.append(entry[id(r)])
            if r.ctx.role == "strategy":
                polls += downstream
        if downstream and not any(r.ctx.role == "strategy" for r in live):
            polls += downstream
        self._polls = polls

    def retire(self, r) -> None:
        """Take a faulting member out of the loop for good: FAILED, on_stop (which closes its
        rings: the doorbell no longer waits on them)."""
        name = r.ctx.name
        print(f"{self.name}: {name}: {MAX_CONSECUTIVE_ERRORS} consecutive errors in poll(); "
              "retired, the other members keep running", file=sys.stderr, flush=True)
        self.live.remove(r)
        self._relist()
        self.retired.append(r)
        try:
            r.stage.on_stop()
        except Exception:  # noqa: BLE001 - a broken member must not take the others down
            traceback.print_exc(file=sys.stderr)
        r.status.set_now(W_STATE, ST_FAILED)
        self._forget_inputs(r)

    @staticmethod
    def _forget_inputs(r) -> None:
        """A member out of the loop: its rings are no longer parked on (records arriving
        there, e.g. control records for it, must not keep waking the others)."""
        for e in getattr(r, "inputs", ()):
            for i, x in enumerate(LIVE_READERS):
                if x is e:
                    del LIVE_READERS[i]
                    break

    def service(self, now: int) -> None:
        """Heartbeat and control of every live member; a member told CTRL_STOP stops alone."""
        for r in list(self.live):
            try:
                r.service(now)
            except Exception:  # noqa: BLE001 - counted like a poll error of that member
                r.stage.errors += 1
                traceback.print_exc(file=sys.stderr)
            if r.stop_requested:
                self.live.remove(r)
                self._relist()
                self._stop_member(r)

    def _stop_member(self, r) -> None:
        try:
            r._stop()
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            r.status.set_now(W_STATE, ST_FAILED)
        self._forget_inputs(r)

    def run(self) -> int:
        self.start()
        idle, wake, run_once = self.idle, self.wake, self.run_once
        t0 = time.monotonic_ns()
        next_hb = t0 + self.heartbeat_ns
        rounds = busy = 0
        while self.live and not self.stop_requested:
            rounds += 1
            n = run_once()
            if n:
                busy += 1
                wake()
            idle.idle(n)
            now = time.monotonic_ns()
            if now >= next_hb:
                next_hb = now + self.heartbeat_ns
                self.service(now)
        dt = max(1, time.monotonic_ns() - t0)
        print(f"{self.name}: {rounds} rounds in {dt / 1e9:.1f} s ({rounds / dt * 1e9:.0f}/s, "
              f"{busy} with work), {getattr(idle, 'parks', 0)} parks", file=sys.stderr,
              flush=True)
        for r in reversed(list(self.live)):   # strategies first, then gate, router, venue
            self.live.remove(r)
            self._stop_member(r)
        return 0
