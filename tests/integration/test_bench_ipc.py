"""``run.py bench ipc --json`` end to end: the report's shape, every record delivered, nothing
left behind. The figures themselves are the benchmark's business, not asserted here."""
from __future__ import annotations

import pytest

import json
import os

from tests.integration.test_pipeline_cli import run_py


def _bench_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if ".bench" in n or n.startswith("hftfarm.bench")}


@pytest.mark.slow   # compiles the benchmark's own kernels: make test-all
def test_bench_ipc_json_reports_our_rings_against_the_baseline_and_cleans_up():
    before = _bench_segments()
    r = run_py("bench", "ipc", "--quick", "--json", "--only", "spsc-poll,broadcast-3",
               timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert {"cpu_model", "cores", "usable_cores"} <= set(report["machine"])
    rows = {row["transport"]: row for row in report["results"]}
    # mp-queue and the floor are always measured, for the ratios
    assert set(rows) == {"spsc-poll", "broadcast-3", "mp-queue", "cacheline-floor"}
    for name, row in rows.items():
        assert {"p50_ns", "p99_ns", "p999_ns", "max_ns", "throughput_rps"} <= set(row), name
        assert 0 < row["p50_ns"] <= row["p99_ns"] <= row["p999_ns"] <= row["max_ns"], name
        assert row["throughput_rps"] > 0, name
    assert rows["broadcast-3"]["lost"] == 0          # the paced writer never laps a reader
    assert _bench_segments() <= before                 # every segment was unlinked


def test_bench_ipc_names_an_unknown_transport():
    r = run_py("bench", "ipc", "--quick", "--only", "spsc-nope", timeout=120)
    assert r.returncode != 0
    assert "spsc-nope" in r.stderr
