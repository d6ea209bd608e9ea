"""Risk-gate stage: the pre-trade checks of market/risk.py on every intent. Runs in the
``risk_gate`` process.

``poll`` is one ``gate_step`` call (HOT PATH, see stages/gate_kernels.py). States: ACTIVE,
REDUCING (only exposure-reducing orders pass), HALTED, as ``market.risk.risk_mode`` derives them
from the kill switch, the operator mode and the loss / drawdown limits (checked on every fill
and every mark). Control (cold): CTRL_KILL sets the kill switch (every new order denied with
REJECT_KILL_SWITCH), CTRL_RESUME clears it.

After a crash the controller flushes the journal and restarts the gate with ``--reconcile``:
it starts with the kill switch set, replays the journal (approved intents and execution reports
in time order) to rebuild positions, PnL and open orders, remembers the last router sequence
number it applied, and reports G_READY; the controller resumes trading once these positions
equal the venue-reported ones.
"""
from __future__ import annotations

import numpy as np

from shm.records import CTRL_KILL, CTRL_RESUME, EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE, RISK_ACTIVE
from stages import gate_kernels as gk
from stages.base import Stage, stack_states
from stages.riskview import (G_APPROVED, G_FILLS, G_READY, G_REJECTED, G_SEQ, G_STATE,
                             PNL_FEES, PNL_PEAK, PNL_REALIZED, PNL_UNREALIZED)

BATCH_MD = 4096
BATCH = 512


class RiskGateStage(Stage):
    role = "risk_gate"

    def on_start(self, ctx) -> None:
        from market.book import L2Book
        from market.risk import build_limits, make_risk_state, set_kill
        from shm.histogram import LatencyHistogram
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing
        from stages.clock import TscClock
        from stages.riskview import RiskView
        from stages.topology import HIST_GATE

        self.ctx = ctx
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        table = InstrumentTable.from_config(cfg)
        strats = topo.strategies()
        self.limits = build_limits(cfg.risk, table, max_strategies=max(1, len(strats)))
        self.rstate = make_risk_state(self.limits)
        self.book = L2Book(len(table), 64)
        self.touched = np.zeros(len(table) + 1, dtype=np.int64)
        self._rings = []

        def att(cls, name, dt):
            r = cls.attach(inst, name, dt)
            self._rings.append(r)
            return r

        self.md_r = [att(BroadcastRing, f"md-{v}", MARKET_DTYPE).reader(
            topo.md_readers[v]["risk_gate"]) for v in topo.venues]
        self.ex_r = att(SpscRing, "exec-gate", EXEC_DTYPE).reader()
        self.in_r = [att(SpscRing, f"intent-{s.strategy.name}", ORDER_DTYPE).reader()
                     for s in strats]
        self.rej_w = [att(SpscRing, f"reject-{s.strategy.name}", EXEC_DTYPE).writer()
                      for s in strats]
        self.ap_w = att(SpscRing, "approved", ORDER_DTYPE).writer()
        self.has_journal = topo.journal
        self.j_w = att(SpscRing, "jorder", ORDER_DTYPE).writer() if topo.journal else self.ap_w
        self.md_sts, self.md_slots = stack_states(self.md_r), tuple(r.slots for r in self.md_r)
        if strats:
            self.in_sts, self.in_slots = stack_states(self.in_r), tuple(r.slots for r in self.in_r)
            self.rej_sts = stack_states(self.rej_w)
            self.rej_slots = tuple(w.slots for w in self.rej_w)
        else:
            dummy = np.zeros((1, 16), np.int64)
            self.in_sts, self.in_slots = np.zeros((0, 16), np.int64), (dummy,)
            self.rej_sts, self.rej_slots = np.zeros((0, 16), np.int64), (dummy,)
        self.md = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.ex = np.zeros(BATCH, dtype=EXEC_DTYPE)
        self.ibuf = np.zeros(BATCH, dtype=ORDER_DTYPE)
        self.abuf = np.zeros(BATCH, dtype=ORDER_DTYPE)
        self.jbuf = np.zeros(BATCH, dtype=ORDER_DTYPE)
        self.rbuf = np.zeros(BATCH, dtype=EXEC_DTYPE)
        i64 = lambda a: a.view(np.int64).reshape(len(a), -1)  # noqa: E731
        self.md_i, self.ex_i, self.ibuf_i = i64(self.md), i64(self.ex), i64(self.ibuf)
        self.abuf_i, self.jbuf_i, self.rbuf_i = i64(self.abuf), i64(self.jbuf), i64(self.rbuf)
        self.gctl = np.zeros(gk.K_WORDS, dtype=np.int64)
        self.hist = LatencyHistogram.attach(inst, HIST_GATE[0])
        self.clock = TscClock()
        self.rv = RiskView.attach(inst)
        self.rv.gate[G_READY] = 0
        if ctx.extra.get("reconcile") or ctx.restarts:
            set_kill(self.rstate, 1)   # fail closed until the controller says positions match
            self.rebuild_from_journal()
        self.publish_view()
        lost_before = [r.lost for r in self.md_r]
        self.poll()   # compile / load kernels, then join the market data live
        for r, lost in zip(self.md_r, lost_before):
            r.rejoin_live(lost)
        self.rv.gate[G_READY] = 1

    def rebuild_from_journal(self) -> None:
        from market.risk import on_accept, on_exec
        from stages.journal import read_journal_exec, read_journal_orders

        jdir = self.ctx.run_dir / "journal"
        orders = read_journal_orders(jdir)
        execs = read_journal_exec(jdir)
        approved = orders[orders["reject_code"] == 0] if len(orders) else orders
        events = [(int(o["send_ts_ns"]), 0, i) for i, o in enumerate(approved)]
        events += [(int(e["send_ts_ns"]), 1, i) for i, e in enumerate(execs)]
        events.sort()
        for _ts, what, i in events:
            if what == 0:
                on_accept(self.limits, self.rstate, approved[i], np.int64(_ts))
            else:
                on_exec(self.limits, self.rstate, execs[i], np.int64(_ts))
        if len(execs):
            self.gctl[gk.K_LAST_SEQ] = int(execs["reserved"].max())

    def poll(self) -> int:
        px, qty, meta = self.book.arrays
        return gk.gate_step(
            self.limits, self.rstate, self.gctl, self.clock.cal, px, qty, meta, self.touched,
            self.md_sts, self.md_slots, self.md, self.md_i, self.ex_r.st, self.ex_r.slots,
            self.ex, self.ex_i, self.in_sts, self.in_slots, self.ibuf, self.ibuf_i,
            self.ap_w.st, self.ap_w.slots, self.abuf, self.abuf_i, self.rej_sts, self.rej_slots,
            self.rbuf, self.rbuf_i, self.j_w.st, self.j_w.slots, self.has_journal, self.jbuf,
            self.jbuf_i, self.hist.array)

    def on_control(self, kind: int, rec) -> None:
        from market.risk import set_kill, set_mode

        if kind == CTRL_KILL:
            set_kill(self.rstate, 1)
        elif kind == CTRL_RESUME:
            set_kill(self.rstate, 0)
            set_mode(self.rstate, RISK_ACTIVE)

    def publish_view(self) -> None:
        from market.risk import GF_PEAK, risk_mode
        try:  # the per-strategy PnL words live with the risk state layout
            from market.risk_state import SP_COST, SP_FEES, SP_REALIZED
        except ImportError:
            from market.risk import SP_COST, SP_FEES, SP_REALIZED

        lf = self.limits[0]
        pos, spf, marks = self.rstate[2], self.rstate[10], self.rstate[12]
        rv = self.rv
        s_n, i_n = rv.gate_pos.shape
        rv.gate_pos[:] = pos[:s_n, :i_n]
        values = lf[16:16 + i_n]   # LF_INST_VALUE + instrument id
        for s in range(1, s_n):
            unreal = 0.0
            for i in range(1, i_n):
                if marks[i] > 0 and pos[s, i]:
                    unreal += (pos[s, i] * marks[i] * 0.5 - spf[s, i, SP_COST]) * values[i]
            rv.gate_pnl[s, PNL_REALIZED] = spf[s, 1:i_n, SP_REALIZED].sum()
            rv.gate_pnl[s, PNL_FEES] = spf[s, 1:i_n, SP_FEES].sum()
            rv.gate_pnl[s, PNL_UNREALIZED] = unreal
        rv.gate_pnl[0, PNL_PEAK] = self.rstate[1][GF_PEAK]
        rv.gate[G_STATE] = risk_mode(lf, self.rstate)
        rv.gate[G_APPROVED] = self.gctl[gk.K_APPROVED]
        rv.gate[G_REJECTED] = self.gctl[gk.K_REJECTED]
        rv.gate[G_FILLS] = self.gctl[gk.K_EXEC]
        rv.gate[G_SEQ] = self.gctl[gk.K_LAST_SEQ]

    def fill_status(self, values) -> None:
        from pipeline.status import W_X0, W_X1, W_X2

        self.clock.recalibrate()
        self.publish_view()
        g = self.gctl
        self.records_in = int(g[gk.K_MD] + g[gk.K_EXEC] + g[gk.K_INTENTS])
        self.records_out = int(g[gk.K_APPROVED] + g[gk.K_REJECTED])
        self.records_lost = sum(r.lost for r in self.md_r)
        self.ring_lag = sum(r.pending() for r in self.in_r) + self.ex_r.pending()
        super().fill_status(values)
        values[W_X0] = self.rv.gate[G_STATE]
        values[W_X1] = g[gk.K_APPROVED]
        values[W_X2] = g[gk.K_REJECTED]

    def drain(self) -> None:
        for _ in range(1000):
            if self.poll() == 0:
                break

    def on_stop(self) -> None:
        self.publish_view()
        self.hist.close()
        self.rv.close()
        for r in self._rings:
            r.close()
