"""Execution algorithm for one parent order: VWAP (volume curve), POV (participation) or IS
(Almgren-Chriss), plus TWAP as the naive benchmark. Runs in a strategy process (live) or the
backtest; the hooks and their helpers are HOT PATH (@njit, no allocation), the class and
``fit_volume_curve`` are cold.

The parent order (side, quantity_lots, start_s, end_s, limit_price) comes from the parameters,
so ``run.py set <name> quantity_lots=... --why ...`` gives a new one. Times are seconds after
the parent is received (the strategy's first hook call, or the ``run.py set`` that changed
side, quantity_lots, start_s or end_s: then the old parent's working child is cancelled and
the new parent counts from zero; other changes, e.g. limit_price or participation_rate, apply
to the running parent).

Schedules: f(t) = fraction of the parent that should be done at time t, T = end - start:
- ``twap``:  f = (t - start) / T  (the benchmark: the same child logic on a straight line)
- ``vwap``:  f = cumulative share of the ``volume_curve`` (weights of equal time bins of the
  window; empty = flat). A curve is learned from data with ``fit_volume_curve(records, ...)``
  (or ``run.py fit vwap --data F --window-s S --bins B``, which prints the parameter): the
  average share of the traded volume in each bin of consecutive windows of the recording.
  Berkowitz, Logue and Noser (1988), "The total cost of transactions on the NYSE", J. of
  Finance 43(1) (the VWAP benchmark); Kissell (2013), "The Science of Algorithmic Trading and
  Portfolio Management", ch. 8 (static volume-profile VWAP).
- ``is``:    Almgren and Chriss (2000), "Optimal execution of portfolio transactions", J. of
  Risk 3(2): with risk aversion lambda (1/bps), volatility sigma (bps per sqrt(s)) and
  temporary impact eta (bps of cost per unit of trading rate, the rate in parents per second,
  so bps x s), kappa = sqrt(lambda sigma^2 / eta) (1/s) and the remaining share is
  x(t) / X = sinh(kappa (T - t)) / sinh(kappa T): f = 1 - x / X. Higher risk aversion front-
  loads the trajectory (kappa -> 0 is TWAP).
- ``pov``:   target = participation_rate x the volume traded by others since start, others =
  the tape's volume V less our own fills F: F <= rate (V - F), i.e. F <= rate / (1 + rate) V
  (conservative when our fills are not on the tape). It is also a hard cap: a child is never
  sized so that filled + working could exceed it.

Child orders, evaluated every ``child_interval_ms`` (on the timer) and on every execution
report: a passive child (post-only, joining the best bid for a buy, the best ask for a sell)
sized to the schedule one interval ahead; when the parent is behind its schedule by more than
``behind_tolerance`` x quantity_lots, the passive child is pulled back where needed and the
shortfall crosses with an IOC at the opposite touch (a marketable order with a reason: the
schedule). After end_s whatever is left crosses, interval by interval. Never beyond
limit_price (a buy child is priced at most at the limit, a sell at least): a parent whose limit
is out of the market waits; after a reject or risk denial nothing is sent for one interval.
All children are on one side: no self-trade is possible. Nothing
is sent into an invalid, one-sided, crossed or halted book (a resting child is cancelled).

Reported in the state (``HostedStrategy.st`` / the backtest's strategy state): ``filled_lots``,
``avg_px_ticks``, ``arrival_px_ticks`` (the mid at start), ``market_vwap_ticks`` (every trade of
the instrument on the tape from start to the end of the window, or to now while running),
``slippage_arrival_bps`` and ``slippage_vwap_bps`` (positive = worse than the benchmark: paid
more for a buy, got less for a sell), ``fee_bps`` (fees over filled notional), ``max_part``
(the highest filled / others' volume seen, POV), ``n_passive_fills`` / ``n_cross_fills``.

Parameters (``[strategies].params``; units in the names):
  mode                 vwap | pov | is | twap
  side                 buy | sell
  quantity_lots        parent quantity, lots
  start_s, end_s       the window, seconds after the parent is received
  limit_price          worst price, quote currency (0 = none)
  participation_rate   POV: share of the others' volume to trade and its hard cap (0..1]
  volume_curve         VWAP: comma-separated weights of equal time bins (up to 16; "" = flat)
  risk_aversion        IS: lambda, 1/bps
  sigma_bps            IS: volatility, bps per sqrt(second)
  impact_bps           IS: temporary impact eta, bps x second
  behind_tolerance     cross when behind the schedule by more than this share of the parent
  child_interval_ms    schedule evaluation and requote interval of the passive child, ms
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from common.schema import opt
from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid, valid_mid_x2
from shm.records import (EXEC_FILL, EXEC_PARTIAL, MSG_TRADE, ORD_IOC, ORD_POST_ONLY, SIDE_BUY,
                         SIDE_SELL)
from strategies.base import (OST_LIVE, Strategy, cancel, cancel_all, last_reject_ns,
                             order_slot, place, replace)

MAX_BINS = 16
MODES = ("vwap", "pov", "is", "twap")
MODE_VWAP, MODE_POV, MODE_IS, MODE_TWAP = 0, 1, 2, 3


def parse_curve(text: str) -> list[float]:
    """The weights of a ``volume_curve`` string; ValueError naming what is wrong."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        w = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of numbers") from None
    if len(w) > MAX_BINS:
        raise ValueError(f"{len(w)} bins; at most {MAX_BINS}")
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError("weights must be finite, >= 0 and not all 0")
    return w


@dataclass(frozen=True)
class VwapParams:
    mode: str = opt("vwap", "vwap | pov | is | twap", choices=MODES)
    side: str = opt("buy", "buy | sell", choices=("buy", "sell"))
    quantity_lots: int = opt(1000, "parent quantity, lots", gt=0)
    start_s: float = opt(0.0, "window start, seconds after the parent is received", ge=0)
    end_s: float = opt(60.0, "window end, seconds after the parent is received", gt=0)
    limit_price: float = opt(0.0, "worst price, quote currency (0 = none)", ge=0)
    participation_rate: float = opt(0.1, "POV share of the others' volume and its cap", gt=0,
                                    le=1)
    volume_curve: str = opt("", "VWAP bin weights, comma-separated (\"\" = flat)")
    risk_aversion: float = opt(1e-4, "IS lambda, 1/bps", ge=0)
    sigma_bps: float = opt(3.0, "IS volatility, bps per sqrt(second)", gt=0)
    impact_bps: float = opt(1.0, "IS temporary impact eta, bps x second", gt=0)
    behind_tolerance: float = opt(0.05, "cross when behind by more than this share", ge=0,
                                  le=1)
    child_interval_ms: float = opt(200.0, "schedule evaluation / requote interval, ms", gt=0)

    def validate(self):
        if self.end_s <= self.start_s:
            yield f"end_s = {self.end_s}: must be after start_s ({self.start_s})"
        try:
            parse_curve(self.volume_curve)
        except ValueError as exc:
            yield f"volume_curve: {exc}"


STATE_FIELDS = [
    ("t0_ns", "i8"), ("start_ns", "i8"), ("end_ns", "i8"), ("next_eval_ns", "i8"),
    ("key_side", "i8"), ("key_qty", "i8"), ("key_start", "f8"), ("key_end", "f8"),
    ("arrival_mid_x2", "i8"), ("filled_lots", "i8"), ("filled_px_sum", "f8"),
    ("mkt_lots", "i8"), ("mkt_px_sum", "f8"),
    ("passive_coid", "i8"), ("passive_sent_ns", "i8"), ("cross_coid", "i8"),
    ("target_lots", "i8"), ("n_children", "i8"), ("n_crosses", "i8"),
    ("n_passive_fills", "i8"), ("n_cross_fills", "i8"), ("done", "i8"), ("n_parents", "i8"),
    ("avg_px_ticks", "f8"), ("arrival_px_ticks", "f8"), ("market_vwap_ticks", "f8"),
    ("slippage_arrival_bps", "f8"), ("slippage_vwap_bps", "f8"), ("fee_bps", "f8"),
    ("max_part", "f8"),
]


@njit(cache=True)
def _curve_frac(p, x):
    """Cumulative share of the volume curve at x in [0, 1] (linear within a bin)."""
    w = (p.w0, p.w1, p.w2, p.w3, p.w4, p.w5, p.w6, p.w7, p.w8, p.w9, p.w10, p.w11, p.w12,
         p.w13, p.w14, p.w15)
    nb = np.int64(p.n_bins)
    pos = x * nb
    k = np.int64(math.floor(pos))
    if k >= nb:
        return 1.0
    acc = 0.0
    for j in range(k):
        acc += w[j]
    return acc + w[k] * (pos - k)


@njit(cache=True)
def schedule_frac(p, st, t_ns):
    """f(t): the share of the parent the schedule wants done by t (not used for POV)."""
    if t_ns <= st.start_ns:
        return 0.0
    if t_ns >= st.end_ns:
        return 1.0
    T = (st.end_ns - st.start_ns) * 1e-9
    x = (t_ns - st.start_ns) * 1e-9 / T
    mode = p.mode_code
    if mode == MODE_VWAP:
        return _curve_frac(p, x)
    if mode == MODE_IS:
        k = p.kappa
        if k * T < 1e-9:
            return x
        # sinh(k(T - t)) / sinh(kT) = e^{-kt} (1 - e^{-2k(T-t)}) / (1 - e^{-2kT}): no overflow
        t = x * T
        rem = math.exp(-k * t) * (1.0 - math.exp(-2.0 * k * (T - t))) / (1.0 - math.exp(-2.0 * k * T))
        return 1.0 - rem
    return x


@njit(cache=True)
def _target(p, st, t_ns, qty):
    if p.mode_code == MODE_POV:
        # filled <= rate x (tape - filled)  <=>  filled <= rate / (1 + rate) x tape
        r = p.participation_rate
        return min(qty, np.int64(math.floor(r / (1.0 + r) * st.mkt_lots + 1e-9)))
    return min(qty, np.int64(math.ceil(schedule_frac(p, st, t_ns) * qty - 1e-9)))


@njit(cache=True)
def _leaves(ctx, coid):
    s = order_slot(ctx, coid)
    return ctx.orders[s].leaves if s >= 0 else np.int64(0)


@njit(cache=True)
def vwap_report(ctx, st, p):
    """Fill statistics into the state (cheap; called after fills and on the timer)."""
    sgn = 1.0 if p.buy != 0 else -1.0
    if st.filled_lots > 0:
        st.avg_px_ticks = st.filled_px_sum / st.filled_lots
        notional = st.filled_px_sum * p.tick * p.lot
        st.fee_bps = ctx.pos[0].fees / notional * 1e4 if notional > 0 else 0.0
        if st.arrival_mid_x2 > 0:
            st.arrival_px_ticks = st.arrival_mid_x2 * 0.5
            st.slippage_arrival_bps = sgn * (st.avg_px_ticks / st.arrival_px_ticks - 1.0) * 1e4
        if st.mkt_lots > 0:
            st.market_vwap_ticks = st.mkt_px_sum / st.mkt_lots
            st.slippage_vwap_bps = sgn * (st.avg_px_ticks / st.market_vwap_ticks - 1.0) * 1e4
        others = st.mkt_lots - st.filled_lots
        if others > 0:
            part = st.filled_lots / others
            if part > st.max_part:
                st.max_part = part


@njit(cache=True)
def _new_parent(ctx, st, p, now_ns):
    cancel_all(ctx, now_ns)
    st.t0_ns = now_ns
    st.start_ns = now_ns + np.int64(p.start_ns)
    st.end_ns = now_ns + np.int64(p.end_ns)
    st.key_side = p.buy
    st.key_qty = p.quantity_lots
    st.key_start = p.start_s
    st.key_end = p.end_s
    st.next_eval_ns = 0
    st.arrival_mid_x2 = 0
    st.filled_lots = 0
    st.filled_px_sum = 0.0
    st.mkt_lots = 0
    st.mkt_px_sum = 0.0
    st.passive_coid = 0
    st.cross_coid = 0
    st.target_lots = 0
    st.done = 0
    st.max_part = 0.0
    st.avg_px_ticks = 0.0
    st.slippage_arrival_bps = 0.0
    st.slippage_vwap_bps = 0.0
    st.n_parents += 1


@njit(cache=True)
def vwap_evaluate(ctx, st, p, now_ns):
    """Bring the children in line with the schedule (module docstring)."""
    if st.t0_ns == 0:
        _new_parent(ctx, st, p, now_ns)
    if now_ns < st.start_ns:
        return
    inst = ctx.inst[0]
    px, meta = ctx.px, ctx.meta
    if not is_valid(px, meta, inst) or meta[inst, META_HALTED] != 0:
        cancel_all(ctx, now_ns)             # nothing of ours rests in a book without a price
        return
    if st.arrival_mid_x2 == 0:
        st.arrival_mid_x2 = valid_mid_x2(px, meta, inst)
    last = last_reject_ns(ctx)
    if last != 0 and now_ns - last < p.child_ns:
        return                               # a denied child is not retried in a tight loop
    qty = np.int64(p.quantity_lots)
    remaining = qty - st.filled_lots
    if remaining <= 0:
        st.done = 1
        cancel_all(ctx, now_ns)
        return
    buy = p.buy != 0
    bid = best_bid_px(px, meta, inst)
    ask = best_ask_px(px, meta, inst)
    lim = np.int64(p.limit_ticks)
    passive_leaves = _leaves(ctx, st.passive_coid)
    cross_leaves = _leaves(ctx, st.cross_coid)
    target = _target(p, st, now_ns, qty)
    st.target_lots = target
    pov = p.mode_code == MODE_POV
    allow = (target if pov else qty) - st.filled_lots      # most we may have working
    behind = target - st.filled_lots
    tol = max(np.int64(1), np.int64(p.behind_tolerance * qty))
    if now_ns >= st.end_ns:
        tol = 0                              # past the window: everything left crosses
    if behind > tol and cross_leaves == 0 and st.cross_coid == 0:
        ps = order_slot(ctx, st.passive_coid)
        if ps >= 0 and passive_leaves + behind > allow:
            cancel(ctx, st.passive_coid, now_ns)   # free the allowance; cross next time
            return
        cpx = ask if buy else bid
        if lim > 0 and ((buy and cpx > lim) or (not buy and cpx < lim)):
            return                           # the limit is out of the market: wait
        q = min(behind, allow - passive_leaves)
        if q > 0:
            st.cross_coid = place(ctx, 0, SIDE_BUY if buy else SIDE_SELL, ORD_IOC, cpx, q,
                                  now_ns)
            if st.cross_coid != 0:
                st.n_crosses += 1
        return
    # the passive child: the schedule one interval ahead, joining our side's touch
    if pov:
        ahead = target
    else:
        ahead = _target(p, st, now_ns + np.int64(p.child_ns), qty)
    want = min(ahead, qty) - st.filled_lots - cross_leaves
    if want > allow - cross_leaves:
        want = allow - cross_leaves
    ppx = bid if buy else ask
    if lim > 0 and ((buy and ppx > lim) or (not buy and ppx < lim)):
        ppx = lim
    if buy and ppx >= ask:
        ppx = ask - 1
    if not buy and ppx <= bid:
        ppx = bid + 1
    s = order_slot(ctx, st.passive_coid)
    can_send = st.passive_sent_ns == 0 or now_ns - st.passive_sent_ns >= p.child_ns
    if s < 0:
        st.passive_coid = 0
        if want > 0 and can_send and ppx > 0:
            st.passive_coid = place(ctx, 0, SIDE_BUY if buy else SIDE_SELL, ORD_POST_ONLY,
                                    ppx, want, now_ns)
            if st.passive_coid != 0:
                st.passive_sent_ns = now_ns
                st.n_children += 1
        return
    o = ctx.orders[s]
    if o.state != OST_LIVE:
        return
    if want <= 0:
        if pov and o.leaves > allow:
            cancel(ctx, st.passive_coid, now_ns)
        return
    if (o.px != ppx or o.leaves != want) and (can_send or (pov and o.leaves > allow)):
        if replace(ctx, st.passive_coid, ppx, want, now_ns):
            st.passive_sent_ns = now_ns


@njit(cache=True)
def vwap_on_market(ctx, st, p, md, n_md, now_ns):
    if st.t0_ns == 0 or now_ns < st.start_ns:
        return
    inst = ctx.inst[0]
    end = st.end_ns
    for j in range(n_md):
        r = md[j]
        if r.kind == MSG_TRADE and r.instrument_id == inst and r.recv_ts_ns <= end:
            st.mkt_lots += r.qty_lots
            st.mkt_px_sum += float(r.px_ticks) * r.qty_lots


@njit(cache=True)
def vwap_on_exec(ctx, st, p, ex, n_ex, now_ns):
    inst = ctx.inst[0]
    for j in range(n_ex):
        e = ex[j]
        if (e.kind == EXEC_FILL or e.kind == EXEC_PARTIAL) and e.instrument_id == inst \
                and e.strategy_id == ctx.rt[0].strategy_id:
            st.filled_lots += e.qty_lots
            st.filled_px_sum += float(e.px_ticks) * e.qty_lots
            if e.client_order_id == st.cross_coid:
                st.n_cross_fills += 1
            else:
                st.n_passive_fills += 1
    if st.cross_coid != 0 and order_slot(ctx, st.cross_coid) < 0:
        st.cross_coid = 0                    # the IOC is final
    vwap_report(ctx, st, p)
    if st.t0_ns != 0:
        vwap_evaluate(ctx, st, p, now_ns)


@njit(cache=True)
def vwap_on_timer(ctx, st, p, now_ns):
    if st.next_eval_ns != 0 and now_ns < st.next_eval_ns:
        return
    st.next_eval_ns = now_ns + np.int64(p.child_ns)
    vwap_report(ctx, st, p)
    vwap_evaluate(ctx, st, p, now_ns)


@njit(cache=True)
def vwap_on_params(ctx, st, p, now_ns):
    if (st.key_side != p.buy or st.key_qty != p.quantity_lots or st.key_start != p.start_s
            or st.key_end != p.end_s):
        _new_parent(ctx, st, p, now_ns)      # a new parent order


class Vwap(Strategy):
    """Parent-order execution: VWAP, POV, Almgren-Chriss IS or TWAP (module docstring)."""

    kind = "vwap"
    Params = VwapParams
    n_instruments = 1
    max_orders = 4
    on_market = staticmethod(vwap_on_market)
    on_exec = staticmethod(vwap_on_exec)
    on_timer = staticmethod(vwap_on_timer)
    on_params = staticmethod(vwap_on_params)

    def state_fields(self):
        return STATE_FIELDS

    def derive(self) -> dict:
        p = self.params
        ins = self.instruments[0]
        w = parse_curve(p.volume_curve) or [1.0]
        total = sum(w)
        weights = [x / total for x in w] + [0.0] * (MAX_BINS - len(w))
        d = {f"w{k}": float(weights[k]) for k in range(MAX_BINS)}
        d.update({
            "n_bins": len(w), "mode_code": MODES.index(p.mode), "buy": int(p.side == "buy"),
            "start_ns": p.start_s * 1e9, "end_ns": p.end_s * 1e9,
            "child_ns": p.child_interval_ms * 1e6,
            "kappa": math.sqrt(p.risk_aversion * p.sigma_bps ** 2 / p.impact_bps),
            "limit_ticks": int(round(p.limit_price / float(ins.tick_size))),
            "tick": float(ins.tick_size), "lot": float(ins.lot_size)})
        return d


def fit_volume_curve(records, instrument_id: int, window_s: float, bins: int) -> list[float]:
    """Cold: the average share of traded volume in each of ``bins`` equal bins of consecutive
    ``window_s`` windows of a recording (MARKET_DTYPE records; exchange time, or receive time
    where it is 0), for ``volume_curve``. ValueError when there is nothing to fit."""
    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins = {bins}: must be 1..{MAX_BINS}")
    if not window_s > 0:
        raise ValueError(f"window_s = {window_s}: must be > 0")
    recs = np.asarray(records)
    tr = recs[(recs["kind"] == MSG_TRADE) & (recs["instrument_id"] == instrument_id)]
    if len(tr) == 0:
        raise ValueError(f"no trades of instrument {instrument_id} to fit a volume curve on")
    t = np.where(tr["exch_ts_ns"] != 0, tr["exch_ts_ns"], tr["recv_ts_ns"]).astype(np.float64)
    t0 = float(t.min())
    w_ns = window_s * 1e9
    pos = ((t - t0) % w_ns) / w_ns
    k = np.minimum((pos * bins).astype(np.int64), bins - 1)
    vol = np.bincount(k, weights=tr["qty_lots"].astype(np.float64), minlength=bins)
    return [float(v) for v in vol / vol.sum()]
