"""The risk gate's kernel and stage on in-process rings: modes and their transitions driven by
fills and market data, the loss latch, a reject flood against a nearly full journal, and the
write-ahead order that lets a restarted gate complete a batch its predecessor died in."""
from __future__ import annotations

import numpy as np
import pytest

from market.risk import G_OPEN_TOTAL, R_G, R_POS
from shm.records import (CONTROL_DTYPE, CTRL_KILL, CTRL_RESUME, EFLAG_FROM_RISK, EXEC_DTYPE,
                         EXEC_FILL, EXEC_REJECT, INTENT_CANCEL, INTENT_NEW, MARKET_DTYPE,
                         MSG_STATUS, OFLAG_RISK_SYSTEM, REJECT_NO_REFERENCE, STATUS_BOOK_INVALID,
                         ORD_LIMIT, ORD_MARKET, ORDER_DTYPE, REJECT_DAILY_LOSS, REJECT_INVALID,
                         REJECT_KILL_SWITCH, REJECT_SELF_TRADE, RESUME_OPERATOR, RISK_ACTIVE, RISK_HALTED,
                         SIDE_BUY, SIDE_SELL)
from stages import gate_kernels as gk
from stages.journal import read_events, read_journal_orders
from stages.riskview import G_STATE
from tests.inproc import InProcessInstance, drain
from tests.unit.scenario_records import snapshot

INST = 1   # UNIT-USD@simA: tick 1, lot 1 -> one tick of one lot is worth 1.0


def intents(sid: int, n: int, start: int = 1, side=SIDE_BUY, px=10_000, qty=1, kind=INTENT_NEW,
            otype=ORD_LIMIT, flags=0) -> np.ndarray:
    o = np.zeros(n, dtype=ORDER_DTYPE)
    o["kind"], o["side"], o["order_type"], o["flags"] = kind, side, otype, flags
    o["instrument_id"], o["strategy_id"], o["venue_id"] = INST, sid, 1
    o["client_order_id"] = (sid << 48) | np.arange(start, start + n)
    o["px_ticks"], o["qty_lots"] = px, qty
    return o


def control(kind, arg0=0):
    rec = np.zeros(1, dtype=CONTROL_DTYPE)
    rec["kind"], rec["arg0"] = kind, arg0
    return rec[0]


def fill_of(o, seq: int, px=None) -> np.ndarray:
    e = np.zeros(1, dtype=EXEC_DTYPE)
    for f in ("side", "instrument_id", "client_order_id", "strategy_id", "venue_id"):
        e[f] = o[f]
    e["kind"], e["qty_lots"] = EXEC_FILL, o["qty_lots"]
    e["px_ticks"] = o["px_ticks"] if px is None else px
    e["reserved"] = seq
    return e


def market(inst, bid, ask):
    return snapshot(INST, [(bid, 1_000)], [(ask, 1_000)])


@pytest.fixture
def inst(tmp_path, shm_prefix):
    with InProcessInstance(tmp_path, shm_prefix, strategies=3,
                           risk="max_order_qty_lots = 100\ndaily_loss_limit = 1000.0\n"
                                "max_drawdown = 1e9\nmax_open_orders = 1000\n"
                                "max_orders_per_s = 100000\nmax_cancels_per_s = 100000") as i:
        yield i


class Pipeline:
    """The test plays every stage around the gate: strategies, venue feed, router, journal."""

    def __init__(self, inst):
        self.inst = inst
        self.md = inst.writer("md-simA")
        self.intent_w = {s: inst.writer(f"intent-s{s}") for s in (1, 2, 3)}
        self.reject_r = {s: inst.reader(f"reject-s{s}") for s in (1, 2, 3)}
        self.approved = inst.reader("approved")
        self.jorder = inst.reader("jorder")
        self.exec_gate = inst.writer("exec-gate")
        self.seq = 0
        self.journal = []

    def send(self, sid, recs):
        assert self.intent_w[sid].publish(recs) == len(recs)

    def fill(self, o, px=None):
        self.seq += 1
        assert self.exec_gate.publish(fill_of(o, self.seq, px)) == 1

    def outputs(self):
        j = drain(self.jorder, ORDER_DTYPE)
        self.journal.append(j)
        return (drain(self.approved, ORDER_DTYPE),
                {s: drain(r, EXEC_DTYPE) for s, r in self.reject_r.items()}, j)


def test_modes_follow_fills_and_market_data_and_a_loss_halt_latches(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    buy = intents(1, 1, qty=100)
    p.send(1, buy)
    gate.poll()
    ap, _rej, _j = p.outputs()
    assert len(ap) == 1
    p.fill(ap[0])
    gate.poll()
    assert gate.rstate[R_POS][1, INST] == 100
    p.md.publish(market(INST, 9_979, 9_981))          # mid 9980: -2000 on 100 lots
    gate.poll()
    gate.publish_view()
    assert gate.rv.gate[G_STATE] == RISK_HALTED
    p.md.publish(market(INST, 9_999, 10_001))          # the mark recovers: flat PnL
    p.send(1, intents(1, 1, start=2))
    gate.poll()
    gate.publish_view()
    ap, rej, _j = p.outputs()
    assert len(ap) == 0 and rej[1]["reject_code"].tolist() == [REJECT_DAILY_LOSS]
    assert gate.rv.gate[G_STATE] == RISK_HALTED
    gate.note_halts()
    latched = [e for e in read_events(inst.jdir) if e["what"] == "halt_latched"]
    assert len(latched) == 1 and latched[0]["why"] == "daily_loss"
    gate.on_control(CTRL_RESUME, control(CTRL_RESUME, 0))   # a reconcile resume: not enough
    p.send(1, intents(1, 1, start=3))
    gate.poll()
    assert p.outputs()[1][1]["reject_code"].tolist() == [REJECT_DAILY_LOSS]
    gate.on_control(CTRL_RESUME, control(CTRL_RESUME, RESUME_OPERATOR))
    p.send(1, intents(1, 1, start=4, side=SIDE_SELL))
    gate.poll()
    gate.publish_view()
    assert len(p.outputs()[0]) == 1 and gate.rv.gate[G_STATE] == RISK_ACTIVE
    assert [e["what"] for e in read_events(inst.jdir)][-1] == "resume"


def test_a_trading_day_roll_lifts_the_latch_and_journals_both_events(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    p.send(1, intents(1, 1, qty=100))
    gate.poll()
    p.fill(p.outputs()[0][0])
    p.md.publish(market(INST, 9_979, 9_981))
    gate.poll()
    gate.note_halts()
    gate.day -= 1                                      # the clock passed the day's start
    gate.check_day_roll()
    gate.publish_view()
    assert gate.rv.gate[G_STATE] == RISK_ACTIVE
    whats = [e["what"] for e in read_events(inst.jdir)]
    assert whats[-3:] == ["halt_latched", "day_roll", "halt_lifted"]


def test_reject_flood_from_three_strategies_never_outruns_the_journal(inst):
    # the journal ring is nearly full before the flood starts: 4 free slots
    jw = inst.writer("jorder")
    cap = jw.ring.capacity
    assert jw.publish(np.zeros(cap - 4, dtype=ORDER_DTYPE)) == cap - 4
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    gate.on_control(CTRL_KILL, control(CTRL_KILL))    # every new order is denied
    sent = {s: intents(s, 1_500) for s in (1, 2, 3)}
    for s, recs in sent.items():
        p.send(s, recs)
    journal, rejects = [], {1: [], 2: [], 3: []}
    total = cap - 4 + 4_500
    for _ in range(2_000):
        gate.poll()
        # the journal drains slower than the strategies send
        j = np.zeros(64, dtype=ORDER_DTYPE)
        journal.append(j[:p.jorder.poll(j)].copy())
        for s, r in p.reject_r.items():
            rejects[s].append(drain(r, EXEC_DTYPE))
        if sum(len(x) for x in journal) == total:
            break
    journal = np.concatenate(journal)
    journal = journal[journal["strategy_id"] != 0]     # the filler
    assert len(journal) == 4_500
    assert gate.gctl[gk.K_SHORT] == 0
    for s in (1, 2, 3):
        mine = journal[journal["strategy_id"] == s]
        assert mine["client_order_id"].tolist() == sent[s]["client_order_id"].tolist()
        rej = np.concatenate(rejects[s])
        assert rej["client_order_id"].tolist() == sent[s]["client_order_id"].tolist()
        assert set(rej["reject_code"].tolist()) == {REJECT_KILL_SWITCH}
        assert (rej["flags"] & EFLAG_FROM_RISK).all()


def test_a_reject_flood_larger_than_a_batch_from_each_strategy_is_journaled_whole(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    gate.on_control(CTRL_KILL, control(CTRL_KILL))
    sent = {s: intents(s, 1_000) for s in (1, 2, 3)}   # 3 x 1000 > the gate's 512 buffers
    for s, recs in sent.items():
        p.send(s, recs)
    for _ in range(20):
        gate.poll()
    _ap, rej, j = p.outputs()
    assert len(j) == 3_000 and gate.gctl[gk.K_SHORT] == 0
    for s in (1, 2, 3):
        assert j[j["strategy_id"] == s]["client_order_id"].tolist() == \
            sent[s]["client_order_id"].tolist()
        assert len(rej[s]) == 1_000


def test_an_intent_with_another_strategys_id_or_the_gates_flag_is_invalid(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    forged = intents(2, 1)                            # sent on s1's ring with s2's id
    system = intents(1, 1, start=5, otype=ORD_MARKET, flags=OFLAG_RISK_SYSTEM)
    p.send(1, np.concatenate([forged, system]))
    gate.poll()
    ap, rej, j = p.outputs()
    assert len(ap) == 0
    assert rej[1]["reject_code"].tolist() == [REJECT_INVALID, REJECT_INVALID]
    assert len(rej[2]) == 0
    assert j["strategy_id"].tolist() == [1, 1]
    assert not (j["flags"] & OFLAG_RISK_SYSTEM).any()


def test_kill_with_flatten_sends_the_gates_own_orders_through_its_journal(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    p.send(1, intents(1, 1, qty=30))
    p.send(2, intents(2, 1, qty=20, side=SIDE_SELL, px=10_001))
    gate.poll()
    ap, _r, _j = p.outputs()
    assert len(ap) == 2
    for o in ap:
        p.fill(o)
    gate.poll()
    gate.on_control(CTRL_KILL, control(CTRL_KILL, 1))
    gate.maybe_flatten()
    ap, _r, j = p.outputs()
    # s1's sell goes first; s2's buy would meet it (two of our orders trading with each
    # other is a wash trade): self-trade prevention holds it to the next round
    assert j["reject_code"].tolist() == [0, REJECT_SELF_TRADE]
    assert (j["flags"] & OFLAG_RISK_SYSTEM).all() and (j["order_type"] == ORD_MARKET).all()
    assert [(int(o["strategy_id"]), int(o["side"]), int(o["qty_lots"])) for o in ap] == \
        [(1, SIDE_SELL, 30)]
    gate.next_flatten_ns = 0
    gate.maybe_flatten()                               # s1's order is open: no round yet
    assert len(p.outputs()[2]) == 0
    p.fill(ap[0], px=10_000)
    gate.poll()
    gate.next_flatten_ns = 0
    gate.maybe_flatten()
    ap, _r, j = p.outputs()
    assert [(int(o["strategy_id"]), int(o["side"]), int(o["qty_lots"])) for o in ap] == \
        [(2, SIDE_BUY, 20)]
    assert j["client_order_id"].tolist() == ap["client_order_id"].tolist()
    p.fill(ap[0], px=10_000)
    gate.poll()
    gate.next_flatten_ns = 0
    gate.maybe_flatten()
    assert not gate.rstate[R_POS].any() and gate.rstate[R_G][G_OPEN_TOTAL] == 0
    assert gate.flatten_tries == 0
    assert "flattened" in [e["what"] for e in read_events(inst.jdir)]


def _flatten_round(gate, p):
    gate.next_flatten_ns = 0
    gate.maybe_flatten()
    return p.outputs()


def test_kill_with_flatten_splits_a_position_into_orders_the_gates_checks_pass(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    p.send(1, intents(1, 2, qty=60))                   # 120 lots long; max_order_qty_lots 100
    gate.poll()
    for o in p.outputs()[0]:
        p.fill(o)
    gate.poll()
    assert gate.rstate[R_POS][1, INST] == 120
    gate.on_control(CTRL_KILL, control(CTRL_KILL, 1))
    ap, _r, j = _flatten_round(gate, p)
    assert j["reject_code"].tolist() == [0, 0]
    assert [(int(o["side"]), int(o["qty_lots"])) for o in ap] == [(SIDE_SELL, 100),
                                                                   (SIDE_SELL, 20)]
    for o in ap:
        p.fill(o, px=10_000)
    gate.poll()
    _flatten_round(gate, p)
    assert not gate.rstate[R_POS].any() and gate.flatten_tries == 0
    assert [e["what"] for e in read_events(inst.jdir)][-1] == "flattened"


def test_a_flatten_the_gate_keeps_denying_ends_with_an_account_of_what_is_left(inst):
    gate = inst.stage("risk_gate")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    p.send(1, intents(1, 1, qty=30))
    gate.poll()
    p.fill(p.outputs()[0][0])
    gate.poll()
    invalid = np.zeros(1, dtype=MARKET_DTYPE)          # the feed says the book is not to be
    invalid["kind"], invalid["instrument_id"] = MSG_STATUS, INST   # trusted: no reference
    invalid["aux0"] = STATUS_BOOK_INVALID
    p.md.publish(invalid)
    gate.poll()
    gate.on_control(CTRL_KILL, control(CTRL_KILL, 1))
    rounds = 0
    while gate.flatten_tries > 0:
        _ap, _r, j = _flatten_round(gate, p)
        assert (j["reject_code"] == REJECT_NO_REFERENCE).all()
        rounds += len(j) > 0
    assert rounds == 10
    events = [e for e in read_events(inst.jdir) if e["what"].startswith("flatten")]
    assert events[0]["denied"] == {f"1:{INST}": "no_reference"}
    last = events[-1]
    assert last["what"] == "flatten_incomplete"
    assert last["positions"] == {f"1:{INST}": 30}
    assert last["last_denials"] == {f"1:{INST}": "no_reference"}
    assert gate.rstate[R_POS][1, INST] == 30           # nothing was sent: nothing moved


@pytest.mark.parametrize("skew", [-25, 0, 25])
def test_replay_rebuilds_what_the_gate_held_whichever_way_the_two_clocks_are_off(inst, skew):
    """A restarted gate's replay merges two journals stamped by two processes' clocks. In the
    live order below a report stamped ``skew`` off lands on the wrong side of a decision: a
    fill before its NEW (early clock), a REPLACE_ACK before its REPLACE, the next REPLACE
    before the ack of the previous one (late clock). The rebuilt table is the live one."""
    from market.risk import make_risk_state
    from market.risk_state import (R_N_OPEN, R_OO_COUNT, R_OPEN_BUY, R_OPEN_SELL, on_accept,
                                   on_exec, replay)
    from shm.records import EXEC_ACK, EXEC_PARTIAL, EXEC_REPLACE_ACK, INTENT_REPLACE

    gate = inst.stage("risk_gate")
    a = intents(1, 1, qty=10)[0]
    b = intents(1, 1, start=2, qty=4, side=SIDE_SELL, px=10_010)[0]

    def rep(o, qty):
        r = o.copy()
        r["kind"], r["qty_lots"] = INTENT_REPLACE, qty
        return r

    def report(o, kind, leaves=0, qty=0):
        e = fill_of(o, 0)[0]
        e["kind"], e["leaves_lots"], e["qty_lots"] = kind, leaves, qty
        return e

    # the live gate's order: (decision or report, record), 10 ns apart
    live = [("d", a), ("e", report(a, EXEC_ACK, 10)), ("d", rep(a, 15)), ("d", b),
            ("e", report(a, EXEC_REPLACE_ACK, 15)), ("e", fill_of(b, 0)[0]), ("d", rep(a, 20)),
            ("e", report(a, EXEC_PARTIAL, 12, qty=3))]
    want = make_risk_state(gate.limits)
    ap, ex = [], []
    for k, (what, r) in enumerate(live):
        r = r.copy()
        if what == "d":
            r["send_ts_ns"] = 1_000 + 10 * k
            on_accept(gate.limits, want, r, r["send_ts_ns"])
            ap.append(r)
        else:
            r["send_ts_ns"], r["reserved"] = 1_000 + 10 * k + skew, len(ex) + 1
            on_exec(gate.limits, want, r, r["send_ts_ns"])
            ex.append(r)
    got = make_risk_state(gate.limits)
    replay(gate.limits, got, np.array(ap, dtype=ORDER_DTYPE), np.array(ex, dtype=EXEC_DTYPE))
    for part in (R_POS, R_OPEN_BUY, R_OPEN_SELL, R_N_OPEN, R_OO_COUNT):
        assert np.array_equal(got[part], want[part]), part
    # a pending replace to 20 after a partial fill to 12 counts max(12, 20) = 20
    assert want[R_OPEN_BUY][1, INST] == 20 and want[R_POS][1, INST] == 3 - 4


# -- the write-ahead order: a gate killed in the middle of a batch --------------------------
CRASH_POINTS = ("after_journal", "after_denials", "after_approvals")


def _decide_and_crash(inst, gate, point):
    """One strategy batch of the gate's step, by hand, stopped at ``point`` (kill -9)."""
    from shm.ringops import spsc_commit, spsc_peek, spsc_publish

    r = gate.in_r[0]
    n = spsc_peek(r.st, r.slots, gate.ibuf_i, gate.ibuf.shape[0])
    px, _q, meta = gate.book.arrays
    n_ap, n_rej = gk.gate_decide(gate.limits, gate.rstate, gate.gctl, px, meta, gate.ibuf, n,
                                 1, gate.clock.now_ns(), gate.abuf, gate.rbuf, gate.jbuf, True,
                                 gate.hist.array)
    assert spsc_publish(gate.j_w.st, gate.j_w.slots, gate.jbuf_i, n) == n
    if point != "after_journal":
        spsc_publish(gate.rej_w[0].st, gate.rej_w[0].slots, gate.rbuf_i, n_rej)
    if point == "after_approvals":
        spsc_publish(gate.ap_w.st, gate.ap_w.slots, gate.abuf_i, n_ap)
    assert point in CRASH_POINTS and spsc_commit is not None   # never reached: no commit
    inst.crash(gate)
    return n, n_ap, n_rej


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_gate_killed_mid_batch_is_completed_exactly_once_by_its_successor(inst, point):
    gate = inst.stage("risk_gate")
    journal = inst.stage("journal")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    gate.poll()
    batch = np.concatenate([intents(1, 6, qty=10), intents(1, 4, start=7, qty=1_000)])
    p.send(1, batch)                                   # 6 pass, 4 are too large
    n, n_ap, n_rej = _decide_and_crash(inst, gate, point)
    assert (n, n_ap, n_rej) == (10, 6, 4)
    journal.drain()                                    # the controller's flush
    again = inst.stage("risk_gate", restarts=1, reconcile=True)
    assert again.redo["skipped_intents"] == 10
    for _ in range(3):
        again.poll()
    journal.drain()
    ap = drain(p.approved, ORDER_DTYPE)
    rej = drain(p.reject_r[1], EXEC_DTYPE)
    assert ap["client_order_id"].tolist() == batch["client_order_id"][:6].tolist()
    assert rej["client_order_id"].tolist() == batch["client_order_id"][6:].tolist()
    assert (rej["kind"] == EXEC_REJECT).all()
    decided = read_journal_orders(inst.jdir)
    assert decided["client_order_id"].tolist() == batch["client_order_id"].tolist()
    # the successor knows the 6 approved orders are open, and trades on from there
    assert again.rstate[R_G][G_OPEN_TOTAL] == 6
    p.send(1, intents(1, 1, start=1, kind=INTENT_CANCEL))   # cancels pass the kill switch
    again.poll()
    assert drain(p.approved, ORDER_DTYPE)["kind"].tolist() == [INTENT_CANCEL]


def test_a_restarted_gate_with_nothing_in_doubt_republishes_nothing(inst):
    gate = inst.stage("risk_gate")
    journal = inst.stage("journal")
    p = Pipeline(inst)
    p.md.publish(market(INST, 9_999, 10_001))
    p.send(1, intents(1, 5, qty=10))
    gate.poll()
    ap = drain(p.approved, ORDER_DTYPE)
    assert len(ap) == 5
    inst.crash(gate)
    journal.drain()
    again = inst.stage("risk_gate", restarts=1, reconcile=True)
    assert not any(again.redo.values())
    again.poll()
    assert len(drain(p.approved, ORDER_DTYPE)) == 0
    assert again.rstate[R_G][G_OPEN_TOTAL] == 5
