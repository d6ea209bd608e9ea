"""Record files: round trip through numpy.memmap, precise errors, truncated files."""
from __future__ import annotations

import struct
from decimal import Decimal

import numpy as np
import pytest

from market.recordfile import (FORMAT_VERSION, RecordFileError, RecordFileWarning,
                               RecordFileWriter, instruments_from_header, open_record_file)
from shm.instruments import Instrument
from shm.records import EXEC_DTYPE, MARKET_DTYPE, MSG_LEVEL, MSG_TRADE

INSTS = [Instrument(1, "BTC-USD", "simA", 1, Decimal("0.01"), Decimal("0.0001"), "BTC"),
         Instrument(2, "ETH-USD", "simA", 1, Decimal("0.01"), Decimal("0.001"), "ETH")]


def market_records(n, start=0):
    r = np.zeros(n, dtype=MARKET_DTYPE)
    r["kind"] = np.where(np.arange(n) % 3 == 0, MSG_TRADE, MSG_LEVEL)
    r["instrument_id"] = 1 + np.arange(n) % 2
    r["px_ticks"] = 6_000_000 + np.arange(start, start + n)
    r["qty_lots"] = np.arange(start, start + n) + 1
    r["exch_ts_ns"] = 1_700_000_000_000_000_000 + np.arange(start, start + n)
    return r


def test_records_written_in_chunks_read_back_equal_through_memmap(tmp_path):
    path = tmp_path / "md.rec"
    a, b = market_records(1000), market_records(234, start=1000)
    with RecordFileWriter(path, MARKET_DTYPE, INSTS, meta={"source": "test"}) as w:
        w.append(a)
        w.append(b[:0])
        w.append(b)
    header, recs = open_record_file(path)
    assert isinstance(recs, np.memmap) and recs.dtype == MARKET_DTYPE
    assert np.array_equal(np.asarray(recs), np.concatenate([a, b]))
    assert header["header_len"] % 64 == 0 and header["record_count"] == 1234
    assert header["version"] == FORMAT_VERSION and header["dtype_name"] == "market"
    assert header["meta"] == {"source": "test"} and header["truncated_bytes"] == 0
    assert instruments_from_header(header) == INSTS
    # A plain numpy.memmap with the header length reads the same bytes.
    raw = np.memmap(path, dtype=MARKET_DTYPE, mode="r", offset=header["header_len"])
    assert np.array_equal(raw, recs)


def test_empty_file_reads_as_zero_records(tmp_path):
    path = tmp_path / "empty.rec"
    RecordFileWriter(path, EXEC_DTYPE, INSTS).close()
    header, recs = open_record_file(path)
    assert len(recs) == 0 and recs.dtype == EXEC_DTYPE and header["dtype_name"] == "exec"


def test_reading_as_another_layout_names_the_file_and_the_fields(tmp_path):
    path = tmp_path / "md.rec"
    with RecordFileWriter(path, MARKET_DTYPE, INSTS) as w:
        w.append(market_records(3))
    with pytest.raises(RecordFileError) as err:
        open_record_file(path, EXEC_DTYPE)
    msg = str(err.value)
    assert str(path) in msg and "layout differs" in msg and "itemsize=128" in msg


def test_a_changed_layout_in_the_file_is_reported_field_by_field(tmp_path):
    path = tmp_path / "old.rec"
    old = np.dtype([(n, MARKET_DTYPE.fields[n][0]) for n in MARKET_DTYPE.names if n != "aux1"]
                   + [("aux9", "<i8")], align=True)
    with RecordFileWriter(path, old, INSTS) as w:
        w.append(np.zeros(2, dtype=old))
    with pytest.raises(RecordFileError) as err:
        open_record_file(path, MARKET_DTYPE)
    assert "aux9@56:<i8" in str(err.value) and "aux1@56:<i8" in str(err.value)


def test_wrong_magic_and_wrong_version_are_named(tmp_path):
    path = tmp_path / "x.rec"
    path.write_bytes(b"NOTAFILE" + bytes(100))
    with pytest.raises(RecordFileError, match="not an hftfarm record file"):
        open_record_file(path)
    good = tmp_path / "v.rec"
    RecordFileWriter(good, MARKET_DTYPE, INSTS).close()
    data = bytearray(good.read_bytes())
    data[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
    good.write_bytes(bytes(data))
    with pytest.raises(RecordFileError, match=f"version {FORMAT_VERSION + 1}"):
        open_record_file(good)
    with pytest.raises(RecordFileError, match="no such record file"):
        open_record_file(tmp_path / "missing.rec")


def test_appending_the_wrong_dtype_is_refused(tmp_path):
    with RecordFileWriter(tmp_path / "m.rec", MARKET_DTYPE, INSTS) as w:
        with pytest.raises(RecordFileError, match="appending"):
            w.append(np.zeros(1, dtype=EXEC_DTYPE))


def test_file_cut_mid_record_reads_the_whole_records_and_counts_the_rest(tmp_path):
    path = tmp_path / "cut.rec"
    recs = market_records(10)
    with RecordFileWriter(path, MARKET_DTYPE, INSTS) as w:
        w.append(recs)
    data = path.read_bytes()
    path.write_bytes(data[:-100])   # loses record 9; 28 of record 8's 64 bytes are left
    with pytest.warns(RecordFileWarning, match="28 bytes"):
        header, got = open_record_file(path)
    assert len(got) == 8 and np.array_equal(np.asarray(got), recs[:8])
    assert header["truncated_bytes"] == 28 and header["records_missing"] == 2


def test_unflushed_writer_file_is_readable_from_its_size(tmp_path):
    path = tmp_path / "live.rec"
    w = RecordFileWriter(path, MARKET_DTYPE, INSTS)
    w.append(market_records(5))
    w._f.flush()                      # bytes on disk, header count not yet rewritten
    header, got = open_record_file(path)
    assert len(got) == 5 and header["header_record_count"] == 0
    w.close()
    assert open_record_file(path)[0]["header_record_count"] == 5
