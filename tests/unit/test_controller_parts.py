"""The controller's parts that an operator relies on when something goes wrong, without
processes: the threaded control socket against stalled, slow and hostile clients; the restart
policy's window and backoff; the machine-wide claim on an instance name; and the closing of a
dead run's orphan orders in its journal."""
from __future__ import annotations

import json
import os
import random
import socket
import threading
import time

import numpy as np
import pytest

from pipeline.control import ControlServer, request
from pipeline.supervisor import RestartPolicy


# -- control socket ---------------------------------------------------------------------------
def _server(tmp_path, handler=None, **kw):
    calls = []

    def h(req):
        calls.append(req)
        return {"ok": True, "echo": req.get("cmd")}

    return ControlServer(tmp_path / "c.sock", handler or h, **kw), calls


def _stalled(path, n, partial=b""):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        if partial:
            s.sendall(partial)
        socks.append(s)
    return socks


def test_fifty_stalled_clients_neither_block_requests_nor_the_lock(tmp_path):
    lock = threading.RLock()
    srv, calls = _server(tmp_path, lock=lock, timeout_s=5.0)
    try:
        held = _stalled(srv.path, 30) + _stalled(srv.path, 20, partial=b'{"cmd": "sta')
        time.sleep(0.2)
        # the supervision loop's lock is free while they stall
        assert lock.acquire(timeout=0.05)
        lock.release()
        t0 = time.monotonic()
        assert request(srv.path, {"cmd": "status"}, timeout_s=2.0) == {"ok": True,
                                                                       "echo": "status"}
        assert time.monotonic() - t0 < 1.0   # answered beside them, not after their timeout
        assert calls == [{"cmd": "status"}]
    finally:
        for s in held:
            s.close()
        srv.close()
    assert not os.path.exists(srv.path)


def test_a_silent_client_is_dropped_after_its_deadline(tmp_path):
    srv, calls = _server(tmp_path, timeout_s=0.3)
    try:
        (s,) = _stalled(srv.path, 1, partial=b'{"cmd"')
        s.settimeout(3.0)
        t0 = time.monotonic()
        assert s.recv(100) == b""   # closed without an answer
        assert 0.2 < time.monotonic() - t0 < 2.0
        assert srv.dropped_slow == 1 and calls == []
        s.close()
    finally:
        srv.close()


def test_clients_beyond_the_limit_are_told_busy_and_the_slots_come_back(tmp_path):
    srv, _calls = _server(tmp_path, max_clients=4, timeout_s=0.5)
    try:
        held = _stalled(srv.path, 4)
        time.sleep(0.1)
        reply = request(srv.path, {"cmd": "status"}, timeout_s=2.0)
        assert reply["ok"] is False and "busy" in reply["error"]
        for s in held:
            s.close()
        time.sleep(0.7)   # their threads end at the deadline at the latest
        assert request(srv.path, {"cmd": "status"}, timeout_s=2.0)["ok"] is True
    finally:
        srv.close()


@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe\n", b"[1, 2]\n", b"not json\n", b"\n",
                                     b'"just a string"\n', b"{\"cmd\": \n"])
def test_garbage_gets_an_error_that_says_what_is_expected(tmp_path, garbage):
    srv, calls = _server(tmp_path)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.path)
        s.sendall(garbage)
        s.settimeout(3.0)
        reply = json.loads(s.recv(65536))
        s.close()
        assert reply["ok"] is False and "cmd" in reply["error"], reply
        assert calls == []
        assert request(srv.path, {"cmd": "ping"})["ok"] is True   # and the server lives on
    finally:
        srv.close()


def test_a_handler_that_raises_answers_an_error_and_the_server_lives_on(tmp_path):
    def boom(req):
        raise RuntimeError("handler broke")

    srv, _ = _server(tmp_path, handler=boom)
    try:
        r = request(srv.path, {"cmd": "x"})
        assert r == {"ok": False, "error": "RuntimeError: handler broke"}
        assert request(srv.path, {"cmd": "x"})["ok"] is False
    finally:
        srv.close()


def test_requests_run_under_the_supervision_lock(tmp_path):
    lock = threading.RLock()
    seen = []
    srv, _ = _server(tmp_path, handler=lambda req: seen.append(time.monotonic()) or {"ok": 1},
                     lock=lock)
    try:
        with lock:   # a supervision tick in progress
            t = threading.Thread(target=request, args=(srv.path, {"cmd": "x"}))
            t.start()
            time.sleep(0.3)
            assert seen == []   # waits for the tick
            released = time.monotonic()
        t.join(3)
        assert seen and seen[0] >= released
    finally:
        srv.close()


# -- restart policy ---------------------------------------------------------------------------
def test_restart_policy_window_and_backoff():
    p = RestartPolicy(limit=3, window_s=60, backoff_s=0.5, backoff_max_s=1.5)
    assert p.on_failure("s", 0.0) == 0.0      # first: at once
    assert p.on_failure("s", 1.0) == 0.5      # failing soon after the restart: backoff,
    assert p.on_failure("s", 2.0) == 1.0      # doubling, capped
    assert p.on_failure("s", 3.0) is None     # 4 failures in 60 s > limit 3: give up
    assert p.on_failure("other", 3.0) == 0.0  # per stage
    # a stage that had run stably before it died comes back at once, and resets the backoff
    r = RestartPolicy(limit=10, window_s=60, backoff_s=0.5, backoff_max_s=8, stable_s=5)
    assert [r.on_failure("s", t, 0.1) for t in (0, 1, 2)] == [0.0, 0.5, 1.0]
    assert r.on_failure("s", 20, uptime_s=17.0) == 0.0
    assert r.on_failure("s", 21, uptime_s=0.2) == 0.0   # a new run of quick failures
    assert r.on_failure("s", 22, uptime_s=0.2) == 0.5
    # old failures leave the window
    q = RestartPolicy(limit=2, window_s=10, backoff_s=1, backoff_max_s=100)
    for t in (0.0, 5.0):
        assert q.on_failure("s", t) is not None
    assert q.on_failure("s", 12.0) is not None   # 0.0 left the window: 2 recent
    assert q.on_failure("s", 13.0) is None
    assert q.on_failure("s", 40.0, uptime_s=27.0) == 0.0   # a quiet window later: at once


def test_restart_policy_property_never_more_than_limit_restarts_in_any_window():
    rng = random.Random(5)
    for _ in range(300):
        limit, window = rng.randint(0, 6), rng.uniform(1, 50)
        p = RestartPolicy(limit, window, 0.1, 5.0)
        t, restarts = 0.0, []
        for _k in range(rng.randint(1, 40)):
            t += rng.expovariate(1 / rng.uniform(0.1, 20))
            d = p.on_failure("s", t, rng.uniform(0, 10))
            if d is None:
                break
            assert 0 <= d <= 5.0
            restarts.append(t)
        for x in restarts:   # within any window, at most `limit` restarts
            assert sum(1 for y in restarts if x <= y <= x + window) <= max(limit, 0)


# -- the machine-wide claim on an instance name -------------------------------------------------
def test_an_instance_name_is_claimed_once_per_machine(shm_prefix, tmp_path):
    from shm.segment import InstanceClaimed, claim_holder, claim_instance, release_claim

    assert claim_holder(shm_prefix) is None
    fd = claim_instance(shm_prefix, {"run_dir": "/a", "config": "a.toml"})
    try:
        assert claim_holder(shm_prefix)["run_dir"] == "/a"
        with pytest.raises(InstanceClaimed) as e:
            claim_instance(shm_prefix, {"run_dir": "/b", "config": "b.toml"})
        msg = str(e.value)
        assert f"pid {os.getpid()}" in msg and "/a" in msg and "[instance] name" in msg
    finally:
        release_claim(fd, shm_prefix)
    assert claim_holder(shm_prefix) is None
    fd = claim_instance(shm_prefix, {"run_dir": "/b"})   # free again
    release_claim(fd, shm_prefix)


def test_a_dead_owner_s_claim_is_free(shm_prefix):
    """The kernel drops the flock with the process: a SIGKILLed controller frees the name."""
    import subprocess
    import sys

    code = ("import sys, time; from shm.segment import claim_instance; "
            f"claim_instance({shm_prefix!r}, {{'run_dir': '/x'}}); print('held', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert p.stdout.readline().strip() == b"held"
        from shm.segment import InstanceClaimed, claim_holder, claim_instance, release_claim

        assert claim_holder(shm_prefix)["pid"] == p.pid
        with pytest.raises(InstanceClaimed):
            claim_instance(shm_prefix, {})
        p.kill()
        p.wait()
        assert claim_holder(shm_prefix) is None
        release_claim(claim_instance(shm_prefix, {}), shm_prefix)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_shm_clean_keeps_an_instance_whose_claim_is_held(shm_prefix, capsys):
    from pipeline.cli import main
    from shm.ring import SpscRing
    from shm.records import CONTROL_DTYPE
    from shm.segment import claim_instance, list_segments, release_claim

    ring = SpscRing.create(shm_prefix, "x", CONTROL_DTYPE, 16)
    # as if its creator were gone but another controller of the name lives: kept
    ring.seg.header["creator_pid"] = 2 ** 31 - 7
    fd = claim_instance(shm_prefix, {"run_dir": "/elsewhere"})
    try:
        assert main(["shm", "clean", "--instance", shm_prefix]) == 1
        assert "still running" in capsys.readouterr().err
        assert list_segments(shm_prefix)
    finally:
        release_claim(fd, shm_prefix)
    assert main(["shm", "clean", "--instance", shm_prefix]) == 0
    assert not list_segments(shm_prefix)
    ring.close()


# -- a dead run's orphan orders -----------------------------------------------------------------
def test_orphan_orders_of_a_dead_run_get_exactly_one_final_outcome(tmp_path):
    from market.recordfile import RecordFileWriter
    from pipeline.drill import journal_outcomes
    from pipeline.recovery import close_orphan_orders
    from shm.records import (EFLAG_RECONCILE, EXEC_ACK, EXEC_CANCEL_ACK, EXEC_DTYPE, EXEC_FILL,
                             EXEC_PARTIAL, INTENT_CANCEL, INTENT_NEW, ORDER_DTYPE)
    from stages.journal import read_events, read_journal_exec

    rng = np.random.default_rng(3)
    n = 400
    o = np.zeros(n, ORDER_DTYPE)
    o["client_order_id"] = np.arange(1, n + 1)
    o["ring_seq"] = np.arange(n)
    o["kind"] = INTENT_NEW
    o["strategy_id"] = rng.integers(1, 4, n)
    o["qty_lots"] = rng.integers(1, 9, n)
    o["reject_code"] = np.where(rng.random(n) < 0.1, 3, 0)   # some were denied
    cancels = o[:20].copy()
    cancels["kind"] = INTENT_CANCEL
    cancels["ring_seq"] = np.arange(n, n + 20)
    jdir = tmp_path / "journal"
    jdir.mkdir()
    w = RecordFileWriter(jdir / "orders-0.rec", ORDER_DTYPE, buffered=False)
    w.append(np.concatenate([o, cancels]))
    w.close()
    approved = o[o["reject_code"] == 0]
    fate = rng.integers(0, 4, len(approved))   # 0 open, 1 acked only, 2 partial, 3 final
    ex = []
    for a, f in zip(approved, fate):
        e = np.zeros(1, EXEC_DTYPE)
        e["client_order_id"], e["strategy_id"] = a["client_order_id"], a["strategy_id"]
        if f == 1:
            e["kind"] = EXEC_ACK
        elif f == 2:
            e["kind"] = EXEC_PARTIAL
        elif f == 3:
            e["kind"] = rng.choice([EXEC_FILL, EXEC_CANCEL_ACK])
        else:
            continue
        ex.append(e)
    ex = np.concatenate(ex)
    ex["ring_seq"] = np.arange(len(ex))
    w = RecordFileWriter(jdir / "exec-0.rec", EXEC_DTYPE, buffered=False)
    w.append(ex)
    w.close()
    want = int((fate != 3).sum())
    assert journal_outcomes(jdir)["without_final"] == want
    assert close_orphan_orders(jdir) == want
    v = journal_outcomes(jdir)
    assert v["without_final"] == 0 and v["more_than_one_final"] == 0
    added = read_journal_exec(jdir)
    added = added[added["flags"] == EFLAG_RECONCILE]
    assert len(added) == want and (added["kind"] == EXEC_CANCEL_ACK).all()
    assert sorted(added["client_order_id"].tolist()) == \
        sorted(approved["client_order_id"][fate != 3].tolist())
    assert close_orphan_orders(jdir) == 0   # idempotent
    ev = [e for e in read_events(jdir) if e["what"] == "orders_closed_after_crash"]
    assert len(ev) == 1 and len(ev[0]["client_order_ids"]) == want
    assert oct(os.stat(jdir / "exec-1.rec").st_mode & 0o777) == "0o600"


# -- operator commands that only talk to the socket ---------------------------------------------
@pytest.mark.parametrize("cmd", ["kill", "resume", "status"])
def test_socket_commands_import_neither_numba_nor_numpy(cmd, tmp_path, shm_prefix):
    """`run.py kill` must act at once: no numba, no numpy, no source hash on its way."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent.parent
    cfg = tmp_path / "c.toml"
    cfg.write_text((root / "config.toml").read_text()
                   .replace('name = "default"', f'name = "{shm_prefix}"', 1)
                   .replace('run_dir = "runs"', f'run_dir = "{tmp_path}"', 1))
    r = subprocess.run([sys.executable, "-X", "importtime", "run.py", cmd, "--config", str(cfg)],
                       cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 3, r.stderr[-500:]   # not running: it still had to find the socket
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pipeline.control" in imported
    assert not {"numba", "numpy", "pipeline.numba_cache", "pipeline.config"} & imported
    assert "is not running" in r.stderr


def test_control_socket_property_random_clients_never_break_it(tmp_path):
    """Over many random clients (random bytes, cut-off requests, valid ones, clients that
    vanish mid-request): every complete line a client waits for is answered with a JSON
    object, each valid complete request reaches the handler exactly once, nothing else does,
    and the server answers a ping afterwards."""
    import itertools

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    srv, calls = _server(tmp_path, timeout_s=0.3)
    ids = itertools.count(1)
    expected = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=st.one_of(st.binary(max_size=300),
                             st.dictionaries(st.text(max_size=8), st.integers(), max_size=4)
                             .map(lambda d: {**d, "cmd": "x"})),
           newline=st.booleans(), vanish=st.booleans())
    def one(payload, newline, vanish):
        if isinstance(payload, dict):
            payload = {**payload, "id": next(ids)}
            raw = json.dumps(payload).encode()
            if newline or vanish:   # a line, or the end of the stream, ends a request
                expected.append(payload["id"])
        else:
            raw = payload.replace(b"\n", b" ")
            try:   # random bytes that happen to be a JSON object are a request too
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(srv.path)
        s.sendall(raw + (b"\n" if newline else b""))
        if vanish:
            s.close()
            return
        s.settimeout(3.0)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if not newline:
            assert data == b""   # an unfinished request is dropped at its deadline
            return
        reply = json.loads(data)
        assert isinstance(reply, dict) and "ok" in reply
        if not isinstance(payload, dict):
            assert reply["ok"] is False and "cmd" in reply["error"]

    try:
        one()
        assert request(srv.path, {"cmd": "ping"})["ok"]
        time.sleep(0.5)   # vanished clients' requests finish on their own threads
        got = [c.get("id") for c in calls if c.get("cmd") == "x"]
        assert sorted(got) == sorted(expected)
        assert all(c.get("cmd") in ("x", "ping") for c in calls), [c for c in calls if c.get("cmd") not in ("x", "ping")]
    finally:
        srv.close()


def test_recovery_finds_an_instance_s_stages_and_spares_by_command_line(shm_prefix, tmp_path):
    """A stage started from a warm spare keeps the spare's command line (--standby ... run
    dir): recovery must still find it, and never a process of another instance."""
    import subprocess
    import sys

    from pipeline.recovery import kill_stages, stage_pids

    sleep = "import time; time.sleep(60)"
    run_dir = tmp_path / shm_prefix / "run-1"
    other = tmp_path / "someone-else" / "run-1"
    procs = [subprocess.Popen([sys.executable, "-c", sleep, *argv]) for argv in (
        ["pipeline.stage_main", "--standby", "1", str(run_dir)],
        ["pipeline.stage_main", "--instance", shm_prefix, "--stage", "journal"],
        ["pipeline.stage_main", "--standby", "1", str(other)],
        ["pipeline.stage_main", "--instance", shm_prefix + "x", "--stage", "journal"])]
    try:
        time.sleep(0.2)
        mine = sorted(p.pid for p in procs[:2])
        assert stage_pids(shm_prefix) == mine
        assert kill_stages(shm_prefix, grace_s=0.5) == mine
        for p in procs[:2]:
            assert p.wait(5) is not None
        assert all(p.poll() is None for p in procs[2:])   # the others are untouched
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
