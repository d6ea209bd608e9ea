"""Catalogue A (issue 16): order_book_imbalance, mean_reversion, volatility_trading, scalping and
momentum_burst show their model's signature on hand-built books and trades, driven through the
strategy runtime (``HostedStrategy``) as tests/unit/test_strategies.py does. Each kind compiles
once per parameter-record type (about 10-20 s cold), so every test of a kind builds its host
from the same parameter set (only values change, never the fields)."""
from __future__ import annotations

import numpy as np
import pytest

from common.schema import ConfigError
from shm.records import (
    EXEC_FILL, INTENT_CANCEL, INTENT_NEW, ORD_IOC, ORD_POST_ONLY, SIDE_BUY, SIDE_SELL,
)
from strategies.host import HostedStrategy
from strategies.registry import make_strategy
from tests.unit.scenario_records import ack, execs, expired, fill, instrument, snapshot, top, trade

MS = 1_000_000
BTC = instrument(1, 1)          # tick 0.01, lot 0.0001: 100_000 ticks = 1_000.00


def host(kind, params, timer_ms=10.0):
    return HostedStrategy(make_strategy(kind, params, [BTC], 7), timer_ms=timer_ms)


def news(out):
    return [r for r in out if r["kind"] == INTENT_NEW]


def book(bid_sizes, ask_sizes, ts, bid=99_999, ask=100_001):
    """A five-level book around 100_000 with the given sizes per level."""
    return snapshot(1, [(bid - k, q) for k, q in enumerate(bid_sizes)],
                    [(ask + k, q) for k, q in enumerate(ask_sizes)], ts)


def test_bad_parameters_name_their_key():
    cases = [("order_book_imbalance", {"imbalance_threshold": 1.5}, "imbalance_threshold"),
             ("order_book_imbalance", {"book_depth": 0}, "book_depth"),
             ("order_book_imbalance", {"exit_threshold": 0.9, "imbalance_threshold": 0.5},
              "exit_threshold")]
    for kind, params, key in cases:
        with pytest.raises(ConfigError, match=key):
            make_strategy(kind, params, [BTC], 7)


# ------------------------------------------------------------------------------------------
# order_book_imbalance
# ------------------------------------------------------------------------------------------
OBI = {"book_depth": 5, "depth_decay": 0.6, "ofi_weight": 0.0, "imbalance_threshold": 0.5,
       "signal_bps": 5.0, "fee_bps": 1.0, "max_hold_ms": 1000.0, "order_qty_lots": 3}


def test_obi_buys_after_a_bid_heavy_book_and_not_after_a_balanced_one():
    heavy = host("order_book_imbalance", OBI)
    out = heavy.step(book([90] * 5, [10] * 5, 1_000), now_ns=1_000)
    assert len(out) == 1
    r = out[0]
    assert (r["side"], r["order_type"], r["px_ticks"], r["qty_lots"]) == (SIDE_BUY, ORD_IOC,
                                                                          100_001, 3)
    assert heavy.st.sig == pytest.approx(0.8)
    balanced = host("order_book_imbalance", OBI)
    for n in range(20):
        t = 1_000 + n * 50 * MS
        assert len(balanced.step(book([40 + n % 3] * 5, [40] * 5, t), now_ns=t)) == 0
    light = host("order_book_imbalance", OBI)
    out = light.step(book([10] * 5, [90] * 5, 1_000), now_ns=1_000)
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["px_ticks"] == 99_999


def test_obi_does_not_trade_a_signal_that_does_not_pay_the_spread_and_fees():
    # the same lean with a 40-tick spread: half spread 2 bps + 1 bp fee, each way, > 5 x 0.8
    h = host("order_book_imbalance", OBI)
    out = h.step(book([90] * 5, [10] * 5, 1_000, bid=99_980, ask=100_020), now_ns=1_000)
    assert len(out) == 0 and h.st.n_cost_blocked == 1


def test_obi_leaves_when_the_imbalance_flips_or_the_holding_time_is_over():
    h = host("order_book_imbalance", OBI)
    out = h.step(book([90] * 5, [10] * 5, 1_000), now_ns=1_000).copy()
    h.step(ex=fill(out[0]), now_ns=2_000)
    assert h.positions[0]["pos"] == 3
    # still bid-heavy: holds
    assert len(h.step(book([80] * 5, [10] * 5, 3_000), now_ns=3_000)) == 0
    out = h.step(book([10] * 5, [80] * 5, 4_000), now_ns=4_000).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL and out[0]["qty_lots"] == 3
    h.step(ex=fill(out[0]), now_ns=5_000)
    # flat, the lean is the other way: enters short after the entry interval
    t = 200 * MS
    out = h.step(book([10] * 5, [80] * 5, t), now_ns=t).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_SELL
    h.step(ex=fill(out[0]), now_ns=t + 1)
    assert h.positions[0]["pos"] == -3
    # the lean stays but max_hold_ms passes: covers on the timer
    out = h.step(now_ns=t + 1_001 * MS).copy()
    assert len(out) == 1 and out[0]["side"] == SIDE_BUY and out[0]["qty_lots"] == 3
