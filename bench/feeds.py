"""``run.py bench feeds [--json]``: venue feed handlers on the shared recordings.

Cold path (a benchmark, not collected by pytest). For each venue recording, frames are loaded
into memory as the text a websocket delivers, then fed to a fresh handler per pass, passes
repeating until ``--min-seconds``. Reported per venue and per message category: messages/s
(count / summed per-call time), wall-clock frames/s of the whole loop (no per-call timer), and
per-message parse+apply latency p50/p99 (perf_counter_ns around each ``feed`` call; the timer
itself costs ~50-100 ns and is included).

Binance runs twice: "fast" is the numba fast path on the raw bytes
(feeds.binance_fast.BinanceFastHandler, what ``make_handler("binance", ...)`` returns: the
default), which falls back to the exact path for snapshots, gaps and anything surprising, and
"exact" the exact Python path alone (feeds.binance.BinanceHandler, orjson; ``exact=True``); both
emit identical records. In ``--json`` the exact run keeps its historical key "ours" (for the
other venues "ours" is their only handler, the default) and every run says which handler it
measured ("handler") and whether it is the factory's default ("default").
On a loaded machine the per-call timers catch preemptions, so next to the sum-based messages/s
the best pass's figure is reported too, and every figure can be read against ``orjson.loads``
alone on the same frames (calibration, and the ratio to it). The fast path loads a book into its
array book on the first diff after each snapshot; those frames (4 per pass here, one per symbol)
are reported as their own category, like cryptofeed's first diff per symbol, which builds its
book from the REST snapshot, and so are the diffs it hands to the exact path (those buffered
before a snapshot arrives). "depth+trade" is then the synced steady state; "all frames" adds
every depth and trade frame of the recording, whatever path it took.

Peer: cryptofeed (PyPI), in the same run on the same frames, where it can be driven offline:
its symbol table is pre-set (it would fetch it over the network) and its REST snapshot read is
answered from the recording; its ``message_handler`` is awaited per frame with no-op callbacks.
cryptofeed 2.4.1 speaks Binance spot and Kraken v1 (the recordings' protocols); its Coinbase
class speaks only Advanced Trade, and the only Coinbase recording is of the Exchange feed, so
there is no Coinbase peer figure. cryptofeed is a benchmark-only dependency: it is listed in
requirements-bench.txt and installed into the running interpreter's environment on demand
(``--no-install`` skips it).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CASES = {
    "binance": ["binance/BINANCE.ws.1.0", "binance/BINANCE.http.0.0"],
    "coinbase": ["coinbase/COINBASE.ws.28.0"],
    "kraken-v1": ["kraken/KRAKEN.ws.50.0"],
}


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--min-seconds", type=float, default=2.0,
                   help="minimum measuring time per venue and implementation")
    p.add_argument("--venue", action="append", choices=list(CASES),
                   help="only these venues (repeatable)")
    p.add_argument("--data", default=str(DATA), help="directory of the shared recordings")
    p.add_argument("--no-peer", action="store_true", help="skip cryptofeed")
    p.add_argument("--no-install", action="store_true",
                   help="do not pip-install cryptofeed if it is missing")
    p.add_argument("--stage", action="store_true",
                   help="also the Binance feed stage's path: frame -> handler -> md ring "
                   "(msg/s, p99) and receive -> read in another process (bench/feed_stage.py)")
    p.add_argument("--stage-rate", type=float, default=1000.0,
                   help="frames/s for the receive -> read measure (default 1000)")
    p.add_argument("--stage-idle", default="backoff",
                   choices=("busy-spin", "yield", "backoff", "blocking"),
                   help="the reader's idle strategy (default backoff, the stages' default)")


def _category(venue: str, kind: str, data: str) -> str:
    if kind == "rest":
        return "rest_snapshot"
    if venue == "binance":
        if '"depthUpdate"' in data:
            return "depth"
        if '"e":"trade"' in data or '"aggTrade"' in data:
            return "trade"
        if '"bookTicker"' in data or '@bookTicker' in data:
            return "book_ticker"
        return "other"
    if venue == "coinbase":
        if '"l2update"' in data:
            return "depth"
        if '"match"' in data or '"last_match"' in data:
            return "trade"
        if '"snapshot"' in data:
            return "snapshot"
        return "other"
    if data.startswith("["):
        if '"trade"' in data:
            return "trade"
        if '"as":' in data:
            return "snapshot"
        if '"book-' in data:
            return "depth"
    return "other"


def _summary(times_ns: dict, wall_s: float, frames_per_pass: int, passes: int) -> dict:
    import numpy as np
    out = {"passes": passes, "frames_per_pass": frames_per_pass,
           "loop_frames_per_s": round(frames_per_pass * passes / wall_s) if wall_s else 0,
           "by_category": {}}
    allt = []
    for cat, ts in sorted(times_ns.items()):
        a = np.asarray(ts, dtype=np.int64)
        allt.append(a)
        out["by_category"][cat] = {
            "messages": int(len(a) // passes),
            "msgs_per_s": round(len(a) / (a.sum() / 1e9)) if a.sum() else 0,
            "p50_us": round(float(np.percentile(a, 50)) / 1e3, 2),
            "p99_us": round(float(np.percentile(a, 99)) / 1e3, 2),
        }
    every = [np.asarray(t, dtype=np.int64) for c, t in times_ns.items()
             if c.startswith(("depth", "trade"))]
    if every:
        a = np.concatenate(every)
        out["depth_trade_all_frames"] = {
            "msgs_per_s": round(len(a) / (a.sum() / 1e9)),
            "p50_us": round(float(np.percentile(a, 50)) / 1e3, 2),
            "p99_us": round(float(np.percentile(a, 99)) / 1e3, 2)}
    dt = [t for c, t in times_ns.items() if c in ("depth", "trade")]
    if dt:
        a = np.concatenate([np.asarray(t, dtype=np.int64) for t in dt])
        # every pass feeds the same frames, so each category's timings reshape to
        # (passes, per pass); the least disturbed pass approximates an unloaded core
        per_pass = sum(np.asarray(t, dtype=np.int64).reshape(passes, -1).sum(axis=1)
                       for t in dt)
        out["depth_trade"] = {"msgs_per_s": round(len(a) / (a.sum() / 1e9)),
                              "best_pass_msgs_per_s": round(len(a) / passes
                                                            / (per_pass.min() / 1e9)),
                              "p50_us": round(float(np.percentile(a, 50)) / 1e3, 2),
                              "p99_us": round(float(np.percentile(a, 99)) / 1e3, 2)}
    return out


def bench_ours(venue: str, frames, min_s: float, fast: bool = False) -> dict:
    import time

    from feeds.meta import derive_instruments
    from feeds.meta import make_handler as make_default
    from feeds.recording import KIND_REST, KIND_WS

    if fast:
        from feeds.binance_fast import BinanceFastHandler

        def make_handler(_venue, inst):
            return BinanceFastHandler(inst)
    else:
        def make_handler(venue, inst):
            return make_default(venue, inst, exact=True)
    inst = derive_instruments(venue, frames)
    make_handler(venue, inst).feed(b"{}", 0)      # load (or compile) the kernels first
    work = [(f.kind, f.url, f.data, f.ts_ns, _category(venue, f.kind, f.data))
            for f in frames if f.kind in (KIND_WS, KIND_REST)]
    times: dict[str, list[int]] = {}
    clock = time.perf_counter_ns
    passes = 0
    wall = 0.0
    t_end = time.perf_counter() + min_s
    while time.perf_counter() < t_end or passes < 2:
        h = make_handler(venue, inst)
        feed = h.feed
        feed_rest = h.feed_rest
        # pass 1 of each pair: per-call timers; pass 2: the bare loop for frames/s
        for kind, url, data, ts, cat in work:
            if fast:
                a0 = h.adoptions
                f0 = h.fast_frames()
            t0 = clock()
            if kind == "ws":
                feed(data, ts)
            else:
                feed_rest(url, data, ts)
            dt = clock() - t0
            if fast and kind == "ws":
                if h.adoptions != a0:
                    # this frame also loaded a fresh snapshot into the array book (once per
                    # snapshot and symbol): apart, as cryptofeed's snapshot-building call
                    cat += "_with_snapshot_load"
                elif h.fast_frames() == f0:
                    cat += "_exact_path"     # declined: diffs buffered before the snapshot
            times.setdefault(cat, []).append(dt)
        h = make_handler(venue, inst)
        feed = h.feed
        feed_rest = h.feed_rest
        t0 = time.perf_counter()
        for kind, url, data, ts, _cat in work:
            if kind == "ws":
                feed(data, ts)
            else:
                feed_rest(url, data, ts)
        wall += time.perf_counter() - t0
        passes += 1
    out = _summary(times, wall, len(work), passes)
    out["handler"] = type(h).__name__
    out["default"] = type(make_default(venue, inst)) is type(h)
    # calibration: the same frames through orjson.loads alone (C code, no handler), so
    # figures from a loaded or slow machine can be read relative to it
    import numpy as np
    import orjson
    ws = [w[2] for w in work if w[0] == "ws"]
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < min(0.5, min_s):
        for data in ws:
            orjson.loads(data)
        n += len(ws)
    out["orjson_loads_per_s"] = round(n / (time.perf_counter() - t0))
    dtw = [w[2] for w in work if w[0] == "ws" and w[4] in ("depth", "trade")]
    if dtw:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < min(0.5, min_s):
            for data in dtw:
                orjson.loads(data)
            n += len(dtw)
        rate = n / (time.perf_counter() - t0)
        out["orjson_loads_depth_trade_per_s"] = round(rate)
        # per call, timed like the handlers: medians are what a loaded machine leaves intact
        per = []
        for data in dtw * 20:
            t1 = clock()
            orjson.loads(data)
            per.append(clock() - t1)
        out["orjson_loads_depth_trade_p50_us"] = round(float(np.median(per)) / 1e3, 2)
        out["depth_trade"]["ratio_to_orjson_loads"] = round(
            out["depth_trade"]["msgs_per_s"] / rate, 2)
        out["depth_trade"]["best_pass_ratio_to_orjson_loads"] = round(
            out["depth_trade"]["best_pass_msgs_per_s"] / rate, 2)
    if fast:
        out["fast_path_frames"] = h.fast_frames()
    st = h.stats
    out["check"] = {"gaps": st.gaps, "checksum_ok": st.checksum_ok,
                    "checksum_fail": st.checksum_fail, "parse_errors": st.parse_errors,
                    "oracle_match": st.oracle_match, "oracle_mismatch": st.oracle_mismatch}
    return out


def _ensure_cryptofeed(allow_install: bool) -> str | None:
    try:
        import cryptofeed  # noqa: F401
        return None
    except ImportError:
        pass
    if not allow_install:
        return "cryptofeed is not installed (--no-install)"
    import subprocess
    req = ROOT / "requirements-bench.txt"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(req)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"pip install -r {req.name} failed: {r.stderr.strip()[-300:]}"
    try:
        import cryptofeed  # noqa: F401
        return None
    except ImportError as exc:
        return f"cryptofeed installed but does not import: {exc}"


def _cf_symbol(sym: str, quotes=("USDT", "EUR", "ETH", "BTC", "USD", "XBT", "CHF", "GBP")):
    from cryptofeed.symbols import Symbol
    if "/" in sym:
        b, q = sym.split("/")
        return Symbol(b, q)
    for q in quotes:
        if sym.endswith(q) and len(sym) > len(q):
            return Symbol(sym[: -len(q)], q)
    raise ValueError(sym)


def bench_cryptofeed(venue: str, frames, min_s: float) -> dict:
    import asyncio
    import logging
    import time

    from cryptofeed.defines import L2_BOOK, TICKER, TRADES
    from cryptofeed.symbols import Symbols

    from feeds.binance import _query_param
    from feeds.meta import derive_instruments

    logging.getLogger("feedhandler").setLevel(logging.ERROR)
    inst = derive_instruments(venue, frames)
    if venue == "binance":
        from cryptofeed.exchanges import Binance as Cls
    elif venue == "kraken-v1":
        from cryptofeed.exchanges import Kraken as Cls
    else:
        raise ValueError(venue)
    mapping = {_cf_symbol(s).normalized: s for s in inst}
    Symbols.set(Cls.id, mapping, {})
    rest = {}
    work = []
    for f in frames:
        if f.kind == "rest":
            rest[_query_param(f.url, "symbol")] = f.data
        elif f.kind == "ws":
            work.append((f.data, f.ts_ns / 1e9, _category(venue, f.kind, f.data)))
    counts = {"books": 0, "trades": 0, "errors": 0}

    async def on_book(*_a, **_k):
        counts["books"] += 1

    async def on_trade(*_a, **_k):
        counts["trades"] += 1

    async def run():
        times: dict[str, list[int]] = {}
        clock = time.perf_counter_ns
        passes = 0
        wall = 0.0
        t_end = time.perf_counter() + min_s
        while time.perf_counter() < t_end or passes < 2:
            for timed in (True, False):
                kw = {"checksum_validation": True} if venue == "kraken-v1" else {}
                feed = Cls(symbols=list(mapping), channels=[L2_BOOK, TRADES, TICKER],
                           callbacks={L2_BOOK: on_book, TRADES: on_trade, TICKER: on_trade},
                           **kw)

                async def read(url, *_a, **_k):
                    return rest[_query_param(url, "symbol")]
                feed.http_conn.read = read
                handler = feed.message_handler
                seen: set = set()
                t0w = time.perf_counter()
                for data, ts, cat in work:
                    t0 = clock()
                    try:
                        await handler(data, None, ts)
                    except Exception:  # noqa: BLE001 - counted: the peer's own verdicts
                        counts["errors"] += 1
                    if timed:
                        dt = clock() - t0
                        if cat == "depth" and venue == "binance":
                            sym = data[data.find('"s":"') + 5:].split('"', 1)[0]
                            if sym not in seen:     # this call also fetched and built the
                                seen.add(sym)       # REST snapshot: report it apart
                                cat = "depth_with_snapshot"
                        times.setdefault(cat, []).append(dt)
                if not timed:
                    wall += time.perf_counter() - t0w
            passes += 1
        return times, wall, passes

    times, wall, passes = asyncio.run(run())
    out = _summary(times, wall, len(work), passes)
    out["callbacks"] = {k: v // (2 * passes) for k, v in counts.items()}
    return out


def main(args) -> int:
    import gc
    import json
    import platform

    from feeds.recording import read_recordings

    data = Path(args.data)
    venues = args.venue or list(CASES)
    res = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg_1m": round(os.getloadavg()[0], 2)},
           "venues": {}}
    peer_problem = None if args.no_peer else _ensure_cryptofeed(not args.no_install)
    if args.no_peer:
        peer_problem = "skipped (--no-peer)"
    for venue in venues:
        files = [str(data / f) for f in CASES[venue]]
        for f in files:
            if not Path(f).is_file():
                from pipeline.exits import CliError
                raise CliError(f"recording not found: {f}; --data names the directory that "
                               f"holds {venue}/ (the shared recordings)", 2)
        frames = list(read_recordings(files))
        # long-lived objects (frames, instrument tables) out of the collector's way, as a
        # feed process would do after start-up; applies to both implementations alike
        gc.collect()
        gc.freeze()
        entry = {"ours": bench_ours(venue, frames, args.min_seconds)}
        if venue == "binance":
            entry["fast"] = bench_ours(venue, frames, args.min_seconds, fast=True)
        if venue == "coinbase":
            entry["cryptofeed"] = {"not_run": "cryptofeed 2.4.1's Coinbase feed speaks only "
                                   "Advanced Trade; the recording is the Exchange feed"}
        elif peer_problem:
            entry["cryptofeed"] = {"not_run": peer_problem}
        else:
            entry["cryptofeed"] = bench_cryptofeed(venue, frames, args.min_seconds)
        res["venues"][venue] = entry
    if args.stage:
        from bench.feed_stage import bench_stage

        gc.unfreeze()
        res["stage"] = bench_stage(str(data), args.min_seconds, args.stage_rate,
                                   args.stage_idle)
    res["machine"]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["machine"]
    print(f"feeds benchmark: python {m['python']}, {m['cpus']} CPUs, load average "
          f"{m['loadavg_1m']} -> {m['loadavg_1m_after']} (one core per run)")
    for venue, entry in res["venues"].items():
        for impl in ("fast", "ours", "cryptofeed"):
            if impl not in entry:
                continue
            r = entry[impl]
            # the printed label: "exact" where the venue also has a fast path, and which of
            # them make_handler returns
            label = "exact" if impl == "ours" and "fast" in entry else impl
            if r.get("default") and "fast" in entry:
                label += " (default)"
            if "not_run" in r:
                print(f"{venue:10s} {label:15s} not run: {r['not_run']}")
                continue
            dt = r.get("depth_trade", {})
            if "orjson_loads_per_s" in r:
                print(f"{venue:10s} calibration: orjson.loads alone on these frames "
                      f"{r['orjson_loads_per_s']:,}/s")
            print(f"{venue:10s} {label:15s} loop {r['loop_frames_per_s']:>9,} frames/s   "
                  f"depth+trade {dt.get('msgs_per_s', 0):>9,} msg/s  p50 "
                  f"{dt.get('p50_us', 0):7.2f} us  p99 {dt.get('p99_us', 0):7.2f} us")
            al = r.get("depth_trade_all_frames")
            if al and impl != "ours":
                print(f"{'':27s}all depth+trade frames {al['msgs_per_s']:>9,} msg/s  p50 "
                      f"{al['p50_us']:7.2f} us  p99 {al['p99_us']:7.2f} us")
            if "best_pass_msgs_per_s" in dt:
                ratio = ""
                if "ratio_to_orjson_loads" in dt:
                    ratio = (f"  x orjson.loads alone (on depth+trade frames, "
                             f"{r['orjson_loads_depth_trade_per_s']:,}/s, p50 "
                             f"{r['orjson_loads_depth_trade_p50_us']} us): "
                             f"{dt['ratio_to_orjson_loads']} (best pass "
                             f"{dt['best_pass_ratio_to_orjson_loads']})")
                print(f"{'':27s}best pass {dt['best_pass_msgs_per_s']:>9,} msg/s{ratio}")
            for cat, c in r["by_category"].items():
                print(f"{'':27s}{cat:20s} {c['messages']:>6} msgs  {c['msgs_per_s']:>9,} msg/s"
                      f"  p50 {c['p50_us']:8.2f} us  p99 {c['p99_us']:8.2f} us")
    if "stage" in res:
        from bench.feed_stage import format_stage

        print(format_stage(res["stage"]))
    return 0
