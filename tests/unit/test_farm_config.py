"""Farm keys in config: ``[[signals]]`` agents, a strategy's ``signals`` and ``budget``, each
validated like the rest of the config (every problem at once, each naming its key)."""
from __future__ import annotations

import pytest

from common.schema import ConfigError
from pipeline.config import DEFAULT_CONFIG, parse_config

MM = '''[[strategies]]
name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''

FARM = '''[[signals]]
name = "rv"
kind = "realized_vol"
instruments = ["BTC-USD@simA", "ETH-USD@simA"]

[[signals]]
name = "corr"
kind = "correlation"
instruments = ["BTC-USD@simA", "ETH-USD@simA"]
publish_ms = 1000.0

[[strategies]]
name = "mm_btc"
kind = "market_making"
shards = 2
instruments = ["BTC-USD@simA", "ETH-USD@simA"]
signals = ["rv", "corr"]
budget = { notional = 100000.0, loss = 5000.0, rebalance_s = 5.0 }'''


def farm_text(**subs) -> str:
    text = DEFAULT_CONFIG.read_text()
    assert MM in text
    farm = FARM
    for old, new in subs.items():
        old = old.replace("__", " ")
        assert old in farm, old
        farm = farm.replace(old, new)
    return text.replace(MM, farm, 1)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.toml")
    return exc.value.problems


def test_a_farm_loads_with_its_agents_subscriptions_and_budget():
    cfg = parse_config(farm_text(), "c.toml")
    rv, corr = cfg.signals
    assert (rv.name, rv.kind, rv.instruments) == ("rv", "realized_vol",
                                                  ("BTC-USD@simA", "ETH-USD@simA"))
    assert rv.max_age_ns == 300_000_000            # stale_ms 0: three publish periods
    assert corr.max_age_ns == 3_000_000_000
    mm = cfg.strategies[0]
    assert mm.signals == ("rv", "corr") and mm.shards == 2
    assert (mm.budget.notional, mm.budget.loss, mm.budget.rebalance_s) == (100000.0, 5000.0, 5.0)
    assert mm.budget.param == "max_inventory_lots"
    # the other strategies are no farm: no budget, no signals
    assert all(s.budget is None and s.signals == () for s in cfg.strategies[1:])


def test_every_farm_problem_is_reported_at_once_naming_its_key():
    text = farm_text(**{'signals = ["rv", "corr"]': 'signals = ["rv", "cor"]',
                        "rebalance_s = 5.0": 'rebalance_s = 0.0, param = "gamma"',
                        'kind = "correlation"': 'kind = "corelation"'})
    text = text.replace('instruments = ["BTC-USD@simA", "ETH-USD@simA"]\n\n[[signals]]',
                        'instruments = ["BTC-USD@simA", "XRP@simA"]\n\n[[signals]]', 1)
    out = problems(text)
    joined = "\n".join(out)
    assert "signals[0].instruments: 'XRP@simA' is not a configured instrument" in joined
    assert "signals[1].kind = 'corelation': must be one of" in joined
    assert "did you mean 'correlation'?" in joined
    assert "strategies[0].signals: 'cor' is not a [[signals]] agent" in joined
    assert "strategies[0].budget.rebalance_s = 0.0: must be >= 0.1" in joined
    assert len(out) >= 4


def test_a_budget_parameter_must_be_an_integer_parameter_of_the_strategy():
    out = problems(farm_text(**{"rebalance_s = 5.0": 'param = "gamma"'}))
    assert any("strategies[0].budget.param = 'gamma': market_making.gamma is not an integer "
               "parameter" in p for p in out), out
    out = problems(farm_text(**{"rebalance_s = 5.0": 'param = "max_inventry_lots"'}))
    assert any("budget.param = 'max_inventry_lots': is not a parameter of market_making" in p
               and "did you mean 'max_inventory_lots'?" in p for p in out), out


def test_two_agents_of_one_kind_and_oversized_floors_are_refused():
    text = farm_text(**{'kind = "correlation"': 'kind = "realized_vol"',
                        "rebalance_s = 5.0": "min_share = 0.5"})
    out = problems(text)
    assert any("'rv' and 'corr' are both realized_vol: subscribe to one agent per kind" in p
               for p in out), out
    out = problems(farm_text(**{"rebalance_s = 5.0": "min_share = 0.6"}))
    assert any("budget.min_share = 0.6: must leave room" in p for p in out), out


def test_a_correlation_agent_needs_two_instruments_and_names_must_be_unique():
    text = farm_text(**{'publish_ms = 1000.0': 'publish_ms = 1000.0\nwindow = 1'})
    text = text.replace('kind = "correlation"\ninstruments = ["BTC-USD@simA", "ETH-USD@simA"]',
                        'kind = "correlation"\ninstruments = ["BTC-USD@simA"]')
    text = text.replace('name = "rv"', 'name = "corr"', 1)
    out = problems(text)
    joined = "\n".join(out)
    assert "signals[1].instruments = ['BTC-USD@simA']: a correlation agent needs at least 2" \
        in joined
    assert "signals[1].window = 1: must be >= 2" in joined
    assert "signals: name 'corr' appears more than once" in joined


def test_a_strategy_cannot_subscribe_to_a_disabled_agent():
    text = farm_text(**{'publish_ms = 1000.0': 'publish_ms = 1000.0\nenabled = false'})
    out = problems(text)
    assert any("strategies[0].signals: 'corr' has enabled = false" in p for p in out), out


def test_an_agent_that_covers_none_of_the_strategys_instruments_is_refused():
    text = farm_text()
    text = text.replace('name = "rv"\nkind = "realized_vol"\ninstruments = ["BTC-USD@simA", '
                        '"ETH-USD@simA"]', 'name = "rv"\nkind = "realized_vol"\ninstruments = '
                        '["BTC-USD@simB"]')
    out = problems(text)
    assert any("strategies[0].signals: 'rv' computes for none of this strategy's instruments "
               "(BTC-USD@simB)" in p for p in out), out
