"""Instrument metadata for feed handlers: from config, or derived from a recording. Cold path.

The shared recordings trade symbols that config.toml does not list, so their tick and lot sizes
are derived from the data itself: for each symbol, the tick is ``10**-d`` where ``d`` is the
largest number of *significant* fractional digits (trailing zeros dropped) seen in any price,
and the lot likewise from the quantities. Binance pads every number to 8 decimals, so padding
is ignored; the derived step is never coarser than any value seen, so every value converts
exactly (a finer step than the venue's real one costs nothing but larger integers). All of it
on the decimal text, never through float.
"""
from __future__ import annotations

from typing import Iterable

import orjson

from feeds.decimal import Scale, frac_digits, step_for_digits
from feeds.handler import FeedInstrument
from feeds.kraken import quote_kraken_v2_numbers
from feeds.recording import KIND_REST, KIND_WS, Frame, read_recordings

VENUES = ("binance", "coinbase", "coinbase-at", "kraken", "kraken-v1")


def _pairs_binance(msg):
    d = msg.get("data", msg) if isinstance(msg, dict) else None
    if not isinstance(d, dict):
        return
    s = d.get("s")
    e = d.get("e")
    if e == "depthUpdate":
        for lv in d.get("b", []) + d.get("a", []):
            yield s, lv[0], lv[1]
    elif e in ("trade", "aggTrade"):
        yield s, d.get("p"), d.get("q")
    elif e is None and "B" in d:
        yield s, d.get("b"), d.get("B")
        yield s, d.get("a"), d.get("A")


def _pairs_binance_rest(url, msg):
    from feeds.binance import _query_param
    s = (_query_param(url, "symbol") or "").upper()
    for lv in msg.get("bids", []) + msg.get("asks", []):
        yield s, lv[0], lv[1]


def _pairs_coinbase(msg):
    if not isinstance(msg, dict):
        return
    t = msg.get("type")
    s = msg.get("product_id")
    if t == "snapshot":
        for lv in msg.get("bids", []) + msg.get("asks", []):
            yield s, lv[0], lv[1]
    elif t == "l2update":
        for ch in msg.get("changes", []):
            yield s, ch[1], ch[2]
    elif t in ("match", "last_match"):
        yield s, msg.get("price"), msg.get("size")
    elif t == "ticker":
        yield s, msg.get("price"), msg.get("last_size")
        yield s, msg.get("best_bid"), None
        yield s, msg.get("best_ask"), None


def _pairs_coinbase_at(msg):
    if not isinstance(msg, dict):
        return
    ch = msg.get("channel")
    for ev in msg.get("events", []) or []:
        if ch == "l2_data":
            s = ev.get("product_id")
            for u in ev.get("updates", []):
                yield s, u.get("price_level"), u.get("new_quantity")
        elif ch == "market_trades":
            for t in ev.get("trades", []):
                yield t.get("product_id"), t.get("price"), t.get("size")
        elif ch == "ticker":
            for t in ev.get("tickers", []):
                yield t.get("product_id"), t.get("price"), None
                yield t.get("product_id"), t.get("best_bid"), t.get("best_bid_quantity")
                yield t.get("product_id"), t.get("best_ask"), t.get("best_ask_quantity")


def _pairs_kraken_v1(msg):
    if not isinstance(msg, list) or len(msg) < 4:
        return
    pair = msg[-1]
    name = msg[-2]
    if isinstance(name, str) and name.startswith("book"):
        for part in msg[1:-2]:
            for key in ("as", "bs", "a", "b"):
                for lv in part.get(key, []):
                    yield pair, lv[0], lv[1]
    elif name == "trade":
        for t in msg[1]:
            yield pair, t[0], t[1]
    elif name == "ticker":
        yield pair, msg[1]["a"][0], msg[1]["a"][2]
        yield pair, msg[1]["b"][0], msg[1]["b"][2]


def _pairs_kraken_v2(msg):
    if not isinstance(msg, dict):
        return
    ch = msg.get("channel")
    for d in msg.get("data", []) or []:
        if ch == "book":
            for lv in d.get("bids", []) + d.get("asks", []):
                yield d.get("symbol"), lv.get("price"), lv.get("qty")
        elif ch == "trade":
            yield d.get("symbol"), d.get("price"), d.get("qty")


def kraken_version_seen(files: list[str]) -> str | None:
    """'kraken-v1' when the recording holds v1 array frames, 'kraken' (v2) when it holds v2
    frames (objects with a "channel"), None when no frame tells."""
    for fr in read_recordings(files):
        if fr.kind == KIND_WS:
            text = fr.data.lstrip()
            if text.startswith("["):
                return "kraken-v1"
            if '"channel"' in text:
                return "kraken"
    return None


def detect_kraken_version(files: list[str]) -> str:
    """'kraken-v1' when the recording holds v1 array frames, else 'kraken' (v2)."""
    return kraken_version_seen(files) or "kraken"


# Substrings of the endpoint host -> venue family; advanced trade before plain coinbase.
_VENUE_HOSTS = (("binance", "binance"), ("advanced-trade-ws.coinbase", "coinbase-at"),
                ("coinbase", "coinbase"), ("kraken", "kraken"))


def recorded_venue(files: list[str], max_frames: int = 64) -> tuple[str, str] | None:
    """(venue, evidence) for a recording whose endpoint URLs name a venue, e.g.
    ('kraken-v1', 'wss://ws.kraken.com, v1 array frames'); None when nothing tells (a
    loopback recording, an empty or unreadable file). Kraken's version comes from the frames
    (``kraken_version_seen``). For error messages only: never changes how a file is parsed."""
    from urllib.parse import urlsplit

    try:
        for n, fr in enumerate(read_recordings(files)):
            if n >= max_frames:
                return None
            host = (urlsplit(fr.url).hostname or "") if fr.url else ""
            for part, venue in _VENUE_HOSTS:
                if part in host:
                    url = fr.url.split("?")[0]
                    if venue != "kraken":
                        return venue, url
                    seen = kraken_version_seen(files)
                    if seen is None:
                        return venue, url
                    return seen, f"{url}, {'v1 array' if seen == 'kraken-v1' else 'v2'} frames"
    except (OSError, ValueError):
        return None
    return None


def derive_instruments(venue: str, frames: Iterable[Frame]) -> dict[str, FeedInstrument]:
    """Scan recorded frames; return {symbol: FeedInstrument} with derived tick and lot sizes.
    Malformed frames are skipped here (the handler counts them when it replays them)."""
    if venue not in VENUES:
        raise ValueError(f"unknown venue {venue!r} (known: {', '.join(VENUES)})")
    px_digits: dict[str, int] = {}
    qty_digits: dict[str, int] = {}
    for fr in frames:
        if fr.kind not in (KIND_WS, KIND_REST):
            continue
        try:
            data = fr.data
            if venue == "kraken":
                data = quote_kraken_v2_numbers(data)
            msg = orjson.loads(data)
            if venue == "binance":
                pairs = _pairs_binance_rest(fr.url, msg) if fr.kind == KIND_REST \
                    else _pairs_binance(msg)
            elif venue == "coinbase":
                pairs = _pairs_coinbase(msg)
            elif venue == "coinbase-at":
                pairs = _pairs_coinbase_at(msg)
            elif venue == "kraken":
                pairs = _pairs_kraken_v2(msg)
            else:
                pairs = _pairs_kraken_v1(msg)
            for sym, p, q in pairs:
                if not isinstance(sym, str) or not sym:
                    continue
                if isinstance(p, str):
                    px_digits[sym] = max(px_digits.get(sym, 0), frac_digits(p))
                if isinstance(q, str):
                    qty_digits[sym] = max(qty_digits.get(sym, 0), frac_digits(q))
        except (orjson.JSONDecodeError, TypeError, KeyError, IndexError, AttributeError,
                ValueError):
            continue
    out = {}
    for n, sym in enumerate(sorted(set(px_digits) | set(qty_digits)), 1):
        out[sym] = FeedInstrument(sym, n, Scale(step_for_digits(px_digits.get(sym, 0))),
                                  Scale(step_for_digits(qty_digits.get(sym, 0))))
    return out


def instruments_from_config(cfg, venue: str) -> dict[str, FeedInstrument]:
    """Instruments of every venue in ``cfg`` (a loaded config: its ``venues`` and
    ``instruments``) whose kind is ``venue``, ids as in the table."""
    from shm.instruments import InstrumentTable

    kinds = {v.name: v.kind for v in cfg.venues}
    out = {}
    for inst in InstrumentTable.from_config(cfg):
        if kinds.get(inst.venue) == venue:
            out[inst.symbol] = FeedInstrument(inst.symbol, inst.instrument_id,
                                              Scale(inst.tick_size), Scale(inst.lot_size))
    return out


def make_handler(venue: str, instruments: dict[str, FeedInstrument], *, exact: bool = False,
                 **kw):
    """The handler for a venue name (the CLI's --venue values). ``exact=True`` asks for the
    exact Python handler where a venue has a faster default (Binance); the other venues have
    only their exact handler and ignore it."""
    if venue == "binance":
        if exact:
            from feeds.binance import BinanceHandler
            return BinanceHandler(instruments, **kw)
        # The numba fast path on the raw bytes: a drop-in BinanceHandler subclass that keeps
        # the exact path as the sync state machine and hands it every frame the kernel
        # declines; bit-identical records on the recordings (tests/unit/
        # test_feeds_binance_fast.py) and the same drop / reconnect / REST resync behaviour
        # on the live client path (tests/integration/test_feed_client.py; its drop-and-resync
        # test once failed now and then with this handler: the drop could land before any
        # snapshot did, a race in the test, fixed with the replay server's drop_when).
        from feeds.binance_fast import BinanceFastHandler
        return BinanceFastHandler(instruments, **kw)
    if venue == "coinbase":
        from feeds.coinbase import CoinbaseHandler
        return CoinbaseHandler(instruments, **kw)
    if venue == "coinbase-at":
        from feeds.coinbase import CoinbaseAdvancedHandler
        return CoinbaseAdvancedHandler(instruments, **kw)
    if venue == "kraken":
        from feeds.kraken import KrakenV2Handler
        return KrakenV2Handler(instruments, **kw)
    if venue == "kraken-v1":
        from feeds.kraken import KrakenV1Handler
        return KrakenV1Handler(instruments, **kw)
    raise ValueError(f"unknown venue {venue!r} (known: {', '.join(VENUES)})")
