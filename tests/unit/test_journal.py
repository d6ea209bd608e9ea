"""The journal stage on in-process rings: what it wrote survives its own death (no user-space
buffer), a journal killed between its write and its ring commit loses nothing and its
successor's repeat is dropped by the readers, files are owner-only, events append in order."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from shm.records import EXEC_DTYPE, ORDER_DTYPE
from stages.journal import (append_event, read_events, read_journal_exec,
                            read_journal_orders)
from tests.inproc import InProcessInstance


@pytest.fixture
def inst(tmp_path, shm_prefix):
    with InProcessInstance(tmp_path, shm_prefix, strategies=1) as i:
        yield i


def _orders(n, start=1):
    o = np.zeros(n, dtype=ORDER_DTYPE)
    o["client_order_id"] = np.arange(start, start + n)
    o["strategy_id"] = 1
    return o


def test_records_are_in_the_file_as_soon_as_a_poll_returns_without_a_flush(inst):
    journal = inst.stage("journal")
    w = inst.writer("jorder")
    w.publish(_orders(10))
    journal.next_flush = 1 << 62        # no periodic flush: only the write itself
    journal.poll()
    inst.crash(journal)                  # kill -9: nothing of the process survives
    got = read_journal_orders(inst.jdir)
    assert got["client_order_id"].tolist() == list(range(1, 11))


def test_a_journal_killed_between_write_and_commit_is_repeated_once_and_read_once(inst):
    journal = inst.stage("journal")
    w = inst.writer("jorder")
    w.publish(_orders(5))
    reader, buf, fw, _lossless = journal.inputs[0]
    n = reader.peek(buf)
    fw.append(buf[:n])                   # written ...
    inst.crash(journal)                  # ... and killed before the commit
    w.publish(_orders(3, start=6))
    again = inst.stage("journal", restarts=1)
    again.drain()
    files = sorted(p.name for p in inst.jdir.glob("orders-*.rec"))
    assert files == ["orders-0.rec", "orders-1.rec"]
    got = read_journal_orders(inst.jdir)
    assert got["client_order_id"].tolist() == list(range(1, 9))
    assert got["ring_seq"].tolist() == list(range(8))


def test_exec_reports_take_the_same_path(inst):
    journal = inst.stage("journal")
    w = inst.writer("jexec")
    e = np.zeros(4, dtype=EXEC_DTYPE)
    e["client_order_id"] = [1, 2, 3, 4]
    w.publish(e)
    journal.poll()
    assert read_journal_exec(inst.jdir)["client_order_id"].tolist() == [1, 2, 3, 4]


def test_journal_files_and_events_are_owner_only(inst):
    journal = inst.stage("journal")
    journal.poll()
    append_event(inst.jdir, "test", "something", "because", n=1)
    for p in inst.jdir.iterdir():
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p


def test_events_append_in_order_and_a_torn_last_line_is_skipped(tmp_path):
    append_event(tmp_path, "gate", "halt_latched", "daily_loss", equity=-1.5)
    append_event(tmp_path, "cli", "resume")
    with open(tmp_path / "events.jsonl", "ab") as f:
        f.write(b'{"who": "gate", "wha')   # a crash in the middle of a line
    ev = read_events(tmp_path)
    assert [(e["who"], e["what"]) for e in ev] == [("gate", "halt_latched"), ("cli", "resume")]
    assert ev[0]["equity"] == -1.5 and ev[0]["ts_ns"] <= ev[1]["ts_ns"]
