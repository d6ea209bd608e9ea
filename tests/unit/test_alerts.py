"""Alerts evaluated in the controller: each fires on its condition and not otherwise, and
clears; the monitor turns shared-memory state into them; the webhook delivers them."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipeline.config import AlertsConfig, parse_config
from pipeline.monitor import AlertBook, evaluate
from tests.unit.monitoring_rig import Rig, config_text

A = AlertsConfig()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return parse_config(config_text("x", tmp_path_factory.mktemp("c"), 2), build=False)


def quiet() -> dict:
    """A monitor snapshot (``status --json``'s ``monitor``) with nothing wrong."""
    return {"kpis": {"mm0": {"recent_win_rate": 0.55, "recent_trades": 50, "drawdown": 10.0},
                     "mm1": {"recent_win_rate": None, "recent_trades": 0, "drawdown": 0.0}},
            "window": {"span_s": 60.0, "rejects_per_s": 1.0, "reject_fraction": 0.01,
                       "tick_to_trade_count": 5000, "tick_to_trade_p99_us": 300.0},
            "staleness_s": {"simA": 0.1, "simB": 0.2},
            "restarts_in_window": {"venue": 0, "strategy-mm0": 1}}


def with_(path: str, value) -> dict:
    s = json.loads(json.dumps(quiet()))
    *head, last = path.split(".")
    d = s
    for k in head:
        d = d[k]
    d[last] = value
    return s


CASES = [  # (alert, subject, path, firing value, value just inside the threshold)
    ("win_rate_degraded", "mm0", "kpis.mm0.recent_win_rate", 0.25, 0.30),
    ("drawdown_excessive", "mm0", "kpis.mm0.drawdown", 15_000.0, 14_999.0),  # 0.5 x 30000
    ("latency_degraded", "tick_to_trade", "window.tick_to_trade_p99_us", 6000.0, 5000.0),
    ("feed_stale", "simB", "staleness_s.simB", 5.0, 4.9),
    ("reject_spike", "risk_gate", "window.rejects_per_s", 25.0, 20.0),
    ("stage_restarting", "venue", "restarts_in_window.venue", 3, 2),
]


def test_nothing_fires_on_a_quiet_snapshot(cfg):
    assert evaluate(quiet(), A, cfg) == {}


@pytest.mark.parametrize("alert,subject,path,bad,ok", CASES, ids=[c[0] for c in CASES])
def test_each_alert_fires_on_its_condition_only_and_clears(alert, subject, path, bad, ok, cfg):
    snap = with_(path, bad)
    if alert == "reject_spike":
        snap["window"]["reject_fraction"] = 0.9
    fired = evaluate(snap, A, cfg)
    assert list(fired) == [(alert, subject)], fired
    near = with_(path, ok)
    if alert == "reject_spike":
        near["window"]["reject_fraction"] = 0.9
    assert evaluate(near, A, cfg) == {}
    book = AlertBook()
    up, down = book.update(fired, 1.0, 100.0)
    assert [e["alert"] for e in up] == [alert] and up[0]["state"] == "firing" and not down
    assert book.update(fired, 2.0, 101.0) == ([], [])          # still firing: no new event
    assert [a["alert"] for a in book.active_list()] == [alert]
    up, down = book.update(evaluate(near, A, cfg), 3.0, 102.0)
    assert not up and [e["state"] for e in down] == ["cleared"] and book.active_list() == []


def test_guards_too_few_trades_too_few_latency_records_and_a_small_reject_fraction(cfg):
    s = with_("kpis.mm0.recent_win_rate", 0.1)
    s["kpis"]["mm0"]["recent_trades"] = A.win_rate_min_trades - 1
    assert evaluate(s, A, cfg) == {}
    s = with_("window.tick_to_trade_p99_us", 1e6)
    s["window"]["tick_to_trade_count"] = A.latency_min_count - 1
    assert evaluate(s, A, cfg) == {}
    s = with_("window.rejects_per_s", 500.0)   # many denials, but a small share of decisions
    assert evaluate(s, A, cfg) == {}


def test_thresholds_come_from_the_alerts_section(cfg):
    tight = AlertsConfig(stale_feed_s=0.15)
    assert list(evaluate(quiet(), tight, cfg)) == [("feed_stale", "simB")]


@pytest.fixture
def rig(shm_prefix, tmp_path):
    r = Rig(shm_prefix, tmp_path, n_strategies=2, extra="\n[alerts]\nrestarts_max = 2\n"
            "stale_feed_s = 5.0\ntick_to_trade_p99_us = 1000.0\nlatency_min_count = 10\n")
    yield r
    r.close()


def test_the_monitor_raises_and_clears_alerts_from_shared_memory(rig):
    from common.status import W_RECORDS_OUT, W_RESTARTS
    from pipeline.monitor import Monitor

    c = rig.ctl
    now = [1000.0]
    mon = Monitor(c, clock=lambda: now[0])
    events = []
    mon.on_alert = events.append
    venue = c.topology.stage("venue").slot
    gate = c.topology.stage("risk_gate").slot
    assert mon.sample()["alerts"] == []
    now[0] += 6.0                         # the venue published nothing for 6 s
    snap = mon.sample()
    assert {(a["alert"], a["subject"]) for a in snap["alerts"]} == \
        {("feed_stale", "simA"), ("feed_stale", "simB")}
    c.status.set_word(venue, W_RECORDS_OUT, 5)
    c.status.set_word(gate, W_RESTARTS, 2)
    c.hists["tick_to_trade"].record(3_000_000, count=20)   # 3 ms
    now[0] += 1.0
    snap = mon.sample()
    assert {(a["alert"], a["subject"]) for a in snap["alerts"]} == \
        {("stage_restarting", "risk_gate"), ("latency_degraded", "tick_to_trade")}
    assert {(e["alert"], e["state"]) for e in events} >= {("feed_stale", "cleared"),
                                                          ("stage_restarting", "firing")}
    now[0] += A.restarts_window_s + 61    # both windows pass with no new restart or record
    c.status.set_word(venue, W_RECORDS_OUT, 6)
    assert mon.sample()["alerts"] == []
    assert [e["state"] for e in events].count("cleared") == 4


def test_webhook_posts_each_event_as_json_to_a_loopback_server():
    from pipeline.webhook import WebhookSender

    got = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            n = int(self.headers["Content-Length"])
            got.append((self.headers["Content-Type"], json.loads(self.rfile.read(n))))
            self.send_response(204)
            self.end_headers()

    srv = HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        w = WebhookSender(f"http://127.0.0.1:{srv.server_address[1]}/hook", 2.0, "inst")
        w.post({"alert": "feed_stale", "subject": "simA", "state": "firing"})
        w.post({"alert": "feed_stale", "subject": "simA", "state": "cleared"})
        w.close()
        assert [g[1]["state"] for g in got] == ["firing", "cleared"]
        assert got[0] == ("application/json", {"instance": "inst", "alert": "feed_stale",
                                               "subject": "simA", "state": "firing"})
        assert w.sent == 2 and w.failed == 0
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_a_dead_or_silent_webhook_never_blocks_the_caller():
    import socket

    from pipeline.webhook import WebhookSender

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)                       # accepts the connection, never answers
    try:
        w = WebhookSender(f"http://127.0.0.1:{silent.getsockname()[1]}/", 0.3, "inst")
        t0 = time.monotonic()
        for i in range(1000):              # far more than the queue holds
            w.post({"n": i})
        assert time.monotonic() - t0 < 0.5
        assert w.dropped > 0
        w.close(wait_s=0.5)
        assert not w._thread.is_alive()
    finally:
        silent.close()


def test_status_text_lists_the_alerts_firing_and_the_monitoring_urls():
    from pipeline.commands.status import format_status

    st = {"instance": "i", "pid": 1, "uptime_s": 2.0, "run_dir": "/r", "stages": [],
          "risk": {"state": "ACTIVE", "halted_reason": "", "approved": 0, "rejected": 0,
                   "orders_sent": 0, "fills": 0, "open_orders": 0, "strategies": {}},
          "monitor": {"alerts": [{"alert": "feed_stale", "subject": "simA",
                                  "severity": "critical", "message": "venue simA: no market "
                                  "record for 6.0 s (limit 5 s)"}]},
          "monitoring": {"metrics_url": "http://127.0.0.1:9464/metrics",
                         "dashboard_url": None}}
    text = format_status(st)
    assert "alerts firing:\n  critical feed_stale (simA): venue simA: no market record" in text
    assert "monitoring: metrics http://127.0.0.1:9464/metrics" in text
    assert "dashboard" not in text
    st["monitor"]["alerts"] = []
    assert "alerts firing" not in format_status(st)
