"""``run.py report`` and ``run.py export --parquet`` on a live run directory made with the real
writers (the journal's record files, the histograms' .hgrm dumps, a report.json) and on a short
backtest's ``--out``: every section of the page, PNGs that decode, Parquet rows equal to the
journal's, decimal prices equal to ticks x tick size."""
from __future__ import annotations

import base64
import io
import json
import re
import time
from decimal import Decimal

import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.htmlreport import SECTIONS


def run_cli(capsys, argv):
    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


def make_live_run(rd):
    """A live run's directory as the controller and the journal leave it."""
    from market.recordfile import RecordFileWriter
    from pipeline.config import load_config
    from shm.histogram import LatencyHistogram
    from shm.instruments import InstrumentTable
    from shm.records import (EXEC_ACK, EXEC_DTYPE, EXEC_FILL, EXEC_REJECT, INTENT_NEW,
                             ORDER_DTYPE, REJECT_MAX_POSITION, REJECT_PRICE_BAND, SIDE_BUY,
                             SIDE_SELL)

    cfg = load_config(None, build=False)
    insts = list(InstrumentTable.from_config(cfg))
    (rd / "journal").mkdir(parents=True)
    (rd / "latency").mkdir()
    t0 = time.time_ns()
    n = 300
    o = np.zeros(n, ORDER_DTYPE)
    o["ring_seq"] = np.arange(1, n + 1)
    o["kind"] = INTENT_NEW
    o["side"] = np.where(np.arange(n) % 2, SIDE_SELL, SIDE_BUY)
    o["instrument_id"] = 1 + np.arange(n) % 3
    o["client_order_id"] = np.arange(1, n + 1)
    o["px_ticks"] = np.where(o["instrument_id"] == 3, 300_000, 6_000_000) + np.arange(n) % 50
    o["qty_lots"] = 2
    o["strategy_id"] = 1 + np.arange(n) % 2
    o["send_ts_ns"] = t0 + np.arange(n) * 10_000_000
    o["reject_code"][::10] = REJECT_MAX_POSITION
    o["reject_code"][5::25] = REJECT_PRICE_BAND
    ok = o[o["reject_code"] == 0]
    e = np.zeros(2 * len(ok), EXEC_DTYPE)
    for f in ("side", "instrument_id", "client_order_id", "px_ticks", "qty_lots",
              "strategy_id"):
        e[f][0::2] = ok[f]
        e[f][1::2] = ok[f]
    e["kind"][0::2] = EXEC_ACK
    e["kind"][1::2] = EXEC_FILL
    e["kind"][3::40] = EXEC_REJECT           # a few venue rejects instead of fills
    e["reject_code"][3::40] = REJECT_PRICE_BAND
    e["send_ts_ns"] = t0 + np.arange(len(e)) * 5_000_000 + 1000
    e["fee_e9"] = 1500
    e["ring_seq"] = np.arange(1, len(e) + 1)
    with RecordFileWriter(rd / "journal" / "orders-0.rec", ORDER_DTYPE, insts) as w:
        w.append(o)
    with RecordFileWriter(rd / "journal" / "exec-0.rec", EXEC_DTYPE, insts) as w:
        w.append(e)
    rng = np.random.default_rng(1)
    for hop in ("tick_to_trade", "intent_to_gate"):
        h = LatencyHistogram.local()
        h.record_many(rng.lognormal(9, 0.7, 5000).astype(np.int64))
        h.write_hgrm(str(rd / "latency" / f"{hop}.hgrm"))
    strategies = {name: {"strategy_id": sid, "pnl": pnl, "realized_pnl": pnl - 1.0,
                         "unrealized_pnl": 1.0, "fees": 0.5, "positions_lots": {}}
                  for name, sid, pnl in (("mm_btc", 1, 12.5), ("pairs_btc_eth", 2, -3.25))}
    (rd / "report.json").write_text(json.dumps(
        {"instance": "t", "run_dir": str(rd), "duration_s": 3.0, "records_lost": 0,
         "risk": {"state": "ACTIVE", "strategies": strategies}}))
    return o, e, insts


def assert_page(html_text, min_images):
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in html_text, sid
    from PIL import Image

    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html_text)
    assert len(images) >= min_images
    for b64 in images:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()                       # decodes the whole image
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 50
    return images


def test_report_of_a_live_run_has_every_section_with_plots(tmp_path, capsys):
    rd = tmp_path / "run-20260101-000000"
    make_live_run(rd)
    code, out, err = run_cli(capsys, ["report", rd, "--out", tmp_path / "r.html"])
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert_page(page, min_images=5)      # equity, latency, fills, pnl, rejects all have data
    assert "risk:max_position" in page and "venue:price_band" in page
    assert "tick_to_trade" in page and "mm_btc" in page and "pairs_btc_eth" in page


def test_report_of_a_directory_that_is_not_a_run_names_it(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "empty", tmp_path / "missing"):
        code, _out, err = run_cli(capsys, ["report", p])
        assert code == 2 and err.startswith("error: ") and str(p) in err


def test_parquet_export_of_a_live_run_has_the_journal_rows_and_decimal_prices(tmp_path,
                                                                              capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rd = tmp_path / "run-x"
    o, e, insts = make_live_run(rd)
    code, out, err = run_cli(capsys, ["export", rd, "--parquet", tmp_path / "pq"])
    assert code == 0, err
    tick = {i.instrument_id: i.tick_size for i in insts}
    lot = {i.instrument_id: i.lot_size for i in insts}
    for fname, recs in (("orders.parquet", o), ("executions.parquet", e)):
        t = pq.read_table(tmp_path / "pq" / fname)
        assert t.num_rows == len(recs)
        assert pa.types.is_decimal(t.schema.field("price").type)
        assert pa.types.is_timestamp(t.schema.field("send_ts").type)
        prices = t.column("price").to_pylist()
        qtys = t.column("qty").to_pylist()
        for p, q, r in zip(prices, qtys, recs):
            assert isinstance(p, Decimal)
            assert p == tick[int(r["instrument_id"])] * int(r["px_ticks"])
            assert q == lot[int(r["instrument_id"])] * int(r["qty_lots"])
        assert t.column("ring_seq").to_pylist() == recs["ring_seq"].tolist()
    ex = pq.read_table(tmp_path / "pq" / "executions.parquet")
    assert ex.column("fee").to_pylist()[0] == Decimal("0.0000015")
    assert set(ex.column("kind").to_pylist()) == {"ack", "fill", "reject"}


@pytest.fixture(scope="module")
def backtest_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bt") / "out"
    code = cli_main(["backtest", "--strategy", "mm_btc", "--duration", "8", "--event-rate",
                     "300", "--out", str(out)])
    assert code == 0
    return out


def test_report_and_export_of_a_short_backtest(backtest_dir, tmp_path, capsys):
    import pyarrow.parquet as pq

    from stages.journal import read_journal_exec, read_journal_orders

    code, _out, err = run_cli(capsys, ["report", backtest_dir])
    assert code == 0, err
    page = (backtest_dir / "report.html").read_text()
    assert_page(page, min_images=3)       # equity, fills, pnl (a backtest has no .hgrm)
    assert "simulated model" in page
    code, _out, err = run_cli(capsys, ["export", backtest_dir, "--parquet", tmp_path / "pq"])
    assert code == 0, err
    execs = read_journal_exec(backtest_dir / "journal")
    assert len(execs) > 0
    assert pq.read_table(tmp_path / "pq" / "executions.parquet").num_rows == len(execs)
    assert pq.read_table(tmp_path / "pq" / "orders.parquet").num_rows == \
        len(read_journal_orders(backtest_dir / "journal"))
