"""Recording -> record file (market issue's format) for backtests. Cold path (CLI ``run.py
replay binance|coinbase|kraken``, tests).

Every frame goes through the same handler as live data, so the file holds exactly what a
strategy would have received: snapshots, level updates, trades and status records (book
invalid / valid), each stamped with its recorded receive time and MFLAG_REPLAY.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feeds.check import resolve_instruments
from feeds.meta import detect_kraken_version, make_handler
from feeds.recording import feed_frames, read_recordings

_REPLAY_VENUES = {"binance": "binance", "coinbase": "coinbase", "coinbase-at": "coinbase-at",
                  "kraken": "kraken", "kraken-v1": "kraken-v1"}
FLUSH_RECORDS = 1 << 16


def instrument_table(venue: str, instruments) -> "InstrumentTable":
    from shm.instruments import Instrument, InstrumentTable
    return InstrumentTable([
        Instrument(i.instrument_id, sym, venue, 1, i.price.step, i.qty.step)
        for sym, i in sorted(instruments.items(), key=lambda kv: kv[1].instrument_id)])


def convert_recording(venue: str, files: list[str], out: str, config=None) -> dict:
    """Replay ``files`` through the ``venue`` handler and write every record to ``out``;
    instruments from ``config`` (a loaded config) if given and it lists the venue's.

    Returns a summary: records written, per-kind counts, the handler's counters, instruments.
    """
    from market.recordfile import RecordFileWriter
    from shm.records import MARKET_DTYPE, MARKET_KIND_NAMES

    if venue not in _REPLAY_VENUES:
        raise ValueError(f"unknown venue {venue!r} (known: {', '.join(_REPLAY_VENUES)})")
    files = [str(f) for f in files]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"recording not found: {f}")
    if venue == "kraken":
        venue = detect_kraken_version(files)
    instruments, source = resolve_instruments(venue, files, config)
    if not instruments:
        raise ValueError(f"no {venue} book, trade or ticker messages with a symbol found in "
                         f"{', '.join(files)}; is it a {venue} recording?")
    table = instrument_table(venue, instruments)
    handler = make_handler(venue, instruments, replay=True)
    kinds = np.zeros(256, dtype=np.int64)
    pending: list[np.ndarray] = []
    held = 0
    written = 0
    writer = RecordFileWriter(out, MARKET_DTYPE, table, meta={
        "source": "feeds.convert", "venue": venue, "files": [Path(f).name for f in files],
        "instrument_source": source})
    try:
        def on_records(recs):
            nonlocal held, written
            pending.append(recs.copy())    # the handler reuses its output array
            held += len(recs)
            if held >= FLUSH_RECORDS:
                batch = np.concatenate(pending)
                writer.append(batch)
                np.add.at(kinds, batch["kind"], 1)
                written += len(batch)
                pending.clear()
                held = 0

        frames = feed_frames(handler, read_recordings(files), on_records)
        if pending:
            batch = np.concatenate(pending)
            writer.append(batch)
            np.add.at(kinds, batch["kind"], 1)
            written += len(batch)
    finally:
        close = getattr(writer, "close", None)
        if close is not None:
            close()
    return {
        "venue": venue,
        "files": files,
        "out": str(out),
        "frames": frames,
        "records": written,
        "by_kind": {MARKET_KIND_NAMES.get(k, str(k)): int(kinds[k]) for k in np.nonzero(kinds)[0]},
        "instruments": {s: {"id": i.instrument_id, "tick": f"{i.price.step:f}",
                            "lot": f"{i.qty.step:f}"} for s, i in sorted(instruments.items())},
        "instrument_source": source,
        "stats": handler.stats.as_dict(),
    }
