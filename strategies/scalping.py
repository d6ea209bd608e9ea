"""Scalping: short-lived micro-patterns of the tick stream, entered passively, exited at a small
target, a stop or a time limit. Runs in a strategy process (live) or the backtest; the hooks
are HOT PATH (@njit, no allocation): ``on_market`` is O(1) per trade record plus O(levels)
per batch, the pattern scan (O(9)) runs on the timer.

Patterns, on the mid sampled every ``pattern_window_ms`` / 8 (a ring of 9 samples spanning
the window), with m0 the oldest sample, m the mid now and P the extreme since m0:

    burst           |m - m0| >= ``tick_sensitivity`` ticks and the move has not given back
                    half of itself: trade with it (d = sign(m - m0))
    quick reversion |P - m0| >= tick_sensitivity and m has given back at least half of it:
                    fade the spike (d = -sign(P - m0))
    strength        min(|move| / tick_sensitivity, 2) / 2, in [0.5, 1]
    volume spike    lots traded over the window (exponential decay, time constant the window)
                    against the long-run rate (half-life 30 s): score min(ratio /
                    ``volume_spike_mult``, 1)
    book            top-3-level depth imbalance in direction d, clipped to [0, 1]

confidence = 0.5 x strength + 0.25 x volume score + 0.25 x book score, in [0, 1]; a pattern
is traded when confidence >= ``confidence_threshold``.

Orders (lawful; one position at a time, never an order on both sides at once):
- entry: post-only at our own touch (a buy joins the best bid), so it can fill and earns the
  maker fee; if it has not filled after ``entry_timeout_ms`` it is cancelled (it rested, it
  could trade; the pattern is stale); entries at least ``entry_interval_ms`` apart;
- take profit: once filled, a post-only order on the other side at entry +- target, target =
  ceil(``target_profit_bps`` x entry price); if the market is already through it, an IOC at
  the touch takes the profit now;
- stop / time: when the mid is ``stop_bps`` against the entry or ``max_hold_time_ms`` has
  passed since the fill, the take-profit is cancelled and, once the cancel is confirmed, an
  IOC ``slippage_ticks`` through the touch closes the position.
Nothing for ``reject_backoff_ms`` after a reject or denial. On an invalid, one-sided, crossed,
locked or halted book every resting order is cancelled and nothing new is sent.

Parameters (``[strategies].params``; units in the names):
  tick_sensitivity      size of a move that counts as a pattern, ticks
  pattern_window_ms     time span of the patterns, milliseconds
  volume_spike_mult     window volume rate / long-run rate that scores a full volume spike
  confidence_threshold  confidence needed to enter, (0, 1]
  target_profit_bps     take-profit distance from the entry, bps
  stop_bps              stop distance from the entry (mid against us), bps
  max_hold_time_ms      longest holding time after the fill, milliseconds
  entry_timeout_ms      an unfilled entry is cancelled after this, milliseconds
  entry_interval_ms     minimum time between two entries, milliseconds
  order_qty_lots        size of one entry, lots
  slippage_ticks        the stop's IOC limit this many ticks through the touch
  reject_backoff_ms     nothing sent this long after a reject or denial, milliseconds
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import best_ask_px, best_bid_px
from shm.records import MSG_TRADE, ORD_IOC, ORD_POST_ONLY, SIDE_BUY, SIDE_SELL
from strategies._orders import backoff_over, book_usable, take_to_target
from strategies.base import (OST_LIVE, Strategy, cancel, cancel_all, open_count, order_slot,
                             place, position)
from strategies.features import depth_imbalance, mid_ticks

N_SAMPLES = 9
LONG_TAU_NS = 30e9 / math.log(2.0)   # long-run volume rate: half-life 30 s


@dataclass(frozen=True)
class ScalpingParams:
    tick_sensitivity: int = opt(3, "size of a move that counts as a pattern, ticks", ge=1)
    pattern_window_ms: float = opt(200.0, "time span of the patterns, ms", gt=0)
    volume_spike_mult: float = opt(2.0, "window volume rate / long-run rate scoring a full "
                                   "volume spike", gt=0)
    confidence_threshold: float = opt(0.6, "confidence needed to enter, (0, 1]", gt=0, le=1)
    target_profit_bps: float = opt(2.0, "take-profit distance from the entry, bps", gt=0)
    stop_bps: float = opt(3.0, "stop distance from the entry, bps", gt=0)
    max_hold_time_ms: float = opt(5000.0, "longest holding time after the fill, ms", gt=0)
    entry_timeout_ms: float = opt(500.0, "an unfilled entry is cancelled after this, ms", gt=0)
    entry_interval_ms: float = opt(1000.0, "minimum time between two entries, ms", ge=0)
    order_qty_lots: int = opt(10, "size of one entry, lots", gt=0)
    slippage_ticks: int = opt(0, "the stop's IOC limit this many ticks through the touch",
                              ge=0)
    reject_backoff_ms: float = opt(1000.0, "send nothing this long after a reject or risk "
                                   "denial, ms", ge=0)


STATE_FIELDS = [
    ("mids", "f8", (N_SAMPLES,)), ("n_mids", "i8"), ("next_sample_ns", "i8"),
    ("vol", "f8"), ("long_vol", "f8"), ("vol_ts", "i8"), ("start_ns", "i8"),
    ("signal_dir", "i8"), ("conf", "f8"), ("pattern", "i8"),   # 1 burst, 2 quick reversion
    ("entry_coid", "i8"), ("tp_coid", "i8"), ("entry_px", "i8"), ("entry_ns", "i8"),
    ("fill_ns", "i8"), ("next_entry_ns", "i8"),
    ("n_entries", "i8"), ("n_targets", "i8"), ("n_stops", "i8"), ("n_timeouts", "i8"),
]


@njit(cache=True)
def sc_decay(st, now_ns, window_ns):
    if st.vol_ts != 0 and now_ns > st.vol_ts:
        dt = float(now_ns - st.vol_ts)
        st.vol *= math.exp(-dt / window_ns)
        st.long_vol *= math.exp(-dt / LONG_TAU_NS)
    if st.start_ns == 0:
        st.start_ns = now_ns
    st.vol_ts = now_ns


@njit(cache=True)
def sc_scan(ctx, st, p, now_ns):
    """Sample the mid and score the patterns (sets signal_dir, conf, pattern)."""
    st.signal_dir = 0
    st.conf = 0.0
    st.pattern = 0
    inst = ctx.inst[0]
    m = mid_ticks(ctx.px, ctx.meta, inst)
    s = st.mids
    for k in range(N_SAMPLES - 1, 0, -1):
        s[k] = s[k - 1]
    s[0] = m
    st.n_mids += 1
    if st.n_mids < N_SAMPLES:
        return
    m0 = s[N_SAMPLES - 1]
    hi = m0
    lo = m0
    for k in range(N_SAMPLES):
        hi = max(hi, s[k])
        lo = min(lo, s[k])
    up = hi - m0
    down = m0 - lo
    if up >= down:
        peak_move = up
        sgn = 1.0
        give_back = hi - m
    else:
        peak_move = down
        sgn = -1.0
        give_back = m - lo
    if peak_move < p.tick_sensitivity:
        return
    if give_back >= 0.5 * peak_move:
        d = -sgn
        strength = min(peak_move / p.tick_sensitivity, 2.0) * 0.5
        st.pattern = 2
    else:
        move = abs(m - m0)
        if move < p.tick_sensitivity:
            return
        d = sgn
        strength = min(move / p.tick_sensitivity, 2.0) * 0.5
        st.pattern = 1
    age = float(now_ns - st.start_ns)
    vol_score = 0.0
    if age > 0:
        short_rate = st.vol / (p.window_ns * (1.0 - math.exp(-age / p.window_ns)))
        long_rate = st.long_vol / (LONG_TAU_NS * (1.0 - math.exp(-age / LONG_TAU_NS)))
        if long_rate > 0.0:
            vol_score = min(short_rate / long_rate / p.volume_spike_mult, 1.0)
    book = d * depth_imbalance(ctx.px, ctx.qty, ctx.meta, inst, 3)
    book_score = min(max(book, 0.0), 1.0) if math.isfinite(book) else 0.0
    st.conf = 0.5 * strength + 0.25 * vol_score + 0.25 * book_score
    st.signal_dir = np.int64(d)


@njit(cache=True)
def sc_step(ctx, st, p, now_ns):
    """The order state machine (module docstring)."""
    if not book_usable(ctx, 0):
        cancel_all(ctx, now_ns)   # nothing of ours rests in a book we cannot price
        return
    if not backoff_over(ctx, p.backoff_ns, now_ns):
        return
    inst = ctx.inst[0]
    pos = position(ctx, 0)
    es = order_slot(ctx, st.entry_coid)
    ts = order_slot(ctx, st.tp_coid)
    bid = best_bid_px(ctx.px, ctx.meta, inst)
    ask = best_ask_px(ctx.px, ctx.meta, inst)
    if pos == 0:
        st.fill_ns = 0
        if ts >= 0:
            if ctx.orders[ts].state == OST_LIVE:
                cancel(ctx, st.tp_coid, now_ns)
            return
        st.tp_coid = 0
        if es >= 0:
            if ctx.orders[es].state == OST_LIVE and now_ns - st.entry_ns >= p.entry_timeout_ns:
                cancel(ctx, st.entry_coid, now_ns)
            return
        st.entry_coid = 0
        if open_count(ctx) > 0 or now_ns < st.next_entry_ns:
            return
        if st.signal_dir != 0 and st.conf >= p.confidence_threshold:
            side = SIDE_BUY if st.signal_dir > 0 else SIDE_SELL
            px = bid if st.signal_dir > 0 else ask
            coid = place(ctx, 0, side, ORD_POST_ONLY, px, p.order_qty_lots, now_ns)
            if coid != 0:
                st.entry_coid = coid
                st.entry_px = px
                st.entry_ns = now_ns
                st.next_entry_ns = now_ns + np.int64(p.entry_interval_ns)
                st.n_entries += 1
            st.signal_dir = 0
        return
    d = 1 if pos > 0 else -1
    if st.fill_ns == 0:
        st.fill_ns = now_ns
    if es >= 0:
        if ctx.orders[es].state == OST_LIVE:
            cancel(ctx, st.entry_coid, now_ns)   # partly filled: the rest is not wanted
        return
    m = mid_ticks(ctx.px, ctx.meta, inst)
    against_bps = -d * (m - st.entry_px) / st.entry_px * 1e4
    timed_out = now_ns - st.fill_ns >= p.hold_ns
    if against_bps >= p.stop_bps or timed_out:
        if ts >= 0:
            if ctx.orders[ts].state == OST_LIVE:
                cancel(ctx, st.tp_coid, now_ns)
            return
        st.tp_coid = 0
        if take_to_target(ctx, 0, 0, p.slippage_ticks, now_ns) != 0:
            if timed_out:
                st.n_timeouts += 1
            else:
                st.n_stops += 1
        return
    if ts >= 0 or open_count(ctx) > 0:
        return
    target = np.int64(math.ceil(p.target_profit_bps * 1e-4 * st.entry_px))
    tp = st.entry_px + d * target
    if d > 0:
        if tp > bid:
            st.tp_coid = place(ctx, 0, SIDE_SELL, ORD_POST_ONLY, tp, pos, now_ns)
        else:   # the market is already through the target: take the profit now
            place(ctx, 0, SIDE_SELL, ORD_IOC, bid, pos, now_ns)
            st.n_targets += 1
    else:
        if tp < ask:
            st.tp_coid = place(ctx, 0, SIDE_BUY, ORD_POST_ONLY, tp, -pos, now_ns)
        else:
            place(ctx, 0, SIDE_BUY, ORD_IOC, ask, -pos, now_ns)
            st.n_targets += 1


@njit(cache=True)
def sc_on_market(ctx, st, p, md, n_md, now_ns):
    inst = ctx.inst[0]
    sc_decay(st, now_ns, p.window_ns)
    for j in range(n_md):
        r = md[j]
        if r.kind == MSG_TRADE and r.instrument_id == inst and r.qty_lots > 0:
            st.vol += r.qty_lots
            st.long_vol += r.qty_lots
    sc_step(ctx, st, p, now_ns)


@njit(cache=True)
def sc_on_exec(ctx, st, p, ex, n_ex, now_ns):
    # a take-profit that is gone while we are flat was filled: count it
    if st.tp_coid != 0 and order_slot(ctx, st.tp_coid) < 0 and position(ctx, 0) == 0:
        st.n_targets += 1
        st.tp_coid = 0
    sc_step(ctx, st, p, now_ns)


@njit(cache=True)
def sc_on_timer(ctx, st, p, now_ns):
    sc_decay(st, now_ns, p.window_ns)
    if now_ns >= st.next_sample_ns and book_usable(ctx, 0):
        st.next_sample_ns = now_ns + np.int64(p.sample_ns)
        sc_scan(ctx, st, p, now_ns)
    sc_step(ctx, st, p, now_ns)


class Scalping(Strategy):
    """Tick-pattern scalper with passive entries and take-profit, stop and time exits on one
    instrument (module docstring)."""

    kind = "scalping"
    Params = ScalpingParams
    n_instruments = 1
    on_market = staticmethod(sc_on_market)
    on_exec = staticmethod(sc_on_exec)
    on_timer = staticmethod(sc_on_timer)

    def state_fields(self):
        return STATE_FIELDS

    def derive(self) -> dict:
        p = self.params
        return {"window_ns": p.pattern_window_ms * 1e6,
                "sample_ns": p.pattern_window_ms * 1e6 / (N_SAMPLES - 1),
                "hold_ns": p.max_hold_time_ms * 1e6, "entry_timeout_ns": p.entry_timeout_ms * 1e6,
                "entry_interval_ns": p.entry_interval_ms * 1e6,
                "backoff_ns": p.reject_backoff_ms * 1e6}
