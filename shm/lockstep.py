"""The shared clock of the live pipeline's sim-time (lockstep) mode: one segment, a turn that
passes from stage to stage, and futex doorbells so that a stage waiting for its turn sleeps
instead of spinning. Cold wrapper (per phase, not per record) around a few shared words.

Runs in every stage process of a ``run.py run --sim-time`` instance, created by the controller
(``lockstep`` segment of the instance). The schedule of one round is the stage names in order
(stages/topology.py ``lockstep_schedule``: venue, router, every strategy, gate, router); the
stage at ``turn % len(schedule)`` holds the turn, does its phase and passes it on. Everything a
phase wrote into the rings happens-before the next stage's phase: the turn is published with a
store after the ring writes, and read with a load before the ring reads (x86-64 keeps stores and
loads in order; the futex system call is a full barrier anyway).

Layout (int64 words, then int32 doorbells, then per-strategy words):

    head[W_*]              now (simulated ns), turn (-1 until the controller starts it), done,
                           t_start, t_end, denials of the last gate phase, rounds, venue
                           reports and intents of the lockstep
    door[int32 x MAX_STAGES]   one futex word per stage slot: bumped and woken on its turn
    timer[int64 x MAX_STAGES]  next timer tick of each strategy slot (-1: at once)
    pending[int64 x MAX_STAGES]  new parameters waiting in that strategy (hctl)

A doorbell is read before the turn, so a bump between the two makes the futex wait return at
once: no lost wake-up.
"""
from __future__ import annotations

import ctypes
import platform

import numpy as np

MAX_STAGES = 256
W_NOW, W_TURN, W_DONE, W_T_START, W_T_END, W_N_DEN, W_ROUNDS, W_REPORTS, W_INTENTS = range(9)
HEAD_WORDS = 16
_HEAD_BYTES = HEAD_WORDS * 8
_DOOR_OFF = _HEAD_BYTES
_TIMER_OFF = _DOOR_OFF + MAX_STAGES * 4
_PENDING_OFF = _TIMER_OFF + MAX_STAGES * 8
SIZE = _PENDING_OFF + MAX_STAGES * 8
SEGMENT = "lockstep"

_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), 202)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the int32 at ``addr`` equals ``expected``, at most ``timeout_s`` (a wake-up,
    a changed value, a signal or the timeout return; the caller re-checks)."""
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_int(expected),
                  ctypes.byref(ts), None, 0)


def futex_wake(addr: int, n: int = 1) -> None:
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, ctypes.c_int(n), None, None, 0)


class LockstepClock:
    """One process's view of the lockstep segment. ``schedule``: stage slot of each position in
    the round (stages/topology.py ``lockstep_schedule``)."""

    def __init__(self, segment, schedule):
        self.segment = segment
        buf = segment.data
        self.head = buf[:_HEAD_BYTES].view(np.int64)
        self.door = buf[_DOOR_OFF:_TIMER_OFF].view(np.int32)
        self.timer = buf[_TIMER_OFF:_PENDING_OFF].view(np.int64)
        self.pending = buf[_PENDING_OFF:SIZE].view(np.int64)
        self._door_addr = segment.data_addr + _DOOR_OFF
        self.schedule = [int(s) for s in schedule]
        if not self.schedule or max(self.schedule) >= MAX_STAGES:
            raise ValueError(f"lockstep schedule {self.schedule}: 1..{MAX_STAGES} stage slots")

    @classmethod
    def create(cls, instance: str, schedule) -> "LockstepClock":
        from shm.segment import Segment

        seg = Segment.create(instance, SEGMENT, SIZE, SEGMENT, capacity=len(schedule))
        clk = cls(seg, schedule)
        clk.head[:] = 0
        clk.head[W_TURN] = -1
        clk.timer[:] = -1
        seg.mark_ready()
        return clk

    @classmethod
    def attach(cls, instance: str, schedule) -> "LockstepClock":
        from shm.segment import Segment

        seg = Segment.attach(instance, SEGMENT, timeout_s=5.0)
        if int(seg.header["capacity"]) != len(schedule):
            seg.close()
            raise ValueError(f"lockstep segment of {instance!r} has a round of "
                             f"{int(seg.header['capacity'])} turns, this stage's topology "
                             f"{len(schedule)}: not the same config")
        return cls(seg, schedule)

    # -- the turn -------------------------------------------------------------------------
    @property
    def turn(self) -> int:
        return int(self.head[W_TURN])

    @property
    def now(self) -> int:
        return int(self.head[W_NOW])

    @property
    def done(self) -> bool:
        return self.head[W_DONE] != 0

    def position(self) -> int:
        """Position in the round of the current turn (-1 before the start)."""
        t = self.turn
        return -1 if t < 0 else t % len(self.schedule)

    def door_value(self, slot: int) -> int:
        return int(self.door[slot])

    def wait(self, slot: int, seen: int, timeout_s: float) -> None:
        """Sleep until stage ``slot``'s doorbell moves from ``seen`` (or the timeout)."""
        futex_wait(self._door_addr + 4 * slot, seen, timeout_s)

    def ring(self, slot: int) -> None:
        self.door[slot] += 1   # one writer at a time: only the turn's holder rings
        futex_wake(self._door_addr + 4 * slot, 1)

    def start(self) -> None:
        """The controller, once every stage is RUNNING: the first turn (the venue's)."""
        self.head[W_TURN] = 0
        self.ring(self.schedule[0])

    def pass_turn(self) -> None:
        """The holder is done with its phase: the next position gets the turn."""
        t = int(self.head[W_TURN]) + 1
        self.head[W_TURN] = t
        self.ring(self.schedule[t % len(self.schedule)])

    def finish(self) -> None:
        """The venue ended the simulated session: nobody gets another turn."""
        self.head[W_DONE] = 1
        for slot in set(self.schedule):
            self.ring(slot)

    def close(self) -> None:
        self.head = self.door = self.timer = self.pending = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None

