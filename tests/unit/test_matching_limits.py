"""Matching engine at its limits: full order table / level arrays / level pool, cancel-all,
and quantities and prices at 0, below 0 and near the int64 limits.

The engine's capacities are its preallocated arrays (market.l3book.make_engine_arrays):
``max_orders`` resting orders (the order table has one more slot, for the order being matched),
``max_levels`` price levels per instrument and side (``sidelv``), and a level pool shared by all
instruments (``level_pool``, by default min(max_orders, 2 * n * max_levels)). A level's FIFO is
a linked list through the order table: it has no capacity of its own.

Scripted tests pin each limit; the properties drive a tiny engine into those limits with random
streams and compare every report with the reference model (tests/unit/matching_model.py) via
test_matching.CheckedEngine. By default they run 40-60 examples each (a few seconds in all);
``--run-slow`` runs 25 times as many and fills a full-size engine (65536 orders).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.l3book import S_EX_DROPPED, S_LFREE_N, S_MD_DROPPED, S_OFREE_N
from market.matching import MatchingEngine, engine_set_fees
from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_REPLACE, LIQ_MAKER, LIQ_TAKER,
                         ORD_FOK, ORD_IOC, ORD_LIMIT, ORD_MARKET, ORD_POST_ONLY, ORDER_DTYPE,
                         REJECT_FOK, REJECT_INVALID, REJECT_MAX_OPEN_ORDERS,
                         REJECT_MAX_ORDER_QTY, SIDE_BUY, SIDE_SELL)
from tests.unit.test_matching import (OWNERS, TYPES, CheckedEngine, brief, build_stream, new,
                                     order)

B, S = SIDE_BUY, SIDE_SELL
I64 = (1 << 63) - 1


def kinds(ex):
    return [k for k, *_ in brief(ex)]


def free_slots(e):
    return int(e.eng[6][S_OFREE_N]), int(e.eng[6][S_LFREE_N])


# --------------------------------------------------------------------------------------------
# Capacity: scripted
# --------------------------------------------------------------------------------------------
def test_a_full_order_table_rejects_a_resting_order_and_overwrites_nothing():
    e = MatchingEngine(1, max_orders=3, max_levels=8)
    e.submit(np.concatenate([new(1, S, 101, 1), new(2, S, 102, 2), new(3, B, 99, 3)]))
    ex, md = e.submit(new(4, B, 98, 4))
    assert brief(ex) == [(EXEC_REJECT, 4, 98, 4, REJECT_MAX_OPEN_ORDERS)] and len(md) == 0
    ex, _ = e.submit(new(5, S, 103, 1, ORD_IOC))       # does not cross: nothing to free
    assert brief(ex) == [(EXEC_REJECT, 5, 103, 1, REJECT_MAX_OPEN_ORDERS)]
    assert e.depth(1, 0) == [(99, 3)] and e.depth(1, 1) == [(101, 1), (102, 2)]
    assert e.open_orders == 3
    # every resting order is still addressable
    ex, _ = e.submit(order(INTENT_REPLACE, 2, px=102, qty=1))
    assert brief(ex) == [(EXEC_REPLACE_ACK, 2, 102, 1, 0)]


def test_a_full_order_table_still_takes_marketable_orders_and_rests_what_fits():
    e = MatchingEngine(1, max_orders=2, max_levels=8)
    e.submit(np.concatenate([new(1, S, 100, 1), new(2, S, 101, 1)]))
    ex, _ = e.submit(new(3, B, 100, 1, ORD_IOC))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_FILL] and e.open_orders == 1
    e.submit(new(4, S, 102, 1))
    assert e.open_orders == 2
    ex, _ = e.submit(new(5, B, 0, 1, ORD_MARKET))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_FILL]
    e.submit(new(6, S, 101, 1))
    # fills two, frees two slots, the remainder rests
    ex, _ = e.submit(new(7, B, 102, 5))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_FILL, EXEC_PARTIAL]
    assert e.depth(1, 0) == [(102, 3)] and e.depth(1, 1) == [] and e.open_orders == 1


def test_a_full_side_of_levels_cancels_the_remainder_that_needs_a_new_level():
    e = MatchingEngine(1, max_orders=16, max_levels=2)
    e.submit(np.concatenate([new(1, B, 99, 1), new(2, B, 98, 1), new(3, S, 101, 2)]))
    ex, md = e.submit(new(4, B, 97, 5))
    assert brief(ex) == [(EXEC_ACK, 4, 97, 5, 0),
                         (EXEC_CANCEL_ACK, 4, 97, 5, REJECT_MAX_OPEN_ORDERS)] and len(md) == 0
    ex, _ = e.submit(new(5, B, 99, 5))                 # an existing level takes more orders
    assert kinds(ex) == [EXEC_ACK] and e.depth(1, 0) == [(99, 6), (98, 1)]
    ex, _ = e.submit(new(6, B, 102, 5))                # trades 2, then needs a third level
    assert brief(ex)[-1] == (EXEC_CANCEL_ACK, 6, 102, 3, REJECT_MAX_OPEN_ORDERS)
    assert e.depth(1, 1) == [] and e.depth(1, 0) == [(99, 6), (98, 1)]
    ex, _ = e.submit(order(INTENT_REPLACE, 1, px=96, qty=1))   # replace to a third level
    assert brief(ex) == [(EXEC_REPLACE_ACK, 1, 96, 1, 0),
                         (EXEC_CANCEL_ACK, 1, 96, 1, REJECT_MAX_OPEN_ORDERS)]
    e.submit(order(INTENT_CANCEL, 2))
    ex, _ = e.submit(new(7, B, 97, 5))                 # a level left: room again
    assert kinds(ex) == [EXEC_ACK] and e.depth(1, 0) == [(99, 5), (97, 5)]


def test_the_shared_level_pool_runs_out_across_instruments_and_comes_back():
    e = MatchingEngine(2, max_orders=16, max_levels=8, level_pool=3)
    e.submit(np.concatenate([new(1, B, 99, 1), new(2, S, 101, 1, ins=2), new(3, S, 102, 1)]))
    ex, _ = e.submit(new(4, B, 90, 1, ins=2))
    assert brief(ex)[-1] == (EXEC_CANCEL_ACK, 4, 90, 1, REJECT_MAX_OPEN_ORDERS)
    ex, _ = e.submit(new(5, B, 99, 1))                 # joins an existing level
    assert kinds(ex) == [EXEC_ACK]
    e.submit(order(INTENT_CANCEL, 2))
    ex, _ = e.submit(new(14, B, 90, 1, ins=2))
    assert kinds(ex) == [EXEC_ACK] and e.depth(2, 0) == [(90, 1)]
    assert free_slots(e)[1] == 0


def test_one_level_queues_every_order_in_the_table_and_fills_them_in_time_order():
    n = 200
    e = MatchingEngine(1, max_orders=n, max_levels=1)
    free0 = free_slots(e)
    e.submit(np.concatenate([new(i, S, 100, i) for i in range(1, n + 1)]))
    assert e.depth(1, 1) == [(100, n * (n + 1) // 2)] and e.open_orders == n
    ex, _ = e.submit(new(n + 1, S, 100, 1))
    assert brief(ex) == [(EXEC_REJECT, n + 1, 100, 1, REJECT_MAX_OPEN_ORDERS)]
    ex, _ = e.submit(new(n + 2, B, 0, n * (n + 1) // 2, ORD_MARKET))
    makers = [int(c) for c in ex[ex["liquidity"] == LIQ_MAKER]["client_order_id"]]
    assert makers == list(range(1, n + 1)) and e.open_orders == 0
    assert free_slots(e) == free0


def news(cid, side, px, qty, owner, ins):
    """Many NEW limit orders at once (vectorised: the full-size table has 65536)."""
    r = np.zeros(len(cid), dtype=ORDER_DTYPE)
    r["kind"], r["client_order_id"], r["side"], r["px_ticks"] = 1, cid, side, px
    r["qty_lots"], r["order_type"], r["strategy_id"], r["instrument_id"] = qty, 1, owner, ins
    return r


def test_cancel_all_empties_a_full_engine_and_it_fills_up_again(run_slow):
    max_orders, max_levels = (1 << 16, 1024) if run_slow else (2048, 64)
    owners = 64                      # one owner's cancel-all fits the wrapper's output arrays
    e = MatchingEngine(2, max_orders=max_orders, max_levels=max_levels)
    free0 = free_slots(e)
    i = np.arange(max_orders)
    buy = i % 2 == 1
    side = np.where(buy, B, S)
    mid = 2 * max_levels                 # every level of every side in use, none crossing
    px = np.where(buy, mid - 1 - i // 4 % max_levels, mid + 1 + i // 4 % max_levels)
    qty, owner, ins = 1 + i % 7, 1 + i % owners, 1 + (i // 2) % 2
    for rnd in range(2):
        ex, _ = e.submit(news(rnd * max_orders + 1 + i, side, px, qty, owner, ins))
        assert len(ex) == max_orders and (ex["kind"] == EXEC_ACK).all()
        assert e.open_orders == max_orders
        ex, _ = e.submit(new(-1, B, 1, 1, owner=1))
        assert brief(ex) == [(EXEC_REJECT, -1, 1, 1, REJECT_MAX_OPEN_ORDERS)]
        depth = [e.depth(n, s) for n in (1, 2) for s in (0, 1)]
        assert all(len(d) == max_levels for d in depth) and free_slots(e) == (1, 0)
        assert sum(q for d in depth for _, q in d) == qty.sum()
        for o in range(1, owners + 1):
            ex, _ = e.submit(order(INTENT_CANCEL_ALL, 0, owner=o, ins=0))
            assert len(ex) == max_orders // owners and (ex["kind"] == EXEC_CANCEL_ACK).all()
            assert (ex["strategy_id"] == o).all()
        assert e.open_orders == 0 and free_slots(e) == free0
        assert all(e.depth(n, s) == [] for n in (1, 2) for s in (0, 1))
    assert e.eng[6][S_EX_DROPPED] == 0 and e.eng[6][S_MD_DROPPED] == 0


# --------------------------------------------------------------------------------------------
# Quantities and prices near the int64 limits: scripted
# --------------------------------------------------------------------------------------------
def test_two_huge_orders_at_one_level_never_wrap_the_level_total():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 1 << 62))
    ex, md = e.submit(new(2, S, 100, 1 << 62))
    assert brief(ex) == [(EXEC_ACK, 2, 100, 1 << 62, 0),
                         (EXEC_CANCEL_ACK, 2, 100, 1 << 62, REJECT_MAX_ORDER_QTY)]
    assert e.depth(1, 1) == [(100, 1 << 62)] and len(md) == 0
    ex, _ = e.submit(new(3, S, 100, (1 << 62) - 1))      # exactly up to int64 max fits
    assert kinds(ex) == [EXEC_ACK] and e.depth(1, 1) == [(100, I64)]
    ex, _ = e.submit(new(4, S, 100, 1))
    assert brief(ex)[-1] == (EXEC_CANCEL_ACK, 4, 100, 1, REJECT_MAX_ORDER_QTY)
    ex, _ = e.submit(new(5, B, 0, I64, ORD_MARKET))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_FILL, EXEC_FILL]
    assert ex[-1]["cum_qty_lots"] == I64 and e.depth(1, 1) == [] and e.open_orders == 0


def test_fee_of_a_notional_beyond_int64_is_computed_not_wrapped():
    e = MatchingEngine(1, maker_fee_bps=-1.0, taker_fee_bps=1.0, value_e9=[1.0])
    e.submit(new(1, S, 1 << 33, 1 << 31))                # px * qty = 2**64
    ex, _ = e.submit(new(2, B, 1 << 33, 1 << 31))
    exact = (1 << 64) * 1e-4
    taker = ex[ex["liquidity"] == LIQ_TAKER][0]["fee_e9"]
    maker = ex[ex["liquidity"] == LIQ_MAKER][0]["fee_e9"]
    assert abs(taker - exact) <= 1 and abs(maker + exact) <= 1


def test_fee_that_does_not_fit_int64_saturates():
    e = MatchingEngine(1, maker_fee_bps=-1.0, taker_fee_bps=1.0, value_e9=[1e9])
    e.submit(new(1, S, I64, I64))
    ex, _ = e.submit(new(2, B, I64, I64))
    assert ex[ex["liquidity"] == LIQ_TAKER][0]["fee_e9"] == I64
    assert ex[ex["liquidity"] == LIQ_MAKER][0]["fee_e9"] == -I64


def test_fee_rates_must_be_finite():
    e = MatchingEngine(1)
    with pytest.raises(ValueError, match="finite"):
        engine_set_fees(e.eng, 1, float("nan"), 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        engine_set_fees(e.eng, 1, 1e9, float("inf"), 1.0)


def test_market_buy_reaches_an_ask_at_the_highest_int64_price():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, I64, 5), new(2, S, 1 << 62, 1)]))
    ex, _ = e.submit(new(3, B, 0, 6, ORD_MARKET))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_FILL, EXEC_FILL]
    assert list(ex[ex["liquidity"] == LIQ_MAKER]["px_ticks"]) == [1 << 62, I64]
    e.submit(new(4, S, I64, 1))
    ex, _ = e.submit(new(5, B, I64, 1))                   # a limit at int64 max crosses too
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_FILL]


def test_fill_or_kill_sees_liquidity_that_sums_past_int64():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 100, 1 << 62), new(2, S, 101, 1 << 62)]))
    ex, _ = e.submit(new(3, B, 101, I64, ORD_FOK))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_PARTIAL, EXEC_FILL]
    assert e.depth(1, 1) == [(101, 1)]
    ex, _ = e.submit(new(4, B, 101, 2, ORD_FOK))
    assert brief(ex) == [(EXEC_REJECT, 4, 101, 2, REJECT_FOK)]


def test_replace_cannot_take_an_orders_total_quantity_past_int64():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 100, I64), new(2, B, 100, I64 - 1)]))
    ex, _ = e.submit(order(INTENT_REPLACE, 1, px=100, qty=2))   # filled I64-1: 1 more fits
    assert brief(ex) == [(EXEC_CANCEL_REJECT, 1, 100, 2, REJECT_MAX_ORDER_QTY)]
    ex, _ = e.submit(order(INTENT_REPLACE, 1, px=101, qty=1))
    assert brief(ex) == [(EXEC_REPLACE_ACK, 1, 101, 1, 0)]
    ex, _ = e.submit(new(3, B, 101, 5))
    assert ex[ex["client_order_id"] == 1][-1]["cum_qty_lots"] == I64
    assert ex[ex["client_order_id"] == 1][-1]["kind"] == EXEC_FILL


def test_zero_negative_and_malformed_quantities_and_prices_are_rejected():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 5))
    for bad in (new(2, B, 100, 0), new(3, B, 100, -1), new(4, B, 100, -I64 - 1),
                new(5, B, 0, 1), new(6, B, -1, 1), new(7, B, -I64 - 1, 1),
                new(8, B, 0, 0, ORD_MARKET), new(9, B, 0, -5, ORD_MARKET)):
        ex, md = e.submit(bad)
        assert brief(ex)[0][0] == EXEC_REJECT and ex[0]["reject_code"] == REJECT_INVALID
        assert len(ex) == 1 and len(md) == 0
    for qty, px in ((0, 100), (-1, 100), (-I64 - 1, 100), (1, -1), (1, -I64 - 1)):
        ex, _ = e.submit(order(INTENT_REPLACE, 1, px=px, qty=qty))
        assert brief(ex) == [(EXEC_CANCEL_REJECT, 1, px, qty, REJECT_INVALID)]
    assert e.depth(1, 1) == [(100, 5)] and e.depth(1, 0) == [] and e.open_orders == 1
    assert kinds(e.submit(new(10, B, 99, 1, ORD_IOC))[0]) == [EXEC_ACK, EXEC_EXPIRED]


# --------------------------------------------------------------------------------------------
# Properties: random streams into the limits, against the reference model
# --------------------------------------------------------------------------------------------
def _examples(run_slow, default):
    return settings(max_examples=default * 25 if run_slow else default, derandomize=True,
                    deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])


def _empty_and_refill(c, max_orders, cid0):
    """Recovery: cancel-all of every owner empties the engine (every slot and level back on
    its free list); then it takes exactly max_orders resting orders again, refuses one more,
    and still takes an order that trades."""
    for owner in sorted(set(OWNERS)):
        c.submit(order(INTENT_CANCEL_ALL, cid0, owner=owner, ins=0))
    assert c.e.open_orders == 0 and free_slots(c.e) == c.free0
    for i in range(max_orders):
        ex, _ = c.submit(new(cid0 + 1 + i, B, 50, 1 + i, owner=1))
        assert kinds(ex) == [EXEC_ACK]
    ex, _ = c.submit(new(cid0 + max_orders + 1, S, 60, 1, owner=2))
    assert brief(ex)[0][-1] == REJECT_MAX_OPEN_ORDERS
    ex, _ = c.submit(new(cid0 + max_orders + 2, S, 50, 1, ORD_IOC, owner=2))
    assert kinds(ex) == [EXEC_ACK, EXEC_FILL, EXEC_FILL]
    c.finish()


def _count_reached(c, reached):
    """Which limits a stream reached; the tests assert that enough streams got there, so a
    change to the generators cannot quietly make them miss the limits."""
    reached["examples"] += 1
    for code in (REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY, REJECT_INVALID):
        if any(rej == code for _, rej in c.codes):
            reached[code] += 1


limit_op = st.tuples(
    st.sampled_from(("new",) * 6 + ("cancel", "replace", "cancel_all")),
    st.sampled_from((B, S)), st.sampled_from(TYPES), st.integers(0, 6), st.integers(1, 8),
    st.sampled_from(OWNERS), st.integers(1, 2), st.integers(0, 10_000))


def test_random_streams_at_the_capacity_limits_match_the_model_and_recover(run_slow):
    reached = Counter()

    @_examples(run_slow, 40)
    @given(max_orders=st.integers(1, 8), max_levels=st.integers(1, 4),
           level_pool=st.one_of(st.none(), st.integers(1, 8)), width=st.integers(0, 6),
           stp=st.sampled_from(("none", "cancel_newest", "reject")),
           ops=st.lists(limit_op, min_size=20, max_size=80))
    def run(max_orders, max_levels, level_pool, width, stp, ops):
        c = CheckedEngine(stp, max_orders=max_orders, max_levels=max_levels,
                          level_pool=level_pool)
        # a narrow price band: long queues at few levels, or every level of a side in use
        ops = [(w, s, t, 100 + px % (width + 1), q, o, i, p) for w, s, t, px, q, o, i, p in ops]
        for rec in build_stream(ops):
            c.submit(rec)
        _count_reached(c, reached)
        c.finish()
        _empty_and_refill(c, max_orders, 10 ** 6)

    run()
    assert reached[REJECT_MAX_OPEN_ORDERS] >= reached["examples"] // 4, reached


BIG = (1 << 31, 1 << 33, (1 << 62) - 1, 1 << 62, (1 << 62) + 1, I64 - 1, I64)
SPECIAL_QTY = (1, 2, 3, 7) + BIG
SPECIAL_PX = (1, 2, 99, 100, 101) + BIG
INVALID = (0, -1, -2, -(1 << 62), -(1 << 63))
SPECIAL_CID = (0, -1, 1, I64, -(1 << 63))
EXTREME_TYPES = TYPES + (0, 6, 255)


def _int64s(special):
    """Mostly valid values, many near the int64 limits; now and then 0 or a negative."""
    return st.one_of(st.sampled_from(special), st.sampled_from(BIG), st.sampled_from(INVALID),
                     st.integers(-(1 << 63), I64), st.integers(I64 - 3, I64),
                     st.integers((1 << 62) - 2, (1 << 62) + 2))


# px and qty are indices into a few values drawn per example, so that huge orders meet at one
# level and against each other instead of each at its own random price.
extreme_op = st.tuples(
    st.sampled_from(("new",) * 6 + ("cancel", "replace", "cancel_all", "junk")),
    st.sampled_from((B, S) * 4 + (0, 3)), st.sampled_from(EXTREME_TYPES), st.integers(0, 2),
    st.integers(0, 2), st.sampled_from(OWNERS), st.sampled_from((1, 2) * 4 + (0, 3)),
    st.integers(0, 10_000), st.one_of(st.none(), st.none(), st.sampled_from(SPECIAL_CID)))


def build_extreme_stream(ops, pxs, qtys):
    """Like build_stream, with malformed fields, unknown kinds, and client ids at the int64
    limits (reused ones are duplicates while open)."""
    recs, issued = [], []
    for n, (what, side, typ, px, qty, owner, ins, pick, cid) in enumerate(ops, start=1):
        cid = n if cid is None else cid
        px, qty = pxs[px % len(pxs)], qtys[qty % len(qtys)]
        if what == "junk":
            recs.append(order(pick % 2 * 5, cid, side, px, qty, typ, owner, ins))  # kind 0, 5
        elif what == "cancel_all":
            recs.append(order(INTENT_CANCEL_ALL, cid, owner=owner, ins=ins))
        elif what == "new" or not issued:
            recs.append(new(cid, side, px, qty, typ, owner, ins))
            issued.append((cid, owner))
        else:
            ocid, own = issued[pick % len(issued)]
            own = own if pick % 7 else (own + 1) % 3
            kind = INTENT_CANCEL if what == "cancel" else INTENT_REPLACE
            recs.append(order(kind, ocid, px=px if pick % 3 else 0, qty=qty, owner=own))
    return recs


def test_extreme_quantities_and_prices_are_rejected_or_handled_exactly(run_slow):
    reached = Counter()

    @_examples(run_slow, 40)
    @given(ops=st.lists(extreme_op, min_size=10, max_size=60),
           pxs=st.lists(_int64s(SPECIAL_PX), min_size=1, max_size=3),
           qtys=st.lists(_int64s(SPECIAL_QTY), min_size=1, max_size=3),
           stp=st.sampled_from(("none", "cancel_newest", "reject")),
           max_orders=st.sampled_from((4, 16)))
    def run(ops, pxs, qtys, stp, max_orders):
        c = CheckedEngine(stp, max_orders=max_orders, max_levels=4)
        for rec in build_extreme_stream(ops, pxs, qtys):
            c.submit(rec)
        _count_reached(c, reached)
        c.finish()
        _empty_and_refill(c, max_orders, 1 << 40)

    run()
    assert reached[REJECT_INVALID] >= reached["examples"] // 2, reached
    assert reached[REJECT_MAX_ORDER_QTY] >= 1, reached    # the next test aims at it


VALID_PX = st.one_of(st.sampled_from(SPECIAL_PX), st.integers(1, I64),
                     st.integers(I64 - 3, I64), st.integers((1 << 62) - 2, (1 << 62) + 2))
VALID_QTY = st.one_of(st.sampled_from(SPECIAL_QTY), st.integers(1, I64),
                      st.integers(I64 - 3, I64), st.integers((1 << 62) - 2, (1 << 62) + 2),
                      st.integers((1 << 62) - 2, (1 << 62) + 2))
TAKER_TYPES = (ORD_LIMIT, ORD_IOC, ORD_FOK, ORD_FOK, ORD_MARKET, ORD_MARKET, ORD_POST_ONLY)
taker_step = st.one_of(
    st.tuples(st.just("take"), st.sampled_from(TAKER_TYPES), st.integers(-1, 2),
              st.integers(-1, 2), st.sampled_from(OWNERS)),
    st.tuples(st.just("replace"), st.integers(0, 5), st.integers(-1, 2), st.integers(0, 2),
              st.just(0)))


def test_takers_and_replaces_against_huge_resting_orders_match_the_model(run_slow):
    """The random streams above rarely line up what the int64 edges need (an ask above 2**62
    and a market buy; resting quantities that sum past int64 and a fill-or-kill; a partly
    filled order replaced to a huge size), so here one side is made of huge orders first, and
    every stream ends with a fill-or-kill and a market order for int64 max lots and then
    replaces every maker to int64 max lots."""
    reached = Counter()

    @_examples(run_slow, 60)
    @given(pxs=st.lists(VALID_PX, min_size=2, max_size=3),
           qtys=st.lists(VALID_QTY, min_size=2, max_size=3),
           maker_side=st.sampled_from((B, S)),
           makers=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2),
                                     st.sampled_from(OWNERS)), min_size=2, max_size=6),
           steps=st.lists(taker_step, min_size=3, max_size=6),
           stp=st.sampled_from(("none", "cancel_newest", "reject")))
    def run(pxs, qtys, maker_side, makers, steps, stp):
        c = CheckedEngine(stp, max_orders=8, max_levels=4)
        taker_side = B if maker_side == S else S
        for cid, (p, q, owner) in enumerate(makers, start=1):
            c.submit(new(cid, maker_side, pxs[p % len(pxs)], qtys[q % len(qtys)], owner=owner))
        for cid, (what, a, p, q, owner) in enumerate(steps, start=100):
            if what == "take":     # p == -1: crosses every level; q == -1: int64 max
                px = (max(pxs) if taker_side == B else min(pxs)) if p < 0 else pxs[p % len(pxs)]
                px = 0 if a == ORD_MARKET else px
                c.submit(new(cid, taker_side, px, I64 if q < 0 else qtys[q % len(qtys)], a,
                             owner))
            else:                                  # p == -1: keep the price
                px = 0 if p < 0 else pxs[p % len(pxs)]
                maker = 1 + a % len(makers)
                c.submit(order(INTENT_REPLACE, maker, px=px, qty=qtys[q % len(qtys)],
                               owner=makers[maker - 1][2]))
        # then anonymous sweeps of everything an int64 holds: what is left often sums past it
        top = max(pxs) if taker_side == B else min(pxs)
        c.submit(new(200, taker_side, top, I64, ORD_FOK))
        c.submit(new(201, taker_side, 0, I64, ORD_MARKET))
        # a maker the sweeps left partly filled cannot be sized up to int64 max
        for cid, (_, _, owner) in enumerate(makers, start=1):
            c.submit(order(INTENT_REPLACE, cid, qty=I64, owner=owner))
        _count_reached(c, reached)
        c.finish()

    run()
    assert reached[REJECT_MAX_ORDER_QTY] >= reached["examples"] // 4, reached
