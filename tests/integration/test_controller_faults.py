"""The controller under faults, with real processes (one background instance, tests in order):

1. 50 stalled clients on the control socket while a strategy is killed: the death is noticed
   at once (the supervision loop never waits on a client), WATCHDOG=1 keeps coming to systemd's
   socket with no gap above WatchdogSec/2, and `status` still answers;
2. a strategy that keeps failing is halted alone (restart_limit per window): FAILED with its
   reason in `status`, its orders closed, every other stage RUNNING and trading not halted;
3. kill -9 of the controller: the stages stop trading and exit by themselves; the next `start`
   clears what the dead controller left and gives every approved order of its run a final
   outcome; `stop` on a dead instance cleans up and says what it found; nothing is left.

Figures (notice time, watchdog gaps, stage exit times) are printed for the issue's note; the
assertions use bounds far above them (a loaded 2-core CI box), far below the old behaviour
(a stalled client delayed supervision by 14.5 s).
"""
from __future__ import annotations

import json
import os
import signal
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import run_py, write_config
from tests.integration.test_pipeline_cli import wait_for as _wait
from tests.integration.test_pipeline_cli import status_json as _status
from tests.integration.test_pipeline_cli import stage_row as _row

WATCHDOG_USEC = 2_000_000


def _events(run_dir: Path, what: str, since_ns: int) -> list[dict]:
    from stages.journal import read_events

    return [e for e in read_events(run_dir / "journal")
            if e["what"] == what and e["ts_ns"] >= since_ns]


class Watchdog:
    """systemd's side of sd_notify: a datagram socket, each message timestamped on arrival."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.times: list[float] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                msg = self.sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if b"WATCHDOG=1" in msg:
                self.times.append(time.monotonic())

    def close(self):
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    import uuid

    from shm.segment import list_segments, unlink_instance

    tmp = tmp_path_factory.mktemp("faults")
    name = f"t{os.getpid()}F{uuid.uuid4().hex[:6]}"
    cfg = write_config(tmp / "c.toml", name, tmp / "runs", layout="dedicated")
    text = cfg.read_text().replace("event_rate_per_s = 20000", "event_rate_per_s = 2000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    text = text.replace("[stages]", "[stages]\nrestart_limit = 1\nrestart_window_s = 600")
    cfg.write_text(text)
    wd = Watchdog(tmp / "notify.sock")
    old = {k: os.environ.get(k) for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    os.environ["NOTIFY_SOCKET"] = str(tmp / "notify.sock")
    os.environ["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    try:
        r = run_py("start", "--config", str(cfg), timeout=COLD_START_S + 60)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    state = {"cfg": cfg, "name": name, "wd": wd, "tmp": tmp}
    try:
        assert r.returncode == 0, r.stderr + r.stdout
        state["run_dir"] = Path(_status(cfg)["run_dir"])
        yield state
    finally:
        wd.close()
        run_py("stop", "--config", str(cfg), timeout=120)
        from pipeline.recovery import stage_pids

        left = stage_pids(name)
        for p in left:
            os.kill(p, signal.SIGKILL)
        leaked = [s.name for s in list_segments(name)]
        unlink_instance(name)
        claim = Path(f"/dev/shm/hftfarm-claim.{name}")
        claimed = claim.exists()
        if claimed:
            claim.unlink()
        assert not left and not leaked and not claimed, (left, leaked, claimed)


def test_a_second_instance_of_the_same_name_is_refused_and_the_first_untouched(inst,
                                                                               tmp_path):
    """Another run directory (another checkout's config, say), the same instance name."""
    from shm.segment import list_segments

    # a short run dir: under pytest-xdist tmp_path is long enough to push the control socket
    # past the 107 bytes a Unix socket path may have
    short = Path(tempfile.mkdtemp(prefix="hf2-"))
    cfg2 = write_config(tmp_path / "other.toml", inst["name"], short / "runs",
                        layout="dedicated")
    before = sorted(s.name for s in list_segments(inst["name"]))
    try:
        r = run_py("start", "--config", str(cfg2), timeout=COLD_START_S + 60)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert r.returncode == 1, r.stdout
    assert f"instance name {inst['name']!r} is in use on this machine" in r.stderr, r.stderr
    assert str(inst["cfg"].parent / "runs") in r.stderr   # names the other one's run dir
    assert sorted(s.name for s in list_segments(inst["name"])) == before
    st = _status(inst["cfg"])
    assert all(r["state"] == "RUNNING" for r in st["stages"])


def test_stalled_clients_delay_neither_supervision_nor_the_watchdog(inst):
    from pipeline.control import socket_config
    from pipeline.paths import socket_path

    cfg = inst["cfg"]
    path = str(socket_path(socket_config(str(cfg))))
    stalled = []
    for i in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        if i % 2:
            s.sendall(b'{"cmd": "sta')   # half of them start a request and stop
        stalled.append(s)
    try:
        time.sleep(0.5)
        old_pid = _row(_status(cfg), "strategy-mm_btc")["pid"]
        t_watch = time.monotonic()
        t_kill = time.time_ns()
        os.kill(old_pid, signal.SIGKILL)
        ev = _wait(lambda: _events(inst["run_dir"], "stage_failed", t_kill), 30,
                   "the controller to notice the death")
        noticed_ms = (ev[0]["ts_ns"] - t_kill) / 1e6
        _wait(lambda: (lambda r: r["state"] == "RUNNING" and r["pid"] != old_pid)(
            _row(_status(cfg), "strategy-mm_btc")), 60, "the strategy to come back")
        time.sleep(max(0.0, 4.0 - (time.monotonic() - t_watch)))
        beats = [t for t in inst["wd"].times if t >= t_watch - 1.0]
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        print(f"\n50 stalled clients: strategy death noticed after {noticed_ms:.1f} ms; "
              f"{len(beats)} WATCHDOG=1, max gap {max(gaps):.3f} s "
              f"(WatchdogSec/2 = {WATCHDOG_USEC / 2e6:.1f} s)", file=sys.stderr)
        assert ev[0]["stage"] == "strategy-mm_btc"
        assert noticed_ms < 1000     # was 14,500 ms behind one stalled client
        assert len(beats) >= 4 and max(gaps) < WATCHDOG_USEC / 2e6
    finally:
        for s in stalled:
            s.close()


def test_a_strategy_that_keeps_failing_is_halted_alone(inst):
    cfg, name = inst["cfg"], "strategy-arb_btc"
    for round_ in range(2):   # restart_limit = 1 in the window: the second failure is too many
        row = _wait(lambda: (lambda r: r if r["state"] == "RUNNING" else None)(
            _row(_status(cfg), name)), 60, "the strategy to run")
        os.kill(row["pid"], signal.SIGKILL)
        if round_ == 0:
            _wait(lambda: (lambda r: r["state"] == "RUNNING" and r["pid"] != row["pid"])(
                _row(_status(cfg), name)), 60, "the first restart")
    st = _wait(lambda: (lambda s: s if _row(s, name)["state"] == "FAILED" else None)(
        _status(cfg)), 30, "the strategy to be given up on")
    reason = _row(st, name)["reason"]
    assert "failed 2 times within 600 s" in reason and "left down" in reason, reason
    others = [r for r in st["stages"] if r["stage"] != name]
    assert all(r["state"] == "RUNNING" for r in others), others
    assert st["risk"]["state"] == "ACTIVE", st["risk"]
    _wait(lambda: _status(cfg)["risk"]["strategies"]["arb_btc"]["open_orders"] == 0, 30,
          "its orders to be cancelled")
    fills = _status(cfg)["risk"]["fills"]   # and the others trade on
    _wait(lambda: _status(cfg)["risk"]["fills"] > fills, 60, "the other strategies to trade")
    text = run_py("status", "--config", str(cfg)).stdout
    assert f"{name}: failed 2 times" in text
    assert _events(inst["run_dir"], "stage_given_up", 0)[0]["stage"] == name


def test_controller_kill_then_start_recovers_and_stop_cleans_a_dead_instance(inst):
    from common.status import ST_STOPPED, ST_STOPPING, W_STATE
    from pipeline.drill import journal_outcomes
    from shm.segment import list_segments, pid_alive
    from shm.status import StatusTable

    cfg, name = inst["cfg"], inst["name"]
    for attempt in ("start", "stop"):
        st = _wait(lambda: (lambda s: s if s["risk"]["open_orders"] > 0 else None)(
            _status(cfg)), 60, "orders resting at the venue")
        run_dir = Path(st["run_dir"])
        pids = {r["stage"]: r["pid"] for r in st["stages"] if r["state"] == "RUNNING"}
        slots = {r["stage"]: i for i, r in enumerate(st["stages"])}
        tab = StatusTable.attach(name)
        t0 = time.monotonic()
        os.kill(st["pid"], signal.SIGKILL)
        stopped, gone = {}, {}
        while len(gone) < len(pids) and time.monotonic() - t0 < 30:
            for n, p in pids.items():
                if n not in stopped and tab.words[slots[n], W_STATE] in (ST_STOPPING,
                                                                         ST_STOPPED):
                    stopped[n] = time.monotonic() - t0
                if n not in gone and not pid_alive(p):
                    gone[n] = time.monotonic() - t0
            time.sleep(0.005)
        tab.close()
        print(f"\ncontroller kill -9: stages stopped trading within "
              f"{max(stopped.values()):.3f} s, exited within {max(gone.values()):.3f} s "
              f"({max(gone, key=gone.get)} last)",
              file=sys.stderr)
        assert len(gone) == len(pids), f"stages still alive: {set(pids) - set(gone)}"
        assert list_segments(name)   # what a dead controller leaves ...
        if attempt == "start":
            r = run_py("start", "--config", str(cfg), timeout=COLD_START_S + 60)
            assert r.returncode == 0, r.stderr + r.stdout
            log = (run_dir.parent / "controller.log").read_text()
            assert "died without stopping" in log
        else:
            r = run_py("stop", "--config", str(cfg), timeout=120)
            assert r.returncode == 0, r.stderr
            assert "died without stopping" in r.stdout and "segment(s)" in r.stdout
            assert list_segments(name) == []
            assert not Path(f"/dev/shm/hftfarm-claim.{name}").exists()
            assert json.loads((run_dir.parent / "controller.state").read_text())["state"] \
                == "crashed"
            r = run_py("stop", "--config", str(cfg))
            assert r.returncode == 3   # nothing left to clean: not running
        v = journal_outcomes(run_dir / "journal")   # ... and its orders are all closed
        assert v["without_final"] == 0 and v["more_than_one_final"] == 0, v
        assert v["approved"] > 0
