"""Latency model of the simulated venues, and the seeded random streams the simulator draws from.

Runs inside the backtest (one process) and inside the live pipeline's venue stage; the @njit
functions are on the hot path (called once per simulated event), the ``LatencyModel`` class is
cold (built once from config).

Why our own generator instead of numba's ``np.random``: numba keeps ONE global generator per
thread, so any other kernel that draws from it (a strategy, a test) would shift every later
simulated event. Each stream here is one uint64 word of an array owned by its user (a venue, the
latent price model, the latency model), so a venue produces the same events bit for bit whoever
else draws random numbers, and whether it is driven in one call or in many small wall-clock
steps. The generator is xorshift64* (Vigna 2016: passes BigCrush except the low bits, which we
drop), seeded through splitmix64 so neighbouring seeds give unrelated streams.

Latency of one venue, per channel (``CH_MD`` market data venue -> us, ``CH_ORDER`` order entry
us -> venue and its reports back): either constant + exponential jitter (the config's
``*_latency_us`` and ``*_jitter_us``), or a draw from a histogram of measured samples. A channel
is a FIFO (one TCP connection): a message never overtakes the previous one on the same channel,
which ``fifo_arrival`` enforces.
"""
from __future__ import annotations

import numpy as np
from numba import njit

CH_MD = 0
CH_ORDER = 1
N_CHANNELS = 2

# params[venue, channel, P_*]
P_CONST_NS = 0
P_JITTER_MEAN_NS = 1

_U53 = 1.0 / 9007199254740992.0  # 2**-53


# ------------------------------------------------------------------------------------------
# Random streams (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, inline="always", _nrt=False)
def splitmix64(x):
    """One splitmix64 output for state ``x`` (uint64); used only to seed streams."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, _nrt=False)
def rng_seed(streams, seed):
    """Seed every stream of ``streams`` (uint64 array) from one integer seed."""
    x = np.uint64(seed) * np.uint64(0x2545F4914F6CDD1D) + np.uint64(0x632BE59BD9B4E019)
    for i in range(streams.shape[0]):
        x = splitmix64(x + np.uint64(i))
        streams[i] = x if x != np.uint64(0) else np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always", _nrt=False)
def rng_next(streams, i):
    """Next 64-bit output of stream ``i`` (xorshift64*)."""
    x = streams[i]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    streams[i] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


@njit(cache=True, inline="always", _nrt=False)
def rng_uniform(streams, i):
    """Uniform in the open interval (0, 1): never 0, so log() is always finite."""
    return (float(rng_next(streams, i) >> np.uint64(11)) + 0.5) * _U53


@njit(cache=True, inline="always", _nrt=False)
def rng_exp(streams, i, mean):
    return -np.log(rng_uniform(streams, i)) * mean


@njit(cache=True, inline="always", _nrt=False)
def rng_normal(streams, i):
    """Standard normal (Box-Muller; the second value is dropped to keep the state one word)."""
    u1 = rng_uniform(streams, i)
    u2 = rng_uniform(streams, i)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)


@njit(cache=True, inline="always", _nrt=False)
def rng_below(streams, i, n):
    """Uniform integer in [0, n) for n >= 1 (the bias is below 2**-53 * n)."""
    return np.int64(rng_uniform(streams, i) * n)


# ------------------------------------------------------------------------------------------
# Latency draws (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def sample_latency_ns(params, hist, hist_n, streams, stream, venue, channel):
    """One latency in ns for ``venue`` / ``channel``: a histogram draw if the channel has
    samples, else constant + exponential jitter."""
    n = hist_n[venue, channel]
    if n > 0:
        return hist[venue, channel, rng_below(streams, stream, n)]
    lat = params[venue, channel, P_CONST_NS]
    mean = params[venue, channel, P_JITTER_MEAN_NS]
    if mean > 0.0:
        lat += rng_exp(streams, stream, mean)
    return np.int64(lat)


@njit(cache=True, inline="always", _nrt=False)
def fifo_arrival(last_arrival, slot, send_ns, latency_ns):
    """Arrival time on a FIFO channel: send + latency, but never before the previous message
    of the same channel (``last_arrival[slot]``, updated here)."""
    t = send_ns + latency_ns
    if t < last_arrival[slot]:
        t = last_arrival[slot]
    last_arrival[slot] = t
    return t


@njit(cache=True, _nrt=False)
def sample_many_ns(params, hist, hist_n, streams, stream, venue, channel, out):
    for k in range(out.shape[0]):
        out[k] = sample_latency_ns(params, hist, hist_n, streams, stream, venue, channel)


# ------------------------------------------------------------------------------------------
# Cold side
# ------------------------------------------------------------------------------------------
class LatencyModel:
    """Per-venue latency of market data and order entry, as arrays numba kernels take.

    ``arrays`` -> (params float64[n_venues+1, 2, 2], hist int64[n_venues+1, 2, H],
    hist_n int64[n_venues+1, 2]). Venue ids start at 1 (row 0 unused), in config order, the
    same numbering as ``shm.instruments.InstrumentTable.from_config``.
    """

    def __init__(self, n_venues: int, max_hist_samples: int = 1):
        if n_venues < 1:
            raise ValueError(f"LatencyModel needs at least one venue, got n_venues={n_venues}")
        self.n_venues = n_venues
        self.params = np.zeros((n_venues + 1, N_CHANNELS, 2), dtype=np.float64)
        self.hist = np.zeros((n_venues + 1, N_CHANNELS, max(1, max_hist_samples)), dtype=np.int64)
        self.hist_n = np.zeros((n_venues + 1, N_CHANNELS), dtype=np.int64)

    @classmethod
    def from_config(cls, cfg) -> "LatencyModel":
        model = cls(len(cfg.venues))
        for vid, v in enumerate(cfg.venues, start=1):
            model.set_constant_jitter(vid, CH_MD, v.md_latency_us * 1e3, v.md_jitter_us * 1e3)
            model.set_constant_jitter(vid, CH_ORDER, v.order_latency_us * 1e3,
                                      v.order_jitter_us * 1e3)
        return model

    def _check(self, venue: int, channel: int) -> None:
        if not 1 <= venue <= self.n_venues:
            raise ValueError(f"venue id {venue} out of range 1..{self.n_venues}")
        if channel not in (CH_MD, CH_ORDER):
            raise ValueError(f"channel {channel} is neither CH_MD (0) nor CH_ORDER (1)")

    def set_constant_jitter(self, venue: int, channel: int, const_ns: float,
                            jitter_mean_ns: float) -> None:
        self._check(venue, channel)
        if const_ns < 0 or jitter_mean_ns < 0:
            raise ValueError(f"venue {venue} channel {channel}: latency must be >= 0, got "
                             f"const={const_ns} ns, jitter mean={jitter_mean_ns} ns")
        self.params[venue, channel, P_CONST_NS] = const_ns
        self.params[venue, channel, P_JITTER_MEAN_NS] = jitter_mean_ns
        self.hist_n[venue, channel] = 0

    def set_histogram(self, venue: int, channel: int, samples_ns) -> None:
        """Draw this channel's latency from measured samples (ns), e.g. a dumped histogram
        expanded to its values; replaces constant + jitter for the channel."""
        self._check(venue, channel)
        s = np.asarray(samples_ns, dtype=np.int64).ravel()
        if s.size == 0 or (s < 0).any():
            raise ValueError(f"venue {venue} channel {channel}: latency samples must be a "
                             f"non-empty array of values >= 0 ns")
        if s.size > self.hist.shape[2]:
            grown = np.zeros(self.hist.shape[:2] + (s.size,), dtype=np.int64)
            grown[:, :, : self.hist.shape[2]] = self.hist
            self.hist = grown
        self.hist[venue, channel, : s.size] = s
        self.hist_n[venue, channel] = s.size

    @property
    def arrays(self):
        return self.params, self.hist, self.hist_n

    def sample(self, venue: int, channel: int, n: int, seed: int) -> np.ndarray:
        """``n`` draws (ns) for inspection and tests; cold."""
        self._check(venue, channel)
        streams = np.zeros(1, dtype=np.uint64)
        rng_seed(streams, seed)
        out = np.zeros(n, dtype=np.int64)
        sample_many_ns(self.params, self.hist, self.hist_n, streams, 0, venue, channel, out)
        return out
