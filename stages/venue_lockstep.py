"""The venue stage of the sim-time (lockstep) mode: the backtest's own simulated market (or its
replay of a recording) driven round by round, exactly as market/backtest.py's loop drives it.
Runs in the ``venue`` process of ``run.py run --sim-time``; cold Python per round around the
backtest's venue kernels (market.sim / market.replayvenue advance and submit).

The pipeline's other stages are the live ones, unchanged, on real rings; only who moves the
clock changes. On its turn (pipeline/runner.py, shm/lockstep.py) the venue:

1. submits the orders the router forwarded in the last round, at that round's time (they
   arrive after the venue's order latency, as in the backtest);
2. ends the session when the backtest's loop would: the run's end is reached and no risk
   denial waits (or the same instant has had MAX_SAME_INSTANT rounds);
3. picks how far to go as the backtest does: the next delivery, the next timer tick of any
   strategy (each strategy host posts its own in the clock), or the same instant when risk
   denials or new parameters wait;
4. advances the market (``stop_at_delivery``: one delivery instant), publishes its market
   records to each venue's ``md-<venue>`` ring and its reports to ``vexec-<venue>``, and sets
   the clock to that instant for the rest of the round.

Market (same construction as ``run.py backtest``, strategies/backtest.py): the config's
simulated venues with ``sim.seed`` at ``backtest.event_rate_per_s``, from the backtest's start
time, or the record file named by ``--replay`` matched by the backtest's replay venue and
queue model. A recording's instruments must be the config's, in the same order (ids are the
rings' instrument ids).

After the session the venue stays up and answers what still comes (the controller's cancel of
every open order at stop): a cancel is acknowledged, anything else rejected REJECT_VENUE_DOWN;
nothing trades after the end.
"""
from __future__ import annotations

import numpy as np

from shm.lockstep import W_N_DEN, W_NOW, W_REPORTS, W_ROUNDS, W_T_END, W_T_START
from shm.records import EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from stages.base import Stage
from stages.venue_sim import (answer_without_market, attach_venue_side,
                               instrument_venue_rows, split_publish_ex, split_publish_md)

# as market/backtest.py's buffers: a round's deliveries are cut at the same sizes
BATCH_MD = 4096
BATCH_EX = 4096


class LockstepVenueStage(Stage):
    role = "venue"
    lockstep_free_after_done = True

    def on_start(self, ctx) -> None:
        from market.backtest import MAX_SAME_INSTANT
        from shm.instruments import InstrumentTable
        from strategies.backtest import backtest_market
        from strategies.backtest_codegen import venue_kernels

        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        data = ctx.extra.get("replay")
        mk = backtest_market(cfg, data, ctx.extra.get("sim_duration_s"))
        table = InstrumentTable.from_config(cfg)
        if mk.kind == "replay":
            for fi in mk.instruments:
                try:
                    ours = table.by_key(fi.key).instrument_id
                except KeyError:
                    ours = None
                if ours != fi.instrument_id:
                    raise ValueError(
                        f"{data}: instrument {fi.key} is id {fi.instrument_id} in the file and "
                        f"{'not in the config' if ours is None else f'id {ours} in the config'}"
                        "; a sim-time replay needs the config's [[instruments]] to be the "
                        "file's, in the file's order")
        self.mk = mk
        self.vs = mk.venue.state
        self.advance, self.submit = venue_kernels(mk.kind)
        self.max_same_instant = MAX_SAME_INSTANT
        attach_venue_side(self, inst, topo.venues)
        self.inst_venue = instrument_venue_rows(table, topo.venues)
        self.md = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.tmp = np.zeros(BATCH_MD, dtype=MARKET_DTYPE)
        self.tmp_i = self.tmp.view(np.int64).reshape(len(self.tmp), -1)
        self.ex = np.zeros(BATCH_EX, dtype=EXEC_DTYPE)
        self.ex_i = self.ex.view(np.int64).reshape(BATCH_EX, -1)
        self.orders = np.zeros(256, dtype=ORDER_DTYPE)
        self.answers = np.zeros(256, dtype=EXEC_DTYPE)
        self.counts = np.zeros(len(topo.venues), dtype=np.int64)
        self.dropped = np.zeros(1, dtype=np.int64)
        # the backtest loop's own state (market/backtest.py backtest_loop)
        self.now = int(mk.t_start)
        self.t_stop = int(mk.t_end)
        self.last_now = -1
        self.same_instant = 0
        self.rounds = 0
        self.reports = 0
        self.orders_in = 0
        self.closed = False
        self._compile()
        split_publish_md(self.md, 0, self.inst_venue, self.md_sts, self.md_slots, self.tmp,
                         self.tmp_i, self.counts)
        split_publish_ex(self.ex, 0, self.out_sts, self.out_slots, self.ex_i[:1], self.ex_i,
                         self.dropped)

    def _compile(self) -> None:
        """Compile (or load) advance and submit for these arguments without running them: the
        first round must not spend the venue's heartbeat compiling."""
        import numba

        ty = numba.typeof
        self.advance.compile((ty(self.vs), numba.int64, ty(self.md), numba.int64, ty(self.ex),
                              numba.int64, numba.boolean))
        self.submit.compile((ty(self.vs), ty(self.orders[0]), numba.int64))

    def lockstep_start(self, clk) -> None:
        """Before the first round (the runner calls it once the clock is attached)."""
        self.clk = clk
        clk.head[W_T_START] = self.mk.t_start
        clk.head[W_T_END] = self.t_stop
        clk.head[W_NOW] = self.mk.t_start

    # -- the round (lockstep: pipeline/runner.py calls this on the venue's turn) ----------
    def lockstep_phase(self, clk, position) -> None:
        head = clk.head
        n_den = int(head[W_N_DEN])
        # 1. the orders of the last round, at its time (the backtest submits them as the gate
        #    approves them; the router forwarded them in the same round)
        for r in self.in_r:
            while True:
                n = r.poll(self.orders)
                for j in range(n):
                    self.submit(self.vs, self.orders[j], np.int64(self.now))
                self.orders_in += n
                self.records_in += n
                if n < len(self.orders):
                    break
        # 2. the end, where backtest_loop breaks
        if self.rounds > 0 and self.now >= self.t_stop and (
                n_den == 0 or self.same_instant >= self.max_same_instant):
            self.closed = True
            head[W_ROUNDS] = self.rounds
            head[W_REPORTS] = self.reports
            clk.finish()
            return
        # 3. how far this round goes
        slots = clk.schedule[2:-2]   # the strategies' (stages/topology.py lockstep_schedule)
        next_timer = min((int(clk.timer[s]) for s in slots), default=0x7FFFFFFFFFFFFFFF)
        pending = any(int(clk.pending[s]) for s in slots)
        if (n_den > 0 and self.same_instant < self.max_same_instant) or pending:
            t_lim = self.now
        else:
            t_lim = min(self.t_stop, max(next_timer, self.now))
        # 4. deliver
        n_md, n_ex, t = self.advance(self.vs, np.int64(t_lim), self.md, 0, self.ex, 0, True)
        n_md, n_ex, t = int(n_md), int(n_ex), int(t)
        self.now = t
        if t == self.last_now:
            self.same_instant += 1
        else:
            self.same_instant = 0
            self.last_now = t
        if n_md:
            split_publish_md(self.md, n_md, self.inst_venue, self.md_sts, self.md_slots,
                             self.tmp, self.tmp_i, self.counts)
        if n_ex:
            split_publish_ex(self.ex, n_ex, self.out_sts, self.out_slots, self.ex_i[:1],
                             self.ex_i, self.dropped)
        self.reports += n_ex
        self.records_out += n_md + n_ex
        self.rounds += 1
        head[W_NOW] = t
        head[W_ROUNDS] = self.rounds
        head[W_REPORTS] = self.reports

    # -- after the session (and the free-running poll before it starts: nothing) --------
    def poll(self) -> int:
        if not self.closed:
            clk = getattr(self, "clk", None)
            if clk is None or not clk.done:
                return 0
            self.closed = True   # the controller ended the session early (a stop)
        work = 0
        for i, r in enumerate(self.in_r):
            n = r.poll(self.orders)
            if not n:
                continue
            work += n
            e = self.answers[:n]
            answer_without_market(self.orders[:n], e, self.now, ack_cancels=True)
            self.out_w[i].publish(e)
            self.records_out += n
        return work

    def drain(self) -> None:
        for _ in range(50):
            if self.poll() == 0:
                break

    def fill_status(self, values) -> None:
        from common.status import W_X0, W_X1, W_X2

        self.errors = int(self.dropped[0])
        super().fill_status(values)
        values[W_X0] = self.rounds
        values[W_X1] = self.now
        values[W_X2] = self.orders_in

    def on_stop(self) -> None:
        for r in self._rings:
            r.close()
