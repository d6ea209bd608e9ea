"""Paper trading on live venues, on loopback only: the whole pipeline (``run.py start
--foreground``) with a live venue in ``mode = "paper"`` whose endpoint is the replay server
serving a shared recording. The feed stage builds the books, a market maker quotes on them, the
paper venue in the feed stage rests its orders in the real book and fills them from the real
trades and level changes; the journal (orders, reports and market data) is then checked
against the queue rules: no fill at an order's price before the volume ahead of it traded or
left the level, unless the market traded through its price or crossed it.

Coinbase (trades and level2, paced) is the default test; Binance (depth and REST snapshots)
and Kraken v1 are ``slow`` (a pipeline each: make test-all); their recordings carry no trade
of the traded symbol, so trades printing through the touch are added to them. The cut-connection,
gap, stale and malformed-frame cases of the feed stage are in test_feed_stage.py.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.integration.test_feed_stage import SHARED, Pipeline, ServerThread, _instruments_toml
from tests.integration.test_feed_stage import _wait
from tests.integration.test_pipeline_cli import run_py

ORDER_LATENCY_US = 100


def queue_violations(md, execs, iid: int) -> tuple[int, list]:
    """Rebuild the book of ``iid`` from the journalled market data (venue time = receive time:
    the test's md latency is 0) and check every maker fill of the paper venue against it.
    Returns (maker fills checked, violations)."""
    from shm.records import (EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_REPLACE_ACK, LIQ_MAKER,
                             MSG_LEVEL, MSG_SNAP_START, MSG_TRADE, SIDE_BUY)

    md = md[md["instrument_id"] == iid]
    ex = execs[(execs["instrument_id"] == iid) & (execs["venue_id"] > 0)]
    joins = {}     # coid -> [venue time, side, px, ahead at join, traded, decreased, through]
    events = []    # (time, order: 0 = market first, kind, record or report)
    t = 0
    for r in md:
        t = max(t, int(r["recv_ts_ns"]))
        events.append((t, 0, "md", r))
    for e in ex:
        k = int(e["kind"])
        if k in (EXEC_ACK, EXEC_REPLACE_ACK, EXEC_PARTIAL, EXEC_FILL):
            events.append((int(e["venue_ts_ns"]), 1, "ex", e))
    events.sort(key=lambda x: (x[0], x[1]))
    book = {1: {}, 2: {}}
    checked, bad = 0, []
    for t, _, what, r in events:
        if what == "md":
            kind, side, px, qty = int(r["kind"]), int(r["side"]), int(r["px_ticks"]), \
                int(r["qty_lots"])
            if kind == MSG_SNAP_START:
                book = {1: {}, 2: {}}
            elif kind == MSG_LEVEL and side in book:
                before = book[side].get(px, 0)
                book[side][px] = qty
                for j in joins.values():
                    if side == j[1] and px == j[2]:
                        j[5] += max(0, before - qty)
                    elif side != j[1] and qty > before and (
                            (j[1] == SIDE_BUY and px <= j[2]) or (j[1] != SIDE_BUY and px >= j[2])):
                        j[6] = True       # a crossing level: it would have traded with us
            elif kind == MSG_TRADE:
                for j in joins.values():
                    if side == j[1]:
                        continue          # same-side aggressor: not against our order
                    if px == j[2]:
                        j[4] += qty
                    elif (j[1] == SIDE_BUY and px < j[2]) or (j[1] != SIDE_BUY and px > j[2]):
                        j[6] = True
            continue
        coid, k = int(r["client_order_id"]), int(r["kind"])
        side, px = int(r["side"]), int(r["order_px_ticks"])
        if k == EXEC_ACK or (k == EXEC_REPLACE_ACK and (coid not in joins
                                                       or joins[coid][2] != px)):
            joins[coid] = [t, side, px, book[side].get(px, 0), 0, 0, False, 0]
        elif k in (EXEC_PARTIAL, EXEC_FILL) and int(r["liquidity"]) == LIQ_MAKER \
                and coid in joins:
            j = joins[coid]
            j[7] += int(r["qty_lots"])
            checked += 1
            if not j[6] and j[7] > max(0, j[4] + j[5] - j[3]):
                bad.append((coid, t, j))
    return checked, bad


def paper_pipeline(tmp_path, venue, kind, files, symbol, extra="", rate=0.0, rest=None):
    """(pipeline, replay server, go): a market maker on ``symbol`` of a paper venue whose
    endpoint is the loopback replay server of ``files``; ``go.set()`` starts the stream."""
    go = threading.Event()
    served = [str(f) for f in files] + ([str(rest)] if rest else [])
    server = ServerThread(served, start_when=go.is_set, rate=rate)
    url = f"127.0.0.1:{server.srv.port}"
    p = Pipeline(tmp_path, f"""
[[venues]]
name = "{venue}"
kind = "{kind}"
mode = "paper"
ws_url = "ws://{url}"
{f'rest_url = "http://{url}"' if rest else ""}
stale_after_ms = 60000
md_latency_us = 0
md_jitter_us = 0
order_latency_us = {ORDER_LATENCY_US}
order_jitter_us = 0
maker_fee_bps = -1.0
taker_fee_bps = 5.0
{extra}

{_instruments_toml(venue, kind, served)}
[[strategies]]
name = "mm"
kind = "market_making"
instruments = ["{symbol}@{venue}"]
params = {{ sigma_init_ticks = 5.0, min_requote_interval_ms = 20.0, order_qty_lots = 1 }}
""")
    return p, server, go


def run_paper(tmp_path, venue, kind, files, symbol, extra="", rate=0.0, rest=None):
    from shm.records import (EFLAG_FROM_RISK, EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT,
                             REJECT_VENUE_DOWN)

    p, server, go = paper_pipeline(tmp_path, venue, kind, files, symbol, extra, rate, rest)
    try:
        p.start()
        go.set()
        total = len(server.srv.ws_frames)
        _wait(lambda: (lambda f: f if f.get("frames", 0) >= total else None)(p.feed(venue)),
              60, "every frame through the feed stage", step=0.2)
        f = _wait(lambda: (lambda f: f if f.get("paper", {}).get("records", 0) > 0
                           and not f["paper"]["dropped"] else None)(p.feed(venue)), 10,
                  "the paper venue's counters in the feed status", step=0.2)
        st = p.status()
        # the pipeline's own latency figures (receive -> strategy read, tick-to-trade), kept
        # beside the test's files for whoever reads them
        lat = run_py("latency", "--json", "--config", str(p.cfg))
        (tmp_path / "latency.json").write_text(lat.stdout)
        md, orders, execs = p.journal(venue)
    finally:
        try:
            p.close()
        finally:
            server.stop()
    iid = p.instrument_id(f"{symbol}@{venue}")
    assert st["feeds"][venue]["mode"] == "paper" and all(
        st["feeds"][venue]["books_valid"].values())
    venue_ex = execs[(execs["flags"] & EFLAG_FROM_RISK) == 0]
    acks = venue_ex[venue_ex["kind"] == EXEC_ACK]
    fills = venue_ex[np.isin(venue_ex["kind"], [EXEC_PARTIAL, EXEC_FILL])]
    assert len(acks) > 0, "the paper venue acknowledged nothing"
    assert not ((venue_ex["kind"] == EXEC_REJECT)
                & (venue_ex["reject_code"] == REJECT_VENUE_DOWN)).any(), "refused: venue down"
    from shm.records import MSG_TRADE
    trades = md[(md["kind"] == MSG_TRADE) & (md["instrument_id"] == iid)]
    assert len(fills) > 0, (
        f"no paper fill arrived: {len(trades)} trades of {symbol} in the market data "
        f"(px {trades['px_ticks'][:8].tolist()}, side {trades['side'][:8].tolist()}, at "
        f"{(trades['recv_ts_ns'][:8] // 1_000_000).tolist()} ms); {len(acks)} acks (px "
        f"{acks['px_ticks'][:8].tolist()}, side {acks['side'][:8].tolist()}, at "
        f"{(acks['venue_ts_ns'][:8] // 1_000_000).tolist()} ms); exec kinds "
        f"{np.unique(venue_ex['kind'], return_counts=True)}")
    assert st["risk"]["fills"] > 0                   # the gate counted them as live fills
    assert (fills["venue_id"] == acks["venue_id"][0]).all() and (fills["trade_id"] > 0).all()
    # latency: a report comes back an order latency after the venue time it happened at
    assert ((venue_ex["venue_ts_ns"] - venue_ex["cause_recv_ts_ns"]) > 0).all()
    checked, bad = queue_violations(md, execs, iid)
    assert not bad, f"filled before the volume ahead had traded: {bad[:3]}"
    return {"feed": f, "status": st, "fills": fills, "checked": checked, "orders": orders}


def test_paper_venue_on_coinbase_fills_from_real_trades_behind_the_queue(tmp_path):
    # ~25 s of stream: the strategy quotes while the recording's SKL-USD trades print
    out = run_paper(tmp_path, "cb", "coinbase", [SHARED / "coinbase/COINBASE.ws.28.0"],
                    "SKL-USD", rate=400.0)
    assert out["feed"]["paper"]["maker_fills"] > 0 and out["checked"] > 0
    pos = out["status"]["risk"]["strategies"]["mm"]["positions_lots"]
    assert pos, "the fills reached the strategy's positions"


def _with_trades_through_the_touch(src, dst, marker: str, trade, every: int):
    """The recording ``src`` (cryptofeed raw text) with a trade frame after every ``every``-th
    frame that contains ``marker``, alternately a sell far below every bid and a buy far
    above every ask: the Binance and Kraken recordings carry no trade of the traded symbol,
    so these are the trades that print through the paper orders' prices."""
    out, k = [], 0
    for line in src.read_text().splitlines(keepends=True):
        out.append(line)
        if marker in line and line[:1].isdigit():
            k += 1
            if k % every == 0:
                ts = line.split(":", 1)[0]
                out.append(f"{ts}: {trade(float(ts), k // every)}\n")
    dst.write_text("".join(out))
    return dst


@pytest.mark.slow   # a pipeline of its own: make test-all
def test_paper_venue_on_binance_fills_against_the_real_book(tmp_path):
    data = SHARED / "binance"

    def trade(ts, n):
        sell = n % 2 == 0
        return ('{"stream":"nknusdt@trade","data":{"e":"trade","E":%d,"s":"NKNUSDT","t":%d,'
                '"p":"%s","q":"1.00000000","T":%d,"m":%s}}'
                % (ts * 1000, 900_000 + n, "0.10000000" if sell else "0.90000000", ts * 1000,
                   "true" if sell else "false"))
    ws = _with_trades_through_the_touch(data / "BINANCE.ws.1.0", tmp_path / "BINANCE.ws.1.0",
                                        '"nknusdt@depth', trade, 5)
    out = run_paper(tmp_path, "bn", "binance", [ws], "NKNUSDT", rate=20.0,
                    rest=data / "BINANCE.http.0.0")
    assert out["feed"]["paper"]["maker_fills"] > 0


@pytest.mark.slow   # a pipeline of its own: make test-all
def test_paper_venue_on_kraken_fills_against_the_real_book(tmp_path):
    def trade(ts, n):
        px, side = ("1.00000000", "s") if n % 2 == 0 else ("9999.00000000", "b")
        return f'[993,[["{px}","0.01000000","{ts:.6f}","{side}","l",""]],"trade","XMR/USD"]'
    ws = _with_trades_through_the_touch(SHARED / "kraken/KRAKEN.ws.50.0",
                                        tmp_path / "KRAKEN.ws.50.0", '"XMR/USD"]', trade, 20)
    out = run_paper(tmp_path, "kr", "kraken-v1", [ws], "XMR/USD", extra="depth = 1000",
                    rate=400.0)
    assert out["feed"]["paper"]["maker_fills"] > 0


def test_a_killed_paper_venue_has_its_resting_orders_closed_once_and_trading_goes_on(tmp_path):
    """kill -9 of the feed stage that plays the paper venue: its resting orders are gone with
    it, so the router closes each (EXEC_CANCEL_ACK flagged EFLAG_RECONCILE); no order is
    orphaned or closed twice, and the restarted stage takes orders again."""
    import os
    import signal

    from shm.records import (EFLAG_FROM_RISK, EFLAG_RECONCILE, EXEC_ACK, EXEC_CANCEL_ACK,
                             EXEC_FINAL_KINDS, INTENT_NEW)
    from tests.integration.test_pipeline_cli import stage_row

    venue, symbol = "cb", "SKL-USD"
    p, server, go = paper_pipeline(tmp_path, venue, "coinbase",
                                   [SHARED / "coinbase/COINBASE.ws.28.0"], symbol, rate=400.0)
    try:
        p.start()
        go.set()
        st = _wait(lambda: (lambda s: s if s["risk"]["open_orders"] > 0 else None)(p.status()),
                   60, "resting paper orders", step=0.2)
        victim = stage_row(st, f"feed-{venue}")["pid"]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: (lambda r: r["pid"] not in (0, victim) and r["state"] == "RUNNING")(
            stage_row(p.status(), f"feed-{venue}")), 120, "the feed stage back", step=0.2)
        # trading goes on: the market maker's new orders are acknowledged by the new stage
        _wait(lambda: p.status()["risk"]["open_orders"] > 0, 60, "resting orders again",
              step=0.2)
        md, orders, execs = p.journal(venue)
    finally:
        try:
            p.close()
        finally:
            server.stop()
    del md
    venue_ex = execs[(execs["flags"] & EFLAG_FROM_RISK) == 0]
    reconciled = venue_ex[(venue_ex["flags"] & EFLAG_RECONCILE) != 0]
    assert len(reconciled) > 0, "no resting order was closed for the killed venue"
    assert (reconciled["kind"] == EXEC_CANCEL_ACK).all()
    approved = orders[(orders["kind"] == INTENT_NEW) & (orders["reject_code"] == 0)]
    finals: dict[int, int] = {}
    for c in venue_ex[np.isin(venue_ex["kind"], list(EXEC_FINAL_KINDS))]["client_order_id"]:
        finals[int(c)] = finals.get(int(c), 0) + 1
    twice = [c for c, n in finals.items() if n > 1]
    assert not twice, f"orders closed more than once: {twice[:5]}"
    # every approved order ends in one final state (the instance's stop cancels the rest)
    orphans = [int(c) for c in approved["client_order_id"] if finals.get(int(c), 0) != 1]
    assert not orphans, f"{len(orphans)} approved orders without one final outcome"
    last_reconcile = int(reconciled["send_ts_ns"].max())
    after = venue_ex[(venue_ex["kind"] == EXEC_ACK) & (venue_ex["send_ts_ns"] > last_reconcile)]
    assert len(after) > 0, "the restarted paper venue acknowledged no new order"
