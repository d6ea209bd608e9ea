"""Deterministic event-driven backtest core: one strategy instance against simulated venues or
recorded data, through the same strategy runtime step and the same risk checks as the live
pipeline.

Runs in the ``run.py backtest`` process (and the benchmark). ``backtest_loop`` and the
accounting kernels are @njit HOT PATH; the cold driver is ``strategies/backtest.py`` (it knows
strategies; this module does not: the runtime's batch step and the strategy's hooks come in
as arguments).

The loop, on a simulated clock (no wall clock anywhere, so two runs are bit-identical):

    venue.advance(until the next delivery, or the next timer tick)
        -> market records and exec reports received by the strategy at time t
    account the fills (PnL, fees, inventory, time in queue); feed every report to the risk
    state (market.risk.on_exec, the gate's code)
    batch(hooks..., ctx, st, p, ...)                      # strategies.host.run_strategy_batch:
                                                          # books, bookkeeping, timer, hooks
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

A strategy hook that raises does not end the run: ``run_strategy_batch`` catches it inside
numba, exactly as in the live host, halts the strategy (its orders are cancelled, its fills
still accounted) and the run goes on; the report names the hook and the simulated time.
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

H_NEXT_TIMER = 0   # = strategies.host.H_NEXT_TIMER (the runtime's next timer tick, ns)

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
def backtest_loop(advance, submit, vs, batch, on_market, on_exec, on_timer, on_params, ctx, st,
                  p, limits, rstate, acct, curve, trades, qtimes, acks, cnt, md_buf, ex_buf,
                  denials, hctl, t_start, t_end, sample_ns, initial_cash):
    """Run until t_end (simulated ns). Specialised per (venue kernels, strategy hooks).
    ``batch`` is strategies.host.run_strategy_batch; the strategy's timer is its own
    (hctl[H_NEXT_TIMER], set by the batch step), so timer ticks fall on the same times as in
    the live host."""
    px, meta = ctx.px, ctx.meta
    out = ctx.out
    now = t_start
    next_sample = t_start
    n_den = 0
    n_inst = acct.shape[0]
    same_instant = 0   # rounds at one simulated time: a strategy that answers every denial
    last_now = -1      # with another denied intent must not stop the clock (livelock)
    while True:
        # Risk denials are answered at once (the gate is in-process): deliver them now, for
        # at most MAX_SAME_INSTANT rounds; after that they travel with the next event.
        next_timer = hctl[H_NEXT_TIMER]
        if n_den > 0 and same_instant < MAX_SAME_INSTANT:
            t_lim = now
        else:
            t_lim = min(t_end, max(next_timer, now))   # -1: not started, the next event
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
            k = batch(on_market, on_exec, on_timer, on_params, ctx, st, p, md_buf, n_md,
                      ex_buf, n_ex, now, hctl)
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
        if now >= t_end and (n_den == 0 or same_instant >= MAX_SAME_INSTANT):
            cnt[C_DROPPED_INTENTS] += n_den
            break
    _sample(acct, curve, cnt, t_end, initial_cash)
