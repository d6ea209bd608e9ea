"""Composite stages with real processes (one pipeline): the venue and journal share one
process, the strategies, risk gate and order router another.

- Each stage still shows as its own row (state, pid: its composite's) in `status`.
- A strategy whose hook raises halts alone inside the composite: the gate, the router and the
  other strategies in the same process trade on.
- kill -9 of the composite running the gate and the router: fail-closed. The controller
  notices, halts, restarts the composite with --reconcile; no new order reaches a venue until
  the gate is back and has reconciled (from the journal, pipeline/drill.py), and trading
  resumes after that.
- After stop: no process and no shared-memory segment or semaphore left.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

from tests.integration.test_pipeline_cli import (COLD_START_S, ROOT, end_instance, status_json,
                                                 wait_for, write_config)
from tests.integration.test_strategy_fault_live import ENTRY, POISON

COMPOSITES = '''
[[composites]]
name = "md"
stages = ["venue", "journal"]

[[composites]]
name = "hot"
stages = ["strategy-*", "risk_gate", "order_router"]
'''


def composite_config(text: str) -> str:
    """``text`` (a copy of config.toml) with the two composites above, whatever its own."""
    text = text.split("\n[[composites]]")[0] + "\n"
    text = re.sub(r"(?m)^layout = .*$", "", text)
    return text.replace("[stages]\n", '[stages]\nlayout = "composite"\n', 1) + COMPOSITES


def test_composite_kill_9_is_fail_closed_and_a_faulty_member_halts_alone(tmp_path,
                                                                          monkeypatch):
    from pipeline.config import load_config
    from pipeline.drill import kill_stage, wait_for_flow
    from stages.journal import read_events

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "poison_live.py").write_text(POISON)
    monkeypatch.setenv("HFTFARM_STRATEGY_PATH", str(plugins))   # this process loads it too
    env = dict(os.environ)
    instance = f"t{uuid.uuid4().hex[:8]}cd"
    cfg_path = write_config(tmp_path / "c.toml", instance, tmp_path / "runs")
    text = cfg_path.read_text().replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    text = text.replace("[stages]\n", "[stages]\nrestart_limit = 100\n", 1)
    cfg_path.write_text(composite_config(text) + ENTRY)
    cfg = load_config(cfg_path)          # before anything is started
    log = open(tmp_path / "controller.log", "wb")
    proc = subprocess.Popen([sys.executable, "run.py", "start", "--foreground", "--config",
                             str(cfg_path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    jdir = tmp_path / "runs" / instance / "latest" / "journal"
    pids = set()
    try:
        def up():
            assert proc.poll() is None, (tmp_path / "controller.log").read_text()
            try:
                return status_json(cfg_path)
            except AssertionError:
                return None

        st = wait_for(up, COLD_START_S, "the instance to start", step=0.5)
        rows = {r["stage"]: r for r in st["stages"]}
        hot = {rows[n]["pid"] for n in rows if n.startswith("strategy-")} | \
            {rows["risk_gate"]["pid"], rows["order_router"]["pid"]}
        md = {rows["venue"]["pid"], rows["journal"]["pid"]}
        assert len(hot) == 1 and len(md) == 1 and hot != md      # two processes, seven rows
        assert all(r["state"] == "RUNNING" for r in rows.values())
        pids |= hot | md

        # a strategy fault inside the composite halts that strategy alone
        def halted():
            s = status_json(cfg_path)
            row = next(x for x in s["stages"] if x["stage"] == "strategy-poison")
            return s if row["reason"].startswith("halted: on_market raised") else None

        s = wait_for(halted, 180, "the poison strategy halted", step=0.5)
        assert {r["pid"] for r in s["stages"] if r["stage"] != "venue"
                and r["stage"] != "journal"} == hot                  # nothing restarted
        assert all(r["state"] == "RUNNING" for r in s["stages"])
        wait_for_flow(cfg, 1, 60)                                    # the others trade on

        # kill -9 of the composite that runs the gate and the router
        d = kill_stage(cfg, "risk_gate", timeout_s=120)
        assert d["back_s"] is not None, d
        assert d["reconciled_s"] is not None, d
        # fail-closed: the gate approved no new order between the halt and the resume after
        # reconciliation, and no venue acknowledged an order approved then. (The drill's own
        # figure also counts fills of orders that rested at the venue before the kill: with
        # the router dead too, they stay there until the restarted router reconciles.)
        assert _approved_while_halted(jdir) == (0, 0)
        ev = [e for e in read_events(jdir) if e["what"] == "stage_failed"
              and e.get("process") == "hot"]
        assert {e["stage"] for e in ev} >= {"risk_gate", "order_router", "strategy-mm_btc"}
        halt = [e for e in read_events(jdir) if e["what"] == "halt"]
        resumed = [e for e in read_events(jdir) if e["what"] == "resume_after_reconcile"]
        assert halt and resumed and resumed[-1]["ts_ns"] > halt[-1]["ts_ns"]
        st = status_json(cfg_path)
        rows = {r["stage"]: r for r in st["stages"]}
        new_hot = {rows["risk_gate"]["pid"], rows["order_router"]["pid"],
                   rows["strategy-mm_btc"]["pid"]}
        assert len(new_hot) == 1 and new_hot != hot
        assert rows["risk_gate"]["restarts"] == 1
        pids |= new_hot
        wait_for_flow(cfg, 1, 60)                                    # trading resumed
        r = subprocess.run([sys.executable, "run.py", "stop", "--config", str(cfg_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        proc.wait(60)
        assert proc.returncode == 0
        # both composites left their loops cleanly (drained, stopped), not by an exception
        logs = tmp_path / "runs" / instance / "latest" / "logs"
        for name in ("hot", "md"):
            tail = (logs / f"{name}.log").read_text().rstrip().splitlines()[-1]
            assert tail.startswith(f"{name}: ") and " rounds in " in tail, tail
    finally:
        log.close()
        end_instance(proc, instance)                 # fails if a segment was left behind
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid


def _approved_while_halted(jdir) -> tuple[int, int]:
    """(new orders the gate approved between the first halt and the resume after it, venue
    acknowledgements or fills of such orders)."""
    import numpy as np

    from shm.records import EFLAG_FROM_RISK, EXEC_ACK, EXEC_FILL, EXEC_PARTIAL, INTENT_NEW
    from stages.journal import read_events, read_journal_exec, read_journal_orders

    ev = read_events(jdir)
    halt = min(e["ts_ns"] for e in ev if e["what"] == "halt")
    resume = min(e["ts_ns"] for e in ev if e["what"] == "resume_after_reconcile"
                 and e["ts_ns"] > halt)
    o = read_journal_orders(jdir)
    new = o[(o["kind"] == INTENT_NEW) & (o["reject_code"] == 0)
            & (o["send_ts_ns"] > halt) & (o["send_ts_ns"] < resume)]
    ex = read_journal_exec(jdir)
    acked = ex[((ex["flags"] & EFLAG_FROM_RISK) == 0)
               & np.isin(ex["kind"], (EXEC_ACK, EXEC_FILL, EXEC_PARTIAL))
               & np.isin(ex["client_order_id"], new["client_order_id"])]
    return len(new), len(acked)
