"""Live feed-handler stages in the whole pipeline, on loopback only: a config whose venue ``bn``
is kind ``binance`` (allow_live = true, but its endpoints are the replay server on 127.0.0.1
serving the shared Binance recording) and a second live venue ``kr`` (kraken-v1) whose endpoint
is a closed loopback port. One instance (``run.py start --foreground``) for the module:

* the stream starts once every stage is RUNNING (the server holds it: ``start_when``);
* the server cuts the connection once (after frame DROP_AFTER, when the stage's status says
  every book is valid), and the recording carries three malformed frames.

The tests then read its status, latency and journal. Timeouts are ceilings for a loaded 2-core
machine, not performance claims.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_pipeline_cli import ROOT, end_instance, run_py
from tests.integration.test_pipeline_cli import status_json as _status
from tests.integration.test_pipeline_cli import wait_for as _wait

DATA = ROOT.parent / "shared" / "data" / "binance"
START_TIMEOUT_S = 300
RATE = 60               # frames per second from the replay server (the recording: ~267 frames)
DROP_AFTER = 100
MALFORMED = ['{"stream":"nknusdt@depth@100ms","data":{"e":"depthUpdate"',    # cut short
             '[1, 2, 3]',                                                     # not an object
             '{"stream":"nknusdt@trade","data":{}}}']                        # trailing junk


class ServerThread:
    """feeds.server.ReplayServer on its own event loop thread (the test's own process)."""

    def __init__(self, files, **kw):
        from feeds.server import ReplayServer

        self.srv = ReplayServer(files, **kw)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "replay server did not start"

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.srv.start())
        self.ready.set()
        self.loop.run_forever()

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.srv.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _recording_with_malformed_frames(tmp: Path) -> Path:
    """The Binance recording with MALFORMED frames after frame 40 (cryptofeed raw format)."""
    lines = (DATA / "BINANCE.ws.1.0").read_text().splitlines(keepends=True)
    ts = lines[41].split(":", 1)[0]
    bad = [f"{ts}: {m}\n" for m in MALFORMED]
    path = tmp / "BINANCE.ws.1.0.malformed"
    path.write_text("".join(lines[:41] + bad + lines[41:]))
    return path


def _instruments_toml() -> str:
    from feeds.meta import derive_instruments
    from feeds.recording import read_recordings

    inst = derive_instruments("binance", read_recordings([str(DATA / "BINANCE.ws.1.0"),
                                                          str(DATA / "BINANCE.http.0.0")]))
    out = []
    for sym, fi in inst.items():
        out += ["[[instruments]]", f'symbol = "{sym}"', 'venue = "bn"',
                f'tick_size = "{fi.price.step}"', f'lot_size = "{fi.qty.step}"', ""]
    out += ["[[instruments]]", 'symbol = "XBT/USD"', 'venue = "kr"', 'tick_size = "0.1"',
            'lot_size = "0.00000001"', ""]
    return "\n".join(out)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def feedrun(tmp_path_factory):
    from stages.feed_live import read_feed_status

    tmp = tmp_path_factory.mktemp("feedstage")
    instance = f"t{os.getpid()}F{uuid.uuid4().hex[:6]}"
    go = threading.Event()
    run_dir = tmp / "runs"

    def all_books_valid():
        st = read_feed_status(run_dir / instance / "latest", "bn") or {}
        books = st.get("books_valid") or {}
        return len(books) == 4 and all(books.values())

    server = ServerThread([str(_recording_with_malformed_frames(tmp)),
                           str(DATA / "BINANCE.http.0.0")], rate=RATE, start_when=go.is_set,
                          drop_after=DROP_AFTER, drops=1, drop_when=all_books_valid,
                          drop_wait_s=20.0)
    url = f"127.0.0.1:{server.srv.port}"
    cfg = tmp / "feed.toml"
    cfg.write_text(f"""
[instance]
name = "{instance}"
run_dir = "{run_dir}"
allow_live = true      # the endpoints are loopback: the replay server and a closed port

[[venues]]
name = "bn"
kind = "binance"
ws_url = "ws://{url}"
rest_url = "http://{url}"
stale_after_ms = 60000

[[venues]]
name = "kr"
kind = "kraken-v1"
ws_url = "ws://127.0.0.1:{_free_port()}"
backoff_max_ms = 1000

{_instruments_toml()}
[[strategies]]
name = "mm_nkn"
kind = "market_making"
instruments = ["NKNUSDT@bn"]
params = {{ sigma_init_ticks = 5.0, min_requote_interval_ms = 50.0 }}

[stages]
heartbeat_timeout_ms = 2000

[journal]
enabled = true
market_data = true
""")
    r = run_py("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stdout + r.stderr
    notify_path = str(tmp / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(notify_path)
    sd.settimeout(START_TIMEOUT_S)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    log = open(tmp / "foreground.log", "wb")
    proc = subprocess.Popen([sys.executable, "run.py", "start", "--foreground", "--config",
                             str(cfg)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp / "foreground.log").read_text()
            assert time.monotonic() < deadline, "no READY=1"
            if sd.recv(4096).startswith(b"READY=1"):
                break
        t_go = time.monotonic()
        go.set()
        # the recording twice (the cut, then the whole stream again) at RATE frames/s
        srv = server.srv
        total = len(srv.ws_frames)
        _wait(lambda: srv.stats.frames_sent >= DROP_AFTER + total
              or srv.stats.drops_missed, 60, "the stream, cut once and sent again")
        stream_s = time.monotonic() - t_go
        st = _wait(lambda: (lambda s: s if s["feeds"]["bn"]["frames"] >= DROP_AFTER + total
                            and all(s["feeds"]["bn"]["books_valid"].values()) else None)(
            _status(cfg)), 30, "the feed stage to count every frame with every book valid",
            step=0.5)
        lat = json.loads(run_py("latency", "--json", "--config", str(cfg)).stdout)
        yield {"cfg": cfg, "instance": instance, "proc": proc, "tmp": tmp, "server": srv,
               "status": st, "latency": lat["histograms"], "stream_s": stream_s,
               "total": total, "log": tmp / "foreground.log"}
    finally:
        sd.close()
        try:
            end_instance(proc, instance)
        finally:
            log.close()
            server.stop()


def _run_dir(feedrun) -> Path:
    return feedrun["tmp"] / "runs" / feedrun["instance"] / "latest"


def test_status_shows_the_live_venue_connected_with_messages_counted(feedrun):
    st = feedrun["status"]
    stages = {s["stage"]: s for s in st["stages"]}
    assert set(stages) == {"journal", "feed-bn", "feed-kr", "order_router", "risk_gate",
                           "strategy-mm_nkn"}, "a live venue is never simulated: no venue stage"
    assert all(s["state"] == "RUNNING" for s in stages.values()), stages
    bn = st["feeds"]["bn"]
    assert bn["state"] == "connected" and bn["connected"] and bn["kind"] == "binance"
    assert bn["frames"] >= DROP_AFTER + feedrun["total"]
    assert bn["connects"] == 2 and bn["reconnects"] == 1 and bn["disconnects"] == 1
    assert bn["gaps"] == 0 and bn["resyncs"] >= 4 and bn["rest_snapshots"] >= 8
    assert bn["books_valid"] == {"BLZETH": True, "LRCBTC": True, "NKNUSDT": True,
                                 "RUNEEUR": True}
    assert bn["books_valid_count"] == 4
    assert stages["feed-bn"]["records_out"] > 0


def test_a_live_venue_that_cannot_connect_says_why_in_status(feedrun):
    kr = feedrun["status"]["feeds"]["kr"]
    assert kr["state"] == "connecting" and not kr["connected"]
    assert kr["reason"].startswith("cannot connect to ws://127.0.0.1:"), kr
    assert "Connect" in kr["reason"] or "refused" in kr["reason"].lower(), kr
    assert kr["frames"] == 0 and kr["books_valid"] == {"XBT/USD": False}
    r = run_py("status", "--config", str(feedrun["cfg"]))
    assert r.returncode == 0, r.stderr
    assert "live feeds:" in r.stdout and "cannot connect to ws://127.0.0.1:" in r.stdout


def test_strategy_reads_valid_books_from_the_live_feed(feedrun):
    st = feedrun["status"]
    strat = next(s for s in st["stages"] if s["stage"] == "strategy-mm_nkn")
    assert strat["records_in"] > 0
    assert feedrun["latency"]["md_to_strategy-mm_nkn"]["count"] > 0
    # the strategy quoted on the valid book: intents reached the gate, and the orders the
    # router sent to the live venue were answered REJECT_VENUE_DOWN (no order entry yet)
    assert st["risk"]["approved"] > 0 and st["risk"]["open_orders"] == 0


def test_malformed_frames_are_counted_and_the_stage_lives(feedrun):
    bn = feedrun["status"]["feeds"]["bn"]
    # each malformed frame was sent on both connections
    assert bn["parse_errors"] == 2 * len(MALFORMED)
    row = next(s for s in feedrun["status"]["stages"] if s["stage"] == "feed-bn")
    assert row["errors"] == 2 * len(MALFORMED) and row["restarts"] == 0
    log = (_run_dir(feedrun) / "logs" / "feed-bn.log").read_text()
    assert "malformed frame(s) skipped (parse_errors" in log


def _journal_after_stop(feedrun):
    from market.recordfile import open_record_file
    from shm.records import EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE

    proc = feedrun["proc"]
    if proc.poll() is None:
        end_instance(proc, feedrun["instance"])
    jdir = _run_dir(feedrun) / "journal"

    def read(prefix, dtype):
        parts = [open_record_file(p, dtype)[1] for p in sorted(jdir.glob(f"{prefix}-*.rec"))]
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    return read("md-bn", MARKET_DTYPE), read("orders", ORDER_DTYPE), read("exec", EXEC_DTYPE)


def test_cut_connection_invalid_then_resync_valid_and_no_new_intent_while_invalid(feedrun):
    from shm.instruments import InstrumentTable
    from pipeline.config import load_config
    from shm.records import (EXEC_REJECT, INTENT_NEW, MSG_STATUS, REASON_RECONNECT,
                             REJECT_VENUE_DOWN, STATUS_BOOK_INVALID, STATUS_BOOK_VALID)

    md, orders, execs = _journal_after_stop(feedrun)
    nkn = InstrumentTable.from_config(load_config(feedrun["cfg"])).by_key(
        "NKNUSDT@bn").instrument_id
    st = md[(md["kind"] == MSG_STATUS) & (md["instrument_id"] == nkn)]
    seq = [(int(r["aux0"]), int(r["aux1"]), int(r["recv_ts_ns"])) for r in st]
    invalid = [s for s in seq if s[0] == STATUS_BOOK_INVALID]
    assert [s[1] for s in invalid] == [REASON_RECONNECT], seq     # the cut, and nothing else
    t_bad = invalid[0][2]
    t_good = min(s[2] for s in seq if s[0] == STATUS_BOOK_VALID and s[2] > t_bad)
    assert seq[-1][0] == STATUS_BOOK_VALID                          # valid again at the end
    new = orders[(orders["kind"] == INTENT_NEW) & (orders["instrument_id"] == nkn)]
    assert len(new) > 0, "the strategy never quoted"
    caused = new["cause_recv_ts_ns"]
    assert ((caused >= t_bad) & (caused < t_good)).sum() == 0, \
        "a new order was caused by market data that arrived while the book was invalid"
    assert (caused < t_bad).any() and (caused >= t_good).any()     # it quoted before and after
    rej = execs[(execs["kind"] == EXEC_REJECT)]
    assert len(rej) and (rej["reject_code"] == REJECT_VENUE_DOWN).any()
