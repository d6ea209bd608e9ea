"""A strategy that runs as several processes (``[[strategies]] shards = N``): the documented
split of its instruments, one identity per shard (strategy id, client order ids, rings, status
name), and risk limits that hold per shard and per strategy summed over its shards."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from common.runtime import group_ids, process_name, shard_instruments, strategy_ids
from common.schema import ConfigError
from market import risk
from pipeline.config import parse_config
from shm.records import (EXEC_FILL, INTENT_NEW, REJECT_MAX_OPEN_ORDERS, REJECT_MAX_POSITION,
                         SIDE_BUY, SIDE_SELL)
from common.runtime import shard_position_limits
from stages.topology import build_topology
from tests.unit.test_config_check import DEFAULT, problems_of
from tests.unit.test_risk import BASE, UNIT, accept, check, exec_for, feed, order
from tests.unit.scenario_records import instrument


# -- the split and the numbering -----------------------------------------------------------------
def test_instruments_are_cut_into_equal_contiguous_blocks_in_config_order():
    keys = ["a", "b", "c", "d", "e", "f"]
    assert shard_instruments(keys, 1) == [keys]
    assert shard_instruments(keys, 3) == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert shard_instruments(keys, 6) == [[k] for k in keys]
    with pytest.raises(ValueError, match="multiple of 4"):
        shard_instruments(keys, 4)


@dataclasses.dataclass
class S:
    name: str
    shards: int = 1
    enabled: bool = True


def test_every_shard_is_a_process_with_its_own_strategy_id_grouped_under_shard_0():
    cfg = [S("mm", 3), S("off", 2, enabled=False), S("pairs"), S("arb", 2)]
    ids = strategy_ids(cfg)
    assert ids == {("mm", 0): 1, ("mm", 1): 2, ("mm", 2): 3, ("pairs", 0): 4, ("arb", 0): 5,
                   ("arb", 1): 6}
    assert group_ids(cfg) == {1: 1, 2: 1, 3: 1, 4: 4, 5: 5, 6: 5}
    assert process_name("mm", 1, 3) == "mm.1" and process_name("pairs", 0, 1) == "pairs"


# -- config and topology ----------------------------------------------------------------------------
SHARDED_MM = '''name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''


def _sharded(instruments: str, shards: int) -> str:
    new = f'''name = "mm_btc"
kind = "market_making"
shards = {shards}
instruments = {instruments}'''
    assert SHARDED_MM in DEFAULT
    return DEFAULT.replace(SHARDED_MM, new, 1)


def test_a_count_that_does_not_divide_is_refused_naming_shards():
    probs = problems_of(_sharded('["BTC-USD@simA", "ETH-USD@simA", "BTC-USD@simB"]', 2))
    assert any("shards = 2" in p and "3 instrument(s)" in p for p in probs), probs


def test_each_shard_is_built_with_its_own_block_by_check_config():
    # a market maker trades one instrument: two shards of one each build, one shard of two not
    cfg = parse_config(_sharded('["BTC-USD@simA", "ETH-USD@simA"]', 2), "c.toml")
    assert cfg.strategies[0].shards == 2
    probs = problems_of(_sharded('["BTC-USD@simA", "ETH-USD@simA"]', 1))
    assert any("exactly 1 instrument" in p for p in probs), probs


def test_the_topology_runs_one_process_per_shard_with_its_own_rings_and_block():
    cfg = parse_config(_sharded('["BTC-USD@simA", "ETH-USD@simA"]', 2), "c.toml")
    topo = build_topology(cfg)
    strats = topo.strategies()
    mm = [s for s in strats if s.strategy.name == "mm_btc"]
    assert [s.name for s in mm] == ["strategy-mm_btc.0", "strategy-mm_btc.1"]
    assert [s.instruments for s in mm] == [("BTC-USD@simA",), ("ETH-USD@simA",)]
    assert [s.strategy_id for s in mm] == [1, 2] and {s.group_id for s in mm} == {1}
    assert [s.strategy_id for s in strats] == list(range(1, len(strats) + 1))
    rings = {r.name for r in topo.rings}
    for p in ("mm_btc.0", "mm_btc.1"):
        assert {f"intent-{p}", f"reject-{p}", f"exec-{p}"} <= rings
    assert "strategy-mm_btc.0" in topo.md_readers["simA"]
    assert "strategy-mm_btc.1" in topo.md_readers["simA"]
    # each shard's own limit: the strategy's split evenly (rounded up) unless configured
    lim = shard_position_limits(cfg.risk.max_position_lots, cfg.strategies)
    half = -(-cfg.risk.max_position_lots // 2)
    assert (lim[1], lim[2]) == (half, half) and lim[3] == cfg.risk.max_position_lots


# -- the risk gate: per shard and per strategy ------------------------------------------------
def _limits(groups, shard_limits, **over):
    cfg = dataclasses.replace(BASE, **over)
    insts = [instrument(UNIT, 1, "UNIT", tick="1", lot="1", group="U")]
    limits = risk.build_limits(cfg, insts, max_strategies=8, otr_min_orders=10, groups=groups,
                               shard_limits=shard_limits)
    return limits, risk.make_risk_state(limits)


def _fill(limits, rs, side, qty, strat):
    rec = order(side, 10_000, qty, UNIT, strat)
    assert accept(limits, rs, rec) == 0
    feed(limits, rs, exec_for(rec, EXEC_FILL, qty, 10_000))


def test_a_shard_is_held_to_its_share_and_the_shards_together_to_the_strategy_limit():
    # strategy A = ids 1, 2 (shard limit 60 each, 100 together); strategy B = id 3 alone
    limits, rs = _limits({1: 1, 2: 1, 3: 3}, {1: 60, 2: 60}, max_position_lots=100,
                         max_order_qty_lots=1_000)
    _fill(limits, rs, SIDE_BUY, 60, 1)
    assert check(limits, rs, order(qty=1, strat=1)) == REJECT_MAX_POSITION   # its own share
    assert check(limits, rs, order(qty=41, strat=2)) == REJECT_MAX_POSITION  # 60 + 41 > 100
    assert check(limits, rs, order(qty=40, strat=2)) == 0                    # 100 together
    assert check(limits, rs, order(qty=100, strat=3)) == 0                   # another strategy
    # open orders count on the way: a resting buy of shard 2 uses the strategy's room
    assert accept(limits, rs, order(qty=30, strat=2)) == 0
    assert check(limits, rs, order(qty=11, strat=2)) == REJECT_MAX_POSITION
    # selling is judged on the same sums: shard 1 may go from +60 to -60, not beyond
    assert check(limits, rs, order(SIDE_SELL, qty=120, px=10_001, strat=1)) == 0
    assert check(limits, rs, order(SIDE_SELL, qty=121, px=10_001, strat=1)) == \
        REJECT_MAX_POSITION


def test_open_orders_are_limited_per_strategy_summed_over_its_shards():
    limits, rs = _limits({1: 1, 2: 1}, {}, max_open_orders=3)
    for strat in (1, 1, 2):
        assert accept(limits, rs, order(qty=1, strat=strat)) == 0
    assert check(limits, rs, order(qty=1, strat=2)) == REJECT_MAX_OPEN_ORDERS
    assert check(limits, rs, order(qty=1, strat=3)) == 0


def test_unsharded_limits_are_exactly_as_before():
    limits, rs = _limits(None, None, max_position_lots=100)
    assert limits[0][risk.LF_GROUPED] == 0.0
    _fill(limits, rs, SIDE_BUY, 100, 1)
    assert check(limits, rs, order(qty=1, strat=1)) == REJECT_MAX_POSITION
    assert check(limits, rs, order(qty=100, strat=2)) == 0


def test_property_no_accepted_sequence_breaks_a_shard_or_strategy_limit():
    """2,000 random orders and fills from two sharded strategies: after every accepted order
    the worst case (position plus open orders on a side) of every shard is within its limit,
    and of every strategy within the strategy limit; and a rejected order would have broken
    one of them (the gate is not stricter than the rule)."""
    rng = random.Random(7)
    groups = {1: 1, 2: 1, 3: 1, 4: 4, 5: 4}
    shard_lim = {1: 40, 2: 50, 3: 30, 4: 70, 5: 70}
    limits, rs = _limits(groups, shard_lim, max_position_lots=100, max_order_qty_lots=100,
                         max_open_orders=1_000)
    pos = {s: 0 for s in groups}
    open_ = {s: [] for s in groups}   # resting (side, qty, rec)

    def worst(sids, side, extra=0):
        p = sum(pos[s] for s in sids)
        o = sum(q for s in sids for sd, q, _ in open_[s] if sd == side)
        return p + o + extra if side == SIDE_BUY else -(p - o - extra)

    for _ in range(2_000):
        s = rng.choice(list(groups))
        if open_[s] and rng.random() < 0.4:   # fill a resting order
            side, q, rec = open_[s].pop(rng.randrange(len(open_[s])))
            feed(limits, rs, exec_for(rec, EXEC_FILL, q, 10_000))
            pos[s] += q if side == SIDE_BUY else -q
            continue
        side = rng.choice((SIDE_BUY, SIDE_SELL))
        q = rng.randint(1, 40)
        rec = order(side, 10_000 if side == SIDE_BUY else 10_001, q, UNIT, s)
        code = accept(limits, rs, rec)
        members = [t for t in groups if groups[t] == groups[s]]
        ok = worst([s], side, q) <= shard_lim[s] and worst(members, side, q) <= 100
        assert (code == 0) == ok, (code, s, side, q, pos, open_)
        if code == 0:
            assert rec[0]["kind"] == INTENT_NEW
            open_[s].append((side, q, rec))
        for t in groups:
            mem = [u for u in groups if groups[u] == groups[t]]
            for sd in (SIDE_BUY, SIDE_SELL):
                assert worst([t], sd) <= shard_lim[t] and worst(mem, sd) <= 100


def test_a_bad_shard_limit_in_config_is_named():
    text = _sharded('["BTC-USD@simA", "ETH-USD@simA"]', 2).replace(
        'shards = 2', 'shards = 2\nshard_max_position_lots = -5', 1)
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.toml")
    assert any("shard_max_position_lots" in p for p in exc.value.problems)
