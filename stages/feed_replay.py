"""Replay-feed stage: a market-data record file (market/recordfile.py format: a journal's
``md-*.rec``, a converted LOBSTER or venue recording) published to the ``md-<venue>`` rings at
the recorded pace (``--replay-speed 1``), faster or slower (any factor), or as fast as the
readers allow (``--replay-speed 0``: a batch goes out only when every reader of its ring has
room for it, so nobody is lapped). Runs in the ``venue`` process instead of the simulator
(``run.py run|start --replay FILE``).

Instruments are matched by SYMBOL@VENUE between the file's header and the config; records of
instruments the config does not name are skipped (counted). Each published record gets
``recv_ts_ns`` = now (so latency is measured from publication) and MFLAG_REPLAY; the original
receive time stays in ``exch_ts_ns`` when the file had none. There is no matching engine behind a
replay: orders the router sends are answered with EXEC_REJECT / REJECT_VENUE_DOWN.

The clock starts when every stage that reads an md ring reports RUNNING in the status table
(they start after the venue stage, and a strategy's warm-up poll is followed by a jump to the
live head and a cleared book: anything published before that, the file's opening snapshot
included, would be lost to them), or after READERS_WAIT_S at the latest.

Memory stays bounded: the file is memory-mapped and read one batch at a time. The pacing index
is computed once (cold) from the file's receive (or exchange) times.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from common.status import ST_RUNNING, W_STATE, W_X0, W_X1
from shm.records import EXEC_DTYPE, MARKET_DTYPE, MFLAG_REPLAY, ORDER_DTYPE
from shm.status import StatusTable
from stages.base import Stage
from stages.venue_sim import (answer_without_market, attach_venue_side,
                               instrument_venue_rows, split_publish_md)

BATCH = 4096
READERS_WAIT_S = 120.0  # start anyway after this long without every reader (and say so)


class FeedReplayStage(Stage):
    role = "venue"

    def on_start(self, ctx) -> None:
        from market.recordfile import instruments_from_header, open_record_file
        from shm.instruments import InstrumentTable

        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        path = ctx.extra["replay"]
        self.speed = float(ctx.extra.get("replay_speed", 1.0))
        header, self.recs = open_record_file(path, MARKET_DTYPE)
        table = InstrumentTable.from_config(cfg)
        self.remap = np.zeros(max([i.instrument_id for i in instruments_from_header(header)]
                                  + [0]) + 1, dtype=np.int64)
        for fi in instruments_from_header(header):
            try:
                self.remap[fi.instrument_id] = table.by_key(fi.key).instrument_id
            except KeyError:
                pass   # not traded by this config: its records are skipped
        if not self.remap.any():
            raise ValueError(f"{path}: none of its instruments is in the config "
                             f"({', '.join(i.key for i in instruments_from_header(header))})")
        ts = self.recs["recv_ts_ns"] if len(self.recs) and self.recs["recv_ts_ns"].any() \
            else self.recs["exch_ts_ns"]
        self.rel_ns = (ts - ts[0]).astype(np.int64) if len(ts) else np.zeros(0, np.int64)
        attach_venue_side(self, inst, topo.venues)
        self.inst_venue = instrument_venue_rows(table, topo.venues)
        self.buf = np.zeros(BATCH, dtype=MARKET_DTYPE)
        self.tmp = np.zeros(BATCH, dtype=MARKET_DTYPE)
        self.tmp_i = self.tmp.view(np.int64).reshape(BATCH, -1)
        self.counts = np.zeros(len(topo.venues), dtype=np.int64)
        self.orders = np.zeros(64, dtype=ORDER_DTYPE)
        self.rej = np.zeros(64, dtype=EXEC_DTYPE)
        self.pos = 0
        self.skipped = 0
        # at most half a ring per batch, so a speed-0 batch always fits behind the slowest
        self.batch = min(BATCH, min(w.ring.capacity for w in self.md_w) // 2)
        self.start_ns = 0                   # set once every md reader is RUNNING
        self.wait_until = time.monotonic() + READERS_WAIT_S
        self._status = StatusTable.attach(inst)
        slot_of = {s.name: s.slot for s in topo.stages}
        self._reader_slots = sorted({slot_of[name] for v in topo.venues
                                     for name in topo.md_readers[v] if name in slot_of})
        split_publish_md(self.buf, 0, self.inst_venue, self.md_sts, self.md_slots, self.tmp,
                         self.tmp_i, self.counts)   # compile before RUNNING

    def _readers_running(self) -> bool:
        return all(self._status.read_word(slot, W_STATE) == ST_RUNNING
                   for slot in self._reader_slots)

    def _room_for_a_batch(self) -> bool:
        """Speed 0: every reader of every md ring has room for one more batch."""
        for w in self.md_w:
            ring = w.ring
            slowest = min(ring.reader_cursor(i) for i in range(ring.n_readers))
            if w.position - slowest > ring.capacity - self.batch:
                return False
        return True

    def poll(self) -> int:
        work = self._answer_orders()
        n_total = len(self.recs)
        if self.pos >= n_total:
            return work
        if self.start_ns == 0:
            if not self._readers_running():
                if time.monotonic() < self.wait_until:
                    return work
                print(f"replay: not every md reader RUNNING within {READERS_WAIT_S:.0f} s; "
                      f"starting anyway", file=sys.stderr, flush=True)
            self.start_ns = time.monotonic_ns()
        end = min(self.pos + self.batch, n_total)
        if self.speed == 0 and not self._room_for_a_batch():
            return work
        if self.speed > 0:
            due = int((time.monotonic_ns() - self.start_ns) * self.speed)
            end = min(end, int(np.searchsorted(self.rel_ns, due, side="right")))
            if end <= self.pos:
                return work
        chunk = self.recs[self.pos:end]
        n = end - self.pos
        buf = self.buf[:n]
        buf[:] = chunk
        ids = buf["instrument_id"].astype(np.int64)
        ids[ids >= len(self.remap)] = 0
        buf["instrument_id"] = self.remap[ids]
        keep = buf["instrument_id"] != 0
        kept = int(keep.sum())
        self.skipped += n - kept
        if kept != n:
            buf[:kept] = buf[keep]
        no_exch = buf["exch_ts_ns"][:kept] == 0
        buf["exch_ts_ns"][:kept][no_exch] = buf["recv_ts_ns"][:kept][no_exch]
        buf["recv_ts_ns"][:kept] = time.time_ns()
        buf["flags"][:kept] |= MFLAG_REPLAY
        buf["ring_seq"][:kept] = 0
        split_publish_md(self.buf, kept, self.inst_venue, self.md_sts, self.md_slots, self.tmp,
                         self.tmp_i, self.counts)
        self.pos = end
        self.records_in += n
        self.records_out += kept
        return work + n

    def _answer_orders(self) -> int:
        work = 0
        for i, r in enumerate(self.in_r):
            n = r.poll(self.orders)
            if not n:
                continue
            work += n
            e = self.rej[:n]
            answer_without_market(self.orders[:n], e, time.time_ns(), ack_cancels=False)
            self.out_w[i].publish(e)
        return work

    def fill_status(self, values) -> None:
        super().fill_status(values)
        values[W_X0] = self.pos
        values[W_X1] = self.skipped

    def on_stop(self) -> None:
        self.recs = None
        if getattr(self, "_status", None) is not None:
            self._status.close()
            self._status = None
        for r in self._rings:
            r.close()
