"""The farm coordinator's cold side without processes (pipeline/farm_coordinator.py): a shard's
notional share as lots within the gate's per-shard position limit, the strategy's smallest
accepted value only inside that limit, a refused set changing nothing, performance from the
sampled PnL, and the parameter file every shard reads."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DEFAULT_CONFIG, parse_config
from pipeline.farm_coordinator import FarmCoordinator
from pipeline.live_params import LiveParams
from stages.live_params import read_param_set, shard_params
from stages.riskview import PNL_REALIZED
from stages.topology import build_topology

MM = '''[[strategies]]
name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''


def farm_cfg(budget: str, max_position_lots: int = 500000):
    text = DEFAULT_CONFIG.read_text().replace(MM, f'''[[strategies]]
name = "mm_farm"
kind = "market_making"
shards = 2
instruments = ["BTC-USD@simA", "ETH-USD@simA"]
budget = {{ {budget} }}''', 1)
    text = text.replace("max_position_lots = 500000", f"max_position_lots = {max_position_lots}")
    return parse_config(text, "c.toml")


class FakeCtl:
    """What the coordinator reads of the controller: config, topology, live parameters, the
    gate's PnL words; the journal and log as lists. No stage runs: nothing acknowledges."""

    def __init__(self, cfg, run_dir):
        self.cfg = cfg
        self.topology = build_topology(cfg)
        self.live_params = LiveParams(cfg, self.topology, run_dir)
        self.riskview = type("RV", (), {})()
        self.riskview.gate_pnl = np.zeros((8, 4))
        self.journal, self.logged, self.events = [], [], []
        self.supervisor = type("Sup", (), {"procs": {}})()

    def log(self, msg):
        self.logged.append(msg)

    def event(self, what, why="", who="controller", **fields):
        self.journal.append({"what": what, "why": why, **fields})

    def await_answers(self, seqs, wait_s):
        return [], []


def test_a_share_becomes_lots_per_instrument_within_the_gate_limit(tmp_path):
    ctl = FakeCtl(farm_cfg("notional = 60000.0, loss = 1000.0"), tmp_path)
    co = FarmCoordinator(ctl)
    f, = co.farms
    # BTC lot 60000 x 0.0001 = 6 quote, ETH lot 3000 x 0.001 = 3 quote; gate: 500000 / 2 lots
    assert f.lot_value == [6.0, 3.0] and f.gate_lots == [250000, 250000]
    assert co.values(f, (30000.0, 30000.0)) == {0: {"max_inventory_lots": 5000},
                                                1: {"max_inventory_lots": 10000}}
    # a share above the gate's limit is cut to it
    assert co.values(f, (6.0 * 300000, 0.0))[0]["max_inventory_lots"] == 250000
    # below one quote's size: raised to the smallest value market_making accepts (order_qty)
    assert co.values(f, (6.0, 0.0)) == {0: {"max_inventory_lots": 10},
                                        1: {"max_inventory_lots": 10}}


def test_the_smallest_accepted_value_is_never_raised_above_the_gate_limit(tmp_path):
    ctl = FakeCtl(farm_cfg("notional = 60000.0, loss = 1000.0", max_position_lots=8), tmp_path)
    co = FarmCoordinator(ctl)
    f, = co.farms
    assert f.gate_lots == [4, 4]
    assert co.values(f, (1e9, 1e9)) == {0: {"max_inventory_lots": 4},
                                        1: {"max_inventory_lots": 4}}
    # 4 < order_qty_lots 10: the strategy refuses that set, so nothing is written
    assert co.reallocate(f, "test") is None
    assert read_param_set(tmp_path, "mm_farm") is None
    assert ctl.journal[-1]["what"] == "farm_reallocation_refused"
    assert "max_inventory_lots = 4: must be >= order_qty_lots (10)" in ctl.journal[-1]["why"]


def test_a_reallocation_writes_each_shard_its_value_and_journals_why(tmp_path):
    ctl = FakeCtl(farm_cfg("notional = 60000.0, loss = 1000.0, min_share = 0.1, tilt = 1.0"),
                  tmp_path)
    co = FarmCoordinator(ctl)
    f, = co.farms
    sid0, sid1 = (s.strategy_id for s in f.specs)
    pnl = ctl.riskview.gate_pnl
    for k, (p0, p1) in enumerate([(0, 0), (10, 1), (22, -2), (30, 1), (41, 0)]):
        pnl[sid0, PNL_REALIZED], pnl[sid1, PNL_REALIZED] = p0, p1
        co.tick(float(k) * 1.0 + 1000.0)   # one sample a second, no reallocation due yet
    perf = co.perf(f)
    assert perf[0].pnl == 41 and perf[1].pnl == 0 and perf[0].risk > 0
    rec = co.reallocate(f, "test")
    assert rec["reason"] == "test" and rec["version"] == 1
    s0, s1 = rec["shards"]["mm_farm.0"], rec["shards"]["mm_farm.1"]
    assert s0["notional"] > s1["notional"]           # the better shard gets more
    assert s0["notional"] + s1["notional"] == pytest.approx(60000.0)
    assert s1["notional"] == pytest.approx(6000.0)   # the floor: min_share of the budget
    saved = read_param_set(tmp_path, "mm_farm")
    assert shard_params(saved, 0)["max_inventory_lots"] == s0["max_inventory_lots"]
    assert shard_params(saved, 1)["max_inventory_lots"] == s1["max_inventory_lots"] == 2000
    assert saved["params"]["max_inventory_lots"] == 100   # the strategy's own set unchanged
    ev = ctl.journal[-1]
    assert ev["what"] == "farm_reallocation" and ev["why"] == "test"
    assert ev["not_acked"] == ["strategy-mm_farm.0", "strategy-mm_farm.1"]   # none running


def test_run_py_set_is_refused_when_a_shard_could_not_run_it_with_its_budget_value(tmp_path):
    from pipeline.live_params import SetRefused

    ctl = FakeCtl(farm_cfg("notional = 60000.0, loss = 1000.0"), tmp_path)
    co = FarmCoordinator(ctl)
    f, = co.farms
    ctl.live_params.commit_shards("mm_farm", {0: {"max_inventory_lots": 50},
                                              1: {"max_inventory_lots": 500}}, "coordinator", "t")
    with pytest.raises(SetRefused, match="shard 0 \\(max_inventory_lots = 50\\)") as exc:
        ctl.live_params.validate("mm_farm", {"order_qty_lots": 100})
    assert "must be >= order_qty_lots (100)" in str(exc.value)
    _strategy, new = ctl.live_params.validate("mm_farm", {"order_qty_lots": 40})
    assert new.order_qty_lots == 40
