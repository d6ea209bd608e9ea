"""Order-router stage: approved orders to the venues with per-venue rate limits; execution
reports fanned out to the strategy, the risk gate and the journal; every order tracked to a
final state. Runs in the ``order_router`` process.

``poll`` is one call of ``router_step`` (@njit, HOT PATH) over whole batches. Control records
(cold): CTRL_KILL halts (new orders rejected with REJECT_HALTED) and cancels every open order at
the venues (a kill with flatten is the risk gate's: its market orders arrive as approved orders
flagged OFLAG_RISK_SYSTEM, which a halted router still forwards); CTRL_CANCEL_ALL cancels one
strategy's orders (arg0 = strategy id, 0 = all); CTRL_RESUME lifts the halt; CTRL_RECONCILE
(a venue process restarted with empty books; arg0 = a mask of its venue ids, bit v for venue v,
0 for all) closes every open order at those venues with a CANCEL_ACK.

After a crash the controller restarts the router with ``--reconcile``: it starts HALTED,
rebuilds the venue-reported positions from the journal, asks every venue to cancel all of our
orders (INTENT_CANCEL_ALL), and waits for the controller's CTRL_RESUME.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from common.status import W_X0, W_X1, W_X2, W_X3
from shm.records import (CTRL_CANCEL_ALL, CTRL_KILL, CTRL_RECONCILE, CTRL_RESUME, EXEC_DTYPE, INTENT_CANCEL_ALL,
                         OFLAG_RISK_SYSTEM, ORDER_DTYPE)
from shm.ringops import ST_SIZE
from stages import router_kernels as rk
from stages.base import Stage, stack_states
from stages.riskview import R_FILLS, R_HALTED, R_OPEN, R_RATE_REJECTS, R_SEQ, R_SENT

BATCH = 512


class OrderRouterStage(Stage):
    role = "order_router"

    def on_start(self, ctx) -> None:
        self._ppid = os.getppid()   # the controller (drain: has it died?)
        from shm.histogram import LatencyHistogram
        from shm.ring import SpscRing
        from stages.clock import make_clock
        from stages.riskview import RiskView
        from stages.topology import HIST_ROUTER, HIST_T2T, HIST_VENUE_ACK

        self.ctx = ctx
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        self._rings = []

        def att(name, dt):
            r = SpscRing.attach(inst, name, dt)
            self._rings.append(r)
            return r

        self.appr = att("approved", ORDER_DTYPE).reader()
        self.ven_in = [att(f"vexec-{v}", EXEC_DTYPE).reader() for v in topo.venues]
        self.ven_out = [att(f"vorder-{v}", ORDER_DTYPE).writer() for v in topo.venues]
        strats = topo.strategies()
        self.strat_out = [att(f"exec-{s.process}", EXEC_DTYPE).writer() for s in strats]
        self.gate_out = att("exec-gate", EXEC_DTYPE).writer()
        self.has_journal = topo.journal
        self.j_out = att("jexec", EXEC_DTYPE).writer() if topo.journal else self.gate_out

        self.ven_in_sts = stack_states(self.ven_in)
        self.ven_out_sts = stack_states(self.ven_out)
        self.strat_sts = stack_states(self.strat_out) if strats else np.zeros((0, ST_SIZE), np.int64)
        self.ven_in_slots = tuple(r.slots for r in self.ven_in)
        self.ven_out_slots = tuple(w.slots for w in self.ven_out)
        self.strat_slots = tuple(w.slots for w in self.strat_out) if strats else \
            (np.zeros((1, 16), np.int64),)

        self.rv = RiskView.attach(inst)
        self.hists = [LatencyHistogram.attach(inst, h[0]) for h in (HIST_ROUTER, HIST_T2T,
                                                                   HIST_VENUE_ACK)]
        self.clock = make_clock(ctx)
        n_strat = len(strats)
        self.tab = np.zeros((n_strat + 1, rk.TAB_ROWS, rk.T_WORDS), dtype=np.int64)
        self.ctl = np.zeros(rk.CTL_WORDS, dtype=np.int64)
        self.ctl[rk.C_SEQ] = time.time_ns()
        self.tokens = np.zeros((len(topo.venues), 3), dtype=np.float64)
        now = self.clock.now_ns()
        for i, vname in enumerate(topo.venues):
            rate = float(cfg.venue(vname).rate_limit_per_s)
            self.tokens[i] = (rate, now, rate)
        self.abuf = np.zeros(BATCH, dtype=ORDER_DTYPE)
        self.ebuf = np.zeros(BATCH, dtype=EXEC_DTYPE)
        self.one = np.zeros(1, dtype=EXEC_DTYPE)
        self.obuf = np.zeros(1, dtype=ORDER_DTYPE)
        self.abuf_i = self.abuf.view(np.int64).reshape(BATCH, -1)
        self.ebuf_i = self.ebuf.view(np.int64).reshape(BATCH, -1)
        self.one_i = self.one.view(np.int64).reshape(1, -1)
        self.obuf_i = self.obuf.view(np.int64).reshape(1, -1)

        self.rv.router_pos[:] = 0
        self.rv.router_open[:] = 0
        if ctx.extra.get("reconcile") or ctx.restarts:
            self.ctl[rk.C_HALTED] = 1
            self._rebuild_from_journal()
            self._venue_cancel_all()
        self.poll()  # compile (or load from cache) before reporting RUNNING
        # the control-path kernels too: a first-time compile inside a kill switch would
        # silence the router for seconds exactly when it must act (matches no order: sid -1)
        rk.router_cancel_all(self.tab, -1, self.ven_out_sts, self.ven_out_slots, self.obuf,
                             self.obuf_i, self.clock.cal)
        rk.router_forget_venue_orders(
            self.ctl, self.tab[:0], self.rv.router_open, self.clock.cal, self.obuf, self.one,
            self.one_i, self.strat_sts, self.strat_slots, self.gate_out.st, self.gate_out.slots,
            self.j_out.st, self.j_out.slots, self.has_journal, np.int64(0))

    def _rebuild_from_journal(self) -> None:
        from stages.journal import read_journal_exec

        ex = read_journal_exec(self.ctx.run_dir / "journal")
        pos = self.rv.router_pos
        from shm.records import EXEC_FILL, EXEC_PARTIAL, SIDE_BUY
        for e in ex:
            if e["kind"] in (EXEC_FILL, EXEC_PARTIAL):
                sid, inst = int(e["strategy_id"]), int(e["instrument_id"])
                if 0 < sid < pos.shape[0] and 0 < inst < pos.shape[1]:
                    pos[sid, inst] += int(e["qty_lots"]) * (1 if e["side"] == SIDE_BUY else -1)
        if len(ex):
            self.ctl[rk.C_SEQ] = max(self.ctl[rk.C_SEQ], int(ex["reserved"].max()) + 1)

    def _venue_cancel_all(self) -> None:
        # we lost our order table: ask each venue to cancel every order of every strategy
        for i, w in enumerate(self.ven_out):
            for sid in range(1, self.tab.shape[0]):
                o = self.obuf
                o[:] = 0
                o["kind"] = INTENT_CANCEL_ALL
                o["flags"] = OFLAG_RISK_SYSTEM
                o["strategy_id"] = sid
                o["venue_id"] = i + 1
                o["send_ts_ns"] = self.clock.now_ns()
                w.publish(o)

    def poll(self) -> int:
        h = self.hists
        return rk.router_step(
            self.ctl, self.clock.cal, self.tab, self.rv.router_pos, self.rv.router_open,
            self.tokens, self.appr.st, self.appr.slots, self.abuf, self.abuf_i,
            self.ven_in_sts, self.ven_in_slots, self.ven_out_sts, self.ven_out_slots,
            self.ebuf, self.ebuf_i, self.strat_sts, self.strat_slots, self.gate_out.st,
            self.gate_out.slots, self.j_out.st, self.j_out.slots, self.has_journal,
            self.one, self.one_i, h[0].array, h[1].array, h[2].array)

    def on_control(self, kind: int, rec) -> None:
        if kind == CTRL_KILL:
            self.ctl[rk.C_HALTED] = 1
            self._cancel_all(0)
        elif kind == CTRL_CANCEL_ALL:
            self._cancel_all(int(rec["arg0"]))
        elif kind == CTRL_RESUME:
            self.ctl[rk.C_HALTED] = 0
        elif kind == CTRL_RECONCILE:   # a venue process died: our orders there are gone
            # arg0: the venues it ran (bit v: venue id v; 0: all). First every report the dead
            # venue still managed to send (a fill it made is a fill), then close what is left
            # there, then make sure its successor never executes an order we just closed: what
            # it had not read of our orders is dropped. Orders at other venues stay open.
            mask = int(rec["arg0"])
            for _ in range(1000):
                if self.poll() == 0:
                    break
            rk.router_forget_venue_orders(
                self.ctl, self.tab, self.rv.router_open, self.clock.cal, self.obuf, self.one,
                self.one_i, self.strat_sts, self.strat_slots, self.gate_out.st,
                self.gate_out.slots, self.j_out.st, self.j_out.slots, self.has_journal,
                np.int64(mask))
            dropped = sum(w.discard_unread() for i, w in enumerate(self.ven_out)
                          if mask == 0 or (mask >> (i + 1)) & 1)
            if dropped:
                print(f"order_router: venue restart: {dropped} order record(s) it never read "
                      "were closed as cancelled and dropped", file=sys.stderr, flush=True)

    def _cancel_all(self, sid: int) -> int:
        return rk.router_cancel_all(self.tab, sid, self.ven_out_sts, self.ven_out_slots,
                                    self.obuf, self.obuf_i, self.clock.cal)

    def drain(self) -> None:
        """Stopping (SIGTERM: a graceful stop, or the controller died): no new order goes out,
        every open one is cancelled at its venue, and their reports are awaited up to 1 s."""
        self.ctl[rk.C_HALTED] = 1
        if self.ctl[rk.C_OPEN] > 0:
            self._cancel_all(0)
        # the controller died (we were re-parented): every stage is stopping at once, the
        # simulated venues too, so their answers come now or never
        orphaned = os.getppid() != self._ppid
        deadline = time.monotonic() + (0.2 if orphaned else 1.0)
        while time.monotonic() < deadline:
            if self.poll() == 0 and self.ctl[rk.C_OPEN] <= 0:
                break
            time.sleep(0.0005)

    lockstep_free_after_done = True

    def lockstep_pending(self) -> int:
        return self.appr.pending() + sum(r.pending() for r in self.ven_in)

    def fill_status(self, values) -> None:
        self.clock.recalibrate()
        c = self.ctl
        self.records_in, self.records_out = int(c[rk.C_IN]), int(c[rk.C_OUT])
        self.ring_lag = self.appr.pending() + sum(r.pending() for r in self.ven_in)
        r = self.rv.router
        r[R_HALTED], r[R_OPEN], r[R_SENT] = c[rk.C_HALTED], c[rk.C_OPEN], c[rk.C_SENT]
        r[R_FILLS], r[R_SEQ], r[R_RATE_REJECTS] = c[rk.C_FILLS], c[rk.C_SEQ], c[rk.C_RATE_REJ]
        super().fill_status(values)
        values[W_X0], values[W_X1] = c[rk.C_HALTED], c[rk.C_OPEN]
        values[W_X2], values[W_X3] = c[rk.C_DROP_STRAT], c[rk.C_DROP_GATE]

    def on_stop(self) -> None:
        for h in self.hists:
            h.close()
        self.rv.close()
        for r in self._rings:
            r.close()

