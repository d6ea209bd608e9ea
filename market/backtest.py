"""Deterministic event-driven backtest: one strategy instance against simulated venues or
recorded data, through the same host step and the same risk checks as the live pipeline.

Runs in the ``run.py backtest`` process (and the benchmark). ``backtest_loop`` and the
accounting kernels are @njit HOT PATH; ``run_backtest`` is the cold driver.

The loop, on a simulated clock (no wall clock anywhere, so two runs are bit-identical):

    venue.advance(until the next delivery, or the next timer tick)
        -> market records and exec reports received by the strategy at time t
    account the fills (PnL, fees, inventory, time in queue); feed every report to the risk
    state (market.risk.on_exec, the gate's code)
    strategies.host.run_strategy_batch(kernel, ...)       # books, bookkeeping, guarded kernel
    for each intent: market.risk.check_order(...)         # the gate's code, reference price
                                                          # valid_mid_x2 as the live gate's
        pass -> risk.on_accept, venue.submit(order, t)    # arrives after the order latency
        deny -> an EXEC_REJECT (EFLAG_FROM_RISK) delivered with the next batch
    sample equity every ``sample_ns``

The venue is either ``market.sim.SimVenue`` (our orders trade with the background flow and
move the book) or ``market.replayvenue.ReplayVenue`` (recorded data; passive fills from the
queue model ``backtest.queue_model``). Both expose the same two kernels
(advance(state, t_limit, out_md, n_md, out_ex, n_ex, stop) and submit(state, order, send_ns)),
passed to ``backtest_loop`` as first-class functions like the strategy kernel.

A strategy kernel that raises does not end the run: ``run_strategy_batch`` catches it inside
numba, exactly as in the live host, counts it (``kernel_errors`` in the counters and the
report; ``intents_discarded``) and the run goes on with the next batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from market.book import L2Book, valid_mid_x2
from market.risk import build_limits, check_order, make_risk_state, mark_to_market, on_accept, \
    on_exec
from shm.records import (EFLAG_FROM_RISK, EXEC_ACK, EXEC_DTYPE, EXEC_FILL, EXEC_PARTIAL,
                         EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_NEW, INTENT_REPLACE, LIQ_MAKER,
                         MARKET_DTYPE, ORDER_DTYPE, SIDE_BUY)
from shm.recordops import deny_order
from strategies.host import H_DISCARDED, H_KERNEL_ERRORS, make_hctl, run_strategy_batch

# acct[inst, A_*] float64
A_POS = 0          # lots
A_COST = 1         # signed ticks x lots of the open position (average cost)
A_REALIZED = 2     # quote currency
A_FEES = 3         # quote currency
A_VALUE = 4        # quote value of one tick x one lot
A_MID_X2 = 5       # last mark (bid + ask, ticks)
A_WORDS = 6
# cnt[C_*] int64 counters
C_MD = 0
C_EX = 1
C_CALLS = 2
C_INTENTS = 3
C_SENT = 4
C_RISK_REJECTS = 5
C_VENUE_REJECTS = 6
C_ACKS = 7
C_FILLS = 8
C_ORDERS_FILLED = 9
C_QTY_SENT = 10
C_QTY_FILLED = 11
C_MAX_ABS_POS = 12
C_N_CURVE = 13
C_N_TRADES = 14
C_N_QUEUE = 15
C_MAKER_FILLS = 16
C_DROPPED_INTENTS = 17
C_WORDS = 18
COUNTER_NAMES = ("md_records", "exec_reports", "strategy_calls", "intents", "orders_sent",
                 "risk_rejects", "venue_rejects", "orders_acked", "fills", "orders_filled",
                 "qty_sent", "qty_filled", "max_abs_pos", "curve_points", "closed_trades",
                 "queue_samples", "maker_fills", "dropped_denials")
MAX_SAME_INSTANT = 8   # denial rounds delivered at one simulated instant before time moves on
ACK_RING = 1024   # power of two (direct-mapped on client_order_id)
# Background events per second per simulated venue in backtests come from
# backtest.event_rate_per_s (default 1000). sim.event_rate_per_s (20000) is the live
# simulator's rate; a 30-minute, 2-venue backtest at that rate is 72 M matching-engine events.


@njit(cache=True, _nrt=False)
def _account_fill(acct, e, trades, cnt):
    """Average-cost accounting of one fill; a fill that reduces a position closes a trade
    whose PnL (realized - this fill's fee) goes to trades[]."""
    i = e.instrument_id
    q = float(e.qty_lots)
    signed = q if e.side == SIDE_BUY else -q
    px = float(e.px_ticks)
    value = acct[i, A_VALUE]
    fee = e.fee_e9 * 1e-9
    acct[i, A_FEES] += fee
    pos = acct[i, A_POS]
    if pos == 0.0 or (pos > 0.0) == (signed > 0.0):
        acct[i, A_COST] += signed * px
        acct[i, A_POS] = pos + signed
        return
    closing = min(q, abs(pos))
    avg = acct[i, A_COST] / pos
    direction = 1.0 if pos > 0.0 else -1.0
    pnl = closing * (px - avg) * direction * value
    acct[i, A_REALIZED] += pnl
    acct[i, A_COST] -= avg * closing * direction
    acct[i, A_POS] = pos + signed
    if q > closing:   # flipped: the rest opens a new position at this price
        acct[i, A_COST] = (signed + closing * direction) * px
    if abs(acct[i, A_POS]) < 0.5:
        acct[i, A_POS] = 0.0
        acct[i, A_COST] = 0.0
    n = cnt[C_N_TRADES]
    if n < trades.shape[0]:
        trades[n] = pnl - fee
        cnt[C_N_TRADES] = n + 1


@njit(cache=True, _nrt=False)
def _equity_parts(acct):
    realized = 0.0
    fees = 0.0
    unreal = 0.0
    abs_pos = 0.0
    for i in range(1, acct.shape[0]):
        realized += acct[i, A_REALIZED]
        fees += acct[i, A_FEES]
        pos = acct[i, A_POS]
        if pos != 0.0 and acct[i, A_MID_X2] > 0.0:
            unreal += (pos * acct[i, A_MID_X2] * 0.5 - acct[i, A_COST]) * acct[i, A_VALUE]
        abs_pos += abs(pos)
    return realized, fees, unreal, abs_pos


@njit(cache=True, _nrt=False)
def _sample(acct, curve, cnt, t, initial_cash):
    n = cnt[C_N_CURVE]
    if n >= curve.shape[0]:
        return
    realized, fees, unreal, abs_pos = _equity_parts(acct)
    curve[n, 0] = t
    curve[n, 1] = initial_cash + realized + unreal - fees
    curve[n, 2] = realized
    curve[n, 3] = unreal
    curve[n, 4] = fees
    curve[n, 5] = abs_pos
    cnt[C_N_CURVE] = n + 1


@njit(cache=True, _nrt=False)
def _on_reports(acct, ex, n_ex, trades, qtimes, acks, cnt, limits, rstate, now):
    for j in range(n_ex):
        e = ex[j]
        if (e.flags & EFLAG_FROM_RISK) == 0:
            on_exec(limits, rstate, e, now)
        kind = e.kind
        if kind == EXEC_ACK or kind == EXEC_REPLACE_ACK:
            if kind == EXEC_ACK:
                cnt[C_ACKS] += 1
            # when the order (re)joined a queue: time in queue starts there. Client order ids
            # are per-strategy counters, so the low bits index a direct-mapped table.
            slot = e.client_order_id & (acks.shape[0] - 1)
            acks[slot, 0] = e.client_order_id
            acks[slot, 1] = e.venue_ts_ns
        elif kind == EXEC_PARTIAL or kind == EXEC_FILL:
            cnt[C_FILLS] += 1
            cnt[C_QTY_FILLED] += e.qty_lots
            if e.cum_qty_lots == e.qty_lots:
                cnt[C_ORDERS_FILLED] += 1
            _account_fill(acct, e, trades, cnt)
            ap = abs(np.int64(acct[e.instrument_id, A_POS]))
            if ap > cnt[C_MAX_ABS_POS]:
                cnt[C_MAX_ABS_POS] = ap
            if e.liquidity == LIQ_MAKER:
                cnt[C_MAKER_FILLS] += 1
                slot = e.client_order_id & (acks.shape[0] - 1)
                nq = cnt[C_N_QUEUE]
                if acks[slot, 0] == e.client_order_id and nq < qtimes.shape[0]:
                    qtimes[nq] = e.venue_ts_ns - acks[slot, 1]
                    cnt[C_N_QUEUE] = nq + 1
        elif kind == EXEC_REJECT and (e.flags & EFLAG_FROM_RISK) == 0:
            cnt[C_VENUE_REJECTS] += 1


@njit(cache=False, _nrt=False)
def backtest_loop(advance, submit, vs, kernel, sstate, px, qty, meta, limits, rstate, acct,
                  curve, trades, qtimes, acks, cnt, md_buf, ex_buf, out, denials, hctl,
                  t_start, t_end, timer_ns, sample_ns, initial_cash):
    """Run until t_end (simulated ns). Specialised per (venue kernels, strategy kernel)."""
    now = t_start
    next_timer = t_start + timer_ns
    next_sample = t_start
    n_den = 0
    n_inst = acct.shape[0]
    same_instant = 0   # rounds at one simulated time: a strategy that answers every denial
    last_now = -1      # with another denied intent must not stop the clock (livelock)
    while True:
        # Risk denials are answered at once (the gate is in-process): deliver them now, for
        # at most MAX_SAME_INSTANT rounds; after that they travel with the next event.
        if n_den > 0 and same_instant < MAX_SAME_INSTANT:
            t_lim = now
        else:
            t_lim = min(t_end, next_timer)
        for j in range(n_den):
            ex_buf[j] = denials[j]
        n_md, n_ex, t = advance(vs, t_lim, md_buf, 0, ex_buf, n_den, True)
        n_den = 0
        now = t
        if now == last_now:
            same_instant += 1
        else:
            same_instant = 0
            last_now = now
        while next_sample <= now and next_sample <= t_end:
            _sample(acct, curve, cnt, next_sample, initial_cash)
            next_sample += sample_ns
        cnt[C_MD] += n_md
        cnt[C_EX] += n_ex
        if n_ex > 0:
            _on_reports(acct, ex_buf, n_ex, trades, qtimes, acks, cnt, limits, rstate, now)
        tick = now >= next_timer
        if n_md > 0 or n_ex > 0 or tick:
            cnt[C_CALLS] += 1
            k = run_strategy_batch(kernel, sstate, px, qty, meta, md_buf, n_md, ex_buf, n_ex,
                                   now, out, hctl)
            if n_md > 0:
                for j in range(n_md):
                    i = md_buf[j].instrument_id
                    if i > 0 and i < n_inst:
                        m = valid_mid_x2(px, meta, i)   # marks as the live gate: valid books
                        if m > 0 and m != acct[i, A_MID_X2]:
                            acct[i, A_MID_X2] = m
                            mark_to_market(limits, rstate, i, m)
            cnt[C_INTENTS] += k
            for j in range(k):
                o = out[j]
                i = o.instrument_id
                ref = valid_mid_x2(px, meta, i) if i > 0 and i < n_inst else 0
                code = check_order(limits, rstate, o, ref, now)
                if code == 0:
                    on_accept(limits, rstate, o, now)
                    o.send_ts_ns = now
                    submit(vs, o, now)
                    cnt[C_SENT] += 1
                    if o.kind == INTENT_NEW or o.kind == INTENT_REPLACE:
                        cnt[C_QTY_SENT] += o.qty_lots
                elif n_den < denials.shape[0]:
                    cnt[C_RISK_REJECTS] += 1
                    deny_order(denials[n_den], o, code, now)
                    n_den += 1
                else:
                    cnt[C_DROPPED_INTENTS] += 1
        if tick:
            next_timer += timer_ns
        if now >= t_end and (n_den == 0 or same_instant >= MAX_SAME_INSTANT):
            cnt[C_DROPPED_INTENTS] += n_den
            break
    _sample(acct, curve, cnt, t_end, initial_cash)


# ------------------------------------------------------------------------------------------
# Cold driver
# ------------------------------------------------------------------------------------------
@dataclass
class BacktestResult:
    name: str
    kind: str
    source: str                  # "sim" or the record file
    report: dict
    curve: dict                  # t_ns, equity, realized, unrealized, fees, abs_pos arrays
    trade_pnls: np.ndarray
    queue_times_ns: np.ndarray
    counters: dict
    venue_counters: dict = field(default_factory=dict)
    strategy_state: tuple = ()   # the strategy's state tuple at the end (ctl, orders, ...)


def _strategy_config(cfg, which: str | None):
    enabled = [s for s in cfg.strategies if s.enabled]
    if which is None:
        if not enabled:
            raise ValueError(f"{cfg.source}: no enabled [[strategies]] entry to backtest")
        return enabled[0]
    for s in cfg.strategies:
        if s.name == which:
            return s
    for s in enabled:
        if s.kind == which:
            return s
    names = ", ".join(f"{s.name} ({s.kind})" for s in cfg.strategies) or "none"
    raise ValueError(f"no strategy named or of kind {which!r} in {cfg.source} (have: {names})")


def run_backtest(cfg, strategy: str | None = None, data=None, *, duration_s: float | None = None,
                 seed: int | None = None, event_rate_per_s: float | None = None,
                 queue_model: str | None = None, timer_ms: float = 100.0,
                 sample_ms: float = 100.0) -> BacktestResult:
    """One strategy instance (by name or kind; default: the first enabled) against the
    simulated venues of ``cfg`` for ``duration_s`` (default cfg.sim.duration_s), or against
    the record file ``data`` (its instruments; the strategy's instruments are taken from the
    file by key, else in file order)."""
    from shm.instruments import InstrumentTable
    from strategies.registry import get_strategy_class

    sc = _strategy_config(cfg, strategy)
    if data is None:
        from market.sim import SimVenue, sim_advance_state, sim_submit_state

        table = InstrumentTable.from_config(cfg)
        instruments = list(table)
        rate = cfg.backtest.event_rate_per_s if event_rate_per_s is None else event_rate_per_s
        venue = SimVenue(cfg, instruments, seed, event_rate_per_s=rate)
        advance, submit, vs = sim_advance_state, sim_submit_state, venue.state
        t_start = venue.now_ns
        dur = cfg.sim.duration_s if duration_s is None else duration_s
        t_end = t_start + int(dur * 1e9)
        source = "sim"
        strat_insts = [table.by_key(k) for k in sc.instruments]
    else:
        from market.recordfile import instruments_from_header, open_record_file
        from market.replayvenue import ReplayVenue, replay_advance, replay_submit

        header, recs = open_record_file(data, MARKET_DTYPE)
        instruments = instruments_from_header(header)
        if not instruments:
            raise ValueError(f"{data}: the record file names no instruments")
        venue = ReplayVenue(np.asarray(recs), instruments, cfg,
                            queue_model=queue_model or cfg.backtest.queue_model,
                            seed=cfg.sim.seed if seed is None else seed)
        advance, submit, vs = replay_advance, replay_submit, venue.state
        t_start = venue.start_ns
        t_end = venue.end_ns if duration_s is None else t_start + int(duration_s * 1e9)
        source = str(data)
        by_key = {i.key: i for i in instruments}
        strat_insts = [by_key.get(k) for k in sc.instruments]
        if any(i is None for i in strat_insts):
            strat_insts = instruments[:len(sc.instruments)]
    n = max(i.instrument_id for i in instruments)
    strat = get_strategy_class(sc.kind)(sc.params, strat_insts, 1)
    sstate = strat.make_state()
    book = L2Book(n, 256)
    limits = build_limits(cfg.risk, instruments)
    rstate = make_risk_state(limits)
    acct = np.zeros((n + 1, A_WORDS))
    for inst in instruments:
        acct[inst.instrument_id, A_VALUE] = float(inst.tick_size * inst.lot_size)
    sample_ns = int(sample_ms * 1e6)
    n_curve = int((t_end - t_start) // sample_ns) + 3
    curve = np.zeros((n_curve, 6))
    trades = np.zeros(1 << 20)
    qtimes = np.zeros(1 << 20, dtype=np.int64)
    acks = np.zeros((ACK_RING, 2), dtype=np.int64)
    cnt = np.zeros(C_WORDS, dtype=np.int64)
    md_buf = np.zeros(4096, dtype=MARKET_DTYPE)
    ex_buf = np.zeros(4096, dtype=EXEC_DTYPE)
    out = np.zeros(256, dtype=ORDER_DTYPE)
    denials = np.zeros(256, dtype=EXEC_DTYPE)
    hctl = make_hctl()
    px, qty, meta = book.arrays
    initial_cash = float(cfg.backtest.initial_cash)
    args = (advance, submit, vs, type(strat).kernel, sstate, px, qty, meta, limits, rstate,
            acct, curve, trades, qtimes, acks, cnt, md_buf, ex_buf, out, denials, hctl,
            np.int64(t_start))
    tail = (np.int64(int(timer_ms * 1e6)), np.int64(sample_ns), initial_cash)
    # Compile first (a run of zero length: nothing is due at t_start, only two curve points
    # are written and then dropped), so wall_s measures the run and not numba.
    compile_s = time.perf_counter()
    backtest_loop(*args, np.int64(t_start), *tail)
    compile_s = time.perf_counter() - compile_s
    cnt[:] = 0
    hctl[:] = 0
    curve[:] = 0.0
    wall = time.perf_counter()
    cpu = time.thread_time()
    backtest_loop(*args, np.int64(t_end), *tail)
    cpu = time.thread_time() - cpu
    wall = time.perf_counter() - wall
    counters = {name: int(cnt[i]) for i, name in enumerate(COUNTER_NAMES)}
    counters["kernel_errors"] = int(hctl[H_KERNEL_ERRORS])
    counters["intents_discarded"] = int(hctl[H_DISCARDED])
    counters["wall_s"] = wall
    counters["cpu_s"] = cpu          # this thread's CPU time: the figure on a shared machine
    counters["compile_s"] = compile_s
    counters["events"] = counters["md_records"] + counters["exec_reports"]
    counters["simulated_s"] = (t_end - t_start) / 1e9
    venue_counters = venue.counters() if hasattr(venue, "counters") else {}
    k = int(cnt[C_N_CURVE])
    c = curve[:k]
    curve_d = {"t_ns": c[:, 0].astype(np.int64), "equity": c[:, 1], "realized": c[:, 2],
               "unrealized": c[:, 3], "fees": c[:, 4], "abs_pos": c[:, 5]}
    from market.report import build_report

    tp = trades[:int(cnt[C_N_TRADES])].copy()
    qt = qtimes[:int(cnt[C_N_QUEUE])].copy()
    report = build_report(curve=curve_d, trade_pnls=tp, queue_times_ns=qt, counters=counters,
                          initial_cash=initial_cash)
    report["strategy"] = {"name": sc.name, "kind": sc.kind,
                          "instruments": [i.key for i in strat_insts]}
    report["source"] = source
    report["kernel_errors"] = counters["kernel_errors"]
    return BacktestResult(sc.name, sc.kind, source, report, curve_d, tp, qt, counters,
                          venue_counters, sstate)
