"""``run.py bench backtest [--json]``: book maintenance and full backtests in events/s, and the
same replayed data through hftbacktest in the same run. Cold path (a benchmark, not a test).

Figures:
  book_lobster / book_sim   market/book.py applying records (LOBSTER replay tiled to --copies
                            copies; simulated venues' output), records/s
  backtest_sim              the market maker (mm_btc) on the simulated venues: market records
                            + exec reports through host step, risk checks and accounting, per s
  backtest_portfolio        every enabled strategy of the config together (the default config:
                            mm_btc, pairs_btc_eth, arb_btc) on the same venues for the same
                            time: one market, one risk state; events = market records + every
                            strategy's exec reports
  backtest_replay           the market maker on the tiled LOBSTER replay (queue model)
  hftbacktest               the same tiled replay through hftbacktest 2.4.4 with a comparable
                            market-making loop (bench/_hbt_mm.py), events/s, and our ratio
  sim_30min                 30 simulated minutes, 4 instruments on 2 venues (config.toml),
                            wall seconds (target < 10 s)

Each figure is given per wall second and per CPU second of the measuring thread: on a shared,
oversubscribed machine CPU time is the figure for one core of our own. The two sim backtests
run ``--repeat`` times each (alternating); their figures are the median run, with the best
beside it (``*_best``): on a noisy machine the best is the least disturbed. hftbacktest runs in its
own virtualenv (.venv/hbt: it pins numpy < 2.3, hftfarm runs numpy 2.4), as a subprocess;
``--install-hftbacktest`` creates it (see HBT_REQUIREMENT).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HBT_PYTHON = Path(os.environ.get("HFTFARM_HBT_PYTHON", ROOT / ".venv" / "hbt" / "bin" / "python"))
HBT_REQUIREMENT = "hftbacktest==2.4.4"
BENCH_EVENT_RATE = 1000.0
LOBSTER = ("AAPL_2012-06-21_34200000_57600000_message_10.csv",
           "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv")


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--copies", type=int, default=500,
                   help="times the 999-message LOBSTER sample is replayed back to back")
    p.add_argument("--sim-seconds", type=float, default=120.0,
                   help="simulated seconds of the market-maker backtest on the sim venues")
    p.add_argument("--event-rate", type=float, default=BENCH_EVENT_RATE,
                   help=f"background events per second per venue of the sim backtests "
                   f"(default {BENCH_EVENT_RATE:g}: the load these figures have always been "
                   f"measured at; the config's calibrated rate is a thin market's few events "
                   f"per second, too few to measure throughput)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of each sim backtest (median and best are reported)")
    p.add_argument("--sim-only", action="store_true",
                   help="stop after the sim backtests (no LOBSTER replay, hftbacktest or long "
                   "run)")
    p.add_argument("--long-minutes", type=float, default=30.0,
                   help="simulated minutes of the long run (0 skips it)")
    p.add_argument("--install-hftbacktest", action="store_true",
                   help=f"create .venv/hbt with {HBT_REQUIREMENT} if it is missing")


def _hbt_status() -> str | None:
    """None if hftbacktest is importable in its venv, else how to install it."""
    how = (f"python3.11 -m venv .venv/hbt && .venv/hbt/bin/pip install {HBT_REQUIREMENT} "
           f"(or run.py bench backtest --install-hftbacktest)")
    if not HBT_PYTHON.exists():
        return f"hftbacktest venv not found at {HBT_PYTHON}: {how}"
    r = subprocess.run([str(HBT_PYTHON), "-c", "import hftbacktest"], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return f"hftbacktest not importable with {HBT_PYTHON}: {how}"
    return None


def _install_hbt() -> None:
    venv = HBT_PYTHON.parent.parent
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(HBT_PYTHON), "-m", "pip", "install", "-q", HBT_REQUIREMENT], check=True)


def tile_lobster(recs, copies: int):
    """The LOBSTER replay ``copies`` times back to back. Copies after the first start with
    level removals of the previous copy's final book and the snapshot levels as plain updates
    (no SNAP_START/END), so a book and hftbacktest's depth both stay consistent."""
    import numpy as np

    from market.book import L2Book
    from shm.records import MFLAG_SNAPSHOT, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START

    book = L2Book(1, 64)
    book.apply(recs)
    final = [(side, px) for side in (0, 1) for px, _q in book.levels(1, side)]
    snap = recs[(recs["flags"] & MFLAG_SNAPSHOT) != 0]
    body = recs[(recs["flags"] & MFLAG_SNAPSHOT) == 0]
    body = body[(body["kind"] != MSG_SNAP_START) & (body["kind"] != MSG_SNAP_END)]
    removals = np.zeros(len(final), dtype=recs.dtype)
    removals["kind"] = MSG_LEVEL
    removals["instrument_id"] = 1
    removals["side"] = [s + 1 for s, _ in final]
    removals["px_ticks"] = [p for _, p in final]
    head = np.concatenate([removals, snap])
    head["flags"] &= ~np.uint16(MFLAG_SNAPSHOT)
    t_first = int(recs["exch_ts_ns"][0])
    head["exch_ts_ns"] = head["recv_ts_ns"] = t_first
    span = int(recs["exch_ts_ns"][-1]) - t_first + 1_000_000_000
    later = np.concatenate([head, body])
    out = [recs]
    for k in range(1, copies):
        c = later.copy()
        c["exch_ts_ns"] += k * span
        c["recv_ts_ns"] += k * span
        out.append(c)
    return np.concatenate(out)


def _rate(n, s):
    return n / s if s > 0 else float("nan")


def _sim_figures(results) -> dict:
    """Figures of repeated runs of one sim backtest: the median run by CPU time, and the best."""
    ordered = sorted(results, key=lambda r: r.counters["cpu_s"])
    med, best = ordered[len(ordered) // 2], ordered[0]
    c = med.counters
    out = {"runs": len(results), "events": c["events"],
           "venue_events": med.venue_counters["events"], "wall_s": c["wall_s"],
           "cpu_s": c["cpu_s"], "events_per_wall_s": _rate(c["events"], c["wall_s"]),
           "events_per_cpu_s": _rate(c["events"], c["cpu_s"]),
           "venue_events_per_cpu_s": _rate(med.venue_counters["events"], c["cpu_s"]),
           "events_per_cpu_s_best": _rate(best.counters["events"], best.counters["cpu_s"]),
           "events_per_wall_s_best": _rate(best.counters["events"],
                                           min(r.counters["wall_s"] for r in results)),
           "cpu_s_all": [r.counters["cpu_s"] for r in results],
           "fills": c["fills"], "simulated_s": c["simulated_s"]}
    if hasattr(med, "strategies"):
        out["strategies"] = list(med.strategies)
        out["fills_by_strategy"] = {n: p.counters["fills"] for n, p in med.strategies.items()}
    return out


def main(args) -> int:
    import numpy as np

    from strategies.backtest import run_backtest
    from market.book import bench_book_maintenance
    from market.lobster import convert, lobster_instrument
    from market.recordfile import RecordFileWriter
    from market.sim import SimVenue
    from pipeline.config import load_config
    from pipeline.exits import CliError
    from shm.instruments import InstrumentTable
    from shm.records import MARKET_DTYPE

    cfg = load_config(args.config)
    data_dir = ROOT.parent / "shared" / "data" / "lobster"
    if not (data_dir / LOBSTER[0]).is_file():
        raise CliError(f"LOBSTER sample not found in {data_dir}")
    res: dict = {"machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}}
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))

    recs, _meta = convert(data_dir / LOBSTER[0], data_dir / LOBSTER[1], 10)
    tiled = tile_lobster(recs, max(1, args.copies))
    say(f"LOBSTER AAPL sample x {args.copies}: {len(tiled):,} records")
    for clock in ("wall", "cpu"):
        r = bench_book_maintenance(tiled, 1, 64, clock=clock)
        res.setdefault("book_lobster", {})[f"records_per_{clock}_s"] = r
    say(f"book maintenance, LOBSTER replay: {res['book_lobster']['records_per_wall_s'] / 1e6:.2f}"
        f" M records/s wall, {res['book_lobster']['records_per_cpu_s'] / 1e6:.2f} M/CPU-s")

    table = InstrumentTable.from_config(cfg)
    sim_md = SimVenue(cfg, list(table), event_rate_per_s=2000.0).run(60.0)
    for clock in ("wall", "cpu"):
        r = bench_book_maintenance(sim_md, len(table), 256, clock=clock)
        res.setdefault("book_sim", {})[f"records_per_{clock}_s"] = r
    res["book_sim"]["records"] = len(sim_md)
    say(f"book maintenance, sim venues ({len(sim_md):,} records): "
        f"{res['book_sim']['records_per_wall_s'] / 1e6:.2f} M records/s wall, "
        f"{res['book_sim']['records_per_cpu_s'] / 1e6:.2f} M/CPU-s")

    runs: dict = {"backtest_sim": [], "backtest_portfolio": []}
    for _ in range(max(1, args.repeat)):
        for key, which in (("backtest_sim", "mm_btc"), ("backtest_portfolio", None)):
            runs[key].append(run_backtest(cfg, which, duration_s=args.sim_seconds,
                                          event_rate_per_s=args.event_rate))
    for key, results in runs.items():
        res[key] = _sim_figures(results)
    b = res["backtest_sim"]
    say(f"backtest mm_btc on sim venues, {args.sim_seconds:g} s: {b['events']:,} events "
        f"(+{b['venue_events']:,} background venue events) in {b['wall_s']:.2f} s wall / "
        f"{b['cpu_s']:.2f} CPU-s: {b['events_per_wall_s'] / 1e6:.2f} M/s wall, "
        f"{b['events_per_cpu_s'] / 1e6:.2f} M/CPU-s (median of {b['runs']}; best "
        f"{b['events_per_cpu_s_best'] / 1e6:.2f} M/CPU-s)")
    b = res["backtest_portfolio"]
    say(f"backtest portfolio ({', '.join(b['strategies'])}) on sim venues, "
        f"{args.sim_seconds:g} s: {b['events']:,} events (+{b['venue_events']:,} background "
        f"venue events) in {b['wall_s']:.2f} s wall / {b['cpu_s']:.2f} CPU-s: "
        f"{b['events_per_wall_s'] / 1e6:.2f} M/s wall, {b['events_per_cpu_s'] / 1e6:.2f} "
        f"M/CPU-s (median of {b['runs']}; best {b['events_per_cpu_s_best'] / 1e6:.2f} "
        f"M/CPU-s)")
    if args.sim_only:
        res["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
        if args.json:
            print(json.dumps(res, indent=2))
        return 0

    with tempfile.TemporaryDirectory(prefix="hftfarm-bench-") as tmp:
        path = Path(tmp) / "aapl_tiled.rec"
        with RecordFileWriter(path, MARKET_DTYPE, [lobster_instrument("AAPL")]) as w:
            w.append(tiled)
        bt = run_backtest(cfg, "mm_btc", data=path)
        c = bt.counters
        res["backtest_replay"] = {"events": c["events"], "md_records": c["md_records"],
                                  "records_per_wall_s": _rate(c["md_records"], c["wall_s"]),
                                  "records_per_cpu_s": _rate(c["md_records"], c["cpu_s"]),
                                  "wall_s": c["wall_s"],
                                  "cpu_s": c["cpu_s"],
                                  "events_per_wall_s": _rate(c["events"], c["wall_s"]),
                                  "events_per_cpu_s": _rate(c["events"], c["cpu_s"]),
                                  "fills": c["fills"], "queue_model": cfg.backtest.queue_model}
        b = res["backtest_replay"]
        say(f"backtest mm_btc on the LOBSTER replay ({cfg.backtest.queue_model} queue): "
            f"{b['events']:,} events ({b['md_records']:,} market records) in {b['wall_s']:.2f} s "
            f"wall / {b['cpu_s']:.2f} CPU-s: {b['events_per_wall_s'] / 1e6:.2f} M events/s wall, "
            f"{b['events_per_cpu_s'] / 1e6:.2f} M/CPU-s; {b['records_per_cpu_s'] / 1e6:.2f} M "
            f"records/CPU-s; {b['fills']} fills")

        missing = _hbt_status()
        if missing and args.install_hftbacktest:
            _install_hbt()
            missing = _hbt_status()
        if missing:
            res["hftbacktest"] = {"skipped": missing}
            say(f"hftbacktest: skipped: {missing}")
        else:
            cols = Path(tmp) / "cols.npz"
            np.savez(cols, kind=tiled["kind"], side=tiled["side"], exch_ts=tiled["exch_ts_ns"],
                     px_ticks=tiled["px_ticks"], qty=tiled["qty_lots"])
            v = cfg.venues[0]
            r = subprocess.run([str(HBT_PYTHON), str(ROOT / "bench" / "_hbt_mm.py"), str(cols),
                                "0.0001", str(int(v.md_latency_us * 1000)),
                                str(int(v.order_latency_us * 1000)), str(v.maker_fee_bps / 1e4),
                                str(v.taker_fee_bps / 1e4)], capture_output=True, text=True)
            if r.returncode != 0:
                raise CliError(f"hftbacktest run failed: {r.stderr.strip()[-800:]}")
            h = json.loads(r.stdout.strip().splitlines()[-1])
            h["events_per_wall_s"] = _rate(h["events"], h["wall_s"])
            h["events_per_cpu_s"] = _rate(h["events"], h["cpu_s"])
            # Same basis on both sides: recorded market records replayed per second (ours also
            # delivers exec reports as events and STATUS records that hftbacktest has no rows
            # for; those are in our "events" but not in this ratio).
            ours = res["backtest_replay"]
            h["ours_over_hftbacktest_wall"] = ours["records_per_wall_s"] / h["events_per_wall_s"]
            h["ours_over_hftbacktest_cpu"] = ours["records_per_cpu_s"] / h["events_per_cpu_s"]
            res["hftbacktest"] = h
            say(f"hftbacktest {HBT_REQUIREMENT.split('==')[1]}, same replay, comparable MM loop: "
                f"{h['events']:,} events in {h['wall_s']:.2f} s wall / {h['cpu_s']:.2f} CPU-s: "
                f"{h['events_per_wall_s'] / 1e6:.2f} M/s wall, {h['events_per_cpu_s'] / 1e6:.2f}"
                f" M/CPU-s -> ours/hftbacktest (market records/s) = "
                f"{h['ours_over_hftbacktest_wall']:.2f}x wall, "
                f"{h['ours_over_hftbacktest_cpu']:.2f}x CPU")

    if args.long_minutes > 0:
        t0 = time.perf_counter()
        bt = run_backtest(cfg, "mm_btc", duration_s=args.long_minutes * 60.0,
                          event_rate_per_s=args.event_rate)
        total = time.perf_counter() - t0
        c = bt.counters
        res["sim_long"] = {"simulated_min": args.long_minutes, "wall_s": c["wall_s"],
                           "cpu_s": c["cpu_s"], "compile_s": c["compile_s"],
                           "total_with_setup_s": total, "events": c["events"],
                           "venue_events": bt.venue_counters["events"],
                           "instruments": len(table), "venues": len(cfg.venues),
                           "event_rate_per_venue": args.event_rate}
        b = res["sim_long"]
        say(f"{args.long_minutes:g} simulated minutes, {len(table)} instruments on "
            f"{len(cfg.venues)} venues ({args.event_rate:g} background events/s/venue, "
            f"{b['venue_events']:,} venue events): {b['wall_s']:.2f} s wall, {b['cpu_s']:.2f} "
            f"CPU-s (+{b['compile_s']:.1f} s compile; target < 10 s)")
    res["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(res, indent=2))
    return 0
