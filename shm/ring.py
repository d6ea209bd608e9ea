"""Ring objects over shared memory: SpscRing and BroadcastRing, their writer and reader ends.

Cold path (create / attach / close / stats); the ends' ``publish`` / ``poll`` are one Python
call per batch into the @njit kernels of shm/ringops.py. A stage that needs more speed runs its
whole loop in @njit and calls the kernels itself with ``end.st`` and ``end.slots``.

    ring = SpscRing.create(instance, "intents.mm1", ORDER_DTYPE, capacity=4096)
    w = ring.writer()                       # exactly one writer process
    r = SpscRing.attach(instance, "intents.mm1", ORDER_DTYPE).reader()

A ring's segment carries its record size, capacity and a hash plus the text of the record
layout; attaching with a different dtype raises RingLayoutError saying which fields differ.
Each reader of a ring has a POSIX semaphore (``sem.hftfarm.<instance>.<name>.r<i>``) used only
by the blocking idle strategy; it is unlinked with the ring.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import posix_ipc

from shm import ringops as ops
from shm.records import dtype_name, layout_description, layout_diff, layout_hash
from shm.segment import MODE, Segment, SegmentError, segment_name

ST_POS = ops.ST_POS
ST_WAKE = ops.ST_WAKE
_ENTRIES: dict = {}


def _entry(kernel, n_args):
    key = (kernel, n_args)
    e = _ENTRIES.get(key)
    if e is None:
        e = _ENTRIES[key] = ops.int_entry(kernel, n_args)
    return e

# The ends this process holds, for process-wide parking (shm/doorbell.py): every reader (a
# parked process announces itself on each), and every writer of a ring made with wakeups
# (after a batch, the process posts the doorbells its kernels flagged).
LIVE_READERS: list = []
WAKE_WRITERS: list = []
PARKED_OWN_SEM = 1     # reader block's parked word: sleeping on the reader's own semaphore
PARKED_DOORBELL = 2    # ... on its process's doorbell (shm/doorbell.py, keyed by its pid)

KIND_SPSC = "spsc"
KIND_BROADCAST = "broadcast"
FLAG_WAKEUPS = 1


class RingLayoutError(SegmentError):
    """Attaching with a record layout, size or ring kind other than the ring was made with."""


def _content_size(record_size: int, capacity: int, n_readers: int) -> int:
    return ops.BLOCK * (1 + n_readers) + record_size * capacity


class _Ring:
    kind = ""

    def __init__(self, seg: Segment, dtype: np.dtype, instance: str, name: str):
        self.seg = seg
        self.dtype = np.dtype(dtype)
        self.instance = instance
        self.name = name
        h = seg.header
        self.capacity = int(h["capacity"])
        self.n_readers = int(h["n_readers"])
        self.record_size = int(h["record_size"])
        self.words = self.record_size // 8
        self.wakeups = bool(int(h["flags"]) & FLAG_WAKEUPS)
        base = seg.data_addr
        self.head_addr = base
        self.reader_block_addr = base + ops.BLOCK
        self.slots_offset = ops.BLOCK * (1 + self.n_readers)
        self.slots_addr = base + self.slots_offset
        raw = seg.data[self.slots_offset: self.slots_offset + self.record_size * self.capacity]
        self.slots = raw.view(np.int64).reshape(self.capacity, self.words)
        self._ctrl = seg.data[: self.slots_offset].view(np.int64)
        self._ends: list = []

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def _create(cls, instance, name, dtype, capacity, n_readers, wakeups):
        dtype = np.dtype(dtype)
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"ring {name}: capacity {capacity} is not a power of two")
        if dtype.itemsize % 64 or dtype.names is None or dtype.names[0] != "ring_seq":
            raise ValueError(f"ring {name}: {dtype_name(dtype)} record must be a multiple of "
                             "64 bytes and start with the ring_seq word")
        seg = Segment.create(
            instance, name, _content_size(dtype.itemsize, capacity, n_readers), cls.kind,
            layout_hash=layout_hash(dtype), layout_text=layout_description(dtype),
            record_size=dtype.itemsize, capacity=capacity, n_readers=n_readers,
            flags=FLAG_WAKEUPS if wakeups else 0)
        try:
            for i in range(n_readers):
                _create_sem(_sem_name(instance, name, i))
        except Exception:
            _unlink_sems(instance, name, n_readers)
            seg.unlink()
            seg.close()
            raise
        seg.mark_ready()
        return cls(seg, dtype, instance, name)

    @classmethod
    def attach(cls, instance: str, name: str, dtype, *, timeout_s: float = 2.0):
        """Attach to an existing ring; RingLayoutError if kind or record layout differ."""
        dtype = np.dtype(dtype)
        seg = Segment.attach(instance, name, timeout_s=timeout_s)
        problems = []
        if seg.kind != cls.kind:
            problems.append(f"it is a {seg.kind!r} ring, not {cls.kind!r}")
        if int(seg.header["record_size"]) != dtype.itemsize:
            problems.append(f"record size {int(seg.header['record_size'])} bytes in the "
                            f"segment, {dtype.itemsize} expected")
        if int(seg.header["layout_hash"]) != layout_hash(dtype):
            problems.append("record layout differs: " + layout_diff(dtype, seg.layout_text))
        if problems:
            shm_name = seg.shm_name
            seg.close()
            raise RingLayoutError(f"cannot attach ring {shm_name} as {dtype_name(dtype)} "
                                  f"records: " + "; ".join(problems))
        return cls(seg, dtype, instance, name)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        for end in self._ends:
            end._drop()
        self._ends.clear()
        self.slots = None
        self._ctrl = None
        self.seg.close()

    def unlink(self) -> None:
        """Remove the semaphores, then the segment (mapped views stay valid until closed).
        In this order, whoever creates the name next and finds a semaphore of it knows that
        no live ring owns that semaphore (see _create_sem)."""
        _unlink_sems(self.instance, self.name, self.n_readers)
        self.seg.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- monitoring -----------------------------------------------------------------------
    def head(self) -> int:
        return int(self._ctrl[0])

    def reader_cursor(self, i: int) -> int:
        return int(self._ctrl[(ops.BLOCK * (1 + i) + ops.RB_CURSOR) // 8])

    def reader_lost(self, i: int) -> int:
        return int(self._ctrl[(ops.BLOCK * (1 + i) + ops.RB_LOST) // 8])

    def reader_pid(self, i: int) -> int:
        """pid of the last process that attached as reader i (0: none yet)."""
        return int(self._ctrl[(ops.BLOCK * (1 + i) + ops.RB_PID) // 8])

    def stats(self) -> dict:
        head = self.head()
        readers = []
        for i in range(self.n_readers):
            cur = self.reader_cursor(i)
            readers.append(dict(index=i, cursor=cur, lag=max(0, head - cur),
                                lost=self.reader_lost(i),
                                pid=self.reader_pid(i)))
        return dict(name=self.seg.shm_name, kind=self.kind, record=dtype_name(self.dtype),
                    capacity=self.capacity, head=head, readers=readers)

    # -- ends -----------------------------------------------------------------------------
    def _state(self) -> np.ndarray:
        st = ops.new_state()
        st[ops.ST_SLOTS_ADDR] = self.slots_addr
        st[ops.ST_HEAD_ADDR] = self.head_addr
        st[ops.ST_CAPACITY] = self.capacity
        st[ops.ST_MASK] = self.capacity - 1
        st[ops.ST_WORDS] = self.words
        st[ops.ST_N_READERS] = self.n_readers
        st[ops.ST_READER0_ADDR] = self.reader_block_addr
        st[ops.ST_WAKEUPS] = 1 if self.wakeups else 0
        return st

    def _reader_block(self, i: int) -> int:
        if not 0 <= i < self.n_readers:
            raise ValueError(f"ring {self.seg.shm_name}: reader index {i} out of range "
                             f"0..{self.n_readers - 1}")
        return self.reader_block_addr + ops.BLOCK * i

    def _writer_start(self) -> int:
        # A restarted writer resumes after the last record it committed, which may be past the
        # head it published (head is stored once per batch; a crash can fall in between).
        pos = self.head()
        while True:
            c = int(self.slots[pos & (self.capacity - 1), 0])
            if c != pos + 1:
                return pos
            pos += 1


def _sem_name(instance: str, name: str, i: int) -> str:
    return segment_name(instance, name) + f".r{i}"


def door_name(instance: str, pid: int) -> str:
    """The doorbell semaphore of process ``pid`` (shm/doorbell.py)."""
    return segment_name(instance, f"door.{int(pid)}")


def _create_sem(sem_name: str) -> None:
    """Create a reader's semaphore (owner-only, value 0). Called after the ring's segment was
    created exclusively, so a semaphore already there belongs to no live ring: a crashed ring
    left it (its segment removed, e.g. by hand). It is replaced, not reused: its count is
    stale and would wake a parked reader for nothing."""
    for attempt in range(2):
        try:
            posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode=MODE, initial_value=0).close()
            return
        except posix_ipc.ExistentialError:
            if attempt:
                raise SegmentError(f"semaphore {sem_name} already exists and could not be "
                                   "replaced (see `python run.py shm ls`)") from None
            _unlink_sem(sem_name)


def _unlink_sem(sem_name: str) -> None:
    try:
        posix_ipc.unlink_semaphore(sem_name)
    except posix_ipc.ExistentialError:
        pass


def _unlink_sems(instance: str, name: str, n: int) -> None:
    for i in range(n):
        _unlink_sem(_sem_name(instance, name, i))


class _End:
    def __init__(self, ring: _Ring, st: np.ndarray):
        self.ring = ring
        self.st = st
        self.slots = ring.slots
        self.words = ring.words
        self.dtype = ring.dtype
        ring._ends.append(self)

    @property
    def st(self) -> np.ndarray:
        """This end's int64 state. A stage may replace it with a row of a stacked 2-D state
        (stages.base.stack_states) so its @njit kernels take one array for many ends; the
        Python-level calls follow, and pollers / publishers bound to the old state raise."""
        return self._st

    @st.setter
    def st(self, arr: np.ndarray) -> None:
        old = getattr(self, "_st", None)
        if old is not None:
            arr[:] = old
            old[ops.ST_CLOSED] = 1
            self._st_mv.release()
        self._st = arr
        # Python-level calls go to address-level kernels with integer arguments only, through
        # the compiled entry point: numba's dispatcher types four arrays in ~1.2 us; three or
        # four integers straight into the entry point cost ~0.15 us.
        self._sa = arr.ctypes.data
        # memoryviews: an item read is a plain load returning an int (~40 ns; numpy's scalar
        # indexing plus int() is ~290 ns here)
        self._st_mv = memoryview(arr)

    def _drop(self):
        self.slots = None
        self._last_arr = None
        self._sa = 0
        self._st_mv.release()
        self._st[ops.ST_CLOSED] = 1  # bound pollers / publishers hold the state: they raise

    def _closed(self) -> ValueError:
        return ValueError(f"ring {self.ring.name}: this {type(self).__name__[4:].lower()} "
                          f"is closed")

    _last_arr = None
    _last_addr = 0
    _last_len = 0

    def _check_buffer(self, records: np.ndarray) -> None:
        if self._sa == 0:
            raise self._closed()
        if not isinstance(records, np.ndarray) or records.dtype != self.dtype:
            got = dtype_name(records.dtype) if isinstance(records, np.ndarray) else \
                type(records).__name__
            raise TypeError(f"ring {self.ring.seg.shm_name} carries {dtype_name(self.dtype)} "
                            f"records, got an array of {got}")
        if records.ndim != 1 or not records.flags.c_contiguous:
            raise ValueError(f"ring {self.ring.seg.shm_name}: the record buffer must be a "
                             f"contiguous 1-D array (pass a copy, not a strided view)")

    def _bound(self, entry, buf, *args):
        """A C-level callable over an integer entry point (functools.partial: no Python frame
        per call). It keeps the state and the buffer alive; after close() the kernel raises."""
        p = functools.partial(entry, self._sa, *args)
        p.keep = (self._st, buf)
        return p

    def _bind(self, records: np.ndarray) -> None:
        """Remember ``records``' address and length. A caller passes the same preallocated
        buffer every call, so the dtype comparison (~5 us for a structured dtype) and the
        address lookup happen once per buffer."""
        self._check_buffer(records)
        self._last_arr = records
        self._last_addr, self._last_len = records.ctypes.data, len(records)


class RingWriter(_End):
    """The one writer of a ring."""

    def __init__(self, ring: _Ring):
        st = ring._state()
        st[ops.ST_POS] = ring._writer_start()
        if ring.kind == KIND_SPSC:
            st[ops.ST_CURSOR_ADDR] = ring.reader_block_addr + ops.RB_CURSOR
            st[ops.ST_CACHED] = ring.reader_cursor(0)
        super().__init__(ring, st)
        self._publish = _entry(ops.spsc_publish_from if ring.kind == KIND_SPSC
                               else ops.bcast_publish_from, 4)
        self._sems: dict = {}
        self._wakeups = ring.wakeups
        if self._wakeups:
            WAKE_WRITERS.append(self)

    def publish(self, records: np.ndarray, n: int | None = None) -> int:
        """Append ``records`` (or its first ``n``); returns how many were taken (SPSC: fewer =
        full, keep the rest). Passing the same preallocated buffer with ``n`` every call, not
        a fresh ``buf[:n]`` slice, keeps a Python-level publish to one kernel call."""
        if records is not self._last_arr:
            self._bind(records)
        try:
            got = self._publish(self._sa, self._last_addr, self._last_len,
                                self._last_len if n is None else n)
        except ValueError:  # the count (a closed ring fails in _bind, above)
            raise ValueError(f"ring {self.ring.name}: publish n={n} outside "
                             f"0..{self._last_len}") from None
        if self._wakeups and self._st_mv[ST_WAKE]:
            self.wake_readers()
        return got

    def publisher(self, buf: np.ndarray):
        """``pub = w.publisher(buf)``; ``pub(n)`` publishes ``buf[:n]`` and returns how many were
        taken, like ``publish(buf, n)`` at about half its cost from Python (no method frame, no
        buffer check per call). For Python loops that publish from one buffer."""
        self._check_buffer(buf)
        raw = self._bound(self._publish, buf, buf.ctypes.data, len(buf))
        if not self._wakeups:
            return raw
        st_mv = self._st_mv

        def publish(n):
            got = raw(n)
            if st_mv[ST_WAKE]:
                self.wake_readers()
            return got
        return publish

    def wake_readers(self) -> None:
        """Post the semaphore of each parked reader (blocking idle strategy): its own, or its
        process's doorbell (shm/doorbell.py) when it parked there."""
        self.st[ops.ST_WAKE] = 0
        ctrl = self.ring._ctrl
        for i in range(self.ring.n_readers):
            blk = ops.BLOCK * (1 + i)
            parked = ctrl[(blk + ops.RB_PARKED) // 8]
            if not parked:
                continue
            key = i if parked != PARKED_DOORBELL else ("door", int(ctrl[(blk + ops.RB_PID) // 8]))
            sem = self._sems.get(key)
            if sem is None:
                name = (_sem_name(self.ring.instance, self.ring.name, i) if key == i
                        else door_name(self.ring.instance, key[1]))
                try:
                    sem = self._sems[key] = posix_ipc.Semaphore(name)
                except posix_ipc.ExistentialError:
                    continue   # the reader's process is gone (its doorbell with it)
            sem.release()

    @property
    def position(self) -> int:
        return int(self.st[ops.ST_POS])

    def discard_unread(self) -> int:
        """SPSC, cold: move the reader's cursor to our position, so what it has not read yet is
        never delivered; returns how many records that drops. Only for a reader known to be
        dead (its process reaped, its successor not started): a live reader would race us on
        its own cursor. The order router uses it when the venue process died, after closing
        every order it had sent there."""
        if self.ring.kind != KIND_SPSC:
            raise TypeError(f"ring {self.ring.name!r}: discard_unread is for SPSC rings")
        ring = self.ring
        word = (ring._reader_block(0) - ring.head_addr + ops.RB_CURSOR) // 8
        dropped = self.position - int(ring._ctrl[word])
        ring._ctrl[word] = self.position
        self.st[ops.ST_CACHED] = self.position
        return max(0, dropped)

    def _drop(self):
        super()._drop()
        if self in WAKE_WRITERS:
            WAKE_WRITERS.remove(self)
        for sem in self._sems.values():
            sem.close()
        self._sems.clear()


class RingReader(_End):
    """One reader of a ring (SPSC: the only one; broadcast: reader ``index``)."""

    def __init__(self, ring: _Ring, index: int, from_start: bool):
        st = ring._state()
        blk = ring._reader_block(index)
        st[ops.ST_CURSOR_ADDR] = blk + ops.RB_CURSOR
        st[ops.ST_PARKED_ADDR] = blk + ops.RB_PARKED
        st[ops.ST_LOST_ADDR] = blk + ops.RB_LOST
        ctrl = ring._ctrl
        if ring.kind == KIND_SPSC or from_start:
            # SPSC: resume where the previous reader left (a restarted stage loses nothing).
            st[ops.ST_POS] = ring.reader_cursor(index)
        else:
            st[ops.ST_POS] = ring.head()  # a broadcast reader joins the live stream
        st[ops.READER_LOST] = ring.reader_lost(index)
        ctrl[(blk - ring.head_addr + ops.RB_CURSOR) // 8] = st[ops.ST_POS]
        ctrl[(blk - ring.head_addr + ops.RB_PID) // 8] = os.getpid()
        super().__init__(ring, st)
        self.index = index
        if ring.kind == KIND_SPSC:
            self._poll, self._avail = (_entry(ops.spsc_poll_into, 3),
                                       _entry(ops.spsc_available_at, 1))
        else:
            self._poll, self._avail = (_entry(ops.bcast_poll_into, 3),
                                       _entry(ops.bcast_available_at, 1))
        self._sem = None
        self._peek = self._commit = None
        LIVE_READERS.append(self)

    def poll(self, out: np.ndarray) -> int:
        """Copy up to len(out) records into out[:n]; returns n. One kernel call (~0.2 us from
        Python); a stage's hot loop calls the kernels from @njit instead."""
        if out is not self._last_arr:
            self._bind(out)
        return self._poll(self._sa, self._last_addr, self._last_len)

    def poller(self, out: np.ndarray):
        """``poll = r.poller(out)``; ``poll()`` copies up to len(out) records into ``out`` and
        returns how many, like ``poll(out)`` at about half its cost from Python (no method
        frame, no buffer check per call). For Python loops that poll into one buffer."""
        self._check_buffer(out)
        return self._bound(self._poll, out, out.ctypes.data, len(out))

    def peek(self, out: np.ndarray) -> int:
        """SPSC: copy up to len(out) records into out[:n] like ``poll``, but keep them owned by
        the ring until ``commit(n)``. A reader that must make what it read durable first (the
        journal) peeks, writes, then commits: if it dies in between, its successor reads the
        same records again."""
        if self._sa == 0:
            raise self._closed()
        if self._peek is None:
            if self.ring.kind != KIND_SPSC:
                raise TypeError(f"ring {self.ring.name!r}: peek/commit is for SPSC rings")
            self._peek, self._commit = _entry(ops.spsc_peek_at, 3), _entry(ops.spsc_commit_at, 2)
        if out is not self._last_arr:
            self._bind(out)   # checked once per buffer: a structured dtype compare is ~5 us
        return self._peek(self._sa, self._last_addr, self._last_len)

    def commit(self, n: int) -> None:
        """Release the first n records of the last ``peek`` to the writer."""
        if self._sa == 0:
            raise self._closed()
        if n > 0:
            self._commit(self._sa, int(n))

    def available(self) -> bool:
        if self._sa == 0:
            raise self._closed()
        return bool(self._avail(self._sa))

    @property
    def lost(self) -> int:
        return int(self.st[ops.READER_LOST])

    @property
    def position(self) -> int:
        return int(self.st[ops.ST_POS])

    def pending(self) -> int:
        return max(0, self.ring.head() - self.position)

    def rejoin_live(self, lost: int | None = None) -> None:
        """Broadcast: jump to the writer's current head, e.g. after a warm-up whose first poll
        JIT-compiled for seconds while the writer ran on. ``lost`` resets the lost counter
        (a stage that was not live yet has lost nothing); None keeps it."""
        ring = self.ring
        blk = (ring._reader_block(self.index) - ring.head_addr) // 8
        self.st[ops.ST_POS] = ring.head()
        if lost is not None:
            self.st[ops.READER_LOST] = lost
            ring._ctrl[blk + ops.RB_LOST // 8] = lost
        ring._ctrl[blk + ops.RB_CURSOR // 8] = self.st[ops.ST_POS]

    def park(self, timeout_s: float) -> bool:
        """Sleep until the writer posts or ``timeout_s`` passes; False on timeout.

        Announce first, then look once more: a record published between our last poll and
        the announcement would otherwise go unnoticed until the timeout.
        """
        if self._sa == 0:
            raise self._closed()
        if self._sem is None:
            self._sem = posix_ipc.Semaphore(_sem_name(self.ring.instance, self.ring.name,
                                                      self.index))
        ops.set_parked_at(self._sa, PARKED_OWN_SEM)
        try:
            if self.available():
                return True
            try:
                self._sem.acquire(timeout_s)
                return True
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                return False   # timed out, or a signal (its handler has run)
        finally:
            ops.set_parked_at(self._sa, 0)

    def _drop(self):
        super()._drop()
        if self in LIVE_READERS:
            LIVE_READERS.remove(self)
        if self._sem is not None:
            self._sem.close()
            self._sem = None


class SpscRing(_Ring):
    """One writer, one reader, lossless: a full ring pushes back, nothing is overwritten."""

    kind = KIND_SPSC

    @classmethod
    def create(cls, instance: str, name: str, dtype, capacity: int, *,
               wakeups: bool = False) -> "SpscRing":
        return cls._create(instance, name, dtype, capacity, 1, wakeups)

    def writer(self) -> RingWriter:
        return RingWriter(self)

    def reader(self) -> RingReader:
        return RingReader(self, 0, True)


class BroadcastRing(_Ring):
    """One writer, up to ``max_readers`` readers with their own cursors; the writer never
    waits, a lapped reader learns exactly how many records it lost."""

    kind = KIND_BROADCAST

    @classmethod
    def create(cls, instance: str, name: str, dtype, capacity: int, max_readers: int, *,
               wakeups: bool = False) -> "BroadcastRing":
        if max_readers < 1:
            raise ValueError(f"ring {name}: max_readers must be >= 1")
        return cls._create(instance, name, dtype, capacity, max_readers, wakeups)

    def writer(self) -> RingWriter:
        return RingWriter(self)

    def reader(self, index: int, *, from_start: bool = False) -> RingReader:
        return RingReader(self, index, from_start)
