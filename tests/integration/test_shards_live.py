"""A sharded strategy in a real instance: ``shards = 2`` runs two market-maker processes, one
per instrument block, each with its own strategy id, rings and status row; their client order
ids carry their shard; both trade; stop leaves nothing behind."""
from __future__ import annotations

import time
import uuid

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import run_py, status_json, wait_for, write_config

MM = '''name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''
SHARDED = '''name = "mm_btc"
kind = "market_making"
shards = 2
instruments = ["BTC-USD@simA", "ETH-USD@simA"]'''


def test_two_shards_trade_as_two_processes_with_their_own_identity(tmp_path):
    from shm.records import INTENT_NEW
    from shm.segment import list_segments, unlink_instance
    from stages.journal import read_journal_orders
    from strategies.base import COID_SHIFT, SHARD_SHIFT

    instance = f"t{uuid.uuid4().hex[:8]}sh"
    cfg = write_config(tmp_path / "c.toml", instance, tmp_path / "runs",
                       layout="dedicated")   # its claim is about separate processes
    text = cfg.read_text()
    assert MM in text
    text = text.replace(MM, SHARDED, 1)
    text = text.replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    cfg.write_text(text)
    r = run_py("start", "--config", str(cfg), timeout=COLD_START_S + 60)
    assert r.returncode == 0, r.stderr
    try:
        st = status_json(cfg)
        rows = {row["stage"]: row for row in st["stages"]}
        assert rows["strategy-mm_btc.0"]["state"] == "RUNNING"
        assert rows["strategy-mm_btc.1"]["state"] == "RUNNING"
        assert rows["strategy-mm_btc.0"]["pid"] != rows["strategy-mm_btc.1"]["pid"]
        shards = st["risk"]["strategies"]
        assert shards["mm_btc.0"]["instruments"] == ["BTC-USD@simA"]
        assert shards["mm_btc.1"]["instruments"] == ["ETH-USD@simA"]
        assert (shards["mm_btc.0"]["strategy"], shards["mm_btc.1"]["shard"]) == ("mm_btc", 1)
        sid0, sid1 = shards["mm_btc.0"]["strategy_id"], shards["mm_btc.1"]["strategy_id"]
        assert sid0 != sid1
        jdir = tmp_path / "runs" / instance / "latest" / "journal"

        def both_quoted():
            try:
                o = read_journal_orders(jdir)
            except Exception:
                return None
            news = o[(o["kind"] == INTENT_NEW) & (o["reject_code"] == 0)]
            return (news,) if {sid0, sid1} <= set(news["strategy_id"].tolist()) else None

        news, = wait_for(both_quoted, 120, "approved quotes from both shards", step=1.0)
        for sid, shard in ((sid0, 0), (sid1, 1)):
            mine = news[news["strategy_id"] == sid]
            coids = mine["client_order_id"]
            assert ((coids >> COID_SHIFT) == sid).all()
            assert (((coids >> SHARD_SHIFT) & 0xFF) == shard).all()
            assert len(set(mine["instrument_id"].tolist())) == 1   # its own block only
        assert set(news[news["strategy_id"] == sid0]["instrument_id"].tolist()) != \
            set(news[news["strategy_id"] == sid1]["instrument_id"].tolist())
    finally:
        r = run_py("stop", "--config", str(cfg), timeout=120)
        time.sleep(0.2)
        leaked = [s.name for s in list_segments(instance)]
        unlink_instance(instance)
    assert r.returncode == 0, r.stderr
    assert not leaked, leaked
