"""Stylized facts (market/facts.py) on record streams whose answers are known by construction,
the Bitstamp loader (market/bitstamp.py) on the real log's first lines, and ``run.py sim
facts`` end to end on a short simulation beside the Bitstamp log."""
from __future__ import annotations

import gzip
import json
import math
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from market import facts
from market.book import L2Book, best_ask_px, best_bid_px, level_px, level_qty
from pipeline.cli import main as cli_main
from shm.records import (MARKET_DTYPE, MFLAG_LAST_IN_BATCH, MSG_LEVEL, MSG_SNAP_END,
                         MSG_SNAP_START, MSG_TRADE, SIDE_BUY, SIDE_SELL)

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
INST = SimpleNamespace(instrument_id=1, key="X@TEST", tick_size=Decimal("0.01"),
                       lot_size=Decimal("0.5"))
BITSTAMP = "calibration/bitstamp/bitstamp_btcusd_2015-05-01_events.log.gz"


class Stream:
    """Builds MARKET records of instrument 1; every call is one batch (one venue message)."""

    def __init__(self):
        self.rows = []

    def _batch(self, t_s, recs):
        ts = T0 + int(round(t_s * NS))
        for i, (kind, side, px, qty) in enumerate(recs):
            last = MFLAG_LAST_IN_BATCH if i == len(recs) - 1 else 0
            self.rows.append((0, kind, side, last, 1, ts, ts, px, qty, 0, 0))
        return self

    def snapshot(self, t_s, bids, asks):
        recs = [(MSG_SNAP_START, 0, 0, 0)]
        recs += [(MSG_LEVEL, SIDE_BUY, p, q) for p, q in bids]
        recs += [(MSG_LEVEL, SIDE_SELL, p, q) for p, q in asks]
        recs.append((MSG_SNAP_END, 0, 0, 0))
        return self._batch(t_s, recs)

    def level(self, t_s, side, px, qty):
        return self._batch(t_s, [(MSG_LEVEL, side, px, qty)])

    def move(self, t_s, bid, ask, old_bid, old_ask, qty=10):
        """The whole top moves: old levels leave, new ones come (one message)."""
        return self._batch(t_s, [(MSG_LEVEL, SIDE_BUY, old_bid, 0),
                                 (MSG_LEVEL, SIDE_SELL, old_ask, 0),
                                 (MSG_LEVEL, SIDE_BUY, bid, qty),
                                 (MSG_LEVEL, SIDE_SELL, ask, qty)])

    def trade(self, t_s, side, px, qty, prints=1):
        return self._batch(t_s, [(MSG_TRADE, side, px, qty)] * prints)

    def records(self):
        return np.array(self.rows, dtype=MARKET_DTYPE)


def tape_of(stream):
    return facts.build_tape(stream.records(), 1, INST.tick_size, INST.lot_size)


# ------------------------------------------------------------------------------------------
# Top of book, spread, depth
# ------------------------------------------------------------------------------------------
def test_spread_and_depth_are_sampled_every_100ms_from_the_valid_book():
    s = Stream().snapshot(0.0, [(1000, 4)], [(1002, 6)])
    s.level(1.0, SIDE_SELL, 1002, 0).level(1.0, SIDE_SELL, 1004, 6)   # spread 2 -> 4 at 1 s
    s.level(2.0, SIDE_BUY, 1000, 4)                                   # the data end at 2 s
    out = facts.spread_depth(tape_of(s))
    # grid 0.0 .. 2.0 s: 10 points with spread 2, 11 with spread 4 (the ask is gone at 1.0
    # between the two messages, so 1.0 s samples the book after both)
    assert out["spread_ticks"]["n"] == 21
    assert out["spread_ticks"]["mean"] == pytest.approx((10 * 2 + 11 * 4) / 21)
    assert out["spread_ticks"]["p10"] == 2 and out["spread_ticks"]["p90"] == 4
    assert out["spread_bps"]["p10"] == pytest.approx(2 / 1001 * 1e4)
    assert out["depth_lots"]["p10"] == 4 and out["depth_lots"]["p90"] == 6
    # quote value of the bid: 4 lots x 0.5 x 1000 ticks x 0.01
    assert out["depth_value"]["p10"] == pytest.approx(4 * 0.5 * 10.00)


def test_ticks_can_be_reported_in_a_coarser_tick_than_the_records_price_unit():
    s = Stream().snapshot(0.0, [(1000, 4)], [(1004, 6)]).level(1.0, SIDE_BUY, 1000, 5)
    coarse = facts.measure(s.records(), INST, price_tick=Decimal("0.02"))
    fine = facts.measure(s.records(), INST)
    assert fine["spread_ticks"]["p50"] == 4 and coarse["spread_ticks"]["p50"] == 2
    assert coarse["spread_bps"] == fine["spread_bps"]
    assert coarse["tick_size"] == pytest.approx(0.02)


def test_a_crossed_or_one_sided_book_is_not_priced_and_the_last_valid_mid_holds():
    s = Stream().snapshot(0.0, [(1000, 1)], [(1002, 1)])
    s.level(1.0, SIDE_SELL, 1002, 0)          # one-sided from 1 s to 2 s
    s.level(2.0, SIDE_SELL, 1010, 1)
    tape = tape_of(s)
    assert list(tape.top[:, facts.T_VALID]) == [1, 0, 1]
    t, mid = tape.valid_mid()
    assert list(mid) == [2002, 2010]
    assert facts.sample_at(t, mid, np.array([T0 + NS + NS // 2]))[0] == 2002


def test_prints_of_one_aggressive_order_are_one_trade_of_the_summed_size():
    s = Stream().snapshot(0.0, [(1000, 9)], [(1002, 9)])
    s.trade(1.0, SIDE_BUY, 1002, 3, prints=3)      # one market order against three makers
    s.trade(1.0, SIDE_SELL, 1000, 2)               # same time, other side: another trade
    s.trade(2.0, SIDE_SELL, 1000, 5)
    tr = tape_of(s).trades
    assert list(tr[:, facts.R_QTY]) == [9, 2, 5]
    assert list(tr[:, facts.R_SIDE]) == [SIDE_BUY, SIDE_SELL, SIDE_SELL]
    assert list(tr[:, facts.R_MID_X2]) == [2002, 2002, 2002]


def test_trade_sizes_are_in_the_instruments_units_and_counted_per_second():
    out = facts.trade_sizes(np.arange(1, 11), 0.5, 4.0)
    assert out["n"] == 10 and out["trades_per_s"] == 2.5
    assert out["mean"] == pytest.approx(2.75)
    assert out["median"] == pytest.approx(2.75)
    assert out["p90"] == pytest.approx(np.percentile(np.arange(1, 11) * 0.5, 90))


# ------------------------------------------------------------------------------------------
# Returns, kurtosis, autocorrelations
# ------------------------------------------------------------------------------------------
def test_grid_returns_see_the_mid_where_it_was_at_each_clock_tick():
    t = np.array([T0, T0 + 1_500_000_000, T0 + 3_200_000_000])
    mid = np.array([2000, 4000, 2000])
    r = facts.grid_log_returns(t, mid, T0, T0 + 4 * NS, NS)
    # samples at 0,1,2,3,4 s: 2000, 2000, 4000, 4000, 2000
    assert r == pytest.approx([0.0, math.log(2), 0.0, -math.log(2)])
    assert len(facts.grid_log_returns(t, mid, T0, T0 + 4 * NS, 10 * NS)) == 0


def test_excess_kurtosis_of_known_samples():
    assert facts.excess_kurtosis([1, -1, 1, -1]) == pytest.approx(-2.0)
    assert facts.excess_kurtosis([0] * 8 + [10, -10]) == pytest.approx(2.0)
    rng = np.random.default_rng(3)
    assert abs(facts.excess_kurtosis(rng.normal(size=200_000))) < 0.05
    assert facts.excess_kurtosis(rng.laplace(size=200_000)) == pytest.approx(3.0, abs=0.2)
    assert math.isnan(facts.excess_kurtosis([1.0, 1.0, 1.0, 1.0]))


def test_autocorrelation_of_alternating_signs_is_exact():
    n = 100
    x = np.array([1.0, -1.0] * (n // 2))
    acf = facts.autocorr(x, (1, 2, 5))
    assert acf["1"] == pytest.approx(-(n - 1) / n)
    assert acf["2"] == pytest.approx((n - 2) / n)
    assert acf["5"] == pytest.approx(-(n - 5) / n)


def test_trade_sign_autocorrelation_of_runs_of_ten():
    m, run = 20, 10
    sides = np.repeat(np.array([SIDE_BUY, SIDE_SELL] * (m // 2)), run)
    acf = facts.autocorr(facts.trade_signs(sides), (1, 10))
    n = m * run
    assert acf["1"] == pytest.approx((m * (run - 1) - (m - 1)) / n)
    assert acf["10"] == pytest.approx(-(n - 10) / n)


def test_absolute_returns_of_a_calm_half_and_a_wild_half_cluster():
    n, k = 200, 5
    absr = np.array([3.0] * (n // 2) + [1.0] * (n // 2))
    acf = facts.autocorr(absr, (1, k))
    assert acf["1"] == pytest.approx((n - 3) / n)
    assert acf["5"] == pytest.approx((n - 3 * k) / n)
    assert facts.autocorr(np.ones(10), (1,))["1"] is None


# ------------------------------------------------------------------------------------------
# Impact and markouts: trades followed by known mid moves
# ------------------------------------------------------------------------------------------
def impact_stream():
    """Trades of 1..4 lots, each followed 0.5 s later by a move of the whole book by as many
    ticks in the aggressor's direction; 20 s apart; buys and sells alternate."""
    s = Stream().snapshot(0.0, [(10_000, 10)], [(10_002, 10)])
    bid, ask = 10_000, 10_002
    t = 1.0
    for k in range(8):
        size = 1 + k % 4
        side = SIDE_BUY if k % 2 == 0 else SIDE_SELL
        sign = 1 if side == SIDE_BUY else -1
        s.trade(t, side, ask if side == SIDE_BUY else bid, size)
        s.move(t + 0.5, bid + sign * size, ask + sign * size, bid, ask)
        bid, ask = bid + sign * size, ask + sign * size
        t += 20.0
    s.level(t, SIDE_BUY, bid, 11)     # the data end 20 s after the last trade
    return s


def test_impact_after_one_second_grows_with_the_trade_size_bucket():
    out = facts.price_impact(tape_of(impact_stream()), NS, 4)
    assert [b["n"] for b in out] == [2, 2, 2, 2]
    assert [b["ticks"] for b in out] == pytest.approx([1, 2, 3, 4])
    assert [b["size_lo"] for b in out] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert out[0]["bps"] == pytest.approx(1 / 10_001 * 1e4, rel=2e-3)


def test_impact_is_zero_before_the_book_moves():
    out = facts.price_impact(tape_of(impact_stream()), NS // 10, 4)
    assert [b["ticks"] for b in out] == [0, 0, 0, 0]


def test_markouts_of_a_passive_fill_are_the_move_against_the_maker():
    tape = tape_of(impact_stream())
    out = facts.markouts(tape)
    sizes = np.array([1 + k % 4 for k in range(8)])
    assert out["100ms"]["ticks"] == 0
    assert out["1s"]["ticks"] == pytest.approx(-sizes.mean())
    assert out["10s"]["ticks"] == pytest.approx(-sizes.mean())
    assert out["1s"]["n"] == 8
    # the maker filled at the touch, 1 tick from the mid: edge = 1 - move
    assert out["1s"]["edge_ticks"] == pytest.approx(1 - sizes.mean())
    assert out["100ms"]["edge_ticks"] == pytest.approx(1.0)
    assert out["1s"]["bps"] < 0


# ------------------------------------------------------------------------------------------
# Time to deplete the best level
# ------------------------------------------------------------------------------------------
def test_best_level_lifetime_from_becoming_best_to_gone_or_bettered():
    s = Stream().snapshot(0.0, [(100, 5), (99, 5)], [(110, 5)])   # 100 best from before: cut
    s.level(1.0, SIDE_BUY, 101, 2)       # 101 becomes best
    s.level(3.5, SIDE_BUY, 101, 0)       # ... and is gone after 2.5 s: 100 best again
    s.level(4.0, SIDE_BUY, 100, 3)       # a size change at the best is no new level
    s.level(6.0, SIDE_BUY, 102, 1)       # 100 bettered after 2.5 s
    s.level(7.0, SIDE_BUY, 102, 0)       # 102 lived 1 s
    s.level(7.0, SIDE_SELL, 109, 4)      # ask 109 becomes best ...
    s.level(9.0, SIDE_SELL, 109, 0)      # ... for 2 s
    s.level(12.0, SIDE_BUY, 99, 1)       # the last runs are cut by the end of the data
    out = facts.depletion(tape_of(s))
    assert out["bid"]["n"] == 3
    assert out["bid"]["median_s"] == pytest.approx(2.5)
    assert out["ask"]["n"] == 1 and out["ask"]["median_s"] == pytest.approx(2.0)
    assert out["both"]["n"] == 4


def test_a_lifetime_ends_when_the_book_stops_being_valid():
    t = np.array([0, 1, 2, 3, 4]) * NS
    px = np.array([100, 101, 101, 0, 100])
    valid = np.array([1, 1, 1, 0, 1])
    assert list(facts.best_level_lifetimes(t, px, valid)) == [2.0]


# ------------------------------------------------------------------------------------------
# The Bitstamp loader on the real log
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bitstamp_head(tmp_path_factory):
    src = Path(__file__).resolve().parents[3] / "shared" / "data" / BITSTAMP
    if not src.is_file():
        pytest.skip(f"recorded data not found at {src}")
    with gzip.open(src, "rt") as f:
        lines = [next(f) for _ in range(4000)]
    from market.bitstamp import convert

    recs, meta = convert(src, max_lines=4000)
    return src, lines, recs, meta


def test_bitstamp_trades_keep_their_count_and_exact_decimal_values(bitstamp_head):
    _src, lines, recs, meta = bitstamp_head
    trade_lines = [json.loads(x.split(" ", 2)[2], parse_float=Decimal)
                   for x in lines if x.split(" ", 2)[1] == "trade"]
    tr = recs[recs["kind"] == MSG_TRADE]
    assert len(tr) == len(trade_lines) == meta["trades"] > 20
    assert sorted(tr["aux0"]) == sorted(int(d["id"]) for d in trade_lines)
    by_id = {int(d["id"]): d for d in trade_lines}
    for rec in tr:
        d = by_id[int(rec["aux0"])]
        assert rec["px_ticks"] == int((d["price"] * 100).to_integral_value())
        assert rec["qty_lots"] == int((d["amount"] * 10**8).to_integral_value())
    # 236.61000000000001 (a JSON float) is 23661 ticks; 1.7885566900000001 BTC 178855669 sats
    assert 23661 in set(tr["px_ticks"]) and 178855669 in set(tr["qty_lots"])


def test_bitstamp_trade_sides_follow_the_order_events(bitstamp_head):
    _src, _lines, recs, _meta = bitstamp_head
    tr = {int(r["aux0"]): r for r in recs[recs["kind"] == MSG_TRADE]}
    # 8111041: bid 65595247 (2 BTC at 236.47, newer) took 0.21144331 from ask 65595187
    assert tr[8111041]["side"] == SIDE_BUY
    # 8111042: ask 65595250 (created at 236.46, through the bid) sold 1.78855669 into bid
    # 65595247, which was deleted with amount 0
    assert tr[8111042]["side"] == SIDE_SELL
    # placed before its first execution event, at that event's time (ms before the line)
    assert tr[8111042]["exch_ts_ns"] == 1430438406337 * 1_000_000
    assert tr[8111042]["aux1"] == 1430438406348 * 1_000_000


def test_bitstamp_buys_print_above_the_mid_before_them_and_sells_below(bitstamp_head):
    _src, _lines, recs, _meta = bitstamp_head
    tape = facts.build_tape(recs, 1, Decimal("0.01"), Decimal("0.00000001"))
    tr = tape.trades
    off_mid = 2 * tr[:, facts.R_PX] - tr[:, facts.R_MID_X2]
    known = (tr[:, facts.R_MID_X2] > 0) & (off_mid != 0)
    agree = (off_mid > 0) == (tr[:, facts.R_SIDE] == SIDE_BUY)
    assert known.sum() > 20 and agree[known].mean() >= 0.9


def test_bitstamp_book_is_never_crossed_and_equals_each_snapshot_on_its_top_20(bitstamp_head):
    _src, lines, recs, _meta = bitstamp_head
    snaps = [json.loads(x.split(" ", 2)[2]) for x in lines if x.split(" ", 2)[1] == "order_book"]
    book = L2Book(1, 4096)
    px, qty, meta = book.arrays
    ends = np.flatnonzero(recs["kind"] == MSG_SNAP_END)
    assert len(ends) == len(snaps) > 100
    start = 0
    crossed = 0
    for k, end in enumerate(ends):
        for i in range(start, end + 1):
            book.apply(recs[i:i + 1])
            if recs[i]["flags"] & MFLAG_LAST_IN_BATCH and best_bid_px(px, meta, 1) and \
                    best_ask_px(px, meta, 1):
                crossed += best_bid_px(px, meta, 1) >= best_ask_px(px, meta, 1)
        start = end + 1
        for side, rows in ((0, snaps[k]["bids"]), (1, snaps[k]["asks"])):
            got = [(level_px(px, meta, 1, side, j), level_qty(qty, meta, 1, side, j))
                   for j in range(20)]
            want = [(int(Decimal(p) * 100), int(Decimal(q) * 10**8)) for p, q in rows]
            assert got == want
    assert crossed == 0


# ------------------------------------------------------------------------------------------
# run.py sim facts
# ------------------------------------------------------------------------------------------
STATISTICS = ["spread_ticks.mean", "spread_ticks.p10", "spread_ticks.p50", "spread_ticks.p90",
              "spread_bps.mean", "depth_lots.p50", "depth_value.mean", "trade_size.mean",
              "trade_size.median", "trade_size.p90", "trade_size.trades_per_s",
              "returns.1s.vol_bps", "returns.1s.excess_kurtosis",
              "abs_return_acf_1s.1", "trade_sign_acf.1", "impact_1s.q1.ticks",
              "impact_1s.q4.bps", "best_level_lifetime.both.median_s",
              "best_level_lifetime.both.p90_s", "markout.100ms.ticks", "markout.1s.bps",
              "markout.10s.ticks"]
EVERY_KEY = STATISTICS + ["returns.10s.vol_bps", "returns.60s.excess_kurtosis",
                          "abs_return_acf_1s.30", "trade_sign_acf.50", "depth_lots.mean"]


def test_sim_facts_prints_every_statistic_for_the_sim_and_the_bitstamp_log(
        shared_data, capsys):
    from pipeline.commands.sim import flatten

    # a busy simulated market (the calibrated default makes a trade every 20 s or so)
    rc = cli_main(["sim", "facts", "--duration", "20", "--event-rate", "1000", "--data",
                   str(shared_data / BITSTAMP), "--max-seconds", "600", "--json"])
    assert rc == 0
    cols = json.loads(capsys.readouterr().out)
    assert set(cols) == {"sim", "data"}
    sim, data = flatten(cols["sim"]), flatten(cols["data"])
    assert set(sim) == set(data)
    for key in EVERY_KEY:
        assert key in sim, key
    for key in STATISTICS:
        assert sim[key] is not None and data[key] is not None, key
    assert cols["sim"]["instrument"] == "BTC-USD@simA"
    assert cols["data"]["instrument"] == "BTC/USD@BITSTAMP"
    assert 19 < cols["sim"]["duration_s"] <= 20.0
    assert 500 < cols["data"]["duration_s"] <= 600
    assert cols["sim"]["trade_size"]["trades_per_s"] > 10     # the sim at 1000 events/s
    assert 230 < cols["data"]["mid_first"] < 240


def test_sim_facts_reads_a_lobster_message_file_with_its_orderbook_beside_it(shared_data,
                                                                            capsys):
    msg = shared_data / "lobster" / "AAPL_2012-06-21_34200000_57600000_message_10.csv"
    assert cli_main(["sim", "facts", "--duration", "5", "--data", str(msg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert data["instrument"] == "AAPL@LOBSTER"
    assert data["tick_size"] == pytest.approx(0.01)       # reported in cents, not 1/10000 USD
    assert data["trade_size"]["n"] > 0 and data["spread_ticks"]["p10"] >= 1
    assert 500 < data["mid_first"] < 600


def test_sim_facts_reads_a_record_file_within_max_seconds(shared_data, tmp_path, capsys):
    from market.lobster import convert_to_file

    d = shared_data / "lobster"
    stem = "AAPL_2012-06-21_34200000_57600000"
    rec = tmp_path / "aapl.rec"
    convert_to_file(d / f"{stem}_message_10.csv", d / f"{stem}_orderbook_10.csv", 10, rec)
    direct = ["sim", "facts", "--duration", "3", "--json", "--data"]
    assert cli_main([*direct, str(d / f"{stem}_message_10.csv")]) == 0
    via_lobster = json.loads(capsys.readouterr().out)["data"]
    assert cli_main([*direct, str(rec)]) == 0
    via_rec = json.loads(capsys.readouterr().out)["data"]
    for key in ("spread_ticks", "trade_size", "markout", "best_level_lifetime"):
        assert via_rec[key] == via_lobster[key]
    assert cli_main([*direct, str(rec), "--max-seconds", "2"]) == 0
    short = json.loads(capsys.readouterr().out)["data"]
    assert short["duration_s"] <= 2.0 < via_rec["duration_s"]
    assert short["trade_size"]["n"] < via_rec["trade_size"]["n"]


def test_sim_facts_table_has_a_row_per_statistic(capsys):
    assert cli_main(["sim", "facts", "--duration", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    for key in STATISTICS:
        assert any(line.split()[0] == key for line in out.splitlines() if line.strip()), key


@pytest.mark.parametrize("argv, needle", [
    (["--data", "/nonexistent/x.log"], "/nonexistent/x.log"),
    (["--instrument", "NOPE@simA"], "NOPE@simA"),
    (["--data", __file__], "not a recording"),
])
def test_sim_facts_bad_input_exits_2_naming_it(argv, needle, capsys):
    assert cli_main(["sim", "facts", "--duration", "1", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_sim_facts_bad_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["sim", "facts", "--duration", "-3"])
    assert exc.value.code == 2
    assert "--duration" in capsys.readouterr().err
