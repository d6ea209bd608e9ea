"""The live pipeline with real processes: one instance started for the module (as systemd
would: `run.py start --foreground` with NOTIFY_SOCKET), then status, order flow, crashes of a
strategy and of the risk gate, the kill switch and the graceful stop, in that order.

Timeouts below are generous ceilings for a loaded 2-core machine, not performance claims;
`run.py bench pipeline` reports speed.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration import monitoring_checks
from tests.integration.test_pipeline_cli import ROOT, end_instance, run_py, write_config
from tests.integration.test_pipeline_cli import wait_for as _wait
from tests.integration.test_pipeline_cli import status_json as _status
from tests.integration.test_pipeline_cli import stage_row as _stage

from tests.integration.test_pipeline_cli import COLD_START_S  # noqa: E402

START_TIMEOUT_S = COLD_START_S


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    instance = f"t{os.getpid()}L{uuid.uuid4().hex[:6]}"
    ncpu = os.cpu_count() or 1
    cfg = write_config(tmp / "c.toml", instance, tmp / "runs", monitoring_checks.CONFIG,
                       layout="dedicated")   # it kills and stops single stages
    text = cfg.read_text()
    # pin every stage (status must show the configured CPU); calmer flow and a silence limit
    # that tolerates a 2-core machine shared with other work
    text = text.replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    text = text.replace("[instance]\n", "[instance]\nlatency_log_s = 0.5\n", 1)
    for i, stage in enumerate(("venue", "risk_gate", "order_router", "journal")):
        text = text.replace(f'{stage} = {{ idle = "backoff" }}',
                            f'{stage} = {{ idle = "backoff", cpu = {i % ncpu} }}')
    for i, name in enumerate(("mm_btc", "pairs_btc_eth", "arb_btc")):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\ncpu = {(i + 1) % ncpu}\n')
    cfg.write_text(text)
    notify_path = str(tmp / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(notify_path)
    sd.settimeout(START_TIMEOUT_S)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="200000")
    log = open(tmp / "foreground.log", "wb")
    proc = subprocess.Popen([sys.executable, "run.py", "start", "--foreground", "--config",
                             str(cfg)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    messages = []
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any(m.startswith(b"READY=1") for m in messages):
            assert proc.poll() is None, (tmp / "foreground.log").read_text()
            assert time.monotonic() < deadline, "no READY=1"
            messages.append(sd.recv(4096))
        sd.settimeout(5)
        while b"WATCHDOG=1" not in messages:
            messages.append(sd.recv(4096))
        yield {"cfg": cfg, "instance": instance, "proc": proc, "notify": messages,
               "tmp": tmp}
    finally:
        sd.close()
        log.close()
        end_instance(proc, instance)


def test_systemd_notify_socket_receives_ready_and_watchdog(live):
    assert any(m.startswith(b"READY=1") for m in live["notify"])
    assert b"WATCHDOG=1" in live["notify"]


def test_status_shows_every_stage_running_on_its_configured_cpu(live):
    st = _status(live["cfg"])
    names = {s["stage"] for s in st["stages"]}
    assert names == {"journal", "venue", "order_router", "risk_gate", "strategy-mm_btc",
                     "strategy-pairs_btc_eth", "strategy-arb_btc"}
    for s in st["stages"]:
        assert s["state"] == "RUNNING", s
        assert s["cpu"] == s["configured_cpu"] is not None, s
        assert os.sched_getaffinity(s["pid"]) == {s["cpu"]}
    assert st["risk"]["state"] == "ACTIVE"


def test_start_while_running_exits_1_with_a_clear_message(live):
    r = run_py("start", "--config", str(live["cfg"]))
    assert r.returncode == 1
    assert "already running" in r.stderr


def test_orders_flow_and_fills_come_back(live):
    st = _wait(lambda: (lambda s: s if s["risk"]["fills"] > 0 else None)(_status(live["cfg"])),
               60, "a fill")
    assert st["risk"]["orders_sent"] > 0
    assert st["risk"]["approved"] > 0
    r = run_py("latency", "--json", "--dump", str(live["tmp"] / "lat"), "--config",
               str(live["cfg"]))
    assert r.returncode == 0, r.stderr
    hist = json.loads(r.stdout)["histograms"]
    assert hist["tick_to_trade"]["count"] > 0 and hist["intent_to_gate"]["count"] > 0
    assert (live["tmp"] / "lat" / "tick_to_trade.hgrm").read_text().startswith("       Value")
    # the run's interval log, one interval per latency_log_s, readable by hdrhistogram's reader
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    from shm.histogram import HIGHEST_NS

    reader = HistogramLogReader(str(live["tmp"] / "lat" / "tick_to_trade.hlog"),
                                HdrHistogram(1, HIGHEST_NS, 2))
    counts = []
    while (h := reader.get_next_interval_histogram()) is not None:
        counts.append(h.get_total_count())
    reader.close()
    assert len(counts) >= 2, counts            # the fills took more than one 0.5 s interval
    r = run_py("latency", "--json", "--config", str(live["cfg"]))   # read after the dump
    assert r.returncode == 0, r.stderr
    assert 0 < sum(counts) <= json.loads(r.stdout)["histograms"]["tick_to_trade"]["count"]


def test_prometheus_exporter_agrees_with_status_json(live):
    monitoring_checks.check_exporter_agrees_with_status(live["cfg"])


def test_alerts_show_in_status_and_the_events_journal(live):
    monitoring_checks.check_alerts_in_status_and_journal(live["cfg"])


def test_dashboard_needs_its_token_and_shows_what_status_json_shows(live):
    monitoring_checks.check_dashboard(live["cfg"])


def test_kill_9_of_a_strategy_restarts_it_and_leaves_the_others_running(live):
    from common.status import STATE_NAMES, W_PID, W_RESTARTS, W_STATE
    from shm.status import StatusTable

    before = {s["stage"]: s for s in _status(live["cfg"])["stages"]}
    victim = before["strategy-mm_btc"]
    table = StatusTable.attach(live["instance"])
    slot = [s["stage"] for s in _status(live["cfg"])["stages"]].index("strategy-mm_btc")
    try:
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # read the status block directly: a `run.py status` process takes ~1 s to start here
        new_pid = _wait(lambda: (lambda p: p if p not in (0, victim["pid"]) else None)(
            table.read_word(slot, W_PID)), 10, "a new strategy process", step=0.001)
        respawn_s = time.monotonic() - killed_at
        assert respawn_s < 1.0, f"respawned after {respawn_s:.2f} s"
        assert table.read_word(slot, W_RESTARTS) == victim["restarts"] + 1
        assert STATE_NAMES[table.read_word(slot, W_STATE)] in ("RESTARTING", "STARTING",
                                                               "COMPILING", "RUNNING")
        assert Path(f"/proc/{new_pid}").exists()
    finally:
        table.close()
    # RUNNING follows once the new interpreter has imported and compiled (seconds, load-bound)
    _wait(lambda: _stage(_status(live["cfg"]), "strategy-mm_btc")["state"] == "RUNNING", 120,
          "the restarted strategy to run")
    after = {s["stage"]: s for s in _status(live["cfg"])["stages"]}
    for name, s in before.items():
        if name != "strategy-mm_btc":
            assert after[name]["pid"] == s["pid"] and after[name]["state"] == "RUNNING", name


def test_a_silent_strategy_is_noticed_by_its_heartbeat_and_replaced(live):
    st = _status(live["cfg"])
    victim = _stage(st, "strategy-pairs_btc_eth")
    os.kill(victim["pid"], signal.SIGSTOP)   # alive, but it never heartbeats again
    try:
        new = _wait(lambda: (lambda s: s if s["pid"] != victim["pid"] else None)(
            _stage(_status(live["cfg"]), "strategy-pairs_btc_eth")), 30, "a replacement")
        assert new["restarts"] == victim["restarts"] + 1
        assert not Path(f"/proc/{victim['pid']}").exists() or \
            Path(f"/proc/{victim['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        events = _status(live["cfg"])["events"]
        assert any("strategy-pairs_btc_eth silent for" in e for e in events), events
    finally:
        try:
            os.kill(victim["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    _wait(lambda: _stage(_status(live["cfg"]), "strategy-pairs_btc_eth")["state"] == "RUNNING",
          120, "the replacement to run")


def test_kill_9_of_the_risk_gate_halts_trading_until_it_restarts_and_reconciles(live):
    from pipeline.config import load_config
    from stages.riskview import RiskView

    cfg = load_config(live["cfg"])
    st = _status(live["cfg"])
    gate = _stage(st, "risk_gate")
    rv = RiskView.attach(cfg.instance.name)
    try:
        from stages.journal import read_events

        t_kill = time.time_ns()
        os.kill(gate["pid"], signal.SIGKILL)
        # the controller halts the router, journaled with who acknowledged it (the restart
        # with a warm spare can be over before a status poll would see the halt)
        jdir = Path(st["run_dir"]) / "journal"
        halt = _wait(lambda: [e for e in read_events(jdir) if e["what"] == "halt"
                              and e["ts_ns"] >= t_kill], 10, "the controller's halt")
        assert "order_router" in halt[0]["acked_by"]

        def back():
            s = _status(live["cfg"])
            g = _stage(s, "risk_gate")
            if g["pid"] != gate["pid"] and g["state"] == "RUNNING":
                return s
            return None

        _wait(back, 120, "the restarted risk gate")
        s = _wait(lambda: (lambda x: x if not x["risk"]["reconciling"]
                           and not x["risk"]["router_halted"] else None)(
            _status(live["cfg"])), 30, "reconciliation")
        assert s["risk"]["state"] == "ACTIVE"
        # the controller resumes only once gate positions == venue positions, none open
        assert any("reconciled" in e for e in s["events"])
    finally:
        rv.close()


def test_kill_switch_with_flatten_halts_cancels_every_order_and_flattens(live):
    r = run_py("kill", "--flatten", "--config", str(live["cfg"]))
    assert r.returncode == 0, r.stderr

    last = {}

    def flat_and_closed():
        x = last["status"] = _status(live["cfg"])
        strategies = x["risk"]["strategies"].values()
        if x["risk"]["open_orders"] == 0 and all(
                not any(st["positions_lots"].values()) for st in strategies):
            return x
        return None

    # the flatten orders take thin books level by level, behind a loaded 2-core box's queue
    try:
        s = _wait(flat_and_closed, 60, "no open order and flat positions")
    except AssertionError as e:   # say what was left, and what the gate did about it
        x = last.get("status") or {}
        risk = x.get("risk", {})
        left = {name: {k: v for k, v in st["positions_lots"].items() if v}
                for name, st in risk.get("strategies", {}).items()}
        from stages.journal import read_events
        jdir = Path(live["tmp"]) / "runs" / live["instance"] / "latest" / "journal"
        gate_events = [ev for ev in read_events(jdir) if ev.get("who") == "gate"][-12:]
        raise AssertionError(f"{e}; open orders {risk.get('open_orders')}, positions left "
                             f"{left}, gate events {gate_events}") from None
    assert s["risk"]["state"] == "HALTED"
    assert s["risk"]["router_halted"]


def test_stop_leaves_no_process_and_no_segment_and_every_approved_order_is_final(live):
    from shm.segment import list_segments
    from stages.journal import read_journal_exec, read_journal_orders
    from shm.records import EXEC_FINAL_KINDS, INTENT_NEW

    pids = [s["pid"] for s in _status(live["cfg"])["stages"]]
    r = run_py("stop", "--config", str(live["cfg"]))
    assert r.returncode == 0, r.stderr
    live["proc"].wait(30)
    assert live["proc"].returncode == 0
    for pid in pids:
        p = Path(f"/proc/{pid}")
        assert not p.exists(), (pid, p.joinpath("cmdline").read_bytes() if p.exists() else b"",
                                p.joinpath("stat").read_text() if p.exists() else "")
    assert list_segments(live["instance"]) == []
    run_dir = Path(live["tmp"]) / "runs" / live["instance"] / "latest"
    report = json.loads((run_dir / "report.json").read_text())
    assert (run_dir / "latency" / "tick_to_trade.hgrm").exists()
    orders = read_journal_orders(run_dir / "journal")
    execs = read_journal_exec(run_dir / "journal")
    approved = orders[(orders["kind"] == INTENT_NEW) & (orders["reject_code"] == 0)]
    finals = execs[[k in EXEC_FINAL_KINDS for k in execs["kind"]]]
    final_count: dict[int, int] = {}
    for c in finals["client_order_id"]:
        final_count[int(c)] = final_count.get(int(c), 0) + 1
    assert len(approved) > 0
    bad = [int(c) for c in approved["client_order_id"] if final_count.get(int(c), 0) != 1]
    assert bad == [], f"{len(bad)} approved orders without exactly one final outcome"
    assert report["orders"]["approved_without_final"] == 0
