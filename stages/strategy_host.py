"""Strategy-host stage: one process per [[strategies]] entry. Runs in ``strategy-<name>``.

``poll`` is one call of ``host_step`` (HOT PATH, @njit, generated per strategy kind so that
numba can cache it: stages/host_codegen.py): poll the market-data broadcast rings of
the strategy's venues into one batch (recording md receive -> strategy read latency), poll the
execution reports (router) and denials (risk gate), then ``strategies.host.run_strategy_batch``
-- the backtest's step: books, the runtime's bookkeeping (order table, positions), the kernel
guarded so that an exception inside it is counted and its intents discarded, never the batch's
input -- and stamp and publish the intents to the gate. A timer tick (a kernel call with no
input) runs every ``timer_ms`` of the strategy's config. Everything else here (``on_start``,
status) is cold.

Push-back: if the intent ring is full (the gate is down or slow), the intents that did not fit
are answered to the kernel on the next batch as EXEC_REJECT / EXEC_CANCEL_REJECT with
REJECT_HALTED, so the strategy's own order table stays true without any waiting.

Live parameters (``run.py set``): the controller writes the strategy's new full parameter set
to ``<run dir>/params/<name>.json`` (stages/live_params.py) and sends CTRL_PARAMS; the runner
hands it to ``on_control`` between two polls, where the set is read, validated again
(``Strategy.updated_params``) and packed into the parameter record in place
(``strategies.host.apply_params``); the next batch calls the strategy's ``on_params`` first. A
command whose set fails here raises: the runner counts the error and answers the controller
with a failed acknowledgement (the old parameters stay). ``on_start`` builds the strategy with
the run's last set when there is one, so a restart keeps it.

Restart: ``on_start`` of a restarted strategy (ctx.restarts > 0) rebuilds positions and open
orders from the journal
(``strategies.base.restore_state`` over ``<run dir>/journal``, which the controller flushes
before it restarts a strategy), remembers the journal's highest router sequence number, and
the host step skips reports on the exec ring at or below it (the dead incarnation left them
unread, the journal already had them). Without a journal ([journal] enabled = false) a
restarted strategy starts flat.

A lapped market-data reader (records lost) clears the books of that venue's instruments; they
become valid again with the venue's next periodic snapshot.

Status words: x0 push-backs, x1 book clears, x2 batches that called hooks, x3 the HALT_* code
of the hook that raised and halted the strategy (0 = trading; hook errors also count in the
stage's errors).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from common.status import W_X0, W_X1, W_X2, W_X3
from shm.records import CTRL_PARAMS, EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from stages.base import Stage, stack_states
from stages.host_codegen import host_step_for
from stages.live_params import (ParamSetError, changed_values, config_params_path, params_path,
                                read_param_set, shard_params)
from strategies.host import (H_CALLS, H_EX_IN, H_KERNEL_ERRORS, H_LAST_SEQ, H_MD_IN,
                             H_NEXT_TIMER, H_OUT, H_PUSHBACK, apply_params, make_hctl)

RESTART_SHIFT = 32   # each incarnation of a strategy counts client order ids from its own block

BATCH_MD = 2048
BATCH_EX = 256
BATCH_SG = 1024
VIEW_EVERY_NS = 100_000_000   # the farm snapshot row: status needs no more
MAX_INTENTS = 256
JOURNAL_READ_TRIES = 5   # a journal file created an instant ago may not have its header yet


class StrategyHostStage(Stage):
    role = "strategy"

    def on_start(self, ctx) -> None:
        from market.book import L2Book
        from shm.histogram import LatencyHistogram
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing
        from stages.clock import make_clock
        from strategies.registry import make_strategy

        spec = ctx.extra["spec"]
        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        sc = spec.strategy
        table = InstrumentTable.from_config(cfg)
        instruments = [table.by_key(k) for k in spec.instruments]   # this shard's block
        self.strategy = make_strategy(sc.kind, sc.params, instruments, spec.strategy_id,
                                      spec.shard)
        self.name, self.run_dir = sc.name, ctx.run_dir
        self.params_where = config_params_path(cfg, sc.name)
        live = self.read_live_params()   # set with `run.py set` earlier in this run
        if live is not None:
            self.strategy.params, live_version = live
            print(f"{ctx.name}: parameters: set {live_version} of this run "
                  f"({params_path(self.run_dir, self.name)}), not the config's",
                  file=sys.stderr, flush=True)
        self.host_step = host_step_for(sc.kind)
        self.book = L2Book(len(table), sc.book_levels)
        self.px, self.qty, self.meta = self.book.arrays
        self.state = self.strategy.make_state(self.px, self.qty, self.meta, MAX_INTENTS)
        if live is not None:
            self.state.ctx.rt[0]["params_version"] = live_version
        # client order ids must stay unique across restarts of this strategy: every
        # incarnation counts from its own block of 2**32 ids
        self.state.ctx.rt[0]["next_coid"] = (ctx.restarts << RESTART_SHIFT) | 1
        self._rings = []
        venues = sorted({i.venue for i in instruments}, key=topo.venues.index)
        self.md_r = []
        self.venue_insts = []
        for v in venues:
            ring = BroadcastRing.attach(inst, f"md-{v}", MARKET_DTYPE)
            self._rings.append(ring)
            self.md_r.append(ring.reader(topo.md_readers[v][spec.name]))
            self.venue_insts.append([i.instrument_id for i in table if i.venue == v])
        # the gate's denials first, then the venues' reports: the backtest's order (a denial
        # is answered with the next round, before that round's reports)
        ex_rings = [SpscRing.attach(inst, f"reject-{spec.process}", EXEC_DTYPE),
                    SpscRing.attach(inst, f"exec-{spec.process}", EXEC_DTYPE)]
        intent_ring = SpscRing.attach(inst, f"intent-{spec.process}", ORDER_DTYPE)
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
        self.out_i = self.state.ctx.out.view(np.int64).reshape(MAX_INTENTS, -1)
        self.hctl = make_hctl(sc.timer_ms)
        self.restored = self.restore_from_journal(ctx)
        self.hist = LatencyHistogram.attach(inst, f"md_to_{spec.name}")
        self.no_signals(spec)
        from stages.riskview import RiskView

        # this strategy's own positions for status and reconciliation (its row only)
        self.rv = RiskView.attach(inst)
        self.sid = spec.strategy_id
        self.inst_ids = [i.instrument_id for i in instruments]
        self.clock = make_clock(ctx)
        self.book_clears = 0
        self.kernel_errors_seen = 0
        lost_before = [r.lost for r in self.md_r]
        self.poll()  # compile the kernel specialisation before reporting RUNNING
        from market.book import book_clear

        for r, lost in zip(self.md_r, lost_before):
            r.rejoin_live(lost)
        for ins in range(1, len(table) + 1):   # what the warm-up saw may be half a book
            book_clear(self.px, self.qty, self.meta, ins)
        self.lost_seen = [r.lost for r in self.md_r]
        self.lockstep_slot = spec.slot
        self.slot = ctx.slot
        self.attach_signals(ctx, spec)
        self.farmview = self.attach_farmview(ctx)
        self._next_view_ns = 0
        self._sig_whole: dict = {}      # subscription -> every cell valid at the last view
        self._sig_dropouts: dict = {}   # subscription -> whole-to-missing transitions seen
        if ctx.extra.get("lockstep"):
            self.hctl[H_NEXT_TIMER] = -1   # as the backtest's: the first round starts the timer

    def restore_from_journal(self, ctx) -> dict | None:
        """Positions and open orders of this strategy id from ``<run dir>/journal`` (cold; see
        ``strategies.base.restore_state``); the journal's last router sequence number goes to
        hctl[H_LAST_SEQ] so the host step skips what the journal already holds. None on a
        first start and when there is no journal."""
        from market.recordfile import RecordFileError
        from stages.journal import read_journal_exec, read_journal_orders
        from strategies.base import restore_state

        if ctx.restarts == 0 or ctx.run_dir is None:
            return None   # a first start has nothing of its own in this run's journal
        jdir = Path(ctx.run_dir) / "journal"
        if not jdir.is_dir() or not any(jdir.glob("*.rec")):
            return None
        for attempt in range(JOURNAL_READ_TRIES):
            try:
                orders = read_journal_orders(jdir)
                execs = read_journal_exec(jdir)
                break
            except RecordFileError:
                if attempt == JOURNAL_READ_TRIES - 1:
                    raise
                time.sleep(0.05)
        summary = restore_state(self.state, orders, execs)
        self.hctl[H_LAST_SEQ] = summary["last_seq"]
        pos = ", ".join(f"{i.key} {p:+.0f}" for i, p in
                        zip(self.strategy.instruments, self.state.ctx.pos["pos"]))
        print(f"{ctx.name}: restored from {jdir}: {summary['fills']} fills ({pos} lots), "
              f"{summary['open_orders']} open orders, router seq {summary['last_seq']}; "
              f"skipped: {summary['unknown_instrument']} unknown instrument, "
              f"{summary['not_restored']} orders beyond the table", file=sys.stderr, flush=True)
        return summary

    # -- farm signals (cold) ------------------------------------------------------------
    def no_signals(self, spec) -> None:
        """Until ``attach_signals``: no signal ring (a zero-row state array: the host step's
        loop over signal rings never runs) and the market histogram as a placeholder."""
        from shm.records import SIGNAL_DTYPE
        from shm.ringops import ST_SIZE

        self.sg_sts = np.zeros((0, ST_SIZE), dtype=np.int64)
        self.sg = np.zeros(BATCH_SG, dtype=SIGNAL_DTYPE)
        self.sg_i = self.sg.view(np.int64).reshape(BATCH_SG, -1)
        self.sg_hist = self.hist
        self.sig_r = []
        self.sig_kinds = []   # (agent name, SIG_* code, max age ns, agent's ids) per subscription

    def attach_signals(self, ctx, spec) -> None:
        """Read the rings of the signal agents the strategy subscribes to (``signals``): each
        agent's kind becomes readable in ctx.sig, missing once older than its stale_ms."""
        from shm.histogram import LatencyHistogram
        from shm.records import SIGNAL_DTYPE, SIGNAL_KIND_CODES
        from shm.ring import BroadcastRing
        from strategies.base import subscribe_signal

        agents = {g.name: g for g in getattr(ctx.config, "signals", ())}
        for name in spec.strategy.signals:
            g = agents[name]
            ring = BroadcastRing.attach(ctx.instance, f"sig-{name}", SIGNAL_DTYPE)
            self._rings.append(ring)
            self.sig_r.append(ring.reader(ctx.topology.sig_readers[name][spec.name]))
            code = SIGNAL_KIND_CODES[g.kind]
            subscribe_signal(self.state.ctx.sig, code, g.max_age_ns)
            from shm.instruments import InstrumentTable

            table = InstrumentTable.from_config(ctx.config)
            self.sig_kinds.append((name, code, g.max_age_ns,
                                   [table.by_key(k).instrument_id for k in g.instruments]))
        if self.sig_r:
            self.sg_sts = stack_states(self.sig_r)
            self.sg_hist = LatencyHistogram.attach(ctx.instance, f"sig_to_{spec.name}")
            self._sg_hist_own = True

    @staticmethod
    def attach_farmview(ctx):
        """The controller's farm snapshot segment (stages/farmview.py); None without one (a
        harness that builds only the rings)."""
        from shm.segment import SegmentError
        from stages.farmview import FarmView

        try:
            return FarmView.attach(ctx.instance)
        except (SegmentError, OSError, TimeoutError):
            return None

    def publish_farm_row(self) -> None:
        """This process's row of the farm snapshot, at most every VIEW_EVERY_NS (cold)."""
        now = time.time_ns()
        if self.farmview is None or now < self._next_view_ns:
            return
        self._next_view_ns = now + VIEW_EVERY_NS
        rt = self.state.ctx.rt[0]
        news = (int(rt["next_coid"]) & ((1 << RESTART_SHIFT) - 1)) - 1
        self.farmview.write(self.slot, now, news, int(rt["fills"]),
                            self.signal_view(int(self.clock.now_ns())))

    def signal_view(self, now_ns: int) -> list[tuple]:
        """Per subscription, what the strategy sees now (cold): (agent, kind code, cells of
        its instruments (a pair kind: each of its instruments with each other instrument of
        the agent), cells valid, age of the oldest cell in ns or -1 if one never came,
        dropouts: how often a call found some cell missing after one that found all valid)."""
        from shm.records import SIG_CORRELATION
        from strategies.base import _cell_value, _signal_cell

        ctx = self.state.ctx
        ids = [int(i) for i in ctx.inst]
        out = []
        for name, code, _age, agent_ids in self.sig_kinds:
            pairs = ([(a, b) for a in ids if a in agent_ids for b in agent_ids if b != a]
                     if code == SIG_CORRELATION else [(a, 0) for a in ids if a in agent_ids])
            cells = [int(_signal_cell(ctx, code, a, b)) for a, b in pairs]
            valid = sum(1 for c in cells if c >= 0 and _cell_value(ctx, c, now_ns) ==
                        _cell_value(ctx, c, now_ns))
            ts = [int(ctx.sig[c]["ts_ns"]) for c in cells if c >= 0]
            oldest = -1 if not ts or min(ts) == 0 else now_ns - min(ts)
            whole = bool(cells) and valid == len(cells)
            if not whole and self._sig_whole.get(name):
                self._sig_dropouts[name] = self._sig_dropouts.get(name, 0) + 1
            self._sig_whole[name] = whole
            out.append((name, code, len(cells), valid, oldest, self._sig_dropouts.get(name, 0)))
        return out

    # -- live parameters (cold: between batches, never inside the host step) -------------
    def read_live_params(self, newer_than: int = 0):
        """(validated Params, version) of ``<run dir>/params/<name>.json`` when its version is
        above ``newer_than``, else None. Validated again here, exactly as the config is: the
        file is the controller's, but this process is the one that trades on it."""
        if self.run_dir is None:
            return None
        rec = read_param_set(self.run_dir, self.name)
        if rec is None or rec["version"] <= newer_than:
            return None
        return (self.strategy.updated_params(shard_params(rec, self.strategy.shard),
                                             self.params_where), rec["version"])

    def apply_live_params(self, announced: int) -> None:
        """CTRL_PARAMS (arg0 = the set's version): read the set, validate, pack it into the
        parameter record in place and have ``on_params`` run before the next batch. A set
        already in force (read at start) is acknowledged without a second on_params."""
        current = int(self.state.ctx.rt[0]["params_version"])
        if announced <= current:
            return
        live = self.read_live_params(newer_than=current)
        if live is None:
            raise ParamSetError(f"{params_path(self.run_dir, self.name)}: parameter set "
                                f"{announced} announced, but the file holds none newer than "
                                f"{current}")
        params, version = live
        changed = changed_values(self.strategy.params, params)
        apply_params(self.strategy, self.state, self.hctl, params, version)
        print(f"{self.name}: parameter set {version} applied ("
              + (", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "no change")
              + "); on_params runs before the next batch", file=sys.stderr, flush=True)

    def on_control(self, kind: int, rec) -> None:
        if kind == CTRL_PARAMS:
            self.apply_live_params(int(rec["arg0"]))

    def poll(self) -> int:
        s = self.state
        return self.host_step(s.ctx, s.st, s.p, self.hctl, self.clock.cal, self.md_sts,
                              self.md_slots, self.md, self.md_i, self.ex_sts, self.ex_slots,
                              self.ex, self.ex_i, self.fb, self.out_i, self.intent_w.st,
                              self.intent_w.slots, self.hist.array, self.sg_sts, self.sg,
                              self.sg_i, self.sg_hist.array)

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
        self.clock.recalibrate()
        self.check_lapped()
        h = self.hctl
        self.records_in = int(h[H_MD_IN] + h[H_EX_IN])
        self.records_out = int(h[H_OUT])
        self.records_lost = sum(r.lost for r in self.md_r)
        self.ring_lag = sum(r.pending() for r in self.md_r) + sum(r.pending() for r in self.ex_r)
        kerr = int(h[H_KERNEL_ERRORS])
        self.errors += kerr - self.kernel_errors_seen   # the runner publishes self.errors
        self.kernel_errors_seen = kerr
        super().fill_status(values)
        values[W_X0] = h[H_PUSHBACK]
        values[W_X1] = self.book_clears
        values[W_X2] = h[H_CALLS]
        values[W_X3] = int(self.state.ctx.rt[0]["halted"])
        self.publish_positions()
        self.publish_farm_row()

    def publish_positions(self) -> None:
        pos = self.state.ctx.pos["pos"]
        row = self.rv.strat_pos[self.sid]
        for i, iid in enumerate(self.inst_ids):
            if iid < row.shape[0]:
                row[iid] = int(pos[i])

    def drain(self) -> None:
        pass  # a stopping strategy sends nothing more; the router cancels its orders

    def lockstep_pending(self) -> int:
        return sum(r.pending() for r in self.md_r) + sum(r.pending() for r in self.ex_r)

    def lockstep_post(self, clk) -> None:
        from common.runtime import H_PARAMS_PENDING

        clk.timer[self.lockstep_slot] = self.hctl[H_NEXT_TIMER]
        clk.pending[self.lockstep_slot] = self.hctl[H_PARAMS_PENDING]

    def on_stop(self) -> None:
        self.publish_positions()
        self.rv.close()
        if self.farmview is not None:
            self.farmview.close()
        if getattr(self, "_sg_hist_own", False):
            self.sg_hist.close()
        self.hist.close()
        for r in self._rings:
            r.close()
        time.sleep(0)
