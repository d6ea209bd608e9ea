"""docs/strategies.md's worked example is real: the code block builds, registers as a kind
through the same checks as any strategy, and trades as its text says."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np

from shm.records import INTENT_NEW, ORD_IOC, SIDE_BUY, SIDE_SELL
from strategies.host import HostedStrategy
from tests.unit.scenario_records import fill, instrument, snapshot

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "strategies.md"


def _example_module():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(code) == 1, "the guide should carry exactly one complete example"
    mod = types.ModuleType("strategies_doc_example")
    sys.modules[mod.__name__] = mod
    exec(compile(code[0], str(DOC), "exec"), mod.__dict__)
    return mod


def test_the_guide_s_example_buys_on_a_bid_heavy_book_and_goes_flat_when_the_lean_is_gone():
    mod = _example_module()
    cls = mod.ImbalanceTaker
    assert cls.kind == "imbalance_taker" and cls.n_instruments == 1
    btc = instrument(1)
    h = HostedStrategy(cls({"levels": 2, "enter": 0.5, "clip_lots": 3}, [btc], 7))
    out = h.step(snapshot(1, [(99_990, 40), (99_980, 40)], [(100_010, 5), (100_020, 5)], 1),
                 now_ns=1).copy()
    assert len(out) == 1 and out[0]["kind"] == INTENT_NEW and out[0]["side"] == SIDE_BUY
    assert out[0]["order_type"] == ORD_IOC and out[0]["px_ticks"] == 100_010
    assert out[0]["qty_lots"] == 3 and h.st.trades == 1
    assert h.st.last_imbalance == np.float64(70) / 90
    h.step(ex=fill(out[0]), now_ns=2)
    assert h.positions[0]["pos"] == 3
    out = h.step(snapshot(1, [(99_990, 5)], [(100_010, 5)], 3), now_ns=3).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["qty_lots"] == 3
    assert out[0]["px_ticks"] == 99_990


def test_the_guide_s_example_refuses_bad_parameters_by_name():
    import pytest

    from common.schema import ConfigError

    mod = _example_module()
    with pytest.raises(ConfigError, match="enter"):
        mod.ImbalanceTaker({"enter": 1.5}, [instrument(1)], 1)
