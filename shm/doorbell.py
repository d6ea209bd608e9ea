"""A process's doorbell: one POSIX semaphore on which the whole process parks, whichever of its
input rings gets the next record. Runs in stage processes (dedicated or composite); cold apart
from ``wake_parked``, which the loop calls after a poll that did work.

A reader's own semaphore (``RingReader.park``) serves a process with one input. A composite
(pipeline/composite.py) reads a dozen rings, and a strategy host reads market data, its
reports and its control ring: it must wake on any of them. So the process announces itself
parked on *every* reader it holds (the reader block's parked word = ``PARKED_DOORBELL``; its
pid word says whose doorbell), looks once more at every ring (a record published between its
last poll and the announcement would otherwise wait out the timeout), then sleeps on the
semaphore ``hftfarm.<instance>.door.<pid>``.

Writers: the publish kernels (shm/ringops.py, rings made with wakeups) fence, read the readers'
parked words and set the writer's ST_WAKE flag; the Dekker handshake is theirs and
``set_parked_at``'s (both fence). A kernel cannot post a semaphore, so the process that
published calls ``wake_parked()`` after the batch: for each of its writers with ST_WAKE set it
posts the doorbell (or own semaphore) of each parked reader. Python-level ``publish`` does it
itself. A spurious post only ends one park early.
"""
from __future__ import annotations

import os

import posix_ipc

from shm import ringops as ops
from shm.ring import LIVE_READERS, PARKED_DOORBELL, ST_WAKE, WAKE_WRITERS, _entry, door_name
from shm.segment import MODE


def wake_parked() -> None:
    """Post the doorbells that this process's kernels flagged since the last call."""
    for w in WAKE_WRITERS:
        if w._st_mv[ST_WAKE]:
            w.wake_readers()


class Doorbell:
    """The calling process's doorbell; ``park(timeout_s)`` sleeps until a writer rings it."""

    def __init__(self, instance: str):
        self.instance = instance
        self.pid = os.getpid()
        self.name = door_name(instance, self.pid)
        try:
            posix_ipc.unlink_semaphore(self.name)   # a dead process of the same pid left it
        except posix_ipc.ExistentialError:
            pass
        self.sem = posix_ipc.Semaphore(self.name, posix_ipc.O_CREX, mode=MODE,
                                       initial_value=0)
        self.parks = 0
        self.timeouts = 0
        # the compiled entry point: a dispatcher call types its integers (~0.3 us each), and
        # a park announces itself on every reader of the process twice
        self._set_parked = _entry(ops.set_parked_at, 2)

    def park(self, timeout_s: float) -> bool:
        """Sleep until a record arrives on any reader of this process or ``timeout_s`` passes;
        False on timeout."""
        readers = list(LIVE_READERS)
        set_parked = self._set_parked
        for r in readers:
            set_parked(r._sa, PARKED_DOORBELL)
        try:
            for r in readers:
                if r._avail(r._sa):
                    return True
            self.parks += 1
            try:
                self.sem.acquire(timeout_s)
            except posix_ipc.BusyError:
                self.timeouts += 1
                return False
            except posix_ipc.SignalError:
                return False   # SIGTERM / SIGINT: the handler set a flag the loop reads next
            while True:   # several writers may have rung: one wake-up is enough
                try:
                    self.sem.acquire(0)
                except posix_ipc.BusyError:
                    return True
        finally:
            for r in readers:
                if r._sa:
                    set_parked(r._sa, 0)

    def close(self) -> None:
        if self.sem is not None:
            self.sem.close()
            self.sem = None
            try:
                posix_ipc.unlink_semaphore(self.name)
            except posix_ipc.ExistentialError:
                pass


def unlink_doorbell(instance: str, pid: int) -> None:
    """Remove the doorbell of a process that died without closing it (the supervisor, on
    reaping it)."""
    try:
        posix_ipc.unlink_semaphore(door_name(instance, pid))
    except posix_ipc.ExistentialError:
        pass
