"""L2 book: level updates, snapshots, top-of-book, crossed/locked detection, derived prices."""
from __future__ import annotations

import math

import numpy as np

from market.book import (ASK, BID, CROSS_CROSSED, CROSS_LOCKED, CROSS_NONE, META_N_DROPPED,
                         META_UPDATE_ID, META_VALID, L2Book, best_ask_px, best_ask_qty,
                         best_bid_px, best_bid_qty, bench_book_maintenance, book_set_level,
                         cross_state, imbalance, is_crossed, is_locked, is_valid, microprice,
                         mid_x2, synthetic_level_records, valid_mid_x2)
from shm.records import (MARKET_DTYPE, MSG_LEVEL, MSG_SNAP_END, MSG_SNAP_START, MSG_STATUS,
                         MSG_TOP, MSG_TRADE, SIDE_BUY, SIDE_SELL, STATUS_BOOK_INVALID)


def recs(*rows):
    """rows of (kind, side, px, qty, aux0, aux1) for instrument 1."""
    out = np.zeros(len(rows), dtype=MARKET_DTYPE)
    for r, (kind, side, px, qty, aux0, aux1) in zip(out, rows):
        r["kind"], r["side"], r["px_ticks"], r["qty_lots"] = kind, side, px, qty
        r["aux0"], r["aux1"], r["instrument_id"] = aux0, aux1, 1
    return out


def lvl(side, px, qty):
    return (MSG_LEVEL, side, px, qty, 0, 0)


def test_levels_stay_sorted_best_first_and_zero_quantity_removes():
    book = L2Book(1, 8)
    book.apply(recs(lvl(SIDE_BUY, 99, 5), lvl(SIDE_BUY, 101, 7), lvl(SIDE_BUY, 100, 1),
                    lvl(SIDE_SELL, 105, 2), lvl(SIDE_SELL, 103, 4), lvl(SIDE_SELL, 104, 9)))
    assert book.levels(1, BID) == [(101, 7), (100, 1), (99, 5)]
    assert book.levels(1, ASK) == [(103, 4), (104, 9), (105, 2)]
    book.apply(recs(lvl(SIDE_BUY, 100, 0), lvl(SIDE_SELL, 104, 3)))
    assert book.levels(1, BID) == [(101, 7), (99, 5)]
    assert book.levels(1, ASK) == [(103, 4), (104, 3), (105, 2)]
    px, qty, meta = book.arrays
    assert best_bid_px(px, meta, 1) == 101 and best_ask_px(px, meta, 1) == 103
    assert best_bid_qty(qty, meta, 1) == 7 and best_ask_qty(qty, meta, 1) == 4
    assert mid_x2(px, meta, 1) == 204


def test_full_side_keeps_the_best_levels_and_counts_the_dropped_ones():
    book = L2Book(1, 3)
    book.apply(recs(*[lvl(SIDE_BUY, p, 1) for p in (10, 11, 12, 13)]))
    assert [p for p, _ in book.levels(1, BID)] == [13, 12, 11]
    book.apply(recs(lvl(SIDE_BUY, 5, 1)))
    assert [p for p, _ in book.levels(1, BID)] == [13, 12, 11]
    assert book.meta[1, META_N_DROPPED] == 1


def test_removing_an_absent_level_changes_nothing():
    book = L2Book(1, 4)
    book.apply(recs(lvl(SIDE_SELL, 50, 1)))
    px, qty, meta = book.arrays
    assert book_set_level(px, qty, meta, 1, ASK, 51, 0) < 0
    assert book.levels(1, ASK) == [(50, 1)]


def test_snapshot_replaces_the_book_and_makes_it_valid():
    book = L2Book(2, 4)
    book.apply(recs(lvl(SIDE_BUY, 1, 1), lvl(SIDE_SELL, 9, 1)))
    px, qty, meta = book.arrays
    assert not is_valid(px, meta, 1)
    book.apply(recs((MSG_SNAP_START, 0, 0, 0, 77, 2), lvl(SIDE_BUY, 4, 3), lvl(SIDE_SELL, 6, 2),
                    (MSG_SNAP_END, 0, 0, 0, 77, 0)))
    assert book.levels(1, BID) == [(4, 3)] and book.levels(1, ASK) == [(6, 2)]
    assert is_valid(px, meta, 1) and meta[1, META_UPDATE_ID] == 77
    book.apply(recs((MSG_STATUS, 0, 0, 0, STATUS_BOOK_INVALID, 0)))
    assert meta[1, META_VALID] == 0 and not is_valid(px, meta, 1)
    assert meta[2, META_VALID] == 0  # other instruments untouched


def test_crossed_and_locked_books_are_detected_and_not_valid():
    book = L2Book(1, 4)
    book.apply(recs((MSG_SNAP_START, 0, 0, 0, 1, 0), lvl(SIDE_BUY, 10, 1), lvl(SIDE_SELL, 11, 1),
                    (MSG_SNAP_END, 0, 0, 0, 1, 0)))
    px, qty, meta = book.arrays
    assert cross_state(px, meta, 1) == CROSS_NONE and is_valid(px, meta, 1)
    book.apply(recs(lvl(SIDE_BUY, 11, 1)))
    assert cross_state(px, meta, 1) == CROSS_LOCKED and is_locked(px, meta, 1)
    assert not is_valid(px, meta, 1)
    book.apply(recs(lvl(SIDE_BUY, 12, 1)))
    assert cross_state(px, meta, 1) == CROSS_CROSSED and is_crossed(px, meta, 1)
    assert not is_valid(px, meta, 1)


def test_a_complete_book_with_an_empty_side_is_not_valid_and_has_no_price():
    book = L2Book(1, 4)
    px, qty, meta = book.arrays
    book.apply(recs((MSG_SNAP_START, 0, 0, 0, 1, 0), lvl(SIDE_BUY, 10, 1),
                    (MSG_SNAP_END, 0, 0, 0, 1, 0)))
    assert meta[1, META_VALID] == 1              # the venue says: complete, no asks
    assert not is_valid(px, meta, 1) and mid_x2(px, meta, 1) == 0
    assert valid_mid_x2(px, meta, 1) == 0 and math.isnan(microprice(px, qty, meta, 1))
    book.apply(recs(lvl(SIDE_SELL, 12, 1)))
    assert is_valid(px, meta, 1) and valid_mid_x2(px, meta, 1) == 22
    assert not math.isnan(microprice(px, qty, meta, 1))
    book.apply(recs(lvl(SIDE_BUY, 10, 0)))       # every bid gone
    assert not is_valid(px, meta, 1) and valid_mid_x2(px, meta, 1) == 0
    book.apply(recs((MSG_SNAP_START, 0, 0, 0, 2, 0), (MSG_SNAP_END, 0, 0, 0, 2, 0)))
    assert meta[1, META_VALID] == 1 and not is_valid(px, meta, 1)   # complete and empty
    book.apply(recs(lvl(SIDE_BUY, 13, 1), lvl(SIDE_SELL, 12, 1)))     # crossed: no price
    assert not is_valid(px, meta, 1) and valid_mid_x2(px, meta, 1) == 0


def test_top_of_book_record_drops_better_levels_and_sets_the_touch():
    book = L2Book(1, 8)
    book.apply(recs(lvl(SIDE_BUY, 10, 1), lvl(SIDE_BUY, 9, 1), lvl(SIDE_SELL, 12, 1),
                    lvl(SIDE_SELL, 13, 1)))
    book.apply(recs((MSG_TOP, 0, 9, 5, 13, 6)))
    assert book.levels(1, BID) == [(9, 5)]
    assert book.levels(1, ASK) == [(13, 6)]


def test_microprice_leans_toward_the_thin_side_and_imbalance_sums_levels():
    book = L2Book(1, 8)
    book.apply(recs(lvl(SIDE_BUY, 100, 30), lvl(SIDE_BUY, 99, 10), lvl(SIDE_SELL, 102, 10),
                    lvl(SIDE_SELL, 103, 50)))
    px, qty, meta = book.arrays
    # heavy bid -> microprice above the mid of 101
    assert microprice(px, qty, meta, 1) == (100 * 10 + 102 * 30) / 40
    assert imbalance(qty, meta, 1, 1) == (30 - 10) / 40
    assert imbalance(qty, meta, 1, 2) == (40 - 60) / 100
    empty = L2Book(1, 2)
    assert math.isnan(microprice(*empty.arrays[:2], empty.meta, 1))
    assert imbalance(empty.qty, empty.meta, 1, 5) == 0.0


def test_trades_do_not_change_levels():
    book = L2Book(1, 4)
    book.apply(recs(lvl(SIDE_BUY, 10, 3)))
    assert book.apply(recs((MSG_TRADE, SIDE_SELL, 10, 2, 0, 0))) == 0
    assert book.levels(1, BID) == [(10, 3)]


def test_book_matches_a_dictionary_model_on_random_traffic():
    levels = 16
    records = synthetic_level_records(5000, 3, levels, seed=7)
    book = L2Book(3, 4096)  # large enough that nothing is dropped
    book.apply(records)
    model = {(i, s): {} for i in (1, 2, 3) for s in (1, 2)}
    for r in records:
        if r["kind"] != MSG_LEVEL:
            continue
        d = model[(int(r["instrument_id"]), int(r["side"]))]
        if r["qty_lots"] > 0:
            d[int(r["px_ticks"])] = int(r["qty_lots"])
        else:
            d.pop(int(r["px_ticks"]), None)
    for (inst, side), d in model.items():
        expect = sorted(d.items(), reverse=(side == SIDE_BUY))
        assert book.levels(inst, BID if side == SIDE_BUY else ASK) == expect
    assert bench_book_maintenance(records, 3, levels, repeats=1) > 0
