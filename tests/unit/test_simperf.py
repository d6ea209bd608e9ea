"""The simulated venue's speed-ups change no result: the engine's client_order_id table (its
locality-keeping hash) against a dict, the engine's quiet mode for anonymous orders, and the
background cancel counted stale exactly when the engine rejects it."""
from __future__ import annotations

import numpy as np

from market.l3book import (NIL, S_HBITS, S_QUIET_ANON, _hash, h_delete, h_find, h_insert,
                           make_engine_arrays)
from market.matching import MatchingEngine
from shm.records import (EXEC_CANCEL_REJECT, INTENT_CANCEL, INTENT_NEW, ORD_LIMIT, ORD_MARKET,
                         ORDER_DTYPE, SIDE_BUY, SIDE_SELL)


def _table(max_orders=1 << 10):
    eng = make_engine_arrays(1, max_orders=max_orders)
    return eng[5], eng[6]


def _check_against_dict(keys_of_step, steps, max_live, seed):
    htab, st = _table()
    rng = np.random.default_rng(seed)
    live = {}
    for step in range(steps):
        if not live or (len(live) < max_live and rng.random() < 0.5):
            k = keys_of_step(step, rng)
            if k in live:
                assert not h_insert(htab, st, k, 7)
                continue
            assert h_find(htab, st, k) == NIL
            assert h_insert(htab, st, k, step)
            live[k] = step
        else:
            keys = list(live)
            k = keys[0] if rng.random() < 0.3 else keys[rng.integers(len(keys))]
            assert h_find(htab, st, k) == live[k]
            assert h_delete(htab, st, k)
            del live[k]
            assert h_find(htab, st, k) == NIL
            assert not h_delete(htab, st, k)
    for k, slot in live.items():
        assert h_find(htab, st, k) == slot
    assert int((htab[:, 1] != NIL).sum()) == len(live)


def test_order_id_table_matches_a_dict_for_sequential_ids_as_the_flow_hands_them_out():
    nxt = iter(range(-1, -10**9, -1))
    _check_against_dict(lambda step, rng: next(nxt), 40_000, 1000, seed=1)


def test_order_id_table_matches_a_dict_for_ids_that_share_low_bits_or_wrap_the_table():
    # multiples of the table size and of 1024, huge and negative ids: every home collides or
    # wraps past the table's end, which the backward-shift deletion must handle
    def key(step, rng):
        r = rng.integers(5)
        if r == 0:
            return int(rng.integers(1, 50)) << int(rng.integers(10, 57))
        if r == 1:
            return -int(rng.integers(1, 4000))
        if r == 2:
            return int(rng.integers(-2**63, 2**63 - 1))
        return (1 << 40) + int(rng.integers(0, 3000))
    _check_against_dict(key, 40_000, 1000, seed=2)


def test_order_id_hash_keeps_neighbouring_ids_on_neighbouring_slots():
    hbits = np.int64(15)
    assert _hash(np.int64(-2), hbits) == _hash(np.int64(-1), hbits) - 1
    assert _hash(np.int64(1001), hbits) == _hash(np.int64(1000), hbits) + 1
    homes = {int(_hash(np.int64(k << 20), hbits)) for k in range(1, 200)}
    assert len(homes) > 150   # high bits are spread, not folded onto one slot
    htab, st = _table(1 << 14)
    assert st[S_HBITS] == 15 and htab.shape[0] == 1 << 15


def _order(kind, side, otype, px, qty, coid, sid=0):
    o = np.zeros(1, dtype=ORDER_DTYPE)
    o["kind"], o["side"], o["order_type"], o["instrument_id"] = kind, side, otype, 1
    o["px_ticks"], o["qty_lots"], o["client_order_id"], o["strategy_id"] = px, qty, coid, sid
    return o


def test_quiet_mode_drops_exactly_the_anonymous_reports_and_no_market_record():
    seq = [_order(INTENT_NEW, SIDE_SELL, ORD_LIMIT, 101, 5, -1),
           _order(INTENT_NEW, SIDE_SELL, ORD_LIMIT, 101, 5, 11, sid=3),
           _order(INTENT_NEW, SIDE_BUY, ORD_MARKET, 0, 7, -2),
           _order(INTENT_NEW, SIDE_BUY, ORD_LIMIT, 101, 4, 12, sid=4),
           _order(INTENT_CANCEL, SIDE_SELL, ORD_LIMIT, 0, 0, -1),
           _order(INTENT_CANCEL, SIDE_SELL, ORD_LIMIT, 0, 0, -99)]
    loud, quiet = MatchingEngine(1), MatchingEngine(1)
    quiet.eng[6][S_QUIET_ANON] = 1
    for o in seq:
        ex_l, md_l = loud.submit(o)
        ex_q, md_q = quiet.submit(o)
        assert md_l.tobytes() == md_q.tobytes()
        kept = ex_l[ex_l["strategy_id"] != 0]
        assert kept.tobytes() == ex_q.tobytes()
    assert quiet.depth(1, 1) == loud.depth(1, 1)
    # market.sim counts a background cancel stale when it publishes nothing: exactly the
    # cancels the engine rejects
    quiet.submit(_order(INTENT_NEW, SIDE_SELL, ORD_LIMIT, 105, 1, -3))
    _ex, md = quiet.submit(_order(INTENT_CANCEL, SIDE_SELL, ORD_LIMIT, 0, 0, -3))
    assert len(md) == 1 and len(_ex) == 0
    ex, md = loud.submit(_order(INTENT_CANCEL, SIDE_SELL, ORD_LIMIT, 0, 0, -1))
    assert len(md) == 0 and ex["kind"][0] == EXEC_CANCEL_REJECT
