"""The controller CLI's documented errors, without a running instance (real `run.py` processes)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# How long a test waits for a pipeline to come up: the first start of a suite run compiles every
# stage's kernels from a cold cache, which on a 2-core machine running the other pytest-xdist
# worker's compiles too can take minutes. (A start that is stuck rather than slow is still
# caught: the supervisor fails a stage that stops using CPU.)
COLD_START_S = 900


def run_py(*args, timeout=120):
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def status_json(cfg) -> dict:
    """`run.py status --json` of the instance of config ``cfg`` (must be running)."""
    import json

    r = run_py("status", "--json", "--config", str(cfg), timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def stage_row(st: dict, name: str) -> dict:
    return next(r for r in st["stages"] if r["stage"] == name)


def wait_for(pred, timeout_s, what, step=0.05):
    """Poll ``pred`` until it returns something truthy (returned); AssertionError naming
    ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def end_instance(proc, instance: str) -> None:
    """Teardown of a test's foreground instance: SIGTERM (SIGKILL after 60 s), then fail if it
    left a shared-memory segment behind (after removing them, so one failure does not cascade)."""
    import signal

    from shm.segment import list_segments, unlink_instance

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    leaked = [s.name for s in list_segments(instance)]
    unlink_instance(instance)
    assert not leaked, f"segments left behind: {leaked}"


def write_config(path: Path, instance: str, run_dir: Path, extra: str = "",
                 layout: str | None = None) -> Path:
    """config.toml for a test instance; ``layout`` ("dedicated": one process per stage, for
    tests that kill or stop one stage's process) overrides the default's."""
    text = (ROOT / "config.toml").read_text()
    if layout is not None:
        text = text.replace('layout = "composite"', f'layout = "{layout}"', 1)
    text = text.replace('name = "default"', f'name = "{instance}"', 1)
    text = text.replace('run_dir = "runs"', f'run_dir = "{run_dir}"', 1)
    path.write_text(text + extra)
    return path


@pytest.mark.parametrize("cmd", ["status", "stop", "latency", "kill"])
def test_control_commands_exit_3_with_a_clear_message_when_not_running(cmd, tmp_path,
                                                                        shm_prefix):
    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs")
    r = run_py(cmd, "--config", str(cfg))
    assert r.returncode == 3, r.stderr
    assert f"instance '{shm_prefix}' is not running" in r.stderr


def test_start_with_a_bad_config_exits_2_naming_each_problem_and_spawns_nothing(tmp_path,
                                                                               shm_prefix):
    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs",
                       "\n[journal]\nflush_recordz = 5\n")
    text = cfg.read_text().replace("max_open_orders = 40", "max_open_orders = -1")
    cfg.write_text(text.replace("[journal]\nenabled = true\nmarket_data = false\n", ""))
    r = run_py("start", "--config", str(cfg))
    assert r.returncode == 2
    assert "risk.max_open_orders = -1: must be > 0" in r.stderr
    assert "journal.flush_recordz" in r.stderr and "unknown key" in r.stderr
    assert not (tmp_path / "runs" / shm_prefix / "controller.log").exists()


def test_run_with_a_missing_config_file_exits_2(tmp_path):
    r = run_py("run", "--config", str(tmp_path / "nope.toml"), "--duration", "1")
    assert r.returncode == 2
    assert "no such file" in r.stderr


@pytest.mark.parametrize("argv", [["start", "--bogus"], ["status", "extra"],
                                  ["run", "--duration", "soon"], ["latency", "--dump"]])
def test_bad_cli_usage_exits_2_with_the_usage_line(argv):
    r = run_py(*argv)
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_run_refuses_a_negative_duration(tmp_path, shm_prefix):
    cfg = write_config(tmp_path / "c.toml", shm_prefix, tmp_path / "runs")
    r = run_py("run", "--config", str(cfg), "--duration", "-1")
    assert r.returncode == 2
    assert "--duration -1" in r.stderr
