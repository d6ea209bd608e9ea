"""``run.py bench sink [--fills N] [--batch B] [--json]``: the PostgreSQL sink's copy rate and
its resume after a database restart.

Cold path. Starts a throwaway PostgreSQL (Debian's package; tests/pgserver.py: temp dir, Unix
socket only, removed after), writes a journal of N fills with the journal's own record writer,
then:

  1. catch-up: one sink copies the whole journal (COPY batches of B, rows + cursor in one
     transaction); fills/s over wall time, and the sink process's CPU seconds;
  2. live with an outage: a sink tails a journal that grows at --rate fills/s for --seconds,
     PostgreSQL is stopped (pg_ctl stop -m fast) for --outage-s in the middle and started
     again; figures: records in the database, distinct, expected, and how long after the
     writer's end the sink had caught up.
"""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--fills", type=int, default=200_000, help="fills in the catch-up journal "
                   "(default 200000)")
    p.add_argument("--batch", type=int, default=50_000, help="records per COPY transaction "
                   "(default 50000, the config's default)")
    p.add_argument("--rate", type=float, default=50_000.0, help="fills/s the live journal "
                   "grows at (default 50000)")
    p.add_argument("--seconds", type=float, default=6.0, help="live phase length (default 6)")
    p.add_argument("--outage-s", type=float, default=1.5, help="database down for this long "
                   "in the live phase (default 1.5)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _fills(seq0, n, t0):
    import numpy as np

    from shm.records import EXEC_DTYPE, EXEC_FILL, SIDE_BUY, SIDE_SELL

    e = np.zeros(n, EXEC_DTYPE)
    e["ring_seq"] = np.arange(seq0, seq0 + n)
    e["kind"] = EXEC_FILL
    e["side"] = np.where(np.arange(n) % 2, SIDE_SELL, SIDE_BUY)
    e["liquidity"] = 1
    e["instrument_id"] = 1 + np.arange(n) % 4
    e["client_order_id"] = e["ring_seq"]
    e["venue_order_id"] = e["ring_seq"] * 3
    e["px_ticks"] = 6_000_000 + (np.arange(n) * 7) % 1000
    e["qty_lots"] = 1 + np.arange(n) % 5
    e["strategy_id"] = 1 + np.arange(n) % 3
    e["send_ts_ns"] = t0 + e["ring_seq"] * 1000
    e["venue_ts_ns"] = e["send_ts_ns"] - 500
    e["fee_e9"] = -(np.arange(n) % 3) * 1_000_001
    return e


def server_cpu_s(pg) -> float:
    """CPU seconds (user + system) of the PostgreSQL server: the postmaster and its backends."""
    import psutil

    try:
        pid = int((pg.data / "postmaster.pid").read_text().split()[0])
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except (OSError, ValueError, psutil.Error):
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main(args) -> int:
    import json
    import tempfile
    import threading
    import time
    from pathlib import Path

    import psycopg

    from market.recordfile import RecordFileWriter
    from pipeline.config import load_config
    from pipeline.pgsink import JournalSource, PostgresStore, Sink, strategy_names_of
    from shm.instruments import InstrumentTable
    from shm.records import EXEC_DTYPE, ORDER_DTYPE
    from tests.pgserver import PgServer

    cfg = load_config(None, build=False)
    insts = list(InstrumentTable.from_config(cfg))
    names = strategy_names_of(cfg)
    res = {"fills": args.fills, "batch": args.batch}
    quiet = (lambda m: None)
    with tempfile.TemporaryDirectory(prefix="hftfarm-bench-sink-") as tmp, PgServer() as pg:
        # 1. catch-up
        rd = Path(tmp) / "run-catchup"
        (rd / "journal").mkdir(parents=True)
        with RecordFileWriter(rd / "journal" / "exec-0.rec", EXEC_DTYPE, insts) as w:
            w.append(_fills(1, args.fills, time.time_ns()))
        with RecordFileWriter(rd / "journal" / "orders-0.rec", ORDER_DTYPE, insts):
            pass
        src = JournalSource(rd, names)
        sink = Sink(PostgresStore(pg.dsn, "bench/catchup", src), src,
                    batch_records=args.batch, log=quiet)
        sink._ensure()
        t, cpu, scpu = time.perf_counter(), time.process_time(), server_cpu_s(pg)
        while sink.once():
            pass
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        scpu = server_cpu_s(pg) - scpu
        with psycopg.connect(pg.dsn) as c:
            n = c.execute("SELECT count(*) FROM hft_fills WHERE run_id = 'bench/catchup'"
                          ).fetchone()[0]
        sink.store.close()
        res["catchup"] = {"copied": n, "wall_s": round(wall, 3), "sink_cpu_s": round(cpu, 3),
                          "fills_per_s": round(n / wall), "fills_per_sink_cpu_s":
                          round(n / cpu) if cpu else None, "server_cpu_s": round(scpu, 3),
                          "fills_per_total_cpu_s": round(n / (cpu + scpu)) if cpu + scpu
                          else None}
        # 2. live, with the database stopped and started again in the middle
        rd = Path(tmp) / "run-live"
        (rd / "journal").mkdir(parents=True)
        src = JournalSource(rd, names)
        sink = Sink(PostgresStore(pg.dsn, "bench/live", src, connect_timeout_s=2), src,
                    batch_records=args.batch, poll_s=0.05, backoff_max_s=0.5, log=quiet)
        stop = threading.Event()
        th = threading.Thread(target=sink.run, args=(stop.is_set, 120.0), daemon=True)
        w = RecordFileWriter(rd / "journal" / "exec-0.rec", EXEC_DTYPE, insts, buffered=False)
        th.start()
        t0, total, tick = time.perf_counter(), 0, 0.05
        down_at = args.seconds / 2 - args.outage_s / 2
        state = "up"
        while (now := time.perf_counter() - t0) < args.seconds:
            if state == "up" and now >= down_at:
                pg.stop()
                state = "down"
            elif state == "down" and now >= down_at + args.outage_s:
                pg.start()
                state = "again"
            want = int(now * args.rate)
            if want > total:
                w.append(_fills(total + 1, want - total, time.time_ns()))
                total = want
            time.sleep(tick)
        w.close()
        t_end = time.perf_counter()
        while time.perf_counter() - t_end < 120 and (sink.cursors is None or
                                                     not sink.caught_up()):
            time.sleep(0.05)
        lag = time.perf_counter() - t_end
        stop.set()
        th.join(130)
        with psycopg.connect(pg.dsn) as c:
            n, distinct = c.execute("SELECT count(*), count(DISTINCT ring_seq) FROM hft_fills "
                                    "WHERE run_id = 'bench/live'").fetchone()
        res["live"] = {"rate_per_s": args.rate, "seconds": args.seconds,
                       "outage_s": args.outage_s, "written": total, "in_db": n,
                       "distinct": distinct, "nothing_lost_nothing_doubled":
                       n == distinct == total, "db_failures_seen": sink.failures,
                       "caught_up_s_after_writer_end": round(lag, 2)}
        res["timescaledb"] = bool(sink.store.timescale)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        c, lv = res["catchup"], res["live"]
        print(f"PostgreSQL sink, COPY batches of {args.batch}")
        print(f"  catch-up: {c['copied']} fills in {c['wall_s']:.2f} s wall = "
              f"{c['fills_per_s']:,} fills/s (sink CPU {c['sink_cpu_s']:.2f} s = "
              f"{c['fills_per_sink_cpu_s']:,} fills per CPU-s; PostgreSQL server CPU "
              f"{c['server_cpu_s']:.2f} s; {c['fills_per_total_cpu_s']:,} fills per CPU-s of "
              "both)")
        print(f"  live at {lv['rate_per_s']:,.0f} fills/s for {lv['seconds']:g} s, database "
              f"down {lv['outage_s']:g} s mid-run: written {lv['written']}, in the database "
              f"{lv['in_db']} ({lv['distinct']} distinct); caught up "
              f"{lv['caught_up_s_after_writer_end']:.2f} s after the writer stopped; "
              f"{'nothing lost, nothing doubled' if lv['nothing_lost_nothing_doubled'] else 'MISMATCH'}")
        print(f"  TimescaleDB hypertables: {'yes' if res['timescaledb'] else 'no (not installed)'}")
    return 0 if res["live"]["nothing_lost_nothing_doubled"] else 1
