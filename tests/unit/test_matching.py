"""Matching engine: scripted scenarios, and hypothesis properties on random order streams.

The property tests run the numba engine and a plain-Python reference model of the documented
semantics (market.matching's docstring) side by side (``CheckedEngine``) and compare every
execution report, then check the invariants directly on the engine's output: no crossed book,
volume conserved, no fill better than the limit, fees as configured, the L2 records rebuild the
engine's book, no order slot or level leaked. tests/unit/test_matching_limits.py drives the
same pair into the capacity and int64 limits. ``--run-slow`` runs many more examples.
"""
from __future__ import annotations

from decimal import Decimal

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.book import L2Book, is_valid
from market.l3book import S_EX_DROPPED, S_LFREE_N, S_MD_DROPPED, S_OFREE_N, S_OPEN_ORDERS
from market.matching import MatchingEngine
from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL,
                         INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE, LIQ_MAKER, LIQ_TAKER,
                         MSG_LEVEL, MSG_TRADE, ORD_FOK, ORD_IOC, ORD_LIMIT, ORD_MARKET,
                         ORD_POST_ONLY, ORDER_DTYPE, REJECT_FOK, REJECT_INVALID,
                         REJECT_NO_LIQUIDITY, REJECT_POST_ONLY, REJECT_SELF_TRADE,
                         REJECT_UNKNOWN_ORDER, SIDE_BUY, SIDE_SELL)
from tests.unit.matching_model import RefEngine

B, S = SIDE_BUY, SIDE_SELL


def order(kind, cid, side=B, px=0, qty=0, typ=ORD_LIMIT, owner=0, ins=1):
    r = np.zeros(1, dtype=ORDER_DTYPE)
    r["kind"], r["client_order_id"], r["side"], r["px_ticks"] = kind, cid, side, px
    r["qty_lots"], r["order_type"], r["strategy_id"], r["instrument_id"] = qty, typ, owner, ins
    return r


def new(cid, side, px, qty, typ=ORD_LIMIT, owner=0, ins=1):
    return order(INTENT_NEW, cid, side, px, qty, typ, owner, ins)


def brief(ex):
    return [(int(r["kind"]), int(r["client_order_id"]), int(r["px_ticks"]), int(r["qty_lots"]),
             int(r["reject_code"])) for r in ex]


def test_orders_at_one_price_fill_in_time_order_and_better_prices_first():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 101, 5), new(2, S, 100, 5), new(3, S, 101, 5)]))
    ex, md = e.submit(new(9, B, 101, 12))
    makers = [(int(r["client_order_id"]), int(r["px_ticks"]), int(r["qty_lots"]))
              for r in ex if r["liquidity"] == LIQ_MAKER]
    assert makers == [(2, 100, 5), (1, 101, 5), (3, 101, 2)]
    trades = md[md["kind"] == MSG_TRADE]
    assert list(trades["side"]) == [B, B, B] and list(trades["qty_lots"]) == [5, 5, 2]
    assert e.depth(1, 1) == [(101, 3)]


def test_limit_remainder_rests_and_ioc_remainder_expires():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 3))
    ex, _ = e.submit(new(2, B, 100, 5))
    assert brief(ex)[-1] == (EXEC_FILL, 1, 100, 3, 0) or brief(ex)[-1][0] == EXEC_PARTIAL
    assert e.depth(1, 0) == [(100, 2)]
    e.submit(new(3, S, 101, 3))
    ex, _ = e.submit(new(4, B, 101, 5, ORD_IOC))
    assert [k for k, *_ in brief(ex)] == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_EXPIRED]
    assert ex[-1]["qty_lots"] == 2 and e.depth(1, 0) == [(100, 2)] and e.depth(1, 1) == []


def test_fill_or_kill_fills_completely_or_leaves_the_book_untouched():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 100, 3), new(2, S, 102, 3)]))
    ex, md = e.submit(new(3, B, 101, 4, ORD_FOK))
    assert brief(ex) == [(EXEC_REJECT, 3, 101, 4, REJECT_FOK)] and len(md) == 0
    ex, _ = e.submit(new(4, B, 102, 6, ORD_FOK))
    assert ex[-1]["kind"] == EXEC_FILL and ex[-1]["cum_qty_lots"] == 6
    assert e.depth(1, 1) == []


def test_post_only_is_rejected_when_it_would_take_and_rests_otherwise():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 3))
    ex, _ = e.submit(new(2, B, 100, 1, ORD_POST_ONLY))
    assert brief(ex) == [(EXEC_REJECT, 2, 100, 1, REJECT_POST_ONLY)]
    ex, _ = e.submit(new(3, B, 99, 1, ORD_POST_ONLY))
    assert brief(ex) == [(EXEC_ACK, 3, 99, 1, 0)] and e.depth(1, 0) == [(99, 1)]


def test_market_order_into_an_empty_side_is_rejected_and_never_rests():
    e = MatchingEngine(1)
    ex, _ = e.submit(new(1, B, 0, 5, ORD_MARKET))
    assert brief(ex) == [(EXEC_REJECT, 1, 0, 5, REJECT_NO_LIQUIDITY)]
    e.submit(new(2, S, 120, 2))
    ex, _ = e.submit(new(3, B, 0, 5, ORD_MARKET))
    assert [k for k, *_ in brief(ex)] == [EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, EXEC_EXPIRED]
    assert e.depth(1, 0) == [] and e.open_orders == 0


def test_replace_size_down_keeps_priority_and_price_change_loses_it():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 100, 5), new(2, S, 100, 5)]))
    ex, _ = e.submit(order(INTENT_REPLACE, 1, px=100, qty=4))
    assert brief(ex) == [(EXEC_REPLACE_ACK, 1, 100, 4, 0)]
    ex, _ = e.submit(new(3, B, 100, 1))
    assert [int(r["client_order_id"]) for r in ex if r["liquidity"] == LIQ_MAKER] == [1]
    e.submit(order(INTENT_REPLACE, 1, px=101, qty=3))     # away and back: to the back
    e.submit(order(INTENT_REPLACE, 1, px=100, qty=3))
    ex, _ = e.submit(new(4, B, 100, 1))
    assert [int(r["client_order_id"]) for r in ex if r["liquidity"] == LIQ_MAKER] == [2]
    e.submit(order(INTENT_REPLACE, 2, px=100, qty=9))     # size up loses priority too
    ex, _ = e.submit(new(5, B, 100, 1))
    assert [int(r["client_order_id"]) for r in ex if r["liquidity"] == LIQ_MAKER] == [1]


def test_replace_to_a_crossing_price_trades_at_once():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 102, 2), new(2, B, 100, 5)]))
    ex, _ = e.submit(order(INTENT_REPLACE, 2, px=102, qty=5))
    assert [k for k, *_ in brief(ex)] == [EXEC_REPLACE_ACK, EXEC_FILL, EXEC_PARTIAL]
    assert e.depth(1, 0) == [(102, 3)] and e.depth(1, 1) == []


def test_cancel_of_an_unknown_or_foreign_order_is_refused():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 5, owner=7))
    ex, _ = e.submit(order(INTENT_CANCEL, 2, owner=7))
    assert brief(ex)[0][0] == EXEC_CANCEL_REJECT and ex[0]["reject_code"] == REJECT_UNKNOWN_ORDER
    ex, _ = e.submit(order(INTENT_CANCEL, 1, owner=8))
    assert ex[0]["reject_code"] == REJECT_UNKNOWN_ORDER and e.depth(1, 1) == [(100, 5)]
    ex, md = e.submit(order(INTENT_CANCEL, 1, owner=7))
    assert brief(ex) == [(EXEC_CANCEL_ACK, 1, 100, 5, 0)] and e.depth(1, 1) == []
    assert md[-1]["kind"] == MSG_LEVEL and md[-1]["qty_lots"] == 0


def test_cancel_all_cancels_only_that_owners_orders():
    e = MatchingEngine(2)
    e.submit(np.concatenate([new(1, S, 100, 1, owner=3), new(2, B, 90, 1, owner=3, ins=2),
                             new(3, S, 101, 1, owner=4)]))
    ex, _ = e.submit(order(INTENT_CANCEL_ALL, 0, owner=3, ins=0))
    assert sorted(int(r["client_order_id"]) for r in ex if r["kind"] == EXEC_CANCEL_ACK) == [1, 2]
    assert e.depth(1, 1) == [(101, 1)] and e.depth(2, 0) == []


def test_self_trade_prevention_cancels_the_newest_or_rejects():
    e = MatchingEngine(1, stp="cancel_newest")
    e.submit(np.concatenate([new(1, S, 100, 2), new(2, S, 100, 2, owner=5), new(3, S, 100, 2)]))
    ex, _ = e.submit(new(4, B, 100, 5, owner=5))
    assert [int(r["client_order_id"]) for r in ex if r["liquidity"] == LIQ_MAKER] == [1]
    assert brief(ex)[-1] == (EXEC_CANCEL_ACK, 4, 100, 3, REJECT_SELF_TRADE)
    assert e.depth(1, 1) == [(100, 4)] and e.depth(1, 0) == []
    r = MatchingEngine(1, stp="reject")
    r.submit(np.concatenate([new(1, S, 100, 2), new(2, S, 100, 2, owner=5)]))
    ex, _ = r.submit(new(4, B, 100, 5, owner=5))
    assert brief(ex) == [(EXEC_REJECT, 4, 100, 5, REJECT_SELF_TRADE)]
    ex, _ = r.submit(new(5, B, 100, 2, owner=5))   # filled before reaching its own order
    assert ex[-1]["kind"] == EXEC_FILL
    ex, _ = r.submit(new(6, B, 100, 1, owner=0))   # anonymous flow is never checked
    assert ex[-1]["kind"] == EXEC_FILL


def test_duplicate_client_order_id_and_malformed_orders_are_rejected():
    e = MatchingEngine(1)
    e.submit(new(1, S, 100, 1))
    for bad in (new(1, S, 101, 1), new(2, S, 100, 0), new(3, 0, 100, 1), new(4, B, 0, 1),
                new(5, B, 100, 1, ins=2), new(6, B, 100, 1, typ=9)):
        ex, _ = e.submit(bad)
        assert brief(ex)[0][0] == EXEC_REJECT and ex[0]["reject_code"] == REJECT_INVALID


def test_fees_follow_the_venue_rates_and_rebates_are_negative():
    e = MatchingEngine(1, maker_fee_bps=-0.5, taker_fee_bps=2.0, value_e9=[1000.0])
    e.submit(new(1, S, 6_000_000, 3))
    ex, _ = e.submit(new(2, B, 6_000_000, 3))
    maker = ex[ex["liquidity"] == LIQ_MAKER][0]
    taker = ex[ex["liquidity"] == LIQ_TAKER][0]
    # 3 lots at 6e6 ticks, 1000e-9 per tick x lot = 18 quote units of notional
    assert maker["fee_e9"] == -900_000 and taker["fee_e9"] == 3_600_000


# --------------------------------------------------------------------------------------------
# Properties on random streams
# --------------------------------------------------------------------------------------------
I64_MAX = (1 << 63) - 1
OWNERS = (0, 0, 1, 2)
TYPES = (ORD_LIMIT, ORD_LIMIT, ORD_LIMIT, ORD_IOC, ORD_FOK, ORD_POST_ONLY, ORD_MARKET)
VALUE_E9 = {1: 1000.0, 2: 250.0}
MAKER_BPS, TAKER_BPS = Decimal("-0.5"), Decimal("2.0")


def fee_ok(fee: int, px: int, qty: int, value: float, bps: Decimal) -> bool:
    """round(px * qty * value * bps / 1e4) to within float rounding, or saturated at +-int64
    max when it does not fit."""
    exact = Decimal(px * qty) * Decimal(value) * bps / 10000
    tol = Decimal("0.5") + abs(exact) * Decimal(2) ** -48
    if abs(exact) + tol >= I64_MAX and fee == (I64_MAX if exact > 0 else -I64_MAX):
        return True
    return abs(Decimal(fee) - exact) <= tol


class CheckedEngine:
    """The numba engine and the reference model side by side: ``submit`` compares every
    report with the model's and checks the invariants on the engine's own output after each
    record; ``finish`` checks volume conservation over the whole stream."""

    def __init__(self, stp, *, max_orders=256, max_levels=64, level_pool=None):
        self.max_orders, self.stp = max_orders, stp
        self.e = MatchingEngine(2, maker_fee_bps=float(MAKER_BPS), taker_fee_bps=float(TAKER_BPS),
                                value_e9=[VALUE_E9[1], VALUE_E9[2]], stp=stp,
                                max_orders=max_orders, max_levels=max_levels,
                                level_pool=level_pool)
        self.ref = RefEngine(stp, 2, max_orders, max_levels, level_pool)
        self.l2 = L2Book(2, max_levels)
        self.free0 = (int(self.e.eng[6][S_OFREE_N]), int(self.e.eng[6][S_LFREE_N]))
        self.limits, self.accounts = {}, {}
        self.buy_vol = self.sell_vol = 0
        self.codes = set()          # (kind, reject) seen: what the stream reached

    def submit(self, rec):
        r = rec[0]
        ex, md = self.e.submit(rec)
        got, want = brief(ex), self.ref.process(r)
        if r["kind"] == INTENT_CANCEL_ALL:          # the engine cancels in slot order
            got = sorted(got, key=lambda x: x[1])
        assert got == want, f"differs from the model on {r}"
        self.codes.update((k, rej) for k, _, _, _, rej in got)
        cid = int(r["client_order_id"])
        if (ex["kind"] == EXEC_ACK).any():
            self.limits[cid] = (int(r["side"]), int(r["px_ticks"]), int(r["order_type"]))
        if (ex["kind"] == EXEC_REPLACE_ACK).any():
            s, _, t = self.limits[cid]
            self.limits[cid] = (s, int(ex[ex["kind"] == EXEC_REPLACE_ACK][0]["px_ticks"]), t)
        _account(self.accounts, ex)
        self.l2.apply(md)
        self._check_book()
        self._check_fills(ex, md)
        return ex, md

    def _check_book(self):
        e, ref, st_ = self.e, self.ref, self.e.eng[6]
        n_levels = 0
        for ins in (1, 2):
            bid, ask = e.best(ins)
            assert bid == 0 or ask == 0 or bid < ask, "book crossed after matching"
            for side in (0, 1):
                depth = e.depth(ins, side)
                assert depth == ref.depth(ins, side)
                assert self.l2.levels(ins, side) == depth
                assert all(q > 0 for _, q in depth)
                n_levels += len(depth)
        # nothing leaks or is overwritten: every slot is resting or free
        assert st_[S_OPEN_ORDERS] == len(ref.orders) <= self.max_orders
        assert st_[S_OFREE_N] == self.free0[0] - len(ref.orders)
        assert st_[S_LFREE_N] == self.free0[1] - n_levels
        assert st_[S_EX_DROPPED] == 0 and st_[S_MD_DROPPED] == 0

    def _check_fills(self, ex, md):
        assert (ex["leaves_lots"] >= 0).all() and (ex["cum_qty_lots"] >= 0).all()
        fills = ex[(ex["kind"] == EXEC_FILL) | (ex["kind"] == EXEC_PARTIAL)]
        assert (fills["qty_lots"] > 0).all()
        for f in fills:
            side, limit, typ = self.limits[int(f["client_order_id"])]
            if typ != ORD_MARKET:   # never a worse price than asked: buy <= limit, sell >= limit
                assert (f["px_ticks"] <= limit) if side == B else (f["px_ticks"] >= limit)
            bps = MAKER_BPS if f["liquidity"] == LIQ_MAKER else TAKER_BPS
            assert fee_ok(int(f["fee_e9"]), int(f["px_ticks"]), int(f["qty_lots"]),
                          VALUE_E9[int(f["instrument_id"])], bps), f
            if f["side"] == B:
                self.buy_vol += int(f["qty_lots"])
            else:
                self.sell_vol += int(f["qty_lots"])
        trades = md[md["kind"] == MSG_TRADE]
        assert sum(int(q) for q in trades["qty_lots"]) * 2 == \
            sum(int(q) for q in fills["qty_lots"])
        for tid in np.unique(fills["trade_id"]):
            pair = fills[fills["trade_id"] == tid]
            maker = pair[pair["liquidity"] == LIQ_MAKER]
            taker = pair[pair["liquidity"] == LIQ_TAKER]
            assert len(maker) == len(taker) == 1 and maker["side"][0] != taker["side"][0]
            assert maker["qty_lots"][0] == taker["qty_lots"][0]
            # post-only orders never take; self-trade prevention never lets an owner meet itself
            assert self.limits[int(taker["client_order_id"][0])][2] != ORD_POST_ONLY
            if self.stp != "none" and taker["strategy_id"][0] != 0:
                assert maker["strategy_id"][0] != taker["strategy_id"][0]

    def finish(self):
        assert self.buy_vol == self.sell_vol
        # Volume conserved per order, from the engine's reports alone: what is still open
        # (ordered - filled - cancelled/expired/replaced away) is exactly what rests in its
        # book, and no order is filled beyond its quantity.
        open_by_level = {}
        for cid, a in self.accounts.items():
            left = a["ordered"] - a["filled"] - a["gone"]
            assert left >= 0, cid
            if left:
                open_by_level[a["key"]] = open_by_level.get(a["key"], 0) + left
        resting = {(ins, side, p): q for ins in (1, 2) for side in (0, 1)
                   for p, q in self.e.depth(ins, side)}
        assert open_by_level == resting


op_strategy = st.tuples(
    st.sampled_from(("new", "new", "new", "new", "cancel", "replace", "cancel_all")),
    st.sampled_from((B, S)), st.sampled_from(TYPES), st.integers(95, 105), st.integers(1, 8),
    st.sampled_from(OWNERS), st.integers(1, 2), st.integers(0, 10_000))


def build_stream(ops):
    """Turn drawn tuples into ORDER_DTYPE records (cancel/replace name an earlier order;
    cancel-all names an owner and instrument 0, 1 or 2)."""
    recs, issued = [], []
    for n, (what, side, typ, px, qty, owner, ins, pick) in enumerate(ops, start=1):
        if what == "cancel_all":
            recs.append(order(INTENT_CANCEL_ALL, n, owner=owner, ins=pick % 3))
            continue
        if what == "new" or not issued:
            px = 0 if typ == ORD_MARKET else px
            recs.append(new(n, side, px, qty, typ, owner, ins))
            issued.append((n, owner))
            continue
        cid, own = issued[pick % len(issued)]
        own = own if pick % 7 else (own + 1) % 3          # sometimes someone else's order
        kind = INTENT_CANCEL if what == "cancel" else INTENT_REPLACE
        recs.append(order(kind, cid, px=px if pick % 3 else 0, qty=qty, owner=own))
    return recs


def test_random_streams_match_the_reference_model_and_keep_the_invariants(run_slow):
    @settings(max_examples=1000 if run_slow else 60, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(ops=st.lists(op_strategy, min_size=5, max_size=60),
           stp=st.sampled_from(("none", "cancel_newest", "reject")))
    def run(ops, stp):
        c = CheckedEngine(stp)
        for rec in build_stream(ops):
            c.submit(rec)
        c.finish()

    run()


def _account(accounts, ex):
    for r in ex:
        kind, cid, q = int(r["kind"]), int(r["client_order_id"]), int(r["qty_lots"])
        key = (int(r["instrument_id"]), int(r["side"]) - 1, int(r["px_ticks"]))
        if kind == EXEC_ACK:
            accounts[cid] = {"ordered": q, "filled": 0, "gone": 0, "key": key}
        elif kind in (EXEC_FILL, EXEC_PARTIAL):
            accounts[cid]["filled"] += q
        elif kind in (EXEC_CANCEL_ACK, EXEC_EXPIRED):
            accounts[cid]["gone"] += q
        elif kind == EXEC_REPLACE_ACK:
            a = accounts[cid]
            a["gone"] += a["ordered"] - a["filled"] - a["gone"]
            a["ordered"] += q
            a["key"] = key


def test_snapshot_rebuilds_the_engine_book_in_an_l2_book_and_makes_it_valid():
    e = MatchingEngine(1)
    e.submit(np.concatenate([new(1, S, 101, 2), new(2, S, 103, 1), new(3, B, 99, 4),
                             new(4, B, 99, 1), new(5, B, 97, 6)]))
    snap = e.snapshot(1, now_ns=123)
    book = L2Book(1, 8)
    book.apply(snap)
    assert book.levels(1, 0) == e.depth(1, 0) == [(99, 5), (97, 6)]
    assert book.levels(1, 1) == e.depth(1, 1) == [(101, 2), (103, 1)]
    assert is_valid(book.px, book.meta, 1)
