"""market.latency: the seeded streams and the per-venue latency model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from market.latency import (CH_MD, CH_ORDER, LatencyModel, fifo_arrival, rng_seed)
from pipeline.config import load_config


def test_constant_plus_jitter_has_the_configured_floor_mean_and_exponential_median():
    m = LatencyModel(1)
    m.set_constant_jitter(1, CH_MD, 50_000.0, 20_000.0)
    s = m.sample(1, CH_MD, 200_000, seed=3)
    assert s.min() >= 50_000
    assert abs(s.mean() - 70_000) < 400            # 20 us mean jitter, 200k draws
    assert abs(np.median(s) - (50_000 + 20_000 * math.log(2))) < 400
    # exponential: P(jitter > mean) = 1/e
    assert abs((s > 70_000).mean() - math.exp(-1)) < 0.01


def test_zero_jitter_is_exactly_the_constant():
    m = LatencyModel(1)
    m.set_constant_jitter(1, CH_ORDER, 1234.0, 0.0)
    assert set(m.sample(1, CH_ORDER, 1000, seed=1).tolist()) == {1234}


def test_histogram_channel_draws_only_its_samples_uniformly():
    m = LatencyModel(2)
    m.set_histogram(2, CH_ORDER, [10, 20, 30, 40])
    s = m.sample(2, CH_ORDER, 40_000, seed=9)
    assert set(np.unique(s).tolist()) == {10, 20, 30, 40}
    counts = np.bincount(s)[[10, 20, 30, 40]]
    assert counts.min() > 9_500 and counts.max() < 10_500
    # the other channel of that venue keeps constant + jitter
    assert m.hist_n[2, CH_MD] == 0


def test_same_seed_same_draws_and_different_seed_different_draws():
    m = LatencyModel(1)
    m.set_constant_jitter(1, CH_MD, 100.0, 50.0)
    a = m.sample(1, CH_MD, 1000, seed=42)
    b = m.sample(1, CH_MD, 1000, seed=42)
    c = m.sample(1, CH_MD, 1000, seed=43)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seeded_streams_are_distinct_and_never_zero():
    streams = np.zeros(64, dtype=np.uint64)
    rng_seed(streams, 0)
    assert len(set(streams.tolist())) == 64 and (streams != 0).all()


def test_fifo_channel_never_lets_a_message_overtake_the_previous_one():
    last = np.zeros(2, dtype=np.int64)
    assert fifo_arrival(last, 1, 1000, 500) == 1500
    assert fifo_arrival(last, 1, 1100, 10) == 1500      # would arrive at 1110: waits
    assert fifo_arrival(last, 1, 2000, 10) == 2010
    assert fifo_arrival(last, 0, 0, 5) == 5             # other channel unaffected


def test_model_from_config_uses_each_venues_microseconds():
    cfg = load_config()
    m = LatencyModel.from_config(cfg)
    for vid, v in enumerate(cfg.venues, start=1):
        assert m.params[vid, CH_MD, 0] == v.md_latency_us * 1e3
        assert m.params[vid, CH_ORDER, 1] == v.order_jitter_us * 1e3


def test_bad_latency_settings_name_the_venue_and_channel():
    m = LatencyModel(2)
    with pytest.raises(ValueError, match="venue id 3"):
        m.set_constant_jitter(3, CH_MD, 1.0, 1.0)
    with pytest.raises(ValueError, match="venue 1 channel 0"):
        m.set_constant_jitter(1, CH_MD, -1.0, 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        m.set_histogram(1, CH_MD, [])
