"""The farm coordinator's allocation (pipeline/farm_budget.py): worked cases, then a property
test over many random farms: no allocation ever exceeds a gate limit, nothing is negative, an
out shard gets nothing, and the budget is conserved (given out in full unless the gate's limits
bind)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.farm_budget import MAX_SCORE, ShardPerf, allocate, score

INF = math.inf


def test_the_better_risk_adjusted_shard_gets_more_and_the_budget_is_given_out_in_full():
    a = allocate(100_000.0, 1_000.0, [ShardPerf(pnl=50.0, risk=10.0, loss=0.0, cap=INF),
                                      ShardPerf(pnl=50.0, risk=50.0, loss=0.0, cap=INF)],
                 min_share=0.1, tilt=1.0)
    # scores 5 and 1: weights 5/6 and 1/6 of what is left after the two floors of 10 %
    assert a.notional == pytest.approx((10_000 + 80_000 * 5 / 6, 10_000 + 80_000 / 6))
    assert sum(a.notional) == pytest.approx(100_000.0)
    assert sum(a.loss) == pytest.approx(1_000.0)
    assert a.loss[0] / a.loss[1] == pytest.approx(a.notional[0] / a.notional[1])
    assert "score 5" in a.reasons[0] and "score 1" in a.reasons[1]


def test_tilt_zero_is_equal_shares_and_losers_score_zero_not_less():
    a = allocate(90.0, 9.0, [ShardPerf(10, 1, 0, INF), ShardPerf(-30, 1, 0, INF),
                             ShardPerf(0, 0, 0, INF)], tilt=0.0)
    assert a.notional == pytest.approx((30.0, 30.0, 30.0))
    assert score(ShardPerf(-30, 1, 0, INF)) == 0.0
    assert score(ShardPerf(5, 0, 0, INF)) == MAX_SCORE


def test_a_cap_redistributes_what_it_cuts_and_a_loss_breach_takes_a_shard_out():
    a = allocate(100.0, 30.0, [ShardPerf(100, 1, 0, cap=20.0), ShardPerf(1, 1, 0, INF),
                               ShardPerf(1, 1, 15.0, INF)], tilt=1.0)
    assert a.notional[0] == 20.0                     # at the gate's limit
    assert a.notional[1] == pytest.approx(80.0)      # got what the cap cut off
    assert a.notional[2] == 0.0 and a.loss[2] == 0.0   # lost 15 >= 30 / 3: out
    assert a.reasons[2].startswith("out: loss 15.00 >= its share of the loss budget 10.00")
    assert "at the gate's limit 20.00" in a.reasons[0]


def test_every_cap_binding_gives_out_only_what_the_gate_allows():
    a = allocate(1_000.0, 10.0, [ShardPerf(1, 1, 0, 100.0), ShardPerf(2, 1, 0, 50.0)])
    assert a.notional == (100.0, 50.0)


def test_bad_budgets_are_refused_by_name():
    with pytest.raises(ValueError, match="budgets must be finite"):
        allocate(-1.0, 10.0, [ShardPerf(0, 0, 0, 1)])
    with pytest.raises(ValueError, match="min_share 2 and tilt"):
        allocate(1.0, 1.0, [ShardPerf(0, 0, 0, 1)], min_share=2)


money = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
shard = st.builds(
    ShardPerf,
    pnl=st.floats(min_value=-1e7, max_value=1e7, allow_nan=False),
    risk=st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
    loss=st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
    cap=st.one_of(st.just(INF), st.just(0.0), money),
    loss_cap=st.one_of(st.just(INF), money))


@settings(max_examples=2000, deadline=None)
@given(notional=money, loss=st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
       shards=st.lists(shard, min_size=1, max_size=12),
       min_share=st.floats(min_value=0.0, max_value=1.0), tilt=st.floats(0.0, 1.0))
def test_no_reallocation_exceeds_a_gate_limit_and_the_budget_is_conserved(notional, loss, shards,
                                                                          min_share, tilt):
    a = allocate(notional, loss, shards, min_share, tilt)
    assert len(a.notional) == len(a.loss) == len(a.reasons) == len(shards)
    share = loss / len(shards)
    inn = [i for i, p in enumerate(shards) if p.loss < share and p.cap > 0]
    for i, p in enumerate(shards):
        assert 0.0 <= a.notional[i] <= p.cap            # never above the gate's limit
        assert 0.0 <= a.loss[i] <= p.loss_cap
        if i not in inn:
            assert a.notional[i] == 0.0 and a.loss[i] == 0.0
    tol = 1e-9 * max(1.0, notional)
    want = min(notional, sum(shards[i].cap for i in inn))
    assert sum(a.notional) <= notional + tol            # never more than the budget
    assert sum(a.notional) == pytest.approx(want, rel=1e-9, abs=tol)   # conserved
    given_to = [i for i in inn if a.notional[i] > 0]
    lwant = min(loss, sum(shards[i].loss_cap for i in given_to))
    assert sum(a.loss) == pytest.approx(lwant, rel=1e-9, abs=1e-9 * max(1.0, loss))
