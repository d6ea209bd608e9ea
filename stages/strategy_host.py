"""Strategy-host stage: one process per [[strategies]] entry. Runs in ``strategy-<name>``.

``poll`` is one call of ``host_step`` (HOT PATH, @njit, generated per strategy kind so that
numba can cache it: stages/host_codegen.py): poll the market-data broadcast rings of
the strategy's venues into one batch (recording md receive -> strategy read latency), poll the
execution reports (router) and denials (risk gate), apply the batch to the books and run the
strategy's kernel (as ``strategies.host.run_strategy_batch`` does in the backtest), stamp and publish the
intents to the gate. A timer tick (a kernel call with no input) runs every ``TIMER_NS``.

Push-back: if the intent ring is full (the gate is down or slow), the intents that did not fit
are answered to the kernel on the next batch as EXEC_REJECT / EXEC_CANCEL_REJECT with
REJECT_HALTED, so the strategy's own order table stays true without any waiting.

A lapped market-data reader (records lost) clears the books of that venue's instruments; they
become valid again with the venue's next periodic snapshot.
"""
from __future__ import annotations

import time

import numpy as np

from shm.records import EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from stages.base import Stage, stack_states
from stages.host_codegen import host_step_for

BATCH_MD = 2048
BATCH_EX = 256
MAX_INTENTS = 256
TIMER_NS = 1_000_000

# hctl words (the generated host_step uses the same indices)
H_NEXT_TIMER, H_FB_N, H_MD_IN, H_EX_IN, H_OUT, H_PUSHBACK, H_CALLS = 0, 1, 2, 3, 4, 5, 6


class StrategyHostStage(Stage):
    role = "strategy"

    def on_start(self, ctx) -> None:
        from market.book import L2Book
        from shm.histogram import LatencyHistogram
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing
        from stages.clock import TscClock
        from strategies.registry import make_strategy

        spec = ctx.extra["spec"]
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        sc = spec.strategy
        table = InstrumentTable.from_config(cfg)
        instruments = [table.by_key(k) for k in sc.instruments]
        self.strategy = make_strategy(sc.kind, sc.params, instruments, spec.strategy_id)
        self.host_step = host_step_for(sc.kind, TIMER_NS)
        self.state = self.strategy.make_state()
        # client order ids must stay unique across restarts of this strategy: every
        # incarnation counts from its own block of 2**36 ids
        from strategies.base import CTL_NEXT_COID

        self.state[0][CTL_NEXT_COID] = (ctx.restarts << 36) | 1
        self.book = L2Book(len(table), 64)
        self.px, self.qty, self.meta = self.book.arrays
        self._rings = []
        venues = sorted({i.venue for i in instruments}, key=topo.venues.index)
        self.md_r = []
        self.venue_insts = []
        for v in venues:
            ring = BroadcastRing.attach(inst, f"md-{v}", MARKET_DTYPE)
            self._rings.append(ring)
            self.md_r.append(ring.reader(topo.md_readers[v][spec.name]))
            self.venue_insts.append([i.instrument_id for i in table if i.venue == v])
        ex_rings = [SpscRing.attach(inst, f"exec-{sc.name}", EXEC_DTYPE),
                    SpscRing.attach(inst, f"reject-{sc.name}", EXEC_DTYPE)]
        intent_ring = SpscRing.attach(inst, f"intent-{sc.name}", ORDER_DTYPE)
        self._rings += ex_rings + [intent_ring]
        self.ex_r = [r.reader() for r in ex_rings]
        self.intent_w = intent_ring.writer()
        self.md_sts, self.md_slots = stack_states(self.md_r), tuple(r.slots for r in self.md_r)
        self.ex_sts, self.ex_slots = stack_states(self.ex_r), tuple(r.slots for r in self.ex_r)
        self.md = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.md_i = self.md.view(np.int64).reshape(BATCH_MD, -1)
        self.ex = np.zeros(BATCH_EX + MAX_INTENTS, dtype=EXEC_DTYPE)
        self.ex_i = self.ex.view(np.int64).reshape(len(self.ex), -1)
        self.fb = np.zeros(MAX_INTENTS, dtype=EXEC_DTYPE)
        self.out = np.zeros(MAX_INTENTS, dtype=ORDER_DTYPE)
        self.out_i = self.out.view(np.int64).reshape(MAX_INTENTS, -1)
        self.hctl = np.zeros(8, dtype=np.int64)
        self.hist = LatencyHistogram.attach(inst, f"md_to_{spec.name}")
        self.clock = TscClock()
        self.book_clears = 0
        lost_before = [r.lost for r in self.md_r]
        self.poll()  # compile the kernel specialisation before reporting RUNNING
        from market.book import book_clear

        for r, lost in zip(self.md_r, lost_before):
            r.rejoin_live(lost)
        for ins in range(1, len(table) + 1):   # what the warm-up saw may be half a book
            book_clear(self.px, self.qty, self.meta, ins)
        self.lost_seen = [r.lost for r in self.md_r]

    def poll(self) -> int:
        return self.host_step(self.state, self.px, self.qty, self.meta, self.hctl,
                         self.clock.cal, self.md_sts, self.md_slots, self.md, self.md_i,
                         self.ex_sts, self.ex_slots, self.ex, self.ex_i, self.fb, self.out,
                         self.out_i, self.intent_w.st, self.intent_w.slots, self.hist.array)

    def check_lapped(self) -> None:
        from market.book import book_clear

        for i, r in enumerate(self.md_r):
            lost = r.lost
            if lost != self.lost_seen[i]:
                self.lost_seen[i] = lost
                self.book_clears += 1
                for ins in self.venue_insts[i]:
                    book_clear(self.px, self.qty, self.meta, ins)

    def fill_status(self, values) -> None:
        from pipeline.status import W_X0, W_X1, W_X2

        self.clock.recalibrate()
        self.check_lapped()
        h = self.hctl
        self.records_in = int(h[H_MD_IN] + h[H_EX_IN])
        self.records_out = int(h[H_OUT])
        self.records_lost = sum(r.lost for r in self.md_r)
        self.ring_lag = sum(r.pending() for r in self.md_r) + sum(r.pending() for r in self.ex_r)
        super().fill_status(values)
        values[W_X0] = h[H_PUSHBACK]
        values[W_X1] = self.book_clears
        values[W_X2] = h[H_CALLS]

    def drain(self) -> None:
        pass  # a stopping strategy sends nothing more; the router cancels its orders

    def on_stop(self) -> None:
        self.hist.close()
        for r in self._rings:
            r.close()
        time.sleep(0)
