"""Order-router kernels: approved orders -> venues, venue reports -> strategies, gate, journal.

HOT PATH (@njit), run by the order-router stage (stages/order_router.py) once per poll over
whole batches. No allocation: every array is preallocated by the stage.

Order table ``tab`` int64[n_strat + 1, TAB_SLOTS, T_WORDS]: direct-mapped by the counter part of
the client order id (``coid & TAB_MASK``); a slot is verified by its full coid, so a stale slot
never matches. A strategy would need TAB_SLOTS orders open at once to collide (the gate caps open
orders far lower).

Execution reports are stamped with a router sequence number in ``reserved`` (monotonic across
router restarts: it starts from the wall clock), so a restarted risk gate that rebuilt itself
from the journal can skip the reports it already applied.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.atomics import load_acquire
from shm.histogram import hist_record
from shm.records import (EFLAG_RECONCILE, EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE,
                         ORD_MARKET, OFLAG_RISK_SYSTEM, REJECT_HALTED, REJECT_RATE_LIMIT,
                         REJECT_UNKNOWN_ORDER, SIDE_BUY, SIDE_SELL)
from shm.recordops import reply_to_order
from shm.ringops import (ST_CAPACITY, ST_CURSOR_ADDR, ST_POS, spsc_poll, spsc_publish)
from stages.clock import clock_now_ns

TAB_SLOTS = 1 << 14
TAB_MASK = TAB_SLOTS - 1
T_COID, T_STATE, T_VENUE, T_INST, T_SIDE, T_LEAVES, T_PX, T_SENT_NS = 0, 1, 2, 3, 4, 5, 6, 7
T_WORDS = 8
OS_FREE, OS_PENDING, OS_OPEN = 0, 1, 2

# ctl words (int64)
C_HALTED, C_SEQ, C_OPEN, C_SENT, C_FILLS, C_RATE_REJ = 0, 1, 2, 3, 4, 5
C_DROP_STRAT, C_DROP_GATE, C_IN, C_OUT, C_UNKNOWN, C_JOURNAL_FULL = 6, 7, 8, 9, 10, 11
CTL_WORDS = 16
COID_SHIFT = 48


@njit(cache=True)
def spsc_free(st):
    return st[ST_CAPACITY] - (st[ST_POS] - load_acquire(st[ST_CURSOR_ADDR]))


@njit(cache=True)
def _emit(ctl, one, one_i, strat_sts, strat_slots, gate_st, gate_slots, j_st, j_slots,
          has_journal, now):
    """Fan one exec report (one[0]) out to its strategy, the gate and the journal."""
    r = one[0]
    ctl[C_SEQ] += 1
    r.reserved = ctl[C_SEQ]
    r.send_ts_ns = now
    sid = np.int64(r.strategy_id)
    if 1 <= sid <= strat_sts.shape[0]:
        if spsc_publish(strat_sts[sid - 1], strat_slots[sid - 1], one_i, 1) != 1:
            ctl[C_DROP_STRAT] += 1   # a dead strategy: it restarts fresh, the gate still knows
    if spsc_publish(gate_st, gate_slots, one_i, 1) != 1:
        ctl[C_DROP_GATE] += 1        # a dead gate rebuilds from the journal (seq dedupe)
    if has_journal:
        spsc_publish(j_st, j_slots, one_i, 1)   # room was checked before the batch
    ctl[C_OUT] += 1


@njit(cache=True)
def _reject(ctl, o, code, kind, one, one_i, strat_sts, strat_slots, gate_st, gate_slots,
            j_st, j_slots, has_journal, now, flags=0):
    reply_to_order(one[0], o, kind, flags, code, now)
    _emit(ctl, one, one_i, strat_sts, strat_slots, gate_st, gate_slots, j_st, j_slots,
          has_journal, now)


@njit(cache=True)
def _take_token(tokens, v, now):
    # token bucket per venue: tokens[v, 0] = tokens, [v, 1] = last refill ns, [v, 2] = rate/s
    rate = tokens[v, 2]
    t = tokens[v, 0] + (now - tokens[v, 1]) * 1e-9 * rate
    if t > rate:
        t = rate
    tokens[v, 1] = now
    if t < 1.0:
        tokens[v, 0] = t
        return False
    tokens[v, 0] = t - 1.0
    return True


@njit(cache=True)
def router_step(ctl, cal, tab, pos, open_n, tokens,
                appr_st, appr_slots, abuf, abuf_i,
                ven_in_sts, ven_in_slots, ven_out_sts, ven_out_slots, ebuf, ebuf_i,
                strat_sts, strat_slots, gate_st, gate_slots, j_st, j_slots, has_journal,
                one, one_i, h_appr, h_t2t, h_ack):
    """One batch: approved orders to the venues, then venue reports out. Returns work done."""
    work = 0
    now = clock_now_ns(cal)
    n_ven = ven_in_sts.shape[0]
    # --- venue reports first: they free table slots and tell strategies about fills ------
    for v in range(n_ven):
        room = ebuf.shape[0]
        if has_journal:
            free = spsc_free(j_st)
            if free < room:
                room = free
            if room <= 0:
                ctl[C_JOURNAL_FULL] += 1
                break
        n = spsc_poll(ven_in_sts[v], ven_in_slots[v], ebuf_i, room)
        work += n
        ctl[C_IN] += n
        for j in range(n):
            e = ebuf[j]
            sid = np.int64(e.strategy_id)
            coid = e.client_order_id
            row = coid & TAB_MASK
            known = 1 <= sid < tab.shape[0] and tab[sid, row, T_COID] == coid
            k = e.kind
            inst = np.int64(e.instrument_id)
            if k == EXEC_ACK and known:
                tab[sid, row, T_STATE] = OS_OPEN
                hist_record(h_ack, now - tab[sid, row, T_SENT_NS])
            elif k == EXEC_PARTIAL or k == EXEC_FILL:
                ctl[C_FILLS] += 1
                if 1 <= sid < pos.shape[0] and 0 < inst < pos.shape[1]:
                    if e.side == SIDE_BUY:
                        pos[sid, inst] += e.qty_lots
                    else:
                        pos[sid, inst] -= e.qty_lots
                if known:
                    tab[sid, row, T_LEAVES] = e.leaves_lots
            elif k == EXEC_REPLACE_ACK and known:
                tab[sid, row, T_PX] = e.px_ticks
                tab[sid, row, T_LEAVES] = e.leaves_lots
            if known and (k == EXEC_FILL or k == EXEC_CANCEL_ACK or k == EXEC_EXPIRED
                          or k == EXEC_REJECT):
                tab[sid, row, T_COID] = 0
                tab[sid, row, T_STATE] = OS_FREE
                open_n[sid] -= 1
                ctl[C_OPEN] -= 1
            elif not known and k != EXEC_CANCEL_REJECT:
                ctl[C_UNKNOWN] += 1
            one[0] = e
            _emit(ctl, one, one_i, strat_sts, strat_slots, gate_st, gate_slots, j_st,
                  j_slots, has_journal, now)
    # --- approved orders -------------------------------------------------------------------
    room = abuf.shape[0]
    if has_journal:
        free = spsc_free(j_st)
        if free < room:
            room = free
    if room > 0:
        n = spsc_poll(appr_st, appr_slots, abuf_i, room)
    else:
        n = 0
    work += n
    ctl[C_IN] += n
    for j in range(n):
        o = abuf[j]
        hist_record(h_appr, now - o.send_ts_ns)
        sid = np.int64(o.strategy_id)
        v = np.int64(o.venue_id) - 1
        coid = o.client_order_id
        row = coid & TAB_MASK
        if v < 0 or v >= n_ven or sid < 0 or sid >= tab.shape[0]:
            continue  # the gate checked these; nothing sane to do with a malformed order
        if o.kind == INTENT_NEW:
            if ctl[C_HALTED] != 0 and (o.flags & OFLAG_RISK_SYSTEM) == 0:
                _reject(ctl, o, REJECT_HALTED, EXEC_REJECT, one, one_i, strat_sts,
                        strat_slots, gate_st, gate_slots, j_st, j_slots, has_journal, now)
                continue
            if not _take_token(tokens, v, now):
                ctl[C_RATE_REJ] += 1
                _reject(ctl, o, REJECT_RATE_LIMIT, EXEC_REJECT, one, one_i, strat_sts,
                        strat_slots, gate_st, gate_slots, j_st, j_slots, has_journal, now)
                continue
            tab[sid, row, T_COID] = coid
            tab[sid, row, T_STATE] = OS_PENDING
            tab[sid, row, T_VENUE] = v
            tab[sid, row, T_INST] = o.instrument_id
            tab[sid, row, T_SIDE] = o.side
            tab[sid, row, T_LEAVES] = o.qty_lots
            tab[sid, row, T_PX] = o.px_ticks
            tab[sid, row, T_SENT_NS] = now
            open_n[sid] += 1
            ctl[C_OPEN] += 1
            ctl[C_SENT] += 1
            if o.cause_recv_ts_ns > 0:
                hist_record(h_t2t, now - o.cause_recv_ts_ns)
        elif o.kind == INTENT_CANCEL or o.kind == INTENT_REPLACE:
            if tab[sid, row, T_COID] != coid:
                _reject(ctl, o, REJECT_UNKNOWN_ORDER, EXEC_CANCEL_REJECT, one, one_i,
                        strat_sts, strat_slots, gate_st, gate_slots, j_st, j_slots,
                        has_journal, now)
                continue
            if o.kind == INTENT_REPLACE and ctl[C_HALTED] != 0:
                _reject(ctl, o, REJECT_HALTED, EXEC_CANCEL_REJECT, one, one_i, strat_sts,
                        strat_slots, gate_st, gate_slots, j_st, j_slots, has_journal, now)
                continue
        elif o.kind != INTENT_CANCEL_ALL:
            continue
        o.send_ts_ns = now
        abuf_one = abuf_i[j:j + 1]
        if spsc_publish(ven_out_sts[v], ven_out_slots[v], abuf_one, 1) != 1:
            # venue input full: refuse rather than block the whole router
            if o.kind == INTENT_NEW:
                tab[sid, row, T_COID] = 0
                tab[sid, row, T_STATE] = OS_FREE
                open_n[sid] -= 1
                ctl[C_OPEN] -= 1
                _reject(ctl, o, REJECT_RATE_LIMIT, EXEC_REJECT, one, one_i, strat_sts,
                        strat_slots, gate_st, gate_slots, j_st, j_slots, has_journal, now)
    return work


@njit(cache=True)
def router_cancel_all(tab, sid_only, ven_out_sts, ven_out_slots, obuf, obuf_i, cal):
    """Cancel every open (or pending) order, of one strategy id or all (0). Returns count."""
    now = clock_now_ns(cal)
    sent = 0
    for sid in range(1, tab.shape[0]):
        if sid_only != 0 and sid != sid_only:
            continue
        for row in range(tab.shape[1]):
            if tab[sid, row, T_COID] == 0 or tab[sid, row, T_STATE] == OS_FREE:
                continue
            o = obuf[0]
            o.kind = INTENT_CANCEL
            o.side = tab[sid, row, T_SIDE]
            o.order_type = 0
            o.flags = OFLAG_RISK_SYSTEM
            o.instrument_id = tab[sid, row, T_INST]
            o.client_order_id = tab[sid, row, T_COID]
            o.px_ticks = tab[sid, row, T_PX]
            o.qty_lots = tab[sid, row, T_LEAVES]
            o.cause_recv_ts_ns = 0
            o.send_ts_ns = now
            o.strategy_id = sid
            o.reject_code = 0
            v = tab[sid, row, T_VENUE]
            o.venue_id = v + 1
            if spsc_publish(ven_out_sts[v], ven_out_slots[v], obuf_i, 1) == 1:
                sent += 1
    return sent


@njit(cache=True)
def router_flatten(pos, inst_venue, ven_out_sts, ven_out_slots, obuf, obuf_i, cal, base_coid):
    """Market orders that bring every (strategy, instrument) position back to zero."""
    now = clock_now_ns(cal)
    sent = 0
    for sid in range(1, pos.shape[0]):
        for inst in range(1, pos.shape[1]):
            q = pos[sid, inst]
            if q == 0:
                continue
            o = obuf[0]
            o.kind = INTENT_NEW
            o.side = SIDE_SELL if q > 0 else SIDE_BUY
            o.order_type = ORD_MARKET
            o.flags = OFLAG_RISK_SYSTEM
            o.instrument_id = inst
            o.client_order_id = (sid << COID_SHIFT) | (base_coid + sent)
            o.px_ticks = 0
            o.qty_lots = q if q > 0 else -q
            o.cause_recv_ts_ns = 0
            o.send_ts_ns = now
            o.strategy_id = sid
            o.reject_code = 0
            v = inst_venue[inst]
            o.venue_id = v + 1
            if spsc_publish(ven_out_sts[v], ven_out_slots[v], obuf_i, 1) == 1:
                sent += 1
    return sent


@njit(cache=True)
def router_forget_venue_orders(ctl, tab, open_n, cal, obuf, one, one_i, strat_sts, strat_slots, gate_st,
                               gate_slots, j_st, j_slots, has_journal):
    """The venue process restarted and lost its books: every order we had open there is gone.
    Report each as EXEC_CANCEL_ACK (flag EFLAG_RECONCILE) so strategy, gate and journal all
    close it; returns how many."""
    now = clock_now_ns(cal)
    n = 0
    for sid in range(1, tab.shape[0]):
        for row in range(tab.shape[1]):
            if tab[sid, row, T_COID] == 0 or tab[sid, row, T_STATE] == OS_FREE:
                continue
            o = obuf[0]
            o.side = tab[sid, row, T_SIDE]
            o.instrument_id = tab[sid, row, T_INST]
            o.client_order_id = tab[sid, row, T_COID]
            o.px_ticks = tab[sid, row, T_PX]
            o.qty_lots = tab[sid, row, T_LEAVES]
            o.cause_recv_ts_ns = 0
            o.strategy_id = sid
            o.venue_id = tab[sid, row, T_VENUE] + 1
            _reject(ctl, o, 0, EXEC_CANCEL_ACK, one, one_i, strat_sts, strat_slots, gate_st,
                    gate_slots, j_st, j_slots, has_journal, now, EFLAG_RECONCILE)
            tab[sid, row, T_COID] = 0
            tab[sid, row, T_STATE] = OS_FREE
            open_n[sid] -= 1
            ctl[C_OPEN] -= 1
            n += 1
    return n
