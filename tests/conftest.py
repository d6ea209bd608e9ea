"""Shared fixtures: a unique shared-memory prefix per test and a leak check after each test."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline import numba_cache  # noqa: E402

numba_cache.configure()  # before any test module imports numba
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run full-size stress tests")


def _work_unit(nodeid: str) -> str:
    """The unit of work of a test under ``make test``'s pytest-xdist (-n auto --dist loadscope):
    a worker takes a whole unit and runs its tests in order.

    Every test that starts processes (tests/integration, tests/stress) is ONE unit, so they run
    one after another on one worker exactly as in a serial run: their timing (heartbeats, kill
    drills, latency waits) never competes with a second pipeline, and a module's pipeline
    fixture is started once. Unit tests are grouped by file, so a file's tests share the
    kernels its first test compiled. (xdist's own ``xdist_group`` marks do not work with
    pytest 9: xdist 3.8 renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    path = nodeid.split("::", 1)[0]
    if path.startswith(("tests/integration/", "tests/stress/")):
        return "processes"
    return path


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` whole (each compiles code no other default test needs, e.g. a
    backtest loop for an extra strategy set) run only with --run-slow (``make test-all``).
    """
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (make test-all)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


@pytest.fixture
def run_slow(request) -> bool:
    return bool(request.config.getoption("--run-slow"))


@pytest.fixture
def shm_prefix():
    """A unique instance name; asserts that the test left no segment with it behind."""
    name = f"t{os.getpid()}x{uuid.uuid4().hex[:8]}"
    yield name
    left = [f for f in os.listdir("/dev/shm") if name in f]
    for f in left:  # clean up so one failure does not cascade, then fail loudly
        try:
            os.unlink(os.path.join("/dev/shm", f))
        except OSError:
            pass
    assert not left, f"test leaked shared-memory segments: {left}"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"recorded data not found at {SHARED_DATA}")
    return SHARED_DATA
