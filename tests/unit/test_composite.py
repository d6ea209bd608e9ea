"""Composite stages (pipeline/composite.py): the round that polls several stages in one loop,
fault isolation inside it, per-member stops; the hybrid idle; the process doorbell that wakes
a parked process whichever of its rings gets a record; the [[composites]] config checks."""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.schema import ConfigError
from common.status import (ST_FAILED, ST_RUNNING, ST_STOPPED, W_HEARTBEAT_NS, W_RECORDS_IN,
                           W_STATE)
from pipeline.composite import CompositeRunner
from pipeline.idle import Hybrid
from pipeline.runner import MAX_CONSECUTIVE_ERRORS, StageRunner
from stages.base import Stage


class Scripted(Stage):
    """Returns the next value of ``script`` per poll (0 once it is used up); raises where the
    script says ``"raise"``. Records the order of polls across stages in ``log``."""

    def __init__(self, name, script, log):
        super().__init__()
        self.name, self.script, self.log = name, list(script), log
        self.started = self.stopped = False

    def on_start(self, ctx):
        self.started = True

    def poll(self):
        self.log.append(self.name)
        v = self.script.pop(0) if self.script else 0
        if v == "raise":
            raise RuntimeError(f"{self.name} is broken")
        self.records_in += v
        return v

    def drain(self):
        pass

    def on_stop(self):
        self.stopped = True


class RecordingIdle:
    def __init__(self):
        self.seen = []

    def idle(self, work):
        self.seen.append(work)


@pytest.fixture
def table(shm_prefix):
    from shm.segment import unlink_instance
    from shm.status import StatusTable

    t = StatusTable.create(shm_prefix, 4)
    yield t
    t.close()
    unlink_instance(shm_prefix)


def _composite(table, scripts, idle=None):
    """A CompositeRunner over Scripted stages: scripts = [(name, role, script)]."""
    log, runners = [], []
    idle = idle or RecordingIdle()
    for slot, (name, role, script) in enumerate(scripts):
        ctx = SimpleNamespace(name=name, role=role, cpu=None, run_dir=None)
        runners.append(StageRunner(Scripted(name, script, log), ctx, table.block(slot), None,
                                   idle))
    return CompositeRunner("hot", runners, idle), runners, log


def test_a_round_polls_every_member_once_in_the_order_records_flow(table):
    comp, runners, log = _composite(table, [("router", "order_router", [1]),
                                            ("gate", "risk_gate", [2]),
                                            ("strat", "strategy", [3])])
    comp.start()
    assert all(r.stage.started for r in runners)
    assert [table.read_word(i, W_STATE) for i in range(3)] == [ST_RUNNING] * 3
    log.clear()
    assert comp.run_once() == 6
    assert log == ["strat", "gate", "router"]   # an intent reaches the gate in the same round
    assert comp.run_once() == 0


def test_the_loop_idles_only_when_no_member_found_work(table):
    idle = RecordingIdle()
    comp, runners, _ = _composite(table, [("a", "strategy", [0, 5, 0, 0]),
                                          ("b", "strategy", [0, 0, 7, 0])], idle)
    orig = idle.idle

    def idle_then_stop(work):
        orig(work)
        if len(idle.seen) == 4:
            comp.stop_requested = True
    idle.idle = idle_then_stop
    assert comp.run() == 0
    assert idle.seen == [0, 5, 7, 0]
    assert all(r.stage.stopped for r in runners)
    assert [table.read_word(i, W_STATE) for i in range(2)] == [ST_STOPPED] * 2


def test_a_member_whose_poll_keeps_raising_is_retired_and_the_others_keep_running(table):
    comp, runners, log = _composite(table, [("good", "strategy", [1] * 1000),
                                            ("bad", "strategy",
                                             ["raise"] * MAX_CONSECUTIVE_ERRORS),
                                            ("gate", "risk_gate", [1] * 1000)])
    comp.start()
    for _ in range(MAX_CONSECUTIVE_ERRORS):
        comp.run_once()
    bad = runners[1]
    assert bad not in comp.live and bad.stage.stopped
    assert table.read_word(1, W_STATE) == ST_FAILED
    assert bad.stage.errors == MAX_CONSECUTIVE_ERRORS
    beat = table.read_word(0, W_HEARTBEAT_NS)
    log.clear()
    assert comp.run_once() == 2
    assert log == ["good", "gate"]
    comp.service(beat + 1)
    assert table.read_word(0, W_STATE) == ST_RUNNING
    assert table.read_word(0, W_HEARTBEAT_NS) > beat          # the others still heartbeat
    assert table.read_word(0, W_RECORDS_IN) == runners[0].stage.records_in > 0
    assert table.read_word(1, W_STATE) == ST_FAILED           # the retired one is left FAILED


def test_a_few_errors_in_a_row_do_not_retire_a_member(table):
    comp, runners, _ = _composite(table, [("flaky", "strategy", ["raise", "raise", 1, 1])])
    comp.start()
    for _ in range(4):
        comp.run_once()
    assert runners[0] in comp.live and runners[0]._consecutive_errors == 0
    assert runners[0].stage.errors == 2


def test_a_member_told_to_stop_stops_alone_and_the_process_ends_with_the_last(table):
    comp, runners, log = _composite(table, [("strat", "strategy", [1] * 10),
                                            ("gate", "risk_gate", [1] * 10)])
    comp.start()
    runners[0].stop_requested = True                        # CTRL_STOP on its control ring
    comp.service(0)
    assert table.read_word(0, W_STATE) == ST_STOPPED and runners[0].stage.stopped
    assert table.read_word(1, W_STATE) == ST_RUNNING and not runners[1].stage.stopped
    log.clear()
    comp.run_once()
    assert log == ["gate"]
    runners[1].stop_requested = True
    comp.service(0)
    assert comp.live == [] and comp.run() == 0                # nothing left: the loop ends


# -- hybrid idle -------------------------------------------------------------------------------
class FakePark:
    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, timeout_s):
        self.calls.append(timeout_s)
        return self.answers.pop(0)


def test_hybrid_spins_within_its_budget_and_never_parks_while_work_comes():
    park = FakePark([])
    idle = Hybrid(park=park, spin_us=1e6, timeout_s=0.002)
    for work in [0, 0, 0, 3, 0, 0]:
        idle.idle(work)
    assert park.calls == []


def test_hybrid_parks_once_its_budget_is_spent_and_spins_again_after_a_wake_up():
    park = FakePark([False, True])
    idle = Hybrid(park=park, spin_us=0.0, timeout_s=0.002)
    idle.idle(0)              # the first empty poll starts the budget
    idle.idle(0)              # spent: park, times out
    assert park.calls == [0.002]
    idle.idle(0)              # a timed-out park parks again at once
    assert park.calls == [0.002, 0.002]
    idle.idle(0)              # woken: a new budget starts, no park on this poll
    assert len(park.calls) == 2
    idle.idle(4)
    idle.idle(0)
    assert len(park.calls) == 2


# -- the process doorbell ----------------------------------------------------------------------
def test_a_parked_process_is_woken_by_a_record_on_any_of_its_rings(shm_prefix):
    from shm import ringops as ops
    from shm.doorbell import Doorbell, wake_parked
    from shm.records import MARKET_DTYPE
    from shm.ring import SpscRing
    from shm.segment import list_segments, unlink_instance

    rings = [SpscRing.create(shm_prefix, f"in{i}", MARKET_DTYPE, 16, wakeups=True)
             for i in range(3)]
    door = Doorbell(shm_prefix)
    try:
        writers = [r.writer() for r in rings]
        readers = [r.reader() for r in rings]
        rec = np.zeros(1, MARKET_DTYPE)
        assert door.park(0.001) is False                  # nothing anywhere: times out
        writers[0].publish(rec)
        assert door.park(5.0) is True                     # already there: no sleep
        assert readers[0].poll(np.zeros(4, MARKET_DTYPE)) == 1
        for i in (2, 1):
            woke = []
            t = threading.Thread(target=lambda: woke.append(door.park(5.0)))
            t.start()
            _wait(lambda: _parked(rings[i]) or not t.is_alive())
            if i == 2:
                writers[2].publish(rec)                   # Python-level publish posts itself
            else:
                # a kernel publish (as stages do) only flags; the loop's wake_parked posts
                assert ops.spsc_publish(writers[1].st, writers[1].slots,
                                        rec.view(np.int64).reshape(1, -1), 1) == 1
                wake_parked()
            t.join(10)
            assert woke == [True]
            assert readers[i].poll(np.zeros(4, MARKET_DTYPE)) == 1
        assert door.timeouts == 1
    finally:
        door.close()
        for r in rings:
            r.unlink()
            r.close()
        unlink_instance(shm_prefix)
    assert list_segments(shm_prefix) == []


def _wait(pred, timeout_s=10.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.001)


def _parked(ring) -> bool:
    from shm import ringops as ops

    return bool(ring._ctrl[(ops.BLOCK + ops.RB_PARKED) // 8])


# -- config ------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]
COMPOSITES = '''
[[composites]]
name = "md"
stages = ["venue", "journal"]

[[composites]]
name = "hot"
stages = ["strategy-*", "risk_gate", "order_router"]
'''


def _cfg(extra: str, layout: str = "composite"):
    from pipeline.config import parse_config

    import re

    text = (ROOT / "config.toml").read_text()
    text = text.split("\n[[composites]]")[0] + "\n"   # the default's own composites (kept last)
    text = re.sub(r"(?m)^layout = .*$", "", text)
    text = text.replace("[stages]\n", f'[stages]\nlayout = "{layout}"\n', 1)
    return parse_config(text + extra, "t.toml", build=False)


def test_a_composite_layout_runs_the_named_stages_in_one_process_each():
    from stages.topology import build_topology

    topo = build_topology(_cfg(COMPOSITES.replace('name = "md"', 'name = "md"\ncpu = 0')))
    units = {u.name: u for u in topo.units}
    assert set(units) == {"md", "hot"}
    assert units["hot"].members == ("order_router", "risk_gate", "strategy-mm_btc",
                                    "strategy-pairs_btc_eth", "strategy-arb_btc")
    assert {s.unit for s in topo.stages if s.role == "strategy"} == {"hot"}
    assert topo.stage("venue").cpu == 0 and topo.stage("journal").unit == "md"
    # the rings are the same as in the dedicated layout: only who runs the loops changes
    ded = build_topology(_cfg(COMPOSITES, layout="dedicated"))
    assert ded.rings == topo.rings and all(not u.composite for u in ded.units)
    assert build_topology(_cfg(COMPOSITES), dedicated=True).units == ded.units


@pytest.mark.parametrize("extra, expected", [
    ('[[composites]]\nname = "x"\nstages = ["risk_gat"]\n',
     "composites[0] (x).stages: 'risk_gat' is not a stage"),
    ('[[composites]]\nname = "x"\nstages = ["risk_gate"]\n[[composites]]\nname = "y"\n'
     'stages = ["journal", "risk_gate"]\n',
     "composites[1] (y).stages: stage 'risk_gate' is already in composites[0] (x)"),
    ('[[composites]]\nname = "venue"\nstages = ["journal"]\n',
     "composites[0] (venue).name = 'venue': is a stage's name"),
    ('[[composites]]\nname = "x"\nstages = ["strat-*"]\n',
     "pattern 'strat-*' matches no stage"),
    ('[[composites]]\nname = "x"\nstages = []\n', "composites[0].stages = []"),
])
def test_a_bad_composite_is_refused_naming_the_composite_and_the_stage(extra, expected):
    with pytest.raises(ConfigError) as exc:
        _cfg(extra)
    assert expected in str(exc.value)
    if "risk_gat'" in expected:
        assert "did you mean 'risk_gate'" in str(exc.value)


def test_a_signal_during_a_park_ends_the_park_instead_of_raising(shm_prefix):
    """SIGTERM arrives while the loop is parked: the handler runs, the park returns, and the
    loop gets to see its stop flag (a raise would skip the drain)."""
    import signal

    from shm.doorbell import Doorbell
    from shm.segment import list_segments

    got = []
    old = signal.signal(signal.SIGALRM, lambda *a: got.append("alarm"))
    door = Doorbell(shm_prefix)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert door.park(30.0) is False
        assert got == ["alarm"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        door.close()
    assert list_segments(shm_prefix) == []


def test_a_member_with_empty_input_rings_is_skipped_until_a_record_or_its_timer_comes(
        table, shm_prefix):
    from shm.records import MARKET_DTYPE
    from shm.ring import SpscRing

    ring = SpscRing.create(shm_prefix, "in", MARKET_DTYPE, 16)
    try:
        w, rd = ring.writer(), ring.reader()
        comp, runners, log = _composite(table, [("venue", "venue", []),
                                                ("strat", "strategy", [])])
        comp.start()
        runners[1].inputs = [rd]          # what start() finds for a stage that attaches rings
        comp.member_poll_ns = 10**15      # its timer never comes in this test
        comp._relist()
        log.clear()
        comp.run_once()
        comp.run_once()
        assert log == ["venue", "venue"]  # the clock-driven venue every round, strat skipped
        w.publish(np.zeros(1, MARKET_DTYPE))
        comp.run_once()
        assert log[-2:] == ["venue", "strat"]
        comp.member_poll_ns = 0           # its timer is due on every round
        rd.poll(np.zeros(4, MARKET_DTYPE))
        log.clear()
        comp.run_once()
        assert log == ["venue", "strat"]
    finally:
        ring.unlink()
        ring.close()


def test_after_each_strategy_the_gate_and_router_get_their_turn_when_they_have_input(
        table, shm_prefix):
    from shm.records import ORDER_DTYPE
    from shm.ring import SpscRing

    rings = [SpscRing.create(shm_prefix, n, ORDER_DTYPE, 16) for n in ("intent", "approved")]
    try:
        (wi, ri), (wa, ra) = [(r.writer(), r.reader()) for r in rings]
        comp, runners, log = _composite(table, [("router", "order_router", []),
                                                ("gate", "risk_gate", []),
                                                ("s1", "strategy", []),
                                                ("s2", "strategy", [])])
        comp.start()
        runners[0].inputs, runners[1].inputs = [ra], [ri]
        comp.member_poll_ns = 10**15
        comp._relist()
        log.clear()
        comp.run_once()
        assert log == ["s1", "s2"]                   # nothing for the order path: skipped
        wi.publish(np.zeros(1, ORDER_DTYPE))         # an intent waits (Scripted reads nothing)
        log.clear()
        comp.run_once()
        assert log == ["s1", "gate", "s2", "gate"]
        wa.publish(np.zeros(1, ORDER_DTYPE))
        log.clear()
        comp.run_once()
        assert log == ["s1", "gate", "router", "s2", "gate", "router"]
    finally:
        for r in rings:
            r.unlink()
            r.close()


def test_the_simulated_venue_parks_no_longer_than_until_its_next_event():
    import time

    from market.sim import SimVenue
    from pipeline.config import load_config
    from pipeline.stage_main import _clock_park
    from shm.instruments import InstrumentTable

    cfg = load_config(ROOT / "config.toml", build=False)
    table = list(InstrumentTable.from_config(cfg))
    park = FakePark([False, False, False])
    runner = SimpleNamespace(stage=SimpleNamespace(), warm=None)
    clock_park = _clock_park(park, runner)
    assert clock_park(100.0) is False and park.calls == [100.0]   # not started: as asked

    def venue(t0_ns):
        return SimVenue(cfg, table, t0_ns=t0_ns, venues=["simA", "simB"])

    runner.stage.venue = venue(time.time_ns())
    runner.warm()                       # compiled here, however long that takes
    runner.stage.venue = venue(time.time_ns() + 30_000_000_000)   # starts in 30 s
    assert clock_park(100.0) is False
    assert len(park.calls) == 2 and 1.0 < park.calls[1] < 100.0
    runner.stage.venue = venue(time.time_ns() - 2_000_000_000)    # events already due
    assert clock_park(100.0) is True and len(park.calls) == 2     # no park at all


def test_a_composite_s_own_restart_limit_counts_its_failures_alone():
    from pipeline.supervisor import RestartPolicy

    p = RestartPolicy(limit=3, window_s=60, backoff_s=0.5, backoff_max_s=1.5)
    p.limits["hot"] = 1
    assert p.on_failure("hot", 0.0, uptime_s=100) == 0.0
    assert p.on_failure("hot", 1.0, uptime_s=100) is None        # its limit: given up
    for t in range(3):
        assert p.on_failure("md", float(t), uptime_s=100) == 0.0  # the default limit
    assert p.on_failure("md", 4.0, uptime_s=100) is None


def test_the_supervisor_names_a_retired_member_and_a_dead_composite(tmp_path, shm_prefix):
    """A FAILED member of a live composite is reported by its stage name (the controller
    contains that stage alone); the composite's death by the composite's name, once."""
    import subprocess
    import sys
    import time

    from common.status import W_HEARTBEAT_NS
    from pipeline.supervisor import StageProcess, Supervisor
    from shm.segment import unlink_instance
    from shm.status import StatusTable
    from stages.topology import build_topology

    topo = build_topology(_cfg(COMPOSITES))
    table = StatusTable.create(shm_prefix, len(topo.stages))
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sup = Supervisor(shm_prefix, "c.toml", tmp_path, topo, table, 100, 5)
        hot = topo.unit("hot")
        proc = StageProcess(topo.stage(hot.members[0]), popen, tmp_path / "hot.log", hot)
        sup.units["hot"] = proc
        for m in hot.members:
            sup.procs[m] = proc
            table.set_word(topo.stage(m).slot, W_STATE, ST_RUNNING)
            table.set_word(topo.stage(m).slot, W_HEARTBEAT_NS, time.monotonic_ns())
        assert sup.check() == []
        assert list(sup.pidfds().values()) == ["hot"]
        table.set_word(topo.stage("strategy-arb_btc").slot, W_STATE, ST_FAILED)
        assert [n for n, _why in sup.check()] == ["strategy-arb_btc"]
        sup.drop_member("strategy-arb_btc")
        assert sup.check() == [] and "risk_gate" in sup.procs
        popen.kill()
        popen.wait()
        assert [n for n, _why in sup.check()] == ["hot"]
        sup.reap("hot")
        assert not set(hot.members) & set(sup.procs) and "hot" not in sup.units
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        table.close()
        unlink_instance(shm_prefix)
