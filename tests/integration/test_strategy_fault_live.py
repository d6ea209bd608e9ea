"""A fault inside one strategy's hook in a real instance: that strategy halts (its resting order
cancelled, its process alive and not restarted), the reason is in `status` and the events
journal, and the other strategies trade on. The faulty strategy is a real strategy kind loaded
from outside the checkout ($HFTFARM_STRATEGY_PATH), as a user's own strategy would be."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import ROOT, status_json, wait_for, write_config

POISON = '''
from dataclasses import dataclass

from numba import njit

from common.schema import opt
from market.book import best_bid_px, is_valid
from shm.records import ORD_POST_ONLY, SIDE_BUY
from strategies.base import Strategy, open_count, place


@dataclass(frozen=True)
class PoisonParams:
    raise_after: int = opt(300, "market batches after its first quote before on_market "
                           "raises", ge=1)


@njit(cache=True)
def on_market(ctx, st, p, md, n_md, now_ns):
    inst = ctx.inst[0]
    if open_count(ctx) == 0 and is_valid(ctx.px, ctx.meta, inst):
        place(ctx, 0, SIDE_BUY, ORD_POST_ONLY, best_bid_px(ctx.px, ctx.meta, inst) - 20, 1,
              now_ns)
        st.quoted = 1
    # counted from its first quote: how many batches a second brings depends on how often
    # the stage is polled (a composite polls a strategy whenever a record waits)
    st.calls += st.quoted
    if st.calls >= p.raise_after:
        raise ValueError("poisoned")


class PoisonLive(Strategy):
    kind = "poison_live"
    Params = PoisonParams
    n_instruments = 1
    on_market = staticmethod(on_market)

    def state_fields(self):
        return [("calls", "i8"), ("quoted", "i8")]
'''

ENTRY = '''
[[strategies]]
name = "poison"
kind = "poison_live"
instruments = ["ETH-USD@simA"]
params = { raise_after = 400 }
'''


def _run(*args, env):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=COLD_START_S + 300, env=env)


def test_a_strategy_whose_hook_raises_halts_alone_with_its_reason_and_orders_cancelled(
        tmp_path):
    from shm.records import INTENT_CANCEL, INTENT_NEW
    from shm.segment import list_segments, unlink_instance
    from stages.journal import read_events, read_journal_orders

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "poison_live.py").write_text(POISON)
    env = dict(os.environ, HFTFARM_STRATEGY_PATH=str(plugins))
    instance = f"t{uuid.uuid4().hex[:8]}pf"
    cfg = write_config(tmp_path / "c.toml", instance, tmp_path / "runs")
    text = cfg.read_text().replace("event_rate_per_s = 20000", "event_rate_per_s = 3000")
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    # one more [[strategies]] entry (an array of tables may continue anywhere in TOML)
    cfg.write_text(text + ENTRY)
    r = _run("check-config", "--config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    r = _run("start", "--config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    jdir = tmp_path / "runs" / instance / "latest" / "journal"
    try:
        st = status_json(cfg)
        sids = {k: v["strategy_id"] for k, v in st["risk"]["strategies"].items()}

        def halted():
            s = status_json(cfg)
            row = next(x for x in s["stages"] if x["stage"] == "strategy-poison")
            return s if row["reason"].startswith("halted: on_market raised") else None

        s = wait_for(halted, 180, "the poison strategy halted", step=0.5)
        row = next(x for x in s["stages"] if x["stage"] == "strategy-poison")
        assert row["state"] == "RUNNING" and row["restarts"] == 0   # halted, not crashed
        ev = [e for e in read_events(jdir) if e["what"] == "strategy_halted"]
        assert len(ev) == 1 and ev[0]["who"] == "poison" and ev[0]["why"] == "on_market raised"
        wait_for(lambda: status_json(cfg)["risk"]["strategies"]["poison"]["open_orders"] == 0,
                 60, "the poison strategy's orders cancelled", step=0.5)
        orders = read_journal_orders(jdir)
        mine = orders[(orders["strategy_id"] == sids["poison"]) & (orders["reject_code"] == 0)]
        assert (mine["kind"] == INTENT_NEW).any()          # it had quoted
        assert (mine["kind"] == INTENT_CANCEL).any()       # and the runtime pulled the quote

        def mm_news():
            o = read_journal_orders(jdir)
            return int(((o["strategy_id"] == sids["mm_btc"]) & (o["kind"] == INTENT_NEW)).sum())

        before = mm_news()
        time.sleep(3.0)
        assert mm_news() > before                          # the others trade on
        row = next(x for x in status_json(cfg)["stages"] if x["stage"] == "strategy-poison")
        assert row["restarts"] == 0
    finally:
        r = _run("stop", "--config", str(cfg), env=env)
        leaked = [x.name for x in list_segments(instance)]
        unlink_instance(instance)
    assert r.returncode == 0, r.stderr
    assert not leaked, leaked
