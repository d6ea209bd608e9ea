"""``run.py shm ls|clean``: listing segments and removing those of instances that are gone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from shm.histogram import LatencyHistogram
from shm.segment import Segment

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """A pid that existed a moment ago and has exited (and been reaped) since."""
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def _make(instance: str, name: str, creator_pid: int, kind: str = "spsc") -> None:
    seg = Segment.create(instance, name, 4096, kind)
    seg.header["creator_pid"] = creator_pid
    seg.mark_ready()
    seg.close()


def _ls(capsys, instance: str) -> list[dict]:
    capsys.readouterr()
    assert main(["shm", "ls", "--instance", instance, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _files(instance: str) -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f".{instance}." in f)


def test_ls_reports_name_kind_size_creator_and_whether_the_instance_runs(shm_prefix, capsys):
    dead = _dead_pid()
    _make(shm_prefix, "md.feed0", dead, kind="broadcast")
    _make(shm_prefix, "orders", dead)
    try:
        rows = _ls(capsys, shm_prefix)
        assert [r["name"] for r in rows] == [f"hftfarm.{shm_prefix}.md.feed0",
                                             f"hftfarm.{shm_prefix}.orders"]
        assert [r["kind"] for r in rows] == ["broadcast", "spsc"]
        assert all(r["creator_pid"] == dead and r["instance"] == shm_prefix for r in rows)
        assert all(r["size"] >= 4096 for r in rows)
        assert not any(r["alive"] or r["instance_running"] for r in rows)
        assert main(["shm", "ls", "--instance", shm_prefix]) == 0
        table = capsys.readouterr().out
        assert f"hftfarm.{shm_prefix}.orders" in table and "dead" in table
    finally:
        for f in _files(shm_prefix):
            os.unlink(f"/dev/shm/{f}")


def test_clean_removes_every_segment_of_a_dead_instance(shm_prefix, capsys):
    dead = _dead_pid()
    _make(shm_prefix, "orders", dead)
    _make(shm_prefix, "execs.s0", dead)
    assert len(_files(shm_prefix)) == 2
    assert main(["shm", "clean", "--instance", shm_prefix]) == 0
    assert _files(shm_prefix) == []
    assert "removed 2 segment(s)" in capsys.readouterr().out
    assert _ls(capsys, shm_prefix) == []


def test_clean_refuses_a_running_instance_and_keeps_its_segments(shm_prefix, capsys):
    h = LatencyHistogram.create(shm_prefix, "lat")  # created by this live test process
    try:
        rows = _ls(capsys, shm_prefix)
        assert [(r["kind"], r["creator_pid"], r["instance_running"]) for r in rows] == [
            ("hist", os.getpid(), True)]
        assert main(["shm", "clean", "--instance", shm_prefix]) == 1
        err = capsys.readouterr().err
        assert "still running" in err and str(os.getpid()) in err and "--force" in err
        assert _files(shm_prefix) == [f"hftfarm.{shm_prefix}.hist.lat"]
        h.record(1234)
        with LatencyHistogram.attach(shm_prefix, "lat") as again:  # still the same segment
            assert again.count == 1
    finally:
        h.close()
        h.unlink()


def test_clean_with_force_removes_a_running_instance(shm_prefix, capsys):
    _make(shm_prefix, "orders", os.getpid())
    assert main(["shm", "clean", "--instance", shm_prefix, "--force"]) == 0
    assert "forced" in capsys.readouterr().out
    assert _files(shm_prefix) == []


def test_clean_of_an_unknown_instance_says_there_is_nothing_to_do(shm_prefix, capsys):
    assert main(["shm", "clean", "--instance", shm_prefix]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_run_py_shm_ls_works_from_the_shell(shm_prefix):
    _make(shm_prefix, "orders", _dead_pid())
    try:
        out = subprocess.run([sys.executable, "run.py", "shm", "ls", "--instance", shm_prefix],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"hftfarm.{shm_prefix}.orders" in out.stdout
    finally:
        for f in _files(shm_prefix):
            os.unlink(f"/dev/shm/{f}")


@pytest.mark.parametrize("argv", [["shm"], ["shm", "rm"]])
def test_shm_without_a_known_subcommand_is_a_usage_error(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
