"""The strategy contract: a cold Python class per strategy plus an @njit kernel for the hot path.

Runs in every process that hosts a strategy: the live strategy-host stage, the backtest and the
tests. The class (``Strategy`` subclasses) is cold: it validates parameters and builds the
kernel's state once. Everything in the "hot helpers" section runs on the hot path, inside
strategy kernels or in the runtime's batch step around them: no allocation, no Python objects,
no exceptions; problems are counters in ``ctl``. ``restore_state`` at the end is cold.

Contract (see /work/briefs/strategy_api.md)::

    class MyStrategy(Strategy):
        kind = "my_strategy"
        Params = <frozen dataclass; every field via common.schema.opt(default, doc, checks)>
        n_instruments = 1                     # how many instruments the strategy trades
        kernel = staticmethod(my_kernel)      # @njit

    kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out) -> int

The runtime owns the bookkeeping (strategies/host.py ``run_strategy_batch``, the same in the
live host and the backtest): it applies ``md[:n_md]`` to the books, then ``note_market`` and
``apply_execs`` (order table, positions, reject counters from ``ex[:n_ex]``), and only then calls
the kernel, which receives the same md and ex to react to (trades, fills, denials) but must not
apply them again. A call with ``n_md == n_ex == 0`` is a timer tick. The kernel writes intents
to ``out[0:k]`` with ``emit`` / ``send_*`` and returns k. A kernel that raises is caught by the
runtime: the error is counted, the intents of that call are discarded and their order-table
entries rolled back (``forget_intents``), and the next batch runs normally.

``state`` is the tuple returned by ``make_state``; by convention its first three items are
``ctl`` (int64 words below), ``orders`` (the strategy's own order table) and ``positions``
(PS_* words), so the runtime and the shared helpers here work for every strategy, and a
restarted strategy host rebuilds them from the journal (``restore_state``, cold).

Intents carry ``client_order_id = strategy_id << 48 | counter`` and the receive time of the
market record that caused them (``cause_recv_ts_ns``) so tick-to-trade is measured end to end.
The runtime keeps the strategy's inventory from execution reports; a strategy never enforces
risk limits.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numba import njit

from common.schema import ConfigError, load_section
from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL, EXEC_PARTIAL,
    EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE, SIDE_BUY,
)

COID_SHIFT = 48  # client_order_id = strategy_id << 48 | counter (u2 strategy id on top)

# ---- ctl: int64 words every strategy state starts with ---------------------------------------
CTL_STRATEGY_ID = 0
CTL_NEXT_COID = 1      # counter part of the next client_order_id (starts at 1)
CTL_DROPPED = 2        # intents that did not fit into ``out`` (the host's array is too small)
CTL_LAST_RECV_TS = 3   # recv_ts_ns of the newest market record seen (cause of timer intents)
CTL_N_INST = 4         # instruments this strategy trades
CTL_UNKNOWN_EXEC = 5   # exec reports for client order ids we do not know (counted, ignored)
CTL_FILLS = 6          # fill reports applied
CTL_REJECTS = 7        # EXEC_REJECT reports (venue rejects and risk denials)
CTL_LAST_REJECT = 8    # reject_code of the latest one
CTL_LAST_REJECT_NS = 9  # venue_ts_ns of the latest reject (a strategy backs off after one)
CTL_EMITTED = 10       # intents written into ``out`` by the current kernel call (high-water
                       # mark kept by ``emit``; the runtime zeroes it before each call)
CTL_INST_BASE = 11     # then n_inst instrument ids, then n_inst venue ids
CTL_WORDS_FIXED = 11

# ---- orders: the strategy's own order table, int64[max_orders, OS_WORDS] ---------------------
OS_COID = 0        # client_order_id; 0 = free slot
OS_INST = 1        # local instrument index (0..n_inst-1)
OS_SIDE = 2        # SIDE_BUY / SIDE_SELL
OS_PX = 3          # working price (ticks)
OS_LEAVES = 4      # open quantity (lots)
OS_STATE = 5       # OST_*
OS_NEW_PX = 6      # pending replace price
OS_NEW_QTY = 7     # pending replace quantity
OS_SENT_NS = 8     # when the last intent for this order was written
OS_TYPE = 9        # ORD_*
OS_WORDS = 10

OST_FREE = 0
OST_PENDING_NEW = 1
OST_LIVE = 2
OST_PENDING_CANCEL = 3
OST_PENDING_REPLACE = 4

# ---- position table: float64[n_inst, PS_WORDS] (every strategy keeps one) --------------------
PS_POS = 0         # position, lots (exact in float64 below 2**53)
PS_COST = 1        # sum of signed px_ticks * lots of the open position (for its average price)
PS_REALIZED = 2    # realized PnL in ticks*lots (one tick of one lot = 1), before fees
PS_FEES = 3        # fees paid, quote currency (fee_e9 / 1e9; negative = rebates)
PS_LAST_FILL_PX = 4
PS_WORDS = 5


def make_ctl(strategy_id: int, instruments, extra_words: int = 0) -> np.ndarray:
    """Cold: the ctl array with the strategy id and the instrument / venue ids filled in."""
    n = len(instruments)
    ctl = np.zeros(CTL_WORDS_FIXED + 2 * n + extra_words, dtype=np.int64)
    ctl[CTL_STRATEGY_ID] = strategy_id
    ctl[CTL_NEXT_COID] = 1
    ctl[CTL_N_INST] = n
    for i, inst in enumerate(instruments):
        ctl[CTL_INST_BASE + i] = inst.instrument_id
        ctl[CTL_INST_BASE + n + i] = inst.venue_id
    return ctl


def make_orders(max_orders: int) -> np.ndarray:
    return np.zeros((max_orders, OS_WORDS), dtype=np.int64)


def make_positions(n_inst: int) -> np.ndarray:
    return np.zeros((n_inst, PS_WORDS), dtype=np.float64)


class Strategy:
    """Cold side of a strategy. Subclasses set ``kind``, ``Params``, ``n_instruments``, ``kernel``.

    ``params`` (the ``[strategies].params`` table) is validated with
    ``common.schema.load_section``: unknown keys and bad values raise ``ConfigError`` naming
    ``strategies.<kind>.params.<key>`` and the value.
    """

    kind: str = ""
    Params: type = None
    n_instruments: int = 1
    kernel = None

    def __init__(self, params: dict, instruments, strategy_id: int):
        if not 0 < strategy_id < (1 << 16):
            raise ValueError(f"{self.kind}: strategy_id {strategy_id} must be in 1..65535")
        instruments = list(instruments)
        if len(instruments) != self.n_instruments:
            keys = ", ".join(i.key for i in instruments) or "none"
            raise ConfigError([f"strategies.{self.kind}.instruments: needs exactly "
                               f"{self.n_instruments} instrument(s), got {len(instruments)} "
                               f"({keys})"])
        self.params = load_section(self.Params, dict(params or {}),
                                   f"strategies.{self.kind}.params")
        self.instruments = instruments
        self.strategy_id = int(strategy_id)
        self.check_instruments()

    def check_instruments(self) -> None:
        """Override to reject instrument combinations the model cannot trade (cold)."""

    def make_state(self) -> tuple:
        """The kernel's whole state: a tuple of preallocated numpy arrays (ctl, orders, ...)."""
        raise NotImplementedError(f"{type(self).__name__}.make_state")

    def warm_up(self, records) -> None:
        """Optional, cold: prime estimators from historical MARKET_DTYPE records."""

    @classmethod
    def param_docs(cls) -> dict[str, str]:
        """Parameter name -> doc string (for ``--help`` style listings and the docs test)."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls.Params)}


# =============================================================================================
# Hot helpers (called from strategy kernels)
# =============================================================================================
@njit(cache=True)
def local_index(ctl, instrument_id):
    """Local index (0..n-1) of a global instrument id, or -1 if the strategy does not trade it."""
    n = ctl[CTL_N_INST]
    for i in range(n):
        if ctl[CTL_INST_BASE + i] == instrument_id:
            return i
    return -1


@njit(cache=True)
def inst_id(ctl, i):
    return ctl[CTL_INST_BASE + i]


@njit(cache=True)
def venue_of(ctl, i):
    return ctl[CTL_INST_BASE + ctl[CTL_N_INST] + i]


@njit(cache=True)
def note_market(ctl, md, n_md):
    """Remember the newest receive time: the cause stamped on intents of this batch."""
    for j in range(n_md):
        if md[j].recv_ts_ns > ctl[CTL_LAST_RECV_TS]:
            ctl[CTL_LAST_RECV_TS] = md[j].recv_ts_ns


@njit(cache=True)
def emit(out, k, ctl, kind, side, order_type, flags, i, coid, px_ticks, qty_lots):
    """Write one intent at out[k]; returns the new count (unchanged, counted, if out is full)."""
    if k >= out.shape[0]:
        ctl[CTL_DROPPED] += 1
        return k
    r = out[k]
    r.ring_seq = 0
    r.kind = kind
    r.side = side
    r.order_type = order_type
    r.flags = flags
    r.instrument_id = inst_id(ctl, i)
    r.client_order_id = coid
    r.px_ticks = px_ticks
    r.qty_lots = qty_lots
    r.cause_recv_ts_ns = ctl[CTL_LAST_RECV_TS]
    r.send_ts_ns = 0
    r.strategy_id = ctl[CTL_STRATEGY_ID]
    r.reject_code = 0
    r.venue_id = venue_of(ctl, i)
    if k + 1 > ctl[CTL_EMITTED]:
        ctl[CTL_EMITTED] = k + 1
    return k + 1


@njit(cache=True)
def find_order(orders, coid):
    for s in range(orders.shape[0]):
        if orders[s, OS_COID] == coid and coid != 0:
            return s
    return -1


@njit(cache=True)
def free_slot(orders):
    for s in range(orders.shape[0]):
        if orders[s, OS_STATE] == OST_FREE:
            return s
    return -1


@njit(cache=True)
def send_new(out, k, ctl, orders, i, side, order_type, px_ticks, qty_lots, now_ns):
    """NEW intent + an order-table slot; returns (new k, slot) with slot -1 if nothing sent."""
    if k >= out.shape[0]:
        ctl[CTL_DROPPED] += 1
        return k, -1
    s = free_slot(orders)
    if s < 0:
        ctl[CTL_DROPPED] += 1
        return k, -1
    coid = (ctl[CTL_STRATEGY_ID] << COID_SHIFT) | ctl[CTL_NEXT_COID]
    ctl[CTL_NEXT_COID] += 1
    orders[s, OS_COID] = coid
    orders[s, OS_INST] = i
    orders[s, OS_SIDE] = side
    orders[s, OS_PX] = px_ticks
    orders[s, OS_LEAVES] = qty_lots
    orders[s, OS_STATE] = OST_PENDING_NEW
    orders[s, OS_NEW_PX] = px_ticks
    orders[s, OS_NEW_QTY] = qty_lots
    orders[s, OS_SENT_NS] = now_ns
    orders[s, OS_TYPE] = order_type
    k = emit(out, k, ctl, INTENT_NEW, side, order_type, 0, i, coid, px_ticks, qty_lots)
    return k, s


@njit(cache=True)
def send_cancel(out, k, ctl, orders, s, now_ns):
    """CANCEL intent for a live order (nothing if it already has a request in flight)."""
    if orders[s, OS_STATE] != OST_LIVE or k >= out.shape[0]:
        return k
    orders[s, OS_STATE] = OST_PENDING_CANCEL
    orders[s, OS_SENT_NS] = now_ns
    return emit(out, k, ctl, INTENT_CANCEL, orders[s, OS_SIDE], orders[s, OS_TYPE], 0,
                orders[s, OS_INST], orders[s, OS_COID], orders[s, OS_PX], orders[s, OS_LEAVES])


@njit(cache=True)
def send_replace(out, k, ctl, orders, s, px_ticks, qty_lots, now_ns):
    """REPLACE intent (same client order id, new price / quantity) for a live order."""
    if orders[s, OS_STATE] != OST_LIVE or k >= out.shape[0]:
        return k
    orders[s, OS_STATE] = OST_PENDING_REPLACE
    orders[s, OS_NEW_PX] = px_ticks
    orders[s, OS_NEW_QTY] = qty_lots
    orders[s, OS_SENT_NS] = now_ns
    return emit(out, k, ctl, INTENT_REPLACE, orders[s, OS_SIDE], orders[s, OS_TYPE], 0,
                orders[s, OS_INST], orders[s, OS_COID], px_ticks, qty_lots)


@njit(cache=True)
def _apply_fill(pos, i, side, px_ticks, qty_lots, fee_e9):
    signed = qty_lots if side == SIDE_BUY else -qty_lots
    p = pos[i, PS_POS]
    if p == 0.0 or (p > 0.0) == (signed > 0):
        pos[i, PS_COST] += signed * px_ticks
    else:
        closed = min(abs(p), abs(signed))
        avg = pos[i, PS_COST] / p
        # closing a long at px realizes (px - avg) per lot; closing a short the reverse
        if p > 0.0:
            pos[i, PS_REALIZED] += closed * (px_ticks - avg)
            pos[i, PS_COST] -= closed * avg
        else:
            pos[i, PS_REALIZED] += closed * (avg - px_ticks)
            pos[i, PS_COST] += closed * avg
        rest = abs(signed) - closed
        if rest > 0:  # flipped through zero: the remainder opens at px
            pos[i, PS_COST] = (rest if signed > 0 else -rest) * px_ticks
    pos[i, PS_POS] = p + signed
    if pos[i, PS_POS] == 0.0:
        pos[i, PS_COST] = 0.0
    pos[i, PS_FEES] += fee_e9 / 1e9
    pos[i, PS_LAST_FILL_PX] = px_ticks


@njit(cache=True)
def apply_execs(ctl, orders, pos, ex, n_ex):
    """Update the order table and positions from this batch's execution reports.

    Returns the number of fill reports applied (PARTIAL + FILL). Reports of other strategies and
    unknown client order ids are skipped (the latter counted in ctl).
    """
    fills = 0
    sid = ctl[CTL_STRATEGY_ID]
    for j in range(n_ex):
        e = ex[j]
        if e.strategy_id != sid:
            continue
        s = find_order(orders, e.client_order_id)
        kind = e.kind
        if kind == EXEC_PARTIAL or kind == EXEC_FILL:
            i = local_index(ctl, e.instrument_id)
            if i >= 0:
                _apply_fill(pos, i, e.side, e.px_ticks, e.qty_lots, e.fee_e9)
                fills += 1
                ctl[CTL_FILLS] += 1
        if s < 0:
            if kind != EXEC_PARTIAL and kind != EXEC_FILL:
                ctl[CTL_UNKNOWN_EXEC] += 1
            continue
        if kind == EXEC_ACK:
            if orders[s, OS_STATE] == OST_PENDING_NEW:
                orders[s, OS_STATE] = OST_LIVE
        elif kind == EXEC_PARTIAL:
            orders[s, OS_LEAVES] = e.leaves_lots
            if orders[s, OS_STATE] == OST_PENDING_NEW:
                orders[s, OS_STATE] = OST_LIVE
            if e.leaves_lots <= 0:
                orders[s, :] = 0
        elif kind == EXEC_FILL or kind == EXEC_CANCEL_ACK or kind == EXEC_EXPIRED:
            orders[s, :] = 0
        elif kind == EXEC_REJECT:
            ctl[CTL_REJECTS] += 1
            ctl[CTL_LAST_REJECT] = e.reject_code
            ctl[CTL_LAST_REJECT_NS] = e.venue_ts_ns
            st = orders[s, OS_STATE]
            if st == OST_PENDING_CANCEL or st == OST_PENDING_REPLACE:
                orders[s, OS_STATE] = OST_LIVE   # the request was denied; the order still rests
            else:
                orders[s, :] = 0
        elif kind == EXEC_CANCEL_REJECT:
            if orders[s, OS_STATE] != OST_FREE:
                orders[s, OS_STATE] = OST_LIVE
        elif kind == EXEC_REPLACE_ACK:
            orders[s, OS_PX] = orders[s, OS_NEW_PX]
            orders[s, OS_LEAVES] = e.leaves_lots if e.leaves_lots > 0 else orders[s, OS_NEW_QTY]
            orders[s, OS_STATE] = OST_LIVE
    return fills


@njit(cache=True)
def forget_intents(ctl, orders, out, n):
    """Roll back the order table for intents out[0:n] that were never sent (the kernel that
    wrote them raised): a NEW's slot is freed, a CANCEL / REPLACE leaves its order LIVE."""
    for j in range(n):
        o = out[j]
        s = find_order(orders, o.client_order_id)
        if s < 0:
            continue
        st = orders[s, OS_STATE]
        if o.kind == INTENT_NEW:
            if st == OST_PENDING_NEW:
                orders[s, :] = 0
        elif st == OST_PENDING_CANCEL or st == OST_PENDING_REPLACE:
            orders[s, OS_STATE] = OST_LIVE


@njit(cache=True)
def pending_count(orders):
    """Orders with a request in flight (new / cancel / replace not yet answered)."""
    n = 0
    for s in range(orders.shape[0]):
        st = orders[s, OS_STATE]
        if st == OST_PENDING_NEW or st == OST_PENDING_CANCEL or st == OST_PENDING_REPLACE:
            n += 1
    return n


@njit(cache=True)
def open_count(orders):
    n = 0
    for s in range(orders.shape[0]):
        if orders[s, OS_STATE] != OST_FREE:
            n += 1
    return n


@njit(cache=True)
def cancel_all(out, k, ctl, orders, now_ns):
    """CANCEL every live order of the strategy (e.g. its book became invalid)."""
    for s in range(orders.shape[0]):
        if orders[s, OS_STATE] == OST_LIVE:
            k = send_cancel(out, k, ctl, orders, s, now_ns)
    return k


# =============================================================================================
# Cold: a restarted strategy starts from the journal's view (stages/strategy_host.py on_start)
# =============================================================================================
@njit(cache=True)
def _restore_fills(ctl, pos, fills):
    """Apply fill reports (this strategy's, in router order) to the positions; returns
    (applied, skipped for an instrument the strategy does not trade)."""
    applied = 0
    unknown = 0
    for j in range(fills.shape[0]):
        e = fills[j]
        i = local_index(ctl, e.instrument_id)
        if i < 0:
            unknown += 1
            continue
        _apply_fill(pos, i, e.side, e.px_ticks, e.qty_lots, e.fee_e9)
        applied += 1
    ctl[CTL_FILLS] += applied
    return applied, unknown


def restore_state(state, orders: np.ndarray, execs: np.ndarray) -> dict:
    """Cold: rebuild the positions and open orders of a fresh ``state`` (ctl, order table,
    positions, ...) from journal records: ``orders`` (ORDER_DTYPE, every intent the gate decided
    on, reject_code 0 = approved) and ``execs`` (EXEC_DTYPE, every report the router handled,
    router sequence number in ``reserved``), as ``stages.journal.read_journal_orders`` /
    ``read_journal_exec`` return them. Only records of this strategy id count.

    Positions: every EXEC_PARTIAL / EXEC_FILL, in router order, through the same accounting as
    ``apply_execs`` (so average cost, realized PnL and fees come back too).
    Open orders: approved INTENT_NEW without a final report (EXEC_FINAL_KINDS, or a partial
    with nothing left), price and leaves as the last partial / replace ack left them; LIVE once
    the venue answered, PENDING_NEW before; PENDING_CANCEL / PENDING_REPLACE when an approved
    cancel / replace has no answer (replace ack or cancel reject) yet.

    The journal files may still be growing: a report the journal has not written yet is still
    in the strategy's exec ring (the router publishes there first) and is applied live; the
    host skips ring reports with 0 < reserved <= the returned ``last_seq`` (already here).
    The next client order id is moved past every id of this strategy in the journal.

    Returns {"last_seq", "fills", "open_orders", "unknown_instrument", "not_restored"}.
    """
    from shm.records import EXEC_FINAL_KINDS, OFLAG_RISK_SYSTEM

    ctl, table, pos = state[0], state[1], state[2]
    sid = int(ctl[CTL_STRATEGY_ID])
    last_seq = int(execs["reserved"].max()) if len(execs) else 0
    mine = execs[execs["strategy_id"] == sid]
    mine = mine[np.argsort(mine["reserved"], kind="stable")]
    kinds = mine["kind"]
    fills = np.ascontiguousarray(mine[(kinds == EXEC_PARTIAL) | (kinds == EXEC_FILL)])
    n_fills, unknown = _restore_fills(ctl, pos, fills)

    # the gate's own orders (OFLAG_RISK_SYSTEM: flattening) were never this strategy's: their
    # fills count in its positions above, but their ids and open state are not its to track
    own = orders[(orders["strategy_id"] == sid) & ((orders["flags"] & OFLAG_RISK_SYSTEM) == 0)]
    if len(own):
        counter = int((own["client_order_id"] & ((1 << COID_SHIFT) - 1)).max())
        ctl[CTL_NEXT_COID] = max(int(ctl[CTL_NEXT_COID]), counter + 1)
    approved = own[own["reject_code"] == 0]
    done = np.isin(kinds, EXEC_FINAL_KINDS) | ((kinds == EXEC_PARTIAL) & (mine["leaves_lots"] <= 0))
    final = set(mine["client_order_id"][done].tolist())
    news = approved[approved["kind"] == INTENT_NEW]
    news = news[~np.isin(news["client_order_id"], list(final))]
    coids = news["client_order_id"]
    answers = mine[np.isin(mine["client_order_id"], coids)]
    requests = approved[np.isin(approved["kind"], (INTENT_CANCEL, INTENT_REPLACE))
                        & np.isin(approved["client_order_id"], coids)]
    n_open = not_restored = 0
    placed = set()
    for o in news:
        coid = int(o["client_order_id"])
        i = local_index(ctl, int(o["instrument_id"]))
        if coid in placed:
            continue
        if i < 0:
            unknown += 1
            continue
        free = np.flatnonzero(table[:, OS_STATE] == OST_FREE)
        if len(free) == 0:
            not_restored += 1
            continue
        px, leaves, acked, answered = int(o["px_ticks"]), int(o["qty_lots"]), False, 0
        for e in answers[answers["client_order_id"] == coid]:
            k = int(e["kind"])
            if k == EXEC_ACK:
                acked = True
            elif k == EXEC_PARTIAL:
                leaves, acked = int(e["leaves_lots"]), True
            elif k == EXEC_REPLACE_ACK:
                px, acked, answered = int(e["px_ticks"]), True, answered + 1
                leaves = int(e["leaves_lots"]) if e["leaves_lots"] > 0 else int(e["qty_lots"])
            elif k == EXEC_CANCEL_REJECT:
                answered += 1
        reqs = requests[requests["client_order_id"] == coid]
        s = int(free[0])
        table[s, :] = 0
        table[s, OS_COID] = coid
        table[s, OS_INST] = i
        table[s, OS_SIDE] = int(o["side"])
        table[s, OS_PX] = px
        table[s, OS_LEAVES] = leaves
        table[s, OS_NEW_PX] = px
        table[s, OS_NEW_QTY] = leaves
        table[s, OS_SENT_NS] = int(o["send_ts_ns"])
        table[s, OS_TYPE] = int(o["order_type"])
        table[s, OS_STATE] = OST_LIVE if acked else OST_PENDING_NEW
        if len(reqs) > answered:   # one request in flight at a time: the last one is open
            r = reqs[-1]
            table[s, OS_SENT_NS] = int(r["send_ts_ns"])
            if r["kind"] == INTENT_CANCEL:
                table[s, OS_STATE] = OST_PENDING_CANCEL
            else:
                table[s, OS_STATE] = OST_PENDING_REPLACE
                table[s, OS_NEW_PX] = int(r["px_ticks"])
                table[s, OS_NEW_QTY] = int(r["qty_lots"])
        placed.add(coid)
        n_open += 1
    return {"last_seq": last_seq, "fills": int(n_fills), "open_orders": n_open,
            "unknown_instrument": int(unknown), "not_restored": not_restored}
