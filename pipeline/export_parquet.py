"""``run.py export RUN_DIR --parquet OUT``: the journal's records as Parquet files (pyarrow).
Cold path (operator's shell).

``OUT/orders.parquet`` (every intent as the gate decided it) and ``OUT/executions.parquet``
(every execution report; fills are ``kind`` "fill" / "partial"), with named, typed columns
(pipeline/journal_columns.py): times as ``timestamp[ns, UTC]``, codes as dictionary-encoded
names, prices and quantities as ``decimal128(38, s)`` = ticks x tick size (lots x lot size) of
each row's instrument, exact. The raw integers (``px_ticks``, ``qty_lots``) stay beside them.
The file metadata holds the run directory and the instrument table.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.journal_columns import exec_columns, order_columns

TIME_COLUMNS = ("send_ts_ns", "venue_ts_ns", "cause_recv_ts_ns")


def _decimal_array(unscaled, scale: int):
    """decimal128(38, scale) from integer unscaled values, without Python Decimals when they
    fit int64: the 16-byte little-endian two's complement words are built in numpy."""
    import pyarrow as pa

    typ = pa.decimal128(38, scale)
    if unscaled.dtype == object:
        from decimal import Decimal

        return pa.array([Decimal(int(v)).scaleb(-scale) for v in unscaled], type=typ)
    lo = np.asarray(unscaled, dtype=np.int64)
    words = np.empty((len(lo), 2), dtype=np.int64)
    words[:, 0] = lo
    words[:, 1] = lo >> 63            # sign extension into the high word
    return pa.Array.from_buffers(typ, len(lo), [None, pa.py_buffer(words.tobytes())])


def to_table(cols: dict, meta: dict):
    import pyarrow as pa

    arrays, names = [], []
    for name, v in cols.items():
        if isinstance(v, tuple):
            arr = _decimal_array(*v)
        elif name in TIME_COLUMNS:
            name = name[:-3]          # send_ts_ns -> send_ts, a timestamp
            arr = pa.array(v, type=pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
        elif v.dtype == object:
            arr = pa.array(v, type=pa.string()).dictionary_encode()
        else:
            arr = pa.array(v)
        arrays.append(arr)
        names.append(name)
    t = pa.Table.from_arrays(arrays, names=names)
    return t.replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})


def export_parquet(run, out_dir) -> dict:
    """Write ``orders.parquet`` and ``executions.parquet`` of ``run`` (pipeline.rundir.RunDir)
    into ``out_dir``; {file name: rows}."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"hftfarm_run_dir": str(run.path), "hftfarm_kind": run.kind,
            "hftfarm_instruments": [{"instrument_id": i.instrument_id, "key": i.key,
                                     "tick_size": str(i.tick_size),
                                     "lot_size": str(i.lot_size)} for i in run.instruments]}
    written = {}
    for fname, cols in (("orders.parquet", order_columns(run.orders, run.instruments,
                                                         run.strategy_names)),
                        ("executions.parquet", exec_columns(run.execs, run.instruments,
                                                            run.strategy_names))):
        table = to_table(cols, meta)
        tmp = out / (fname + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(out / fname)
        written[fname] = table.num_rows
    return written
