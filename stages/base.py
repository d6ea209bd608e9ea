"""The Stage contract: on_start(ctx) / poll() -> work count / on_stop(). Runs in stage processes.

A stage is one role (venue, strategy host, risk gate, router, journal) driven by
``pipeline.runner.StageRunner``. ``poll()`` is the hot path: it should run an @njit kernel over
a whole batch (many records per Python call), return how many units of work it did (0 lets the
idle strategy idle) and never block, sleep, log or raise as control flow. Everything that may
allocate or fail loudly belongs in ``on_start`` / ``on_control`` / ``on_stop``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.status import W_ERRORS, W_RECORDS_IN, W_RECORDS_LOST, W_RECORDS_OUT, W_RING_LAG


@dataclass
class StageContext:
    """What the runner hands a stage: config, topology, its own status slot, paths."""

    instance: str
    name: str                 # stage instance name, e.g. "risk_gate", "strategy.mm_btc"
    role: str                 # "venue", "strategy", "risk_gate", "order_router", "journal"
    config: Any               # pipeline.config.Config
    topology: Any             # stages.topology.Topology
    run_dir: Path
    slot: int
    cpu: int | None = None
    restarts: int = 0         # how many times this stage was restarted before this start
    extra: dict = field(default_factory=dict)


class Stage:
    """Base class; subclasses override on_start / poll / on_stop (and on_control if needed).

    Counters the runner copies into the status block each heartbeat (plain ints updated from
    poll; a subclass may instead override ``fill_status``).
    """

    role = "stage"

    def __init__(self):
        self.records_in = 0
        self.records_out = 0
        self.records_lost = 0
        self.ring_lag = 0
        self.errors = 0

    def on_start(self, ctx: StageContext) -> None:
        """Attach rings, allocate buffers, compile kernels (may take seconds; cold)."""

    def poll(self) -> int:
        """One batch of work; returns the number of records (or events) handled."""
        raise NotImplementedError

    def on_control(self, kind: int, rec) -> None:
        """A control record from the controller (CTRL_* kind); cold path."""

    def drain(self) -> None:
        """Before on_stop on a graceful stop: finish what is already in the input rings."""
        for _ in range(10000):
            if self.poll() == 0:
                break

    def on_stop(self) -> None:
        """Flush and detach (cold)."""

    # -- sim-time (lockstep) mode: pipeline/runner.py calls these on the stage's turn -------
    # After the simulated session ends, a stage with this True keeps polling (the venue and
    # the router answer the stop's cancels); the others stay still until they are stopped.
    lockstep_free_after_done = False

    def lockstep_start(self, clk) -> None:
        """Once, before the first round (the venue posts the session's times)."""

    def lockstep_phase(self, clk, position: int) -> None:
        """One turn: take everything in the input rings (polls until a poll finds nothing and
        ``lockstep_pending`` is 0: an output ring without room waits, never leaves input for
        the next round), then post what the clock needs from this stage."""
        import time

        for _ in range(1_000_000):
            if self.poll() == 0:
                if self.lockstep_pending() == 0:
                    self.lockstep_post(clk)
                    return
                time.sleep(50e-6)   # an output ring is full (a slow journal): let it drain
        raise RuntimeError(f"{self.role}: its input rings never drained in one turn")

    def lockstep_pending(self) -> int:
        """Records still waiting in the stage's input rings."""
        return 0

    def lockstep_post(self, clk) -> None:
        """After the phase: words the venue's next round reads (strategies: timer; gate:
        denials)."""

    def fill_status(self, values) -> None:
        values[W_RECORDS_IN] = self.records_in
        values[W_RECORDS_OUT] = self.records_out
        values[W_RECORDS_LOST] = self.records_lost
        values[W_RING_LAG] = self.ring_lag
        values[W_ERRORS] = self.errors


def stack_states(ends):
    """One 2-D state array for several ring ends; each end's ``st`` becomes a row view, so
    @njit kernels (taking the 2-D array) and the ends' Python methods see the same positions."""
    import numpy as np

    sts = np.stack([e.st for e in ends])
    for i, e in enumerate(ends):
        e.st = sts[i]
    return sts
