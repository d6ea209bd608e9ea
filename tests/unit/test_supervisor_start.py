"""The start-up deadline of a stage: a stuck start fails, a start still compiling on a machine
too busy to give it a core does not (pipeline.supervisor.Supervisor.start_overdue)."""
from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest

from pipeline import supervisor
from pipeline.supervisor import Supervisor


def _spawn(code: str):
    p = subprocess.Popen([sys.executable, "-c", code])
    return p, types.SimpleNamespace(pid=p.pid)


@pytest.fixture
def short_window(monkeypatch):
    monkeypatch.setattr(supervisor, "START_PROGRESS_S", 0.6)


def _verdicts(proc, timeout_s, seconds):
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(Supervisor.start_overdue(None, proc, timeout_s))
        time.sleep(0.1)
    return out


def test_a_start_that_uses_no_cpu_is_overdue_after_one_window(short_window):
    p, proc = _spawn("import time; time.sleep(30)")
    try:
        v = _verdicts(proc, 60.0, 1.6)
        assert v[0] is False          # the first look past the deadline only takes a mark
        assert any(v)                 # no CPU in a whole window: stuck
    finally:
        p.kill()
        p.wait()


def test_a_start_that_keeps_computing_is_given_time(short_window):
    p, proc = _spawn("while True: pass")
    try:
        assert not any(_verdicts(proc, 60.0, 1.6))
    finally:
        p.kill()
        p.wait()


def test_a_start_that_has_had_the_whole_timeout_of_cpu_is_overdue(short_window):
    p, proc = _spawn("while True: pass")
    try:
        time.sleep(1.0)
        assert Supervisor.start_overdue(None, proc, 0.05) is True
    finally:
        p.kill()
        p.wait()


def test_a_process_that_is_gone_is_overdue():
    p, proc = _spawn("pass")
    p.wait()
    assert Supervisor.start_overdue(None, proc, 1.0) is True
