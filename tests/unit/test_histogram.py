"""shm/histogram.py: bucket layout, percentile accuracy, njit recording, cross-process reads,
and the HdrHistogram export formats (.hgrm text and the interval log)."""
from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from shm.histogram import (
    BUCKET_HIGH, BUCKET_LOW, COUNTS_LEN, HIGHEST_NS, MAX_RELATIVE_ERROR, HistogramLayoutError,
    IntervalLog, LatencyHistogram, hist_record,
)

ROOT = Path(__file__).resolve().parents[2]
STATED_ERROR = 0.01  # what the module promises (its layout gives 1/128)


def _distribution(name: str, n: int, rng) -> np.ndarray:
    if name == "small-exact":  # below 256 ns every value has its own slot
        x = rng.integers(0, 256, n)
    elif name == "uniform-us":
        x = rng.uniform(1e3, 1e6, n)
    elif name == "exponential":
        x = rng.exponential(20_000, n)
    elif name == "lognormal-10-decades":  # ~1 ns .. 10 s: the whole range a stage can see
        x = np.exp(rng.uniform(0.0, 23.0, n)) * rng.lognormal(0.0, 0.5, n)
    elif name == "lognormal-heavy":
        x = rng.lognormal(9.0, 2.5, n)
    elif name == "bimodal":
        x = np.concatenate([rng.normal(700, 40, n - n // 50), rng.normal(2e6, 3e5, n // 50)])
    else:
        raise ValueError(name)
    return np.clip(x, 0, HIGHEST_NS).astype(np.int64)


def test_slots_match_hdrhistogram_index_for_every_bucket_boundary():
    from hdrh.histogram import HdrHistogram

    ref = HdrHistogram(1, HIGHEST_NS, 2)
    assert ref.counts_len == COUNTS_LEN
    h = LatencyHistogram.local()
    for slot in range(0, COUNTS_LEN, 7):  # every 7th slot keeps this fast; both ends covered
        for v in (int(BUCKET_LOW[slot]), int(BUCKET_HIGH[slot])):
            if v > HIGHEST_NS:
                continue
            h.reset()
            h.record(v)
            (got,) = np.flatnonzero(h.counts)
            assert got == ref._counts_index_for(v) == slot, v
            assert ref.get_lowest_equivalent_value(v) == BUCKET_LOW[slot]
            assert ref.get_highest_equivalent_value(v) == BUCKET_HIGH[slot]


def test_every_value_maps_to_a_slot_within_the_stated_relative_error():
    rng = np.random.default_rng(7)
    values = np.unique(np.exp(rng.uniform(0, math.log(HIGHEST_NS), 200_000)).astype(np.int64))
    h = LatencyHistogram.local()
    for v in values[::97]:
        h.reset()
        h.record(int(v))
        slot = int(np.flatnonzero(h.counts)[0])
        assert BUCKET_LOW[slot] <= v <= BUCKET_HIGH[slot]
        assert (BUCKET_HIGH[slot] - v) <= v * MAX_RELATIVE_ERROR
    assert MAX_RELATIVE_ERROR < STATED_ERROR


@pytest.mark.parametrize("dist", ["small-exact", "uniform-us", "exponential",
                                  "lognormal-10-decades", "lognormal-heavy", "bimodal"])
def test_percentiles_agree_with_numpy_percentile_within_the_stated_error(dist):
    rng = np.random.default_rng(abs(hash(dist)) % 2**32)
    x = _distribution(dist, 400_000, rng)
    h = LatencyHistogram.local()
    h.record_many(x)
    ps = [0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]
    got = h.percentiles(ps)
    want = np.percentile(x, ps, method="inverted_cdf")
    for p, w in zip(ps, want):
        assert abs(got[p] - w) <= STATED_ERROR * max(w, 1), (dist, p, got[p], w)
    if dist == "small-exact":
        assert [got[p] for p in ps] == [int(w) for w in want]


def test_percentile_is_the_exact_order_statistic_rounded_up_by_at_most_one_slot():
    rng = np.random.default_rng(3)
    x = _distribution("lognormal-heavy", 100_001, rng)
    h = LatencyHistogram.local()
    h.record_many(x)
    s = np.sort(x)
    for p in (0.1, 33.3, 50, 99, 99.9, 99.999):
        exact = s[max(1, math.ceil(p * len(s) / 100 - 1e-9)) - 1]
        assert exact <= h.percentile(p) <= exact * (1 + MAX_RELATIVE_ERROR)


def test_count_min_max_mean_are_exact_and_empty_histogram_answers_zero():
    h = LatencyHistogram.local()
    assert (h.count, h.min, h.max, h.percentile(99)) == (0, 0, 0, 0)
    assert math.isnan(h.mean)
    x = np.array([5, 1_234_567, 89, 42_000_000_000], dtype=np.int64)
    h.record_many(x)
    assert (h.count, h.min, h.max) == (4, 5, 42_000_000_000)
    assert h.mean == x.sum() / 4
    assert h.percentile(100) == h.max  # the slot's upper bound is capped by the exact max
    with pytest.raises(ValueError, match="101"):
        h.percentile(101)


def test_out_of_range_values_are_clamped_and_counted():
    h = LatencyHistogram.local()
    h.record_many(np.array([-5, -1, 100, HIGHEST_NS + 1, 2**62], dtype=np.int64))
    assert h.out_of_range == (2, 2)
    assert h.count == 5
    assert (h.min, h.max) == (0, HIGHEST_NS)
    assert h.percentile(100) >= HIGHEST_NS


@njit(cache=True)
def _record_loop(arr, n, step):
    v = 0
    for _ in range(n):
        v += step
        hist_record(arr, v)
    return v


def test_recording_from_an_njit_loop_updates_counts_and_extremes():
    h = LatencyHistogram.local()
    last = _record_loop(h.array, 10_000, 1_000)
    assert (h.count, h.min, h.max) == (10_000, 1_000, last)
    assert abs(h.percentile(50) - 5_000_000) <= 5_000_000 * MAX_RELATIVE_ERROR


def test_reset_empties_and_merge_adds_counts_and_extremes():
    a, b = LatencyHistogram.local(), LatencyHistogram.local()
    a.record_many(np.arange(1, 1001, dtype=np.int64))
    b.record_many(np.array([-3, 5_000_000], dtype=np.int64))
    a.merge(b)
    assert (a.count, a.min, a.max, a.out_of_range) == (1002, 0, 5_000_000, (1, 0))
    assert np.array_equal(a.counts - b.counts >= 0, np.ones(COUNTS_LEN, bool))
    a.reset()
    assert (a.count, a.max, a.out_of_range) == (0, 0, (0, 0))


def test_delta_of_two_snapshots_is_exactly_the_interval():
    h = LatencyHistogram.local()
    h.record_many(np.full(100, 1_000, dtype=np.int64))
    before = h.snapshot()
    h.record_many(np.full(50, 2_000_000, dtype=np.int64))
    interval = h.delta(before)
    assert interval.count == 50
    assert interval.percentile(1) >= 2_000_000 * (1 - MAX_RELATIVE_ERROR)
    assert interval.mean == 2_000_000
    assert before.count == 100


_CHILD = r"""
import json, sys
import numpy as np
from shm.histogram import LatencyHistogram, hist_record_many
h = LatencyHistogram.attach(sys.argv[1], "lat")
seen = {"count": h.count, "p50": h.percentile(50), "max": h.max}
hist_record_many(h.array, np.full(1000, 7_000_000, dtype=np.int64))  # the child writes next
h.close()
print(json.dumps(seen))
"""


def test_a_second_process_reads_what_the_first_wrote_and_vice_versa(shm_prefix):
    h = LatencyHistogram.create(shm_prefix, "lat")
    try:
        h.record_many(np.arange(1, 3001, dtype=np.int64))
        p50_before = h.percentile(50)
        out = subprocess.run([sys.executable, "-c", _CHILD, shm_prefix], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen == {"count": 3000, "p50": p50_before, "max": 3000}
        assert h.count == 4000  # the writer role passed to the child once the parent stopped
        assert h.max == 7_000_000
    finally:
        h.close()
        h.unlink()


def test_attaching_a_segment_with_another_layout_names_the_field(shm_prefix):
    h = LatencyHistogram.create(shm_prefix, "bad")
    try:
        h.array[1] = 99  # the version word
        with pytest.raises(HistogramLayoutError, match="version"):
            LatencyHistogram.attach(shm_prefix, "bad")
    finally:
        h.close()
        h.unlink()


# Lines printed by the Java HdrHistogram's outputPercentileDistribution (a published run),
# so the parser below is checked against the reference format, not only against our writer.
_JAVA_SAMPLE = """\
       Value     Percentile TotalCount 1/(1-Percentile)

       0.007 0.000000000000          1           1.00
       0.046 0.500000000000       2027           2.00
     104.063 0.999755859375       4053        4096.00
     104.063 1.000000000000       4053
#[Mean    =        0.231, StdDeviation   =        4.306]
#[Max     =      104.063, Total count    =         4053]
#[Buckets =           20, SubBuckets     =         2048]
"""
_ROW = re.compile(r"^ *(\d+\.\d+) (\d\.\d{12}) +(\d+)(?: +(\d+\.\d{2}))?$")
_FOOT = re.compile(r"^#\[(\w+) += +([\d.]+), (\w+(?: \w+)?) += +([\d.]+)\]$")


def _parse_hgrm(text: str):
    lines = text.splitlines()
    assert lines[0] == "%12s %14s %10s %14s" % ("Value", "Percentile", "TotalCount",
                                                 "1/(1-Percentile)")
    assert lines[1] == ""
    rows, foot = [], {}
    for line in lines[2:]:
        if line.startswith("#"):
            m = _FOOT.match(line)
            assert m, line
            foot[m.group(1)], foot[m.group(3)] = float(m.group(2)), float(m.group(4))
        else:
            m = _ROW.match(line)
            assert m, line
            rows.append((float(m.group(1)), float(m.group(2)), int(m.group(3)), m.group(4)))
    return rows, foot


def test_hgrm_text_follows_the_java_format_and_parses_back():
    rows, foot = _parse_hgrm(_JAVA_SAMPLE)  # the parser accepts the reference output
    assert rows[-1][1:3] == (1.0, 4053) and foot["Total count"] == 4053

    rng = np.random.default_rng(11)
    x = _distribution("lognormal-heavy", 50_000, rng)
    h = LatencyHistogram.local()
    h.record_many(x)
    text = {}
    for unit in ("ns", "us"):
        buf = io.StringIO()
        h.write_hgrm(buf, unit=unit)
        text[unit] = buf.getvalue()
    rows, foot = _parse_hgrm(text["ns"])
    assert rows[-1][1:] == (1.0, 50_000, None)  # last line: 100 %, no 1/(1-p) column
    assert all(r[3] is not None for r in rows[:-1])
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)
    for value_ns, level, total, _ in rows[1:-1]:
        # each row: a slot's highest value and the count at or below it, reaching the level
        slot = int(np.searchsorted(BUCKET_HIGH, value_ns))
        assert BUCKET_HIGH[slot] == value_ns
        assert total == int(h.counts[: slot + 1].sum()), (value_ns, level)
        assert total / 50_000 >= level - 1e-9
    assert foot["Total count"] == 50_000
    assert foot["Max"] == BUCKET_HIGH[np.flatnonzero(h.counts)[-1]]
    assert foot["Mean"] == pytest.approx(x.mean(), rel=STATED_ERROR)
    assert foot["StdDeviation"] == pytest.approx(x.std(), rel=0.05)
    rows_us, foot_us = _parse_hgrm(text["us"])  # the unit only rescales values
    assert [r[1:3] for r in rows_us] == [r[1:3] for r in rows]
    assert all(abs(a[0] - b[0] / 1e3) <= 0.0051 for a, b in zip(rows_us, rows))
    assert foot_us["StdDeviation"] == pytest.approx(foot["StdDeviation"] / 1e3, abs=0.005)
    assert (foot["Buckets"], foot["SubBuckets"]) == (29, 256)


def test_interval_log_reads_back_with_hdrhistogram_log_reader(tmp_path):
    from hdrh.histogram import HdrHistogram
    from hdrh.log import HistogramLogReader

    h = LatencyHistogram.local()
    path = tmp_path / "lat.hlog"
    with IntervalLog(path, h, comment="unit test", now_s=1_700_000_000.0) as log:
        h.record_many(np.full(300, 1_500, dtype=np.int64))
        log.tick(now_s=1_700_000_001.0)
        h.record_many(np.full(200, 9_000_000, dtype=np.int64))
        log.tick(now_s=1_700_000_002.0)
    text = path.read_text()
    assert "#[Histogram log format version 1.2]" in text
    assert "#[StartTime: 1700000000.000 (seconds since epoch)" in text
    data = [line for line in text.splitlines() if line[:1].isdigit()]
    assert [line.split(",")[:2] for line in data] == [["0.000", "1.000"], ["1.000", "1.000"]]

    reader = HistogramLogReader(str(path), HdrHistogram(1, HIGHEST_NS, 2))
    first, second = reader.get_next_interval_histogram(), reader.get_next_interval_histogram()
    assert reader.get_next_interval_histogram() is None
    reader.close()
    assert first.get_total_count() == 300 and second.get_total_count() == 200
    assert first.get_value_at_percentile(50) == h.percentile(10) == BUCKET_HIGH[
        int(np.searchsorted(BUCKET_HIGH, 1_500))]
    slot = int(np.searchsorted(BUCKET_HIGH, 9_000_000))
    assert second.get_value_at_percentile(50) == BUCKET_HIGH[slot]
    assert h.percentile(90) == 9_000_000  # ours: the same slot, capped by the exact max
