"""The paper venue's kernel (market/papervenue.py): live records and our orders in, execution
reports out, on scripted and on random books (a property test)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_EXPIRED, EXEC_FILL,
                         EXEC_FINAL_KINDS, EXEC_PARTIAL, EXEC_REJECT, INTENT_CANCEL,
                         INTENT_CANCEL_ALL, INTENT_NEW, LIQ_MAKER, LIQ_TAKER, MARKET_DTYPE,
                         MFLAG_LAST_IN_BATCH, MFLAG_SNAPSHOT, MSG_LEVEL, MSG_SNAP_END,
                         MSG_SNAP_START, MSG_TRADE, ORD_LIMIT, ORDER_DTYPE, SIDE_BUY, SIDE_SELL)

US = 1_000
MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
ORDER_LATENCY_US = 100
from market.papervenue import PUBLISH_GUARD_NS  # noqa: E402


def paper_config(queue_model: str):
    from pipeline.config import parse_config

    return parse_config(f"""
[instance]
allow_live = true
[[venues]]
name = "bn"
kind = "binance"
mode = "paper"
queue_model = "{queue_model}"
maker_fee_bps = -1.0
taker_fee_bps = 2.0
md_latency_us = 0
md_jitter_us = 0
order_latency_us = {ORDER_LATENCY_US}
order_jitter_us = 0
[[instruments]]
symbol = "BTCUSDT"
venue = "bn"
tick_size = "0.01"
lot_size = "0.001"
""", "paper-test", build=False)


class Paper:
    """The kernel driven as the feed stage drives it, on a scripted clock."""

    def __init__(self, queue_model="conservative"):
        from market.papervenue import PaperVenue

        self.pv = PaperVenue(paper_config(queue_model), "bn", seed=1)
        self.out = np.zeros(512, dtype=EXEC_DTYPE)
        self.reports = []
        self.coid = 0

    def md(self, t, kind, side=0, px=0, qty=0, flags=MFLAG_LAST_IN_BATCH):
        r = np.zeros(1, dtype=MARKET_DTYPE)
        r["kind"], r["side"], r["instrument_id"], r["flags"] = kind, side, 1, flags
        r["recv_ts_ns"] = r["exch_ts_ns"] = T0 + t
        r["px_ticks"], r["qty_lots"] = px, qty
        self.step(t, r)

    def snapshot(self, t, bids, asks):
        recs = [(MSG_SNAP_START, 0, 0, 0)] + [(MSG_LEVEL, SIDE_BUY, p, q) for p, q in bids] + \
            [(MSG_LEVEL, SIDE_SELL, p, q) for p, q in asks] + [(MSG_SNAP_END, 0, 0, 0)]
        r = np.zeros(len(recs), dtype=MARKET_DTYPE)
        for i, (k, s, p, q) in enumerate(recs):
            r[i]["kind"], r[i]["side"], r[i]["px_ticks"], r[i]["qty_lots"] = k, s, p, q
        r["instrument_id"], r["flags"] = 1, MFLAG_SNAPSHOT
        r["recv_ts_ns"] = T0 + t
        self.step(t, r)

    def order(self, t, side, px, qty, kind=INTENT_NEW, coid=None):
        from market.papervenue import paper_submit

        if coid is None:
            self.coid += 1
            coid = self.coid
        o = np.zeros(1, dtype=ORDER_DTYPE)
        o["kind"], o["side"], o["order_type"], o["instrument_id"] = kind, side, ORD_LIMIT, 1
        o["client_order_id"], o["strategy_id"], o["venue_id"] = coid, 1, 1
        o["px_ticks"], o["qty_lots"], o["send_ts_ns"] = px, qty, T0 + t
        assert paper_submit(self.pv.state, o, 1) == 1
        return coid

    def step(self, t, md=None):
        from market.papervenue import paper_step

        md = np.zeros(0, dtype=MARKET_DTYPE) if md is None else md
        n = paper_step(self.pv.state, self.pv.clock, md, len(md), np.int64(T0 + t),
                       np.int64(self.pv.md_latency_ns), self.out)
        self.reports.extend(self.out[:n].copy())
        return self.out[:n].copy()

    def fills(self, coid=None):
        return [(int(e["venue_ts_ns"] - T0) // US, int(e["qty_lots"])) for e in self.reports
                if e["kind"] in (EXEC_PARTIAL, EXEC_FILL)
                and (coid is None or int(e["client_order_id"]) == coid)]


def test_resting_order_fills_only_after_the_volume_ahead_has_traded():
    p = Paper("conservative")
    p.snapshot(1 * MS, [(1000, 100)], [(1010, 50)])
    coid = p.order(2 * MS, SIDE_BUY, 1000, 10)          # 100 ahead at 1000 when it arrives
    for t, kind, qty in ((3, MSG_TRADE, 60), (3.001, MSG_LEVEL, 40), (4, MSG_TRADE, 30),
                         (4.001, MSG_LEVEL, 10)):
        p.md(int(t * MS), kind, SIDE_SELL if kind == MSG_TRADE else SIDE_BUY, 1000, qty)
    assert p.fills() == [], "filled before the 100 ahead of it had traded"
    p.md(5 * MS, MSG_TRADE, SIDE_SELL, 1000, 15)        # 10 left ahead: 5 of the 15 are ours
    p.md(5 * MS + 1, MSG_LEVEL, SIDE_BUY, 1000, 0)
    p.md(6 * MS, MSG_TRADE, SIDE_SELL, 1000, 20)
    p.step(10 * MS)
    assert p.fills(coid) == [(5000, 5), (6000, 5)]
    kinds = [int(e["kind"]) for e in p.reports]
    assert kinds == [EXEC_ACK, EXEC_PARTIAL, EXEC_FILL]
    last = p.reports[-1]
    assert last["liquidity"] == LIQ_MAKER and last["fee_e9"] < 0      # the maker rebate


def test_trades_that_print_through_the_price_fill_the_rest():
    p = Paper()
    p.snapshot(1 * MS, [(1000, 100)], [(1010, 50)])
    coid = p.order(2 * MS, SIDE_BUY, 1000, 10)
    p.md(3 * MS, MSG_TRADE, SIDE_SELL, 999, 1)          # a sell below our bid: our level is gone
    p.step(5 * MS)
    assert p.fills(coid) == [(3000, 10)]


def test_order_reaches_the_venue_after_its_latency_and_reports_come_back_after_it_again():
    p = Paper()
    p.snapshot(1 * MS, [(1000, 0)], [(1010, 50)])
    coid = p.order(2 * MS, SIDE_BUY, 1000, 10)
    # a trade at our price 50 us after sending: the order is still on its way
    p.md(2 * MS + 50 * US, MSG_TRADE, SIDE_SELL, 1000, 7)
    assert p.step(2 * MS + 150 * US).size == 0           # ack due at send + 2 x latency
    # with no record after the order's arrival, it waits for the publish guard too
    ack = p.step(2 * MS + ORDER_LATENCY_US * US + PUBLISH_GUARD_NS)
    assert [int(e["kind"]) for e in ack] == [EXEC_ACK]
    assert int(ack[0]["venue_ts_ns"]) == T0 + 2 * MS + ORDER_LATENCY_US * US
    p.md(3 * MS, MSG_TRADE, SIDE_SELL, 1000, 7)          # now it is at the front
    p.step(4 * MS)
    assert p.fills(coid) == [(3000, 7)]


def test_marketable_order_takes_the_displayed_levels_with_the_taker_fee_then_rests():
    p = Paper()
    p.snapshot(1 * MS, [(1000, 100)], [(1010, 50), (1011, 20)])
    coid = p.order(2 * MS, SIDE_BUY, 1011, 100)
    p.step(3 * MS)
    taker = [(int(e["px_ticks"]), int(e["qty_lots"])) for e in p.reports
             if e["liquidity"] == LIQ_TAKER]
    assert taker == [(1010, 50), (1011, 20)]
    assert all(e["fee_e9"] > 0 for e in p.reports if e["liquidity"] == LIQ_TAKER)
    assert p.pv.counters()["open"] == 1                  # 30 rest at 1011
    p.order(3 * MS, SIDE_BUY, 0, 0, kind=INTENT_CANCEL, coid=coid)
    p.step(4 * MS)
    assert int(p.reports[-1]["kind"]) == EXEC_CANCEL_ACK and p.reports[-1]["qty_lots"] == 30


def test_two_of_our_orders_at_one_price_never_share_more_than_the_trade():
    p = Paper()
    p.snapshot(1 * MS, [(1000, 0)], [(1010, 50)])
    a = p.order(2 * MS, SIDE_BUY, 1000, 10)
    b = p.order(2 * MS + 10 * US, SIDE_BUY, 1000, 10)
    p.md(3 * MS, MSG_TRADE, SIDE_SELL, 1000, 15)
    p.step(4 * MS)
    assert p.fills(a) == [(3000, 10)] and p.fills(b) == [(3000, 5)]


def test_a_republished_snapshot_never_fills_and_caps_the_queue():
    p = Paper()
    p.snapshot(1 * MS, [(1000, 100)], [(1010, 50)])
    coid = p.order(2 * MS, SIDE_BUY, 1000, 10)
    p.snapshot(3 * MS, [(1000, 4)], [(1010, 50)])       # the level shrank during a resync
    assert p.fills() == []
    p.md(4 * MS, MSG_TRADE, SIDE_SELL, 1000, 6)
    p.step(5 * MS)
    assert p.fills(coid) == [(4000, 2)]


# ------------------------------------------------------------------------------------------
# Property: random books, trades and orders
# ------------------------------------------------------------------------------------------
PX = st.integers(995, 1015)
EVENT = st.one_of(
    st.tuples(st.just("level"), st.sampled_from([SIDE_BUY, SIDE_SELL]), PX,
              st.integers(0, 200)),
    st.tuples(st.just("trade"), st.sampled_from([SIDE_BUY, SIDE_SELL]), PX, st.integers(1, 80)),
    st.tuples(st.just("order"), st.sampled_from([SIDE_BUY, SIDE_SELL]), PX, st.integers(1, 50)),
    st.tuples(st.just("cancel"), st.just(0), st.integers(0, 40), st.just(0)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(["conservative", "probabilistic"]),
       events=st.lists(EVENT, min_size=1, max_size=60))
def test_property_fills_never_exceed_traded_volume_or_precede_the_queue_and_no_order_is_lost(
        model, events):
    p = Paper(model)
    p.snapshot(1 * MS, [(1000, 50), (999, 80)], [(1005, 60), (1006, 40)])
    book = {SIDE_BUY: {1000: 50, 999: 80}, SIDE_SELL: {1005: 60, 1006: 40}}
    # each record at its own millisecond; an order arrives half-way between two records
    record_at = {}          # venue time (us) -> ("trade" | "level", side, px, qty)
    history = []            # (venue time us, kind, side, px, qty, level size before)
    orders = {}             # coid -> (arrival us, side, px, qty, level size at arrival)
    t = 2 * MS
    for kind, side, px, qty in events:
        t += MS
        if kind == "order":
            coid = p.order(t - MS // 2 - ORDER_LATENCY_US * US, side, px, qty)
            orders[coid] = (t // US - 500, side, px, qty, book[side].get(px, 0))
        elif kind == "cancel":
            if p.coid:
                c = 1 + px % p.coid
                p.order(t - MS // 2 - ORDER_LATENCY_US * US, orders[c][1], 0, 0,
                        kind=INTENT_CANCEL, coid=c)
        elif kind == "level":
            history.append((t // US, kind, side, px, qty, book[side].get(px, 0)))
            book[side][px] = qty
            record_at[t // US] = (kind, side, px, qty)
            p.md(t, MSG_LEVEL, side, px, qty)
        else:
            history.append((t // US, kind, side, px, qty, 0))
            record_at[t // US] = (kind, side, px, qty)
            p.md(t, MSG_TRADE, side, px, qty)
    end = p.order(t + MS, SIDE_BUY, 0, 0, kind=INTENT_CANCEL_ALL, coid=0)
    assert end == 0
    p.step(t + 10 * MS)

    reps = p.reports
    # no order lost: every order ends in exactly one final state, nothing after it
    for coid, (_, _, _, qty, _) in orders.items():
        mine = [e for e in reps if int(e["client_order_id"]) == coid
                and int(e["kind"]) != EXEC_CANCEL_REJECT]     # a cancel too late
        finals = [k for k, e in enumerate(mine) if int(e["kind"]) in EXEC_FINAL_KINDS]
        assert len(finals) == 1 and finals[0] == len(mine) - 1, (coid, mine)
        filled = sum(int(e["qty_lots"]) for e in mine if int(e["kind"]) in (EXEC_PARTIAL,
                                                                          EXEC_FILL))
        assert filled <= qty and int(mine[-1]["cum_qty_lots"]) == filled
        if int(mine[-1]["kind"]) == EXEC_FILL:
            assert filled == qty
        assert int(mine[-1]["kind"]) != EXEC_EXPIRED and (
            int(mine[-1]["kind"]) != EXEC_REJECT or filled == 0)
    assert p.pv.counters()["open"] == 0
    # never more than the traded volume at a trade's price, nor than a crossing level added
    maker = [e for e in reps if int(e["kind"]) in (EXEC_PARTIAL, EXEC_FILL)
             and int(e["liquidity"]) == LIQ_MAKER]
    by_time = {}
    for e in maker:
        by_time.setdefault(int(e["venue_ts_ns"] - T0) // US, []).append(e)
    for tu, es in by_time.items():
        kind, side, px, qty = record_at[tu]
        if kind == "trade":
            at_px = sum(int(e["qty_lots"]) for e in es if int(e["px_ticks"]) == px)
            assert at_px <= qty, (tu, at_px, qty)
        else:
            before = next(h[5] for h in history if h[0] == tu)
            assert sum(int(e["qty_lots"]) for e in es) <= max(0, qty - before)
    # never before the queue ahead is consumed: an order's fills by trades at its price are at
    # most what traded there since it arrived, plus the level's decreases, less the queue
    # ahead on arrival
    for coid, (arr, side, px, qty, ahead0) in orders.items():
        vol = dec = 0
        got = 0
        for tu, kind, s, hpx, hqty, before in history:
            if tu < arr or hpx != px:
                continue
            if kind == "trade" and s != side:
                vol += hqty
                got += sum(int(e["qty_lots"]) for e in by_time.get(tu, [])
                           if int(e["client_order_id"]) == coid and int(e["px_ticks"]) == px)
                assert got <= max(0, vol + dec - ahead0), (coid, tu, got, vol, dec, ahead0)
            elif kind == "level" and s == side:
                dec += max(0, before - hqty)
