"""Per-stage status blocks in shared memory: written by each stage, read by the controller.

Runs in every stage process (writer of its own block, from the runner's cold heartbeat path)
and in the controller / CLI (readers). Not on the per-record hot path: a stage publishes its
counters once per heartbeat period.

Layout: one segment ``status`` holding ``n_slots`` blocks of 128 bytes (16 int64 words), one per
stage slot. 128 bytes = two cache lines, so the adjacent-line prefetcher never couples two
processes' counters either. Every word has exactly one writer at a time: the stage owns all
words except ``restarts``, which the controller writes only while that stage's process is dead
or not yet started. Stores are atomic (``store_relaxed``; the heartbeat word is written last
with ``store_release`` so a reader that sees a fresh heartbeat sees the counters before it).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.atomics import load_acquire, load_relaxed, store_relaxed, store_release

BLOCK_BYTES = 128
BLOCK_WORDS = BLOCK_BYTES // 8

# word indices inside one block
W_STATE = 0
W_PID = 1
W_CPU = 2
W_HEARTBEAT_NS = 3     # CLOCK_MONOTONIC ns of the last heartbeat (written last)
W_RECORDS_IN = 4
W_RECORDS_OUT = 5
W_RING_LAG = 6         # records visible to the stage but not yet read, summed over its inputs
W_RECORDS_LOST = 7     # market records lost to lapping (broadcast readers)
W_ERRORS = 8
W_RESTARTS = 9         # written by the controller while the stage is down
W_STARTED_NS = 10
W_X0 = 11              # stage specific (risk gate: risk state; router: open orders ...)
W_X1 = 12
W_X2 = 13
W_X3 = 14
W_CTRL_ACK = 15        # sequence number of the last control command the stage handled

FIELD_NAMES = ("state", "pid", "cpu", "heartbeat_ns", "records_in", "records_out", "ring_lag",
               "records_lost", "errors", "restarts", "started_ns", "x0", "x1", "x2", "x3",
               "ctrl_ack")

ST_EMPTY = 0
ST_STARTING = 1
ST_RUNNING = 2
ST_STOPPING = 3
ST_STOPPED = 4
ST_FAILED = 5
ST_RESTARTING = 6
ST_DEAD = 7
ST_COMPILING = 8       # starting, and numba is compiling (not loading from its cache)
STATE_NAMES = {ST_EMPTY: "EMPTY", ST_STARTING: "STARTING", ST_RUNNING: "RUNNING",
               ST_STOPPING: "STOPPING", ST_STOPPED: "STOPPED", ST_FAILED: "FAILED",
               ST_RESTARTING: "RESTARTING", ST_DEAD: "DEAD", ST_COMPILING: "COMPILING"}


@njit(cache=True)
def _store_words(base, values, n):
    # counters first (relaxed), heartbeat last with release: a reader that loads the heartbeat
    # with acquire sees counters at least as new as that heartbeat.
    for i in range(n):
        if i != W_HEARTBEAT_NS:
            store_relaxed(base + 8 * i, values[i])
    store_release(base + 8 * W_HEARTBEAT_NS, values[W_HEARTBEAT_NS])


@njit(cache=True)
def _store_word(addr, value):
    store_relaxed(addr, value)


@njit(cache=True)
def _load_block(base, out):
    out[W_HEARTBEAT_NS] = load_acquire(base + 8 * W_HEARTBEAT_NS)
    for i in range(BLOCK_WORDS):
        if i != W_HEARTBEAT_NS:
            out[i] = load_relaxed(base + 8 * i)


def segment_size(n_slots: int) -> int:
    return n_slots * BLOCK_BYTES


class StatusTable:
    """``n_slots`` status blocks over a shared buffer (an mmap or any writable buffer).

    ``words`` is an int64 view [n_slots, 16]; ``addr`` the address of block 0, which must be
    128-byte aligned (the segment layer page-aligns its payload; checked here).
    """

    def __init__(self, buf, n_slots: int, segment=None):
        raw = np.frombuffer(buf, dtype=np.uint8, count=segment_size(n_slots))
        self.words = raw.view(np.int64).reshape(n_slots, BLOCK_WORDS)
        self.addr = int(self.words.ctypes.data)
        if self.addr % BLOCK_BYTES:
            raise ValueError(f"status table at {self.addr:#x} is not {BLOCK_BYTES}-byte aligned")
        self.n_slots = n_slots
        self.segment = segment
        self._scratch = np.zeros(BLOCK_WORDS, dtype=np.int64)

    # -- shared-memory lifecycle (controller creates, stages and CLI attach) --------------
    @classmethod
    def create(cls, instance: str, n_slots: int) -> "StatusTable":
        from shm.segment import Segment

        seg = Segment.create(instance, "status", segment_size(n_slots), kind="status",
                             capacity=n_slots)
        seg.mark_ready()
        return cls(seg.data, n_slots, seg)

    @classmethod
    def attach(cls, instance: str, timeout_s: float = 0.0) -> "StatusTable":
        from shm.segment import Segment

        seg = Segment.attach(instance, "status", timeout_s=timeout_s)
        return cls(seg.data, int(seg.header["capacity"]), seg)

    def close(self) -> None:
        # drop our views before the mmap goes, or mmap.close() raises BufferError
        self.words = None
        self._scratch = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None

    # -- writer side --------------------------------------------------------------------
    def block(self, slot: int) -> "StatusWriter":
        if not 0 <= slot < self.n_slots:
            raise IndexError(f"status slot {slot} out of range 0..{self.n_slots - 1}")
        return StatusWriter(self, slot)

    def set_word(self, slot: int, word: int, value: int) -> None:
        _store_word(self.addr + slot * BLOCK_BYTES + 8 * word, int(value))

    # -- reader side --------------------------------------------------------------------
    def read(self, slot: int) -> dict:
        out = self._scratch
        _load_block(self.addr + slot * BLOCK_BYTES, out)
        return {name: int(out[i]) for i, name in enumerate(FIELD_NAMES)}

    def read_word(self, slot: int, word: int) -> int:
        return int(self.words[slot, word])


class StatusWriter:
    """One stage's block: the stage fills ``values`` and calls ``publish`` per heartbeat."""

    def __init__(self, table: StatusTable, slot: int):
        self.table = table
        self.slot = slot
        self.base = table.addr + slot * BLOCK_BYTES
        self.values = table.words[slot].copy()  # keeps restarts / ctrl_ack as they are

    def publish(self, now_ns: int) -> None:
        # restarts is the controller's word: re-read it so we never overwrite its count
        self.values[W_RESTARTS] = self.table.words[self.slot, W_RESTARTS]
        self.values[W_HEARTBEAT_NS] = now_ns
        _store_words(self.base, self.values, BLOCK_WORDS)

    def set(self, word: int, value: int) -> None:
        self.values[word] = value

    def set_now(self, word: int, value: int) -> None:
        """Set one word and store it at once with a plain (aligned, so untorn) store, not
        through a compiled function: callable while numba is compiling."""
        self.values[word] = value
        self.table.words[self.slot, word] = value
