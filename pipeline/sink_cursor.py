"""The PostgreSQL sink's cursor logic, free of any database: which journal records to copy
next, which of them are repeats, and how the cursor moves. Cold path (the sink process).

A *stream* is one kind of journal file (``orders-<k>.rec``, ``exec-<k>.rec``, one per journal
incarnation k) or one snapshot spool (``sink/pnl.jsonl``: one file, k = 0, positions in bytes).
Its ``Cursor`` is (k, pos, last_seq): the records of file k before ``pos`` are copied, and so is
every record whose ring sequence number is <= ``last_seq``. ``last_seq`` is what makes a
restarted journal's repeats harmless: a journal killed between its write and its ring commit
writes that tail again into its successor's file (stages/journal.py), with the same ring_seq.

Exactly once: the sink commits a batch's rows *and* the cursors after it in one database
transaction (pipeline/pgsink.py), and after any failure it forgets what it believed and reloads
the cursors from the database. A batch that failed left neither rows nor cursor; a batch that
committed though its reply was lost left both. Either way the next batch starts where the
database says, so every record lands exactly once. tests/unit/test_sink_cursor.py checks this
against random batch sizes, repeats and failures.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cursor:
    k: int = 0           # file (journal incarnation) being read
    pos: int = 0         # records (bytes for a spool) of file k already consumed
    last_seq: int = -1   # the highest sequence number copied so far (ring positions start
                         # at 0, so -1: none yet)


@dataclass(frozen=True)
class Span:
    k: int
    start: int
    stop: int


def plan(cursor: Cursor, available: list[tuple[int, int]], max_records: int):
    """(spans to read in order, the cursor once they are read) for at most ``max_records``
    records. ``available``: (k, complete records in file k), in order of k. A file is left for
    the next one only once a later file exists (its writer died: nothing more comes to it)."""
    spans = []
    k, pos = cursor.k, cursor.pos
    room = max_records
    files = [(fk, n) for fk, n in available if fk >= k]
    for idx, (fk, n) in enumerate(files):
        if fk > k:
            k, pos = fk, 0
        take = min(n - pos, room)
        if take > 0:
            spans.append(Span(fk, pos, pos + take))
            pos += take
            room -= take
        if room == 0:
            break
        if pos >= n and idx + 1 < len(files):
            continue          # this file is done and a later one exists: go on to it
        break
    return spans, Cursor(k, pos, cursor.last_seq)


def new_records(seqs: np.ndarray, last_seq: int) -> tuple[np.ndarray, int]:
    """(mask of the records to copy, the new last_seq): a record is new when its sequence
    number is above every one copied before it (repeats of a restarted journal are not)."""
    seqs = np.asarray(seqs, dtype=np.int64)
    if not len(seqs):
        return np.zeros(0, dtype=bool), int(last_seq)
    before = np.maximum.accumulate(np.concatenate(([np.int64(last_seq)], seqs)))[:-1]
    mask = seqs > before
    return mask, int(max(int(last_seq), int(seqs.max())))


def step(source, store, cursors: dict, max_records: int) -> tuple[int, dict]:
    """Copy one batch: plan every stream from its cursor, read, drop repeats, and commit rows
    and cursors together (``store.commit(batch, cursors)``, atomic; it raises on failure, and
    then the caller reloads the cursors with ``store.load_cursors()``). Returns (records
    committed, the cursors after the batch). ``source``: ``streams()``, ``available(stream)``,
    ``read(stream, span) -> records``, ``seqs(stream, records)``."""
    batch, after, n = {}, dict(cursors), 0
    for stream in source.streams():
        spans, cur = plan(cursors.get(stream, Cursor()), source.available(stream), max_records)
        if not spans:
            continue
        parts, last = [], cur.last_seq
        for sp in spans:
            recs = source.read(stream, sp)
            mask, last = new_records(source.seqs(stream, recs), last)
            parts.append(recs[mask])
            n += int(mask.sum())
        batch[stream] = parts
        after[stream] = Cursor(cur.k, cur.pos, last)
    if not batch:
        return 0, cursors
    store.commit(batch, after)
    return n, after
