"""The controller's monitor: KPIs from the journal's files (read incrementally) and the risk
view, by market/report.py's definitions, with numbers worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from tests.unit.monitoring_rig import Rig


@pytest.fixture
def rig(shm_prefix, tmp_path):
    r = Rig(shm_prefix, tmp_path, n_strategies=2)
    yield r
    r.close()


def _execs(rows):
    from shm.records import EXEC_DTYPE

    a = np.zeros(len(rows), dtype=EXEC_DTYPE)
    for i, (seq, kind, sid, side, px, qty, order_px, coid, rej, flags) in enumerate(rows):
        a[i] = 0
        for k, v in dict(ring_seq=seq, kind=kind, strategy_id=sid, side=side, px_ticks=px,
                         qty_lots=qty, order_px_ticks=order_px, client_order_id=coid,
                         reject_code=rej, flags=flags, instrument_id=1).items():
            a[i][k] = v
    return a


def _orders(rows):
    from shm.records import INTENT_NEW, ORDER_DTYPE

    a = np.zeros(len(rows), dtype=ORDER_DTYPE)
    for i, (seq, sid, coid, rej) in enumerate(rows):
        a[i]["ring_seq"], a[i]["kind"], a[i]["strategy_id"] = seq, INTENT_NEW, sid
        a[i]["client_order_id"], a[i]["reject_code"] = coid, rej
    return a


def test_trade_kpis_rejects_and_fill_rate_come_from_the_journal_read_incrementally(rig):
    from market.recordfile import RecordFileWriter
    from pipeline.monitor import Monitor
    from shm.records import (EFLAG_FROM_RISK, EXEC_DTYPE, EXEC_FILL, EXEC_REJECT, ORDER_DTYPE,
                             REJECT_MAX_POSITION, REJECT_POST_ONLY, SIDE_BUY, SIDE_SELL)

    c = rig.ctl
    sid = c.topology.strategies()[0].strategy_id
    name = c.topology.strategies()[0].process
    jdir = c.run_dir / "journal"
    ow = RecordFileWriter(jdir / "orders-0.rec", ORDER_DTYPE)
    ew = RecordFileWriter(jdir / "exec-0.rec", EXEC_DTYPE)
    mon = Monitor(c)
    try:
        # 4 approved orders (ids 1-4), 2 denials for max_position
        ow.append(_orders([(1, sid, 1, 0), (2, sid, 2, 0), (3, sid, 3, 0), (4, sid, 4, 0),
                           (5, sid, 5, REJECT_MAX_POSITION), (6, sid, 6, REJECT_MAX_POSITION)]))
        # buy 10 @ 100 (limit 101), sell 10 @ 103 (limit 103): +3 ticks x 10 lots closed
        ew.append(_execs([(1, EXEC_FILL, sid, SIDE_BUY, 100, 10, 101, 1, 0, 0),
                          (2, EXEC_FILL, sid, SIDE_SELL, 103, 10, 103, 2, 0, 0)]))
        ow.flush()
        ew.flush()
        k = mon.sample()["kpis"][name]
        tick_value = float(c.cfg.instruments[0].tick_size * c.cfg.instruments[0].lot_size)
        assert k["closed_trades"] == 1 and k["win_rate"] == 1.0
        assert k["profit_factor"] is None          # inf: no loss yet
        assert k["fill_rate"] == 2 / 4 and k["fills"] == 2
        assert k["slippage_ticks"] == pytest.approx((-1 + 0) / 2)   # bought 1 tick better
        # then a losing round trip, a venue reject, a risk denial's exec report (not a venue
        # reject), and one record of the first batch again (a restarted journal's repeat)
        ew.append(_execs([(2, EXEC_FILL, sid, SIDE_SELL, 103, 10, 103, 2, 0, 0),
                          (3, EXEC_FILL, sid, SIDE_BUY, 100, 5, 100, 3, 0, 0),
                          (4, EXEC_FILL, sid, SIDE_SELL, 99, 5, 99, 4, 0, 0),
                          (5, EXEC_REJECT, sid, SIDE_BUY, 0, 1, 0, 7, REJECT_POST_ONLY, 0),
                          (6, EXEC_REJECT, sid, SIDE_BUY, 0, 1, 0, 5, REJECT_MAX_POSITION,
                           EFLAG_FROM_RISK)]))
        ew.flush()
        snap = mon.sample()
        k = snap["kpis"][name]
        assert k["closed_trades"] == 2 and k["win_rate"] == 0.5
        assert k["profit_factor"] == pytest.approx((3 * 10 * tick_value) / (1 * 5 * tick_value))
        assert k["fill_rate"] == 4 / 4 and k["fills"] == 4
        assert snap["rejects_by_reason"] == {"risk:max_position": 2, "venue:post_only": 1}
        assert snap["kpis"][c.topology.strategies()[1].process]["closed_trades"] == 0
    finally:
        ow.close()
        ew.close()


def test_pnl_drawdown_var_and_concentration_come_from_the_risk_view(rig):
    from pipeline.monitor import Monitor
    from stages.riskview import PNL_FEES, PNL_REALIZED

    c = rig.ctl
    spec = c.topology.strategies()[1]
    sid, name = spec.strategy_id, spec.process
    mon = Monitor(c)
    pnl = c.riskview.gate_pnl[sid]
    path = [0.0, 50.0, 120.0, 80.0, 30.0, 60.0] + [60.0 + (i % 2) for i in range(20)]
    for v in path:
        pnl[PNL_REALIZED] = v + 2.0
        pnl[PNL_FEES] = 2.0
        k = mon.sample()["kpis"][name]
    assert k["pnl_total"] == pytest.approx(path[-1])
    assert k["pnl_daily"] == pytest.approx(path[-1])        # the day began with this run
    assert k["drawdown"] == pytest.approx(120.0 - path[-1])
    assert k["max_drawdown"] == pytest.approx(90.0)
    d = np.diff(path)
    assert k["var95"] == pytest.approx(-np.percentile(d, 5))
    assert len(k["pnl_curve"]) == len(path) and k["pnl_curve"][-1][1] == path[-1]
    c.riskview.gate_pos[sid, 1:3] = [30, -10]
    k = mon.sample()["kpis"][name]
    assert k["position_concentration"] == pytest.approx(0.75)
    assert k["strategy"] == spec.strategy.name and k["venues"] == ["simA"]
