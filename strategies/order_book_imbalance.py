"""Order-book imbalance taker: a short-horizon directional signal from the shape of the book and
the flow into it. Runs in a strategy process (live) or the backtest; the hooks are HOT PATH
(@njit, no allocation, O(book_depth) per batch), the class is cold.

Model. On every market batch of the instrument, with a usable book (valid, not halted):

    I   = depth-weighted imbalance over the best ``book_depth`` levels, level k weighing
          depth_decay^k (features.weighted_depth_imbalance; the volume imbalance of Cartea,
          Donnelly & Jaimungal 2018, "Enhancing trading strategies with order book signals",
          Applied Mathematical Finance 25(1): the imbalance predicts the sign and size of the
          next mid move and the arrival of market orders on the heavy side's opposite)
    OFI = order-flow imbalance of Cont, Kukanov & Stoikov 2014, "The price impact of order
          book events", J. Financial Econometrics 12(1): the e_n of every book change
          (features.ofi_update), summed with clock-time decay (half-life ``ofi_halflife_ms``)
          and scaled by the lots at the touch, tanh(OFI / (bid_qty + ask_qty)), in [-1, 1]
    s   = clip((1 - ofi_weight) * I + ofi_weight * tanh(...), -1, 1)

The signal predicts the mid's move over the next ``max_hold_ms``: E[r] = beta * s, in bps.
beta starts at the prior ``signal_bps`` and is re-estimated on the timer: every
``max_hold_ms`` the realised mid return since the previous sample is regressed (through the
origin, exponentially weighted, half-life ``beta_halflife_samples`` samples) on the signal at
that sample, shrunk to the prior with the weight of ``prior_samples`` samples of s = 1.
So a book whose imbalance predicts nothing stops being traded.

Rule (costs: one marketable order pays ``fee_bps`` plus half the spread, both ways):
- flat: enter one clip of ``order_qty_lots`` in the direction of s when |s| >=
  ``imbalance_threshold`` and beta * |s| >= 2 * (fee_bps + half spread in bps) +
  ``min_edge_bps`` (the expected move pays the round trip);
- in a position: back to flat when the signal no longer points our way (side x s <=
  ``exit_threshold``) or after ``max_hold_ms``.
Orders are IOC limits ``slippage_ticks`` through the touch: the signal lives for
milliseconds, a passive order would fill mostly when the signal was wrong (adverse
selection). An IOC cannot rest: nothing to cancel, nothing to self-cross. At most one order
in flight; entries at least ``min_order_interval_ms`` apart; nothing for
``reject_backoff_ms`` after a reject or risk denial; no order into an invalid, one-sided,
crossed, locked or halted book (a position waits for a usable book to be closed).

Parameters (``[strategies].params``; units in the names):
  book_depth             levels per side in the imbalance (1..64)
  depth_decay            weight ratio of one level to the next, (0, 1]; 1 = plain sum
  ofi_weight             weight of the order-flow term in s, [0, 1]
  ofi_halflife_ms        clock-time half-life of the OFI sum, milliseconds
  imbalance_threshold    |s| needed to enter, (0, 1)
  exit_threshold         leave when side x s <= this, [-1, imbalance_threshold)
  signal_bps             prior beta: expected mid move over max_hold_ms per unit of s, bps
  prior_samples          weight of that prior in samples (>= 1)
  beta_halflife_samples  EWMA half-life of the beta regression, samples
  fee_bps                taker fee assumed per order, bps of notional (match the venue's)
  min_edge_bps           extra expected edge over the round-trip cost required, bps
  max_hold_ms            holding horizon and beta's sampling interval, milliseconds
  order_qty_lots         size of one entry, lots
  slippage_ticks         IOC limit this many ticks through the touch
  min_order_interval_ms  minimum time between two entries, milliseconds
  reject_backoff_ms      nothing sent this long after a reject or denial, milliseconds
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import best_ask_qty, best_bid_qty, valid_mid_x2
from strategies._orders import backoff_over, book_usable, take_to_target, taker_cost_bps
from strategies.base import Strategy, open_on, position
from strategies.features import NO_LOTS, OFI_DTYPE, ofi_update, weighted_depth_imbalance

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class OrderBookImbalanceParams:
    book_depth: int = opt(5, "levels per side summed into the imbalance", ge=1, le=64)
    depth_decay: float = opt(0.6, "weight of level k+1 relative to level k, (0, 1]", gt=0, le=1)
    ofi_weight: float = opt(0.3, "weight of the order-flow-imbalance term in the signal, [0, 1]",
                            ge=0, le=1)
    ofi_halflife_ms: float = opt(500.0, "clock-time half-life of the OFI sum, ms", gt=0)
    imbalance_threshold: float = opt(0.5, "|signal| needed to enter, (0, 1)", gt=0, lt=1)
    exit_threshold: float = opt(0.0, "leave when side x signal <= this", ge=-1, lt=1)
    signal_bps: float = opt(4.0, "prior: expected mid move over max_hold_ms per unit of "
                            "signal, bps", gt=0)
    prior_samples: float = opt(50.0, "weight of the signal_bps prior, in samples", ge=1)
    beta_halflife_samples: float = opt(500.0, "EWMA half-life of the beta regression, samples",
                                       gt=0)
    fee_bps: float = opt(1.0, "taker fee per order, bps of notional (the venue's)", ge=0)
    min_edge_bps: float = opt(0.0, "expected edge required beyond the round-trip cost, bps",
                              ge=0)
    max_hold_ms: float = opt(1000.0, "holding horizon (and beta sampling interval), ms", gt=0)
    order_qty_lots: int = opt(10, "size of one entry, lots", gt=0)
    slippage_ticks: int = opt(0, "IOC limit this many ticks through the touch", ge=0)
    min_order_interval_ms: float = opt(100.0, "minimum time between two entries, ms", ge=0)
    reject_backoff_ms: float = opt(1000.0, "send nothing this long after a reject or risk "
                                   "denial, ms", ge=0)

    def validate(self):
        if not self.exit_threshold < self.imbalance_threshold:
            yield (f"exit_threshold = {self.exit_threshold}: must be below imbalance_threshold "
                   f"({self.imbalance_threshold})")


STATE_FIELDS = [
    ("imb", "f8"), ("ofi_sum", "f8"), ("ofi_ts", "i8"), ("sig", "f8"),
    ("beta", "f8"), ("sxy", "f8"), ("sxx", "f8"), ("n_beta", "i8"),
    ("sample_sig", "f8"), ("sample_mid_x2", "i8"), ("next_sample_ns", "i8"),
    ("entry_ns", "i8"), ("last_entry_ns", "i8"), ("n_entries", "i8"), ("n_exits", "i8"),
    ("n_cost_blocked", "i8"),   # signals past the threshold that did not pay the costs
]


@njit(cache=True)
def obi_signal(ctx, st, p, now_ns):
    """Update I, the decayed OFI and s from the current book; NaN signal on an unusable one."""
    inst = ctx.inst[0]
    e = ofi_update(st.ofi, ctx.px, ctx.qty, ctx.meta, inst)   # also drops the reference
    if st.ofi_ts != 0 and now_ns > st.ofi_ts:
        st.ofi_sum *= math.exp(-_LN2 * (now_ns - st.ofi_ts) / p.ofi_halflife_ns)
    st.ofi_ts = now_ns
    if e != NO_LOTS:
        st.ofi_sum += e
    if not book_usable(ctx, 0):
        st.sig = np.nan
        return
    imb = weighted_depth_imbalance(ctx.px, ctx.qty, ctx.meta, inst, p.book_depth, p.depth_decay)
    touch = best_bid_qty(ctx.qty, ctx.meta, inst) + best_ask_qty(ctx.qty, ctx.meta, inst)
    flow = math.tanh(st.ofi_sum / touch) if touch > 0 else 0.0
    s = (1.0 - p.ofi_weight) * imb + p.ofi_weight * flow
    st.imb = imb
    st.sig = min(1.0, max(-1.0, s))


@njit(cache=True)
def obi_sample_beta(ctx, st, p, now_ns):
    """Every max_hold_ms: regress the mid return since the previous sample on its signal."""
    if now_ns < st.next_sample_ns:
        return
    mid2 = valid_mid_x2(ctx.px, ctx.meta, ctx.inst[0])
    if mid2 <= 0 or not math.isfinite(st.sig):
        return
    if st.sample_mid_x2 > 0:
        r_bps = (mid2 - st.sample_mid_x2) / float(st.sample_mid_x2) * 1e4
        x = st.sample_sig
        st.sxy = p.beta_decay * st.sxy + x * r_bps
        st.sxx = p.beta_decay * st.sxx + x * x
        st.n_beta += 1
        st.beta = (st.sxy + p.prior_samples * p.signal_bps) / (st.sxx + p.prior_samples)
    st.sample_mid_x2 = mid2
    st.sample_sig = st.sig
    st.next_sample_ns = now_ns + np.int64(p.hold_ns)


@njit(cache=True)
def obi_decide(ctx, st, p, now_ns):
    if not book_usable(ctx, 0) or open_on(ctx, 0) or not backoff_over(ctx, p.backoff_ns, now_ns):
        return
    pos = position(ctx, 0)
    s = st.sig
    if pos == 0:
        if not (abs(s) >= p.imbalance_threshold):
            return
        if st.n_entries > 0 and now_ns - st.last_entry_ns < p.min_interval_ns:
            return
        cost = 2.0 * taker_cost_bps(ctx, 0, p.fee_bps) + p.min_edge_bps
        if st.beta * abs(s) < cost:
            st.n_cost_blocked += 1
            return
        want = p.order_qty_lots if s > 0 else -p.order_qty_lots
        if take_to_target(ctx, 0, want, p.slippage_ticks, now_ns) != 0:
            st.entry_ns = now_ns
            st.last_entry_ns = now_ns
            st.n_entries += 1
    else:
        side = 1.0 if pos > 0 else -1.0
        if side * s <= p.exit_threshold or now_ns - st.entry_ns >= p.hold_ns:
            if take_to_target(ctx, 0, 0, p.slippage_ticks, now_ns) != 0:
                st.n_exits += 1


@njit(cache=True)
def obi_on_market(ctx, st, p, md, n_md, now_ns):
    obi_signal(ctx, st, p, now_ns)
    obi_decide(ctx, st, p, now_ns)


@njit(cache=True)
def obi_on_exec(ctx, st, p, ex, n_ex, now_ns):
    obi_decide(ctx, st, p, now_ns)   # an IOC's outcome frees the next decision


@njit(cache=True)
def obi_on_timer(ctx, st, p, now_ns):
    obi_sample_beta(ctx, st, p, now_ns)
    obi_decide(ctx, st, p, now_ns)   # the holding time may be over in a quiet market


class OrderBookImbalance(Strategy):
    """Depth-weighted imbalance plus order-flow imbalance taker on one instrument (module
    docstring)."""

    kind = "order_book_imbalance"
    Params = OrderBookImbalanceParams
    n_instruments = 1
    on_market = staticmethod(obi_on_market)
    on_exec = staticmethod(obi_on_exec)
    on_timer = staticmethod(obi_on_timer)

    def state_fields(self):
        # OFI state is indexed by the global instrument id (as the books)
        return STATE_FIELDS + [("ofi", OFI_DTYPE, (self.instruments[0].instrument_id + 1,))]

    def init_state(self, st) -> None:
        st["ofi"]["e_lots"] = NO_LOTS
        st["beta"] = self.params.signal_bps
        st["sig"] = np.nan

    def derive(self) -> dict:
        p = self.params
        return {"ofi_halflife_ns": p.ofi_halflife_ms * 1e6, "hold_ns": p.max_hold_ms * 1e6,
                "min_interval_ns": p.min_order_interval_ms * 1e6,
                "backoff_ns": p.reject_backoff_ms * 1e6,
                "beta_decay": 0.5 ** (1.0 / p.beta_halflife_samples)}
