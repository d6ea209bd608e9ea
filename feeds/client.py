"""Websocket feed client (websockets + uvloop): connect, subscribe, feed every frame to a
handler, resync, reconnect. Runs in the feed process, off the hot path's inner loop (the
handler call per frame is the hot part).

* Nothing connects to a non-loopback address unless the caller passes ``allow_live=True``
  (from ``instance.allow_live`` in config): the check is on the URL's host, before any socket.
* websockets answers server pings with pongs itself and sends its own pings
  (``ping_interval``); a missing pong closes the connection, which counts as a drop.
* Reconnect with exponential backoff and full jitter (``delay * uniform(0.5, 1)``), reset after
  a connection that delivered frames. Binance closes connections after 24 h, so the client
  reconnects on its own after ``max_connection_s`` (23.5 h for Binance).
* On every (re)connection the handler is told (``connection_lost``: books invalid, status
  records); Binance books resync from REST snapshots (``/api/v3/depth``, fetched with
  rate-limit backoff), the other venues from the snapshot their subscription sends. A gap or
  checksum failure on Coinbase/Kraken resubscribes the affected books (unsubscribe +
  subscribe: a fresh snapshot); if they are still invalid after ``resync_timeout_s`` the
  client reconnects.
* A staleness watchdog calls ``handler.check_stale`` every ``stale_check_s``.
* ``recorder`` (feeds.recording.Recorder) gets every received frame and REST body.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import orjson

from feeds.http import get_with_backoff
from feeds.server import is_loopback_host

DEFAULT_ENDPOINTS = {
    "binance": ("wss://stream.binance.com:9443", "https://api.binance.com"),
    "coinbase": ("wss://ws-feed.exchange.coinbase.com", ""),
    "coinbase-at": ("wss://advanced-trade-ws.coinbase.com", ""),
    "kraken": ("wss://ws.kraken.com/v2", ""),
    "kraken-v1": ("wss://ws.kraken.com", ""),
}
BINANCE_MAX_CONNECTION_S = 23.5 * 3600


class LiveConnectionRefused(PermissionError):
    """A client was asked to reach a real venue without allow_live."""


def check_endpoint(url: str, allow_live: bool) -> None:
    if not url:
        return
    host = urlsplit(url).hostname or ""
    if not allow_live and not is_loopback_host(host):
        raise LiveConnectionRefused(
            f"refusing to connect to {url}: {host!r} is not a loopback address and allow_live "
            "is false (set instance.allow_live = true in the config to trade real venues)")


def subscriptions(venue: str, symbols: list[str], depth: int = 10) -> list[str]:
    """Subscribe frames a venue needs after connecting (Binance: none, streams are in the URL)."""
    if venue == "coinbase":
        return [orjson.dumps({"type": "subscribe", "product_ids": symbols,
                              "channels": ["level2_batch", "matches", "heartbeat"]}).decode()]
    if venue == "coinbase-at":
        return [orjson.dumps({"type": "subscribe", "product_ids": symbols,
                              "channel": ch}).decode()
                for ch in ("heartbeats", "level2", "market_trades")]
    if venue == "kraken":
        return [orjson.dumps({"method": "subscribe",
                              "params": {"channel": ch, "symbol": symbols, **extra}}).decode()
                for ch, extra in (("book", {"depth": depth, "snapshot": True}),
                                  ("trade", {"snapshot": False}))]
    if venue == "kraken-v1":
        return [orjson.dumps({"event": "subscribe", "pair": symbols,
                              "subscription": sub}).decode()
                for sub in ({"name": "book", "depth": depth}, {"name": "trade"})]
    return []


def resubscribe_frames(venue: str, symbols: list[str], depth: int = 10) -> list[str]:
    """Unsubscribe + subscribe the book channel of ``symbols``: the venue answers with a fresh
    snapshot (Kraken v1/v2, Coinbase Exchange). Advanced Trade's sequence_num is per
    connection, so a gap there resubscribes level2 for every product."""
    if venue == "kraken":
        return [orjson.dumps({"method": m, "params": {"channel": "book", "symbol": symbols,
                                                     **extra}}).decode()
                for m, extra in (("unsubscribe", {"depth": depth}),
                                 ("subscribe", {"depth": depth, "snapshot": True}))]
    if venue == "kraken-v1":
        return [orjson.dumps({"event": e, "pair": symbols,
                              "subscription": {"name": "book", "depth": depth}}).decode()
                for e in ("unsubscribe", "subscribe")]
    if venue == "coinbase":
        return [orjson.dumps({"type": t, "product_ids": symbols,
                              "channels": ["level2_batch"]}).decode()
                for t in ("unsubscribe", "subscribe")]
    if venue == "coinbase-at":
        return [orjson.dumps({"type": t, "product_ids": symbols, "channel": "level2"}).decode()
                for t in ("unsubscribe", "subscribe")]
    return []


def binance_stream_path(symbols: list[str]) -> str:
    streams = []
    for s in symbols:
        low = s.lower()
        streams += [f"{low}@depth@100ms", f"{low}@trade", f"{low}@bookTicker"]
    return "/stream?streams=" + "/".join(streams)


@dataclass
class ClientStats:
    connects: int = 0
    disconnects: int = 0
    frames: int = 0
    rest_snapshots: int = 0
    rest_retries: int = 0
    rest_failures: int = 0
    rest_stale: int = 0          # snapshots answered after a reconnect (dropped)
    resubscribes: int = 0
    resync_reconnects: int = 0
    scheduled_reconnects: int = 0
    errors: deque = field(default_factory=lambda: deque(maxlen=64))   # the latest only


class FeedClient:
    def __init__(self, venue: str, handler, symbols: list[str], ws_url: str, rest_url: str = "",
                 *, allow_live: bool = False, on_records: Callable | None = None,
                 recorder=None, backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0,
                 max_connection_s: float | None = None, stale_check_s: float = 1.0,
                 snapshot_limit: int = 1000, depth: int = 10, ping_interval_s: float = 20.0,
                 ping_timeout_s: float = 60.0, rest_attempts: int = 6,
                 snapshot_min_interval_s: float = 1.0, close_timeout_s: float = 1.0,
                 resync_timeout_s: float = 10.0):
        self.venue = venue
        self.handler = handler
        self.symbols = list(symbols)
        if venue == "binance" and ws_url and "/stream" not in ws_url and "/ws" not in ws_url:
            ws_url = ws_url.rstrip("/") + binance_stream_path(self.symbols)
        self.ws_url = ws_url
        self.rest_url = rest_url.rstrip("/")
        check_endpoint(self.ws_url, allow_live)
        check_endpoint(self.rest_url, allow_live)
        self.allow_live = allow_live
        self.on_records = on_records
        self.recorder = recorder
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_connection_s = max_connection_s if max_connection_s is not None else (
            BINANCE_MAX_CONNECTION_S if venue == "binance" else None)
        self.stale_check_s = stale_check_s
        self.snapshot_limit = snapshot_limit
        self.depth = depth
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.rest_attempts = rest_attempts
        self.close_timeout_s = close_timeout_s
        self.resync_timeout_s = resync_timeout_s
        self._resync_deadline: dict[str, float] = {}
        # a snapshot older than the live stream asks for another one at once: space them out
        # so a resync loop cannot exceed the venue's request weight
        self.snapshot_min_interval_s = snapshot_min_interval_s
        self._last_fetch: dict[str, float] = {}
        self.stats = ClientStats()
        self._stop = asyncio.Event()
        self._ws = None
        # symbol -> connection generation of its snapshot request in flight; the generation
        # changes on connect and on disconnect, and a snapshot answered in another generation
        # is dropped: its id may be older than the new stream's first diff
        self._inflight: dict[str, int] = {}
        self._gen = 0
        self._tasks: set[asyncio.Task] = set()

    # ---- plumbing ------------------------------------------------------------------------
    def _emit(self, n: int) -> None:
        if n and self.on_records is not None:
            self.on_records(self.handler.out[:n])

    @property
    def connected(self) -> bool:
        """A websocket is open and subscribed (between connect and its loss)."""
        return self._ws is not None

    def stop(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            asyncio.ensure_future(ws.close())

    def backoff_delay(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_initial_s * (2 ** attempt))
        return base * random.uniform(0.5, 1.0)

    # ---- main loop -----------------------------------------------------------------------
    async def run(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        attempt = 0
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            while not self._stop.is_set():
                frames_before = self.stats.frames
                try:
                    async with connect(self.ws_url, proxy=None, max_size=None,
                                       compression=None, open_timeout=10,
                                       # frames queued unread pause reading, so the peer's
                                       # close frame may never be seen: bound the wait
                                       close_timeout=self.close_timeout_s,
                                       ping_interval=self.ping_interval_s,
                                       ping_timeout=self.ping_timeout_s) as ws:
                        self._ws = ws
                        self._gen += 1
                        self.stats.connects += 1
                        self.handler.on_new_connection()
                        for sub in subscriptions(self.venue, self.symbols, self.depth):
                            await ws.send(sub)
                        await self._receive(ws)
                except (ConnectionClosed, InvalidHandshake, OSError, asyncio.TimeoutError) as exc:
                    self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                finally:
                    self._ws = None
                if self._stop.is_set():
                    break
                self.stats.disconnects += 1
                self._gen += 1
                self._emit(self.handler.connection_lost(time.time_ns()))
                self.handler.take_resync_requests()   # a new connection resyncs everything
                self._resync_deadline.clear()
                attempt = 0 if self.stats.frames > frames_before else attempt + 1
                try:
                    await asyncio.wait_for(self._stop.wait(), self.backoff_delay(attempt))
                except asyncio.TimeoutError:
                    pass
        finally:
            watchdog.cancel()
            for t in list(self._tasks):
                t.cancel()

    async def _receive(self, ws) -> None:
        if self.venue == "binance":
            for sym in self.symbols:
                self._fetch_snapshot(sym)
        if self.max_connection_s is None:
            await self._frames(ws)
            return
        # one deadline for the connection's whole life: asyncio.wait_for around each recv()
        # cost ~10 us a frame (a task per call); cancelling recv() is safe in websockets
        try:
            async with asyncio.timeout(self.max_connection_s):
                await self._frames(ws)
        except TimeoutError:
            if self._stop.is_set():
                return
            self.stats.scheduled_reconnects += 1
            await ws.close()

    async def _frames(self, ws) -> None:
        handler = self.handler
        feed = handler.feed
        rec = self.recorder
        recv = ws.recv
        while not self._stop.is_set():
            frame = await recv()
            now = time.time_ns()
            self.stats.frames += 1
            if rec is not None:
                rec.write("ws", self.ws_url, frame, now)
            n = feed(frame, now)
            if n:
                self._emit(n)
            if handler.wants_resync():
                await self._resync()

    async def _resync(self) -> None:
        wanted = self.handler.take_resync_requests()
        if self.venue == "binance":
            for sym in wanted:
                self._fetch_snapshot(sym)
        elif wanted and self._ws is not None:
            # Coinbase / Kraken send a fresh snapshot on a new subscription: resubscribe the
            # affected books; the watchdog reconnects if they are still invalid after
            # resync_timeout_s (a venue that ignored us, or a subscription that failed)
            syms = sorted(self.symbols if self.venue == "coinbase-at" else wanted)
            for frame in resubscribe_frames(self.venue, syms, self.depth):
                await self._ws.send(frame)
            self.stats.resubscribes += 1
            deadline = time.monotonic() + self.resync_timeout_s
            for sym in syms:
                self._resync_deadline.setdefault(sym, deadline)

    def _check_resync_deadlines(self) -> bool:
        """True when a resubscribed book missed its deadline (the caller reconnects)."""
        now = time.monotonic()
        late = False
        for sym, deadline in list(self._resync_deadline.items()):
            book = self.handler.books.get(sym)
            if book is not None and book.valid:
                del self._resync_deadline[sym]
            elif now > deadline:
                late = True
        return late

    # ---- REST snapshots (Binance) --------------------------------------------------------
    def _fetch_snapshot(self, symbol: str) -> None:
        if self._inflight.get(symbol) == self._gen or not self.rest_url:
            return
        self._inflight[symbol] = self._gen
        t = asyncio.ensure_future(self._snapshot_task(symbol, self._gen))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _snapshot_task(self, symbol: str, gen: int) -> None:
        url = f"{self.rest_url}/api/v3/depth?symbol={symbol}&limit={self.snapshot_limit}"

        def on_retry(_attempt, _exc):
            self.stats.rest_retries += 1

        try:
            wait = self._last_fetch.get(symbol, -1e9) + self.snapshot_min_interval_s \
                - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_fetch[symbol] = time.monotonic()
            body = await get_with_backoff(url, attempts=self.rest_attempts,
                                          initial_s=self.backoff_initial_s,
                                          max_s=self.backoff_max_s, on_retry=on_retry,
                                          allow_live=self.allow_live)
            if gen != self._gen:
                self.stats.rest_stale += 1   # requested before a reconnect: never applied
                return
            now = time.time_ns()
            self.stats.rest_snapshots += 1
            if self.recorder is not None:
                self.recorder.write("rest", url, body, now)
            self._emit(self.handler.feed_rest(url, body, now))
            # a snapshot older than the buffered diffs asks for another one
            if self.handler.wants_resync():
                await self._resync()
        except Exception as exc:  # noqa: BLE001 - reported in stats; the watchdog retries
            self.stats.rest_failures += 1
            self.stats.errors.append(f"snapshot {symbol}: {type(exc).__name__}: {exc}"[:200])
        finally:
            if self._inflight.get(symbol) == gen:
                del self._inflight[symbol]

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(self.stale_check_s)
            self._emit(self.handler.check_stale(time.time_ns()))
            if self.handler.wants_resync() and self._ws is not None:
                await self._resync()
            if self._resync_deadline and self._check_resync_deadlines() \
                    and self._ws is not None:
                self.stats.resync_reconnects += 1
                self._resync_deadline.clear()
                await self._ws.close()


def client_from_config(cfg, venue_name: str, handler, **kw) -> FeedClient:
    """A client for one configured venue: endpoints from ``[[venues]]`` (ws_url, rest_url,
    defaulting to the venue's public endpoints), symbols from its instruments, and
    ``instance.allow_live`` as the permission to leave loopback."""
    v = cfg.venue(venue_name)
    ws_default, rest_default = DEFAULT_ENDPOINTS.get(v.kind, ("", ""))
    symbols = [i.symbol for i in cfg.instruments if i.venue == venue_name]
    return FeedClient(v.kind, handler, symbols, v.ws_url or ws_default,
                      v.rest_url or rest_default, allow_live=cfg.instance.allow_live, **kw)


def run_client(client: FeedClient) -> None:
    """Run a client on uvloop until ``client.stop()``."""
    import uvloop
    uvloop.run(client.run())
