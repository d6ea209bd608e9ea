"""Live feed-handler stage: one process per live venue (``feed-<venue>``), pinned like every
stage. Runs feeds.client (websockets on uvloop) -> the venue's protocol-exact handler ->
market records published into ``md-<venue>``, the ring's only writer.

Threads. The websocket client runs its uvloop event loop on a thread of its own (``feed-net``):
it blocks in epoll without the interpreter lock until a frame arrives, then parses it, applies
it to the handler's books and publishes the records at once, so a frame's latency does not
depend on the stage loop's idle strategy. That thread is the only one that touches the handler
(its books, counters and output buffer) and the md ring. The stage loop (the StageRunner's
thread: heartbeats, control, ``poll``) answers the router's orders and copies the figures the
network thread publishes every second into the status block. The loop must sleep when idle
(``[stages] feed`` idle = backoff or blocking, checked by the config) so that it never holds
the interpreter lock for long.

What the strategies see (through records, as every consumer of the ring):
* a book that is not trustworthy (a gap, a checksum failure, a resync in progress, stale beyond
  ``stale_after_ms``, the connection lost) is announced by the handler's MSG_STATUS
  BOOK_INVALID record; market/book.py clears META_VALID, so ``is_valid`` is false and the
  strategies do not quote on it until the SNAP_END / BOOK_VALID of the resync;
* every ``SNAPSHOT_EVERY_NS`` each valid book is published again whole (SNAP_START, levels,
  SNAP_END), as the simulated venue does: a reader that joined late (every strategy starts
  after this stage, and a restarted one jumps to the ring's head) or was lapped gets a complete
  book back within that period.

Orders. ``mode = "paper"`` (the default for a live venue): the stage loop is the paper venue
(market/papervenue.py). It reads this venue's ``md-<venue>`` ring back as one of its readers
(so it sees exactly the records the strategies see, in the same order), takes the router's
orders from ``vorder-<venue>``, rests them virtually in the real book with a queue position,
fills them from the real trades after the venue's latency model and answers on
``vexec-<venue>`` with the same execution reports a venue sends: the router, risk gate,
strategies and journal cannot tell it from live. Nothing is sent to the venue. A restarted
stage has forgotten the resting paper orders (a live venue would still hold them): the
controller has the router close them (CTRL_RECONCILE with this venue's bit: EXEC_CANCEL_ACK
flagged EFLAG_RECONCILE), so the strategy, the gate and the journal all see them gone and no
order is orphaned; orders at other venues are not touched.
``mode = "live"``: order entry to real venues is not built yet, so every order the router sends
here is answered EXEC_REJECT / REJECT_VENUE_DOWN at once (a cancel: EXEC_CANCEL_REJECT), the
way stages/feed_replay.py answers: the router never waits on this venue.

Latency: the histogram ``exch_to_recv_<venue>`` (exchange time -> receive, on the venue's
clock against ours); receive -> strategy read is each strategy's ``md_to_<strategy>``.

Status: words x0 connection state (common.status.FEED_*), x1 messages/s, x2 exchange -> receive
lag (mean over the last second, us), x3 books valid; errors = malformed frames. The whole
per-venue picture (reconnects, gaps, resyncs, book validity per instrument, the last
connection error) goes to ``<run dir>/feeds/<venue>.json`` every second, which ``run.py
status`` shows. Nothing connects unless the endpoint is loopback or ``instance.allow_live``.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from numba import njit

from common.status import (FEED_CONNECTED, FEED_CONNECTING, FEED_DISCONNECTED, FEED_REFUSED,
                           FEED_STATE_NAMES, W_X0, W_X1, W_X2, W_X3)
from shm.histogram import hist_record
from shm.records import (EXEC_DTYPE, MARKET_DTYPE, MFLAG_SNAPSHOT, MSG_LEVEL, MSG_SNAP_END,
                         MSG_SNAP_START, MSG_STATUS, ORDER_DTYPE, REASON_NAMES,
                         STATUS_BOOK_INVALID, STATUS_BOOK_VALID)
from stages.base import Stage
from stages.venue_sim import answer_without_market

SNAPSHOT_EVERY_NS = 1_000_000_000
PAPER_MD_BATCH = 4096      # records the paper venue reads back per poll
PAPER_EX_BATCH = 1024
STATUS_EVERY_S = 1.0
STOP_WAIT_S = 5.0


# acc words of scan_published
A_LAG_SUM = 0      # sum of recv_ts - exch_ts (ns) over records with an exchange time
A_LAG_N = 1
A_LAST_INVALID_ID = 2
A_LAST_INVALID_REASON = 3


@njit(cache=True)
def scan_published(recs, n, acc, valid, hist):
    """Over recs[0:n] just published (HOT PATH, network thread): exchange -> receive lag (sums
    and histogram ``hist``) and each instrument's validity as the handler's status records
    say it (valid[iid])."""
    for i in range(n):
        r = recs[i]
        if r.exch_ts_ns > 0:
            lag = r.recv_ts_ns - r.exch_ts_ns
            acc[A_LAG_SUM] += lag
            acc[A_LAG_N] += 1
            hist_record(hist, lag)
        if r.kind == MSG_STATUS and 0 < r.instrument_id < valid.shape[0]:
            if r.aux0 == STATUS_BOOK_VALID:
                valid[r.instrument_id] = 1
            elif r.aux0 == STATUS_BOOK_INVALID:
                valid[r.instrument_id] = 0
                acc[A_LAST_INVALID_ID] = r.instrument_id
                acc[A_LAST_INVALID_REASON] = r.aux1


def feed_status_path(run_dir, venue: str) -> Path:
    return Path(run_dir) / "feeds" / f"{venue}.json"


def read_feed_status(run_dir, venue: str) -> dict | None:
    """The last status a venue's feed stage wrote (None: none yet). Cold (controller)."""
    try:
        return json.loads(feed_status_path(run_dir, venue).read_text())
    except (OSError, ValueError):
        return None


class LiveFeedStage(Stage):
    role = "feed"

    def on_start(self, ctx) -> None:
        from feeds.client import DEFAULT_ENDPOINTS, FeedClient, LiveConnectionRefused
        from feeds.decimal import Scale
        from feeds.handler import FeedInstrument
        from feeds.meta import make_handler
        from shm.histogram import LatencyHistogram
        from shm.instruments import InstrumentTable
        from shm.ring import BroadcastRing, SpscRing

        spec = ctx.extra["spec"]
        cfg, inst = ctx.config, ctx.instance
        self.venue_name = spec.venue
        vc = cfg.venue(spec.venue)
        self.kind = vc.kind
        table = InstrumentTable.from_config(cfg)
        insts = {i.symbol: FeedInstrument(i.symbol, i.instrument_id, Scale(i.tick_size),
                                          Scale(i.lot_size))
                 for i in table if i.venue == spec.venue}
        self.symbol_of = {fi.instrument_id: s for s, fi in insts.items()}
        self.handler = make_handler(vc.kind, insts, stale_ns=vc.stale_after_ms * 1_000_000)
        self._rings = []
        md = BroadcastRing.attach(inst, f"md-{spec.venue}", MARKET_DTYPE)
        self._rings.append(md)
        vorder = SpscRing.attach(inst, f"vorder-{spec.venue}", ORDER_DTYPE)
        self._rings.append(vorder)
        vexec = SpscRing.attach(inst, f"vexec-{spec.venue}", EXEC_DTYPE)
        self._rings.append(vexec)
        self.md_w = md.writer()
        self.in_r = vorder.reader()
        self.out_w = vexec.writer()
        self._pub = self.md_w.publisher(self.handler.out)
        self.orders = np.zeros(64, dtype=ORDER_DTYPE)
        self.rej = np.zeros(64, dtype=EXEC_DTYPE)
        self.paper = None
        if vc.paper:
            self._start_paper(ctx, md)
        self.status_file = feed_status_path(ctx.run_dir, spec.venue)
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        self.name = ctx.name
        # written by the network thread only
        self.valid = np.zeros(max(self.symbol_of, default=0) + 1, dtype=np.int64)
        self.acc = np.zeros(4, dtype=np.int64)
        self.hist = LatencyHistogram.attach(inst, f"exch_to_recv_{spec.venue}")
        scan_published(self.handler.out, 0, self.acc, self.valid,
                       self.hist.array)   # compile before RUNNING
        self.published = 0
        self.snapshots_republished = 0
        self.first_record_ns = self.last_record_ns = 0
        self.frames_at_first = self.frames_at_last = 0
        self.view = {"venue": spec.venue, "kind": vc.kind, "state": "starting",
                     "state_code": 0, "reason": ""}
        self.words = (0, 0, 0, 0)
        self.thread_error = ""
        self.orders_rejected = 0
        ws_default, rest_default = DEFAULT_ENDPOINTS.get(vc.kind, ("", ""))
        self.ws_url = vc.ws_url or ws_default
        self.client = None
        self.loop = None
        self.thread = None
        try:
            self.client = FeedClient(
                vc.kind, self.handler, sorted(insts), self.ws_url, vc.rest_url or rest_default,
                allow_live=cfg.instance.allow_live, on_records=self._publish,
                depth=vc.depth, backoff_max_s=vc.backoff_max_ms / 1000,
                resync_timeout_s=vc.resync_timeout_ms / 1000,
                stale_check_s=min(1.0, vc.stale_after_ms / 4000))
        except LiveConnectionRefused as exc:
            # config validation makes this unreachable for a checked config; still, say why
            self.view.update(state="refused", state_code=FEED_REFUSED, reason=str(exc))
            self.words = (FEED_REFUSED, 0, 0, 0)
            print(f"{self.name}: {exc}", file=sys.stderr, flush=True)
            self._write_status(self.view)
            return
        self.view.update(state="connecting", state_code=FEED_CONNECTING,
                         reason=f"connecting to {self.ws_url}")
        self.words = (FEED_CONNECTING, 0, 0, 0)
        self._write_status(self.view)
        self._started = threading.Event()
        self.thread = threading.Thread(target=self._net_main, name="feed-net", daemon=True)
        self.thread.start()
        self._started.wait(10.0)
        print(f"{self.name}: {vc.kind} feed for {', '.join(sorted(insts))} from {self.ws_url}",
              file=sys.stderr, flush=True)

    def _start_paper(self, ctx, md) -> None:
        from market.papervenue import PaperVenue, paper_step, paper_submit

        self.paper = PaperVenue(ctx.config, self.venue_name)
        self.md_r = md.reader(ctx.topology.md_readers[self.venue_name][ctx.name])
        self.md_buf = np.zeros(PAPER_MD_BATCH, dtype=MARKET_DTYPE)
        self._md_poll = self.md_r.poller(self.md_buf)
        self.paper_ex = np.zeros(PAPER_EX_BATCH, dtype=EXEC_DTYPE)
        self.backlog = self._no_backlog = np.zeros(0, dtype=EXEC_DTYPE)
        self.reports_sent = 0
        self._paper_step, self._paper_submit = paper_step, paper_submit
        # compile before RUNNING (nothing reaches the venue: no record, no order)
        paper_submit(self.paper.state, self.orders, 0)
        paper_step(self.paper.state, self.paper.clock, self.md_buf, 0, np.int64(0),
                   np.int64(0), self.paper_ex)

    def _poll_paper(self, n_orders: int) -> int:
        """The paper venue's turn (stage loop): orders in, live records in, reports out."""
        pv = self.paper
        if n_orders:
            self._paper_submit(pv.state, self.orders, n_orders)
        m = self._md_poll()
        k = 0
        if m or n_orders or pv.pending():
            k = self._paper_step(pv.state, pv.clock, self.md_buf, m, time.time_ns(),
                                 pv.md_latency_ns, self.paper_ex)
        if k or len(self.backlog):
            # the router reads vexec in every loop; a full ring keeps the rest for the next poll
            out = np.concatenate((self.backlog, self.paper_ex[:k])) if len(self.backlog) \
                else self.paper_ex[:k]
            sent = self.out_w.publish(out)
            self.reports_sent += sent
            # only a full ring leaves a backlog (a copy: paper_ex is rewritten next step)
            self.backlog = out[sent:].copy() if sent < len(out) else self._no_backlog
        return m + k

    # ---- network thread -------------------------------------------------------------------
    def _net_main(self) -> None:
        import uvloop

        try:
            self.loop = uvloop.new_event_loop()
            asyncio.set_event_loop(self.loop)
            self._started.set()
            self.loop.run_until_complete(self._net_run())
        except BaseException as exc:  # noqa: BLE001 - the stage loop reports it and exits
            self.thread_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._started.set()
            if self.loop is not None:
                self.loop.close()

    async def _net_run(self) -> None:
        ticker = asyncio.ensure_future(self._every_second())
        try:
            await self.client.run()
        finally:
            ticker.cancel()

    def _publish(self, recs) -> None:
        """The client's on_records: ``recs`` is handler.out[:n] (network thread)."""
        n = len(recs)
        self._pub(n)
        self.published += n
        scan_published(self.handler.out, n, self.acc, self.valid, self.hist.array)
        now = time.time_ns()
        if not self.first_record_ns:
            self.first_record_ns = now
            self.frames_at_first = self.client.stats.frames
        self.last_record_ns = now
        self.frames_at_last = self.client.stats.frames

    async def _every_second(self) -> None:
        last = (time.monotonic(), 0, 0)
        next_snap = time.monotonic_ns() + SNAPSHOT_EVERY_NS
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            now_ns = time.monotonic_ns()
            if now_ns >= next_snap:
                next_snap = now_ns + SNAPSHOT_EVERY_NS
                self._republish()
            t = time.monotonic()
            st = self.client.stats
            hs = self.handler.stats
            dt = max(t - last[0], 1e-9)
            rate = (st.frames - last[1]) / dt
            acc = self.acc
            lag_us = acc[A_LAG_SUM] / acc[A_LAG_N] / 1000 if acc[A_LAG_N] else 0.0
            acc[A_LAG_SUM] = acc[A_LAG_N] = 0
            last = (t, st.frames, 0)
            connected = self.client.connected
            code = FEED_CONNECTED if connected else (
                FEED_DISCONNECTED if st.connects else FEED_CONNECTING)
            err = st.errors[-1] if st.errors else ""
            if connected:
                reason = ""
            elif st.connects:
                reason = f"connection lost, reconnecting ({err or 'closed'})"
            else:
                reason = f"cannot connect to {self.ws_url}: {err or 'no answer yet'}"
            valid_books = {sym: bool(self.valid[i]) for i, sym in sorted(self.symbol_of.items())}
            bad = int(acc[A_LAST_INVALID_ID])
            last_invalid = [self.symbol_of.get(bad, str(bad)), REASON_NAMES.get(
                int(acc[A_LAST_INVALID_REASON]), str(int(acc[A_LAST_INVALID_REASON])))] \
                if bad else []
            view = {"venue": self.venue_name, "kind": self.kind, "url": self.ws_url,
                    "state": FEED_STATE_NAMES[code], "state_code": code, "reason": reason,
                    "connects": st.connects, "reconnects": max(0, st.connects - 1),
                    "disconnects": st.disconnects, "frames": st.frames,
                    "messages_per_s": round(rate, 1), "lag_us": round(lag_us, 1),
                    "records_published": self.published, "gaps": hs.gaps,
                    "resyncs": hs.resyncs, "checksum_fail": hs.checksum_fail,
                    "stale": hs.stale, "parse_errors": hs.parse_errors,
                    "rest_snapshots": st.rest_snapshots, "rest_failures": st.rest_failures,
                    "resubscribes": st.resubscribes, "resync_reconnects": st.resync_reconnects,
                    "snapshots_republished": self.snapshots_republished,
                    "books_valid": valid_books, "last_error": err,
                    "last_invalid": last_invalid,
                    "orders_rejected": self.orders_rejected,
                    "mode": "paper" if self.paper is not None else "live",
                    "paper": dict(self.paper.counters(), reports=self.reports_sent)
                    if self.paper is not None else {},
                    # wall clock of the first and last record published, and the frames
                    # received by then: a burst's rate (a replay at full speed)
                    "first_record_ns": self.first_record_ns,
                    "last_record_ns": self.last_record_ns,
                    "frames_first_to_last": self.frames_at_last - self.frames_at_first}
            if hs.parse_errors > self.view.get("parse_errors", 0):
                print(f"{self.name}: {hs.parse_errors - self.view.get('parse_errors', 0)} "
                      f"malformed frame(s) skipped (parse_errors {hs.parse_errors}); the "
                      "books they touched resync", file=sys.stderr, flush=True)
            if code != self.view.get("state_code") or err != self.view.get("last_error", ""):
                print(f"{self.name}: {FEED_STATE_NAMES[code]}"
                      + (f" ({reason})" if reason else ""), file=sys.stderr, flush=True)
            self.view = view
            self.words = (code, int(rate), int(lag_us), sum(valid_books.values()))
            self._write_status(view)

    def _republish(self) -> None:
        """Every valid book again, whole (SNAP_START, levels, SNAP_END), for late joiners."""
        h = self.handler
        recv = time.time_ns()
        for book in list(h.books.values()):
            if not book.valid:
                continue
            nlev = len(book.bids) + len(book.asks)
            if nlev + 2 > h.capacity:
                continue
            h.n = 0
            iid = book.instrument_id
            uid = int(getattr(book, "update_id", 0) or 0)
            h._rec(MSG_SNAP_START, 0, MFLAG_SNAPSHOT, iid, 0, recv, 0, 0, uid, nlev)
            for side, s in ((1, book.bids), (2, book.asks)):
                for i, k in enumerate(s.keys):
                    h._rec(MSG_LEVEL, side, MFLAG_SNAPSHOT, iid, 0, recv, k * s.sign, s.qty[k],
                           uid, i)
            h._rec(MSG_SNAP_END, 0, MFLAG_SNAPSHOT, iid, 0, recv, 0, 0, uid, 0)
            self._pub(h.n)
            self.published += h.n
            self.snapshots_republished += 1
            h.n = 0

    def _write_status(self, view: dict) -> None:
        tmp = self.status_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(view))
            os.replace(tmp, self.status_file)
        except OSError:
            pass   # status only

    # ---- stage loop -----------------------------------------------------------------------
    def poll(self) -> int:
        n = self.in_r.poll(self.orders)
        if self.paper is not None:
            self.records_in += n
            n += self._poll_paper(n)
        elif n:
            e = self.rej[:n]
            answer_without_market(self.orders[:n], e, time.time_ns(), ack_cancels=False)
            self.out_w.publish(e)
            self.orders_rejected += n
            self.records_in += n
        if self.thread is not None and not self.thread.is_alive():
            raise RuntimeError(f"{self.venue_name}: the feed's network thread ended: "
                               f"{self.thread_error or 'without an error'}")
        return n

    def fill_status(self, values) -> None:
        self.records_out = self.published
        self.errors = int(self.view.get("parse_errors", 0))
        super().fill_status(values)
        values[W_X0], values[W_X1], values[W_X2], values[W_X3] = self.words

    def drain(self) -> None:
        if self.thread is None or self.thread.is_alive():
            self.poll()

    def on_stop(self) -> None:
        loop, client = self.loop, self.client
        if self.thread is not None and loop is not None and self.thread.is_alive():
            try:
                loop.call_soon_threadsafe(client.stop)
            except RuntimeError:
                pass   # the loop already closed
            self.thread.join(STOP_WAIT_S)
        if self.thread is not None and self.thread.is_alive():
            # it may still write into the ring and the histogram: leave them mapped (the
            # process exits next; the controller unlinks the segments)
            print(f"{self.name}: the network thread did not end within {STOP_WAIT_S:.0f} s",
                  file=sys.stderr, flush=True)
            return
        if self.view:
            self.view = dict(self.view, state="stopped")
            self._write_status(self.view)
        for r in self._rings:
            r.close()
        if getattr(self, "hist", None) is not None:
            self.hist.close()
