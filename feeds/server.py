"""Replay a recording as a local venue: a websocket server plus a REST endpoint on loopback.
Cold path (``run.py feed serve``, integration tests); runs in its own process or event loop.

Every websocket connection receives the recorded frames from the start, in order (a fresh
subscription gets a fresh stream, so a client that was dropped resyncs from the recorded
snapshots). Frames the client sends (subscribe, ping) are read and ignored. HTTP GETs on the
same port answer with the recorded REST body whose path and query match (Binance
``/api/v3/depth?symbol=...``; matched on ``symbol`` when the full query differs).

Test hooks: ``drop_after`` closes the first ``drops`` connections after that many frames;
``drop_when`` (a zero-argument callable, e.g. "the client's books are all valid") makes such a
drop conditional: once ``drop_after`` frames were sent, the stream holds (polling the predicate
between event-loop turns, for at most ``drop_wait_s``) and the connection is dropped at the
first poll where it returns true, so a test's drop lands at a known state of the client instead
of wherever the race between the stream and the client's REST requests left it. If it never
returns true, that connection is not dropped (``stats.drops_missed``) and the stream goes on.
``rest_429`` answers the first N REST requests with 429 and ``Retry-After: 0``.
``start_when`` (a zero-argument callable) holds every connection's stream until it returns true
(polled, for at most ``start_wait_s``; then the stream starts anyway): a test whose client runs
inside a pipeline lets the stream begin once every reader of the client's ring is up.
It binds only loopback addresses: a replay server is not a service.
"""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from feeds.recording import KIND_REST, KIND_WS, read_recordings


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ReplayStats:
    connections: int = 0
    frames_sent: int = 0
    drops: int = 0
    drops_missed: int = 0        # drops that did not happen: drop_when stayed false
    rest_requests: int = 0
    rest_429: int = 0
    received: list = field(default_factory=list)


class ReplayServer:
    def __init__(self, files: list[str], host: str = "127.0.0.1", port: int = 0,
                 rate: float = 0.0, drop_after: int = 0, drops: int = 1, rest_429: int = 0,
                 drop_when: Callable[[], bool] | None = None, drop_wait_s: float = 10.0,
                 start_when: Callable[[], bool] | None = None, start_wait_s: float = 120.0):
        if not is_loopback_host(host):
            raise ValueError(f"replay server binds loopback only, not {host!r}")
        self.host = host
        self.port = port
        self.rate = rate
        self.drop_after = drop_after
        self.drop_when = drop_when
        self.drop_wait_s = drop_wait_s
        self.start_when = start_when
        self.start_wait_s = start_wait_s
        self.drops_left = drops if drop_after or drop_when is not None else 0
        self.rest_429_left = rest_429
        self.ws_frames: list[str] = []
        self.rest: dict[str, str] = {}            # "path?query" -> body
        self.rest_by_symbol: dict[str, str] = {}
        for fr in read_recordings(files):
            if fr.kind == KIND_WS:
                self.ws_frames.append(fr.data)
            elif fr.kind == KIND_REST:
                u = urlsplit(fr.url)
                self.rest[u.path + ("?" + u.query if u.query else "")] = fr.data
                sym = parse_qs(u.query).get("symbol")
                if sym:
                    self.rest_by_symbol[sym[0].upper()] = fr.data
        self.stats = ReplayStats()
        self._server = None

    # ---- HTTP (REST) ---------------------------------------------------------------------
    def _process_request(self, connection, request):
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        self.stats.rest_requests += 1
        if self.rest_429_left > 0:
            self.rest_429_left -= 1
            self.stats.rest_429 += 1
            resp = connection.respond(429, "rate limited\n")
            resp.headers["Retry-After"] = "0"
            return resp
        body = self.rest.get(request.path)
        if body is None:
            sym = parse_qs(urlsplit(request.path).query).get("symbol")
            body = self.rest_by_symbol.get(sym[0].upper()) if sym else None
        if body is None:
            return connection.respond(404, f"no recorded response for {request.path}\n")
        resp = connection.respond(200, body)
        resp.headers["Content-Type"] = "application/json"
        return resp

    # ---- websocket -----------------------------------------------------------------------
    async def _handle(self, ws):
        self.stats.connections += 1
        drop = False
        if self.drops_left > 0:
            self.drops_left -= 1
            drop = True
        reader = asyncio.ensure_future(self._drain(ws))
        try:
            if self.start_when is not None:
                await self._hold_until(ws, self.start_when, self.start_wait_s)
            delay = 1.0 / self.rate if self.rate > 0 else 0.0
            for n, frame in enumerate(self.ws_frames):
                if drop and n >= self.drop_after:
                    drop = False
                    if self.drop_when is None or await self._hold_until(ws, self.drop_when):
                        self.stats.drops += 1
                        # an abrupt drop (no close handshake) is what a venue outage looks like
                        ws.transport.abort()
                        return
                    self.stats.drops_missed += 1
                await ws.send(frame)
                self.stats.frames_sent += 1
                if delay:
                    await asyncio.sleep(delay)
                elif n % 64 == 63:
                    await asyncio.sleep(0)     # let the peer's reader and pings run
            await ws.wait_closed()
        except Exception:  # noqa: BLE001 - the peer went away; nothing to report to anyone
            return
        finally:
            reader.cancel()

    async def _hold_until(self, ws, predicate, wait_s: float | None = None) -> bool:
        """Send nothing until ``predicate()`` is true (True) or ``wait_s`` (default
        ``drop_wait_s``) passed or the connection closed (False)."""
        from websockets.protocol import State

        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.drop_wait_s if wait_s is None else wait_s)
        while not predicate():
            if loop.time() >= deadline or ws.state is not State.OPEN:
                return False
            await asyncio.sleep(0.002)
        return True

    async def _drain(self, ws):
        try:
            async for msg in ws:
                self.stats.received.append(msg)
        except Exception:  # noqa: BLE001 - connection closed under us
            return

    async def start(self) -> int:
        from websockets.asyncio.server import serve
        self._server = await serve(self._handle, self.host, self.port,
                                   process_request=self._process_request, max_size=None,
                                   compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def serve_forever(venue: str, files: list[str], host: str, port: int, rate: float = 0.0,
                  drop_after: int = 0) -> int:
    """``run.py feed serve``: serve until interrupted."""
    import uvloop

    async def main():
        srv = ReplayServer(files, host, port, rate=rate, drop_after=drop_after,
                           drops=1 << 30)
        await srv.start()
        print(f"serving {venue} replay of {len(srv.ws_frames)} frames and "
              f"{len(srv.rest)} REST responses: ws {srv.ws_url}  rest {srv.rest_url}",
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await srv.stop()

    try:
        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    return 0
