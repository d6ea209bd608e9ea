"""The PostgreSQL sink's cursor logic without a database (pipeline/sink_cursor.py): whatever
the batch sizes, the journal's growth, its restarted incarnations' repeated tails and the
failures (a commit lost before or after the store made it durable), every record lands in the
store exactly once and in order."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sink_cursor import Cursor, Span, new_records, plan, step


class FakeJournal:
    """Files k = 0.. of records (their ring_seq), revealed a prefix at a time as a live
    journal grows; a later file exists only once the earlier one is complete."""

    def __init__(self, files):
        self.files = [np.asarray(f, dtype=np.int64) for f in files]
        self.shown = 0            # records revealed, counted over the files in order

    def grow(self, n):
        self.shown = min(self.shown + n, sum(len(f) for f in self.files))

    def streams(self):
        return ["exec"]

    def available(self, stream):
        out, left = [], self.shown
        for k, f in enumerate(self.files):
            if left <= 0 and k > 0:
                break
            out.append((k, min(len(f), left)))
            left -= len(f)
        return out

    def read(self, stream, span: Span):
        return self.files[span.k][span.start:span.stop]

    def seqs(self, stream, recs):
        return recs


class Crash(Exception):
    pass


class FakeStore:
    """Atomic commits of rows + cursors; a commit may fail before it is durable, or after
    (the reply lost): the caller cannot tell which."""

    def __init__(self, failures):
        self.rows: list[int] = []
        self.cursors: dict = {}
        self.failures = list(failures)

    def load_cursors(self):
        return dict(self.cursors)

    def commit(self, batch, cursors):
        fail = self.failures.pop(0) if self.failures else "ok"
        if fail == "before":
            raise Crash("connection lost before commit")
        for part in batch["exec"]:
            self.rows.extend(int(x) for x in part)
        self.cursors = dict(cursors)
        if fail == "after":
            raise Crash("connection lost after commit")


@st.composite
def journals(draw):
    """Incarnations of a journal: increasing ring_seq, each successor possibly repeating the
    tail of its predecessor (killed between its write and its ring commit)."""
    nfiles = draw(st.integers(1, 4))
    files, seq = [], -1          # ring positions start at 0, as the journal's do
    for k in range(nfiles):
        prev = files[-1] if files else []
        rep = draw(st.integers(0, min(len(prev), 5))) if k else 0
        n = draw(st.integers(0 if k else 1, 40))
        f = list(prev[len(prev) - rep:]) if rep else []
        f += list(range(seq + 1, seq + 1 + n))
        seq += n
        files.append(f)
    return files


@settings(max_examples=300, deadline=None)
@given(journals(), st.lists(st.integers(1, 17), min_size=1, max_size=60),
       st.lists(st.sampled_from(["ok", "ok", "before", "after"]), max_size=40),
       st.lists(st.integers(0, 25), min_size=1, max_size=60))
def test_every_record_lands_exactly_once_whatever_the_batches_and_failures(
        files, batch_sizes, failures, growth):
    journal = FakeJournal(files)
    store = FakeStore(failures)
    cursors = store.load_cursors()
    expected = sorted(set(x for f in files for x in f))
    for i in range(400):
        journal.grow(growth[i % len(growth)])
        try:
            _n, cursors = step(journal, store, cursors, batch_sizes[i % len(batch_sizes)])
        except Crash:
            cursors = store.load_cursors()      # the database's word, not our belief
    journal.grow(10 ** 6)
    for _ in range(10_000):                     # the rest, failures included
        try:
            n, cursors = step(journal, store, cursors, 7)
        except Crash:
            cursors = store.load_cursors()
            continue
        if n == 0 and not plan(cursors.get("exec", Cursor()), journal.available("exec"),
                               1)[0]:
            break
    assert store.rows == expected               # each once, in journal order


def test_plan_waits_on_a_file_until_a_later_one_exists():
    spans, cur = plan(Cursor(0, 5, 5), [(0, 5)], 100)
    assert spans == [] and cur == Cursor(0, 5, 5)
    spans, cur = plan(Cursor(0, 5, 5), [(0, 7), (1, 3)], 100)
    assert spans == [Span(0, 5, 7), Span(1, 0, 3)] and cur == Cursor(1, 3, 5)
    spans, cur = plan(Cursor(0, 0, 0), [(0, 7), (1, 3)], 4)
    assert spans == [Span(0, 0, 4)] and cur == Cursor(0, 4, 0)


def test_repeats_of_a_restarted_journal_are_dropped():
    mask, last = new_records([4, 5, 6, 5, 6, 7], 3)
    assert mask.tolist() == [True, True, True, False, False, True] and last == 7
    mask, last = new_records([1, 2], 2)
    assert mask.tolist() == [False, False] and last == 2
    mask, last = new_records([0, 1], Cursor().last_seq)     # the very first ring position
    assert mask.tolist() == [True, True] and last == 1
