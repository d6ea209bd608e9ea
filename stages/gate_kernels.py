"""Risk-gate kernel: every intent through market/risk.py's check_order. HOT PATH (@njit), run by
the risk-gate stage (stages/risk_gate.py) once per poll over whole batches.

Fail-closed by construction: an intent leaves the gate only as an approved order on the
``approved`` ring or as a denial (EXEC_REJECT / EXEC_CANCEL_REJECT with EFLAG_FROM_RISK and the
REJECT_* code) on the strategy's ``reject`` ring; the gate reads an intent only when there is room
for every record it may produce, so nothing is ever dropped on the way out. No reference price
(the book of the instrument is not valid) is a denial (REJECT_NO_REFERENCE), not a pass.

Reference prices come from the gate's own L2 books fed by the market-data broadcast rings; each
batch marks the touched instruments to market, so unrealized PnL, the daily-loss and drawdown
limits (and so ACTIVE / REDUCING / HALTED) are current before the next intent is checked. Fills
arrive from the router (``exec-gate``); reports already applied while rebuilding from the journal
(router sequence number in ``reserved`` <= ``gctl[K_LAST_SEQ]``) are skipped.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import book_apply_batch, is_valid, mid_x2
from market.risk import check_order, mark_to_market, on_accept, on_exec
from shm.histogram import hist_record
from shm.recordops import deny_order
from shm.ringops import bcast_poll, spsc_poll, spsc_publish
from stages.clock import clock_now_ns
from stages.router_kernels import spsc_free

K_LAST_SEQ, K_APPROVED, K_REJECTED, K_MD, K_EXEC, K_INTENTS, K_SKIPPED = 0, 1, 2, 3, 4, 5, 6
K_WORDS = 8


@njit(cache=True)
def _deny(rej, k, o, code, now):
    deny_order(rej[k], o, code, now)


@njit(cache=True)
def gate_step(limits, rstate, gctl, cal, px, qty, meta, touched,
              md_sts, md_slots, md, md_i, ex_st, ex_slots, ex, ex_i,
              in_sts, in_slots, ibuf, ibuf_i, ap_st, ap_slots, abuf, abuf_i,
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
        book_apply_batch(px, qty, meta, md, n)
        for j in range(n):
            touched[md[j].instrument_id] = 1
    for inst in range(1, touched.shape[0]):
        if touched[inst]:
            touched[inst] = 0
            if is_valid(px, meta, inst):
                mark_to_market(limits, rstate, inst, mid_x2(px, meta, inst))
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
    # --- intents ------------------------------------------------------------------------------
    room = ibuf.shape[0]
    f = spsc_free(ap_st)
    if f < room:
        room = f
    if has_journal:
        f = spsc_free(j_st)
        if f < room:
            room = f
    n_ap = 0
    n_j = 0
    for s in range(in_sts.shape[0]):
        r_room = room - n_ap
        f = spsc_free(rej_sts[s])
        if f < r_room:
            r_room = f
        if r_room <= 0:
            continue
        n = spsc_poll(in_sts[s], in_slots[s], ibuf_i, r_room)
        if n == 0:
            continue
        work += n
        gctl[K_INTENTS] += n
        n_rej = 0
        for j in range(n):
            o = ibuf[j]
            hist_record(h_gate, now - o.send_ts_ns)
            inst = np.int64(o.instrument_id)
            ref = np.int64(0)
            if 0 < inst < meta.shape[0] and is_valid(px, meta, inst):
                ref = mid_x2(px, meta, inst)
            code = check_order(limits, rstate, o, ref, now)
            o.send_ts_ns = now
            o.reject_code = code
            if has_journal:
                jbuf[n_j] = o
                n_j += 1
            if code == 0:
                on_accept(limits, rstate, o, now)
                abuf[n_ap] = o
                n_ap += 1
                gctl[K_APPROVED] += 1
            else:
                _deny(rbuf, n_rej, o, code, now)
                n_rej += 1
                gctl[K_REJECTED] += 1
        if n_rej:
            spsc_publish(rej_sts[s], rej_slots[s], rbuf_i, n_rej)
    if n_j:
        spsc_publish(j_st, j_slots, jbuf_i, n_j)
    if n_ap:
        spsc_publish(ap_st, ap_slots, abuf_i, n_ap)
    return work
