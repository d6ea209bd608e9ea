"""LOBSTER replay: the rebuilt book equals the order book file, messages change it as they say,
trades keep count, volume and order; exact time parsing; halts and invisible messages."""
from __future__ import annotations

import numpy as np
import pytest

from market.lobster import (DUMMY_ASK_PX, DUMMY_BID_PX, book_rows, convert, read_messages,
                            read_orderbook, seconds_to_ns)
from market.recordfile import open_record_file
from pipeline.cli import main as cli_main
from shm.records import (MFLAG_LAST_IN_BATCH, MSG_STATUS, MSG_TRADE, SIDE_BUY, SIDE_SELL,
                         STATUS_HALTED, STATUS_TRADING, STATUS_UNCHANGED)

STEM = "AAPL_2012-06-21_34200000_57600000"
LEVELS = 10


@pytest.fixture
def lobster(shared_data):
    d = shared_data / "lobster"
    return d / f"{STEM}_message_10.csv", d / f"{STEM}_orderbook_10.csv"


def test_book_csv_from_the_replayed_file_equals_the_original_order_book_file(lobster, tmp_path):
    msg, ob = lobster
    rec, out = tmp_path / "aapl.rec", tmp_path / "book.csv"
    assert cli_main(["replay", "lobster", "--message", str(msg), "--orderbook", str(ob),
                     "--levels", str(LEVELS), "--out", str(rec)]) == 0
    assert cli_main(["book", "--data", str(rec), "--levels", str(LEVELS), "--csv", str(out)]) == 0
    want = ob.read_bytes().rstrip(b"\n") + b"\n"
    got = out.read_bytes()
    assert got.count(b"\n") == 999
    assert got == want


def _side(row, side):
    off = 2 if side == "bid" else 0
    return {int(row[4 * i + off]): int(row[4 * i + off + 1])
            for i in range(LEVELS) if row[4 * i + off + 1] > 0}


def _only_boundary_changes(prev, cur, price, side):
    """Levels other than ``price`` may only fall off or come in at the depth boundary."""
    worst = min if side == "bid" else max
    for p in set(prev) | set(cur):
        if p == price or prev.get(p) == cur.get(p):
            continue
        fell_off = p not in cur and len(prev) == LEVELS and p == worst(prev)
        came_in = p not in prev and len(cur) == LEVELS and p == worst(cur)
        if not (fell_off or came_in):
            return False
    return True


def test_every_message_changes_the_replayed_book_as_its_side_price_and_size_imply(lobster):
    msg, ob = lobster
    recs, _ = convert(msg, ob, LEVELS)
    rows = book_rows(recs, 1, LEVELS)
    msgs = read_messages(msg)
    checked = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 7: 0}
    deeper_seen = 0
    for i in range(1, len(msgs)):
        _, mtype, _, size, price, direction = (int(v) for v in msgs[i])
        side = "bid" if direction == 1 else "ask"
        other = "ask" if side == "bid" else "bid"
        prev, cur = _side(rows[i - 1], side), _side(rows[i], side)
        if mtype in (5, 7):
            assert np.array_equal(rows[i - 1], rows[i]), f"message {i + 1} (type {mtype})"
            checked[mtype] += 1
            continue
        assert _side(rows[i - 1], other) == _side(rows[i], other), f"message {i + 1}"
        deeper = len(prev) == LEVELS and (price < min(prev) if side == "bid" else
                                          price > max(prev))
        if deeper:   # below the recorded depth: nothing visible may change
            assert prev == cur, f"message {i + 1}"
            deeper_seen += 1
            continue
        delta = size if mtype == 1 else -size
        assert cur.get(price, 0) == prev.get(price, 0) + delta, f"message {i + 1}"
        assert _only_boundary_changes(prev, cur, price, side), f"message {i + 1}"
        checked[mtype] += 1
    assert sum(checked.values()) + deeper_seen == len(msgs) - 1
    assert all(checked[t] > 0 for t in (1, 3, 4, 5)), checked


def test_trades_keep_count_volume_order_and_exact_times(lobster):
    msg, ob = lobster
    recs, meta = convert(msg, ob, LEVELS)
    msgs = read_messages(msg)
    execs = msgs[np.isin(msgs[:, 1], (4, 5))]
    trades = recs[recs["kind"] == MSG_TRADE]
    assert len(trades) == len(execs) > 0
    assert trades["qty_lots"].sum() == execs[:, 3].sum()
    assert np.array_equal(trades["qty_lots"], execs[:, 3])
    assert np.array_equal(trades["px_ticks"], execs[:, 4])
    assert np.array_equal(trades["exch_ts_ns"] - meta["midnight_ns"], execs[:, 0])
    assert np.all(np.diff(trades["exch_ts_ns"]) >= 0)
    # an executed resting sell order (-1) means the buyer was the aggressor
    want_side = np.where(execs[:, 5] == -1, SIDE_BUY, SIDE_SELL)
    assert np.array_equal(trades["side"], want_side)
    assert np.array_equal(trades["aux1"], execs[:, 1])
    assert np.count_nonzero(recs["flags"] & MFLAG_LAST_IN_BATCH) == len(msgs)


def test_times_are_converted_to_nanoseconds_exactly():
    assert seconds_to_ns("34200.004241176") == 34_200_004_241_176
    assert seconds_to_ns("34200.1") == 34_200_100_000_000
    assert seconds_to_ns("57599.999999999") == 57_599_999_999_999
    assert seconds_to_ns("36000") == 36_000_000_000_000
    for bad in ("1.0000000001", "-1.5", "1e3", ""):
        with pytest.raises(ValueError):
            seconds_to_ns(bad)


def _write_pair(tmp_path, messages, rows, levels=2):
    m = tmp_path / f"TEST_2020-01-02_0_1_message_{levels}.csv"
    o = tmp_path / f"TEST_2020-01-02_0_1_orderbook_{levels}.csv"
    m.write_text("\n".join(messages))
    o.write_text("\n".join(",".join(map(str, r)) for r in rows))
    return m, o


def test_halts_and_messages_below_the_recorded_depth_still_make_one_row_each(tmp_path):
    A, a0, b0 = DUMMY_ASK_PX, 0, DUMMY_BID_PX
    m, o = _write_pair(tmp_path, [
        "34200.5,1,1,10,1000100,-1",      # ask 100.01 x 10
        "34200.6,1,2,5,999900,1",         # bid 99.99 x 5
        "34200.7,1,3,7,999800,1",         # bid 99.98 x 7
        "34200.8,1,4,3,999700,1",         # bid 99.97: below the 2 recorded levels
        "34201,7,0,0,-1,-1",              # halt
        "34202,7,0,0,1,-1",               # trading resumes
        "34203,5,9,4,1000000,1",          # hidden execution
    ], [
        [1000100, 10, b0, a0, A, 0, b0, 0],
        [1000100, 10, 999900, 5, A, 0, b0, 0],
        [1000100, 10, 999900, 5, A, 0, 999800, 7],
        [1000100, 10, 999900, 5, A, 0, 999800, 7],
        [1000100, 10, 999900, 5, A, 0, 999800, 7],
        [1000100, 10, 999900, 5, A, 0, 999800, 7],
        [1000100, 10, 999900, 5, A, 0, 999800, 7],
    ])
    recs, meta = convert(m, o, 2)
    assert np.array_equal(book_rows(recs, 1, 2), read_orderbook(o, 2))
    status = recs[recs["kind"] == MSG_STATUS]
    assert list(status["aux0"]) == [STATUS_UNCHANGED, STATUS_HALTED, STATUS_TRADING]
    assert meta["midnight_ns"] == 1_577_941_200 * 10**9   # 2020-01-02 00:00 New York (EST)
    out = tmp_path / "t.rec"
    assert cli_main(["replay", "lobster", "--message", str(m), "--orderbook", str(o),
                     "--levels", "2", "--out", str(out)]) == 0
    header, stored = open_record_file(out)
    assert np.array_equal(np.asarray(stored), recs)
    assert header["instruments"][0]["symbol"] == "TEST"
    assert header["instruments"][0]["tick_size"] == "0.0001"


def test_mismatched_files_and_missing_feeds_give_clean_errors(tmp_path, capsys):
    m, o = _write_pair(tmp_path, ["34200.5,1,1,10,1000100,-1"], [[1, 1, 1, 1], [1, 1, 1, 1]], 1)
    assert cli_main(["replay", "lobster", "--message", str(m), "--orderbook", str(o),
                     "--levels", "1", "--out", str(tmp_path / "x.rec")]) == 2   # input error
    assert "equal row counts" in capsys.readouterr().err
    assert cli_main(["replay", "kraken", "--file", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "k.rec")]) == 2
    assert "--file" in capsys.readouterr().err


def test_book_command_writes_ticks_or_exact_decimals_on_request(tmp_path):
    m, o = _write_pair(tmp_path, ["34200.5,1,1,10,1000100,-1", "34200.6,1,2,5,999900,1"],
                       [[1000100, 10, DUMMY_BID_PX, 0], [1000100, 10, 999900, 5]], 1)
    rec = tmp_path / "t.rec"
    assert cli_main(["replay", "lobster", "--message", str(m), "--orderbook", str(o),
                     "--levels", "1", "--out", str(rec)]) == 0
    want = {"ticks": ["1000100,10,-9999999999,0", "1000100,10,999900,5"],
            "decimal": ["100.0100,10,-9999999999,0", "100.0100,10,99.9900,5"]}
    for units, rows in want.items():
        out = tmp_path / f"{units}.csv"
        assert cli_main(["book", "--data", str(rec), "--levels", "1", "--csv", str(out),
                         "--units", units]) == 0
        assert out.read_text().splitlines() == rows
