"""Momentum burst: joins a burst of one-sided flow that OTHER traders started, and leaves when
it decays. Runs in a strategy process (live) or the backtest; the hooks are HOT PATH (@njit,
no allocation; O(1) per market record: decayed sums and a time-windowed VWAP).

It never tries to start a burst: it sends nothing until the burst is already visible in
other traders' prints, its own fills are taken out of the flow it measures (so its trades
cannot confirm themselves), and it enters at most once per burst (after an exit it waits
``cooldown_ms``).

Detector, with w = ``momentum_window_ms`` and every aggressor trade of the instrument:

    B, S     buy- and sell-initiated lots, summed with exponential decay (time constant w),
             less our own fills
    TI       = (B - S) / (B + S), the trade-sign imbalance; d = sign(TI)
    V        = (B + S) / w against the long-run rate (decay time constant
               ``volume_halflife_s`` / ln 2; both corrected for a start shorter than their
               time constant): the volume ratio
    VWAP dev = d x (mid - VWAP of the trades of the last w) / mid, bps: price has left the
             traded average in the burst's direction (e.g. the "VWAP deviation" signal of
             Cartea, Jaimungal & Penalva 2015, "Algorithmic and High-Frequency Trading", ch. 10)
    accel    the mid moved d-ward over the last half window at least as much as over the
             half before it (sampled every w / 4 on the timer): the move is not fading

Ignition (flat, no cooldown, a usable book, at least w of history): |TI| >=
``imbalance_confirm``, V >= ``volume_confirm``, VWAP dev >= ``ignition_threshold`` bps and
accel: buy (d > 0) or sell one clip of ``order_qty_lots`` with an IOC at the touch (a burst is
joined now or not at all; a resting order would fill only once it has turned).

Exit (decay, stop or time): back to flat when d x TI < ``exit_imbalance`` or V < 1 (the
one-sided flow is over), when the mid has gone ``stop_bps`` against the entry, or after
``max_hold_time_ms``. Exits are IOC too and retried until flat.

Lawful: IOC only (nothing rests, nothing to cancel, no self-cross), one order in flight,
nothing for ``reject_backoff_ms`` after a reject or denial, no orders into an invalid,
one-sided, crossed, locked or halted book.

Parameters (``[strategies].params``; units in the names):
  momentum_window_ms   the burst window w (decay time constant, VWAP window), milliseconds
  ignition_threshold   VWAP deviation in the burst's direction needed to join, bps
  imbalance_confirm    |trade imbalance| needed to join, (0, 1]
  volume_confirm       window volume rate / long-run rate needed to join (> 1)
  volume_halflife_s    half-life of the long-run volume rate, seconds
  exit_imbalance       leave when the imbalance in our direction falls below this
  stop_bps             leave when the mid is this far against the entry, bps
  max_hold_time_ms     longest holding time, milliseconds
  cooldown_ms          no entry this long after an exit, milliseconds
  order_qty_lots       size of one entry, lots
  slippage_ticks       IOC limit this many ticks through the touch
  reject_backoff_ms    nothing sent this long after a reject or denial, milliseconds
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from shm.records import EXEC_FILL, EXEC_PARTIAL, MSG_TRADE, SIDE_BUY, SIDE_SELL
from strategies._orders import backoff_over, book_usable, take_to_target
from strategies.base import Strategy, open_on, position
from strategies.features import VWAP_DTYPE, Vwap, mid_ticks, vwap_add_trade, vwap_ticks

VWAP_CAPACITY = 512   # trades one window can hold (a busier window drops its oldest: counted)


@dataclass(frozen=True)
class MomentumBurstParams:
    momentum_window_ms: float = opt(1000.0, "burst window: decay time constant and VWAP "
                                    "window, ms", gt=0)
    ignition_threshold: float = opt(1.0, "VWAP deviation in the burst's direction needed to "
                                    "join, bps", gt=0)
    imbalance_confirm: float = opt(0.6, "|trade imbalance| needed to join, (0, 1]", gt=0, le=1)
    volume_confirm: float = opt(1.5, "window volume rate / long-run rate needed to join",
                                gt=1)
    volume_halflife_s: float = opt(30.0, "half-life of the long-run volume rate, s", gt=0)
    exit_imbalance: float = opt(0.2, "leave when the imbalance in our direction is below "
                                "this", ge=-1, lt=1)
    stop_bps: float = opt(5.0, "leave when the mid is this far against the entry, bps", gt=0)
    max_hold_time_ms: float = opt(5000.0, "longest holding time, ms", gt=0)
    cooldown_ms: float = opt(2000.0, "no entry this long after an exit, ms", ge=0)
    order_qty_lots: int = opt(10, "size of one entry, lots", gt=0)
    slippage_ticks: int = opt(0, "IOC limit this many ticks through the touch", ge=0)
    reject_backoff_ms: float = opt(1000.0, "send nothing this long after a reject or risk "
                                   "denial, ms", ge=0)

    def validate(self):
        if not self.exit_imbalance < self.imbalance_confirm:
            yield (f"exit_imbalance = {self.exit_imbalance}: must be below imbalance_confirm "
                   f"({self.imbalance_confirm})")


STATE_FIELDS = [
    ("buy", "f8"), ("sell", "f8"), ("long_vol", "f8"), ("flow_ts", "i8"), ("start_ns", "i8"),
    ("ti", "f8"), ("vol_ratio", "f8"), ("dev_bps", "f8"), ("accel", "i8"),
    ("m_samples", "f8", (5,)), ("n_mid_samples", "i8"), ("next_mid_ns", "i8"),
    ("side", "i8"), ("entry_mid", "f8"), ("entry_ns", "i8"), ("cooldown_until", "i8"),
    ("n_ignitions", "i8"), ("n_exits", "i8"), ("own_lots", "f8"),
]


@njit(cache=True)
def mb_decay(st, p, now_ns):
    if st.flow_ts != 0 and now_ns > st.flow_ts:
        dt = float(now_ns - st.flow_ts)
        k = math.exp(-dt / p.window_ns)
        st.buy *= k
        st.sell *= k
        st.long_vol *= math.exp(-dt / p.long_tau_ns)
    if st.start_ns == 0:
        st.start_ns = now_ns
    st.flow_ts = now_ns


@njit(cache=True)
def mb_measure(ctx, st, p, now_ns):
    """TI, volume ratio, VWAP deviation and acceleration from the state and the book."""
    tot = st.buy + st.sell
    st.ti = (st.buy - st.sell) / tot if tot > 0.0 else 0.0
    age = float(now_ns - st.start_ns)
    short_rate = tot / (p.window_ns * (1.0 - math.exp(-age / p.window_ns))) if age > 0 else 0.0
    long_rate = (st.long_vol / (p.long_tau_ns * (1.0 - math.exp(-age / p.long_tau_ns)))
                 if age > 0 else 0.0)
    st.vol_ratio = short_rate / long_rate if long_rate > 0.0 else 0.0
    d = 1.0 if st.ti > 0 else -1.0
    m = mid_ticks(ctx.px, ctx.meta, ctx.inst[0])
    vw = vwap_ticks(Vwap(st.vw_hdr, st.vw_px, st.vw_qty, st.vw_ts), 0, now_ns)
    st.dev_bps = d * (m - vw) / m * 1e4 if (math.isfinite(vw) and m > 0) else 0.0
    s = st.m_samples
    st.accel = 0
    if st.n_mid_samples >= 5:
        v1 = d * (m - s[2])
        v0 = d * (s[2] - s[4])
        st.accel = 1 if (v1 > 0.0 and v1 >= v0) else 0


@njit(cache=True)
def mb_decide(ctx, st, p, now_ns):
    if not book_usable(ctx, 0):
        return
    mb_measure(ctx, st, p, now_ns)
    if open_on(ctx, 0) or not backoff_over(ctx, p.backoff_ns, now_ns):
        return
    pos = position(ctx, 0)
    m = mid_ticks(ctx.px, ctx.meta, ctx.inst[0])
    if pos == 0:
        st.side = 0
        if now_ns < st.cooldown_until or now_ns - st.start_ns < p.window_ns:
            return
        if (abs(st.ti) >= p.imbalance_confirm and st.vol_ratio >= p.volume_confirm
                and st.dev_bps >= p.ignition_threshold and st.accel == 1):
            d = 1 if st.ti > 0 else -1
            if take_to_target(ctx, 0, d * p.order_qty_lots, p.slippage_ticks, now_ns) != 0:
                st.side = d
                st.entry_mid = m
                st.entry_ns = now_ns
                st.n_ignitions += 1
                st.cooldown_until = now_ns + np.int64(p.cooldown_ns)
    else:
        d = 1.0 if pos > 0 else -1.0
        against_bps = -d * (m - st.entry_mid) / st.entry_mid * 1e4 if st.entry_mid > 0 else 0.0
        if (d * st.ti < p.exit_imbalance or st.vol_ratio < 1.0 or against_bps >= p.stop_bps
                or now_ns - st.entry_ns >= p.hold_ns):
            if take_to_target(ctx, 0, 0, p.slippage_ticks, now_ns) != 0:
                st.n_exits += 1
                st.cooldown_until = now_ns + np.int64(p.cooldown_ns)


@njit(cache=True)
def mb_on_market(ctx, st, p, md, n_md, now_ns):
    inst = ctx.inst[0]
    mb_decay(st, p, now_ns)
    vw = Vwap(st.vw_hdr, st.vw_px, st.vw_qty, st.vw_ts)
    for j in range(n_md):
        r = md[j]
        if r.kind != MSG_TRADE or r.instrument_id != inst or r.qty_lots <= 0:
            continue
        q = float(r.qty_lots)
        if r.side == SIDE_BUY:
            st.buy += q
        elif r.side == SIDE_SELL:
            st.sell += q
        st.long_vol += q
        vwap_add_trade(vw, 0, r.px_ticks, r.qty_lots, r.recv_ts_ns)
    mb_decide(ctx, st, p, now_ns)


@njit(cache=True)
def mb_on_exec(ctx, st, p, ex, n_ex, now_ns):
    # our own prints come back in the trade stream: take them out of the flow we measure
    mb_decay(st, p, now_ns)
    for j in range(n_ex):
        e = ex[j]
        if (e.kind == EXEC_FILL or e.kind == EXEC_PARTIAL) and e.instrument_id == ctx.inst[0]:
            q = float(e.qty_lots)
            st.own_lots += q
            if e.side == SIDE_BUY:
                st.buy = max(0.0, st.buy - q)
            else:
                st.sell = max(0.0, st.sell - q)
            st.long_vol = max(0.0, st.long_vol - q)
    mb_decide(ctx, st, p, now_ns)


@njit(cache=True)
def mb_on_timer(ctx, st, p, now_ns):
    mb_decay(st, p, now_ns)
    if now_ns >= st.next_mid_ns and book_usable(ctx, 0):
        s = st.m_samples
        for k in range(4, 0, -1):
            s[k] = s[k - 1]
        s[0] = mid_ticks(ctx.px, ctx.meta, ctx.inst[0])
        st.n_mid_samples += 1
        st.next_mid_ns = now_ns + np.int64(p.window_ns * 0.25)
    mb_decide(ctx, st, p, now_ns)


class MomentumBurst(Strategy):
    """Joins bursts of one-sided flow started by others on one instrument (module
    docstring)."""

    kind = "momentum_burst"
    Params = MomentumBurstParams
    n_instruments = 1
    on_market = staticmethod(mb_on_market)
    on_exec = staticmethod(mb_on_exec)
    on_timer = staticmethod(mb_on_timer)
    # The defaults stay silent on the conformance test's random two-sided stream (that is the
    # point of the detector: no burst, no trade); these looser thresholds make that stream's
    # chance runs of one-sided prints count as bursts, so the test exercises the order path.
    conformance_params = {"imbalance_confirm": 0.5, "volume_confirm": 1.1,
                          "ignition_threshold": 0.3, "momentum_window_ms": 300.0,
                          "volume_halflife_s": 5.0}

    def state_fields(self):
        c = VWAP_CAPACITY
        return STATE_FIELDS + [("vw_hdr", VWAP_DTYPE, (1,)), ("vw_px", "i8", (1, c)),
                               ("vw_qty", "i8", (1, c)), ("vw_ts", "i8", (1, c))]

    def init_state(self, st) -> None:
        st["vw_hdr"]["window_ns"] = int(self.params.momentum_window_ms * 1e6)

    def derive(self) -> dict:
        p = self.params
        return {"window_ns": p.momentum_window_ms * 1e6,
                "long_tau_ns": p.volume_halflife_s * 1e9 / math.log(2.0),
                "hold_ns": p.max_hold_time_ms * 1e6, "cooldown_ns": p.cooldown_ms * 1e6,
                "backoff_ns": p.reject_backoff_ms * 1e6}
