"""Venue market data: protocol-exact handlers, books, recordings, client and replay server.

Runs in the feed process (the pipeline wraps a handler in a feed stage); nothing here touches
rings or spawns processes. Hot path: ``FeedHandler.feed`` and what it calls (decimal, book,
binance, coinbase, kraken). Cold path: recording, meta, check, convert, client, http, server.

    decimal.py    exact decimal text -> integer ticks / lots (never float)
    book.py       exact local L2 book (sorted keys + dict; Kraken checksum text per level)
    handler.py    the common handler interface, record writer, counters, invalidate/resync
    binance.py    Binance spot: depth sync (buffer, snapshot, U/u rules), trades, bookTicker
    binance_fast.py  numba fast path for synced Binance depth/trade/bookTicker frames on raw
                  bytes (_scan.py JSON scanner, _numtext.py exact decimals, _binance_kernel.py)
    coinbase.py   Coinbase Exchange (level2, matches, ticker) and Advanced Trade (sequence_num)
    kraken.py     Kraken v2 and v1: CRC32 over exact wire text, truncation to depth
    recording.py  hftfarm JSON-lines recorder; readers for it and for cryptofeed's raw format
    meta.py       instruments from config or derived from a recording; handler factory
    check.py      replay recordings through a handler and report (``run.py feed check``)
    convert.py    recording -> record file (``run.py replay binance|coinbase|kraken``)
    client.py     websockets + uvloop client: subscribe, resync, reconnect with backoff
    http.py       minimal HTTP/1.1 GET for REST snapshots, with rate-limit backoff
    server.py     replay a recording as a loopback websocket + REST server (``feed serve``)
"""
