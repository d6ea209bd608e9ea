"""Order-router kernels: approved orders -> venues, venue reports -> strategies, gate, journal.

HOT PATH (@njit), run by the order-router stage (stages/order_router.py) once per poll over
whole batches. No allocation: every array is preallocated by the stage.

Order table ``tab`` int64[n_strat + 1, TAB_ROWS, T_WORDS], one open-addressing hash per strategy
keyed by the full client order id (T_COID; 0 = empty row): linear probing from a multiplicative
hash of the coid, backward-shift delete (no tombstones, so a lookup stops at the first empty
row). A strategy may hold ``tab.shape[1] // 2`` orders (TAB_SLOTS with the stage's table) open
at once, which keeps the load at or below one half; one more NEW, or a NEW whose coid is
already open, is rejected (REJECT_MAX_OPEN_ORDERS / REJECT_INVALID), never written over a
live row. Rows move on delete: hold no row index across a delete. ``open_n[sid]`` is the
strategy's row count (kept in step by these kernels only).

Every approved order gets exactly one answer from here or from the venue: a NEW is forwarded
(the venue answers) or rejected (EXEC_REJECT); a CANCEL / REPLACE is forwarded or refused
(EXEC_CANCEL_REJECT: unknown order, halted, or the venue's input ring full -> REJECT_RATE_LIMIT);
an INTENT_CANCEL_ALL is forwarded (the venue answers each order it cancels) or, when the venue's
ring is full, refused with one EXEC_CANCEL_REJECT (REJECT_RATE_LIMIT) naming the strategy, so
the sender knows to ask again; a malformed order (venue or strategy id out of range, coid 0 for
a NEW, unknown kind) is answered with REJECT_INVALID. Each refusal is counted in ``ctl``.

Execution reports are stamped with a router sequence number in ``reserved`` (monotonic across
router restarts: it starts from the wall clock), so a restarted risk gate that rebuilt itself
from the journal can skip the reports it already applied.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.histogram import hist_record
from shm.records import (EFLAG_RECONCILE, EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE,
                         ORD_MARKET, OFLAG_RISK_SYSTEM, REJECT_HALTED, REJECT_INVALID,
                         REJECT_MAX_OPEN_ORDERS, REJECT_RATE_LIMIT, REJECT_UNKNOWN_ORDER,
                         SIDE_BUY, SIDE_SELL)
from shm.coidhash import coid_delete, coid_find, coid_insert
from shm.recordops import reply_to_order
from shm.ringops import spsc_free, spsc_poll, spsc_publish
from stages.clock import clock_now_ns

TAB_SLOTS = 1 << 14            # open orders per strategy the stage's table holds
TAB_ROWS = 2 * TAB_SLOTS       # hash rows per strategy (a power of two; load <= 1/2)
T_COID, T_STATE, T_VENUE, T_INST, T_SIDE, T_LEAVES, T_PX, T_SENT_NS = 0, 1, 2, 3, 4, 5, 6, 7
T_WORDS = 8                    # one 64-byte row: a probe touches one cache line per row
OS_FREE, OS_PENDING, OS_OPEN = 0, 1, 2

# ctl words (int64)
C_HALTED, C_SEQ, C_OPEN, C_SENT, C_FILLS, C_RATE_REJ = 0, 1, 2, 3, 4, 5
C_DROP_STRAT, C_DROP_GATE, C_IN, C_OUT, C_UNKNOWN, C_JOURNAL_FULL = 6, 7, 8, 9, 10, 11
C_VENUE_FULL = 12   # approved orders refused because the venue's input ring was full
C_MALFORMED = 13    # approved orders answered REJECT_INVALID (bad venue / strategy / kind)
C_TAB_REJ = 14      # NEWs refused by the order table (coid already open, or table full)
CTL_WORDS = 16
COID_SHIFT = 48


@njit(cache=True, inline="always")
def tab_find(tab, sid, coid):
    """Row of the open order ``coid`` of strategy ``sid``, or -1."""
    return coid_find(tab, sid, coid)


@njit(cache=True, inline="always")
def tab_insert(tab, sid, coid):
    """A fresh row for ``coid`` (only T_COID is written), or -1 if no empty row is reachable.
    The caller checked that ``coid`` is not open and that the strategy is below capacity."""
    return coid_insert(tab, sid, coid)


@njit(cache=True, inline="always")
def tab_delete(tab, sid, i):
    """Empty row ``i``; later rows of its probe run move back into the hole."""
    coid_delete(tab, sid, i)


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
    """One batch: venue reports out, then approved orders to the venues. Returns work done.

    Every approved order is forwarded or answered here (one report each); see the module
    docstring for the answers."""
    work = 0
    now = clock_now_ns(cal)
    n_ven = ven_in_sts.shape[0]
    n_tab = tab.shape[0]
    tab_cap = tab.shape[1] >> 1
    # --- venue reports first: they free table rows and tell strategies about fills --------
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
            row = tab_find(tab, sid, coid) if 1 <= sid < n_tab else -1
            known = row >= 0
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
                tab_delete(tab, sid, row)
                open_n[sid] -= 1
                ctl[C_OPEN] -= 1
            elif not known and k != EXEC_CANCEL_REJECT:
                ctl[C_UNKNOWN] += 1
            one[0] = e
            _emit(ctl, one, one_i, strat_sts, strat_slots, gate_st, gate_slots, j_st,
                  j_slots, has_journal, now)
    # --- approved orders: each is forwarded or answered (exactly one of the two) -----------
    room = abuf.shape[0]
    if has_journal:
        free = spsc_free(j_st)
        if free < room:
            room = free   # at most one report per approved order
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
        kind = o.kind
        cancel_like = kind == INTENT_CANCEL or kind == INTENT_REPLACE or \
            kind == INTENT_CANCEL_ALL
        answer = EXEC_CANCEL_REJECT if cancel_like else EXEC_REJECT
        if (v < 0 or v >= n_ven or sid < 1 or sid >= n_tab
                or (not cancel_like and (kind != INTENT_NEW or coid == 0))):
            # the gate should have stopped it; answer it so nobody waits for it
            ctl[C_MALFORMED] += 1
            _reject(ctl, o, REJECT_INVALID, answer, one, one_i, strat_sts, strat_slots,
                    gate_st, gate_slots, j_st, j_slots, has_journal, now)
            continue
        code = 0
        if kind == INTENT_NEW:
            if ctl[C_HALTED] != 0 and (o.flags & OFLAG_RISK_SYSTEM) == 0:
                code = REJECT_HALTED
            elif tab_find(tab, sid, coid) >= 0:
                ctl[C_TAB_REJ] += 1
                code = REJECT_INVALID          # its coid names an order still open
            elif open_n[sid] >= tab_cap:
                ctl[C_TAB_REJ] += 1
                code = REJECT_MAX_OPEN_ORDERS
            elif spsc_free(ven_out_sts[v]) <= 0:
                ctl[C_VENUE_FULL] += 1
                code = REJECT_RATE_LIMIT       # venue input full: refuse rather than block
            elif not _take_token(tokens, v, now):
                ctl[C_RATE_REJ] += 1
                code = REJECT_RATE_LIMIT
        elif kind == INTENT_CANCEL or kind == INTENT_REPLACE:
            if tab_find(tab, sid, coid) < 0:
                code = REJECT_UNKNOWN_ORDER
            elif kind == INTENT_REPLACE and ctl[C_HALTED] != 0:
                code = REJECT_HALTED
        row = -1
        if code == 0 and kind == INTENT_NEW:
            row = tab_insert(tab, sid, coid)   # below half load an empty row always exists
            if row < 0:
                ctl[C_TAB_REJ] += 1
                code = REJECT_MAX_OPEN_ORDERS
        if code == 0:
            o.send_ts_ns = now
            if spsc_publish(ven_out_sts[v], ven_out_slots[v], abuf_i[j:j + 1], 1) != 1:
                # venue input full (checked above for a NEW): the sender must hear of it
                ctl[C_VENUE_FULL] += 1
                code = REJECT_RATE_LIMIT
                if row >= 0:
                    tab_delete(tab, sid, row)
            elif kind == INTENT_NEW:
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
        if code != 0:
            _reject(ctl, o, code, answer, one, one_i, strat_sts, strat_slots, gate_st,
                    gate_slots, j_st, j_slots, has_journal, now)
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
def router_forget_venue_orders(ctl, tab, open_n, cal, obuf, one, one_i, strat_sts, strat_slots, gate_st,
                               gate_slots, j_st, j_slots, has_journal, venue_mask):
    """A venue process restarted and lost its books: every order we had open at the venues of
    ``venue_mask`` (bit v set: venue id v; 0: every venue) is gone. Report each as
    EXEC_CANCEL_ACK (flag EFLAG_RECONCILE) so strategy, gate and journal all close it; orders
    at other venues stay open. Returns how many were closed."""
    now = clock_now_ns(cal)
    n = 0
    for sid in range(1, tab.shape[0]):
        row = 0
        while row < tab.shape[1]:
            if tab[sid, row, T_COID] == 0 or (
                    venue_mask != 0 and (venue_mask >> (tab[sid, row, T_VENUE] + 1)) & 1 == 0):
                row += 1
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
            # the backward shift may move a later row of the probe run into this one: look at
            # it again (rows it moves from before this one were looked at and kept)
            tab_delete(tab, sid, row)
            open_n[sid] -= 1
            ctl[C_OPEN] -= 1
            n += 1
    return n
