"""`run.py start` (background, the default) returns once every stage is RUNNING; `run.py stop`
returns once no process and no segment of the instance is left."""
from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_pipeline_cli import COLD_START_S
from tests.integration.test_pipeline_cli import run_py, write_config


def test_background_start_returns_with_every_stage_running_and_stop_cleans_up(tmp_path,
                                                                             shm_prefix):
    from shm.segment import list_segments

    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs")
    cfg.write_text(cfg.read_text().replace("event_rate_per_s = 20000", "event_rate_per_s = 2000")
                   .replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000"))
    pids = []
    try:
        r = run_py("start", "--config", str(cfg), timeout=COLD_START_S + 60)
        assert r.returncode == 0, r.stderr
        assert "started" in r.stdout
        st = json.loads(run_py("status", "--json", "--config", str(cfg)).stdout)
        pids = [s["pid"] for s in st["stages"]] + [st["pid"]]
        assert [s["state"] for s in st["stages"]] == ["RUNNING"] * 7
        assert list_segments(shm_prefix)
    finally:
        r = run_py("stop", "--config", str(cfg), timeout=120)
    assert r.returncode == 0, r.stderr
    assert list_segments(shm_prefix) == []
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", pid
    r = run_py("status", "--config", str(cfg))
    assert r.returncode == 3


def test_start_timeout_stops_what_it_started(tmp_path, shm_prefix):
    """`start --timeout T` that runs out: exit 1 saying so, and nothing of it is left."""
    from pipeline.recovery import stage_pids
    from shm.segment import claim_holder, list_segments

    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs")
    r = run_py("start", "--timeout", "0.5", "--config", str(cfg), timeout=120)
    assert r.returncode == 1, r.stdout
    assert "not up within --timeout 0.5 s" in r.stderr and "stopped what was started" \
        in r.stderr, r.stderr
    assert list_segments(shm_prefix) == []
    assert stage_pids(shm_prefix) == []
    assert claim_holder(shm_prefix) is None
    assert run_py("status", "--config", str(cfg)).returncode == 3
