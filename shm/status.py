"""Per-stage status blocks in shared memory: written by each stage, read by the controller.

Runs in every stage process (writer of its own block, from the runner's cold heartbeat path)
and in the controller / CLI (readers). Not on the per-record hot path: a stage publishes its
counters once per heartbeat period.

Layout (common/status.py): one segment ``status`` holding ``n_slots`` blocks of 128 bytes (16
int64 words), one per stage slot; each word has exactly one writer at a time. Stores are
atomic (``store_relaxed``; the heartbeat word is written last with ``store_release`` so a
reader that sees a fresh heartbeat sees the counters before it).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from common.status import BLOCK_BYTES, BLOCK_WORDS, FIELD_NAMES, W_HEARTBEAT_NS, W_RESTARTS
from shm.atomics import load_acquire, load_relaxed, store_relaxed, store_release
from shm.segment import Segment


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
        seg = Segment.create(instance, "status", segment_size(n_slots), kind="status",
                             capacity=n_slots)
        seg.mark_ready()
        return cls(seg.data, n_slots, seg)

    @classmethod
    def attach(cls, instance: str, timeout_s: float = 0.0) -> "StatusTable":
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
