"""The order-router stage on in-process rings: when the venue process dies, every order it had
gets exactly one final outcome, and its successor never executes an order already closed."""
from __future__ import annotations

import numpy as np

from shm.records import (CONTROL_DTYPE, CTRL_RECONCILE, EFLAG_RECONCILE, EXEC_ACK,
                         EXEC_CANCEL_ACK, EXEC_DTYPE, EXEC_FILL, EXEC_FINAL_KINDS, INTENT_NEW,
                         ORD_LIMIT, ORDER_DTYPE, SIDE_BUY)
from tests.inproc import InProcessInstance, drain


def _new(coid, sid=1):
    o = np.zeros(1, dtype=ORDER_DTYPE)
    o["kind"], o["side"], o["order_type"] = INTENT_NEW, SIDE_BUY, ORD_LIMIT
    o["instrument_id"], o["strategy_id"], o["venue_id"] = 1, sid, 1
    o["client_order_id"], o["px_ticks"], o["qty_lots"] = (sid << 48) | coid, 10_000, 5
    return o


def _report(o, kind):
    e = np.zeros(1, dtype=EXEC_DTYPE)
    for f in ("side", "instrument_id", "client_order_id", "strategy_id", "venue_id",
              "px_ticks"):
        e[f] = o[f]
    e["kind"] = kind
    e["qty_lots"] = o["qty_lots"] if kind == EXEC_FILL else 0
    e["leaves_lots"] = o["qty_lots"] if kind == EXEC_ACK else 0
    return e


def test_a_dead_venues_orders_each_get_one_final_outcome_and_none_runs_twice(tmp_path,
                                                                            shm_prefix):
    with InProcessInstance(tmp_path, shm_prefix, strategies=1) as inst:
        router = inst.stage("order_router")
        approved = inst.writer("approved")
        vorder = inst.reader("vorder-simA")
        vexec = inst.writer("vexec-simA")
        gate_r = inst.reader("exec-gate")
        a, b, c = _new(1), _new(2), _new(3)
        approved.publish(np.concatenate([a, b]))
        router.poll()
        assert len(drain(vorder, ORDER_DTYPE)) == 2       # the venue read a and b ...
        vexec.publish(np.concatenate([_report(a, EXEC_ACK), _report(b, EXEC_FILL)]))
        approved.publish(c)                                # ... then died: b's fill unread
        router.poll()                                      # c forwarded, never read
        inst.ends.remove(vorder.ring)
        vorder.ring.close()
        ctl = np.zeros(1, dtype=CONTROL_DTYPE)
        ctl["kind"] = CTRL_RECONCILE
        router.on_control(CTRL_RECONCILE, ctl[0])
        reports = drain(gate_r, EXEC_DTYPE)
        finals = reports[np.isin(reports["kind"], EXEC_FINAL_KINDS)]
        by = {int(f["client_order_id"]): f for f in finals}
        assert sorted(by) == sorted(int(o["client_order_id"][0]) for o in (a, b, c))
        assert len(finals) == 3
        assert by[int(b["client_order_id"][0])]["kind"] == EXEC_FILL
        for o in (a, c):
            f = by[int(o["client_order_id"][0])]
            assert f["kind"] == EXEC_CANCEL_ACK and f["flags"] & EFLAG_RECONCILE
        successor = inst.reader("vorder-simA")             # the restarted venue
        assert len(drain(successor, ORDER_DTYPE)) == 0
