"""Every config under examples/ runs: a short backtest of each, with every strategy it names
trading in it (check-config of the same files: tests/unit/test_config_check.py). A config that
stops loading, or a strategy that crashes or is skipped in it, fails here before a user finds it.

The backtests share each strategy kind's compiled step with every other test (one compilation
per kind, strategies/backtest_codegen.py); each config compiles only its own small loop."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def test_there_are_examples_and_the_catalogue_holds_every_market_data_kind():
    assert {p.name for p in EXAMPLES} >= {"catalogue.toml", "farm.toml"}
    kinds = {s["kind"] for s in tomllib.loads((ROOT / "examples" / "catalogue.toml")
                                               .read_text())["strategies"]}
    assert kinds == {"statistical_arbitrage", "momentum_burst", "scalping", "liquidity_provision",
                     "mean_reversion", "vwap", "order_book_imbalance", "volatility_trading",
                     "microstructure_alpha"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_backtests_with_each_of_its_strategies(path, tmp_path):
    cfg = tomllib.loads(path.read_text())
    names = [s["name"] for s in cfg.get("strategies", [])]
    assert names, f"{path.name} names no strategy"
    r = subprocess.run([sys.executable, "run.py", "backtest", "--config", str(path),
                        "--duration", "20", "--json", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert not out["skipped"], out["skipped"]
    ran = list(out["strategies"])
    for name in names:   # a farm's shards report as name.0, name.1, ...
        assert any(k == name or k.startswith(name + ".") for k in ran), (name, ran)
    assert "pnl" in out["total"]
