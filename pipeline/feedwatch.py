"""``run.py feed live --venue V --symbols S[,S2] [--url ws://...] [--duration S]``: watch a live
venue's market data from the operator's shell: the venue's protocol-exact handler on the
feed client (feeds/client.py, uvloop), printing every ``--interval`` seconds each symbol's top
of book, messages/s and exchange -> receive lag. Cold path (operator shell, no pipeline, no
shared memory, no order of any kind).

Typing the command is the consent to connect to the venue's public endpoint (market data
only), so it does not need ``instance.allow_live``; ``--url`` points it elsewhere (a loopback
``run.py feed serve`` in the tests). Without a network it says so and exits 1 after
``--connect-timeout`` seconds instead of retrying forever.
"""
from __future__ import annotations

import asyncio
import sys
import time
from decimal import Decimal

EXIT_NO_FEED = 1


class FeedWatch:
    def __init__(self, venue: str, symbols: list[str], url: str = "", rest_url: str = "",
                 tick: str = "0.00000001", lot: str = "0.00000001", depth: int = 10,
                 out=sys.stdout):
        from feeds.client import DEFAULT_ENDPOINTS, FeedClient
        from feeds.decimal import Scale
        from feeds.handler import FeedInstrument
        from feeds.meta import make_handler

        insts = {s: FeedInstrument(s, n + 1, Scale(Decimal(tick)), Scale(Decimal(lot)))
                 for n, s in enumerate(symbols)}
        self.tick, self.lot = Decimal(tick), Decimal(lot)
        self.handler = make_handler(venue, insts, stale_ns=10_000_000_000)
        ws_default, rest_default = DEFAULT_ENDPOINTS[venue]
        self.url = url or ws_default
        self.symbols = symbols
        self.out = out
        self.lag_sum = self.lag_n = 0
        self.client = FeedClient(venue, self.handler, symbols, self.url,
                                 rest_url or (rest_default if not url else
                                              url.replace("ws://", "http://", 1)
                                              .replace("wss://", "https://", 1)),
                                 allow_live=True, on_records=self._records, depth=depth,
                                 backoff_max_s=5.0)

    def _records(self, recs) -> None:
        ex = recs["exch_ts_ns"]
        has = ex > 0
        if has.any():
            self.lag_sum += int((recs["recv_ts_ns"][has] - ex[has]).sum())
            self.lag_n += int(has.sum())

    def top(self, sym: str) -> str:
        book = self.handler.books.get(sym)
        if book is None or not book.bids.keys and not book.asks.keys:
            return "no book yet"

        def side(s):
            if not s.keys:
                return "-"
            k = s.keys[0]
            return f"{k * s.sign * self.tick:f} x {s.qty[k] * self.lot:f}".replace(".00000000 ", " ")
        state = "" if getattr(book, "valid", True) else "  (INVALID: resyncing)"
        return f"bid {side(book.bids)}  ask {side(book.asks)}{state}"

    async def run(self, duration_s: float, interval_s: float, connect_timeout_s: float) -> int:
        task = asyncio.ensure_future(self.client.run())
        t0 = time.monotonic()
        last_frames, last_t = 0, t0
        rc = 0
        try:
            while not task.done():
                await asyncio.sleep(interval_s)
                st = self.client.stats
                now = time.monotonic()
                if not st.connects and now - t0 >= connect_timeout_s:
                    err = st.errors[-1] if st.errors else "no answer"
                    print(f"feed live: cannot reach {self.url} within {connect_timeout_s:.0f} s "
                          f"({err}). This command needs internet access to the venue; without "
                          f"one, try a recording on loopback: run.py feed serve ... and "
                          f"feed live --url ws://127.0.0.1:PORT", file=sys.stderr, flush=True)
                    rc = EXIT_NO_FEED
                    break
                rate = (st.frames - last_frames) / max(now - last_t, 1e-9)
                last_frames, last_t = st.frames, now
                lag = f"{self.lag_sum / self.lag_n / 1e6:.1f} ms" if self.lag_n else "-"
                self.lag_sum = self.lag_n = 0
                conn = "connected" if self.client.connected else "connecting"
                print(f"[{now - t0:6.1f} s] {conn}  {rate:,.0f} msg/s  exchange->receive lag "
                      f"{lag}  frames {st.frames}  gaps {self.handler.stats.gaps}  resyncs "
                      f"{self.handler.stats.resyncs}", file=self.out)
                for sym in self.symbols:
                    print(f"    {sym:<12} {self.top(sym)}", file=self.out)
                self.out.flush()
                if duration_s and now - t0 >= duration_s:
                    break
        finally:
            self.client.stop()
            try:
                await asyncio.wait_for(task, 5.0)
            except (asyncio.TimeoutError, Exception):   # noqa: BLE001 - closing anyway
                task.cancel()
        return rc


def run_feed_live(args) -> int:
    import uvloop

    from pipeline.exits import EXIT_USAGE, CliError

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        raise CliError("--symbols: give at least one symbol, e.g. BTCUSDT", EXIT_USAGE)
    if args.url and not args.url.startswith(("ws://", "wss://")):
        raise CliError(f"--url {args.url}: must be a ws:// or wss:// URL", EXIT_USAGE)
    try:
        watch = FeedWatch(args.venue, symbols, args.url, args.rest_url, args.tick_size,
                          args.lot_size, args.depth)
    except (ValueError, ArithmeticError) as exc:
        raise CliError(f"feed live: {exc}", EXIT_USAGE) from None
    print(f"feed live: {args.venue} {', '.join(symbols)} from {watch.url} (market data only; "
          f"Ctrl-C stops)", flush=True)
    try:
        return uvloop.run(watch.run(args.duration, args.interval, args.connect_timeout))
    except KeyboardInterrupt:
        return 0
