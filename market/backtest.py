"""Deterministic event-driven backtest core: one or several strategy instances together against
simulated venues or recorded data, through the same strategy runtime step, ONE risk state (the
live gate's checks and limits) and one fill accounting (market/accounting.py).

Runs in the ``run.py backtest`` process (and the benchmark). ``backtest_loop``,
``strategy_round`` and the kernels below are @njit HOT PATH; the cold driver is
``strategies/backtest.py`` (it knows strategies; this module does not: the runtime's batch step
and each strategy's hooks come in as arguments). ``make_backtest_arrays`` is cold.

The loop, on a simulated clock (no wall clock anywhere, so two runs are bit-identical):

    venue.advance(until the next delivery, the next timer tick of any strategy, or now when
                  risk denials or new parameters wait)
        -> market records (put venue by venue, as the live rings carry them) and exec
           reports received at time t
    sample every strategy's equity (and the total) every ``sample_ns``
    market records into the gate's own L2 book (depth GATE_BOOK_LEVELS, as the live gate's),
        then every touched instrument marked to market (market.risk.gate_apply_md, gate_mark:
        the live gate's own kernels, in its order), which gives the reference prices
    each report: to the risk state (market.risk.on_exec, the gate's code); fills into the books
        of record (market.accounting.apply_fill per strategy x instrument) and the markout
        ring (edge at the current mark); then into the report buffer of the strategy whose id
        it carries
    fills whose markout horizon (+100 ms, +1 s, +10 s after the fill's venue time) has come:
        marked out against the gate's mark at or before it (before the round's market data
        moves the marks for a horizon before now, after it for one at now); at the end of the
        run, the ones beyond it are counted and left out. Nothing of this reaches a strategy,
        the gate or a venue: it only measures.
    for each strategy, in strategy-id order (strategy_round):
        batch(hooks..., ctx, st, p, its venues' md, its reports, t, its hctl)
                                                              # run_strategy_batch
        each intent: market.risk.check_order(...) against the one risk state
            pass -> risk.on_accept, venue.submit(order, t)   # arrives after the order latency
            deny -> an EXEC_REJECT (EFLAG_FROM_RISK) delivered to it with the next batch

This is the order of the live pipeline's sim-time mode round for round (pipeline/lockstep.py),
which is how the suite proves a live run equal to its backtest.

Every strategy sees the market records of its own instruments' venues (each keeps its own books,
``book_levels`` deep), as a live strategy host reads only those venues' rings, and only its own
reports; each runs its own timer (``timer_ms``). Orders of different strategies
meet on the same simulated books (the matching engine's self-trade prevention is per owner, as
a venue's is per account) unless the gate stops them first: its self-trade check looks at the
resting orders of every strategy of the instance, exactly as live. Shared limits (loss,
drawdown, the open-order table) are over the instance; positions, open orders and rates per
strategy (market/risk.py).

Why ``inline="always"`` on the loop and the round: a compiled function that takes dispatchers
(venue kernels, hooks, the batch step) as arguments cannot be cached by numba. The cold driver
generates a small module per strategy set (strategies/backtest_codegen.py) whose cached ``run``
calls ``backtest_loop`` with its globals; inlined at numba-IR level, they stay globals and the
whole loop is cached on disk.

The venue is either ``market.sim.SimVenue`` (our orders trade with the background flow and with
each other, and move the book) or ``market.replayvenue.ReplayVenue`` (recorded data; passive
fills from the queue model ``backtest.queue_model``; our orders never meet each other there).
Both expose advance(state, t_limit, out_md, n_md, out_ex, n_ex, stop) and
submit(state, order, send_ns).

A strategy hook that raises does not end the run: ``run_strategy_batch`` catches it inside
numba, exactly as in the live host, halts that strategy (its orders are cancelled, its fills
still accounted) and the others go on; the report names the hook and the simulated time.

The run can stop and resume (``final=False``): the loop's own state is kept in ``loop``, so the
cold driver can change parameters between two stretches (parameter schedules) and go on as if
the run had never stopped.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit

from common.runtime import H_NEXT_TIMER, H_PARAMS_PENDING  # the runtime's hctl words it reads
from common.tsc import rdtsc
from market.accounting import apply_fill, make_positions, unrealized_ticks
from market.book import L2Book, valid_mid_x2
from market.risk import (GATE_BOOK_LEVELS, R_MARKS, check_order, gate_apply_md, gate_mark,
                         make_risk_state, on_accept, on_exec)
from shm.records import (EFLAG_FROM_RISK, EXEC_ACK, EXEC_DTYPE, EXEC_FILL, EXEC_PARTIAL,
                         EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_NEW, INTENT_REPLACE, LIQ_MAKER,
                         MARKET_DTYPE, ORDER_DTYPE, SIDE_BUY, SIGNAL_DTYPE)
from shm.recordops import deny_order



# Counters, one row per strategy and a last row for the whole run. In a strategy's row every
# counter is its own except md_records and curve_points (the run's); in the last row the loop
# keeps md_records, curve_points, closed_trades and queue_samples (the shared buffers) and
# max_abs_pos (largest net position of one instrument over all strategies); the cold driver
# sums the rest.
COUNTER_NAMES = ("md_records", "exec_reports", "strategy_calls", "intents", "orders_sent",
                 "risk_rejects", "venue_rejects", "orders_acked", "fills", "orders_filled",
                 "qty_sent", "qty_filled", "max_abs_pos", "curve_points", "closed_trades",
                 "queue_samples", "maker_fills", "dropped_denials")
COUNTERS_DTYPE = np.dtype([(n, "i8") for n in COUNTER_NAMES])
# Equity curve samples, one row per strategy (its PnL on the whole initial cash) and the total.
CURVE_DTYPE = np.dtype([("t_ns", "i8"), ("equity", "f8"), ("realized", "f8"),
                        ("unrealized", "f8"), ("fees", "f8"), ("abs_pos", "f8")])
# The loop's own state between two stretches of one run.
LOOP_DTYPE = np.dtype([("now", "i8"), ("next_sample", "i8"), ("n_den", "i8"),
                       ("same_instant", "i8"), ("last_now", "i8")])
MAX_SAME_INSTANT = 8   # denial rounds delivered at one simulated instant before time moves on
ACK_RING = 1024        # per strategy, power of two (direct-mapped on client_order_id)
N_REJECT_CODES = 64    # rejects are counted by REJECT_* code below this
BATCH_MD = 4096
BATCH_EX = 4096
MAX_DENIALS = 256
# Markouts (fill quality): the mid move after each fill, at these horizons of simulated time
# from the fill's venue time; slot 0 is the fill itself (the mark when its report arrives: the
# edge captured). Names as the report shows them.
MARKOUT_HORIZONS_NS = (0, 100_000_000, 1_000_000_000, 10_000_000_000)
MARKOUT_NAMES = ("at_fill", "100ms", "1s", "10s")
MARKOUT_RING = 1 << 16   # fills waiting for their horizons, power of two; beyond: counted
# mko_sum[k, side, liquidity, horizon, :]: side 0 buy / 1 sell, liquidity 0 maker / 1 taker
# (drift: side x (mid at the horizon - mid at the fill), the mid's move since the fill, whose
# mean is minus the adverse selection; its own squares, for its standard error)
MO_N, MO_TICKS, MO_QUOTE, MO_TICKS_SQ, MO_DRIFT, MO_DRIFT_SQ = 0, 1, 2, 3, 4, 5
MO_SUMS = 6
# a fill waiting for its markouts (64 bytes): when, whose, what, the sign of our side and the
# mark (mid x 2) at the fill
MARKOUT_DTYPE = np.dtype([("t_ns", "i8"), ("k", "i8"), ("inst", "i8"), ("sign", "i8"),
                          ("px_ticks", "i8"), ("qty_lots", "i8"), ("taker", "i8"),
                          ("mark0_x2", "i8")], align=True)
# the markout ring's positions and what it left out
# (next_due: the earliest horizon still to come, so a round with none due costs one compare)
MARKOUT_CTL_DTYPE = np.dtype([("tail", "i8"), ("next_due", "i8"), ("overflow", "i8"),
                              ("no_mark", "i8")])
NO_DUE = np.int64(0x7FFFFFFFFFFFFFFF)
# Background events per second per simulated venue in backtests come from
# backtest.event_rate_per_s (default: the calibrated rate of market/calibrated.json, a few
# tenths of an event per second, a 2015 Bitstamp book). sim.event_rate_per_s (20000) is the live
# simulator's rate; a 30-minute, 2-venue backtest at that rate is 72 M matching-engine events.

BacktestArrays = namedtuple("BacktestArrays", [
    "sids",       # int64[N]: strategy id of each strategy, in the order they run
    "k_of_sid",   # int64[max id + 1]: strategy id -> index k (-1: not in this run)
    "hctl",       # int64[N, H_WORDS]: each strategy's runtime words (strategies/host.py)
    "ex",         # EXEC_DTYPE[N, BATCH_EX]: each strategy's reports of this round
    "n_ex",       # int64[N]
    "cnt",        # COUNTERS_DTYPE[N + 1]
    "rej_risk",   # int64[N, N_REJECT_CODES]: risk denials by REJECT_* code
    "rej_venue",  # int64[N, N_REJECT_CODES]: venue rejects (EXEC_REJECT) by REJECT_* code
    "pos",        # POSITION_DTYPE[N, n_inst + 1]: the books of record (market/accounting.py)
    "value",      # float64[n_inst + 1]: quote value of one tick of one lot
    "mark",       # int64[n_inst + 1]: last valid mid (bid + ask, ticks) of the gate's book
                  # (the risk state's own marks, rstate[R_MARKS])
    "turnover",   # float64[N]: traded notional, quote currency
    "curve",      # CURVE_DTYPE[N + 1, n_samples]
    "trades",     # float64[cap]: closed-trade PnLs (quote, after that fill's fee), all strategies
    "trade_k",    # int64[cap]: whose
    "qtimes",     # int64[cap]: time in queue of maker fills (ns), all strategies
    "qtime_k",    # int64[cap]
    "acks",       # int64[N, ACK_RING, 2]: (client_order_id, when it (re)joined a queue)
    "md",         # MARKET_DTYPE[BATCH_MD]: this round's market records, venue by venue
    "mdk",        # MARKET_DTYPE[BATCH_MD]: the round's records of one strategy's venues
    "mdv",        # MARKET_DTYPE[BATCH_MD]: scratch of the venue-by-venue ordering
    "inst_vi",    # int64[n_inst + 1]: venue index of each instrument (-1: none)
    "svm",        # int64[N, n_venues]: 1 where strategy k reads that venue's market data
    "sall",       # int64[N]: 1 if strategy k reads every venue (no filtering needed)
    "touched",    # int64[n_inst + 1]: instruments the round's records touched (gate_mark)
    "exb",        # EXEC_DTYPE[BATCH_EX]: this round's reports (denials first), all strategies
    "denials",    # EXEC_DTYPE[MAX_DENIALS]: risk denials waiting for the next round
    "gpx", "gqty", "gmeta",   # the gate's L2 book (market/book.py)
    "limits",     # market.risk.build_limits(...)
    "rstate",     # market.risk.make_risk_state(limits): one for every strategy
    "loop",       # LOOP_DTYPE[1]
    "tro",        # ORDER_DTYPE[cap]: trace of every intent as the gate decided it (reject_code)
    "tre",        # EXEC_DTYPE[cap]: trace of every venue execution report
    "trn",        # int64[2]: intents, reports traced (beyond cap: counted, not kept)
    "mko_h",      # int64[n_h]: markout horizons, ns after the fill (MARKOUT_HORIZONS_NS)
    "mko_ring",   # MARKOUT_DTYPE[markout_capacity]: fills waiting for a horizon (in time order)
    "mko_head",   # int64[n_h]: per horizon, the first ring entry not yet marked out at it
    "mko_ctl",    # MARKOUT_CTL_DTYPE[1]: tail (entries pushed), overflow, fills with no mark
    "mko_left",   # int64[N, n_h]: fills whose horizon fell beyond the end of the run (left
                  # out of the sums), per strategy
    "mko_sum",    # float64[N, 2, 2, n_h, MO_SUMS]: count, sum of ticks, of quote value, of
                  # ticks^2, of the mid's drift since the fill and its squares, per strategy,
                  # side, liquidity (maker / taker) and horizon
    "hold_t",     # int64[N, n_inst + 1]: when strategy k's position in i last changed (ns)
    "hold",       # float64[N, 2]: HOLD_AREA (sum of |position| x time, lot-seconds) and
                  # HOLD_OPENED (lots opened) per strategy: mean holding time by Little's law
    "kt",         # int64[N, KT_KINDS, ring]: kernel timing (``kernel_timing``): the last
                  # ``ring`` calls of strategy k's step, TSC ticks, per KT_* kind of call (per
                  # market record for KT_MARKET); ring 0 = not timed (the default)
    "ktn",        # int64[N, KT_KINDS, 3]: KTN_CALLS timed, KTN_TICKS (their sum) and
                  # KTN_RECORDS (market records they took), per kind
    "sgk",        # SIGNAL_DTYPE[N, cap]: strategy k's signal records of this round, from the
                  # agents it subscribes to (strategies/signals.py agent_round)
    "n_sg",       # int64[N]
])
HOLD_AREA, HOLD_OPENED = 0, 1
# kinds of a timed step call: with market records (its cost per record), with reports but no
# market records, and with neither (the timer: periodic scans and refits, or new parameters)
KT_MARKET, KT_EXEC, KT_TIMER = 0, 1, 2
KT_KINDS = 3
KT_NAMES = ("market", "exec", "timer")
KTN_CALLS, KTN_TICKS, KTN_RECORDS = 0, 1, 2


def make_backtest_arrays(strategy_ids, instruments, limits, hctls, *, n_samples: int,
                         trade_capacity: int = 1 << 20, venues=None, strategy_venues=None,
                         trace_capacity: int = 0,
                         markout_capacity: int = MARKOUT_RING,
                         kernel_timing: int = 0, signal_capacity: int = 1) -> BacktestArrays:
    """Cold: the loop's arrays for strategies ``strategy_ids`` (run in that order) trading
    ``instruments`` (shm.instruments.Instrument), under ``limits``; ``hctls`` are the
    strategies' runtime words (one ``make_hctl`` array each).

    ``venues``: venue names in the live topology's order (default: as the instruments name
    them first); ``strategy_venues``: for each strategy the venue names whose market data it
    reads, as a live strategy host reads only the rings of its own instruments' venues
    (default: every venue). ``trace_capacity``: how many intents and venue reports to keep in
    order (``tro``, ``tre``; the live = backtest proof compares them with the journal).
    ``markout_capacity``: fills that may wait for their markout horizons at once (a power of
    two; beyond it a fill is counted in ``mko_ctl.overflow`` and not marked out).
    ``kernel_timing``: 0, or how many of the last step calls of each strategy to keep timed,
    per kind of call (a power of two; ``kt``): two TSC reads around every call, for ``run.py
    bench strategies``. ``signal_capacity``: signal records one round may bring a strategy
    (every record one publish of all the run's agents writes)."""
    if markout_capacity <= 0 or markout_capacity & (markout_capacity - 1):
        raise ValueError(f"markout_capacity {markout_capacity}: a power of two")
    if kernel_timing < 0 or kernel_timing & (kernel_timing - 1):
        raise ValueError(f"kernel_timing {kernel_timing}: 0 or a power of two")
    sids = np.array(strategy_ids, dtype=np.int64)
    n = len(sids)
    if n == 0:
        raise ValueError("a backtest needs at least one strategy")
    if len(set(sids.tolist())) != n or sids.min() <= 0:
        raise ValueError(f"strategy ids {sids.tolist()} must be distinct and > 0")
    k_of_sid = np.full(int(sids.max()) + 1, -1, dtype=np.int64)
    k_of_sid[sids] = np.arange(n)
    n_inst = max(i.instrument_id for i in instruments)
    value = np.zeros(n_inst + 1)
    for inst in instruments:
        value[inst.instrument_id] = float(inst.tick_size * inst.lot_size)
    pos = np.zeros((n, n_inst + 1), dtype=make_positions(0).dtype)
    gate = L2Book(n_inst, GATE_BOOK_LEVELS)
    if venues is None:
        venues = list(dict.fromkeys(i.venue for i in instruments))
    venues = list(venues)
    inst_vi = np.full(n_inst + 1, -1, np.int64)
    for inst in instruments:
        inst_vi[inst.instrument_id] = venues.index(inst.venue)
    svm = np.ones((n, max(1, len(venues))), np.int64)
    if strategy_venues is not None:
        if len(strategy_venues) != n:
            raise ValueError(f"strategy_venues: {len(strategy_venues)} entries for {n} "
                             "strategies")
        svm[:] = 0
        for k, names in enumerate(strategy_venues):
            for v in names:
                svm[k, venues.index(v)] = 1
    sall = (svm.min(axis=1) > 0).astype(np.int64)
    rstate = make_risk_state(limits)
    marks = rstate[R_MARKS]
    if marks.shape[0] < n_inst + 1:
        raise ValueError(f"limits cover {marks.shape[0] - 1} instruments, the run has {n_inst}")
    return BacktestArrays(
        sids, k_of_sid, np.ascontiguousarray(np.stack(hctls)),
        np.zeros((n, BATCH_EX), dtype=EXEC_DTYPE), np.zeros(n, np.int64),
        np.zeros(n + 1, dtype=COUNTERS_DTYPE),
        np.zeros((n, N_REJECT_CODES), np.int64), np.zeros((n, N_REJECT_CODES), np.int64),
        pos, value, marks, np.zeros(n),
        np.zeros((n + 1, n_samples), dtype=CURVE_DTYPE),
        np.zeros(trade_capacity), np.zeros(trade_capacity, np.int64),
        np.zeros(trade_capacity, np.int64), np.zeros(trade_capacity, np.int64),
        np.zeros((n, ACK_RING, 2), np.int64),
        np.zeros(BATCH_MD, dtype=MARKET_DTYPE), np.zeros(BATCH_MD, dtype=MARKET_DTYPE),
        np.zeros(BATCH_MD, dtype=MARKET_DTYPE), inst_vi, svm, sall, np.zeros(n_inst + 1, np.int64),
        np.zeros(BATCH_EX, dtype=EXEC_DTYPE),
        np.zeros(MAX_DENIALS, dtype=EXEC_DTYPE), *gate.arrays, limits,
        rstate, np.zeros(1, dtype=LOOP_DTYPE),
        np.zeros(trace_capacity, dtype=ORDER_DTYPE), np.zeros(trace_capacity, dtype=EXEC_DTYPE),
        np.zeros(2, np.int64),
        np.array(MARKOUT_HORIZONS_NS, np.int64), np.zeros(markout_capacity, dtype=MARKOUT_DTYPE),
        np.zeros(len(MARKOUT_HORIZONS_NS), np.int64), _markout_ctl(),
        np.zeros((n, len(MARKOUT_HORIZONS_NS)), np.int64),
        np.zeros((n, 2, 2, len(MARKOUT_HORIZONS_NS), MO_SUMS)),
        np.zeros((n, n_inst + 1), np.int64), np.zeros((n, 2)),
        np.zeros((n, KT_KINDS, kernel_timing), np.int64), np.zeros((n, KT_KINDS, 3), np.int64),
        np.zeros((n, max(1, int(signal_capacity))), dtype=SIGNAL_DTYPE), np.zeros(n, np.int64))


def _markout_ctl():
    ctl = np.zeros(1, dtype=MARKOUT_CTL_DTYPE)
    ctl[0]["next_due"] = NO_DUE
    return ctl


def start_loop(G: BacktestArrays, t_start: int) -> None:
    """Cold: (re)start the loop's clock at ``t_start`` with nothing pending."""
    lp = G.loop[0]
    lp["now"] = t_start
    lp["next_sample"] = t_start
    lp["n_den"] = 0
    lp["same_instant"] = 0
    lp["last_now"] = -1


# ---- markouts -------------------------------------------------------------------------------
# Why a ring and sums: the report needs means and standard errors per strategy, side and
# horizon, not the fills themselves; a fill costs one 64-byte push and, per horizon, one add when
# the clock passes it. Fills come in time order of their reports, which is (up to report
# latency differences of one venue) the order of their venue times, so one head per horizon
# walks the ring. Marks are the gate's (G.mark: mid x 2 in ticks, the last valid one).
@njit(cache=True, _nrt=False)
def _markout_add(G, r, h, mark_x2):
    """Fill r marked out at horizon h against the mark mark_x2 (mid x 2, ticks): positive =
    the mid went our way (above our buy, below our sell)."""
    ticks = 0.5 * float(r.sign * (mark_x2 - 2 * r.px_ticks))
    drift = 0.5 * float(r.sign * (mark_x2 - r.mark0_x2))
    quote = ticks * float(r.qty_lots) * G.value[r.inst]
    a = G.mko_sum[r.k, 0 if r.sign > 0 else 1, r.taker, h]
    a[MO_N] += 1.0
    a[MO_TICKS] += ticks
    a[MO_QUOTE] += quote
    a[MO_TICKS_SQ] += ticks * ticks
    a[MO_DRIFT] += drift
    a[MO_DRIFT_SQ] += drift * drift


@njit(cache=True, _nrt=False)
def _markout_push(G, k, e):
    """A fill of strategy k: its edge at the current mark now, its horizons later."""
    i = np.int64(e.instrument_id)
    ctl = G.mko_ctl[0]
    if i <= 0 or i >= G.mark.shape[0] or G.mark[i] <= 0:
        ctl.no_mark += 1   # no valid mid yet: nothing to measure against
        return
    tail = ctl.tail
    ring = G.mko_ring
    if tail - G.mko_head[G.mko_head.shape[0] - 1] >= ring.shape[0]:
        ctl.overflow += 1   # the longest horizon's head is the oldest entry still needed
        return
    r = ring[tail & (ring.shape[0] - 1)]
    r.t_ns = e.venue_ts_ns
    r.k = k
    r.inst = i
    r.sign = 1 if e.side == SIDE_BUY else -1
    r.px_ticks = e.px_ticks
    r.qty_lots = e.qty_lots
    r.taker = 0 if e.liquidity == LIQ_MAKER else 1
    r.mark0_x2 = G.mark[i]
    ctl.tail = tail + 1
    due = r.t_ns + G.mko_h[1]
    if due < ctl.next_due:
        ctl.next_due = due
    _markout_add(G, r, 0, G.mark[i])


@njit(cache=True, _nrt=False)
def _markouts_due(G, now, before_marks):
    """Mark out every waiting fill whose horizon has come: due < now when called before this
    round's market data moves the marks (their mark is the last one before the horizon), due
    <= now after it. The mid "at" a horizon is the last mark at or before it."""
    ctl = G.mko_ctl[0]
    tail = ctl.tail
    ring = G.mko_ring
    mask = ring.shape[0] - 1
    next_due = NO_DUE
    for h in range(1, G.mko_h.shape[0]):
        head = G.mko_head[h]
        hz = G.mko_h[h]
        while head < tail:
            r = ring[head & mask]
            due = r.t_ns + hz
            if due > now or (before_marks and due == now):
                if due < next_due:
                    next_due = due
                break
            _markout_add(G, r, h, G.mark[r.inst])
            head += 1
        G.mko_head[h] = head
    ctl.next_due = next_due


@njit(cache=True, _nrt=False)
def _markouts_end(G, t_end):
    """At the end of the run: what is due by t_end is marked out, the rest left out
    (counted per horizon)."""
    _markouts_due(G, t_end, False)
    tail = G.mko_ctl[0].tail
    ring = G.mko_ring
    for h in range(1, G.mko_h.shape[0]):
        for j in range(G.mko_head[h], tail):
            G.mko_left[ring[j & (ring.shape[0] - 1)].k, h] += 1
        G.mko_head[h] = tail
    G.mko_ctl[0].next_due = NO_DUE


# ---- books of record ----------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _account(G, k, e, now):
    """One fill of strategy k into its position (market.accounting.apply_fill); a fill that
    reduces the position closes a trade: its PnL (closed_pnl x tick value - this fill's fee)
    goes to the shared trade buffer. The position held until ``now`` and the lots this fill
    opens go to the holding-time sums (G.hold)."""
    i = np.int64(e.instrument_id)
    if i <= 0 or i >= G.value.shape[0]:
        return
    p = G.pos[k, i]
    before = p.pos
    reduces = before != 0.0 and ((before > 0.0) != (e.side == SIDE_BUY))
    apply_fill(p, e.side, e.px_ticks, e.qty_lots, e.fee_e9)
    G.hold[k, HOLD_AREA] += abs(before) * (now - G.hold_t[k, i]) / 1e9
    G.hold_t[k, i] = now
    after = p.pos
    if before == 0.0 or (before > 0.0) != (after > 0.0):
        G.hold[k, HOLD_OPENED] += abs(after)       # from flat, or through zero
    elif abs(after) > abs(before):
        G.hold[k, HOLD_OPENED] += abs(after) - abs(before)
    value = G.value[i]
    G.turnover[k] += float(e.px_ticks) * float(e.qty_lots) * value
    c = G.cnt[k]
    ap = abs(np.int64(p.pos))
    if ap > c.max_abs_pos:
        c.max_abs_pos = ap
    net = 0.0
    for j in range(G.pos.shape[0]):
        net += G.pos[j, i].pos
    tot = G.cnt[G.cnt.shape[0] - 1]
    ap = abs(np.int64(net))
    if ap > tot.max_abs_pos:
        tot.max_abs_pos = ap
    if reduces:
        n = tot.closed_trades
        if n < G.trades.shape[0]:
            G.trades[n] = p.closed_pnl * value - e.fee_e9 / 1e9
            G.trade_k[n] = k
            tot.closed_trades = n + 1
        c.closed_trades += 1


@njit(cache=True, _nrt=False)
def _curve_row(row, t, initial_cash, realized, unreal, fees, abs_pos):
    row.t_ns = t
    row.equity = initial_cash + realized + unreal - fees
    row.realized = realized
    row.unrealized = unreal
    row.fees = fees
    row.abs_pos = abs_pos


@njit(cache=True, _nrt=False)
def _sample(G, t, initial_cash):
    """One equity point per strategy and for the total (sum over strategies; inventory = sum
    over instruments of |net position|)."""
    tot = G.cnt[G.cnt.shape[0] - 1]
    n = tot.curve_points
    if n >= G.curve.shape[1]:
        return
    n_strat = G.pos.shape[0]
    t_real = 0.0
    t_fees = 0.0
    t_unreal = 0.0
    for k in range(n_strat):
        realized = 0.0
        fees = 0.0
        unreal = 0.0
        abs_pos = 0.0
        for i in range(1, G.pos.shape[1]):
            p = G.pos[k, i]
            realized += p.realized * G.value[i]
            fees += p.fees
            unreal += unrealized_ticks(p, G.mark[i]) * G.value[i]
            abs_pos += abs(p.pos)
        _curve_row(G.curve[k, n], t, initial_cash, realized, unreal, fees, abs_pos)
        t_real += realized
        t_fees += fees
        t_unreal += unreal
    net_abs = 0.0
    for i in range(1, G.pos.shape[1]):
        net = 0.0
        for k in range(n_strat):
            net += G.pos[k, i].pos
        net_abs += abs(net)
    _curve_row(G.curve[n_strat, n], t, initial_cash, t_real, t_unreal, t_fees, net_abs)
    tot.curve_points = n + 1


@njit(cache=True, _nrt=False)
def _on_reports(G, n_ex, now):
    """This round's reports (G.exb[:n_ex]): the risk state, the books of record, counters,
    then each into the report buffer of the strategy whose id it carries."""
    limits, rstate = G.limits, G.rstate
    for j in range(n_ex):
        e = G.exb[j]
        if (e.flags & EFLAG_FROM_RISK) == 0:
            on_exec(limits, rstate, e, now)
            t = G.trn[1]
            if t < G.tre.shape[0]:
                G.tre[t] = e
            G.trn[1] = t + 1
        sid = np.int64(e.strategy_id)
        k = G.k_of_sid[sid] if sid < G.k_of_sid.shape[0] else -1
        if k < 0:
            continue   # not one of ours (venues report only orders we sent: unreachable)
        m = G.n_ex[k]
        G.ex[k, m] = e
        G.n_ex[k] = m + 1
        c = G.cnt[k]
        c.exec_reports += 1
        kind = e.kind
        if kind == EXEC_ACK or kind == EXEC_REPLACE_ACK:
            if kind == EXEC_ACK:
                c.orders_acked += 1
            # when the order (re)joined a queue: time in queue starts there. Client order ids
            # are per-strategy counters, so the low bits index a direct-mapped table.
            slot = e.client_order_id & (G.acks.shape[1] - 1)
            G.acks[k, slot, 0] = e.client_order_id
            G.acks[k, slot, 1] = e.venue_ts_ns
        elif kind == EXEC_PARTIAL or kind == EXEC_FILL:
            c.fills += 1
            c.qty_filled += e.qty_lots
            if e.cum_qty_lots == e.qty_lots:
                c.orders_filled += 1
            _account(G, k, e, now)
            _markout_push(G, k, e)
            if e.liquidity == LIQ_MAKER:
                c.maker_fills += 1
                slot = e.client_order_id & (G.acks.shape[1] - 1)
                tot = G.cnt[G.cnt.shape[0] - 1]
                nq = tot.queue_samples
                if G.acks[k, slot, 0] == e.client_order_id and nq < G.qtimes.shape[0]:
                    G.qtimes[nq] = e.venue_ts_ns - G.acks[k, slot, 1]
                    G.qtime_k[nq] = k
                    tot.queue_samples = nq + 1
                    c.queue_samples += 1
        elif kind == EXEC_REJECT and (e.flags & EFLAG_FROM_RISK) == 0:
            c.venue_rejects += 1
            if e.reject_code < G.rej_venue.shape[1]:
                G.rej_venue[k, e.reject_code] += 1


@njit(cache=True, _nrt=False)
def _venue_order(md, n, inst_vi, tmp, n_venues):
    """md[0:n] venue by venue (venue-index order, time order kept within each), as the live
    venue stage publishes them to one ring per venue and every reader takes its rings in that
    order; records of no venue are dropped, as no live ring carries them. Returns the count.
    (Plain arrays: called every round.)"""
    first = -2
    mixed = False
    for j in range(n):
        i = np.int64(md[j].instrument_id)
        v = inst_vi[i] if 0 <= i < inst_vi.shape[0] else -1
        if j == 0:
            first = v
        elif v != first:
            mixed = True
            break
    if not mixed and first >= 0:
        return n   # one venue: already in order (every round but the rare tie)
    m = 0
    for v in range(n_venues):
        for j in range(n):
            i = np.int64(md[j].instrument_id)
            if 0 <= i < inst_vi.shape[0] and inst_vi[i] == v:
                tmp[m] = md[j]
                m += 1
    for j in range(m):
        md[j] = tmp[j]
    return m


@njit(cache=True, _nrt=False)
def _own_md(md, n, inst_vi, svm_k, out):
    """The records of md[0:n] on the venues strategy k reads (svm_k), into out; the count."""
    m = 0
    for j in range(n):
        i = np.int64(md[j].instrument_id)
        if 0 <= i < inst_vi.shape[0]:
            v = inst_vi[i]
            if v >= 0 and svm_k[v] != 0:
                out[m] = md[j]
                m += 1
    return m


# ---- one strategy's turn in a round -------------------------------------------------------
@njit(cache=True, _nrt=False)
def _kt_note(G, k, ticks, n_md, n_ex):
    """One timed step call of strategy k (``ticks`` TSC ticks) into its ring and sums."""
    kind = KT_MARKET if n_md > 0 else (KT_EXEC if n_ex > 0 else KT_TIMER)
    n = G.ktn[k, kind, KTN_CALLS]
    G.kt[k, kind, n & (G.kt.shape[2] - 1)] = ticks // n_md if n_md > 0 else ticks
    G.ktn[k, kind, KTN_CALLS] = n + 1
    G.ktn[k, kind, KTN_TICKS] += ticks
    G.ktn[k, kind, KTN_RECORDS] += n_md


@njit(inline="always")
def strategy_round(step, submit, k, ctx, st, p, vs, G, n_md, now, n_den):
    """Strategy k's batch of this round, if it has market records, reports, a due timer or new
    parameters, and its intents through the gate: approved ones to the venue, denied ones
    into G.denials (delivered to it with the next round). Returns the new number of denials.

    ``step``: the strategy kind's cached one-batch step (strategies/backtest_codegen.py
    ``hosted_step_for``: strategies.host.run_strategy_batch with its hooks), called, not
    inlined, so that a kind compiles once for every set of strategies it runs in."""
    hctl = G.hctl[k]
    n_ex = G.n_ex[k]
    md = G.md
    if G.sall[k] == 0:   # only its own venues' records, as a live host reads its rings
        md = G.mdk
        n_md = _own_md(G.md, n_md, G.inst_vi, G.svm[k], md)
    n_sg = G.n_sg[k]
    if (n_md > 0 or n_ex > 0 or n_sg > 0 or now >= hctl[H_NEXT_TIMER]
            or hctl[H_PARAMS_PENDING] != 0):
        c = G.cnt[k]
        c.strategy_calls += 1
        # signal records: what the agents it subscribes to published this round (their turn
        # came first, strategies/signals.py agent_round), as live from their rings
        timed = G.kt.shape[2] > 0
        t0 = rdtsc() if timed else np.int64(0)
        kout = step(ctx, st, p, md, n_md, G.ex[k], n_ex, G.sgk[k], n_sg, now, hctl)
        if timed:
            _kt_note(G, k, rdtsc() - t0, n_md, n_ex)
        G.n_ex[k] = 0
        G.n_sg[k] = 0
        c.intents += kout
        out = ctx.out
        n_inst = G.mark.shape[0]
        for j in range(kout):
            o = out[j]
            i = np.int64(o.instrument_id)
            ref = valid_mid_x2(G.gpx, G.gmeta, i) if i > 0 and i < n_inst else 0
            code = check_order(G.limits, G.rstate, o, ref, now)
            o.send_ts_ns = now      # as the live gate stamps every decision
            o.reject_code = code
            t = G.trn[0]
            if t < G.tro.shape[0]:
                G.tro[t] = o
            G.trn[0] = t + 1
            if code == 0:
                on_accept(G.limits, G.rstate, o, now)
                submit(vs, o, now)
                c.orders_sent += 1
                if o.kind == INTENT_NEW or o.kind == INTENT_REPLACE:
                    c.qty_sent += o.qty_lots
            elif n_den < G.denials.shape[0]:
                c.risk_rejects += 1
                if code < G.rej_risk.shape[1]:
                    G.rej_risk[k, code] += 1
                deny_order(G.denials[n_den], o, code, now)
                n_den += 1
            else:
                c.dropped_denials += 1
    return n_den


# ---- the loop -----------------------------------------------------------------------------
@njit(inline="always")
def backtest_loop(advance, submit, step_all, vs, S, G, t_stop, t_end, sample_ns, initial_cash):
    """Run until ``t_stop`` (simulated ns); at ``t_stop == t_end`` the run ends (denials still
    waiting are dropped, the last equity point is taken), before it the loop's state is kept
    in G.loop for the next stretch. ``step_all(vs, S, G, n_md, now, n_den)`` runs
    ``strategy_round`` for every strategy (S: a tuple of (ctx, st, p), one per strategy), in
    order, and returns the number of denials. Timer ticks fall on each strategy's own times."""
    lp = G.loop[0]
    now = lp.now
    next_sample = lp.next_sample
    n_den = lp.n_den
    same_instant = lp.same_instant   # rounds at one simulated time: a strategy that answers
    last_now = lp.last_now           # every denial with another must not stop the clock
    n_strat = G.sids.shape[0]
    tot = G.cnt[n_strat]
    while True:
        next_timer = np.int64(0x7FFFFFFFFFFFFFFF)
        pending = False
        for k in range(n_strat):
            nt = G.hctl[k, H_NEXT_TIMER]
            if nt < next_timer:
                next_timer = nt
            if G.hctl[k, H_PARAMS_PENDING] != 0:
                pending = True
        # Risk denials are answered at once (the gate is in-process): deliver them now, for
        # at most MAX_SAME_INSTANT rounds; after that they travel with the next event. New
        # parameters are applied at once too (the next batch runs on_params first).
        if (n_den > 0 and same_instant < MAX_SAME_INSTANT) or pending:
            t_lim = now
        else:
            t_lim = min(t_stop, max(next_timer, now))   # -1: not started, the next event
        for j in range(n_den):
            G.exb[j] = G.denials[j]
        n_md, n_ex, t = advance(vs, t_lim, G.md, 0, G.exb, n_den, True)
        n_den = 0
        if n_md > 0:
            n_md = _venue_order(G.md, n_md, G.inst_vi, G.mdv, G.svm.shape[1])
        now = t
        if now == last_now:
            same_instant += 1
        else:
            same_instant = 0
            last_now = now
        while next_sample <= now:
            _sample(G, next_sample, initial_cash)
            next_sample += sample_ns
        tot.md_records += n_md
        mko = G.mko_ctl[0]
        if n_md > 0:   # the live gate's order: market data and marks, then reports
            if now > mko.next_due:
                _markouts_due(G, now, True)
            gate_apply_md(G.gpx, G.gqty, G.gmeta, G.md, n_md, G.touched)
            gate_mark(G.limits, G.rstate, G.gpx, G.gmeta, G.touched)
        if n_ex > 0:
            _on_reports(G, n_ex, now)
        if now >= mko.next_due:
            _markouts_due(G, now, False)
        n_den = step_all(vs, S, G, n_md, now, n_den)
        if now >= t_stop and (n_den == 0 or same_instant >= MAX_SAME_INSTANT):
            break
    if t_stop >= t_end:
        for j in range(n_den):
            kd = G.k_of_sid[np.int64(G.denials[j].strategy_id)]
            G.cnt[kd].dropped_denials += 1
        n_den = 0
        _sample(G, t_end, initial_cash)
        _markouts_end(G, t_end)
    lp.now = now
    lp.next_sample = next_sample
    lp.n_den = n_den
    lp.same_instant = same_instant
    lp.last_now = last_now
