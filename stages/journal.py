"""Journal stage: every order-path record (and optionally market data) appended to record files
(market/recordfile.py format). Runs in the ``journal`` process; the reading helpers at the end
run in the controller, the router and the gate when they reconcile (cold).

Files, in ``<run dir>/journal/`` (one set per journal incarnation ``k``, so a restarted journal
never truncates what its predecessor wrote):

    orders-<k>.rec   ORDER_DTYPE   every intent the gate decided on; reject_code 0 = approved,
                                   else the REJECT_* denial; send_ts_ns = decision time
    exec-<k>.rec     EXEC_DTYPE    every execution report the router handled (venue reports and
                                   the router's own rejects); reserved = router sequence number
    md-<venue>-<k>.rec MARKET_DTYPE  market data, when [journal] market_data = true
                                   (``run.py backtest --data`` replays these)

Memory stays bounded: each poll copies at most one batch per input into a fixed buffer and
hands it straight to the file; the header's record count is refreshed every ``FLUSH_EVERY_NS``
and on CTRL_RECONCILE (the controller's "flush now" before a restarted gate, router or strategy
rebuilds itself from these files).

Nothing is lost to a kill -9 of the journal: the order-path rings are *peeked*, the batch is
written with one unbuffered write(2) (in the kernel's page cache once it returns, whatever
happens to this process), and only then released to the writer (``commit``). A journal killed
between the write and the commit leaves those records in the ring, and its successor writes
them again into its own file: the readers below drop such repeats by the ring sequence number
every journaled record carries in ``ring_seq`` (the jorder / jexec ring position, unique for
the whole run).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from shm.records import CTRL_RECONCILE, EXEC_DTYPE, MARKET_DTYPE, ORDER_DTYPE
from stages.base import Stage

BATCH = 4096
FLUSH_EVERY_NS = 20_000_000


class JournalStage(Stage):
    role = "journal"

    def on_start(self, ctx) -> None:
        from market.recordfile import RecordFileWriter
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing

        cfg, topo, inst = ctx.config, ctx.topology, ctx.instance
        self.dir = Path(ctx.run_dir) / "journal"
        self.dir.mkdir(parents=True, exist_ok=True)
        k = ctx.restarts
        insts = list(InstrumentTable.from_config(cfg))
        meta = {"instance": inst, "incarnation": k}
        self._rings = []
        self.inputs = []   # (reader, buffer, writer, lossless)

        def add(ring, reader, dtype, fname, lossless=True):
            self._rings.append(ring)
            w = RecordFileWriter(self.dir / fname, dtype, insts, meta=meta, buffered=False)
            self.inputs.append((reader, np.zeros(BATCH, dtype=dtype), w, lossless))

        r = SpscRing.attach(inst, "jorder", ORDER_DTYPE)
        add(r, r.reader(), ORDER_DTYPE, f"orders-{k}.rec")
        r = SpscRing.attach(inst, "jexec", EXEC_DTYPE)
        add(r, r.reader(), EXEC_DTYPE, f"exec-{k}.rec")
        self.md_readers = []
        if topo.journal_md:
            for v in topo.venues:
                r = BroadcastRing.attach(inst, f"md-{v}", MARKET_DTYPE)
                reader = r.reader(topo.md_readers[v]["journal"])
                self.md_readers.append(reader)
                add(r, reader, MARKET_DTYPE, f"md-{v}-{k}.rec", lossless=False)
        self.next_flush = 0

    def poll(self) -> int:
        work = 0
        for reader, buf, w, lossless in self.inputs:
            if lossless:   # durable first, then let go of the input (see the docstring)
                n = reader.peek(buf)
                if n:
                    w.append(buf[:n])
                    reader.commit(n)
            else:          # market data: a broadcast reader cannot hold the writer back
                n = reader.poll(buf)
                if n:
                    w.append(buf[:n])
            work += n
        self.records_in += work
        self.records_out += work
        now = time.monotonic_ns()
        if now >= self.next_flush:
            self.next_flush = now + FLUSH_EVERY_NS
            self.flush()
        return work

    def flush(self) -> None:
        for _r, _b, w, _l in self.inputs:
            w.flush()

    def on_control(self, kind: int, rec) -> None:
        if kind == CTRL_RECONCILE:
            self.drain()
            self.flush()

    def drain(self) -> None:
        for _ in range(10000):
            if self.poll() == 0:
                break
        self.flush()

    def fill_status(self, values) -> None:
        self.records_lost = sum(r.lost for r in self.md_readers)
        self.ring_lag = sum(r.pending() for r, _b, _w, _l in self.inputs)
        super().fill_status(values)

    def on_stop(self) -> None:
        for _r, _b, w, _l in self.inputs:
            w.close()
        for r in self._rings:
            r.close()


# ------------------------------------------------------------------------------------------
# Readers (cold): reconciliation and the final report
# ------------------------------------------------------------------------------------------
def _read_all(jdir: Path, prefix: str, dtype) -> np.ndarray:
    import warnings

    from market.recordfile import RecordFileWarning, open_record_file

    parts = []
    files = sorted(Path(jdir).glob(f"{prefix}-*.rec"),
                   key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    for f in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RecordFileWarning)  # a live file may end mid-record
            _h, recs = open_record_file(f, dtype)
        parts.append(np.array(recs))
    if not parts:
        return np.zeros(0, dtype=dtype)
    out = np.concatenate(parts)
    # a journal killed between its write and its ring commit wrote the tail again in its
    # successor's file: keep the first copy of every ring position
    _seqs, first = np.unique(out["ring_seq"], return_index=True)
    if len(first) != len(out):
        out = out[np.sort(first)]
    return out


def read_journal_orders(jdir) -> np.ndarray:
    return _read_all(jdir, "orders", ORDER_DTYPE)


def read_journal_exec(jdir) -> np.ndarray:
    return _read_all(jdir, "exec", EXEC_DTYPE)


def summarize_journal(jdir) -> dict:
    """Orders, fills, rejects by reason and final outcomes, per strategy id, from the files."""
    from shm.records import (EFLAG_FROM_RISK, EXEC_FILL, EXEC_FINAL_KINDS, EXEC_PARTIAL,
                             EXEC_REJECT, INTENT_NEW, REJECT_NAMES)

    orders = read_journal_orders(jdir)
    execs = read_journal_exec(jdir)
    new = orders[orders["kind"] == INTENT_NEW] if len(orders) else orders
    rejects: dict[str, int] = {}
    for code in new["reject_code"][new["reject_code"] != 0] if len(new) else []:
        name = "risk:" + REJECT_NAMES.get(int(code), str(code))
        rejects[name] = rejects.get(name, 0) + 1
    venue_rej = execs[(execs["kind"] == EXEC_REJECT) & ((execs["flags"] & EFLAG_FROM_RISK) == 0)] \
        if len(execs) else execs
    for code in venue_rej["reject_code"] if len(venue_rej) else []:
        name = "venue:" + REJECT_NAMES.get(int(code), str(code))
        rejects[name] = rejects.get(name, 0) + 1
    fills = execs[np.isin(execs["kind"], (EXEC_FILL, EXEC_PARTIAL))] if len(execs) else execs
    approved = new[new["reject_code"] == 0] if len(new) else new
    finals = execs[np.isin(execs["kind"], EXEC_FINAL_KINDS)] if len(execs) else execs
    final_ids = set(int(c) for c in finals["client_order_id"]) if len(finals) else set()
    open_ids = [int(c) for c in approved["client_order_id"] if int(c) not in final_ids]
    per_strategy: dict[int, dict] = {}
    for sid in sorted(set(int(s) for s in orders["strategy_id"]) if len(orders) else []):
        o = new[new["strategy_id"] == sid]
        f = fills[fills["strategy_id"] == sid]
        per_strategy[sid] = {"intents": int((orders["strategy_id"] == sid).sum()),
                             "new_orders": int(len(o)),
                             "approved": int((o["reject_code"] == 0).sum()),
                             "fills": int(len(f)), "filled_lots": int(f["qty_lots"].sum())}
    return {"intents": int(len(orders)), "new_orders": int(len(new)),
            "approved_new": int(len(approved)), "exec_reports": int(len(execs)),
            "fills": int(len(fills)), "rejects_by_reason": rejects,
            "approved_without_final": len(open_ids), "per_strategy": per_strategy}


# ------------------------------------------------------------------------------------------
# Events (cold): halts, resumes, kill switch, day rolls, limit changes; who and why
# ------------------------------------------------------------------------------------------
EVENTS_FILE = "events.jsonl"


def append_event(jdir, who: str, what: str, why: str = "", **fields) -> dict:
    """Append one event line to ``<jdir>/events.jsonl`` (0600). Any process may call it: each
    event is a single O_APPEND write(2) of one line, so lines from several processes never
    interleave. ``who``: the actor (gate, controller, cli, signal); ``what``: the event."""
    import json
    import os

    ev = {"ts_ns": time.time_ns(), "who": who, "what": what, "why": why, **fields}
    Path(jdir).mkdir(parents=True, exist_ok=True)
    line = (json.dumps(ev, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(Path(jdir) / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return ev


def read_events(jdir) -> list[dict]:
    """Every event in order; a line cut short by a crash is skipped."""
    import json

    try:
        text = (Path(jdir) / EVENTS_FILE).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
