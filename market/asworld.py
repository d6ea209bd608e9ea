"""The model world of Avellaneda and Stoikov (2008), "High-frequency trading in a limit order
book", Quantitative Finance 8(3), section 4 (numerical simulations), as a venue kernel with the
interface of the simulated venues (market/sim.py): ``as_advance(state, t_limit, out_md, n_md,
out_ex, n_ex, stop_at_delivery)`` and ``as_submit(state, order, send_ns)``.

Runs in the process that reproduces the paper's table (strategies/paper/avellaneda_stoikov.py,
``run.py sim paper avellaneda-stoikov``) and in the tests. ``as_advance``, ``as_submit`` and
what they call are @njit HOT PATH (no allocation); ``AsWorld`` is the cold owner.

The world (all prices in integer ticks, quantities in lots, times in ns; the driver maps the
paper's units onto these, docs/avellaneda-stoikov.md):

- time runs in steps of ``dt``: t_k = t0 + k dt, k = 0..n_steps;
- the mid S starts at s0 and moves once per step by +-sigma sqrt(dt) with probability 1/2 each
  (the paper's procedure; ``increments = INC_GAUSSIAN`` draws N(0, sigma^2 dt) instead); it is
  kept as a float and published rounded to half a tick;
- at every t_k the world publishes its book: a snapshot (SNAP_START, one bid LEVEL, one ask
  LEVEL, SNAP_END) of a one-level book whose bid + ask is round(2 S) (the mid) and whose touch
  is ``touch_half_ticks`` either side (the paper's market has no book, only the mid: the touch
  is a convention, wide by default so that it never constrains a quote; the size is 1 lot);
- a participant's orders (ORDER_DTYPE intents, one participant per world) are handled when
  submitted, with no latency: NEW rests (acked), REPLACE reprices (replace ack), CANCEL removes
  (cancel ack); the reports are delivered at the submit time;
- from t_k to t_{k+1} the mid moves from S_k to S_{k+1} and each resting order is hit with
  probability lambda(delta) dt, lambda(delta) = A exp(-k delta), capped at 1 (the paper:
  "with probability lambda(delta) dt"), at most once per step; a hit fills one lot at the
  order's price (a FILL, or a PARTIAL when more rests). delta = mid - px (a bid) or px - mid
  (an ask), the mid being (``fill_mid``) FILL_MID_MOVED: S_{k+1}, the mid the arriving order
  meets (the default of the paper driver: it reproduces the published figures), or
  FILL_MID_QUOTED: S_k, the mid the quote was made against (the other reading of the
  paper's text). The fills of a step are reported at t_{k+1}, before its book.

The world keeps the participant's ledger (cash and inventory from its fills: profit = cash +
q S at the end), and measures the quoted spread (ask - bid of the two resting quotes, averaged
over the steps where both rest). Two random streams: 0 moves the mid, 1 draws the fills, so
two participants run on worlds seeded alike see the same mid path.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from market.latency import rng_normal, rng_seed, rng_uniform
from shm.recordops import reply_to_order
from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_FILL,
                         EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW,
                         INTENT_REPLACE, LIQ_MAKER, MARKET_DTYPE, MFLAG_LAST_IN_BATCH,
                         MFLAG_SNAPSHOT, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START,
                         REJECT_INVALID, REJECT_UNKNOWN_ORDER, SIDE_BUY, SIDE_SELL)

INC_BINARY = 0     # +-sigma sqrt(dt), each with probability 1/2 (the paper's procedure)
INC_GAUSSIAN = 1   # N(0, sigma^2 dt)
FILL_MID_QUOTED = 0   # a step's fills are drawn at the distance from the mid before its move
FILL_MID_MOVED = 1    # ... from the mid after its move (the one an arriving order meets)
NEVER = np.int64(0x7FFFFFFFFFFFFFFF)
MAX_RESTING = 8    # resting orders of the participant (the market maker keeps two)
OUTBOX = 64        # reports waiting for delivery (at most a few per step)
STREAM_MID = 0
STREAM_FILLS = 1

WORLD_DTYPE = np.dtype([
    # the model
    ("t0_ns", "i8"), ("dt_ns", "i8"), ("n_steps", "i8"),
    ("s0_ticks", "f8"),
    ("sigma_ticks", "f8"),       # volatility of the mid, ticks per sqrt(second)
    ("a_per_s", "f8"),           # A: arrival intensity at distance 0, per second
    ("k_per_tick", "f8"),        # k: decay of the intensity, 1 / tick
    ("increments", "i8"),        # INC_*
    ("fill_mid", "i8"),          # FILL_MID_*
    ("touch_half_ticks", "i8"),  # published touch: bid and ask this far from the mid
    ("instrument_id", "i8"), ("venue_id", "i8"),
    # the clock
    ("step", "i8"),              # the next step to publish (n_steps + 1: the world has ended)
    ("now_ns", "i8"),
    ("mid", "f8"),               # S, ticks (exact; published rounded to half a tick)
    ("quote_mid", "f8"),         # S_k the resting quotes of this step are measured from
    # the participant's ledger (ticks x lots, lots)
    ("cash", "f8"), ("inventory", "f8"),
    ("fills", "i8"), ("bid_fills", "i8"), ("ask_fills", "i8"),
    ("spread_sum", "f8"), ("spread_steps", "i8"),   # quoted ask - bid, summed over steps
    ("orders_in", "i8"), ("rejects", "i8"),
    ("next_venue_oid", "i8"), ("next_trade_id", "i8"),
    ("n_out", "i8"),             # reports in the outbox
], align=True)

RESTING_DTYPE = np.dtype([
    ("coid", "i8"), ("venue_oid", "i8"), ("side", "i8"), ("px", "i8"), ("leaves", "i8"),
    ("cum", "i8"), ("strategy_id", "i8"), ("cause_ns", "i8"), ("live", "i8"),
], align=True)


class AsWorld:
    """Cold owner of one world: ``state`` is the tuple the kernels take. Units as the kernels:
    ticks, lots, ns (see the module docstring); ``seed`` seeds both random streams."""

    def __init__(self, *, s0_ticks: float, sigma_ticks: float, a_per_s: float,
                 k_per_tick: float, dt_ns: int, n_steps: int, seed: int = 1,
                 t0_ns: int = 0, increments: int = INC_BINARY,
                 fill_mid: int = FILL_MID_MOVED, touch_half_ticks: int = 1,
                 instrument_id: int = 1, venue_id: int = 1):
        if dt_ns <= 0 or n_steps <= 0:
            raise ValueError(f"dt_ns = {dt_ns}, n_steps = {n_steps}: both must be > 0")
        if sigma_ticks < 0 or a_per_s <= 0 or k_per_tick <= 0:
            raise ValueError(f"sigma_ticks = {sigma_ticks} (>= 0), a_per_s = {a_per_s} (> 0), "
                             f"k_per_tick = {k_per_tick} (> 0)")
        if touch_half_ticks < 1 or s0_ticks - touch_half_ticks <= 0:
            raise ValueError(f"touch_half_ticks = {touch_half_ticks}: must be >= 1 and leave "
                             f"the bid above 0 (s0_ticks = {s0_ticks})")
        if increments not in (INC_BINARY, INC_GAUSSIAN):
            raise ValueError(f"increments = {increments}: INC_BINARY or INC_GAUSSIAN")
        if fill_mid not in (FILL_MID_QUOTED, FILL_MID_MOVED):
            raise ValueError(f"fill_mid = {fill_mid}: FILL_MID_QUOTED or FILL_MID_MOVED")
        w = np.zeros(1, dtype=WORLD_DTYPE)
        for name, v in (("t0_ns", t0_ns), ("dt_ns", dt_ns), ("n_steps", n_steps),
                        ("s0_ticks", s0_ticks), ("sigma_ticks", sigma_ticks),
                        ("a_per_s", a_per_s), ("k_per_tick", k_per_tick),
                        ("increments", increments), ("fill_mid", fill_mid),
                        ("touch_half_ticks", touch_half_ticks),
                        ("instrument_id", instrument_id), ("venue_id", venue_id)):
            w[0][name] = v
        self.state = (w, np.zeros(MAX_RESTING, dtype=RESTING_DTYPE),
                      np.zeros(OUTBOX, dtype=EXEC_DTYPE), np.zeros(2, dtype=np.uint64))
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Start over at t0 with the mid at s0, no orders, an empty ledger, streams from seed."""
        as_reset(self.state, np.int64(seed))

    @property
    def world(self):
        return self.state[0][0]

    def submit(self, order: np.ndarray, send_ns: int) -> None:
        as_submit(self.state, order, np.int64(send_ns))

    def advance(self, t_limit: int, out_md: np.ndarray, out_ex: np.ndarray, stop: bool = True):
        n_md, n_ex, t = as_advance(self.state, np.int64(t_limit), out_md, 0, out_ex, 0, stop)
        return int(n_md), int(n_ex), int(t)


# ------------------------------------------------------------------------------------------
# Kernels (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def as_reset(s, seed):
    """The world at t0, seeded: mid s0, no resting orders, an empty ledger and outbox."""
    w = s[0][0]
    w.step = 0
    w.now_ns = w.t0_ns
    w.mid = w.s0_ticks
    w.quote_mid = w.s0_ticks
    w.cash = 0.0
    w.inventory = 0.0
    w.fills = 0
    w.bid_fills = 0
    w.ask_fills = 0
    w.spread_sum = 0.0
    w.spread_steps = 0
    w.orders_in = 0
    w.rejects = 0
    w.next_venue_oid = 1
    w.next_trade_id = 1
    w.n_out = 0
    resting = s[1]
    for j in range(resting.shape[0]):
        resting[j].live = 0
        resting[j].coid = 0
    rng_seed(s[3], seed)


@njit(cache=True, _nrt=False)
def as_fill_probability(w, side, px, mid):
    """lambda(delta) dt, capped at 1, for a resting order at px: delta is its distance from
    ``mid`` (negative when it is through it)."""
    delta = (mid - px) if side == SIDE_BUY else (px - mid)
    p = w.a_per_s * math.exp(-w.k_per_tick * delta) * (w.dt_ns * 1e-9)
    return min(p, 1.0)


@njit(cache=True, _nrt=False)
def _report(s, r, kind, now, qty, liquidity, trade_id):
    """Queue one report on the resting order r at now (qty: the fill's, or what rests)."""
    w = s[0][0]
    out = s[2]
    if w.n_out >= out.shape[0]:
        return   # unreachable with one participant quoting two sides (OUTBOX >> per step)
    e = out[w.n_out]
    e.ring_seq = 0
    e.kind = kind
    e.side = r.side
    e.liquidity = liquidity
    e.flags = 0
    e.instrument_id = w.instrument_id
    e.client_order_id = r.coid
    e.venue_order_id = r.venue_oid
    e.px_ticks = r.px
    e.qty_lots = qty
    e.leaves_lots = r.leaves
    e.cum_qty_lots = r.cum
    e.venue_ts_ns = now
    e.cause_recv_ts_ns = r.cause_ns
    e.send_ts_ns = now
    e.fee_e9 = 0
    e.strategy_id = r.strategy_id
    e.reject_code = 0
    e.venue_id = w.venue_id
    e.order_px_ticks = r.px
    e.trade_id = trade_id
    e.reserved = 0
    w.n_out += 1


@njit(cache=True, _nrt=False)
def _find(resting, coid):
    for j in range(resting.shape[0]):
        if resting[j].live != 0 and resting[j].coid == coid:
            return j
    return -1


@njit(cache=True, _nrt=False)
def _reject(s, order, code, kind, now):
    w = s[0][0]
    out = s[2]
    w.rejects += 1
    if w.n_out >= out.shape[0]:
        return
    e = out[w.n_out]
    reply_to_order(e, order, kind, 0, code, now)
    e.ring_seq = 0
    e.venue_id = w.venue_id
    w.n_out += 1


@njit(cache=True, _nrt=False)
def as_submit(s, order, send_ns):
    """One order of the participant, handled at once (no latency): NEW rests, REPLACE
    reprices, CANCEL removes; the report is delivered at send_ns. Returns 0, or the REJECT_*
    code sent back (an unknown order, a bad price or size, no room)."""
    w = s[0][0]
    resting = s[1]
    w.orders_in += 1
    now = max(send_ns, w.now_ns)
    kind = order.kind
    if kind == INTENT_NEW:
        if (order.qty_lots <= 0 or order.px_ticks <= 0
                or (order.side != SIDE_BUY and order.side != SIDE_SELL)
                or order.instrument_id != w.instrument_id):
            _reject(s, order, REJECT_INVALID, EXEC_REJECT, now)
            return REJECT_INVALID
        for j in range(resting.shape[0]):
            if resting[j].live == 0:
                r = resting[j]
                r.coid = order.client_order_id
                r.venue_oid = w.next_venue_oid
                w.next_venue_oid += 1
                r.side = order.side
                r.px = order.px_ticks
                r.leaves = order.qty_lots
                r.cum = 0
                r.strategy_id = order.strategy_id
                r.cause_ns = order.cause_recv_ts_ns
                r.live = 1
                _report(s, r, EXEC_ACK, now, r.leaves, 0, 0)
                return 0
        _reject(s, order, REJECT_INVALID, EXEC_REJECT, now)
        return REJECT_INVALID
    j = _find(resting, order.client_order_id)
    if j < 0:
        _reject(s, order, REJECT_UNKNOWN_ORDER, EXEC_CANCEL_REJECT, now)
        return REJECT_UNKNOWN_ORDER
    r = resting[j]
    if kind == INTENT_REPLACE:
        if order.qty_lots <= 0 or order.px_ticks <= 0:
            _reject(s, order, REJECT_INVALID, EXEC_CANCEL_REJECT, now)
            return REJECT_INVALID
        r.px = order.px_ticks
        r.leaves = order.qty_lots
        r.cause_ns = order.cause_recv_ts_ns
        _report(s, r, EXEC_REPLACE_ACK, now, r.leaves, 0, 0)
        return 0
    if kind == INTENT_CANCEL:
        _report(s, r, EXEC_CANCEL_ACK, now, r.leaves, 0, 0)
        r.live = 0
        return 0
    _reject(s, order, REJECT_INVALID, EXEC_CANCEL_REJECT, now)
    return REJECT_INVALID


@njit(cache=True, _nrt=False)
def _move_mid(w, rng):
    dt_s = w.dt_ns * 1e-9
    if w.increments == INC_BINARY:
        step = w.sigma_ticks * math.sqrt(dt_s)
        w.mid += step if rng_uniform(rng, STREAM_MID) < 0.5 else -step
    else:
        w.mid += w.sigma_ticks * math.sqrt(dt_s) * rng_normal(rng, STREAM_MID)


@njit(cache=True, _nrt=False)
def _resolve_step(s, now):
    """The step that ends at now: the mid moves and each resting order is hit with
    probability lambda(delta) dt (one lot at its price), delta measured from the mid before
    or after the move (``fill_mid``)."""
    w = s[0][0]
    resting = s[1]
    rng = s[3]
    best_bid = -1
    best_ask = -1
    for j in range(resting.shape[0]):
        r = resting[j]
        if r.live == 0:
            continue
        if r.side == SIDE_BUY and (best_bid < 0 or r.px > best_bid):
            best_bid = r.px
        if r.side == SIDE_SELL and (best_ask < 0 or r.px < best_ask):
            best_ask = r.px
    if best_bid >= 0 and best_ask >= 0:
        w.spread_sum += best_ask - best_bid
        w.spread_steps += 1
    _move_mid(w, rng)   # drawn first either way: the mid path does not depend on fill_mid
    ref = w.mid if w.fill_mid == FILL_MID_MOVED else w.quote_mid
    for j in range(resting.shape[0]):
        r = resting[j]
        if r.live == 0:
            continue
        # one uniform per resting order and step, drawn whether or not it fills, so the
        # stream does not depend on the outcome
        u = rng_uniform(rng, STREAM_FILLS)
        if u >= as_fill_probability(w, r.side, r.px, ref):
            continue
        r.leaves -= 1
        r.cum += 1
        if r.side == SIDE_BUY:
            w.cash -= r.px
            w.inventory += 1.0
            w.bid_fills += 1
        else:
            w.cash += r.px
            w.inventory -= 1.0
            w.ask_fills += 1
        w.fills += 1
        _report(s, r, EXEC_FILL if r.leaves <= 0 else EXEC_PARTIAL, now, 1, LIQ_MAKER,
                w.next_trade_id)
        w.next_trade_id += 1
        if r.leaves <= 0:
            r.live = 0


@njit(cache=True, _nrt=False)
def as_mid_x2(w):
    """The published mid: bid + ask, ticks (round(2 S))."""
    return np.int64(math.floor(2.0 * w.mid + 0.5))


@njit(cache=True, _nrt=False)
def _md(rec, w, kind, side, px, qty, flags, now):
    rec.ring_seq = 0
    rec.kind = kind
    rec.side = side
    rec.flags = flags
    rec.instrument_id = w.instrument_id
    rec.exch_ts_ns = now
    rec.recv_ts_ns = now
    rec.px_ticks = px
    rec.qty_lots = qty
    rec.aux0 = w.step
    rec.aux1 = 0


@njit(cache=True, _nrt=False)
def _publish(w, out_md, n_md, now):
    """The book at now: SNAP_START, bid LEVEL, ask LEVEL, SNAP_END (bid + ask = round(2 S))."""
    if n_md + 4 > out_md.shape[0]:
        return n_md, False
    m2 = as_mid_x2(w)
    h = w.touch_half_ticks
    if m2 % 2 == 0:
        bid = m2 // 2 - h
        ask = m2 // 2 + h
    else:
        bid = (m2 - 1) // 2 - (h - 1)
        ask = m2 - bid
    _md(out_md[n_md], w, MSG_SNAP_START, 0, 0, 0, MFLAG_SNAPSHOT, now)
    _md(out_md[n_md + 1], w, MSG_LEVEL, SIDE_BUY, bid, 1, MFLAG_SNAPSHOT, now)
    _md(out_md[n_md + 2], w, MSG_LEVEL, SIDE_SELL, ask, 1, MFLAG_SNAPSHOT, now)
    _md(out_md[n_md + 3], w, MSG_SNAP_END, 0, 0, 0, MFLAG_SNAPSHOT | MFLAG_LAST_IN_BATCH, now)
    return n_md + 4, True


@njit(cache=True, _nrt=False)
def as_next_ns(s):
    """When the world next has something to deliver: now (reports waiting), the next step,
    or NEVER after the last one."""
    w = s[0][0]
    if w.n_out > 0:
        return w.now_ns
    if w.step > w.n_steps:
        return NEVER
    return w.t0_ns + w.step * w.dt_ns


@njit(cache=True, _nrt=False)
def _drain(s, out_ex, n_ex):
    w = s[0][0]
    out = s[2]
    k = 0
    while k < w.n_out and n_ex < out_ex.shape[0]:
        out_ex[n_ex] = out[k]
        n_ex += 1
        k += 1
    for j in range(k, w.n_out):   # what did not fit goes first next time
        out[j - k] = out[j]
    w.n_out -= k
    return n_ex


@njit(cache=True, _nrt=False)
def as_advance(s, t_limit, out_md, n_md, out_ex, n_ex, stop_at_delivery):
    """Run the world up to t_limit, appending what it delivers into out_md[n_md:] /
    out_ex[n_ex:]: waiting reports first (at the current time), then each step t_k <= t_limit
    (the step's fills, then its book). With ``stop_at_delivery`` it returns after the first
    delivery (one batch for the participant). Returns (n_md, n_ex, time reached)."""
    w = s[0][0]
    while True:
        if w.n_out > 0:
            n_ex = _drain(s, out_ex, n_ex)
            if stop_at_delivery or w.n_out > 0:
                return n_md, n_ex, w.now_ns
        if w.step > w.n_steps:   # the world has ended: nothing more happens
            return n_md, n_ex, w.now_ns
        t = w.t0_ns + w.step * w.dt_ns
        if t > t_limit:
            if t_limit > w.now_ns:
                w.now_ns = t_limit
            return n_md, n_ex, w.now_ns
        if n_md + 4 > out_md.shape[0]:
            return n_md, n_ex, w.now_ns
        w.now_ns = t
        if w.step > 0:
            _resolve_step(s, t)
            n_ex = _drain(s, out_ex, n_ex)
        n_md, _ok = _publish(w, out_md, n_md, t)
        w.quote_mid = w.mid
        w.step += 1
        if stop_at_delivery or w.n_out > 0:
            return n_md, n_ex, t


@njit(cache=True, _nrt=False)
def as_profit_ticks(s):
    """The participant's profit at the current mid: cash + inventory x S (ticks x lots)."""
    w = s[0][0]
    return w.cash + w.inventory * w.mid


def make_out_buffers(n_md: int = 64, n_ex: int = 64):
    """Delivery buffers for a driver (cold)."""
    return np.zeros(n_md, dtype=MARKET_DTYPE), np.zeros(n_ex, dtype=EXEC_DTYPE)


__all__ = ["AsWorld", "FILL_MID_MOVED", "FILL_MID_QUOTED", "INC_BINARY", "INC_GAUSSIAN",
           "RESTING_DTYPE",
           "WORLD_DTYPE", "as_advance", "as_fill_probability", "as_mid_x2", "as_next_ns",
           "as_profit_ticks", "as_reset", "as_submit", "make_out_buffers"]
