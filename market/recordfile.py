"""Record files: a self-describing header, then raw fixed-size records (numpy.memmap-able).

Written by ``run.py replay ...`` (converters), the journal stage and backtests; read by
``run.py book``, backtests and tests. Cold path (file I/O), but the writer keeps memory bounded
(records go straight from the caller's array to the file), so the journal can use it live.

File layout (little endian)::

    0   8s  magic b"HFTREC\\0\\1"
    8   u4  format version (FORMAT_VERSION)
    12  u4  header_len: bytes before the first record, a multiple of 64
    16  i8  layout_hash of the record dtype (shm.records.layout_hash)
    24  u4  record_size (dtype.itemsize)
    28  u4  json_len: bytes of the JSON text at offset 64
    32  i8  record_count at the last flush/close (the file size is the truth after a crash)
    40  24  reserved (0)
    64  JSON {"version", "dtype_name", "layout" (layout_description), "layout_hash",
              "instruments": [{instrument_id, symbol, venue, venue_id, tick_size, lot_size,
              group}], "meta": {free-form, e.g. the LOBSTER source}}, space-padded
    header_len ... records

API::

    with RecordFileWriter(path, MARKET_DTYPE, instruments, meta={...}) as w:
        w.append(records)                 # any number of times
    header, records = open_record_file(path)            # dtype found from the stored layout
    header, records = open_record_file(path, MARKET_DTYPE)   # or insist on one
    instruments_from_header(header) -> list[shm.instruments.Instrument]

The reader raises ``RecordFileError`` naming the file and what differs (magic, version, layout
fields). A file cut mid-record is read up to the last whole record: ``header["truncated_bytes"]``
says how many trailing bytes were ignored (a ``RecordFileWarning`` is issued too), and
``header["records_missing"]`` how many records the header promised beyond the file's end.
"""
from __future__ import annotations

import json
import os
import struct
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np

from shm.records import RECORD_DTYPES, dtype_name, layout_description, layout_diff, layout_hash

MAGIC = b"HFTREC\x00\x01"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIIqIIq24x")
_COUNT_OFFSET = 32
ALIGN = 64


class RecordFileError(ValueError):
    """A record file that cannot be read as asked; the message names the file and the cause."""


class RecordFileWarning(UserWarning):
    pass


def _instrument_json(instruments) -> list[dict]:
    out = []
    for inst in instruments or []:
        if isinstance(inst, dict):
            out.append({k: (str(v) if isinstance(v, Decimal) else v) for k, v in inst.items()})
            continue
        out.append({"instrument_id": inst.instrument_id, "symbol": inst.symbol,
                    "venue": inst.venue, "venue_id": inst.venue_id,
                    "tick_size": str(inst.tick_size), "lot_size": str(inst.lot_size),
                    "group": inst.group})
    return out


def instruments_from_header(header: dict):
    from shm.instruments import Instrument

    return [Instrument(int(d["instrument_id"]), d["symbol"], d["venue"], int(d["venue_id"]),
                       Decimal(d["tick_size"]), Decimal(d["lot_size"]), d.get("group", ""))
            for d in header["instruments"]]


class RecordFileWriter:
    """Append-only writer; the header's record count is rewritten on flush() and close().

    Files are created owner-only (0600): they are trading records. ``buffered=False`` hands
    every ``append`` straight to the kernel (one write(2), no user-space buffer): once it
    returns, the records survive the death of the writing process (the journal relies on this;
    surviving a power cut would need fsync as well)."""

    def __init__(self, path, dtype: np.dtype, instruments=(), meta: dict | None = None,
                 buffered: bool = True):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.count = 0
        doc = {"version": FORMAT_VERSION, "dtype_name": dtype_name(self.dtype),
               "layout": layout_description(self.dtype), "layout_hash": layout_hash(self.dtype),
               "instruments": _instrument_json(instruments), "meta": meta or {}}
        text = json.dumps(doc, sort_keys=True).encode()
        header_len = -(-(_PREFIX.size + len(text)) // ALIGN) * ALIGN
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, header_len, layout_hash(self.dtype),
                              self.dtype.itemsize, len(text), 0)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._f = os.fdopen(fd, "wb", buffering=-1 if buffered else 0)
        self._f.write(prefix + text + b" " * (header_len - _PREFIX.size - len(text)))
        self.header_len = header_len

    def append(self, records: np.ndarray) -> None:
        if records.dtype != self.dtype:
            raise RecordFileError(f"{self.path}: appending {records.dtype} records to a file of "
                                  f"{dtype_name(self.dtype)} records")
        if len(records) == 0:
            return
        data = memoryview(np.ascontiguousarray(records)).cast("B")
        done = self._f.write(data)
        while done is not None and done < len(data):   # unbuffered: write(2) may be short
            done += self._f.write(data[done:])
        self.count += len(records)

    def flush(self) -> None:
        self._f.flush()
        pos = self._f.tell()
        self._f.seek(_COUNT_OFFSET)
        self._f.write(struct.pack("<q", self.count))
        self._f.seek(pos)
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_header(path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(_PREFIX.size)
            if len(raw) < _PREFIX.size:
                raise RecordFileError(f"{path}: {len(raw)} bytes, too short for a record file "
                                      f"header ({_PREFIX.size} bytes)")
            magic, version, header_len, lhash, rsize, json_len, count = _PREFIX.unpack(raw)
            if magic != MAGIC:
                raise RecordFileError(f"{path}: not an hftfarm record file (magic {magic!r}, "
                                      f"expected {MAGIC!r})")
            if version != FORMAT_VERSION:
                raise RecordFileError(f"{path}: record file format version {version}, this "
                                      f"build reads version {FORMAT_VERSION}")
            text = f.read(json_len)
    except FileNotFoundError:
        raise RecordFileError(f"{path}: no such record file") from None
    if len(text) < json_len:
        raise RecordFileError(f"{path}: header cut short ({len(text)} of {json_len} JSON bytes)")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise RecordFileError(f"{path}: header JSON unreadable: {exc}") from None
    if doc.get("layout_hash") != lhash or "layout" not in doc:
        raise RecordFileError(f"{path}: header corrupt (layout hash {lhash} in the prefix, "
                              f"{doc.get('layout_hash')} in the JSON)")
    doc.update(header_len=header_len, record_size=rsize, header_record_count=count,
               path=str(path))
    return doc


def _resolve_dtype(path, doc, dtype):
    if dtype is not None:
        dtype = np.dtype(dtype)
        if layout_description(dtype) != doc["layout"]:
            raise RecordFileError(f"{path}: record layout differs from {dtype_name(dtype)}: "
                                  f"{layout_diff(dtype, doc['layout'])}")
        return dtype
    for name, dt in RECORD_DTYPES.items():
        if layout_description(dt) == doc["layout"]:
            return dt
    known = RECORD_DTYPES.get(doc.get("dtype_name"))
    if known is not None:
        raise RecordFileError(f"{path}: stored {doc['dtype_name']} layout differs from this "
                              f"build's: {layout_diff(known, doc['layout'])}")
    raise RecordFileError(f"{path}: record layout matches no known dtype: {doc['layout']}")


def open_record_file(path, dtype=None, mode: str = "r"):
    """(header dict, records as a read-only numpy.memmap of the whole records in the file)."""
    path = Path(path)
    doc = read_header(path)
    dt = _resolve_dtype(path, doc, dtype)
    size = os.path.getsize(path)
    body = max(0, size - doc["header_len"])
    n = body // dt.itemsize
    doc["truncated_bytes"] = body - n * dt.itemsize
    doc["records_missing"] = max(0, doc["header_record_count"] - n)
    doc["record_count"] = n
    if doc["truncated_bytes"]:
        warnings.warn(f"{path}: ignoring {doc['truncated_bytes']} bytes of a record cut short "
                      f"after record {n}", RecordFileWarning, stacklevel=2)
    if n == 0:
        return doc, np.zeros(0, dtype=dt)
    return doc, np.memmap(path, dtype=dt, mode=mode, offset=doc["header_len"], shape=(n,))
