"""Binance spot handler with a numba fast path on the raw frame bytes. Feed process, hot path.

``BinanceFastHandler`` is a drop-in ``BinanceHandler``: same constructor, same ``feed`` /
``feed_rest`` / counters / books / records, bit for bit; it is what ``feeds.meta.make_handler``
returns for Binance (``exact=True`` gives the exact handler). Each frame goes first to one
@njit call (feeds._binance_kernel.feed_kernel) that scans the bytes, parses decimals to ticks
and lots exactly and, for a synced book, applies a depthUpdate to an array book, checks waiting
bookTickers against it and writes the records. It also handles trade, aggTrade, bookTicker and
ignored kinds. Anything else (the buffering before a snapshot, the first-event rule's refusals,
gaps, crossed books, snapshots, malformed or surprising frames) goes to the exact Python path
(BinanceHandler), which stays the source of truth for the sync state machine.

Which book counts: per instrument, a *mode*. FAST: the kernel's array book is authoritative (the
Python ``Book`` may be stale). SLOW: the Python ``Book`` is. A valid Python book is adopted into
the arena (levels, update id, first-event flag, waiting tickers) when the kernel first needs it;
a FAST book is handed back (demoted) whenever Python code reads ``self.books``: the ``books``
property does it, only for the instrument of the frame being handled when the kernel has
identified it, else for all. So the exact path and every outside reader (``feed check``, tests)
always see exact Python books, and the fast path pays the O(levels) copy only around the rare
frames that need the exact path. Counters likewise: the kernel counts in the arena, and the
``stats`` property folds them into ``FeedStats`` when read.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from feeds import _binance_kernel as K
from feeds._numtext import SCALE_WORDS, scale_table
from feeds._scan import symbol_hash
from feeds.binance import MAX_PENDING_TICKERS, BinanceHandler, _query_param
from feeds.handler import FeedStats
from shm.records import MARKET_DTYPE

DEFAULT_BOOK_LEVELS = 8192      # array book capacity per side; deeper books stay on the exact path
INT31 = (1 << 31) - 1
NO_DEMOTION = -2                # ``_target`` while FAST books are known to be read-only


class BinanceFastHandler(BinanceHandler):

    def __init__(self, instruments, book_levels: int = DEFAULT_BOOK_LEVELS, **kw):
        super().__init__(instruments, **kw)
        self._target = -1
        self.adoptions = 0          # books loaded into the arena (once per snapshot, typically)
        self._unfolded = False
        self._n_fast = 0
        self._build_arena(int(book_levels))
        # compile (or load from the numba cache) the kernel here, not inside the first frame's
        # feed(): on a cold cache that takes seconds, which a live client would spend with its
        # event loop blocked (REST snapshots timing out, books going stale). An empty frame is
        # declined before anything but the arena's frame generation counter is touched.
        K.feed_kernel(b"", self._arena, 0)

    # ---- arena ---------------------------------------------------------------------------
    def _build_arena(self, cap: int) -> None:
        syms = list(self.instruments)
        n = len(syms)
        hsize = 16
        while hsize < 4 * n:
            hsize <<= 1
        qcap = MAX_PENDING_TICKERS
        outcap = self.capacity
        off = {}
        pos = K.HEADER
        for name, size in (("cnt", K.N_CNT), ("fields", 2 * K.N_SLOTS * 4),
                           ("inst", max(n, 1) * K.IW), ("hash", hsize),
                           ("book", max(n, 1) * 4 * cap), ("tq", max(n, 1) * qcap * 5),
                           ("raw", 8 + 4 * outcap), ("scr", 2 * outcap),
                           ("out", 8 * outcap)):
            off[name] = pos
            pos += size
        A = np.zeros(pos, dtype=np.int64)
        # fault every page in now (calloc maps them lazily; with transparent huge pages a first
        # touch on the hot path zeroes 2 MiB and was measured here at 1-10 ms)
        A.fill(0)
        A[K.H_NINST], A[K.H_CAP], A[K.H_QCAP], A[K.H_OUTCAP] = n, cap, qcap, outcap
        A[K.H_BASEFL] = self.base_flags
        A[K.H_EMIT_TOPS] = 1 if self.emit_tops else 0
        A[K.H_HMASK] = hsize - 1
        for h, name in ((K.H_OFF_CNT, "cnt"), (K.H_OFF_FIELDS, "fields"),
                        (K.H_OFF_INST, "inst"), (K.H_OFF_HASH, "hash"), (K.H_OFF_BOOK, "book"),
                        (K.H_OFF_TQ, "tq"), (K.H_OFF_SCR, "scr"), (K.H_OFF_OUT, "out"),
                        (K.H_OFF_RAW, "raw")):
            A[h] = off[name]
        A[K.H_RAWCAP] = outcap // 2
        complete = 1
        for k, sym in enumerate(syms):
            inst = self.instruments[sym]
            raw = sym.encode("utf-8", "surrogatepass")
            I = off["inst"] + k * K.IW
            A[I + K.I_PX:I + K.I_PX + SCALE_WORDS] = scale_table(inst.price)
            A[I + K.I_QTY:I + K.I_QTY + SCALE_WORDS] = scale_table(inst.qty)
            A[I + K.I_IID] = inst.instrument_id
            if len(raw) > K.SYM_MAX or not raw.isascii() or b'"' in raw or b"\\" in raw \
                    or any(c < 32 for c in raw) or not 0 <= inst.instrument_id <= INT31:
                complete = 0          # the kernel cannot see this one: never "unknown" there
                A[I + K.I_SYMLEN] = -1
                continue
            A[I + K.I_SYMLEN] = len(raw)
            words = np.frombuffer(raw.ljust(K.SYM_MAX, b"\0"), dtype="<i8")
            A[I + K.I_SYM:I + K.I_SYM + 4] = words
            h = symbol_hash(raw, 0, len(raw)) & (hsize - 1)
            while A[off["hash"] + h]:
                h = (h + 1) & (hsize - 1)
            A[off["hash"] + h] = k + 1
        A[K.H_COMPLETE] = complete
        self._arena = A
        self._syms = syms
        self._index = {sym: k for k, sym in enumerate(syms)}
        self._cap = cap
        self._inst_off = off["inst"]
        self._book_off = off["book"]
        self._tq_off = off["tq"]
        self._cnt = A[off["cnt"]:off["cnt"] + K.N_CNT]
        # the handler's record array is the kernel's out area: one buffer, no copy
        self.out = A[off["out"]:off["out"] + 8 * outcap].view(MARKET_DTYPE)
        self._buf = memoryview(self.out).cast("B")

    # ---- stats and books as the exact path and outside readers see them -----------------
    @property
    def stats(self) -> FeedStats:
        if self._unfolded:
            self._fold()
        return self._stats

    @stats.setter
    def stats(self, value: FeedStats) -> None:
        self._stats = value

    def _fold(self) -> None:
        self._unfolded = False
        c = self._cnt
        st = self._stats
        for i, name in enumerate(K.CNT_FIELDS):
            v = int(c[i])
            if v:
                setattr(st, name, getattr(st, name) + v)
                c[i] = 0

    @property
    def books(self) -> dict:
        t = self._target
        if self._n_fast and t != NO_DEMOTION:
            if t >= 0:
                self._demote(t)
            else:
                for k in range(len(self._syms)):
                    self._demote(k)
        return self._books

    @books.setter
    def books(self, value: dict) -> None:
        self._books = value

    def fast_frames(self) -> int:
        """Frames handled entirely by the kernel (diagnostics, benchmarks)."""
        return int(self._cnt[K.C_FAST])

    # ---- input ---------------------------------------------------------------------------
    def feed(self, frame, recv_ts_ns: int) -> int:
        tf = type(frame)
        if tf is str:
            try:
                b = frame.encode()
            except UnicodeEncodeError:
                return self._slow(frame, recv_ts_ns, -1)
        elif tf is bytes:
            b = frame
        else:
            return self._slow(frame, recv_ts_ns, -1)
        if type(recv_ts_ns) is not int:
            return self._slow(frame, recv_ts_ns, -1)
        try:
            r = K.feed_kernel(b, self._arena, recv_ts_ns)
        except OverflowError:                      # a receive time beyond int64
            return self._slow(frame, recv_ts_ns, -1)
        self.last_frame_ns = recv_ts_ns
        if r >= 0:
            self.n = r
            self._unfolded = True
            return r
        return self._declined(b, frame, recv_ts_ns, r)

    def _declined(self, b, frame, recv, r) -> int:
        code = (-r) & 7
        k = ((-r) >> 3) - 1
        if code == K.ADOPT:
            if not self._adopt(k):
                return self._slow(frame, recv, k)
            r = K.feed_kernel(b, self._arena, recv)
            if r >= 0:
                self.n = r
                self._unfolded = True
                return r
            code = (-r) & 7
        if code == K.CROSSED:
            return self._crossed(k, recv)
        return self._slow(frame, recv, k)

    def _slow(self, frame, recv, k) -> int:
        """The exact Python path; ``books`` hands back only instrument k's book (all if -1)."""
        self._target = k
        try:
            return BinanceHandler.feed(self, frame, recv)
        finally:
            self._target = -1

    def feed_rest(self, url: str, frame, recv_ts_ns: int) -> int:
        # a snapshot touches the book of its URL's symbol only: the others stay in the arena
        sym = _query_param(url, "symbol") if type(url) is str else None
        k = self._index.get(sym.upper(), -1) if sym is not None else -1
        self._target = k
        try:
            return BinanceHandler.feed_rest(self, url, frame, recv_ts_ns)
        finally:
            self._target = -1

    def _crossed(self, k, recv) -> int:
        # the kernel applied and counted the diff; finish as BinanceHandler._apply does
        A = self._arena
        n = int(A[K.H_RES_N])
        self.n = n
        self._unfolded = True
        self._demote(k)
        sym = self._syms[k]
        book = self._books[sym]
        if self.check_crossed(book, recv, int(A[K.H_RES_EXCH])):
            self._diffs.pop(sym, None)
        self.stats.records += self.n - n
        return self.n

    def check_stale(self, now_ns: int) -> int:
        # called every stale_check_s: hand back only the books that turn out stale (the
        # others just get their receive time), so the watchdog costs no re-adoption
        if self._n_fast:
            A = self._arena
            conn = self.last_frame_ns if self.stale_by_connection else 0
            for k, sym in enumerate(self._syms):
                I = self._inst_off + k * K.IW
                if A[I + K.I_MODE] == K.MODE_FAST:
                    rx = int(A[I + K.I_LASTRX])
                    self._books[sym].last_rx_ns = rx
                    if now_ns - max(rx, conn) > self.stale_ns:
                        self._demote(k)
        self._target = NO_DEMOTION
        try:
            return BinanceHandler.check_stale(self, now_ns)
        finally:
            self._target = -1

    def on_new_connection(self) -> None:
        self.books                      # noqa: B018 - hands every book back first
        super().on_new_connection()

    def flush_oracle(self) -> None:
        self.books                      # noqa: B018
        super().flush_oracle()

    # ---- mode changes (cold: once per snapshot or exact-path frame) ----------------------
    def _side_slices(self, k: int, side: int):
        cap = self._cap
        base = self._book_off + (k * 4 + 2 * side) * cap
        return base, base + cap

    def _adopt(self, k: int) -> bool:
        """Load the valid Python book of instrument k into the arena; False if it cannot be."""
        sym = self._syms[k]
        book = self._books.get(sym)
        waiting = self._tickers.get(sym) or ()
        if book is None or not book.valid or len(book.bids) > self._cap \
                or len(book.asks) > self._cap or len(waiting) > MAX_PENDING_TICKERS:
            return False
        A = self._arena
        I = self._inst_off + k * K.IW
        for side, bs, count in ((0, book.bids, K.I_NB), (1, book.asks, K.I_NA)):
            kb, qb = self._side_slices(k, side)
            keys = bs.keys
            m = len(keys)
            if m:
                rev = keys[::-1]
                A[kb:kb + m] = np.fromiter(rev, dtype=np.int64, count=m)
                A[kb:kb + m] *= -1            # arena key = -(signed key): best level last
                A[qb:qb + m] = np.fromiter(map(bs.qty.__getitem__, rev), dtype=np.int64,
                                           count=m)
            A[I + count] = m
        A[I + K.I_UID] = book.update_id
        A[I + K.I_FRESH] = 1 if sym in self._fresh else 0
        A[I + K.I_LASTRX] = book.last_rx_ns
        A[I + K.I_DIRTY] = 0
        A[I + K.I_QHEAD] = 0
        A[I + K.I_QCOUNT] = len(waiting)
        tq = self._tq_off + k * MAX_PENDING_TICKERS * 5
        for j, (u, top) in enumerate(waiting):
            A[tq + 5 * j:tq + 5 * j + 5] = (u, *top)
        self._tickers.pop(sym, None)
        self._fresh.discard(sym)
        A[I + K.I_MODE] = K.MODE_FAST
        self._n_fast += 1
        self.adoptions += 1
        return True

    def _demote(self, k: int) -> None:
        """Hand instrument k's book back to the Python ``Book`` (exact again after this)."""
        A = self._arena
        I = self._inst_off + k * K.IW
        if A[I + K.I_MODE] != K.MODE_FAST:
            return
        sym = self._syms[k]
        book = self._books[sym]
        if A[I + K.I_DIRTY]:
            for side, bs, count in ((0, book.bids, K.I_NB), (1, book.asks, K.I_NA)):
                kb, qb = self._side_slices(k, side)
                m = int(A[I + count])
                keys = (-A[kb:kb + m][::-1]).tolist()
                bs.keys = keys
                bs.qty = dict(zip(keys, A[qb:qb + m][::-1].tolist()))
                bs.frag = {}
        book.update_id = int(A[I + K.I_UID])
        book.last_rx_ns = int(A[I + K.I_LASTRX])
        if A[I + K.I_FRESH]:
            self._fresh.add(sym)
        else:
            self._fresh.discard(sym)
        count = int(A[I + K.I_QCOUNT])
        if count:
            tq = self._tq_off + k * MAX_PENDING_TICKERS * 5
            head = int(A[I + K.I_QHEAD])
            q = deque()
            for j in range(count):
                o = tq + 5 * ((head + j) % MAX_PENDING_TICKERS)
                u, bp, bq, ap, aq = A[o:o + 5].tolist()
                q.append((u, (bp, bq, ap, aq)))
            self._tickers[sym] = q
        else:
            self._tickers.pop(sym, None)
        A[I + K.I_MODE] = K.MODE_SLOW
        self._n_fast -= 1
