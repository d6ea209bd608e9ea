"""Signal-agent stage: one process per ``[[signals]]`` entry, ``signal-<name>``.

``poll`` is one call of ``agent_poll`` (HOT PATH, @njit): the market-data broadcast rings of the
agent's venues into its books, ``strategies.signals.agent_step`` (features from the shared
library, sampled and published on the agent's timers), and the records of a publish onto the
agent's broadcast ring ``sig-<name>`` (one writer, every subscribed strategy process a reader;
the writer never waits). Everything else here is cold.

A signal agent restarts like a strategy (the controller restarts it at once, with backoff when
it keeps failing). It keeps no state worth restoring: a restarted agent warms its windows up
again and publishes invalid values until they mean something. Meanwhile its subscribers'
cells age past ``stale_ms`` and read as missing (strategies/base.py ``signal_value``).

A lapped market-data reader clears the books of that venue's instruments, as the strategy host
does; they are valid again with the venue's next periodic snapshot.

Status words: x0 signal records published, x1 book clears, x2 wall time (ns) of the last
publish, x3 sampling rounds.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from common.status import W_X0, W_X1, W_X2, W_X3
from market.book import book_apply_batch
from shm.ringops import bcast_poll, bcast_publish
from stages.base import Stage, stack_states
from stages.clock import clock_now_ns
from strategies.signals import AGENT_BOOK_LEVELS, agent_step

BATCH_MD = 2048


@njit(cache=True)
def agent_poll(a, px, qty, meta, md_sts, md, md_i, cal, sg_st, out_i):
    """Market records in, the agent's step, its records out (HOT PATH). Returns records read
    plus records published (0: nothing to do, the idle strategy may idle)."""
    now = clock_now_ns(cal)
    n_md = 0
    for r in range(md_sts.shape[0]):
        n_md += bcast_poll(md_sts[r], md_i, md_i[n_md:], md.shape[0] - n_md)
    if n_md > 0:
        book_apply_batch(px, qty, meta, md, n_md)
    k = agent_step(a, px, qty, meta, md, n_md, now)
    if k > 0:
        bcast_publish(sg_st, out_i, out_i, k)
    return n_md + k


class SignalAgentStage(Stage):
    role = "signal"

    def on_start(self, ctx) -> None:
        from market.book import L2Book
        from shm.instruments import InstrumentTable
        from shm.records import MARKET_DTYPE, SIGNAL_DTYPE
        from shm.ring import BroadcastRing
        from stages.clock import make_clock
        from strategies.signals import make_agent

        spec = ctx.extra["spec"]
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        sc = spec.signal
        table = InstrumentTable.from_config(cfg)
        instruments = [table.by_key(k) for k in sc.instruments]
        self.agent = make_agent(sc.kind, [i.instrument_id for i in instruments], sc.window,
                                sc.sample_ms, sc.publish_ms)
        self.book = L2Book(len(table), AGENT_BOOK_LEVELS)
        self.px, self.qty, self.meta = self.book.arrays
        self._rings = []
        self.md_r = []
        self.venue_insts = []
        venues = sorted({i.venue for i in instruments}, key=topo.venues.index)
        for v in venues:
            ring = BroadcastRing.attach(inst, f"md-{v}", MARKET_DTYPE)
            self._rings.append(ring)
            self.md_r.append(ring.reader(topo.md_readers[v][spec.name]))
            self.venue_insts.append([i.instrument_id for i in table if i.venue == v])
        self.md_sts = stack_states(self.md_r)
        sig_ring = BroadcastRing.attach(inst, f"sig-{sc.name}", SIGNAL_DTYPE)
        self._rings.append(sig_ring)
        self.sig_w = sig_ring.writer()
        self.md = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.md_i = self.md.view(np.int64).reshape(BATCH_MD, -1)
        self.out_i = self.agent.out.view(np.int64).reshape(len(self.agent.out), -1)
        self.clock = make_clock(ctx)
        self.book_clears = 0
        self.lost_seen = [r.lost for r in self.md_r]
        self.poll()   # compile (or load) the kernel before reporting RUNNING

    def poll(self) -> int:
        return agent_poll(self.agent, self.px, self.qty, self.meta, self.md_sts, self.md,
                          self.md_i, self.clock.cal, self.sig_w.st, self.out_i)

    def check_lapped(self) -> None:
        from market.book import book_clear

        for i, r in enumerate(self.md_r):
            if r.lost != self.lost_seen[i]:
                self.lost_seen[i] = r.lost
                self.book_clears += 1
                for ins in self.venue_insts[i]:
                    book_clear(self.px, self.qty, self.meta, ins)

    def fill_status(self, values) -> None:
        self.clock.recalibrate()
        self.check_lapped()
        c = self.agent.ctl[0]
        self.records_out = int(c["seq"])
        self.records_lost = sum(r.lost for r in self.md_r)
        self.ring_lag = sum(r.pending() for r in self.md_r)
        super().fill_status(values)
        values[W_X0] = int(c["seq"])
        values[W_X1] = self.book_clears
        values[W_X2] = int(c["last_publish_ns"])
        values[W_X3] = int(c["samples"])

    def drain(self) -> None:
        pass   # nothing to finish: the subscribers see the last values age out

    def on_stop(self) -> None:
        for r in self._rings:
            r.close()
        time.sleep(0)
