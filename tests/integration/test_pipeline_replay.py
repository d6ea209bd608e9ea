"""``run.py run --replay``: a record file replayed into the live pipeline reaches every
strategy from its first record (the opening snapshot included), and at speed 0 nobody is lapped.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import ROOT, run_py, write_config


@pytest.fixture(scope="module")
def sim_record_file(tmp_path_factory):
    import sys

    sys.path.insert(0, str(ROOT))
    from market.recordfile import RecordFileWriter
    from market.sim import SimVenue
    from pipeline.config import load_config
    from shm.instruments import InstrumentTable
    from shm.records import MARKET_DTYPE

    cfg = load_config(str(ROOT / "config.toml"))
    table = InstrumentTable.from_config(cfg)
    md = SimVenue(cfg, list(table), event_rate_per_s=1000.0).run(10.0)
    path = tmp_path_factory.mktemp("replay") / "sim.rec"
    with RecordFileWriter(path, MARKET_DTYPE, list(table)) as w:
        w.append(md)
    per_venue = {}
    for i in table:
        per_venue[i.venue] = per_venue.get(i.venue, 0) + int((md["instrument_id"]
                                                              == i.instrument_id).sum())
    return path, len(md), per_venue


def test_replay_as_fast_as_the_readers_allow_reaches_every_strategy_losing_nothing(
        sim_record_file, tmp_path, shm_prefix):
    path, total, per_venue = sim_record_file
    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs")
    r = run_py("run", "--config", str(cfg), "--replay", str(path), "--replay-speed", "0",
               "--duration", "8", "--json", timeout=COLD_START_S + 300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["records_lost"] == 0
    lat = rep["latency"]
    # every strategy read every record of the venues it trades, from the first one on
    # (strategies of config.toml: mm and pairs on simA, arb on simA and simB)
    assert lat["md_to_strategy-mm_btc"]["count"] == per_venue["simA"]
    assert lat["md_to_strategy-pairs_btc_eth"]["count"] == per_venue["simA"]
    assert lat["md_to_strategy-arb_btc"]["count"] == total
    assert rep["orders"]["new_orders"] > 0        # books were valid: the strategies quoted
    assert not [n for n in os.listdir("/dev/shm") if shm_prefix in n]
