"""Risk-gate stage: the pre-trade checks of market/risk.py on every intent. Runs in the
``risk_gate`` process.

``poll`` is one ``gate_step`` call (HOT PATH, see stages/gate_kernels.py). States: ACTIVE,
REDUCING (only exposure-reducing orders pass), HALTED, as ``market.risk.risk_mode`` derives them
from the kill switch, the operator mode and the loss / drawdown limits. A breach of the daily
loss or drawdown limit latches HALTED (the reason stays in the risk state) until an operator
resume or the trading day's roll (``[risk] trading_day_start_utc``, checked every heartbeat).

Control (cold): CTRL_KILL sets the kill switch (every new order denied with REJECT_KILL_SWITCH);
with arg0 = 1 the gate then flattens every position with market orders of its own
(OFLAG_RISK_SYSTEM), through the same checks, journal and approved ring as any order, once no
order of ours is open (the router cancels them). CTRL_RESUME with arg0 = RESUME_OPERATOR is the
operator's resume (kill switch off, mode ACTIVE, a loss latch lifted); with arg0 = 0 it only
lifts the kill switch a restarted gate starts with (the controller sends it once positions
reconcile, and it must not lift a loss latch). Halts, lifts, kills, resumes and day rolls are
written to the journal's events file with who and why.

After a crash the controller flushes the journal and restarts the gate with ``--reconcile``:
it starts with the kill switch set, replays the journal (approved intents and execution reports
in time order) to rebuild positions, PnL and open orders, completes the previous gate's last
batch (``redo_from_journal``, see gate_kernels' crash-consistency notes), remembers the last
router sequence number it applied, and reports G_READY; the controller resumes trading once
these positions equal the venue-reported ones.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from common.status import W_X0, W_X1, W_X2
from shm.records import (CTRL_KILL, CTRL_RESUME, EXEC_DTYPE, MARKET_DTYPE, OFLAG_RISK_SYSTEM,
                         ORDER_DTYPE, RESUME_OPERATOR, RISK_ACTIVE)
from market.risk import G_HALTS
from stages import gate_kernels as gk
from stages.base import Stage, stack_states
from stages.riskview import (G_APPROVED, G_FILLS, G_READY, G_REJECTED, G_SEQ, G_STATE,
                             PNL_FEES, PNL_PEAK, PNL_REALIZED, PNL_UNREALIZED)

BATCH_MD = 4096
BATCH = 512
FLATTEN_TRIES = 11   # 10 rounds of market orders, then an account of what is left
FLATTEN_RETRY_NS = 300_000_000
FLATTEN_COID_BIT = 1 << 47   # the gate's own orders: strategies count their ids below 2**47


def day_start_offset_s(start_utc: str) -> int:
    """Seconds after 00:00 UTC at which the trading day begins ("HH:MM", validated by config)."""
    h, m = (int(x) for x in start_utc.split(":"))
    return h * 3600 + m * 60


def trading_day(now_s: float, offset_s: int) -> int:
    """Index of the trading day that contains ``now_s`` (epoch seconds)."""
    return int((now_s - offset_s) // 86400)


class RiskGateStage(Stage):
    role = "risk_gate"

    def on_start(self, ctx) -> None:
        from market.book import L2Book
        from market.risk import GATE_BOOK_LEVELS, build_limits, make_risk_state, set_kill
        from shm.histogram import LatencyHistogram
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing
        from stages.clock import make_clock
        from stages.riskview import RiskView
        from common.runtime import shard_position_limits
        from stages.topology import HIST_GATE

        self.ctx = ctx
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        self.jdir = ctx.run_dir / "journal"
        table = InstrumentTable.from_config(cfg)
        strats = topo.strategies()
        self.limits = build_limits(cfg.risk, table, max_strategies=max(1, len(strats)),
                                   groups={s.strategy_id: s.group_id for s in strats},
                                   shard_limits=shard_position_limits(
                                       cfg.risk.max_position_lots, cfg.strategies))
        self.rstate = make_risk_state(self.limits)
        self.book = L2Book(len(table), GATE_BOOK_LEVELS)
        self.touched = np.zeros(len(table) + 1, dtype=np.int64)
        self.inst_venue_id = np.zeros(len(table) + 1, dtype=np.int64)
        for i in table:
            self.inst_venue_id[i.instrument_id] = i.venue_id
        self._rings = []

        def att(cls, name, dt):
            r = cls.attach(inst, name, dt)
            self._rings.append(r)
            return r

        self.md_r = [att(BroadcastRing, f"md-{v}", MARKET_DTYPE).reader(
            topo.md_readers[v]["risk_gate"]) for v in topo.venues]
        self.ex_r = att(SpscRing, "exec-gate", EXEC_DTYPE).reader()
        self.in_r = [att(SpscRing, f"intent-{s.process}", ORDER_DTYPE).reader()
                     for s in strats]
        self.in_sids = np.array([s.strategy_id for s in strats], dtype=np.int64)
        self.rej_w = [att(SpscRing, f"reject-{s.process}", EXEC_DTYPE).writer()
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
        self.clock = make_clock(ctx)
        self.rv = RiskView.attach(inst)
        self.rv.gate[G_READY] = 0
        self.day_start_utc = cfg.risk.trading_day_start_utc
        self.day_offset_s = day_start_offset_s(self.day_start_utc)
        self.day = trading_day(time.time(), self.day_offset_s)
        self.flatten_tries = 0
        self.next_flatten_ns = 0
        self.flatten_seq = 0
        self.flatten_denials: dict = {}
        self.flatten_cap: dict = {}   # instrument id -> lots per flatten order (max_notional)
        self.redo: dict = {}
        if ctx.extra.get("reconcile") or ctx.restarts:
            set_kill(self.rstate, 1)   # fail closed until the controller says positions match
            t0 = time.monotonic()
            orders = self.rebuild_from_journal()
            self.redo = self.redo_from_journal(orders)
            self._log(f"rebuilt from the journal ({len(orders)} decisions) in "
                      f"{(time.monotonic() - t0) * 1e3:.0f} ms")
        else:   # load the replay kernel now: a restart will need it in a hurry
            from market.risk_state import replay

            replay(self.limits, self.rstate, np.zeros(0, ORDER_DTYPE), np.zeros(0, EXEC_DTYPE))
        self.halts_seen = int(self.rstate[0][G_HALTS])
        self.publish_view()
        lost_before = [r.lost for r in self.md_r]
        self.poll()   # compile / load kernels, then join the market data live
        self._submit(0)   # and the control path's kernel, before it is needed in a hurry
        for r, lost in zip(self.md_r, lost_before):
            r.rejoin_live(lost)
        self.rv.gate[G_READY] = 1

    # -- recovery (cold) ---------------------------------------------------------------------
    def rebuild_from_journal(self) -> np.ndarray:
        """Positions, PnL and open orders from the journal; returns the journaled decisions in
        ring order (for ``redo_from_journal``)."""
        from market.risk_state import replay
        from stages.journal import read_journal_exec, read_journal_orders

        orders = read_journal_orders(self.jdir)
        if len(orders):
            orders = orders[np.argsort(orders["ring_seq"], kind="stable")]
        execs = read_journal_exec(self.jdir)
        approved = orders[orders["reject_code"] == 0] if len(orders) else orders
        # decisions in the gate's order (its own stamps, stable: ties keep journal order),
        # reports in the order it applied them: the router's sequence number (its stamps where
        # a report has none); replay merges the two
        approved = np.ascontiguousarray(
            approved[np.argsort(approved["send_ts_ns"], kind="stable")])
        key = execs["reserved"] if len(execs) and (execs["reserved"] > 0).all() \
            else execs["send_ts_ns"]
        execs = np.ascontiguousarray(execs[np.argsort(key, kind="stable")])
        replay(self.limits, self.rstate, approved, execs)
        if len(execs):
            self.gctl[gk.K_LAST_SEQ] = int(execs["reserved"].max())
        return orders

    def redo_from_journal(self, orders: np.ndarray) -> dict:
        """Complete the previous gate's last batches (gate_kernels: write-ahead order). For
        each strategy: intents the journal already decided but the ring still holds are
        skipped; denials that never reached the reject ring, and approvals that never reached
        the approved ring, are published now, in journal order. Returns what it did."""
        from shm.recordops import deny_order

        done = {"skipped_intents": 0, "republished_denials": 0, "republished_approvals": 0,
                "journal_behind": 0}
        if not self.has_journal or not len(orders):
            return done
        mine_all = (orders["flags"] & OFLAG_RISK_SYSTEM) == 0
        buf = np.zeros(BATCH, dtype=ORDER_DTYPE)
        for reader, writer, sid in zip(self.in_r, self.rej_w, self.in_sids):
            mine = orders[mine_all & (orders["strategy_id"] == sid)]
            skip = len(mine) - reader.position
            if skip < 0:
                done["journal_behind"] += -skip
                self._log(f"journal holds {len(mine)} decisions of strategy {sid} but the gate "
                          f"consumed {reader.position} intents: {-skip} were decided and never "
                          "journaled (was the journal down?)")
            while skip > 0:
                k = reader.peek(buf[:min(skip, BATCH)])
                if k == 0:
                    break
                want = mine[len(mine) - skip:len(mine) - skip + k]
                if not (np.array_equal(buf["client_order_id"][:k], want["client_order_id"])
                        and np.array_equal(buf["kind"][:k], want["kind"])):
                    self._log(f"strategy {sid}: the intents after the ring cursor are not the "
                              "ones journaled last; skipping them as journaled anyway")
                reader.commit(k)
                skip -= k
                done["skipped_intents"] += k
            denied = mine[mine["reject_code"] != 0]
            missing = len(denied) - writer.position
            if missing > 0:
                rb = np.zeros(missing, dtype=EXEC_DTYPE)
                for j, o in enumerate(denied[-missing:]):
                    deny_order(rb[j], o, int(o["reject_code"]), int(o["send_ts_ns"]))
                self._publish_cold(writer, rb)
                done["republished_denials"] += missing
        approved = orders[orders["reject_code"] == 0]
        missing = len(approved) - self.ap_w.position
        if missing > 0:
            self._publish_cold(self.ap_w, np.ascontiguousarray(approved[-missing:]))
            done["republished_approvals"] += missing
        if any(done.values()):
            self._log(f"completed the previous gate's last batch from the journal: {done}")
        return done

    def _publish_cold(self, writer, recs) -> None:
        sent = 0
        deadline = time.monotonic() + 5.0
        while sent < len(recs):
            sent += writer.publish(recs[sent:].copy())
            if sent < len(recs):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ring {writer.ring.name} stayed full for 5 s while "
                                       f"the gate completed its predecessor's batch")
                time.sleep(0.001)

    def _log(self, msg: str) -> None:
        print(f"risk_gate: {msg}", file=sys.stderr, flush=True)

    def _event(self, what: str, why: str = "", who: str = "gate", **fields) -> None:
        from stages.journal import append_event

        try:
            append_event(self.jdir, who, what, why, **fields)
        except OSError as exc:   # the journal directory is gone: say so, keep gating
            self._log(f"could not journal event {what}: {exc}")

    # -- hot -------------------------------------------------------------------------------
    def poll(self) -> int:
        px, qty, meta = self.book.arrays
        return gk.gate_step(
            self.limits, self.rstate, self.gctl, self.clock.cal, px, qty, meta, self.touched,
            self.md_sts, self.md_slots, self.md, self.md_i, self.ex_r.st, self.ex_r.slots,
            self.ex, self.ex_i, self.in_sts, self.in_slots, self.in_sids, self.ibuf,
            self.ibuf_i, self.ap_w.st, self.ap_w.slots, self.abuf, self.abuf_i, self.rej_sts,
            self.rej_slots, self.rbuf, self.rbuf_i, self.j_w.st, self.j_w.slots,
            self.has_journal, self.jbuf, self.jbuf_i, self.hist.array)

    def _submit(self, n: int) -> int:
        px, _qty, meta = self.book.arrays
        return gk.gate_submit(self.limits, self.rstate, self.gctl, self.clock.cal, px, meta,
                              self.ibuf, n, self.ap_w.st, self.ap_w.slots, self.abuf,
                              self.abuf_i, self.j_w.st, self.j_w.slots, self.has_journal,
                              self.jbuf, self.jbuf_i, self.rbuf, self.hist.array)

    # -- control (cold) --------------------------------------------------------------------
    def on_control(self, kind: int, rec) -> None:
        from market.risk import set_kill, set_mode

        if kind == CTRL_KILL:
            set_kill(self.rstate, 1)
            flatten = int(rec["arg0"]) == 1
            if flatten:
                self.flatten_tries = FLATTEN_TRIES
                self.next_flatten_ns = 0
            self._event("kill_switch_on", "CTRL_KILL from the controller", flatten=flatten)
        elif kind == CTRL_RESUME:
            set_kill(self.rstate, 0)
            self.flatten_tries = 0
            if int(rec["arg0"]) == RESUME_OPERATOR:
                set_mode(self.rstate, RISK_ACTIVE)
                self._event("resume", "operator resume: kill switch off, mode ACTIVE, any "
                            "loss latch lifted")
            else:
                self._event("resume_after_reconcile", "positions reconciled after a restart: "
                            "the restart's fail-closed kill switch is lifted")
        self.publish_view()   # the controller reads the new mode as soon as we acknowledge

    def maybe_flatten(self) -> None:
        """Cold, per heartbeat after a kill with flatten: once nothing of ours is open, market
        orders per (strategy, instrument) position, each within max_order_qty_lots, until flat
        (bounded retries, spaced so the previous round's fills are in; then an event names
        what is left and the last reasons the gate denied). Opposite positions of two
        strategies in one instrument go one round after the other: self-trade prevention
        denies the second (two market orders of ours on both sides could trade with each
        other: a wash trade)."""
        from market.risk import G_OPEN_TOTAL, LF_MAX_ORDER_QTY, R_G, R_POS
        from shm.records import (INTENT_NEW, ORD_MARKET, REJECT_MAX_NOTIONAL, REJECT_NAMES,
                                 SIDE_BUY, SIDE_SELL)

        if self.flatten_tries <= 0:
            return
        now = time.monotonic_ns()
        if now < self.next_flatten_ns or self.rstate[R_G][G_OPEN_TOTAL] > 0:
            return
        pos = self.rstate[R_POS]
        todo = np.argwhere(pos != 0)
        if len(todo) == 0:
            self.flatten_tries = 0
            self._event("flattened", "every position is flat")
            return
        if self.flatten_tries == 1:   # the rounds are spent: say what is left, and why
            self.flatten_tries = 0
            self._event("flatten_incomplete", f"positions left after {FLATTEN_TRIES - 1} "
                        "rounds; the kill switch stays on: flatten them by hand or run "
                        "kill --flatten again",
                        positions={f"{int(s)}:{int(i)}": int(pos[s, i]) for s, i in todo},
                        last_denials=self.flatten_denials)
            return
        self.flatten_tries -= 1
        self.next_flatten_ns = now + FLATTEN_RETRY_NS
        # each position in orders the gate's own checks pass: at most max_order_qty_lots, and
        # half as much again after a max_notional denial of that instrument
        max_qty = max(1, int(self.limits[0][LF_MAX_ORDER_QTY]))
        orders = []
        for sid, inst in todo:
            q = int(pos[sid, inst])
            chunk = min(max_qty, self.flatten_cap.get(int(inst), max_qty))
            left = abs(q)
            while left > 0 and len(orders) < BATCH:
                orders.append((int(sid), int(inst), q, min(chunk, left)))
                left -= chunk
        n = len(orders)
        b = self.ibuf
        b[:n] = np.zeros(1, dtype=ORDER_DTYPE)
        for k, (sid, inst, q, qty) in enumerate(orders):
            self.flatten_seq += 1
            b[k]["kind"], b[k]["order_type"] = INTENT_NEW, ORD_MARKET
            b[k]["side"] = SIDE_SELL if q > 0 else SIDE_BUY
            b[k]["flags"] = OFLAG_RISK_SYSTEM
            b[k]["instrument_id"], b[k]["strategy_id"] = inst, sid
            b[k]["client_order_id"] = (sid << 48) | FLATTEN_COID_BIT | self.flatten_seq
            b[k]["qty_lots"] = qty
            b[k]["send_ts_ns"] = self.clock.now_ns()
            b[k]["venue_id"] = self.inst_venue_id[inst]
        approved = self._submit(n)
        # the gate's decisions are in the records (strategy id: instrument id -> reason)
        self.flatten_denials = {} if approved < 0 else {
            f"{int(r['strategy_id'])}:{int(r['instrument_id'])}":
                REJECT_NAMES.get(int(r["reject_code"]), int(r["reject_code"]))
            for r in b[:n] if int(r["reject_code"]) != 0}
        for r in b[:n] if approved >= 0 else ():
            if int(r["reject_code"]) == REJECT_MAX_NOTIONAL:
                self.flatten_cap[int(r["instrument_id"])] = max(1, int(r["qty_lots"]) // 2)
        self._event("flatten_round", "kill with flatten", orders=n, approved=max(approved, 0),
                    denied=self.flatten_denials, tries_left=self.flatten_tries - 1)

    def check_day_roll(self) -> None:
        from market.risk import roll_day
        from shm.records import REJECT_NAMES

        if self.ctx.extra.get("lockstep"):
            return   # a sim-time run is one session, as a backtest: no day roll
        day = trading_day(time.time(), self.day_offset_s)
        if day == self.day:
            return
        self.day = day
        lifted = int(roll_day(self.limits, self.rstate))
        self._event("day_roll", f"trading day starts at {self.day_start_utc} UTC")
        if lifted:
            self._event("halt_lifted", f"{REJECT_NAMES.get(lifted, lifted)} halt lifted by the "
                        "trading day's roll")

    def note_halts(self) -> None:
        from market.risk import GF_DAY_START, GF_PEAK, R_G, R_GF, equity
        from market.risk_state import G_HALT_REASON, LF_DAILY_LOSS, LF_MAX_DRAWDOWN
        from shm.records import REJECT_NAMES

        g = self.rstate[R_G]
        halts = int(g[G_HALTS])
        if halts == self.halts_seen:
            return
        self.halts_seen = halts
        gf, lf = self.rstate[R_GF], self.limits[0]
        reason = int(g[G_HALT_REASON])
        self._event("halt_latched", REJECT_NAMES.get(reason, str(reason)),
                    equity=float(equity(lf, self.rstate)), day_start=float(gf[GF_DAY_START]),
                    peak=float(gf[GF_PEAK]), daily_loss_limit=float(lf[LF_DAILY_LOSS]),
                    max_drawdown=float(lf[LF_MAX_DRAWDOWN]))

    # -- status (cold) ---------------------------------------------------------------------
    def publish_view(self) -> None:
        from market.risk import GF_PEAK, pnl_view, risk_mode

        lf = self.limits[0]
        rv = self.rv
        s_n, i_n = rv.gate_pos.shape
        pos, pnl = pnl_view(self.limits, self.rstate, s_n - 1, i_n - 1)
        rv.gate_pos[:] = pos
        rv.gate_pnl[1:, PNL_REALIZED] = pnl[1:, 0]
        rv.gate_pnl[1:, PNL_UNREALIZED] = pnl[1:, 1]
        rv.gate_pnl[1:, PNL_FEES] = pnl[1:, 2]
        rv.gate_pnl[0, PNL_PEAK] = self.rstate[1][GF_PEAK]
        rv.gate[G_STATE] = risk_mode(lf, self.rstate)
        rv.gate[G_APPROVED] = self.gctl[gk.K_APPROVED]
        rv.gate[G_REJECTED] = self.gctl[gk.K_REJECTED]
        rv.gate[G_FILLS] = self.gctl[gk.K_EXEC]
        rv.gate[G_SEQ] = self.gctl[gk.K_LAST_SEQ]

    def fill_status(self, values) -> None:
        self.clock.recalibrate()
        self.check_day_roll()
        self.note_halts()
        self.maybe_flatten()
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

    def lockstep_phase(self, clk, position: int) -> None:
        self._rejected_before = int(self.gctl[gk.K_REJECTED])
        super().lockstep_phase(clk, position)

    def lockstep_pending(self) -> int:
        return (sum(r.pending() for r in self.in_r) + self.ex_r.pending()
                + sum(r.pending() for r in self.md_r))

    def lockstep_post(self, clk) -> None:
        from shm.lockstep import W_INTENTS, W_N_DEN

        clk.head[W_N_DEN] = int(self.gctl[gk.K_REJECTED]) - self._rejected_before
        clk.head[W_INTENTS] = int(self.gctl[gk.K_INTENTS])

    def on_stop(self) -> None:
        self.publish_view()
        self.hist.close()
        self.rv.close()
        for r in self._rings:
            r.close()
