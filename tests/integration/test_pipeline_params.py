"""`run.py set` against a real running instance (one market maker, the other strategies
disabled to spare a 2-core machine): the new size is in the market maker's next orders (read
from the journal), the set is journaled and shown by status, a bad value exits 2 and changes
nothing, and after a kill -9 of the strategy process its restart trades on the new value.

Orders are told apart by their send time (``send_ts_ns``, CLOCK_REALTIME as every process's
TSC clock keeps it): the set is applied before the strategy acknowledges it, the controller
journals the set after the acknowledgement, so every order sent after the journaled event's
time was written with the new parameters.
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

import numpy as np
import pytest

from tests.integration.test_pipeline_cli import ROOT, end_instance, run_py, write_config
from tests.integration.test_pipeline_cli import stage_row as _stage
from tests.integration.test_pipeline_cli import status_json as _status
from tests.integration.test_pipeline_cli import wait_for as _wait

from tests.integration.test_pipeline_cli import COLD_START_S  # noqa: E402

START_TIMEOUT_S = COLD_START_S
MM = "strategy-mm_btc"


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("params")
    instance = f"t{os.getpid()}P{uuid.uuid4().hex[:6]}"
    cfg = write_config(tmp / "c.toml", instance, tmp / "runs")
    text = cfg.read_text().replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    for name in ("pairs_btc_eth", "arb_btc"):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nenabled = false\n')
    cfg.write_text(text)
    log = open(tmp / "foreground.log", "wb")
    proc = subprocess.Popen([sys.executable, "run.py", "start", "--foreground", "--config",
                             str(cfg)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up():
            assert proc.poll() is None, (tmp / "foreground.log").read_text()
            r = run_py("status", "--json", "--config", str(cfg), timeout=60)
            if r.returncode != 0:
                return None
            st = json.loads(r.stdout)
            return st if all(s["state"] == "RUNNING" for s in st["stages"]) else None

        st = _wait(up, START_TIMEOUT_S, "every stage RUNNING", step=1.0)
        yield {"cfg": cfg, "run_dir": Path(st["run_dir"]), "tmp": tmp}
    finally:
        log.close()
        end_instance(proc, instance)


def mm_news(run_dir: Path, after_ns: int = 0) -> np.ndarray:
    """The market maker's NEW orders the gate journaled (its own, not the gate's), sent after
    ``after_ns``."""
    from shm.records import INTENT_NEW, OFLAG_RISK_SYSTEM
    from stages.journal import read_journal_orders

    o = read_journal_orders(run_dir / "journal")
    if len(o) == 0:
        return o
    mine = (o["strategy_id"] == 1) & (o["kind"] == INTENT_NEW) & \
        ((o["flags"] & OFLAG_RISK_SYSTEM) == 0) & (o["send_ts_ns"] > after_ns)
    return o[mine]


def wait_news(run_dir: Path, qty: int, after_ns: int, what: str) -> np.ndarray:
    """The market maker's NEW orders sent after ``after_ns``, once one of ``qty`` lots is in."""
    return _wait(lambda: (lambda n: [n] if len(n) and (n["qty_lots"] == qty).any() else None)(
        mm_news(run_dir, after_ns)), 120, what)[0]


def set_events(run_dir: Path) -> list[dict]:
    from stages.journal import read_events

    return [e for e in read_events(run_dir / "journal") if e["what"] == "params_set"]


def test_set_changes_the_market_makers_next_orders_and_is_journaled(inst):
    cfg, run_dir = str(inst["cfg"]), inst["run_dir"]
    before = wait_news(run_dir, 10, 0, "market-maker orders of the config's size (10 lots)")
    assert before["qty_lots"].max() == 10
    r = run_py("set", "mm_btc", "order_qty_lots=3", "--why", "smaller clips", "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert "order_qty_lots 10 -> 3" in r.stdout and f"applied by {MM}" in r.stdout, r.stdout
    ev = set_events(run_dir)
    assert len(ev) == 1
    ev = ev[0]
    assert (ev["who"], ev["why"], ev["strategy"], ev["version"]) == ("cli", "smaller clips",
                                                                    "mm_btc", 1)
    assert ev["old"] == {"order_qty_lots": 10} and ev["new"] == {"order_qty_lots": 3}
    assert ev["acked_by"] == [MM] and ev["ts_ns"] > 0
    after = wait_news(run_dir, 3, ev["ts_ns"], "a market-maker order of 3 lots")
    assert after["qty_lots"].max() <= 3, after["qty_lots"]
    text = (run_dir / "logs" / f"{MM}.log").read_text()
    assert "parameter set 1 applied (order_qty_lots 10 -> 3)" in text


def test_status_shows_the_set_version_and_what_differs_from_the_config(inst):
    st = _status(inst["cfg"])
    assert st["params"]["mm_btc"]["version"] == 1
    assert st["params"]["mm_btc"]["changed"] == {"order_qty_lots": {"config": 10, "now": 3}}
    r = run_py("status", "--config", str(inst["cfg"]))
    assert r.returncode == 0, r.stderr
    assert "parameter set 1 (run.py set by cli" in r.stdout
    assert "order_qty_lots 10 -> 3" in r.stdout


def test_a_bad_value_or_an_unknown_strategy_exits_2_and_changes_nothing(inst):
    cfg, run_dir = str(inst["cfg"]), inst["run_dir"]
    file_before = (run_dir / "params" / "mm_btc.json").read_bytes()
    r = run_py("set", "mm_btc", "order_qty_lots=0", "gamma=fast", "--config", cfg)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "strategies[0].params.order_qty_lots = 0: must be > 0" in r.stderr
    assert "strategies[0].params.gamma = 'fast': must be a number" in r.stderr
    r = run_py("set", "pairs_btc_eth", "entry_z=3", "--config", cfg)
    assert r.returncode == 2
    assert "unknown strategy 'pairs_btc_eth'" in r.stderr and "mm_btc" in r.stderr
    assert "enabled = false" in r.stderr
    assert (run_dir / "params" / "mm_btc.json").read_bytes() == file_before
    assert len(set_events(run_dir)) == 1
    assert _status(inst["cfg"])["params"]["mm_btc"]["version"] == 1


def test_a_restarted_strategy_process_keeps_the_set(inst):
    cfg, run_dir = inst["cfg"], inst["run_dir"]
    victim = _stage(_status(cfg), MM)
    os.kill(victim["pid"], signal.SIGKILL)
    killed_ns = time.time_ns()
    _wait(lambda: (lambda s: s["pid"] != victim["pid"] and s["state"] == "RUNNING")(
        _stage(_status(cfg), MM)), 300, "the restarted market maker")
    after = wait_news(run_dir, 3, killed_ns, "a 3-lot order of the restarted market maker")
    assert after["qty_lots"].max() <= 3, after["qty_lots"]
    text = (run_dir / "logs" / f"{MM}.log").read_text()
    assert "parameters: set 1 of this run" in text
    assert _status(cfg)["params"]["mm_btc"]["version"] == 1
