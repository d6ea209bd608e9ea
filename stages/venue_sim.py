"""Simulated-venue stage: market/sim.py's SimVenue driven by the wall clock. Runs in the
``venue`` process. It plays the config's simulated venues (``kind = "sim"``) only: a live venue
has its own feed stage (stages/feed_live.py) and is never simulated.

Each poll (HOT PATH apart from one Python call per incoming order): take the router's orders
from every ``vorder-<venue>`` ring into the simulator (they reach the matching engine after the
venue's order latency), advance the simulator to the wall clock (background flow at
``sim.event_rate_per_s`` per venue), publish the market records each venue delivered by now to
its ``md-<venue>`` broadcast ring and the execution reports to ``vexec-<venue>``.

The simulator's clock starts at the wall clock (``t0_ns = time.time_ns()``), so the receive
times it stamps are comparable with every other process's clock (tick-to-trade is real).

Every ``SNAPSHOT_EVERY_NS`` each instrument's whole book is published again (SNAP_START ..
SNAP_END): readers that joined late (a restarted strategy starts at the ring's head) or were
lapped get a complete book back within that period.
"""
from __future__ import annotations

import time

import numpy as np
from numba import njit

from common.status import W_X0, W_X1, W_X2
from shm.records import EXEC_DTYPE, INTENT_CANCEL, MARKET_DTYPE, ORDER_DTYPE
from shm.ringops import bcast_publish, spsc_publish
from stages.base import Stage, stack_states

BATCH_MD = 8192
BATCH_EX = 1024
SNAPSHOT_EVERY_NS = 1_000_000_000


@njit(cache=True)
def split_publish_md(md, n, inst_venue, sts, slots, tmp, tmp_i, counts):
    """Publish md[0:n] to the broadcast ring of each record's venue (order kept per venue)."""
    for v in range(sts.shape[0]):
        k = 0
        for j in range(n):
            if inst_venue[md[j].instrument_id] == v:
                tmp[k] = md[j]
                k += 1
        if k > 0:
            bcast_publish(sts[v], slots[v], tmp_i, k)
            counts[v] += k


@njit(cache=True)
def split_publish_ex_mapped(ex, n, venue_row, sts, slots, ex_i, dropped):
    """Reports to the router: ``venue_row[venue_id]`` is the row of the venue's ring in
    ``sts`` (the stage plays a subset of the venues); -1 rows are dropped (counted)."""
    for j in range(n):
        v = np.int64(ex[j].venue_id)
        r = venue_row[v] if 0 <= v < venue_row.shape[0] else np.int64(-1)
        if r < 0 or spsc_publish(sts[r], slots[r], ex_i[j:j + 1], 1) != 1:
            dropped[0] += 1


@njit(cache=True)
def split_publish_ex(ex, n, sts, slots, one_i, ex_i, dropped):
    """Reports to the router, one SPSC ring per venue (venue_id is 1-based)."""
    for j in range(n):
        v = np.int64(ex[j].venue_id) - 1
        if v < 0 or v >= sts.shape[0]:
            v = 0
        if spsc_publish(sts[v], slots[v], ex_i[j:j + 1], 1) != 1:
            dropped[0] += 1


class SimVenueStage(Stage):
    role = "venue"

    def on_start(self, ctx) -> None:
        from market.sim import SimVenue
        from shm.instruments import InstrumentTable

        from stages.topology import sim_venues

        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        table = InstrumentTable.from_config(cfg)
        self.sim_venues = sim_venues(cfg)
        self.venue = SimVenue(cfg, list(table), t0_ns=time.time_ns(), venues=self.sim_venues)
        attach_venue_side(self, inst, self.sim_venues)
        venue_idx = {v: i for i, v in enumerate(self.sim_venues)}
        self.inst_venue = instrument_venue_rows(table, self.sim_venues)
        # venue_id (1-based, config order) -> row of its rings here; live venues: -1
        self.venue_row = np.full(len(cfg.venues) + 1, -1, dtype=np.int64)
        for n, v in enumerate(cfg.venues, 1):
            self.venue_row[n] = venue_idx.get(v.name, -1)
        self.instrument_ids = [i.instrument_id for i in table if i.venue in venue_idx]
        self.md = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.tmp = np.zeros(BATCH_MD + 4096, dtype=MARKET_DTYPE)
        self.tmp_i = self.tmp.view(np.int64).reshape(len(self.tmp), -1)
        self.ex = np.zeros(BATCH_EX, dtype=EXEC_DTYPE)
        self.ex_i = self.ex.view(np.int64).reshape(BATCH_EX, -1)
        self.one_i = self.ex_i[:1]
        self.orders = np.zeros(256, dtype=ORDER_DTYPE)
        self.counts = np.zeros(len(self.sim_venues), dtype=np.int64)
        self.dropped = np.zeros(1, dtype=np.int64)
        self.snap = np.zeros(4096, dtype=MARKET_DTYPE)
        self.next_snapshot = 0
        self._warm_order_path(cfg, table)
        self.poll()

    def _warm_order_path(self, cfg, table) -> None:
        """Compile the order path before RUNNING, on a scratch venue (nothing reaches the
        rings): otherwise the first strategy order compiles it inside poll(), seconds on a cold
        cache, and the supervisor rightly declares the stage silent."""
        from market.sim import SimVenue

        scratch = SimVenue(cfg, list(table), t0_ns=time.time_ns(), venues=self.sim_venues)
        warm = np.zeros(1, dtype=ORDER_DTYPE)
        warm[0]["kind"] = INTENT_CANCEL
        warm[0]["instrument_id"] = self.instrument_ids[0]
        warm[0]["client_order_id"] = 1
        warm[0]["strategy_id"] = 1
        now = time.time_ns()
        scratch.submit(warm[0], now)
        scratch.step_until(now + 1_000_000_000, self.md, self.ex)
        split_publish_ex_mapped(self.ex, 0, self.venue_row, self.out_sts, self.out_slots,
                                self.ex_i, self.dropped)

    def publish_snapshots(self, now_ns: int) -> None:
        from market.matching import engine_snapshot

        for ins in self.instrument_ids:
            k = engine_snapshot(self.venue.eng, ins, self.snap, 0, now_ns)
            self.snap["recv_ts_ns"][:k] = now_ns
            split_publish_md(self.snap, k, self.inst_venue, self.md_sts, self.md_slots,
                             self.tmp, self.tmp_i, self.counts)
            self.records_out += k

    def poll(self) -> int:
        work = 0
        venue = self.venue
        for r in self.in_r:
            n = r.poll(self.orders)
            for j in range(n):
                o = self.orders[j:j + 1]
                venue.submit(o[0], int(o["send_ts_ns"][0]))
            work += n
            self.records_in += n
        now = time.time_ns()
        n_md, n_ex = venue.step_until(now, self.md, self.ex)
        if n_md:
            split_publish_md(self.md, n_md, self.inst_venue, self.md_sts, self.md_slots,
                             self.tmp, self.tmp_i, self.counts)
        if n_ex:
            split_publish_ex_mapped(self.ex, n_ex, self.venue_row, self.out_sts,
                                    self.out_slots, self.ex_i, self.dropped)
        if now >= self.next_snapshot:
            self.next_snapshot = now + SNAPSHOT_EVERY_NS
            self.publish_snapshots(now)
        self.records_out += n_md + n_ex
        return work + n_md + n_ex

    def fill_status(self, values) -> None:
        c = self.venue.counters()
        self.ring_lag = sum(r.pending() for r in self.in_r)
        self.errors = int(self.dropped[0]) + c["md_dropped"]
        super().fill_status(values)
        values[W_X0] = c["events"]
        values[W_X1] = max(0, time.time_ns() - venue_now(self.venue))   # sim behind wall clock
        values[W_X2] = c["strategy_orders"]

    def drain(self) -> None:
        for _ in range(50):
            if self.poll() == 0:
                break

    def on_stop(self) -> None:
        for r in self._rings:
            r.close()


def answer_without_market(o, e, now: int, ack_cancels: bool) -> None:
    """Answer the orders ``o`` (ORDER_DTYPE) into ``e`` (EXEC_DTYPE, same length) for a venue
    stage with no market behind it (a replay without matching, a sim-time session that has
    ended): every order EXEC_REJECT with REJECT_VENUE_DOWN; with ``ack_cancels`` a cancel is
    acknowledged instead (the order is gone with the session) and a replace refused
    (EXEC_CANCEL_REJECT). Cold (numpy over the batch)."""
    from shm.records import (EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_REJECT, INTENT_NEW,
                             REJECT_VENUE_DOWN)

    e[:] = 0
    for f in ("side", "instrument_id", "client_order_id", "px_ticks", "qty_lots",
              "cause_recv_ts_ns", "strategy_id", "venue_id"):
        e[f] = o[f]
    e["order_px_ticks"] = o["px_ticks"]
    cancel = (o["kind"] == INTENT_CANCEL) & ack_cancels
    refused = EXEC_CANCEL_REJECT if ack_cancels else EXEC_REJECT
    e["kind"] = np.where(cancel, EXEC_CANCEL_ACK,
                         np.where(o["kind"] == INTENT_NEW, EXEC_REJECT, refused))
    e["reject_code"] = np.where(cancel, 0, REJECT_VENUE_DOWN)
    e["venue_ts_ns"] = now
    e["send_ts_ns"] = now


def instrument_venue_rows(table, venues) -> np.ndarray:
    """int64[max instrument id + 1]: the row in ``venues`` (the order of the stage's rings) of
    each instrument's venue, -1 for an instrument on no venue of this stage (split_publish_md
    publishes its records nowhere)."""
    row = {v: i for i, v in enumerate(venues)}
    out = np.full(len(table) + 1, -1, dtype=np.int64)
    for i in table:
        out[i.instrument_id] = row.get(i.venue, -1)
    return out


def attach_venue_side(stage, inst: str, venues) -> None:
    """The venue side of every venue's rings, for the stage that plays the venues (the
    simulator or a recording's replay): writer of ``md-<v>``, reader of ``vorder-<v>``, writer
    of ``vexec-<v>``. Sets ``_rings`` (closed by on_stop), ``md_w``, ``in_r``, ``out_w`` and the
    stacked states ``md_sts`` / ``out_sts`` with their slots for the @njit kernels. Each ring
    joins ``_rings`` as soon as it is attached, so a failure halfway leaves nothing open."""
    from shm.ring import BroadcastRing, SpscRing

    stage._rings = []
    md_rings = [BroadcastRing.attach(inst, f"md-{v}", MARKET_DTYPE) for v in venues]
    stage._rings += md_rings
    in_rings = [SpscRing.attach(inst, f"vorder-{v}", ORDER_DTYPE) for v in venues]
    stage._rings += in_rings
    out_rings = [SpscRing.attach(inst, f"vexec-{v}", EXEC_DTYPE) for v in venues]
    stage._rings += out_rings
    stage.md_w = [r.writer() for r in md_rings]
    stage.in_r = [r.reader() for r in in_rings]
    stage.out_w = [r.writer() for r in out_rings]
    stage.md_sts, stage.md_slots = stack_states(stage.md_w), tuple(w.slots for w in stage.md_w)
    stage.out_sts, stage.out_slots = (stack_states(stage.out_w),
                                      tuple(w.slots for w in stage.out_w))


def venue_now(venue) -> int:
    return venue.now_ns
