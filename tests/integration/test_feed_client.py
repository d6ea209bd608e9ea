"""The real client path against the local replay server on 127.0.0.1 (ephemeral port):
connect, subscribe, REST snapshot with a rate-limit answer, get dropped, reconnect, resync."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from feeds.client import FeedClient, LiveConnectionRefused, check_endpoint
from feeds.meta import derive_instruments, make_handler
from feeds.recording import Recorder, read_recording, read_recordings
from feeds.server import ReplayServer
from shm.records import (MSG_STATUS, REASON_RECONNECT, REASON_SNAPSHOT, STATUS_BOOK_INVALID,
                         STATUS_BOOK_VALID)


async def _run_until(client, done, timeout_s=30.0):
    task = asyncio.ensure_future(client.run())
    t0 = time.monotonic()
    try:
        while not done():
            if time.monotonic() - t0 > timeout_s:
                raise AssertionError(f"timed out; client stats {client.stats}, handler "
                                     f"{client.handler.stats}")
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    finally:
        client.stop()
        await asyncio.wait_for(task, 10)


def _statuses(batches):
    recs = np.concatenate(batches) if batches else np.zeros(0)
    st = recs[recs["kind"] == MSG_STATUS] if len(recs) else recs
    return [(int(r["aux0"]), int(r["aux1"])) for r in st]


def test_binance_client_is_dropped_reconnects_and_resyncs_from_rest(shared_data, tmp_path):
    files = [str(shared_data / "binance/BINANCE.ws.1.0"),
             str(shared_data / "binance/BINANCE.http.0.0")]
    inst = derive_instruments("binance", read_recordings(files))
    handler = make_handler("binance", inst)
    batches = []

    async def main():
        # the drop comes once every book is valid on the first connection (its REST
        # snapshots, one answered after a 429, have landed). Without drop_when no snapshot
        # had been applied yet when frame 150 went out: whether one landed before the client
        # noticed the drop was a race, lost now and then by either handler, and then no book
        # had ever been valid and nothing resynced
        srv = ReplayServer(files, drop_after=150, drops=1, rest_429=1,
                           drop_when=lambda: len(handler.books) == 4
                           and all(b.valid for b in handler.books.values()))
        await srv.start()
        rec = Recorder(tmp_path / "rec.jsonl")
        client = FeedClient("binance", handler, sorted(inst), srv.ws_url, srv.rest_url,
                            on_records=lambda r: batches.append(r.copy()), recorder=rec,
                            backoff_initial_s=0.05, backoff_max_s=0.2,
                            snapshot_min_interval_s=0.0, stale_check_s=0.2)
        total = len(srv.ws_frames)
        try:
            await _run_until(client, lambda: srv.stats.drops_missed > 0    # fails below
                             or client.stats.connects >= 2
                             and client.stats.frames >= 150 + total
                             and all(b.valid for b in handler.books.values())
                             and len(handler.books) == 4)
        finally:
            rec.close()
            await srv.stop()
        return srv, client

    srv, client = asyncio.run(main())
    assert srv.stats.drops == 1 and srv.stats.drops_missed == 0, srv.stats
    assert srv.stats.connections == 2
    assert client.stats.disconnects == 1
    assert srv.stats.rest_429 == 1 and client.stats.rest_retries >= 1
    # 4 symbols, once per connection; a snapshot answered after the drop is not applied
    assert client.stats.rest_snapshots + client.stats.rest_stale >= 8
    st = handler.stats
    # all 4 books were valid at the drop, so all 4 resync, each from a fetched snapshot
    assert st.resyncs >= 4 and st.gaps == 0 and st.parse_errors == 0
    assert st.snapshots == client.stats.rest_snapshots
    assert st.oracle_mismatch == 0 and st.oracle_match > 0
    statuses = _statuses(batches)
    assert (STATUS_BOOK_INVALID, REASON_RECONNECT) in statuses
    last_invalid = max(i for i, s in enumerate(statuses) if s[0] == STATUS_BOOK_INVALID)
    assert statuses[last_invalid + 1:].count((STATUS_BOOK_VALID, REASON_SNAPSHOT)) >= 4
    # the recorder kept every frame and snapshot, in the hftfarm format
    frames = list(read_recording(tmp_path / "rec.jsonl"))
    assert sum(f.kind == "ws" for f in frames) == client.stats.frames
    assert sum(f.kind == "rest" for f in frames) == client.stats.rest_snapshots


def test_kraken_v1_client_resyncs_from_the_snapshot_of_a_new_subscription(shared_data):
    files = [str(shared_data / "kraken/KRAKEN.ws.50.0")]
    inst = derive_instruments("kraken-v1", read_recordings(files))
    handler = make_handler("kraken-v1", inst)

    async def main():
        srv = ReplayServer(files, drop_after=400, drops=1)
        await srv.start()
        client = FeedClient("kraken-v1", handler, sorted(inst), srv.ws_url, depth=1000,
                            backoff_initial_s=0.05, backoff_max_s=0.2)
        total = len(srv.ws_frames)
        try:
            await _run_until(client, lambda: client.stats.frames >= 400 + total)
        finally:
            await srv.stop()
        return srv, client

    srv, client = asyncio.run(main())
    assert client.stats.connects == 2
    assert any(b"subscribe" in m.encode() if isinstance(m, str) else b"subscribe" in m
               for m in srv.stats.received)
    st = handler.stats
    assert st.checksum_fail == 0 and st.checksum_ok > 4269 and st.resyncs >= 1
    assert all(b.valid for b in handler.books.values()) and len(handler.books) == 10


def test_client_refuses_a_real_venue_without_allow_live():
    with pytest.raises(LiveConnectionRefused, match="allow_live"):
        FeedClient("binance", make_handler("binance", {}), ["BTCUSDT"],
                   "wss://stream.binance.com:9443", "https://api.binance.com")
    with pytest.raises(LiveConnectionRefused):
        check_endpoint("http://10.0.0.1:8080/api", allow_live=False)
    check_endpoint("ws://127.0.0.1:9/", allow_live=False)
    check_endpoint("ws://[::1]:9/", allow_live=False)
    check_endpoint("wss://stream.binance.com:9443", allow_live=True)   # checks only, no socket
    from feeds.http import http_get
    with pytest.raises(PermissionError, match="allow_live"):
        asyncio.run(http_get("https://api.binance.com/api/v3/depth?symbol=BTCUSDT"))


def test_rest_get_reads_chunked_bodies_and_backs_off_on_rate_limits():
    from feeds.http import HttpError, get_with_backoff

    answers = [b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\n{\"a\":\r\n3;x=1\r\n12}\r\n0\r\n\r\n",
               b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"]
    seen = []

    async def handle(reader, writer):
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
        writer.write(answers[len(seen) - 1])
        await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        sleeps, retries = [], []

        async def fake_sleep(s):
            sleeps.append(s)

        body = await get_with_backoff(f"http://127.0.0.1:{port}/api/v3/depth?symbol=X",
                                      initial_s=0.25, sleep=fake_sleep,
                                      on_retry=lambda a, e: retries.append(e))
        with pytest.raises(HttpError, match="404"):
            await get_with_backoff(f"http://127.0.0.1:{port}/x", sleep=fake_sleep)
        srv.close()
        await srv.wait_closed()
        return body, sleeps, retries

    body, sleeps, retries = asyncio.run(main())
    assert body == b'{"a":12}'
    assert sleeps == [0.0, 0.5]        # Retry-After first, then the exponential backoff
    assert [getattr(e, "status", None) for e in retries] == [429, 503]
    assert seen[0] == b"GET /api/v3/depth?symbol=X HTTP/1.1"


def test_client_reconnects_on_its_own_when_the_connection_reaches_its_age_limit(shared_data):
    """The Binance 24 h rule, with the limit shortened to 0.3 s."""
    files = [str(shared_data / "kraken/KRAKEN.ws.48.0")]
    inst = derive_instruments("kraken-v1", read_recordings(files))
    handler = make_handler("kraken-v1", inst)

    async def main():
        srv = ReplayServer(files)
        await srv.start()
        client = FeedClient("kraken-v1", handler, sorted(inst), srv.ws_url,
                            max_connection_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.02)
        try:
            await _run_until(client, lambda: client.stats.connects >= 3)
        finally:
            await srv.stop()
        return client

    client = asyncio.run(main())
    assert client.stats.scheduled_reconnects >= 2
    assert handler.stats.trades >= 20 and handler.stats.parse_errors == 0


def test_binance_staleness_is_judged_by_the_connection_not_one_quiet_symbol():
    from feeds.decimal import Scale
    from feeds.handler import FeedInstrument

    inst = {"BTCUSDT": FeedInstrument("BTCUSDT", 1, Scale("0.01"), Scale("0.00001"))}
    h = make_handler("binance", inst, stale_ns=1_000)
    h.feed_rest("http://127.0.0.1/api/v3/depth?symbol=BTCUSDT",
                '{"lastUpdateId":1,"bids":[["1.00","1"]],"asks":[["2.00","1"]]}', 0)
    h.feed('{"stream":"ethusdt@trade","data":{"e":"kline"}}', 900)   # some other stream
    assert h.check_stale(1_500) == 0
    assert h.check_stale(2_000) == 1 and h.stats.stale == 1


def test_kraken_checksum_failure_resubscribes_then_reconnects_if_the_venue_ignores_it(
        shared_data, tmp_path):
    """One corrupted checksum: the client unsubscribes+subscribes that pair; the replay server
    ignores subscriptions, so after resync_timeout_s the client reconnects and the fresh
    stream's snapshot makes the book valid again."""
    src = (shared_data / "kraken/KRAKEN.ws.50.0").read_text().splitlines(keepends=True)
    idx = next(i for i, line in enumerate(src) if i > 100 and '"c":"' in line
               and '"XMR/USD"' in line)
    head, _, tail = src[idx].partition('"c":"')
    value, _, rest = tail.partition('"')
    src[idx] = f'{head}"c":"{(int(value) + 1) % (1 << 32)}"{rest}'    # a wrong checksum
    path = tmp_path / "KRAKEN.ws.50.0.bad"
    path.write_text("".join(src[:idx + 200]))
    files = [str(path)]
    inst = derive_instruments("kraken-v1", read_recordings(files))
    handler = make_handler("kraken-v1", inst)

    async def main():
        srv = ReplayServer(files)
        await srv.start()
        client = FeedClient("kraken-v1", handler, sorted(inst), srv.ws_url, depth=1000,
                            backoff_initial_s=0.01, backoff_max_s=0.02, stale_check_s=0.05,
                            resync_timeout_s=0.3)
        try:
            # every connection replays the same bad frame, so stop after the first recovery
            await _run_until(client, lambda: client.stats.resync_reconnects >= 1
                             and handler.stats.resyncs >= 1)
        finally:
            await srv.stop()
        return srv, client

    srv, client = asyncio.run(main())
    assert handler.stats.checksum_fail >= 1 and handler.stats.parse_errors == 0
    unsub = [m for m in srv.stats.received if '"unsubscribe"' in m]
    assert unsub and '"XMR/USD"' in unsub[0] and client.stats.resubscribes >= 1
    assert client.stats.resync_reconnects >= 1
