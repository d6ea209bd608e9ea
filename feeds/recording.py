"""Recordings of venue traffic: the hftfarm recorder and readers. Cold path (feed process for
the recorder's writes, CLI / tests / replay server for the readers).

hftfarm format: one JSON object per line,
    {"ts_ns": <receive time, epoch ns>, "kind": "ws" | "rest", "url": "<endpoint>",
     "data": "<the raw frame text, exactly as received>"}
The frame is kept as text (not re-encoded JSON) so that decimal text, key order and number
formatting reach the handler byte for byte (Kraken checksums depend on it).

cryptofeed raw format (``../shared/data``): ``<url> <-> <epoch s>`` opens a connection,
``<url> <- <epoch s>: <json>`` is a frame the client sent, ``<epoch s>: <json>`` a received
frame, and (REST files) ``<url> -> <epoch s>: <json>`` a REST response.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from feeds.handler import epoch_text_to_ns

KIND_WS = "ws"          # a received websocket frame
KIND_REST = "rest"      # a REST response body
KIND_SENT = "sent"      # a frame the client sent (cryptofeed format only)
KIND_CONNECT = "connect"  # a (re)connection opened (cryptofeed format only)


@dataclass(frozen=True)
class Frame:
    ts_ns: int
    kind: str
    url: str
    data: str


class Recorder:
    """Appends every frame as one JSON line; flushes on close (and every ``flush_every``)."""

    def __init__(self, path: str | Path, flush_every: int = 256):
        self.path = Path(path)
        self._f = open(self.path, "ab")
        self._flush_every = flush_every
        self._count = 0

    def write(self, kind: str, url: str, data: str | bytes, ts_ns: int | None = None) -> None:
        if kind not in (KIND_WS, KIND_REST):
            raise ValueError(f"recording kind must be 'ws' or 'rest', got {kind!r}")
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8", "surrogateescape")
        line = orjson.dumps({"ts_ns": time.time_ns() if ts_ns is None else int(ts_ns),
                             "kind": kind, "url": url, "data": data})
        self._f.write(line + b"\n")
        self._count += 1
        if self._count % self._flush_every == 0:
            self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_hftfarm(path: str | Path) -> Iterator[Frame]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
                yield Frame(int(obj["ts_ns"]), str(obj["kind"]), str(obj.get("url", "")),
                            obj["data"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: not a hftfarm recording line ({exc})") \
                    from None


def read_cryptofeed(path: str | Path) -> Iterator[Frame]:
    url = ""
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if line[0].isdigit():
                ts, sep, data = line.partition(": ")
                if not sep:
                    raise ValueError(f"{path}:{lineno}: expected '<epoch s>: <frame>'")
                yield Frame(epoch_text_to_ns(ts), KIND_WS, url, data)
                continue
            head, sep, data = line.partition(": ")
            if " <-> " in head and not sep:
                url, _, ts = line.partition(" <-> ")
                yield Frame(epoch_text_to_ns(ts), KIND_CONNECT, url, "")
            elif " <- " in head:
                u, _, ts = head.partition(" <- ")
                yield Frame(epoch_text_to_ns(ts), KIND_SENT, u, data)
            elif " -> " in head:
                u, _, ts = head.partition(" -> ")
                yield Frame(epoch_text_to_ns(ts), KIND_REST, u, data)
            else:
                raise ValueError(f"{path}:{lineno}: not a cryptofeed raw line: {line[:60]!r}")


def detect_format(path: str | Path) -> str:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return "hftfarm" if line.lstrip().startswith(b"{\"ts_ns\"") else "cryptofeed"
    return "hftfarm"


def read_recording(path: str | Path) -> Iterator[Frame]:
    """Frames of one file, either format (detected from the first line)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    if detect_format(path) == "hftfarm":
        return read_hftfarm(path)
    return read_cryptofeed(path)


def read_recordings(paths: Iterable[str | Path]) -> Iterator[Frame]:
    """Several files as one stream: each file keeps its own order and files are interleaved
    by receive time (a REST snapshot file merges into its stream; a day-split stream stays
    contiguous because the second file starts where the first ended)."""
    streams = [read_recording(p) for p in paths]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda fr: fr.ts_ns)


def feed_frames(handler, frames: Iterable[Frame], on_records=None) -> int:
    """Drive ``handler`` with recorded frames; ``on_records(array)`` receives each batch
    (a view, valid until the next frame). Returns the number of frames fed."""
    count = 0
    for fr in frames:
        if fr.kind == KIND_WS:
            n = handler.feed(fr.data, fr.ts_ns)
        elif fr.kind == KIND_REST:
            n = handler.feed_rest(fr.url, fr.data, fr.ts_ns)
        elif fr.kind == KIND_CONNECT:
            n = handler.connection_lost(fr.ts_ns) if count else 0
            handler.on_new_connection()
        else:
            continue
        count += 1
        if n and on_records is not None:
            on_records(handler.out[:n])
    return count
