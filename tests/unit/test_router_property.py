"""Properties of the order router's kernel on random streams (hypothesis).

The stream mixes approved NEW / CANCEL / REPLACE / CANCEL_ALL orders (client order ids drawn
from a small pool, so they repeat and agree modulo 16384), malformed orders, halts, clock jumps
against a token bucket, router steps, and a pure-Python venue (``VenueModel``) that answers each
order it takes (ack, partial, fill, expiry, reject, cancel ack, cancel reject, replace ack),
fills resting orders on its own, and reads its small input ring only when the stream says so
(so the router meets full venue rings in both directions). ``router_step`` is called directly
on real in-process rings (tests/unit/test_router_kernel.RouterRig).

Every approved order is tagged with a unique id in ``cause_recv_ts_ns``; the router copies it
into its own answers and the venue model into its. Default run: 200 cases per property;
``--run-slow``: 2,000 (stream property) and 5,000 (table property).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL,
                         EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL,
                         INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE, OFLAG_RISK_SYSTEM,
                         REJECT_CANCEL_RATE, REJECT_POST_ONLY, REJECT_UNKNOWN_ORDER, SIDE_BUY,
                         SIDE_SELL)
from stages import router_kernels as rk
from tests.unit.test_router_kernel import RouterRig, coid_of

N_STRATS, N_VENUES = 2, 2
FINAL = (EXEC_FILL, EXEC_CANCEL_ACK, EXEC_REJECT, EXEC_EXPIRED)
CANCEL_LIKE = (INTENT_CANCEL, INTENT_REPLACE, INTENT_CANCEL_ALL)
ANSWERS_TO_CANCEL = (EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_REPLACE_ACK)
COUNTERS = (1, 2, 3, 1 + 16384, 2 + 16384, 1 + 2 * 16384, 3 + 5 * 16384)
NEW_OUTCOMES = ("rest", "rest", "partial", "fill", "expire", "reject")
ACTIONS = ("new",) * 5 + ("cancel",) * 2 + ("replace", "cancel_all", "malformed") + \
    ("step",) * 3 + ("venue",) * 3 + ("venue_fill", "tick", "halt")
MALFORMED = ("venue0", "venue_high", "cancel_bad_venue", "sid_high", "sid0", "kind", "coid0")


_SAMPLED: dict = {}     # strategies built once: building one per draw dominated the run time
_INTEGERS: dict = {}


def _examples(run_slow: bool, default: int, slow: int) -> int:
    return slow if run_slow else default


class VenueModel:
    """One venue: answers every order it takes exactly once (a CANCEL_ALL with one CANCEL_ACK
    per order it closes), keeps its open orders, and queues reports while its ring is full."""

    def __init__(self, rig: RouterRig, venue: int, ids):
        self.rig, self.venue, self.ids = rig, venue, ids
        self.open: dict[tuple[int, int], list] = {}     # (sid, coid) -> [order, leaves]
        self.outbox: list[tuple] = []
        self.taken_tags: Counter = Counter()
        self.published: list[int] = []                   # report ids on the vexec ring
        self.filled: Counter = Counter()                 # (sid, inst) -> signed lots

    def _say(self, kind, o, *, qty=None, leaves=0, code=0, tag=None):
        rid = next(self.ids)
        self.outbox.append((kind, o, dict(qty=qty, leaves=leaves, code=code, tag=tag,
                                          report_id=rid)))
        if kind in (EXEC_PARTIAL, EXEC_FILL):
            q = int(o["qty_lots"]) if qty is None else qty
            key = (int(o["strategy_id"]), int(o["instrument_id"]))
            self.filled[key] += q if o["side"] == SIDE_BUY else -q

    def flush(self) -> int:
        n = 0
        while self.outbox:
            kind, o, kw = self.outbox[0]
            if not self.rig.venue_report(kind, o, **kw):
                break
            self.published.append(kw["report_id"])
            self.outbox.pop(0)
            n += 1
        return n

    def take(self, limit: int | None, choose) -> int:
        orders = self.rig.venue_orders(self.venue, limit)
        for o in orders:
            self._handle(o.copy(), choose)
        return len(orders)

    def _handle(self, o, choose) -> None:
        assert o["venue_id"] == self.venue, "forwarded to the wrong venue"
        kind, tag = int(o["kind"]), int(o["cause_recv_ts_ns"])
        key = (int(o["strategy_id"]), int(o["client_order_id"]))
        self.taken_tags[tag] += 1
        if kind == INTENT_NEW:
            assert key not in self.open, "router forwarded a NEW whose coid is open"
            q = int(o["qty_lots"])
            how = choose(NEW_OUTCOMES)
            if how == "reject":
                self._say(EXEC_REJECT, o, code=REJECT_POST_ONLY)
                return
            self._say(EXEC_ACK, o, leaves=q)
            if how == "fill" or (how == "partial" and q == 1):
                self._say(EXEC_FILL, o, qty=q, leaves=0)
            elif how == "expire":
                self._say(EXEC_EXPIRED, o, leaves=0)
            else:
                if how == "partial":
                    self._say(EXEC_PARTIAL, o, qty=1, leaves=q - 1)
                    q -= 1
                self.open[key] = [o, q]
        elif kind == INTENT_CANCEL or kind == INTENT_REPLACE:
            refuse = choose((False, False, False, True))
            if key not in self.open or refuse:
                code = REJECT_CANCEL_RATE if key in self.open else REJECT_UNKNOWN_ORDER
                self._say(EXEC_CANCEL_REJECT, o, code=code)
            elif kind == INTENT_CANCEL:
                self._say(EXEC_CANCEL_ACK, self.open.pop(key)[0], qty=0, leaves=0, tag=tag)
            else:
                q = int(o["qty_lots"])
                self.open[key][1] = q
                self._say(EXEC_REPLACE_ACK, self.open[key][0], qty=q, leaves=q, tag=tag)
        elif kind == INTENT_CANCEL_ALL:
            for k in [k for k in self.open if k[0] == key[0]]:
                self._say(EXEC_CANCEL_ACK, self.open.pop(k)[0], qty=0, leaves=0, tag=tag)
        else:
            raise AssertionError(f"router forwarded an order of kind {kind}")

    def fill_one(self, pick: int) -> None:
        if not self.open:
            return
        key = sorted(self.open)[pick % len(self.open)]
        o, leaves = self.open[key]
        if leaves > 1:
            self._say(EXEC_PARTIAL, o, qty=1, leaves=leaves - 1, tag=0)
            self.open[key][1] = leaves - 1
        else:
            self._say(EXEC_FILL, o, qty=leaves, leaves=0, tag=0)
            del self.open[key]


class Stream:
    """The random stream and its bookkeeping: what was approved, in order, with which tag."""

    def __init__(self, rig: RouterRig, data):
        self.rig, self.data = rig, data
        self.approved: list[np.void] = []
        self.next_tag = 1
        self.next_counter = 1000
        ids = iter(range(1, 10 ** 9))
        self.venues = [VenueModel(rig, v, ids) for v in range(1, N_VENUES + 1)]

    def draw(self, strategy):
        return self.data.draw(strategy)

    def choose(self, options):
        strat = _SAMPLED.get(options)
        if strat is None:
            strat = _SAMPLED[options] = st.sampled_from(options)
        return self.draw(strat)

    def integer(self, lo: int, hi: int) -> int:
        strat = _INTEGERS.get((lo, hi))
        if strat is None:
            strat = _INTEGERS[(lo, hi)] = st.integers(lo, hi)
        return self.draw(strat)

    def approve(self, kind, sid, coid, **kw) -> None:
        o = self.rig.order(kind, sid, coid, tag=self.next_tag, **kw)
        self.next_tag += 1
        while self.rig.appr_w.publish(o) != 1:     # the gate waits on a full approved ring
            self.step()
        self.approved.append(o[0].copy())

    def coid(self, sid: int) -> int:
        if self.integer(0, 4) == 0:
            self.next_counter += 1
            return coid_of(sid, self.next_counter)
        return coid_of(sid, self.choose(COUNTERS))

    def act(self, what: str) -> None:
        rig, sid = self.rig, self.integer(1, N_STRATS)
        venue = self.integer(1, N_VENUES)
        if what == "new":
            flags = OFLAG_RISK_SYSTEM if self.integer(0, 7) == 0 else 0
            self.approve(INTENT_NEW, sid, self.coid(sid), venue=venue, flags=flags,
                         side=self.choose((SIDE_BUY, SIDE_SELL)), inst=venue,
                         qty=self.integer(1, 3))
        elif what in ("cancel", "replace"):
            kind = INTENT_CANCEL if what == "cancel" else INTENT_REPLACE
            self.approve(kind, sid, self.coid(sid), venue=venue, inst=venue,
                         qty=self.integer(1, 3))
        elif what == "cancel_all":
            self.approve(INTENT_CANCEL_ALL, sid, 0, venue=venue, inst=0)
        elif what == "malformed":
            how = self.choose(MALFORMED)
            c = self.coid(sid)
            if how == "venue0":
                self.approve(INTENT_NEW, sid, c, venue=0)
            elif how == "venue_high":
                self.approve(INTENT_NEW, sid, c, venue=N_VENUES + 1)
            elif how == "cancel_bad_venue":
                self.approve(self.choose(CANCEL_LIKE), sid, c, venue=N_VENUES + 3)
            elif how == "sid_high":
                self.approve(INTENT_NEW, N_STRATS + 1, coid_of(N_STRATS + 1, 1), venue=venue)
            elif how == "sid0":
                self.approve(self.choose((INTENT_NEW, INTENT_CANCEL_ALL)), 0, 5, venue=venue)
            elif how == "kind":
                self.approve(self.choose((0, 5, 200)), sid, c, venue=venue)
            else:
                self.approve(INTENT_NEW, sid, 0, venue=venue)
        elif what == "step":
            self.step()
        elif what == "venue":
            v = self.venues[venue - 1]
            v.take(self.integer(0, 4), self.choose)
            v.flush()
        elif what == "venue_fill":
            v = self.venues[venue - 1]
            v.fill_one(self.integer(0, 50))
            v.flush()
        elif what == "tick":
            rig.advance(self.choose((1_000_000, 100_000_000, 1_000_000_000)))
        elif what == "halt":
            rig.ctl[rk.C_HALTED] ^= 1

    # -- the router, and what must hold after each of its steps ----------------------------
    def step(self) -> None:
        self.rig.step()
        self.check_open_counts()

    def check_open_counts(self) -> None:
        rig = self.rig
        taken = self.approved[:rig.approved_taken]
        gate = rig.gate
        total = 0
        for sid in range(0, N_STRATS + 3):
            news = sum(1 for o in taken if o["kind"] not in CANCEL_LIKE and o["strategy_id"] == sid)
            finals = int(np.isin(gate["kind"][gate["strategy_id"] == sid], FINAL).sum())
            assert finals <= news, f"strategy {sid}: more final reports than orders"
            total += news - finals
            if 1 <= sid <= N_STRATS:
                assert rig.open_n[sid] == news - finals, f"strategy {sid} open count"
                assert len(rig.open_coids(sid)) == news - finals
        assert rig.ctl[rk.C_OPEN] == total
        ids = gate["trade_id"][gate["trade_id"] > 0]
        assert len(ids) == len(set(ids.tolist())), "a venue report was emitted twice"

    # -- the end: the venue answers everything, then every open order is cancelled ----------
    def settle(self, cancel_everything: bool) -> None:
        rig = self.rig
        for _ in range(10_000):
            moved = 0
            if cancel_everything and rig.ctl[rk.C_OPEN] > 0:
                moved += rig.cancel_all(0)
            for v in self.venues:
                moved += v.take(None, lambda opts: opts[0])   # rest / no refusal
                moved += v.flush()
            before = rig.approved_taken
            moved += len(rig.step()) + rig.approved_taken - before
            self.check_open_counts()
            if moved == 0 and not any(v.outbox for v in self.venues) and \
                    rig.approved_taken == len(self.approved) and \
                    all(rig.venue_pending(v) == 0 for v in range(1, N_VENUES + 1)):
                return
        raise AssertionError("the router and the venue never settled")


def _run_stream(rig: RouterRig, data) -> int:
    s = Stream(rig, data)
    for _ in range(s.integer(1, 80)):
        s.act(s.choose(ACTIONS))
    rig.ctl[rk.C_HALTED] = 0
    s.settle(cancel_everything=False)
    # the venue has answered everything: the router's table is exactly the venue's books
    for sid in range(1, N_STRATS + 1):
        at_venue = {c for v in s.venues for (s_, c) in v.open if s_ == sid}
        assert rig.open_coids(sid) == at_venue
    s.settle(cancel_everything=True)
    assert all(not v.open for v in s.venues)
    assert rig.ctl[rk.C_OPEN] == 0 and not rig.open_n.any() and not rig.tab.any()

    gate = rig.gate
    tags = gate["cause_recv_ts_ns"]
    router_made = gate["trade_id"] == 0
    # every approved order was forwarded exactly once or answered by the router exactly once
    taken = Counter()
    for v in s.venues:
        taken.update(v.taken_tags)
    answered = Counter(tags[router_made].tolist())
    for o in s.approved:
        t = int(o["cause_recv_ts_ns"])
        assert taken[t] + answered[t] == 1, f"approved order {o} forwarded {taken[t]}x, " \
                                            f"answered {answered[t]}x"
    # every NEW ends in exactly one final state (keyed by strategy and coid: ids repeat)
    news = Counter((int(o["strategy_id"]), int(o["client_order_id"])) for o in s.approved
                   if o["kind"] not in CANCEL_LIKE)
    fin = gate[np.isin(gate["kind"], FINAL)]
    finals = Counter(zip(fin["strategy_id"].tolist(), fin["client_order_id"].tolist()))
    assert finals == news
    # every CANCEL / REPLACE got exactly one answer
    for o in s.approved:
        if o["kind"] in (INTENT_CANCEL, INTENT_REPLACE):
            t = int(o["cause_recv_ts_ns"])
            got = gate[(tags == t) & np.isin(gate["kind"], ANSWERS_TO_CANCEL)]
            assert len(got) == 1, f"cancel/replace {o} answered {len(got)} times"
        elif o["kind"] == INTENT_CANCEL_ALL and taken[int(o["cause_recv_ts_ns"])] == 0:
            t = int(o["cause_recv_ts_ns"])
            assert list(gate["kind"][tags == t]) == [EXEC_CANCEL_REJECT]
    # nothing emitted twice, nothing lost: each venue report once, in router sequence order,
    # the journal a copy of the gate's ring, each strategy its own reports
    published = sorted(r for v in s.venues for r in v.published)
    assert sorted(gate["trade_id"][~router_made].tolist()) == published
    seq = gate["reserved"]
    assert (np.diff(seq) > 0).all()
    assert np.array_equal(rig.journal["reserved"], seq)
    assert np.array_equal(rig.journal["trade_id"], gate["trade_id"])
    for sid in range(1, N_STRATS + 1):
        assert np.array_equal(rig.strategy(sid)["reserved"], seq[gate["strategy_id"] == sid])
    assert rig.ctl[rk.C_DROP_GATE] == 0 and rig.ctl[rk.C_DROP_STRAT] == 0
    assert rig.ctl[rk.C_UNKNOWN] == 0
    # positions are what the venue filled
    filled = Counter()
    for v in s.venues:
        filled.update(v.filled)
    for (sid, inst), q in filled.items():
        assert rig.pos[sid, inst] == q
    assert rig.pos.sum() == sum(filled.values())
    return len(s.approved)


def test_every_approved_order_ends_in_exactly_one_final_state(shm_prefix, run_slow):
    stats = Counter()

    @settings(max_examples=_examples(run_slow, 200, 2000), deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=st.data(),
           venue_in_cap=st.sampled_from((1, 2, 4, 64)),
           venue_out_cap=st.sampled_from((1, 2, 4, 64)),
           tab_rows=st.sampled_from((16, rk.TAB_ROWS)),
           rate=st.sampled_from((2.0, 1e6)))
    def stream(data, venue_in_cap, venue_out_cap, tab_rows, rate):
        with RouterRig(shm_prefix, n_venues=N_VENUES, n_strats=N_STRATS,
                       venue_in_cap=venue_in_cap, venue_out_cap=venue_out_cap,
                       tab_rows=tab_rows, rate=rate) as rig:
            stats["orders"] += _run_stream(rig, data)
            stats["cases"] += 1
            stats["venue_full"] += int(rig.ctl[rk.C_VENUE_FULL])
            stats["malformed"] += int(rig.ctl[rk.C_MALFORMED])
            stats["tab_rejects"] += int(rig.ctl[rk.C_TAB_REJ])

    stream()
    # the streams reached the paths they are about (not a vacuous pass)
    assert stats["venue_full"] > 0 and stats["malformed"] > 0 and stats["tab_rejects"] > 0


def test_order_table_matches_a_dict_under_random_inserts_and_deletes(run_slow):
    @settings(max_examples=_examples(run_slow, 200, 5000), deadline=None, derandomize=True)
    @given(rows=st.sampled_from((2, 8, 16, 64)),
           ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=200))
    def table(rows, ops):
        tab = np.zeros((2, rows, rk.T_WORDS), dtype=np.int64)
        cap = rows // 2
        model: dict[int, int] = {}
        for insert, k in ops:
            coid = coid_of(1, 1 + (k % 8) * 16384 + (k // 8))   # keys agree modulo 16384
            if insert and coid not in model and len(model) < cap:
                row = rk.tab_insert(tab, 1, coid)
                assert row >= 0
                tab[1, row, rk.T_PX] = k
                model[coid] = k
            elif not insert and coid in model:
                rk.tab_delete(tab, 1, rk.tab_find(tab, 1, coid))
                del model[coid]
            assert (rk.tab_find(tab, 1, coid) >= 0) == (coid in model)
            assert (tab[1, :, rk.T_COID] != 0).sum() == len(model)
        for c in range(41):
            key = coid_of(1, 1 + (c % 8) * 16384 + (c // 8))
            row = rk.tab_find(tab, 1, key)
            assert (row >= 0) == (key in model)
            if row >= 0:
                assert tab[1, row, rk.T_PX] == model[key]
        assert not tab[0].any()

    table()
