"""PostgreSQL sink: copies a run's journal (orders, execution reports = fills and the rest) and
its PnL / latency snapshots into PostgreSQL in batches with COPY. Runs in a process of its own
(``python -m pipeline.pgsink``, spawned by the controller when ``[sink.postgres] enabled``, or
``run.py sink RUN_DIR`` by hand); cold path, never on the data path.

Off the hot path by construction: it only *reads* the journal files the journal stage writes
(stages/journal.py) and asks the controller's control socket for ``status`` / ``latency`` (as
``run.py status`` does) about once a second. Nothing waits for it: a sink that falls behind,
or whose database is down, leaves the journal growing on disk and catches up later.

Nothing lost, nothing twice: each batch's rows and the stream cursors after it commit in one
transaction (pipeline/sink_cursor.py); after a failure the sink reconnects with backoff, reloads
the cursors from the database and resumes from the journal. PnL and latency snapshots are first
appended to ``<run dir>/sink/pnl.jsonl`` and ``latency.jsonl`` (the sink's own journal), then
copied the same way, so those survive an outage too.

The DSN comes from the environment variable ``[sink.postgres] dsn_env`` or from the file
``dsn_file``, which must be mode 0600 (refused otherwise); it is never logged or printed.
Tables are created if missing; with TimescaleDB installed they become hypertables.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from pipeline.sink_cursor import Cursor, Span, step

REC_STREAMS = {"orders": "orders", "exec": "exec"}     # stream -> journal file prefix
SPOOL_STREAMS = ("pnl", "latency")

SCHEMA = """
CREATE TABLE IF NOT EXISTS hft_orders (
  run_id text NOT NULL, ring_seq bigint NOT NULL, send_ts_ns bigint NOT NULL,
  ts timestamptz GENERATED ALWAYS AS (to_timestamp(send_ts_ns / 1e9::float8)) STORED,
  kind text, side text, order_type text, instrument text, strategy text,
  client_order_id bigint, px_ticks bigint, tick_size numeric,
  price numeric GENERATED ALWAYS AS (px_ticks * tick_size) STORED,
  qty_lots bigint, lot_size numeric,
  qty numeric GENERATED ALWAYS AS (qty_lots * lot_size) STORED,
  reject_reason text, cause_recv_ts_ns bigint,
  PRIMARY KEY (run_id, ring_seq, send_ts_ns));
CREATE TABLE IF NOT EXISTS hft_executions (
  run_id text NOT NULL, ring_seq bigint NOT NULL, send_ts_ns bigint NOT NULL,
  ts timestamptz GENERATED ALWAYS AS (to_timestamp(send_ts_ns / 1e9::float8)) STORED,
  venue_ts_ns bigint, kind text, side text, liquidity text, instrument text, strategy text,
  client_order_id bigint, venue_order_id bigint, px_ticks bigint, tick_size numeric,
  price numeric GENERATED ALWAYS AS (px_ticks * tick_size) STORED,
  qty_lots bigint, lot_size numeric,
  qty numeric GENERATED ALWAYS AS (qty_lots * lot_size) STORED,
  fee_e9 bigint, fee numeric GENERATED ALWAYS AS (fee_e9 / 1000000000.0) STORED,
  reject_reason text, cause_recv_ts_ns bigint, trade_id bigint,
  PRIMARY KEY (run_id, ring_seq, send_ts_ns));
CREATE OR REPLACE VIEW hft_fills AS
  SELECT * FROM hft_executions WHERE kind IN ('fill', 'partial');
CREATE TABLE IF NOT EXISTS hft_pnl (
  run_id text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL, strategy text,
  pnl float8, realized float8, unrealized float8, fees float8, positions jsonb,
  PRIMARY KEY (run_id, seq, strategy, ts));
CREATE TABLE IF NOT EXISTS hft_latency (
  run_id text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL, hop text,
  count bigint, p50_us float8, p90_us float8, p99_us float8, max_us float8,
  PRIMARY KEY (run_id, seq, hop, ts));
CREATE TABLE IF NOT EXISTS hft_sink_cursor (
  run_id text NOT NULL, stream text NOT NULL, k bigint, pos bigint, last_seq bigint,
  updated timestamptz DEFAULT now(), PRIMARY KEY (run_id, stream));
"""
HYPERTABLES = (("hft_orders", "send_ts_ns"), ("hft_executions", "send_ts_ns"),
               ("hft_pnl", "ts"), ("hft_latency", "ts"))

# record fields copied as int8 columns, then the columns that follow from a few codes per row
ORDER_INTS = ("ring_seq", "send_ts_ns", "client_order_id", "px_ticks", "qty_lots",
              "cause_recv_ts_ns")
ORDER_KEYS = ("kind", "side", "order_type", "instrument_id", "strategy_id", "reject_code")
ORDER_COLS = ORDER_INTS + ("run_id", "kind", "side", "order_type", "instrument", "strategy",
                           "reject_reason", "tick_size", "lot_size")
EXEC_INTS = ("ring_seq", "send_ts_ns", "venue_ts_ns", "client_order_id", "venue_order_id",
             "px_ticks", "qty_lots", "fee_e9", "cause_recv_ts_ns", "trade_id")
EXEC_KEYS = ("kind", "side", "liquidity", "instrument_id", "strategy_id", "reject_code")
EXEC_COLS = EXEC_INTS + ("run_id", "kind", "side", "liquidity", "instrument", "strategy",
                         "reject_reason", "tick_size", "lot_size")
PNL_COLS = ("run_id", "seq", "ts", "strategy", "pnl", "realized", "unrealized", "fees",
            "positions")
LAT_COLS = ("run_id", "seq", "ts", "hop", "count", "p50_us", "p90_us", "p99_us", "max_us")
# binary COPY (a quarter less server CPU than text, measured): the snapshot columns' types
PNL_TYPES = ("text", "int8", "timestamptz", "text", "float8", "float8", "float8", "float8",
             "jsonb")
LAT_TYPES = ("text", "int8", "timestamptz", "text", "int8", "float8", "float8", "float8",
             "float8")


class SinkConfigError(ValueError):
    pass


def read_dsn(dsn_env: str, dsn_file: str) -> str:
    """The DSN from ``$dsn_env`` or the 0600 file ``dsn_file``; never echoed in messages."""
    if dsn_env and os.environ.get(dsn_env):
        return os.environ[dsn_env]
    if dsn_file:
        p = Path(dsn_file).expanduser()
        try:
            st = p.stat()
        except OSError as exc:
            raise SinkConfigError(f"sink.postgres.dsn_file {p}: {exc.strerror}") from None
        if st.st_mode & 0o077:
            raise SinkConfigError(f"sink.postgres.dsn_file {p}: mode {st.st_mode & 0o777:o}; "
                                  f"it holds a password: chmod 600 {p}")
        return p.read_text().strip()
    raise SinkConfigError(f"sink.postgres: no DSN: set ${dsn_env or 'HFTFARM_PG_DSN'} or "
                          "sink.postgres.dsn_file (a 0600 file)")


# -- binary COPY, built in numpy ----------------------------------------------------------
PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
PG_TRAILER = b"\xff\xff"


def binary_copy_payload(int_cols: list, keys: np.ndarray, key_fields) -> bytes:
    """A whole binary COPY stream (signature, tuples, trailer) of rows whose first fields are
    the int8 columns ``int_cols`` and whose other fields depend only on a small key per row
    (``keys``: an (n, m) array of small non-negative ints; ``key_fields(key tuple) -> [binary
    field bytes or None]``: the names of codes, the instrument, the tick size...). Rows are
    grouped by key (the order of rows in a table is no one's business): a group is one
    big-endian structured array, its fixed tail encoded once, so the cost per row is numpy's,
    not Python's (a journal has a few hundred distinct keys)."""
    n = len(keys)
    if n == 0:
        return PG_SIGNATURE + PG_TRAILER
    keys = np.asarray(keys, dtype=np.int64)
    packed = np.zeros(n, dtype=np.uint64)          # one sortable word per row: the key
    shift = 0
    for c in range(keys.shape[1] - 1, -1, -1):
        width = max(1, int(keys[:, c].max()).bit_length())
        packed |= keys[:, c].astype(np.uint64) << np.uint64(shift)
        shift += width
    if shift > 64:                                 # wide codes: sort the rows as they are
        _u, inv = np.unique(keys, axis=0, return_inverse=True)
        packed = inv.reshape(-1).astype(np.uint64)
    order = np.argsort(packed, kind="stable")
    sp = packed[order]
    starts = np.flatnonzero(np.concatenate(([True], sp[1:] != sp[:-1])))
    ends = np.append(starts[1:], n)
    base = [("n", ">i2")] + [(f, t) for k in range(len(int_cols))
                              for f, t in ((f"l{k}", ">i4"), (f"v{k}", ">i8"))]
    chunks = [PG_SIGNATURE]
    for a, b in zip(starts, ends):
        rows = order[a:b]
        fields = key_fields(tuple(int(x) for x in keys[rows[0]]))
        tail = b"".join(b"\xff\xff\xff\xff" if f is None else len(f).to_bytes(4, "big") + f
                        for f in fields)
        arr = np.empty(len(rows), dtype=np.dtype(base + [("tail", np.void, len(tail))]))
        arr["n"] = len(int_cols) + len(fields)
        for k, col in enumerate(int_cols):
            arr[f"l{k}"] = 8
            arr[f"v{k}"] = col[rows]
        arr["tail"] = np.frombuffer(tail, dtype=(np.void, len(tail)))[0]
        chunks.append(arr.tobytes())
    chunks.append(PG_TRAILER)
    return b"".join(chunks)


# -- the journal as streams ---------------------------------------------------------------
class JournalSource:
    """A run directory's journal files and snapshot spools, read from the cursors on."""

    def __init__(self, run_dir, strategy_names: dict | None = None):
        self.run_dir = Path(run_dir)
        self.jdir = self.run_dir / "journal"
        self.sdir = self.run_dir / "sink"
        self.strategy_names = dict(strategy_names or {})
        self._headers: dict[Path, tuple[int, int]] = {}
        self._sizes: dict[int, tuple[Decimal, Decimal, str]] = {}
        self._lines: dict[str, list[int]] = {}     # spool -> byte offsets of line ends

    def streams(self):
        return list(REC_STREAMS) + list(SPOOL_STREAMS)

    def _files(self, stream):
        prefix = REC_STREAMS[stream]
        return sorted(((int(p.stem.rsplit("-", 1)[1]), p) for p in
                       self.jdir.glob(f"{prefix}-*.rec")), key=lambda kp: kp[0])

    def _header(self, path):
        h = self._headers.get(path)
        if h is None:
            from market.recordfile import instruments_from_header, read_header

            doc = read_header(path)
            h = (int(doc["header_len"]), int(doc["record_size"]))
            self._headers[path] = h
            for i in instruments_from_header(doc):
                self._sizes[i.instrument_id] = (i.tick_size, i.lot_size, i.key)
        return h

    def available(self, stream):
        if stream in SPOOL_STREAMS:
            return [(0, len(self._line_ends(stream)))]
        out = []
        for k, p in self._files(stream):
            try:
                hlen, size = self._header(p)
                out.append((k, max(0, (p.stat().st_size - hlen) // size)))
            except (OSError, ValueError):
                break          # a file still being created: later
        return out

    def _line_ends(self, stream) -> list[int]:
        ends = self._lines.setdefault(stream, [])
        p = self.sdir / f"{stream}.jsonl"
        try:
            with open(p, "rb") as f:
                f.seek(ends[-1] if ends else 0)
                data = f.read()
        except FileNotFoundError:
            return ends
        base = ends[-1] if ends else 0
        i = data.find(b"\n")
        while i >= 0:
            ends.append(base + i + 1)
            i = data.find(b"\n", i + 1)
        return ends

    def read(self, stream, span: Span):
        if stream in SPOOL_STREAMS:
            ends = self._lines[stream]
            lo = ends[span.start - 1] if span.start else 0
            with open(self.sdir / f"{stream}.jsonl", "rb") as f:
                f.seek(lo)
                data = f.read(ends[span.stop - 1] - lo)
            out = np.empty(span.stop - span.start, dtype=object)
            out[:] = [json.loads(x) for x in data.splitlines()]
            return out
        from shm.records import EXEC_DTYPE, ORDER_DTYPE

        dtype = ORDER_DTYPE if stream == "orders" else EXEC_DTYPE
        path = dict(self._files(stream))[span.k]
        hlen, size = self._header(path)
        return np.fromfile(path, dtype=dtype, count=span.stop - span.start,
                           offset=hlen + span.start * size)

    def seqs(self, stream, recs):
        if stream in SPOOL_STREAMS:
            return np.array([r["seq"] for r in recs], dtype=np.int64)
        return recs["ring_seq"]

    # COPY payloads ----------------------------------------------------------------------
    def payload(self, stream, recs, run_id: str, dumpers) -> bytes:
        """The binary COPY stream of journal records (columns ORDER_COLS / EXEC_COLS)."""
        from shm.records import EXEC_KIND_NAMES, INTENT_KIND_NAMES, ORDER_TYPE_NAMES

        from pipeline.journal_columns import LIQUIDITY_NAMES, SIDE_NAMES, reject_name

        ints, keys = (ORDER_INTS, ORDER_KEYS) if stream == "orders" else (EXEC_INTS, EXEC_KEYS)
        kinds = INTENT_KIND_NAMES if stream == "orders" else EXEC_KIND_NAMES
        third = ORDER_TYPE_NAMES if stream == "orders" else LIQUIDITY_NAMES
        text, numeric = dumpers
        run = text(run_id)
        one = (Decimal(1), Decimal(1), "")

        def fields(key):
            kind, side, x, iid, sid, rc = key
            tick, lot, name = self._sizes.get(iid, one)
            return [run, text(kinds.get(kind, str(kind))), text(SIDE_NAMES.get(side, "")),
                    text(third.get(x, str(x))), text(name or str(iid)),
                    text(self.strategy_names.get(sid, str(sid))), text(reject_name(rc)),
                    numeric(tick), numeric(lot)]
        key_arr = np.stack([recs[k].astype(np.int64) for k in keys], axis=1)
        return binary_copy_payload([recs[c].astype(np.int64) for c in ints], key_arr, fields)


def _us(summary: dict, key: str):
    """A latency figure in us from a histogram summary (shm/histogram.py gives ns)."""
    if f"{key}_us" in summary:
        return summary[f"{key}_us"]
    ns = summary.get(f"{key}_ns")
    return None if ns is None else ns / 1e3


def _spool_rows(stream, recs, run_id):
    from datetime import datetime, timezone

    from psycopg.types.json import Jsonb

    out = []
    for r in recs:
        ts = datetime.fromtimestamp(r["ts_ns"] / 1e9, tz=timezone.utc)
        if stream == "pnl":
            for name, st in r["strategies"].items():
                out.append((run_id, r["seq"], ts, name, st["pnl"], st["realized_pnl"],
                            st["unrealized_pnl"], st["fees"],
                            Jsonb(st.get("positions_lots", {}))))
        else:
            for hop, s in r["histograms"].items():
                out.append((run_id, r["seq"], ts, hop, s.get("count", 0), _us(s, "p50"),
                            _us(s, "p90"), _us(s, "p99"), _us(s, "max")))
    return out


# -- the database -------------------------------------------------------------------------
class PostgresStore:
    """Rows and cursors of one run in PostgreSQL; ``commit`` is one transaction."""

    TABLES = {"orders": ("hft_orders", ORDER_COLS, None),
              "exec": ("hft_executions", EXEC_COLS, None),
              "pnl": ("hft_pnl", PNL_COLS, PNL_TYPES),
              "latency": ("hft_latency", LAT_COLS, LAT_TYPES)}

    def __init__(self, dsn: str, run_id: str, source: JournalSource, connect_timeout_s=5):
        self.dsn, self.run_id, self.source = dsn, run_id, source
        self.connect_timeout_s = connect_timeout_s
        self.conn = None
        self.timescale = None

    def connect(self) -> None:
        import psycopg

        self.close()
        self.conn = psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_s,
                                    autocommit=False)
        with self.conn.transaction():
            cur = self.conn.cursor()
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('hftfarm_sink_schema'))")
            cur.execute(SCHEMA)
            self.timescale = self._hypertables(cur)

    def _hypertables(self, cur) -> bool:
        cur.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'")
        if not cur.fetchone()[0]:
            return False
        cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        for table, col in HYPERTABLES:
            chunk = "86400000000000" if col.endswith("_ns") else "INTERVAL '1 day'"
            cur.execute(f"SELECT create_hypertable('{table}', '{col}', chunk_time_interval "
                        f"=> {chunk}, if_not_exists => TRUE, migrate_data => TRUE)")
        return True

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def load_cursors(self) -> dict:
        cur = self.conn.cursor()
        cur.execute("SELECT stream, k, pos, last_seq FROM hft_sink_cursor WHERE run_id = %s",
                    (self.run_id,))
        rows = cur.fetchall()
        self.conn.commit()
        return {s: Cursor(int(k), int(p), int(ls)) for s, k, p, ls in rows}

    def _dumpers(self):
        """Binary encoders of text and numeric values, psycopg's own (used once per distinct
        value, not per row)."""
        from psycopg.adapt import PyFormat

        tx = self.conn.adapters
        dt = tx.get_dumper(str, PyFormat.BINARY)(str, self.conn)
        dn = tx.get_dumper(Decimal, PyFormat.BINARY)(Decimal, self.conn)
        return (lambda v: bytes(dt.dump(v))), (lambda v: bytes(dn.dump(v)))

    def commit(self, batch: dict, cursors: dict) -> None:
        with self.conn.transaction():
            cur = self.conn.cursor()
            for stream, parts in batch.items():
                table, cols, types = self.TABLES[stream]
                parts = [p for p in parts if len(p)]
                if not parts:
                    continue
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN "
                              "(FORMAT BINARY)") as cp:
                    if types is None:          # journal records: one numpy-built payload
                        cp.write(self.source.payload(stream, np.concatenate(parts),
                                                     self.run_id, self._dumpers()))
                        continue
                    cp.set_types(types)
                    for part in parts:
                        for r in _spool_rows(stream, part, self.run_id):
                            cp.write_row(r)
            cur.executemany(
                "INSERT INTO hft_sink_cursor (run_id, stream, k, pos, last_seq) VALUES "
                "(%s, %s, %s, %s, %s) ON CONFLICT (run_id, stream) DO UPDATE SET k = "
                "EXCLUDED.k, pos = EXCLUDED.pos, last_seq = EXCLUDED.last_seq, updated = now()",
                [(self.run_id, s, c.k, c.pos, c.last_seq) for s, c in cursors.items()
                 if s in batch])


# -- the loop -----------------------------------------------------------------------------
class Sink:
    """Tails a run directory into PostgreSQL until stopped; reconnects and resumes."""

    def __init__(self, store: PostgresStore, source: JournalSource, batch_records=50_000,
                 poll_s=0.2, backoff_max_s=5.0, log=None):
        self.store, self.source = store, source
        self.batch_records = batch_records
        self.poll_s = poll_s
        self.backoff_max_s = backoff_max_s
        self.log = log or (lambda msg: print(f"pgsink: {msg}", file=sys.stderr, flush=True))
        self.cursors = None
        self.copied = 0
        self.failures = 0
        self.stopping = False

    def _ensure(self) -> bool:
        if self.cursors is not None:
            return True
        try:
            self.store.connect()
            self.cursors = self.store.load_cursors()
            self.log(f"connected (TimescaleDB hypertables: "
                     f"{'yes' if self.store.timescale else 'no, extension not available'}); "
                     f"resuming at {self._where()}")
            return True
        except Exception as exc:                  # the database is down or refusing
            self._failed(exc)
            return False

    def _where(self) -> str:
        return ", ".join(f"{s} file {c.k} pos {c.pos}" for s, c in sorted(self.cursors.items())) \
            or "the start"

    def _failed(self, exc) -> None:
        self.failures += 1
        self.cursors = None                       # whatever we believed: reload from the DB
        self.store.close()
        first = (str(exc).splitlines() or [""])[0]
        self.log(f"database unavailable or copy failed ({type(exc).__name__}: {first}); "
                 "the journal keeps everything, retrying")

    def once(self) -> int:
        """One batch; records copied (0: nothing new, or the database is down)."""
        if not self._ensure():
            return 0
        try:
            n, self.cursors = step(self.source, self.store, self.cursors, self.batch_records)
        except Exception as exc:
            self._failed(exc)
            return 0
        self.copied += n
        return n

    def caught_up(self) -> bool:
        """Every available record is behind the cursors (as the database holds them)."""
        if self.cursors is None:
            return False
        from pipeline.sink_cursor import plan

        return not any(plan(self.cursors.get(s, Cursor()), self.source.available(s), 1)[0]
                       for s in self.source.streams())

    def run(self, stop, drain_s: float = 10.0) -> None:
        """Until ``stop()`` is true; then copy what is left for up to ``drain_s``."""
        backoff = self.poll_s
        while not stop():
            n = self.once()
            if self.cursors is None:
                time.sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
                continue
            backoff = self.poll_s
            if n == 0:
                time.sleep(self.poll_s)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            n = self.once()
            if self.cursors is not None and n == 0 and self.caught_up():
                return
            if self.cursors is None:
                time.sleep(0.2)
        self.log("stopped before it caught up; the rest is copied by the next "
                 "`run.py sink` on this run directory")


class Snapshotter:
    """PnL and latency snapshots from the controller's socket into the sink's spool files."""

    def __init__(self, cfg, run_dir):
        self.cfg = cfg
        self.sdir = Path(run_dir) / "sink"
        self.sdir.mkdir(parents=True, exist_ok=True)
        self.seq = {s: self._last_seq(s) for s in SPOOL_STREAMS}

    def _last_seq(self, stream) -> int:
        p = self.sdir / f"{stream}.jsonl"
        try:
            lines = p.read_bytes().splitlines()
            return int(json.loads(lines[-1])["seq"]) if lines else 0
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def _append(self, stream, doc) -> None:
        self.seq[stream] += 1
        doc = {"seq": self.seq[stream], "ts_ns": time.time_ns(), **doc}
        fd = os.open(self.sdir / f"{stream}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o600)
        try:
            os.write(fd, (json.dumps(doc) + "\n").encode())
        finally:
            os.close(fd)

    def take(self) -> bool:
        from pipeline.control import NotRunning, request
        from pipeline.paths import socket_path

        try:
            st = request(socket_path(self.cfg), {"cmd": "status"}, 2.0)
            lat = request(socket_path(self.cfg), {"cmd": "latency"}, 2.0)
        except (NotRunning, OSError, ValueError):
            return False
        if st.get("ok"):
            self._append("pnl", {"strategies": st["risk"]["strategies"]})
        if lat.get("ok"):
            self._append("latency", {"histograms": lat["histograms"]})
        return True


def strategy_names_of(cfg) -> dict:
    from common.runtime import strategy_ids

    return {sid: (name if shard == 0 else f"{name}#{shard}")
            for (name, shard), sid in strategy_ids(cfg.strategies).items()}


def main(argv=None) -> int:
    """``python -m pipeline.pgsink --config F --run-dir D [--follow]``: copy the run directory
    into PostgreSQL; with --follow keep tailing (and snapshotting) until SIGTERM / SIGINT, then
    drain. The controller spawns it with --follow when [sink.postgres] enabled."""
    import argparse

    from pipeline.config import load_config

    ap = argparse.ArgumentParser(prog="python -m pipeline.pgsink")
    ap.add_argument("--config", default=None)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--follow", action="store_true")
    ap.add_argument("--until-stdin-eof", action="store_true",
                    help="with --follow: stop (and drain) when stdin reaches EOF")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, build=False)
    pc = cfg.sink.postgres
    try:
        dsn = read_dsn(pc.dsn_env, pc.dsn_file)
    except SinkConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_sink(cfg, dsn, args.run_dir, follow=args.follow,
                    stop_on_stdin_eof=args.until_stdin_eof)


def run_sink(cfg, dsn: str, run_dir, follow: bool, log=None,
             stop_on_stdin_eof: bool = False) -> int:
    run_dir = Path(run_dir).resolve()
    pc = cfg.sink.postgres
    source = JournalSource(run_dir, strategy_names_of(cfg))
    run_id = f"{cfg.instance.name}/{run_dir.name}"
    store = PostgresStore(dsn, run_id, source)
    sink = Sink(store, source, batch_records=pc.batch_records, poll_s=pc.poll_ms / 1000, log=log)
    stop = {"now": not follow}

    def on_signal(signum, frame):
        stop["now"] = True

    if follow:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if stop_on_stdin_eof:
            import threading

            def wait_eof():
                while sys.stdin.buffer.read(4096):
                    pass
                stop["now"] = True
            threading.Thread(target=wait_eof, daemon=True, name="stdin-eof").start()
        snap = Snapshotter(cfg, run_dir) if pc.snapshot_ms > 0 else None
        next_snap = [0.0]

        def stop_or_snapshot():
            if snap is not None and time.monotonic() >= next_snap[0]:
                next_snap[0] = time.monotonic() + pc.snapshot_ms / 1000
                snap.take()
            return stop["now"]
        sink.run(stop_or_snapshot, drain_s=pc.drain_s)
    else:
        sink.run(lambda: True, drain_s=pc.drain_s)
    store.close()
    sink.log(f"{sink.copied} records copied this session ({sink.failures} database failures)")
    return 0 if sink.caught_up() else 1


if __name__ == "__main__":
    sys.exit(main())
