"""The PostgreSQL sink against a real PostgreSQL (Debian's package, started here in a temp dir
on a Unix socket, stopped and removed after): fills copied with exact prices, and a database
stopped and started again mid-run loses and doubles nothing."""
from __future__ import annotations

import json
import threading
import time
from decimal import Decimal

import numpy as np
import pytest

from tests.pgserver import PgServer, pg_bin

pytestmark = pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL is not installed "
                                "(make test installs it: apt-get install postgresql)")

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def pg():
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()
    assert not server.base.exists()


def _fills(seq0, n, t0):
    from shm.records import EXEC_DTYPE, EXEC_FILL, SIDE_BUY, SIDE_SELL

    e = np.zeros(n, EXEC_DTYPE)
    e["ring_seq"] = np.arange(seq0, seq0 + n)
    e["kind"] = EXEC_FILL
    e["side"] = np.where(np.arange(n) % 2, SIDE_SELL, SIDE_BUY)
    e["instrument_id"] = 1 + np.arange(n) % 4
    e["px_ticks"] = 6_000_000 + (np.arange(n) * 7) % 1000
    e["qty_lots"] = 1 + np.arange(n) % 5
    e["strategy_id"] = 1
    e["send_ts_ns"] = t0 + e["ring_seq"] * 1000
    e["fee_e9"] = -(np.arange(n) % 3) * 1_000_001
    return e


def _config():
    from pipeline.config import load_config

    return load_config(None, build=False)


def _writer(path, dtype, cfg):
    from market.recordfile import RecordFileWriter
    from shm.instruments import InstrumentTable

    return RecordFileWriter(path, dtype, list(InstrumentTable.from_config(cfg)),
                            buffered=False)


def test_sink_copies_every_fill_with_its_exact_decimal_price(pg, tmp_path):
    from pipeline.pgsink import run_sink
    from shm.instruments import InstrumentTable
    from shm.records import ORDER_DTYPE, EXEC_DTYPE

    cfg = _config()
    rd = tmp_path / "run-a"
    (rd / "journal").mkdir(parents=True)
    fills = _fills(0, 5000, time.time_ns())   # ring positions start at 0
    with _writer(rd / "journal" / "exec-0.rec", EXEC_DTYPE, cfg) as w:
        w.append(fills)
    with _writer(rd / "journal" / "orders-0.rec", ORDER_DTYPE, cfg):
        pass
    (rd / "sink").mkdir()                  # the snapshot spools, as the Snapshotter writes them
    st = {"pnl": 1.5, "realized_pnl": 1.0, "unrealized_pnl": 0.75, "fees": 0.25,
          "positions_lots": {"BTC-USD@simA": 3}}
    (rd / "sink" / "pnl.jsonl").write_text("".join(
        json.dumps({"seq": k, "ts_ns": time.time_ns(), "strategies": {"mm_btc": st}}) + "\n"
        for k in (1, 2, 3)))
    hist = {"count": 10, "p50_us": 5.0, "p90_us": 9.0, "p99_us": 20.0, "max_us": 31.0}
    (rd / "sink" / "latency.jsonl").write_text(json.dumps(
        {"seq": 1, "ts_ns": time.time_ns(), "histograms": {"tick_to_trade": hist}}) + "\n")
    assert run_sink(cfg, pg.dsn, rd, follow=False, log=lambda m: None) == 0
    with psycopg.connect(pg.dsn) as c:
        assert c.execute("SELECT count(*), sum(pnl), max(positions->>'BTC-USD@simA') "
                         "FROM hft_pnl").fetchone() == (3, 4.5, "3")
        assert c.execute("SELECT hop, p50_us FROM hft_latency").fetchall() == \
            [("tick_to_trade", 5.0)]
    tick = {i.instrument_id: i.tick_size for i in InstrumentTable.from_config(cfg)}
    with psycopg.connect(pg.dsn) as c:
        rows = c.execute("SELECT ring_seq, price, instrument FROM hft_fills "
                         "ORDER BY ring_seq").fetchall()
    assert len(rows) == len(fills)
    for (seq, price, _inst), f in zip(rows, fills):
        assert seq == f["ring_seq"]
        assert isinstance(price, Decimal) and price == tick[int(f["instrument_id"])] * \
            int(f["px_ticks"])
    # a second pass over the same run copies nothing more
    assert run_sink(cfg, pg.dsn, rd, follow=False, log=lambda m: None) == 0
    with psycopg.connect(pg.dsn) as c:
        assert c.execute("SELECT count(*) FROM hft_executions").fetchone()[0] == len(fills)


def test_database_restarted_mid_run_loses_and_doubles_nothing(pg, tmp_path):
    """A journal grows (and its writer is restarted, repeating its tail into a new file) while
    the sink tails it; PostgreSQL is stopped mid-run and started again. The writer never waits
    on the sink; afterwards every journal record is in the database exactly once."""
    from pipeline.pgsink import JournalSource, PostgresStore, Sink, strategy_names_of
    from shm.records import EXEC_DTYPE

    cfg = _config()
    rd = tmp_path / "run-b"
    (rd / "journal").mkdir(parents=True)
    t0 = time.time_ns()
    source = JournalSource(rd, strategy_names_of(cfg))
    logs = []
    sink = Sink(PostgresStore(pg.dsn, "test/run-b", source, connect_timeout_s=2), source,
                batch_records=700, poll_s=0.02, backoff_max_s=0.3, log=logs.append)
    stop = threading.Event()
    th = threading.Thread(target=sink.run, args=(stop.is_set, 30.0), daemon=True)
    th.start()
    total = 0
    w = _writer(rd / "journal" / "exec-0.rec", EXEC_DTYPE, cfg)
    try:
        for chunk in range(30):
            if chunk == 10:
                deadline = time.monotonic() + 60   # a loaded box may take a while to connect
                while sink.copied == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                copied_before = sink.copied
                pg.stop()                          # the database goes away mid-run
            if chunk == 20:
                pg.start()
            if chunk == 15:                        # the journal is restarted: its successor
                w.close()                          # repeats the last 50 records
                w = _writer(rd / "journal" / "exec-1.rec", EXEC_DTYPE, cfg)
                w.append(_fills(total - 49, 50, t0))
            t = time.perf_counter()
            w.append(_fills(total + 1, 400, t0))
            assert time.perf_counter() - t < 2.0   # the writer never waits on the sink
            total += 400
            time.sleep(0.05)
    finally:
        w.close()
        stop.set()
        th.join(60)
    assert not th.is_alive()
    assert copied_before > 0                       # it was copying before the outage
    assert sink.failures > 0                       # and it saw the outage
    assert any("database unavailable" in m for m in logs)
    with psycopg.connect(pg.dsn) as c:
        n, distinct, lo, hi = c.execute(
            "SELECT count(*), count(DISTINCT ring_seq), min(ring_seq), max(ring_seq) "
            "FROM hft_executions WHERE run_id = 'test/run-b'").fetchone()
    assert (n, distinct, lo, hi) == (total, total, 1, total)


def test_controller_spawned_sink_process_copies_the_run_and_drains_at_stop(pg, tmp_path,
                                                                           monkeypatch):
    """The controller's side (pipeline/sink_proc.py) with [sink.postgres] enabled: the sink
    process reads the DSN from the environment (never from its argv), tails the journal and,
    told to stop, drains it into the database."""
    from types import SimpleNamespace

    from pipeline.config import DEFAULT_CONFIG, load_config
    from pipeline.sink_proc import start_sink, stop_sink
    from shm.records import EXEC_DTYPE

    conf = tmp_path / "c.toml"
    conf.write_text(DEFAULT_CONFIG.read_text() + "\n[sink.postgres]\nenabled = true\n"
                    "dsn_env = \"HFTFARM_TEST_DSN\"\nsnapshot_ms = 0\npoll_ms = 50\n")
    monkeypatch.setenv("HFTFARM_TEST_DSN", pg.dsn)
    cfg = load_config(conf, build=False)
    rd = tmp_path / "runs" / "run-c"
    (rd / "journal").mkdir(parents=True)
    logs = []
    ctl = SimpleNamespace(cfg=cfg, run_dir=rd, config_path=conf, log=logs.append)
    with _writer(rd / "journal" / "exec-0.rec", EXEC_DTYPE, cfg) as w:
        proc = start_sink(ctl)
        try:
            assert pg.dsn not in " ".join(proc.args)
            for k in range(5):
                w.append(_fills(1 + 1000 * k, 1000, time.time_ns()))
                time.sleep(0.1)
        finally:
            stop_sink(ctl, proc)
    assert proc.returncode == 0, (rd / "logs" / "pgsink.log").read_text()
    assert pg.dsn not in (rd / "logs" / "pgsink.log").read_text()
    with psycopg.connect(pg.dsn) as c:
        assert c.execute("SELECT count(*), count(DISTINCT ring_seq) FROM hft_fills "
                         "WHERE run_id = 'default/run-c'").fetchone() == (5000, 5000)
