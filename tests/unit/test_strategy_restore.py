"""A restarted strategy starts from the journal's view: strategies.base.restore_state on
synthetic journal arrays (partials, fills, replaces, cancels, denials, other strategies' records,
unknown instruments) and on journal files that are still being written."""
from __future__ import annotations

import numpy as np
import pytest

from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_EXPIRED, EXEC_FILL,
    EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE,
    ORD_LIMIT, ORDER_DTYPE, REJECT_MAX_POSITION, SIDE_BUY, SIDE_SELL,
)
from strategies.base import (
    OST_LIVE, OST_PENDING_CANCEL, OST_PENDING_NEW, OST_PENDING_REPLACE, apply_execs,
    restore_state,
)
from strategies.registry import make_strategy
from tests.unit.scenario_records import instrument

SID = 6
BTC = instrument(1, 1)
ETH = instrument(3, 1, "ETH-USD", lot="0.001", group="ETH")   # instrument 2 is not ours


def fresh_state():
    return make_strategy("pairs_trading", {}, [BTC, ETH], SID).make_state()


def coid(n, sid=SID):
    return (sid << 48) | n


class Journal:
    """Builds the two journal arrays in the order the gate and the router would write them."""

    def __init__(self):
        self.orders, self.execs, self.seq = [], [], 100

    def intent(self, kind, n, inst=1, side=SIDE_BUY, px=100, qty=10, sid=SID, reject=0):
        o = np.zeros(1, ORDER_DTYPE)[0]
        o["kind"], o["client_order_id"], o["instrument_id"], o["side"] = kind, coid(n, sid), \
            inst, side
        o["px_ticks"], o["qty_lots"], o["strategy_id"], o["reject_code"] = px, qty, sid, reject
        o["order_type"], o["send_ts_ns"] = ORD_LIMIT, 1_000 + len(self.orders)
        self.orders.append(o)

    def report(self, kind, n, inst=1, side=SIDE_BUY, px=100, qty=10, leaves=0, sid=SID,
               fee_e9=0):
        self.seq += 1
        e = np.zeros(1, EXEC_DTYPE)[0]
        e["kind"], e["client_order_id"], e["instrument_id"], e["side"] = kind, coid(n, sid), \
            inst, side
        e["px_ticks"], e["qty_lots"], e["leaves_lots"], e["strategy_id"] = px, qty, leaves, sid
        e["fee_e9"], e["reserved"] = fee_e9, self.seq
        self.execs.append(e)
        return e

    def arrays(self):
        orders = np.array(self.orders, dtype=ORDER_DTYPE)
        execs = np.array(self.execs, dtype=EXEC_DTYPE)
        for a in (orders, execs):   # as the journal's rings stamped them
            a["ring_seq"] = np.arange(1, len(a) + 1)
        return orders, execs


def open_orders(state):
    t = state.ctx.orders
    return {int(t[s]["coid"]) & 0xFFFF: t[s].copy() for s in range(t.shape[0]) if t[s]["coid"]}


def test_positions_come_back_from_partials_and_fills_of_this_strategy_only():
    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)
    j.report(EXEC_ACK, 1, leaves=10)
    j.report(EXEC_PARTIAL, 1, px=100, qty=4, leaves=6, fee_e9=2_000_000_000)
    j.report(EXEC_FILL, 1, px=101, qty=6, leaves=0, fee_e9=3_000_000_000)
    j.intent(INTENT_NEW, 2, inst=3, side=SIDE_SELL, px=3_000, qty=5)
    j.report(EXEC_PARTIAL, 2, inst=3, side=SIDE_SELL, px=3_000, qty=2, leaves=3)
    j.intent(INTENT_NEW, 3, side=SIDE_SELL, px=102, qty=4)   # closes part of the long
    j.report(EXEC_FILL, 3, side=SIDE_SELL, px=110, qty=4)
    j.report(EXEC_FILL, 9, px=90, qty=50, sid=7)    # another strategy's fill: not ours
    j.report(EXEC_FILL, 4, inst=2, px=90, qty=7)    # an instrument we do not trade
    orders, execs = j.arrays()
    state = fresh_state()
    summary = restore_state(state, orders, execs)
    pos = state.ctx.pos
    assert pos[0]["pos"] == 10 - 4 and pos[1]["pos"] == -2
    assert pos[0]["fees"] == pytest.approx(5.0)
    # the same accounting as the live path: apply_execs over the same fills
    live = fresh_state()
    mine = execs[(execs["strategy_id"] == SID)]
    apply_execs(live.ctx, mine, len(mine))
    for w in ("pos", "cost", "realized", "fees"):
        np.testing.assert_array_equal(pos[w], live.ctx.pos[w])
    assert pos[0]["realized"] > 0
    assert state.rt["fills"] == 4
    assert summary == {"last_seq": int(execs["reserved"].max()), "fills": 4, "open_orders": 1,
                       "unknown_instrument": 1, "not_restored": 0}
    (n, row), = open_orders(state).items()
    assert n == 2 and row["state"] == OST_LIVE and row["leaves"] == 3 and row["px"] == 3_000
    assert row["side"] == SIDE_SELL


def test_open_orders_keep_replaced_prices_partials_and_the_request_in_flight():
    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)                         # replaced, then partial
    j.report(EXEC_ACK, 1, leaves=10)
    j.intent(INTENT_REPLACE, 1, px=99, qty=8)
    j.report(EXEC_REPLACE_ACK, 1, px=99, qty=8, leaves=8)
    j.report(EXEC_PARTIAL, 1, px=99, qty=3, leaves=5)
    j.intent(INTENT_NEW, 2, side=SIDE_SELL, px=120)                  # cancel in flight
    j.report(EXEC_ACK, 2, side=SIDE_SELL, px=120, leaves=10)
    j.intent(INTENT_CANCEL, 2, side=SIDE_SELL, px=120)
    j.intent(INTENT_NEW, 3, px=95)                                   # not answered yet
    j.intent(INTENT_NEW, 4, px=96)                                   # replace in flight
    j.report(EXEC_ACK, 4, px=96, leaves=10)
    j.intent(INTENT_REPLACE, 4, px=97, qty=3)
    j.intent(INTENT_NEW, 5, px=94)                                   # cancelled: gone
    j.report(EXEC_ACK, 5, px=94, leaves=10)
    j.intent(INTENT_CANCEL, 5, px=94)
    j.report(EXEC_CANCEL_ACK, 5, px=94)
    j.intent(INTENT_NEW, 6, px=93, reject=REJECT_MAX_POSITION)       # denied by the gate
    j.intent(INTENT_NEW, 7, px=92)                                   # venue reject: gone
    j.report(EXEC_REJECT, 7, px=92)
    j.intent(INTENT_NEW, 8, px=91)                                   # replace refused: LIVE
    j.report(EXEC_ACK, 8, px=91, leaves=10)
    j.intent(INTENT_REPLACE, 8, px=80, qty=10)
    j.report(EXEC_CANCEL_REJECT, 8, px=80)
    j.intent(INTENT_NEW, 10, px=90)                                  # IOC expired: gone
    j.report(EXEC_EXPIRED, 10, px=90)
    j.intent(INTENT_NEW, 11, px=89, sid=7)                           # someone else's
    j.intent(INTENT_NEW, 12, inst=2, px=88)                          # not our instrument
    j.intent(INTENT_NEW, 13, px=87)                                  # filled by partials
    j.report(EXEC_PARTIAL, 13, px=87, qty=10, leaves=0)
    state = fresh_state()
    summary = restore_state(state, *j.arrays())
    got = open_orders(state)
    assert sorted(got) == [1, 2, 3, 4, 8]
    assert (got[1]["state"], got[1]["px"], got[1]["leaves"]) == (OST_LIVE, 99, 5)
    assert got[2]["state"] == OST_PENDING_CANCEL and got[2]["leaves"] == 10
    assert (got[3]["state"], got[3]["px"], got[3]["leaves"]) == (OST_PENDING_NEW, 95, 10)
    assert got[4]["state"] == OST_PENDING_REPLACE and got[4]["px"] == 96
    assert (got[4]["new_px"], got[4]["new_qty"]) == (97, 3)
    assert (got[8]["state"], got[8]["px"]) == (OST_LIVE, 91)
    assert summary["open_orders"] == 5 and summary["unknown_instrument"] == 1
    assert state.ctx.pos[0]["pos"] == 3 + 10
    # new client order ids start after every id of ours in the journal (13), never reusing one
    assert state.rt["next_coid"] == 14


def test_the_restored_table_then_follows_live_reports_as_the_old_one_would_have():
    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)
    j.report(EXEC_ACK, 1, leaves=10)
    j.intent(INTENT_CANCEL, 1, px=100)
    orders, execs = j.arrays()
    state = fresh_state()
    restore_state(state, orders, execs)
    assert open_orders(state)[1]["state"] == OST_PENDING_CANCEL
    late = Journal()
    late.seq = j.seq
    late.report(EXEC_PARTIAL, 1, px=100, qty=2, leaves=8)   # raced the cancel
    late.report(EXEC_CANCEL_ACK, 1, px=100)
    ex = late.arrays()[1]
    apply_execs(state.ctx, ex, len(ex))
    assert open_orders(state) == {} and state.ctx.pos[0]["pos"] == 2


def test_a_table_too_small_for_the_journal_counts_what_it_could_not_restore():
    j = Journal()
    for n in range(1, 11):
        j.intent(INTENT_NEW, n, px=100 - n)
    state = fresh_state()
    summary = restore_state(state, *j.arrays())
    assert summary["open_orders"] == state.ctx.orders.shape[0] == 8
    assert summary["not_restored"] == 2


def test_an_empty_journal_restores_nothing():
    state = fresh_state()
    before = [a.copy() for a in state.arrays()]
    summary = restore_state(state, np.zeros(0, ORDER_DTYPE), np.zeros(0, EXEC_DTYPE))
    assert summary == {"last_seq": 0, "fills": 0, "open_orders": 0, "unknown_instrument": 0,
                       "not_restored": 0}
    after = state.arrays()
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert a.tobytes() == b.tobytes()


def test_restore_reads_journal_files_that_are_still_being_appended(tmp_path):
    from market.recordfile import RecordFileWriter
    from stages.journal import read_journal_exec, read_journal_orders

    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)
    j.report(EXEC_ACK, 1, leaves=10)
    j.report(EXEC_PARTIAL, 1, px=100, qty=4, leaves=6)
    orders, execs = j.arrays()
    jdir = tmp_path / "journal"
    jdir.mkdir()
    # an earlier journal incarnation, flushed and closed
    with RecordFileWriter(jdir / "orders-0.rec", ORDER_DTYPE) as w:
        w.append(orders)
    with RecordFileWriter(jdir / "exec-0.rec", EXEC_DTYPE) as w:
        w.append(execs[:1])
    # the live one: records handed to the kernel, the last one only half written
    w = RecordFileWriter(jdir / "exec-1.rec", EXEC_DTYPE, buffered=False)
    w.append(execs[1:])
    with open(jdir / "exec-1.rec", "ab") as torn:
        torn.write(np.ascontiguousarray(execs[:1]).tobytes()[:40])
    state = fresh_state()
    summary = restore_state(state, read_journal_orders(jdir), read_journal_exec(jdir))
    w.close()
    assert summary["last_seq"] == int(execs["reserved"].max()) and summary["fills"] == 1
    assert state.ctx.pos[0]["pos"] == 4
    row = open_orders(state)[1]
    assert row["state"] == OST_LIVE and row["leaves"] == 6


def test_a_restarted_strategy_host_starts_from_its_journal_and_a_first_start_does_not(
        tmp_path, capsys):
    from types import SimpleNamespace

    from market.recordfile import RecordFileWriter
    from stages.strategy_host import StrategyHostStage
    from strategies.host import H_LAST_SEQ, make_hctl

    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)
    j.report(EXEC_ACK, 1, leaves=10)
    j.report(EXEC_PARTIAL, 1, px=100, qty=4, leaves=6)
    j.report(EXEC_FILL, 9, px=90, qty=50, sid=7)
    orders, execs = j.arrays()
    (tmp_path / "journal").mkdir()
    with RecordFileWriter(tmp_path / "journal" / "orders-0.rec", ORDER_DTYPE) as w:
        w.append(orders)
    with RecordFileWriter(tmp_path / "journal" / "exec-0.rec", EXEC_DTYPE) as w:
        w.append(execs)

    def stage():
        s = StrategyHostStage()
        s.strategy = make_strategy("pairs_trading", {}, [BTC, ETH], SID)
        s.state, s.hctl = s.strategy.make_state(), make_hctl()
        return s

    first = stage()
    assert first.restore_from_journal(SimpleNamespace(run_dir=tmp_path, restarts=0,
                                                      name="strategy.p")) is None
    assert first.state.ctx.pos[0]["pos"] == 0 and first.hctl[H_LAST_SEQ] == 0
    again = stage()
    summary = again.restore_from_journal(SimpleNamespace(run_dir=tmp_path, restarts=1,
                                                         name="strategy.p"))
    assert summary["fills"] == 1 and summary["open_orders"] == 1
    assert again.state.ctx.pos[0]["pos"] == 4
    assert again.hctl[H_LAST_SEQ] == execs["reserved"].max()
    assert "restored" in capsys.readouterr().err


def test_the_gates_own_flatten_orders_move_positions_but_not_ids_or_the_order_table():
    from shm.records import OFLAG_RISK_SYSTEM, ORD_MARKET
    from stages.risk_gate import FLATTEN_COID_BIT

    j = Journal()
    j.intent(INTENT_NEW, 1, px=100, qty=10)
    j.report(EXEC_FILL, 1, px=100, qty=10, leaves=0)
    flat = FLATTEN_COID_BIT | 1                       # the gate flattens the 10 lots
    j.intent(INTENT_NEW, flat, side=SIDE_SELL, qty=10)
    j.orders[-1]["flags"], j.orders[-1]["order_type"] = OFLAG_RISK_SYSTEM, ORD_MARKET
    j.report(EXEC_ACK, flat, side=SIDE_SELL, leaves=10)
    state = fresh_state()
    restore_state(state, *j.arrays())
    assert state.ctx.pos[0]["pos"] == 10              # the flatten has not filled yet
    assert open_orders(state) == {}                   # and it is the gate's, not ours
    assert state.rt["next_coid"] == 2                 # ids go on from ours, not the gate's
