"""``run.py feed live``: the operator's view of a live venue, on loopback only (the replay
server stands in for the venue) and without a network (a closed loopback port)."""
from __future__ import annotations

from tests.integration.test_feed_stage import DATA, ServerThread, _free_port
from tests.integration.test_pipeline_cli import run_py


def test_feed_live_prints_top_of_book_rates_and_lag_from_a_loopback_venue():
    server = ServerThread([str(DATA / "BINANCE.ws.1.0"), str(DATA / "BINANCE.http.0.0")],
                          rate=100)
    try:
        r = run_py("feed", "live", "--venue", "binance", "--symbols", "NKNUSDT,LRCBTC",
                   "--url", f"ws://127.0.0.1:{server.srv.port}", "--duration", "3",
                   "--interval", "1", "--tick-size", "0.000001", "--lot-size", "0.01")
    finally:
        server.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "feed live: binance NKNUSDT, LRCBTC from ws://127.0.0.1:" in out
    assert "connected" in out and "msg/s" in out and "exchange->receive lag" in out
    nkn = [ln for ln in out.splitlines() if ln.strip().startswith("NKNUSDT")]
    assert nkn and "bid 0." in nkn[-1] and " ask 0." in nkn[-1], out


def test_feed_live_without_a_network_says_so_and_exits_1():
    r = run_py("feed", "live", "--venue", "binance", "--symbols", "BTCUSDT", "--url",
               f"ws://127.0.0.1:{_free_port()}", "--connect-timeout", "2", "--interval", "0.5")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cannot reach ws://127.0.0.1:" in r.stderr and "needs internet access" in r.stderr
