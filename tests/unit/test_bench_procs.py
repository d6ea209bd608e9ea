"""bench/_procs.py: where the benchmark's child processes may run."""
from __future__ import annotations

import os

import pytest

from bench._procs import Children, cores, shared_int64


def _report_affinity(out, slot):
    out[slot] = sum(1 << c for c in os.sched_getaffinity(0))


def test_a_child_started_unpinned_may_run_on_every_core_though_its_parent_is_pinned():
    cs = cores()
    if len(cs) < 2:
        pytest.skip("needs at least 2 usable cores")
    saved = os.sched_getaffinity(0)
    out = shared_int64(2)
    try:
        os.sched_setaffinity(0, {cs[0]})        # as `bench ipc` pins its parent
        with Children() as kids:
            kids.start(_report_affinity, (out, 0), None)
            kids.start(_report_affinity, (out, 1), cs[1])
            kids.join("affinity", 30)
    finally:
        os.sched_setaffinity(0, saved)
    assert out[0] == sum(1 << c for c in cs)    # not the parent's one core, inherited
    assert out[1] == 1 << cs[1]
