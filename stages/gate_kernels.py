"""Risk-gate kernel: every intent through market/risk.py's check_order. HOT PATH (@njit), run by
the risk-gate stage (stages/risk_gate.py) once per poll over whole batches.

Every intent gets exactly one answer: an approved order on the ``approved`` ring or a denial
(EXEC_REJECT / EXEC_CANCEL_REJECT with EFLAG_FROM_RISK and the REJECT_* code) on the strategy's
``reject`` ring. No reference price (the book of the instrument is not valid) is a denial
(REJECT_NO_REFERENCE), not a pass. An intent whose strategy id is not its ring's is denied
REJECT_INVALID and answered on the ring it came from.

Crash consistency, one strategy's batch at a time (a write-ahead log):
  1. peek the intents (the intent ring keeps them until step 5);
  2. decide every one (risk state updated);
  3. journal every decision (``jorder``);
  4. publish the denials, then the approvals;
  5. commit the intent ring.
The batch is sized to the free space of every output ring first (each is ours alone, so its free
space can only grow until we publish), so no publish is ever cut short and nothing is dropped.
A gate killed anywhere in 2-5 leaves a state its successor completes from the journal
(``stages/risk_gate.py``, ``redo_from_journal``): decisions journaled for intents the ring still
holds are skipped, not taken again, and their approvals and denials that never reached their
rings are published then. Counting is enough because each ring is in order: the k-th journaled
decision of strategy s answers the k-th intent of s's ring, the k-th journaled approval is the
k-th record of ``approved``.

Reference prices come from the gate's own L2 books fed by the market-data broadcast rings; each
batch marks the touched instruments to market, so unrealized PnL, the daily-loss and drawdown
limits (latching HALTED on a breach, see market/risk_state.py) are current before the next
intent is checked. Fills arrive from the router (``exec-gate``); reports already applied while
rebuilding from the journal (router sequence number in ``reserved`` <= ``gctl[K_LAST_SEQ]``)
are skipped.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import is_valid, mid_x2
from market.risk import check_order, gate_apply_md, gate_mark, on_accept, on_exec
from shm.histogram import hist_record
from shm.recordops import deny_order
from shm.records import OFLAG_RISK_SYSTEM, REJECT_INVALID
from shm.ringops import bcast_poll, spsc_commit, spsc_free, spsc_peek, spsc_poll, spsc_publish
from stages.clock import clock_now_ns

K_LAST_SEQ, K_APPROVED, K_REJECTED, K_MD, K_EXEC, K_INTENTS, K_SKIPPED = 0, 1, 2, 3, 4, 5, 6
K_SHORT = 7        # a publish cut short: unreachable (outputs are sized first), counted if seen
K_WORDS = 8


@njit(cache=True)
def _deny(rej, k, o, code, now):
    deny_order(rej[k], o, code, now)


@njit(cache=True)
def gate_decide(limits, rstate, gctl, px, meta, ibuf, n, sid, now, abuf, rbuf, jbuf,
                has_journal, h_gate):
    """Decide ibuf[0:n] (intents of strategy ``sid``; 0 = the gate's own orders, which keep
    their ids): approvals to abuf, denials to rbuf, every decision to jbuf (if journaling).
    Returns (approved, denied)."""
    n_ap = 0
    n_rej = 0
    for j in range(n):
        o = ibuf[j]
        hist_record(h_gate, now - o.send_ts_ns)
        inst = np.int64(o.instrument_id)
        if sid != 0 and (o.strategy_id != sid or (o.flags & OFLAG_RISK_SYSTEM) != 0):
            # another strategy's id, or the gate's own flag (it skips the halt and rate
            # checks): answered to the ring it came from, accounted to the ring's owner
            o.strategy_id = sid
            o.flags &= ~OFLAG_RISK_SYSTEM
            code = np.int64(REJECT_INVALID)
        else:
            ref = np.int64(0)
            if 0 < inst < meta.shape[0] and is_valid(px, meta, inst):
                ref = mid_x2(px, meta, inst)
            code = check_order(limits, rstate, o, ref, now)
        o.send_ts_ns = now
        o.reject_code = code
        if has_journal:
            jbuf[j] = o
        if code == 0:
            on_accept(limits, rstate, o, now)
            abuf[n_ap] = o
            n_ap += 1
            gctl[K_APPROVED] += 1
        else:
            _deny(rbuf, n_rej, o, code, now)
            n_rej += 1
            gctl[K_REJECTED] += 1
    return n_ap, n_rej


@njit(cache=True)
def _publish_all(gctl, st, slots, buf_i, n):
    if n > 0 and spsc_publish(st, slots, buf_i, n) != n:
        gctl[K_SHORT] += 1


@njit(cache=True)
def gate_step(limits, rstate, gctl, cal, px, qty, meta, touched,
              md_sts, md_slots, md, md_i, ex_st, ex_slots, ex, ex_i,
              in_sts, in_slots, in_sids, ibuf, ibuf_i, ap_st, ap_slots, abuf, abuf_i,
              rej_sts, rej_slots, rbuf, rbuf_i, j_st, j_slots, has_journal, jbuf, jbuf_i,
              h_gate):
    now = clock_now_ns(cal)
    work = 0
    # --- reference prices ------------------------------------------------------------------
    for r in range(md_sts.shape[0]):
        n = bcast_poll(md_sts[r], md_slots[r], md_i, md.shape[0])
        if n == 0:
            continue
        work += n
        gctl[K_MD] += n
        gate_apply_md(px, qty, meta, md, n, touched)
    gate_mark(limits, rstate, px, meta, touched)
    # --- fills and order states from the router ---------------------------------------------
    n = spsc_poll(ex_st, ex_slots, ex_i, ex.shape[0])
    work += n
    for j in range(n):
        e = ex[j]
        if e.reserved != 0 and e.reserved <= gctl[K_LAST_SEQ]:
            gctl[K_SKIPPED] += 1
            continue
        if e.reserved > gctl[K_LAST_SEQ]:
            gctl[K_LAST_SEQ] = e.reserved
        on_exec(limits, rstate, e, now)
        gctl[K_EXEC] += 1
    # --- intents: one strategy's batch at a time, journal -> answers -> commit -------------
    for s in range(in_sts.shape[0]):
        room = ibuf.shape[0]
        f = spsc_free(ap_st)
        if f < room:
            room = f
        f = spsc_free(rej_sts[s])
        if f < room:
            room = f
        if has_journal:
            f = spsc_free(j_st)
            if f < room:
                room = f
        if room <= 0:
            continue
        n = spsc_peek(in_sts[s], in_slots[s], ibuf_i, room)
        if n == 0:
            continue
        work += n
        gctl[K_INTENTS] += n
        n_ap, n_rej = gate_decide(limits, rstate, gctl, px, meta, ibuf, n, in_sids[s], now,
                                  abuf, rbuf, jbuf, has_journal, h_gate)
        if has_journal:
            _publish_all(gctl, j_st, j_slots, jbuf_i, n)
        _publish_all(gctl, rej_sts[s], rej_slots[s], rbuf_i, n_rej)
        _publish_all(gctl, ap_st, ap_slots, abuf_i, n_ap)
        spsc_commit(in_sts[s], n)
    return work


@njit(cache=True)
def gate_submit(limits, rstate, gctl, cal, px, meta, ibuf, n, ap_st, ap_slots, abuf, abuf_i,
                j_st, j_slots, has_journal, jbuf, jbuf_i, rbuf, h_gate):
    """The gate's own orders (OFLAG_RISK_SYSTEM, e.g. flattening after a kill) through the same
    checks and the same journal -> approved path as intents. Denials are journaled, not sent
    (there is no strategy to tell). Returns how many were approved, or -1 if the approved or
    journal ring has no room for all n (nothing was decided then: try again later)."""
    if spsc_free(ap_st) < n or (has_journal and spsc_free(j_st) < n):
        return -1
    now = clock_now_ns(cal)
    n_ap, _n_rej = gate_decide(limits, rstate, gctl, px, meta, ibuf, n, 0, now, abuf, rbuf,
                               jbuf, has_journal, h_gate)
    if has_journal:
        _publish_all(gctl, j_st, j_slots, jbuf_i, n)
    _publish_all(gctl, ap_st, ap_slots, abuf_i, n_ap)
    return n_ap
