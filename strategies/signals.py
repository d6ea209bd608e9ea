"""Signal agents' computations: realized volatility, order-flow imbalance, a correlation matrix.

Runs in a signal-agent process (stages/signal_agent.py, one per ``[[signals]]`` entry) and in
tests; ``agent_step`` and its helpers are HOT PATH (@njit, no allocation), ``make_agent`` is
cold. Every feature comes from the shared library (strategies/features.py): this module only
schedules them (sampling, publishing) and writes SIGNAL_DTYPE records (shm/records.py).

A farm computes a feature once for all its shards here instead of once per shard, and only
where the feature needs no per-order state: everything that prices or sizes an order stays a
function call inside the strategy kernel (docs/architecture.md).

Schedule, on the agent's clock (``now_ns`` of each step):

- realized_vol: every ``sample_ns`` the mid of each instrument (``mid_ticks``; NaN while its
  book is invalid, rejected and counted by ``rv_update``, so the next return spans the gap)
  goes into a ``window``-return realized-volatility window; every ``publish_ns`` each
  instrument's ``realized_vol_annualised`` (365-day year) is published.
- order_flow_imbalance: after every batch of market records each instrument's ``ofi_update``
  (Cont-Kukanov-Stoikov e_n); every ``publish_ns`` ``ofi_take_lots``: the net flow (lots) of
  the interval.
- correlation: every ``sample_ns`` the mids of all instruments; when all of them are valid and
  were at the previous sample too, one log return each goes into a shared ring of ``window``
  aligned returns (a sample with any invalid book is skipped by all, so the returns stay
  aligned); every ``publish_ns`` ``pearson_correlation`` of each pair i < j: n (n - 1) / 2
  records.

A value without meaning (a book invalid now, fewer than two returns, no e_n in the interval, a
flat series) is published *invalid* (flags without SFLAG_VALID, value NaN), so a subscriber
tells "no value" from 0.
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from market.book import book_apply_batch, is_valid
from shm.records import (SFLAG_VALID, SIG_CORRELATION, SIG_ORDER_FLOW_IMB, SIG_REALIZED_VOL,
                         SIGNAL_DTYPE)
from strategies.features import (NO_LOTS, SECONDS_PER_YEAR_365D, make_ofi, make_realized_vol,
                                 mid_ticks, ofi_take_lots, ofi_update, pearson_correlation,
                                 realized_vol_annualised, rolling_count, rv_update)

AGENT_BOOK_LEVELS = 16   # an agent's books: the features read the touch (and a few levels)

AGENT_CTL_DTYPE = np.dtype([
    ("kind", "i8"),              # SIG_*
    ("n", "i8"),                 # instruments
    ("window", "i8"),
    ("sample_ns", "i8"),
    ("publish_ns", "i8"),
    ("next_sample_ns", "i8"),    # 0: not started (the first step starts both timers)
    ("next_publish_ns", "i8"),
    ("seq", "i8"),               # records written, ever (agent_seq of the next one)
    ("publishes", "i8"),         # publish rounds
    ("samples", "i8"),           # sampling rounds
    ("last_recv_ns", "i8"),      # receive time of the newest market record read
    ("corr_head", "i8"),         # correlation: next slot of the aligned return ring
    ("corr_count", "i8"),        # aligned returns held (<= window)
    ("corr_prev_ok", "i8"),      # 1: every mid was valid at the previous sample
    ("last_publish_ns", "i8"),
    ("_pad", "i8"),
], align=True)

Agent = namedtuple("Agent", "ctl inst rv ofi rets prev_mid mid out")
Agent.__doc__ = ("A signal agent's state: ctl AGENT_CTL_DTYPE[1], inst int64[n] (global ids), "
                 "rv (RealizedVol, n slots), ofi (OFI_DTYPE by global id), rets float64[n, "
                 "window] aligned log returns and prev_mid / mid float64[n] (correlation), out "
                 "SIGNAL_DTYPE[max(n, n (n - 1) / 2)] (the records of one publish).")

KIND_CODES = {"realized_vol": SIG_REALIZED_VOL, "order_flow_imbalance": SIG_ORDER_FLOW_IMB,
              "correlation": SIG_CORRELATION}


def make_agent(kind: str, instrument_ids, window: int = 100, sample_ms: float = 100.0,
               publish_ms: float = 100.0) -> Agent:
    """Cold: the state of one agent of ``kind`` over global ``instrument_ids``."""
    if kind not in KIND_CODES:
        raise ValueError(f"signal kind {kind!r}: one of {', '.join(KIND_CODES)}")
    ids = np.asarray(list(instrument_ids), dtype=np.int64)
    n = len(ids)
    if n < 1 or (kind == "correlation" and n < 2):
        raise ValueError(f"{kind}: needs {'2' if kind == 'correlation' else '1'} or more "
                         f"instruments, got {n}")
    if window < 2 or sample_ms <= 0 or publish_ms <= 0:
        raise ValueError(f"{kind}: window >= 2, sample_ms > 0 and publish_ms > 0 "
                         f"(got {window}, {sample_ms}, {publish_ms})")
    ctl = np.zeros(1, dtype=AGENT_CTL_DTYPE)
    c = ctl[0]
    c["kind"], c["n"], c["window"] = KIND_CODES[kind], n, window
    c["sample_ns"] = max(1, int(sample_ms * 1e6))
    c["publish_ns"] = max(1, int(publish_ms * 1e6))
    n_out = max(n, n * (n - 1) // 2)
    return Agent(ctl, ids, make_realized_vol(window, n), make_ofi(int(ids.max())),
                 np.zeros((n, window)), np.zeros(n), np.zeros(n),
                 np.zeros(n_out, dtype=SIGNAL_DTYPE))


@njit(cache=True)
def _record(a, k, kind, inst, other, value, valid, n_obs, now_ns):
    c = a.ctl[0]
    r = a.out[k]
    r.ring_seq = 0
    r.kind = kind
    ok = valid and math.isfinite(value)
    r.flags = SFLAG_VALID if ok else 0
    r.instrument_id = inst
    r.ts_ns = now_ns
    r.cause_recv_ns = c.last_recv_ns
    r.value = value if ok else np.nan
    r.other_inst = other
    r.n_obs = n_obs
    r.agent_seq = c.seq
    c.seq += 1


@njit(cache=True)
def _sample(a, px, meta, now_ns):
    c = a.ctl[0]
    c.samples += 1
    n = c.n
    if c.kind == SIG_REALIZED_VOL:
        for i in range(n):
            rv_update(a.rv, i, mid_ticks(px, meta, a.inst[i]), now_ns)
        return
    # correlation: aligned returns, or none for anyone
    ok = True
    for i in range(n):
        a.mid[i] = mid_ticks(px, meta, a.inst[i])
        if not (a.mid[i] > 0.0):
            ok = False
    if ok and c.corr_prev_ok != 0:
        h = c.corr_head
        for i in range(n):
            a.rets[i, h] = math.log(a.mid[i] / a.prev_mid[i])
        c.corr_head = (h + 1) % c.window
        if c.corr_count < c.window:
            c.corr_count += 1
    if ok:
        for i in range(n):
            a.prev_mid[i] = a.mid[i]
        c.corr_prev_ok = 1
    else:
        c.corr_prev_ok = 0


@njit(cache=True)
def _publish(a, px, meta, now_ns):
    c = a.ctl[0]
    c.publishes += 1
    c.last_publish_ns = now_ns
    n = c.n
    k = 0
    if c.kind == SIG_REALIZED_VOL:
        for i in range(n):
            inst = a.inst[i]
            v = realized_vol_annualised(a.rv, i, SECONDS_PER_YEAR_365D)
            _record(a, k, SIG_REALIZED_VOL, inst, 0, v, is_valid(px, meta, inst),
                    rolling_count(a.rv.r2, i), now_ns)
            k += 1
    elif c.kind == SIG_ORDER_FLOW_IMB:
        for i in range(n):
            inst = a.inst[i]
            s = ofi_take_lots(a.ofi, inst)
            _record(a, k, SIG_ORDER_FLOW_IMB, inst, 0, np.nan if s == NO_LOTS else float(s),
                    s != NO_LOTS and is_valid(px, meta, inst), a.ofi[inst].n_events, now_ns)
            k += 1
    else:
        m = c.corr_count
        for i in range(n):
            for j in range(i + 1, n):
                v = pearson_correlation(a.rets[i], a.rets[j], m)
                _record(a, k, SIG_CORRELATION, a.inst[i], a.inst[j], v,
                        c.corr_prev_ok != 0, m, now_ns)
                k += 1
    return k


@njit(cache=True)
def agent_step(a, px, qty, meta, md, n_md, now_ns):
    """One step of the agent after the books took ``md[:n_md]`` (the caller applies them):
    order-flow events, then a sample and a publish when their times have come. Returns the
    number of records written to ``a.out`` (0 between publishes)."""
    c = a.ctl[0]
    for j in range(n_md):
        if md[j].recv_ts_ns > c.last_recv_ns:
            c.last_recv_ns = md[j].recv_ts_ns
    if c.kind == SIG_ORDER_FLOW_IMB and n_md > 0:
        for i in range(c.n):
            ofi_update(a.ofi, px, qty, meta, a.inst[i])
    if c.next_sample_ns == 0:
        c.next_sample_ns = now_ns + c.sample_ns
        c.next_publish_ns = now_ns + c.publish_ns
        return np.int64(0)
    if c.kind != SIG_ORDER_FLOW_IMB and now_ns >= c.next_sample_ns:
        # one sample however late (an idle backoff or a busy box): no burst of equal mids
        c.next_sample_ns = now_ns + c.sample_ns
        _sample(a, px, meta, now_ns)
    if now_ns >= c.next_publish_ns:
        c.next_publish_ns = now_ns + c.publish_ns
        return _publish(a, px, meta, now_ns)
    return np.int64(0)


@njit(cache=True)
def agent_round(a, px, qty, meta, subs, md, n_md, now_ns, sgk, n_sg):
    """A signal agent's turn in a backtest round (the generated loop of
    strategies/backtest_codegen.py, before the strategies' turns): the round's market records
    into its books, ``agent_step``, and what it publishes appended to the round's signal
    records of each strategy ``subs[j]`` that subscribes to it (``sgk[k, :n_sg[k]]``), as a
    live strategy host reads its agents' rings. Records beyond a strategy's buffer are dropped
    (it holds every record one round of all its agents can publish). Returns the records
    published."""
    if n_md > 0:
        book_apply_batch(px, qty, meta, md, n_md)
    k = agent_step(a, px, qty, meta, md, n_md, now_ns)
    for j in range(subs.shape[0]):
        s = subs[j]
        m = n_sg[s]
        for r in range(k):
            if m < sgk.shape[1]:
                sgk[s, m] = a.out[r]
                m += 1
        n_sg[s] = m
    return k
