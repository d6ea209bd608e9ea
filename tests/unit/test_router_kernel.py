"""The order router's kernel (stages/router_kernels.router_step), driven in one process.

Every arrow of the router is a real in-process SPSC ring (approved orders in, one order ring and
one report ring per venue, exec rings to each strategy, the gate and the journal); the test plays
the risk gate and the venue. The clock is frozen (``ns_per_tick = 0``) and moved by hand, so the
token bucket sees exactly the time a test gives it. ``RouterRig`` is shared with
tests/unit/test_router_property.py.
"""
from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shm.histogram import LatencyHistogram
from shm.records import (EFLAG_RECONCILE, EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT,
                         EXEC_DTYPE, EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE,
                         OFLAG_RISK_SYSTEM, ORD_LIMIT, ORDER_DTYPE, REJECT_HALTED,
                         REJECT_INVALID, REJECT_MAX_OPEN_ORDERS, REJECT_POST_ONLY,
                         REJECT_RATE_LIMIT, REJECT_UNKNOWN_ORDER, SIDE_BUY, SIDE_SELL)
from shm.ring import SpscRing
from stages import router_kernels as rk
from stages.base import stack_states
from stages.clock import C_BASE_NS, C_NS_PER_TICK

NOW0 = 10 ** 15          # ns; exact in the float64 calibration array
BATCH = 64


def coid_of(sid: int, counter: int) -> int:
    return (sid << rk.COID_SHIFT) | counter


class RouterRig:
    """router_step's whole world in one process. Close it (or use ``with``) to unlink."""

    _names = itertools.count()

    def __init__(self, instance: str, *, n_venues: int = 1, n_strats: int = 2, n_inst: int = 4,
                 venue_in_cap: int = 64, venue_out_cap: int = 64, rate: float = 1e6,
                 tab_rows: int = rk.TAB_ROWS, out_cap: int = 4096):
        tag = f"r{next(self._names)}"
        self.rings = []

        def ring(name, dtype, cap):
            r = SpscRing.create(instance, f"{tag}.{name}", dtype, cap)
            self.rings.append(r)
            return r

        try:
            a = ring("approved", ORDER_DTYPE, 256)
            self.appr_ring = a
            self.appr_w, self.appr_r = a.writer(), a.reader()
            vo = [ring(f"vorder-{v}", ORDER_DTYPE, venue_in_cap) for v in range(n_venues)]
            vx = [ring(f"vexec-{v}", EXEC_DTYPE, venue_out_cap) for v in range(n_venues)]
            self.ven_out = [r.writer() for r in vo]          # router -> venue
            self.venue_in = [r.reader() for r in vo]         # the venue's end
            self.venue_out = [r.writer() for r in vx]        # venue -> router
            self.ven_in = [r.reader() for r in vx]
            st = [ring(f"exec-{s}", EXEC_DTYPE, out_cap) for s in range(1, n_strats + 1)]
            self.strat_w = [r.writer() for r in st]
            self.strat_r = [r.reader() for r in st]
            g = ring("exec-gate", EXEC_DTYPE, out_cap)
            self.gate_w, self.gate_r = g.writer(), g.reader()
            j = ring("jexec", EXEC_DTYPE, out_cap)
            self.j_w, self.j_r = j.writer(), j.reader()
        except Exception:
            self.close()
            raise
        self.ven_in_sts = stack_states(self.ven_in)
        self.ven_out_sts = stack_states(self.ven_out)
        self.strat_sts = stack_states(self.strat_w)
        self.ven_in_slots = tuple(r.slots for r in self.ven_in)
        self.ven_out_slots = tuple(w.slots for w in self.ven_out)
        self.strat_slots = tuple(w.slots for w in self.strat_w)

        self.n_venues, self.n_strats = n_venues, n_strats
        self.cal = np.array([0.0, float(NOW0), 0.0])   # frozen clock: now = cal[C_BASE_NS]
        self.ctl = np.zeros(rk.CTL_WORDS, dtype=np.int64)
        self.ctl[rk.C_SEQ] = 1000
        self.tab = np.zeros((n_strats + 1, tab_rows, rk.T_WORDS), dtype=np.int64)
        self.pos = np.zeros((n_strats + 1, n_inst + 1), dtype=np.int64)
        self.open_n = np.zeros(n_strats + 1, dtype=np.int64)
        self.tokens = np.array([(rate, NOW0, rate)] * n_venues, dtype=np.float64)
        self.abuf = np.zeros(BATCH, ORDER_DTYPE)
        self.ebuf = np.zeros(BATCH, EXEC_DTYPE)
        self.one = np.zeros(1, EXEC_DTYPE)
        self.abuf_i = self.abuf.view(np.int64).reshape(BATCH, -1)
        self.ebuf_i = self.ebuf.view(np.int64).reshape(BATCH, -1)
        self.one_i = self.one.view(np.int64).reshape(1, -1)
        self.obuf = np.zeros(1, ORDER_DTYPE)
        self.obuf_i = self.obuf.view(np.int64).reshape(1, -1)
        self.hists = [LatencyHistogram.local() for _ in range(3)]
        self._tmp_exec = np.zeros(256, EXEC_DTYPE)
        self._tmp_order = np.zeros(256, ORDER_DTYPE)
        self._one_exec = np.zeros(1, EXEC_DTYPE)
        self.gate_log: list[np.ndarray] = []
        self.journal_log: list[np.ndarray] = []
        self.strat_log: list[list[np.ndarray]] = [[] for _ in range(n_strats)]
        self.report_id = 0

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        for r in self.rings:
            r.unlink()
            r.close()
        self.rings = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- clock ----------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return int(self.cal[C_BASE_NS])

    def advance(self, ns: int) -> None:
        assert self.cal[C_NS_PER_TICK] == 0.0
        self.cal[C_BASE_NS] += ns

    # -- the gate's side ------------------------------------------------------------------
    def order(self, kind, sid, coid, *, venue=1, side=SIDE_BUY, inst=1, px=100, qty=5,
              flags=0, tag=0) -> np.ndarray:
        o = np.zeros(1, ORDER_DTYPE)
        o["kind"], o["side"], o["order_type"], o["flags"] = kind, side, ORD_LIMIT, flags
        o["instrument_id"], o["client_order_id"] = inst, coid
        o["px_ticks"], o["qty_lots"] = px, qty
        o["cause_recv_ts_ns"], o["send_ts_ns"] = tag, self.now
        o["strategy_id"], o["venue_id"] = sid, venue
        return o

    def approve(self, *orders: np.ndarray) -> None:
        for o in orders:
            assert self.appr_w.publish(o) == 1, "approved ring full: step the router first"

    @property
    def approved_taken(self) -> int:
        """How many approved orders the router has consumed."""
        return self.appr_ring.reader_cursor(0)

    # -- the router -----------------------------------------------------------------------
    def step(self) -> np.ndarray:
        """One router_step; returns the reports it sent to the gate in this step."""
        h = self.hists
        rk.router_step(self.ctl, self.cal, self.tab, self.pos, self.open_n, self.tokens,
                       self.appr_r.st, self.appr_r.slots, self.abuf, self.abuf_i,
                       self.ven_in_sts, self.ven_in_slots, self.ven_out_sts,
                       self.ven_out_slots, self.ebuf, self.ebuf_i, self.strat_sts,
                       self.strat_slots, self.gate_w.st, self.gate_w.slots, self.j_w.st,
                       self.j_w.slots, True, self.one, self.one_i, h[0].array, h[1].array,
                       h[2].array)
        new = self._drain(self.gate_r, self.gate_log)
        self._drain(self.j_r, self.journal_log)
        for s in range(self.n_strats):
            self._drain(self.strat_r[s], self.strat_log[s])
        return new

    def cancel_all(self, sid: int = 0) -> int:
        return rk.router_cancel_all(self.tab, sid, self.ven_out_sts, self.ven_out_slots,
                                    self.obuf, self.obuf_i, self.cal)

    def forget_venue_orders(self, mask: int = 0) -> np.ndarray:
        n = len(self.gate)
        rk.router_forget_venue_orders(self.ctl, self.tab, self.open_n, self.cal, self.obuf,
                                      self.one, self.one_i, self.strat_sts, self.strat_slots,
                                      self.gate_w.st, self.gate_w.slots, self.j_w.st,
                                      self.j_w.slots, True, np.int64(mask))
        self._drain(self.gate_r, self.gate_log)
        self._drain(self.j_r, self.journal_log)
        for s in range(self.n_strats):
            self._drain(self.strat_r[s], self.strat_log[s])
        return self.gate[n:]

    def _drain(self, reader, log) -> np.ndarray:
        got = []
        while True:
            n = reader.poll(self._tmp_exec)
            if n == 0:
                break
            got.append(self._tmp_exec[:n].copy())
        new = np.concatenate(got) if got else np.zeros(0, EXEC_DTYPE)
        log.append(new)
        return new

    @property
    def gate(self) -> np.ndarray:
        return np.concatenate(self.gate_log) if self.gate_log else np.zeros(0, EXEC_DTYPE)

    @property
    def journal(self) -> np.ndarray:
        return np.concatenate(self.journal_log) if self.journal_log else np.zeros(0, EXEC_DTYPE)

    def strategy(self, sid: int) -> np.ndarray:
        log = self.strat_log[sid - 1]
        return np.concatenate(log) if log else np.zeros(0, EXEC_DTYPE)

    def open_coids(self, sid: int) -> set[int]:
        col = self.tab[sid, :, rk.T_COID]
        return {int(c) for c in col[col != 0]}

    # -- the venue's side -----------------------------------------------------------------
    def venue_orders(self, venue: int = 1, limit: int | None = None) -> np.ndarray:
        """What the router forwarded to ``venue`` (1-based) since the last call (all of it,
        or the first ``limit`` orders)."""
        got = []
        left = len(self._tmp_order) if limit is None else limit
        while left > 0:
            n = self.venue_in[venue - 1].poll(self._tmp_order[:min(left, len(self._tmp_order))])
            if n == 0:
                break
            got.append(self._tmp_order[:n].copy())
            if limit is not None:
                left -= n
        return np.concatenate(got) if got else np.zeros(0, ORDER_DTYPE)

    def venue_pending(self, venue: int = 1) -> int:
        return self.venue_in[venue - 1].pending()

    def venue_report(self, kind, o, *, qty=None, leaves=0, code=0, tag=None,
                     report_id=None) -> bool:
        """The venue answers order ``o`` (an ORDER record) with ``kind``; False if its ring is
        full. Each report carries an id in ``trade_id`` (unique unless ``report_id`` says)."""
        self.report_id += 1
        e = self._one_exec
        e[:] = 0
        e["kind"], e["side"], e["instrument_id"] = kind, o["side"], o["instrument_id"]
        e["client_order_id"], e["strategy_id"] = o["client_order_id"], o["strategy_id"]
        e["venue_id"], e["px_ticks"] = o["venue_id"], o["px_ticks"]
        e["qty_lots"] = o["qty_lots"] if qty is None else qty
        e["leaves_lots"], e["reject_code"] = leaves, code
        e["cause_recv_ts_ns"] = o["cause_recv_ts_ns"] if tag is None else tag
        e["venue_ts_ns"] = self.now
        e["trade_id"] = self.report_id if report_id is None else report_id
        v = int(o["venue_id"]) - 1
        return self.venue_out[v].publish(e) == 1


def kinds(recs) -> list[int]:
    return [int(k) for k in recs["kind"]]


# =============================================================================================
# the ordinary path
# =============================================================================================
def test_new_order_is_forwarded_tracked_and_closed_by_its_fill(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        c = coid_of(1, 1)
        rig.approve(rig.order(INTENT_NEW, 1, c, qty=5))
        assert len(rig.step()) == 0
        fwd = rig.venue_orders()
        assert len(fwd) == 1 and fwd[0]["client_order_id"] == c
        assert rig.open_n[1] == 1 and rig.ctl[rk.C_OPEN] == 1 and rig.open_coids(1) == {c}
        assert rig.venue_report(EXEC_ACK, fwd[0], leaves=5)
        assert rig.venue_report(EXEC_PARTIAL, fwd[0], qty=2, leaves=3)
        assert rig.venue_report(EXEC_FILL, fwd[0], qty=3, leaves=0)
        out = rig.step()
        assert kinds(out) == [EXEC_ACK, EXEC_PARTIAL, EXEC_FILL]
        assert rig.open_n[1] == 0 and rig.ctl[rk.C_OPEN] == 0 and rig.open_coids(1) == set()
        assert rig.pos[1, 1] == 5 and rig.ctl[rk.C_UNKNOWN] == 0
        # one copy each to the strategy, the gate and the journal, in router sequence order
        seq = list(rig.gate["reserved"])
        assert seq == sorted(seq) and len(set(seq)) == 3
        assert list(rig.journal["reserved"]) == seq
        assert list(rig.strategy(1)["reserved"]) == seq and len(rig.strategy(2)) == 0


def test_token_bucket_rejects_beyond_the_rate_and_refills_over_time(shm_prefix):
    with RouterRig(shm_prefix, rate=3.0) as rig:
        rig.approve(*(rig.order(INTENT_NEW, 1, coid_of(1, i)) for i in range(1, 5)))
        out = rig.step()
        assert len(rig.venue_orders()) == 3                      # the burst: `rate` tokens
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_RATE_LIMIT
        assert out[0]["client_order_id"] == coid_of(1, 4) and rig.ctl[rk.C_RATE_REJ] == 1
        rig.advance(200_000_000)                                   # 0.6 tokens: not yet
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 5)))
        assert kinds(rig.step()) == [EXEC_REJECT] and len(rig.venue_orders()) == 0
        rig.advance(200_000_000)                                   # 1.2 tokens: one order
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 6)),
                    rig.order(INTENT_NEW, 1, coid_of(1, 7)))
        out = rig.step()
        assert list(rig.venue_orders()["client_order_id"]) == [coid_of(1, 6)]
        assert kinds(out) == [EXEC_REJECT] and out[0]["client_order_id"] == coid_of(1, 7)
        rig.advance(60 * 10 ** 9)                                  # a long pause: capped at rate
        rig.approve(*(rig.order(INTENT_NEW, 1, coid_of(1, i)) for i in range(10, 15)))
        out = rig.step()
        assert len(rig.venue_orders()) == 3 and kinds(out) == [EXEC_REJECT] * 2
        assert rig.ctl[rk.C_RATE_REJ] == 5 and rig.open_n[1] == 4 + 3


def test_venue_reject_passes_through_and_closes_the_order(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        rig.approve(rig.order(INTENT_NEW, 2, coid_of(2, 9)))
        rig.step()
        (o,) = rig.venue_orders()
        assert rig.venue_report(EXEC_REJECT, o, code=REJECT_POST_ONLY)
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_POST_ONLY
        assert kinds(rig.strategy(2)) == [EXEC_REJECT] and len(rig.journal) == 1
        assert rig.open_n[2] == 0 and rig.ctl[rk.C_OPEN] == 0 and rig.ctl[rk.C_UNKNOWN] == 0


def test_cancel_of_an_order_whose_fill_the_router_saw_is_answered_unknown_order(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        c = coid_of(1, 3)
        rig.approve(rig.order(INTENT_NEW, 1, c, tag=1))
        rig.step()
        (o,) = rig.venue_orders()
        rig.venue_report(EXEC_ACK, o, leaves=5)
        rig.venue_report(EXEC_FILL, o, leaves=0)
        rig.approve(rig.order(INTENT_CANCEL, 1, c, tag=2))   # the fill arrives first
        out = rig.step()
        assert kinds(out) == [EXEC_ACK, EXEC_FILL, EXEC_CANCEL_REJECT]
        assert out[2]["reject_code"] == REJECT_UNKNOWN_ORDER and out[2]["cause_recv_ts_ns"] == 2
        assert len(rig.venue_orders()) == 0                   # nothing to forward
        assert rig.open_n[1] == 0


def test_cancel_racing_the_fill_at_the_venue_gets_exactly_one_answer(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        c = coid_of(1, 3)
        rig.approve(rig.order(INTENT_NEW, 1, c, tag=1))
        rig.step()
        (o,) = rig.venue_orders()
        rig.venue_report(EXEC_ACK, o, leaves=5)
        rig.step()
        rig.approve(rig.order(INTENT_CANCEL, 1, c, tag=2))
        assert len(rig.step()) == 0
        (cx,) = rig.venue_orders()                             # forwarded: still open here
        rig.venue_report(EXEC_FILL, o, leaves=0)               # ... but it filled meanwhile
        rig.venue_report(EXEC_CANCEL_REJECT, cx, code=REJECT_UNKNOWN_ORDER)
        out = rig.step()
        assert kinds(out) == [EXEC_FILL, EXEC_CANCEL_REJECT]
        assert rig.open_n[1] == 0 and rig.ctl[rk.C_UNKNOWN] == 0


# =============================================================================================
# defect 1: a full venue input ring
# =============================================================================================
def test_new_with_full_venue_ring_is_rejected_untracked_and_spends_no_token(shm_prefix):
    with RouterRig(shm_prefix, venue_in_cap=2, rate=10.0) as rig:
        rig.approve(*(rig.order(INTENT_NEW, 1, coid_of(1, i), tag=i) for i in (1, 2, 3)))
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_RATE_LIMIT
        assert out[0]["cause_recv_ts_ns"] == 3
        assert rig.open_coids(1) == {coid_of(1, 1), coid_of(1, 2)} and rig.open_n[1] == 2
        assert rig.ctl[rk.C_VENUE_FULL] == 1 and rig.ctl[rk.C_RATE_REJ] == 0
        assert rig.tokens[0, 0] == 8.0


def test_cancel_with_full_venue_ring_is_answered_with_cancel_reject(shm_prefix):
    with RouterRig(shm_prefix, venue_in_cap=1) as rig:
        c = coid_of(1, 1)
        rig.approve(rig.order(INTENT_NEW, 1, c, tag=1))
        rig.step()                                       # the NEW fills the venue's ring
        rig.approve(rig.order(INTENT_CANCEL, 1, c, tag=2))
        out = rig.step()
        assert kinds(out) == [EXEC_CANCEL_REJECT]
        assert out[0]["reject_code"] == REJECT_RATE_LIMIT and out[0]["cause_recv_ts_ns"] == 2
        assert out[0]["client_order_id"] == c and kinds(rig.strategy(1)) == [EXEC_CANCEL_REJECT]
        assert rig.ctl[rk.C_VENUE_FULL] == 1 and rig.open_coids(1) == {c}   # still resting
        assert kinds(rig.venue_orders()) == [INTENT_NEW]
        rig.approve(rig.order(INTENT_CANCEL, 1, c, tag=3))   # room again: the retry goes out
        assert len(rig.step()) == 0
        assert list(rig.venue_orders()["cause_recv_ts_ns"]) == [3]


def test_replace_with_full_venue_ring_is_answered_with_cancel_reject(shm_prefix):
    with RouterRig(shm_prefix, venue_in_cap=1) as rig:
        c = coid_of(1, 1)
        rig.approve(rig.order(INTENT_NEW, 1, c, tag=1))
        rig.step()
        rig.approve(rig.order(INTENT_REPLACE, 1, c, px=101, qty=4, tag=2))
        out = rig.step()
        assert kinds(out) == [EXEC_CANCEL_REJECT]
        assert out[0]["reject_code"] == REJECT_RATE_LIMIT and out[0]["cause_recv_ts_ns"] == 2
        assert rig.ctl[rk.C_VENUE_FULL] == 1 and rig.open_coids(1) == {c}
        row = rk.tab_find(rig.tab, 1, c)
        assert rig.tab[1, row, rk.T_PX] == 100 and rig.tab[1, row, rk.T_LEAVES] == 5


def test_cancel_all_with_full_venue_ring_is_answered_once_and_counted(shm_prefix):
    with RouterRig(shm_prefix, venue_in_cap=1) as rig:
        rig.approve(rig.order(INTENT_NEW, 2, coid_of(2, 1), tag=1))
        rig.step()
        rig.approve(rig.order(INTENT_CANCEL_ALL, 2, 0, inst=0, tag=2))
        out = rig.step()
        assert kinds(out) == [EXEC_CANCEL_REJECT] and out[0]["strategy_id"] == 2
        assert out[0]["reject_code"] == REJECT_RATE_LIMIT and out[0]["cause_recv_ts_ns"] == 2
        assert kinds(rig.strategy(2)) == [EXEC_CANCEL_REJECT]
        assert rig.ctl[rk.C_VENUE_FULL] == 1
        rig.venue_orders()
        rig.approve(rig.order(INTENT_CANCEL_ALL, 2, 0, inst=0, tag=3))
        assert len(rig.step()) == 0                            # room: forwarded, the venue answers
        fwd = rig.venue_orders()
        assert kinds(fwd) == [INTENT_CANCEL_ALL] and fwd[0]["cause_recv_ts_ns"] == 3


# =============================================================================================
# defect 2: malformed approved orders
# =============================================================================================
def test_malformed_orders_are_answered_invalid_to_gate_journal_and_strategy(shm_prefix):
    with RouterRig(shm_prefix, n_venues=1, n_strats=2) as rig:
        bad = [
            (rig.order(INTENT_NEW, 1, coid_of(1, 1), venue=0, tag=1), EXEC_REJECT, 1),
            (rig.order(INTENT_NEW, 1, coid_of(1, 2), venue=2, tag=2), EXEC_REJECT, 1),
            (rig.order(INTENT_CANCEL, 2, coid_of(2, 3), venue=5, tag=3), EXEC_CANCEL_REJECT, 2),
            (rig.order(INTENT_REPLACE, 2, coid_of(2, 4), venue=0, tag=4), EXEC_CANCEL_REJECT, 2),
            (rig.order(INTENT_NEW, 3, coid_of(3, 5), tag=5), EXEC_REJECT, None),
            (rig.order(INTENT_NEW, 0, coid_of(0, 6), tag=6), EXEC_REJECT, None),
            (rig.order(INTENT_CANCEL_ALL, 0, 0, tag=7), EXEC_CANCEL_REJECT, None),
            (rig.order(9, 1, coid_of(1, 8), tag=8), EXEC_REJECT, 1),
            (rig.order(0, 2, coid_of(2, 9), tag=9), EXEC_REJECT, 2),
            (rig.order(INTENT_NEW, 1, 0, tag=10), EXEC_REJECT, 1),
        ]
        rig.approve(*(o for o, _, _ in bad))
        out = rig.step()
        assert list(out["cause_recv_ts_ns"]) == list(range(1, 11))
        assert kinds(out) == [k for _, k, _ in bad]
        assert set(out["reject_code"]) == {REJECT_INVALID}
        assert list(rig.journal["cause_recv_ts_ns"]) == list(range(1, 11))
        for sid in (1, 2):
            want = [o[0]["cause_recv_ts_ns"] for o, _, s in bad if s == sid]
            assert list(rig.strategy(sid)["cause_recv_ts_ns"]) == want
        assert rig.ctl[rk.C_MALFORMED] == len(bad)
        assert len(rig.venue_orders()) == 0 and rig.ctl[rk.C_OPEN] == 0
        assert not rig.tab.any()


# =============================================================================================
# defect 3: the order table
# =============================================================================================
def test_client_order_ids_equal_modulo_16384_are_both_tracked_to_their_own_final_state(
        shm_prefix):
    with RouterRig(shm_prefix) as rig:
        a, b, c = coid_of(1, 5), coid_of(1, 5 + 16384), coid_of(1, 5 + 2 * 16384)
        rig.approve(rig.order(INTENT_NEW, 1, a, qty=5, tag=1),
                    rig.order(INTENT_NEW, 1, b, qty=7, side=SIDE_SELL, tag=2),
                    rig.order(INTENT_NEW, 1, c, qty=3, tag=3))
        assert len(rig.step()) == 0
        fwd = {int(o["client_order_id"]): o for o in rig.venue_orders()}
        assert rig.open_coids(1) == {a, b, c} and rig.open_n[1] == 3
        for o in fwd.values():
            rig.venue_report(EXEC_ACK, o, leaves=int(o["qty_lots"]))
        rig.step()
        # a is cancelled, b fills, c stays: each answer lands on its own order
        rig.approve(rig.order(INTENT_CANCEL, 1, a, tag=4))
        assert len(rig.step()) == 0
        (cx,) = rig.venue_orders()
        assert cx["client_order_id"] == a
        rig.venue_report(EXEC_CANCEL_ACK, cx, leaves=0)
        rig.venue_report(EXEC_FILL, fwd[b], qty=7, leaves=0)
        out = rig.step()
        assert kinds(out) == [EXEC_CANCEL_ACK, EXEC_FILL]
        assert rig.open_coids(1) == {c} and rig.open_n[1] == 1 and rig.ctl[rk.C_OPEN] == 1
        row = rk.tab_find(rig.tab, 1, c)
        assert rig.tab[1, row, rk.T_LEAVES] == 3 and rig.tab[1, row, rk.T_STATE] == rk.OS_OPEN
        assert rig.pos[1, 1] == -7 and rig.ctl[rk.C_UNKNOWN] == 0
        rig.approve(rig.order(INTENT_REPLACE, 1, c, px=99, qty=2, tag=5))
        rig.step()
        (rx,) = rig.venue_orders()
        rig.venue_report(EXEC_REPLACE_ACK, rx, qty=2, leaves=2)
        rig.venue_report(EXEC_FILL, rx, qty=2, leaves=0)
        assert kinds(rig.step()) == [EXEC_REPLACE_ACK, EXEC_FILL]
        assert rig.open_n[1] == 0 and not rig.tab.any() and rig.ctl[rk.C_UNKNOWN] == 0
        assert rig.pos[1, 1] == -5


def test_a_new_naming_an_open_client_order_id_is_rejected_and_the_open_order_kept(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        c = coid_of(1, 1)
        rig.approve(rig.order(INTENT_NEW, 1, c, qty=5, tag=1),
                    rig.order(INTENT_NEW, 1, c, qty=9, px=50, tag=2))
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_INVALID
        assert out[0]["cause_recv_ts_ns"] == 2 and rig.ctl[rk.C_TAB_REJ] == 1
        assert len(rig.venue_orders()) == 1 and rig.open_n[1] == 1
        row = rk.tab_find(rig.tab, 1, c)
        assert rig.tab[1, row, rk.T_LEAVES] == 5 and rig.tab[1, row, rk.T_PX] == 100


def test_a_strategy_holds_tab_slots_open_orders_whose_ids_all_agree_modulo_16384(shm_prefix):
    # the stage's own table size; every coid lands on the old direct-mapped row 1
    with RouterRig(shm_prefix, venue_in_cap=256) as rig:
        coids = [coid_of(1, 1 + k * 16384) for k in range(rk.TAB_SLOTS)]
        sent = 0
        for i in range(0, len(coids), 200):
            rig.approve(*(rig.order(INTENT_NEW, 1, c) for c in coids[i:i + 200]))
            while rig.approved_taken < i + len(coids[i:i + 200]):
                assert len(rig.step()) == 0
                sent += len(rig.venue_orders())
        assert sent == rk.TAB_SLOTS and rig.open_n[1] == rk.TAB_SLOTS
        assert rig.open_coids(1) == set(coids)
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 2), tag=7))   # one more: refused
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_MAX_OPEN_ORDERS
        assert rig.open_coids(1) == set(coids) and len(rig.venue_orders()) == 0
        # every one is found again by its fill, in a different order than it was sent
        o = rig.order(INTENT_NEW, 1, 0)[0]
        for c in reversed(coids):
            o["client_order_id"] = c
            while not rig.venue_report(EXEC_FILL, o, leaves=0):
                rig.step()
        while rig.open_n[1]:
            assert len(rig.step()) > 0
        assert rig.ctl[rk.C_UNKNOWN] == 0 and rig.ctl[rk.C_OPEN] == 0 and not rig.tab.any()
        assert rig.pos[1, 1] == 5 * rk.TAB_SLOTS


def test_a_full_small_table_rejects_the_new_order_and_overwrites_nothing(shm_prefix):
    with RouterRig(shm_prefix, tab_rows=16) as rig:                   # holds 8 per strategy
        coids = [coid_of(1, 3 + k * 16) for k in range(8)]
        rig.approve(*(rig.order(INTENT_NEW, 1, c, qty=i + 1) for i, c in enumerate(coids)))
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 999), tag=9))
        rig.approve(rig.order(INTENT_NEW, 2, coid_of(2, 3), tag=10))  # another strategy: room
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT] and out[0]["reject_code"] == REJECT_MAX_OPEN_ORDERS
        assert out[0]["cause_recv_ts_ns"] == 9 and rig.ctl[rk.C_TAB_REJ] == 1
        assert rig.open_coids(1) == set(coids) and rig.open_coids(2) == {coid_of(2, 3)}
        for i, c in enumerate(coids):
            assert rig.tab[1, rk.tab_find(rig.tab, 1, c), rk.T_LEAVES] == i + 1
        fwd = rig.venue_orders()
        rig.venue_report(EXEC_CANCEL_ACK, fwd[4])
        rig.step()
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 999), tag=11))
        assert len(rig.step()) == 0 and rig.open_n[1] == 8
        assert rig.open_coids(1) == (set(coids) - {coids[4]}) | {coid_of(1, 999)}


# =============================================================================================
# halt, cancel-all, reconcile
# =============================================================================================
def test_halted_router_rejects_new_orders_but_forwards_cancels(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        c = coid_of(1, 1)
        rig.approve(rig.order(INTENT_NEW, 1, c, tag=1))
        rig.step()
        rig.venue_orders()
        rig.ctl[rk.C_HALTED] = 1
        rig.approve(rig.order(INTENT_NEW, 1, coid_of(1, 2), tag=2),
                    rig.order(INTENT_REPLACE, 1, c, px=90, tag=3),
                    rig.order(INTENT_CANCEL, 1, c, tag=4),
                    rig.order(INTENT_NEW, 1, coid_of(1, 3), flags=OFLAG_RISK_SYSTEM, tag=5))
        out = rig.step()
        assert kinds(out) == [EXEC_REJECT, EXEC_CANCEL_REJECT]
        assert list(out["reject_code"]) == [REJECT_HALTED, REJECT_HALTED]
        assert list(out["cause_recv_ts_ns"]) == [2, 3]
        assert list(rig.venue_orders()["cause_recv_ts_ns"]) == [4, 5]


def test_cancel_all_and_venue_restart_reach_every_open_order_of_the_table(shm_prefix):
    with RouterRig(shm_prefix) as rig:
        mine = {1: [coid_of(1, 7 + k * 16384) for k in range(5)], 2: [coid_of(2, 7)]}
        for sid, cs in mine.items():
            rig.approve(*(rig.order(INTENT_NEW, sid, c) for c in cs))
        rig.step()
        rig.venue_orders()
        assert rig.cancel_all(1) == 5
        cx = rig.venue_orders()
        assert set(cx["client_order_id"]) == set(mine[1]) and set(cx["kind"]) == {INTENT_CANCEL}
        assert set(cx["flags"]) == {OFLAG_RISK_SYSTEM}
        assert rig.cancel_all(0) == 6
        rig.venue_orders()
        out = rig.forget_venue_orders()
        assert kinds(out) == [EXEC_CANCEL_ACK] * 6 and set(out["flags"]) == {EFLAG_RECONCILE}
        assert sorted(out["client_order_id"]) == sorted(mine[1] + mine[2])
        assert rig.ctl[rk.C_OPEN] == 0 and not rig.open_n.any() and not rig.tab.any()


def _restart_one_venue(rig, orders, mask):
    """Open ``orders`` ((sid, coid, venue) ...), then forget the venues of ``mask``; the
    reports, and what is left open."""
    for sid, c, v in orders:
        rig.approve(rig.order(INTENT_NEW, sid, c, venue=v))
        rig.step()
    for v in range(1, rig.n_venues + 1):
        rig.venue_orders(v)
    out = rig.forget_venue_orders(mask)
    return out, {(sid, c) for sid, c, v in orders if not (mask >> v) & 1}


def _assert_left_open_and_findable(rig, left):
    assert {(s, c) for s in range(1, rig.n_strats + 1) for c in rig.open_coids(s)} == left
    for sid, c in left:   # every probe run still leads to its order (backward-shift deletes)
        assert rk.tab_find(rig.tab, sid, c) >= 0
    assert rig.ctl[rk.C_OPEN] == len(left)
    for sid in range(1, rig.n_strats + 1):
        assert rig.open_n[sid] == sum(1 for s, _c in left if s == sid)


def test_a_venue_restart_closes_that_venues_orders_only_and_the_others_stay_findable(
        shm_prefix):
    """A paper venue (one feed stage per venue) restarts: its orders are closed, orders at the
    other venues stay open, even where they share probe runs of the order table."""
    with RouterRig(shm_prefix, n_venues=3) as rig:
        # colliding client order ids: one probe run, venues interleaved along it
        orders = [(1, coid_of(1, 7 + k * 16384), 1 + k % 3) for k in range(9)]
        orders += [(2, coid_of(2, 7), 2), (2, coid_of(2, 8), 3)]
        out, left = _restart_one_venue(rig, orders, 1 << 2)
        assert kinds(out) == [EXEC_CANCEL_ACK] * 4 and set(out["flags"]) == {EFLAG_RECONCILE}
        assert set(out["venue_id"]) == {2}
        assert sorted(out["client_order_id"]) == sorted(c for _s, c, v in orders if v == 2)
        _assert_left_open_and_findable(rig, left)
        # what is left trades on: a cancel of an order at venue 3 goes there
        sid, c = next((s, c) for s, c, v in orders if v == 3)
        rig.approve(rig.order(INTENT_CANCEL, sid, c, venue=3))
        rig.step()
        assert list(rig.venue_orders(3)["client_order_id"]) == [c]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2), st.integers(0, 40), st.integers(1, 3)),
                min_size=0, max_size=30, unique_by=lambda t: (t[0], t[1])),
       st.integers(0, 15))
def test_property_a_venue_restart_closes_exactly_the_orders_at_its_venues(orders, mask):
    import uuid

    # a few homes only, so probe runs are long and mixed
    orders = [(sid, coid_of(sid, 7 + (k % 4) + (k // 4) * 16384), v) for sid, k, v in orders]
    with RouterRig(f"rk{uuid.uuid4().hex[:8]}", n_venues=3, rate=1e9) as rig:
        out, left = _restart_one_venue(rig, orders, mask)
        gone = {(s, c) for s, c, v in orders if mask == 0 or (mask >> v) & 1}
        if mask == 0:
            left = set()
        assert {(int(e["strategy_id"]), int(e["client_order_id"])) for e in out} == gone
        assert len(out) == len(gone) and set(kinds(out)) <= {EXEC_CANCEL_ACK}
        _assert_left_open_and_findable(rig, left)
