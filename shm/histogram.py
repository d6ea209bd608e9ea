"""HDR-style latency histogram: one writer records from @njit code, any process reads.

Who runs this: every stage records its latencies (hot path: ``hist_record`` inside its @njit
loop); the controller, ``run.py latency`` and benchmarks read, snapshot and export (cold path).
Backtests use the same class without shared memory (``LatencyHistogram.local()``).

Layout. The buckets are exactly HdrHistogram's for lowest=1, highest=60 s in ns, 2 significant
digits: 29 power-of-two buckets of 256 sub-buckets (the lower half of each bucket after the
first overlaps the previous one, so the counts array holds (29 + 1) * 128 = 3840 int64 words).
Values below 256 ns are exact; above, a value shares its slot with at most 1/128 of itself, so
any value read back is within 0.78 % of what was recorded (the 1 % the issue asks for). Using
HdrHistogram's own index scheme, rather than our own log-linear one, makes export exact: the
counts are copied slot for slot into an ``hdrh.HdrHistogram``, no re-bucketing, and the unit
tests check our index against hdrh's for every bucket boundary.

Memory: one int64 array = 16 header words (one 128-byte block) + 3840 counts, in a POSIX shm
segment ``/hftfarm.<instance>.hist.<name>`` or in a plain numpy array. Single writer: plain
(non-atomic) increments are enough because no one else writes; x86-64 aligned 8-byte stores
never tear, so readers see each word either before or after an update. A reader's snapshot can
be a few records behind between words (counts vs. total), so readers derive the count from the
counts they copied, never from the header total.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros

from shm.segment import Segment, SegmentError

LOWEST_NS = 1
HIGHEST_NS = 60_000_000_000  # 60 s: anything slower is an outage, not a latency
SIGNIFICANT_DIGITS = 2
SUB_BUCKET_HALF_MAG = 7  # log2(128): HdrHistogram's sub_bucket_half_count_magnitude for 2 digits
SUB_BUCKET_HALF = 1 << SUB_BUCKET_HALF_MAG
SUB_BUCKET_MASK = (2 * SUB_BUCKET_HALF) - 1
BUCKET_COUNT = 29  # powers of two needed so that 256 << 28 > HIGHEST_NS
COUNTS_LEN = (BUCKET_COUNT + 1) * SUB_BUCKET_HALF
MAX_RELATIVE_ERROR = 1.0 / SUB_BUCKET_HALF  # 0.78 %

# Header words (int64). Min/max/sum are exact (the raw clamped values), not bucket-rounded.
H_MAGIC, H_VERSION, H_LOWEST, H_HIGHEST, H_DIGITS, H_COUNTS_LEN = 0, 1, 2, 3, 4, 5
H_TOTAL, H_MIN, H_MAX, H_SUM, H_BELOW, H_ABOVE = 6, 7, 8, 9, 10, 11
HEADER_WORDS = 16
TOTAL_WORDS = HEADER_WORDS + COUNTS_LEN
SEGMENT_BYTES = TOTAL_WORDS * 8
MAGIC = 0x4846_4849_5354_4731  # "HFHISTG1"
VERSION = 1
EMPTY_MIN = np.iinfo(np.int64).max
SEGMENT_KIND = "hist"


@njit(cache=True, nogil=True, inline="always")
def _index_of(v):
    # HdrHistogram's countsArrayIndex for unit_magnitude 0: the power-of-two bucket is found
    # from the leading zeros of (v | mask), the sub-bucket by shifting v down into [128, 256).
    bucket = 64 - leading_zeros(v | SUB_BUCKET_MASK) - (SUB_BUCKET_HALF_MAG + 1)
    sub = v >> bucket
    return ((bucket + 1) << SUB_BUCKET_HALF_MAG) + sub - SUB_BUCKET_HALF


@njit(cache=True, nogil=True)
def hist_record(h, value_ns):
    """Record one value (ns) into histogram array ``h``. Hot path: no allocation, no raising.

    Values below 0 are clamped to 0 and counted in ``H_BELOW``; above 60 s clamped to 60 s and
    counted in ``H_ABOVE`` (a clock step or an outage, worth seeing, never a crash).
    """
    v = np.int64(value_ns)
    if v < 0:
        v = np.int64(0)
        h[H_BELOW] += 1
    elif v > HIGHEST_NS:
        v = np.int64(HIGHEST_NS)
        h[H_ABOVE] += 1
    h[HEADER_WORDS + _index_of(v)] += 1
    h[H_TOTAL] += 1
    h[H_SUM] += v
    if v < h[H_MIN]:
        h[H_MIN] = v
    if v > h[H_MAX]:
        h[H_MAX] = v


@njit(cache=True, nogil=True)
def hist_record_many(h, values_ns):
    """Record every value of an int64 array (batch form, e.g. one poll's worth of latencies)."""
    for i in range(values_ns.shape[0]):
        hist_record(h, values_ns[i])


def _bucket_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest value that map to each counts slot (HdrHistogram's equivalents)."""
    idx = np.arange(COUNTS_LEN, dtype=np.int64)
    bucket = (idx >> SUB_BUCKET_HALF_MAG) - 1
    sub = (idx & (SUB_BUCKET_HALF - 1)) + SUB_BUCKET_HALF
    first = bucket < 0  # bucket 0 also owns sub-buckets 0..127 (single-unit resolution)
    sub[first] -= SUB_BUCKET_HALF
    bucket[first] = 0
    low = sub << bucket
    return low, low + (np.int64(1) << bucket) - 1


BUCKET_LOW, BUCKET_HIGH = _bucket_bounds()


def _init_header(arr: np.ndarray) -> None:
    arr[:] = 0
    arr[H_MAGIC], arr[H_VERSION] = MAGIC, VERSION
    arr[H_LOWEST], arr[H_HIGHEST], arr[H_DIGITS] = LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS
    arr[H_COUNTS_LEN] = COUNTS_LEN
    arr[H_MIN] = EMPTY_MIN


class HistogramLayoutError(Exception):
    """An attached segment is not a histogram of this layout (names the field that differs)."""


class LatencyHistogram:
    """Latency histogram over an int64 array; pass ``.array`` to ``hist_record`` in @njit code.

    ``create`` / ``attach`` put it in shared memory (one writer, many readers); ``local()`` keeps
    it in process memory. Readers query a consistent copy (``snapshot()``) or the live array.
    """

    def __init__(self, array: np.ndarray, segment: Segment | None = None, label: str = "local"):
        self.array = array
        self.counts = array[HEADER_WORDS:]
        self._segment = segment
        self.label = label

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def local(cls) -> "LatencyHistogram":
        arr = np.empty(TOTAL_WORDS, dtype=np.int64)
        _init_header(arr)
        return cls(arr)

    @classmethod
    def create(cls, instance: str, name: str) -> "LatencyHistogram":
        seg = Segment.create(instance, f"hist.{name}", SEGMENT_BYTES, kind=SEGMENT_KIND)
        arr = seg.data[:SEGMENT_BYTES].view(np.int64)
        _init_header(arr)
        seg.mark_ready()
        return cls(arr, seg, f"{instance}/{name}")

    @classmethod
    def attach(cls, instance: str, name: str, timeout_s: float = 0.0) -> "LatencyHistogram":
        seg = Segment.attach(instance, f"hist.{name}", timeout_s=timeout_s)
        try:
            if seg.kind != SEGMENT_KIND or len(seg.data) < SEGMENT_BYTES:
                raise HistogramLayoutError(
                    f"histogram {instance}/{name}: segment {seg.shm_name} is a {seg.kind!r} "
                    f"of {len(seg.data)} bytes, not a {SEGMENT_KIND!r} of {SEGMENT_BYTES}")
            arr = seg.data[:SEGMENT_BYTES].view(np.int64)
            expected = {H_MAGIC: ("magic", MAGIC), H_VERSION: ("version", VERSION),
                        H_LOWEST: ("lowest_ns", LOWEST_NS), H_HIGHEST: ("highest_ns", HIGHEST_NS),
                        H_DIGITS: ("significant_digits", SIGNIFICANT_DIGITS),
                        H_COUNTS_LEN: ("counts_len", COUNTS_LEN)}
            for word, (field, want) in expected.items():
                if int(arr[word]) != want:
                    raise HistogramLayoutError(
                        f"histogram {instance}/{name}: {field} is {int(arr[word]):#x} in the "
                        f"segment, this build expects {want:#x}")
        except BaseException:
            arr = None
            seg.close()
            raise
        return cls(arr, seg, f"{instance}/{name}")

    def close(self) -> None:
        """Drop this process's mapping (the segment stays for other processes)."""
        if self._segment is not None:
            self.array = self.counts = None  # release the exported buffer before unmapping
            self._segment.close()

    def unlink(self) -> None:
        """Remove the segment name (its creator does this at shutdown)."""
        if self._segment is not None:
            self._segment.unlink()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writer-side operations ---------------------------------------------------------
    def record(self, value_ns: int, count: int = 1) -> None:
        """Record from Python (tests, cold paths). The hot path calls ``hist_record`` directly."""
        for _ in range(count):
            hist_record(self.array, value_ns)

    def record_many(self, values_ns) -> None:
        hist_record_many(self.array, np.ascontiguousarray(values_ns, dtype=np.int64))

    def reset(self) -> None:
        """Zero everything. Only the writer (or anyone while the writer is stopped) may do this;
        readers that want intervals take ``snapshot()``s and ``delta`` them instead."""
        _init_header(self.array)

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        """Add ``other``'s records into this one (same ownership rule as ``reset``)."""
        snap = other.snapshot()
        a, b = self.array, snap.array
        a[HEADER_WORDS:] += b[HEADER_WORDS:]
        for word in (H_TOTAL, H_SUM, H_BELOW, H_ABOVE):
            a[word] += b[word]
        a[H_MIN] = min(a[H_MIN], b[H_MIN])
        a[H_MAX] = max(a[H_MAX], b[H_MAX])
        return self

    # -- reader-side queries ------------------------------------------------------------
    def snapshot(self) -> "LatencyHistogram":
        """A private copy. Its total is re-derived from the copied counts (see module doc)."""
        arr = self.array.copy()
        arr[H_TOTAL] = int(arr[HEADER_WORDS:].sum())
        return LatencyHistogram(arr, None, f"{self.label} (snapshot)")

    def delta(self, older: "LatencyHistogram") -> "LatencyHistogram":
        """Records added since the snapshot ``older`` (an interval, without resetting the writer).

        Counts, sum and out-of-range counts are exact; min/max become bucket bounds, because
        the exact extremes of an interval were never stored.
        """
        now = self.snapshot().array
        arr = now - older.array
        for word in (H_MAGIC, H_VERSION, H_LOWEST, H_HIGHEST, H_DIGITS, H_COUNTS_LEN):
            arr[word] = now[word]
        nz = np.flatnonzero(arr[HEADER_WORDS:])
        arr[H_MIN] = BUCKET_LOW[nz[0]] if nz.size else EMPTY_MIN
        arr[H_MAX] = BUCKET_HIGH[nz[-1]] if nz.size else 0
        return LatencyHistogram(arr, None, f"{self.label} (interval)")

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def min(self) -> int:
        """Smallest value recorded (exact, after clamping); 0 when empty."""
        v = int(self.array[H_MIN])
        return 0 if v == EMPTY_MIN else v

    @property
    def max(self) -> int:
        return int(self.array[H_MAX])

    @property
    def mean(self) -> float:
        """Exact mean of the (clamped) values; nan when empty."""
        n = int(self.array[H_TOTAL])
        return float(self.array[H_SUM]) / n if n else math.nan

    @property
    def out_of_range(self) -> tuple[int, int]:
        """(values below 0 clamped to 0, values above 60 s clamped to 60 s)."""
        return int(self.array[H_BELOW]), int(self.array[H_ABOVE])

    def percentiles(self, ps) -> dict[float, int]:
        """{p: value_ns}: the p-th percentile is the smallest recorded value with at least
        ceil(p/100 * count) records at or below it (numpy's ``inverted_cdf``), reported as the
        highest value of its slot, as HdrHistogram does (an upper bound, within 0.78 %), but
        never above the exact maximum (so p99.9 <= max in every report)."""
        counts = np.array(self.counts)  # one copy so every percentile sees the same data
        top = int(self.array[H_MAX])
        cum = np.cumsum(counts)
        total = int(cum[-1])
        out = {}
        for p in ps:
            if not 0.0 <= float(p) <= 100.0:
                raise ValueError(f"percentile {p!r} is outside 0..100")
            if total == 0:
                out[p] = 0
                continue
            rank = max(1, math.ceil(Fraction(str(p)) * total / 100))  # exact, no float ties
            slot = int(np.searchsorted(cum, rank, side="left"))
            out[p] = min(int(BUCKET_HIGH[slot]), top)
        return out

    def percentile(self, p: float) -> int:
        return self.percentiles([p])[p]

    def summary(self) -> dict:
        pct = self.percentiles([50, 90, 99, 99.9, 99.99])
        return {"count": self.count, "min_ns": self.min, "mean_ns": self.mean,
                "p50_ns": pct[50], "p90_ns": pct[90], "p99_ns": pct[99], "p999_ns": pct[99.9],
                "p9999_ns": pct[99.99], "max_ns": self.max,
                "below_range": self.out_of_range[0], "above_range": self.out_of_range[1]}

    def __repr__(self) -> str:
        return f"<LatencyHistogram {self.label} count={self.count}>"

    # -- export to HdrHistogram's formats -----------------------------------------------
    def to_hdrh(self):
        """An ``hdrh.HdrHistogram`` with the same counts, slot for slot (identical layout)."""
        from hdrh.histogram import HdrHistogram

        h = HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
        if h.counts_len != COUNTS_LEN:  # only if a future hdrh changed its bucketing
            raise HistogramLayoutError(
                f"hdrh lays out {h.counts_len} counts for 1..{HIGHEST_NS} at "
                f"{SIGNIFICANT_DIGITS} digits, this module {COUNTS_LEN}")
        counts = np.array(self.counts)
        for slot in np.flatnonzero(counts):
            h.record_value(int(BUCKET_LOW[slot]), int(counts[slot]))
        if h.total_count:  # exact extremes instead of the slot bounds record_value saw
            h.min_value, h.max_value = self.min, self.max
        return h

    def write_hgrm(self, out, unit: str = "us", ticks_per_half_distance: int = 5) -> None:
        """Write the percentile distribution text (.hgrm) that HdrHistogram's
        ``outputPercentileDistribution`` prints and its plotters read.

        Rows come from hdrh's percentile iterator; the lines are formatted here because hdrh
        0.10's own writer departs from the Java reference in the footer ("TotalCount" printed
        as a float, standard deviation not scaled to the output unit).
        """
        ratio = _UNITS[unit]
        h = self.to_hdrh()
        digits = SIGNIFICANT_DIGITS
        lines = ["%12s %14s %10s %14s\n\n" % ("Value", "Percentile", "TotalCount",
                                               "1/(1-Percentile)")]
        if h.total_count:
            for it in h.get_percentile_iterator(ticks_per_half_distance):
                value = it.value_iterated_to / ratio
                level = it.percentile_level_iterated_to
                if level != 100.0:
                    lines.append("%12.*f %2.12f %10d %14.2f\n" % (
                        digits, value, level / 100.0, it.total_count_to_this_value,
                        1.0 / (1.0 - level / 100.0)))
                else:
                    lines.append("%12.*f %2.12f %10d\n" % (
                        digits, value, level / 100.0, it.total_count_to_this_value))
        lines.append("#[Mean    = %12.*f, StdDeviation   = %12.*f]\n" % (
            digits, h.get_mean_value() / ratio, digits, h.get_stddev() / ratio))
        lines.append("#[Max     = %12.*f, Total count    = %12d]\n" % (
            digits, h.get_max_value() / ratio, h.total_count))
        lines.append("#[Buckets = %12d, SubBuckets     = %12d]\n" % (
            h.bucket_count, h.sub_bucket_count))
        _write_text(out, "".join(lines))


_UNITS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}


def _write_text(out, text: str) -> None:
    if hasattr(out, "write"):
        out.write(text)
    else:
        with open(out, "w", encoding="ascii") as f:
            f.write(text)


class IntervalLog:
    """HdrHistogram's interval log (format 1.2) of a live histogram: one line per ``tick()``.

    Run by a reader (the controller, a benchmark): each tick snapshots the shared histogram
    and logs what was added since the previous tick, so the writer is never reset or paused.
    Lines follow the Java ``HistogramLogWriter``: ``start,length,max,base64(compressed
    histogram)``, start relative to ``#[StartTime]`` and ``#[BaseTime]``, max in ms.
    Readable by HistogramLogProcessor / HistogramLogAnalyzer and by hdrh's HistogramLogReader.
    """

    def __init__(self, out, source: LatencyHistogram, comment: str | None = None,
                 now_s: float | None = None):
        import time
        from datetime import datetime, timezone

        from hdrh.log import HistogramLogWriter

        self._own = not hasattr(out, "write")
        self.path = None if not self._own else str(out)
        self._file = open(out, "w", encoding="ascii") if self._own else out
        self._source = source
        self._start_s = time.time() if now_s is None else now_s
        self._prev_s = self._start_s
        self._prev = source.snapshot()
        writer = HistogramLogWriter(self._file)
        if comment:
            writer.output_comment(comment)
        writer.output_log_format_version()
        stamp = datetime.fromtimestamp(self._start_s, tz=timezone.utc).strftime(
            "%a %b %d %H:%M:%S UTC %Y")
        self._file.write("#[StartTime: %.3f (seconds since epoch), %s]\n" % (self._start_s, stamp))
        writer.output_base_time(self._start_s * 1000.0)
        writer.output_legend()

    def tick(self, now_s: float | None = None) -> LatencyHistogram:
        """Log the interval since the last tick; returns that interval's histogram."""
        import time

        now_s = time.time() if now_s is None else now_s
        snap = self._source.snapshot()
        interval = snap.delta(self._prev)
        h = interval.to_hdrh()
        h.set_start_time_stamp(int(self._prev_s * 1000))
        h.set_end_time_stamp(int(now_s * 1000))
        self._file.write("%.3f,%.3f,%.3f,%s\n" % (
            self._prev_s - self._start_s, now_s - self._prev_s,
            h.get_max_value() / 1e6, h.encode().decode("ascii")))
        self._file.flush()
        self._prev, self._prev_s = snap, now_s
        return interval

    def close(self) -> None:
        if self._own:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = [
    "LatencyHistogram", "HistogramLayoutError", "SegmentError", "IntervalLog", "hist_record", "hist_record_many",
    "HIGHEST_NS", "LOWEST_NS", "SIGNIFICANT_DIGITS", "COUNTS_LEN", "MAX_RELATIVE_ERROR",
    "BUCKET_LOW", "BUCKET_HIGH", "SEGMENT_BYTES",
]
