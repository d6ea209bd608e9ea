"""A minimal HTTP/1.1 GET on asyncio streams, for REST snapshots. Cold path (feed process,
between websocket frames).

Why not aiohttp/httpx: one GET per resync does not justify a heavy dependency on the feed
process; this speaks exactly what the snapshot endpoints need (Content-Length or chunked
bodies, Connection: close, TLS via the stdlib for live venues).
"""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_BODY = 64 << 20


class HttpError(Exception):
    def __init__(self, status: int, reason: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status} {reason}")
        self.status = status
        self.retry_after = retry_after


async def http_get(url: str, timeout: float = 10.0, headers: dict[str, str] | None = None,
                   allow_live: bool = False) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``; returns (status, lower-cased headers, body). Raises OSError / TimeoutError
    on transport problems and ValueError on a malformed response. Refuses (PermissionError)
    a non-loopback host unless ``allow_live``."""
    from feeds.server import is_loopback_host

    u = urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not allow_live and not is_loopback_host(u.hostname or ""):
        raise PermissionError(f"refusing GET {url}: not a loopback address and allow_live is "
                              "false")
    port = u.port or (443 if u.scheme == "https" else 80)
    ctx = ssl.create_default_context() if u.scheme == "https" else None
    path = (u.path or "/") + ("?" + u.query if u.query else "")

    async def run():
        reader, writer = await asyncio.open_connection(
            u.hostname, port, ssl=ctx, server_hostname=u.hostname if ctx else None)
        try:
            lines = [f"GET {path} HTTP/1.1", f"Host: {u.netloc}", "Accept: application/json",
                     "Connection: close", "User-Agent: hftfarm-feed"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            status_line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise ValueError(f"bad HTTP status line {status_line!r} from {url}")
            status = int(parts[1])
            hdrs: dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
                if not line:
                    break
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            if hdrs.get("transfer-encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        await reader.readline()
                        break
                    body += await reader.readexactly(size)
                    await reader.readexactly(2)
                    if len(body) > MAX_BODY:
                        raise ValueError(f"response from {url} exceeds {MAX_BODY} bytes")
                return status, hdrs, bytes(body)
            if "content-length" in hdrs:
                n = int(hdrs["content-length"])
                if n > MAX_BODY:
                    raise ValueError(f"response from {url} exceeds {MAX_BODY} bytes")
                return status, hdrs, await reader.readexactly(n)
            return status, hdrs, await reader.read(MAX_BODY)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    return await asyncio.wait_for(run(), timeout)


async def get_with_backoff(url: str, attempts: int = 6, initial_s: float = 0.5,
                           max_s: float = 30.0, timeout: float = 10.0, sleep=asyncio.sleep,
                           on_retry=None, allow_live: bool = False) -> bytes:
    """GET with retries: 429/418 (rate limit / ban warning) wait Retry-After, else an
    exponential backoff; 5xx and transport errors back off too; other 4xx fail at once."""
    delay = initial_s
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            status, hdrs, body = await http_get(url, timeout, allow_live=allow_live)
            if status == 200:
                return body
            retry_after = None
            ra = hdrs.get("retry-after", "")
            if ra.isdigit():
                retry_after = float(ra)
            err = HttpError(status, body[:120].decode("utf-8", "replace"), retry_after)
            if status not in (429, 418) and status < 500:
                raise err
            last = err
            wait = retry_after if retry_after is not None else delay
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            last = exc
            wait = delay
        if on_retry is not None:
            on_retry(attempt, last)
        if attempt + 1 < attempts:
            await sleep(min(wait, max_s))
            delay = min(delay * 2, max_s)
    raise last if last is not None else RuntimeError("unreachable")
