"""Fit the simulated market's parameters (``market.flowparams.FlowParams``) to the stylized
facts of one real recording (``run.py sim calibrate``; docs/simulator.md has the method).

Cold path (operator's shell, tests). Method of simulated moments by coordinate search:

- ``targets(facts)``: the unit-free figures a simulated market and a recording can share
  (bps, quote currency, seconds, autocorrelations; never ticks or lots, which differ with the
  price level and the lot).
- ``loss(sim, real)``: a weighted sum over those figures, squared log ratios for positive
  figures and squared differences over a scale for signed ones.
- ``fit``: starts from a method-of-moments guess (``initial_guess``), then for each parameter
  in ``PARAMS`` (each with the statistic that drives it) tries it scaled by each factor of its
  grid, keeps the best if the loss falls, then tries the joint moves of ``JOINT`` alike, and
  repeats for ``rounds`` rounds; the grid shrinks every round. Every candidate is simulated with the same seeds (common random numbers), so a
  change in the loss is the parameter's doing, not the draw's.
- ``check(sim, real)``: every fact with its band and whether the simulator is inside it.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from market.flowparams import FlowParams

LN2 = math.log(2.0)

# (target name, how it is read from a facts dict)
def _get(d, *path):
    for p in path:
        if d is None:
            return None
        if isinstance(d, list):
            d = d[p]
        else:
            d = d.get(p)
    return d


def targets(f: dict) -> dict:
    """The comparable figures of one facts dict (``market.facts.measure``)."""
    mid = f.get("mid_first") or 0.0
    med = _get(f, "trade_size", "median")
    imp = [b.get("bps") for b in f.get("impact_1s", []) if b.get("bps") is not None]
    return {
        "spread_bps_p50": _get(f, "spread_bps", "p50"),
        "spread_bps_mean": _get(f, "spread_bps", "mean"),
        "depth_value_p50": _get(f, "depth_value", "p50"),
        "trade_value_median": med * mid if med is not None and mid else None,
        "trades_per_s": _get(f, "trade_size", "trades_per_s"),
        "vol_1s_bps": _get(f, "returns", "1s", "vol_bps"),
        "vol_10s_bps": _get(f, "returns", "10s", "vol_bps"),
        "vol_60s_bps": _get(f, "returns", "60s", "vol_bps"),
        "kurt_1s": _get(f, "returns", "1s", "excess_kurtosis"),
        "kurt_10s": _get(f, "returns", "10s", "excess_kurtosis"),
        "abs_ret_acf_1": _get(f, "abs_return_acf_1s", "1"),
        "abs_ret_acf_5": _get(f, "abs_return_acf_1s", "5"),
        "sign_acf_1": _get(f, "trade_sign_acf", "1"),
        "sign_acf_5": _get(f, "trade_sign_acf", "5"),
        "sign_acf_10": _get(f, "trade_sign_acf", "10"),
        "sign_acf_50": _get(f, "trade_sign_acf", "50"),
        "impact_1s_bps": float(np.mean(imp)) if imp else None,
        "best_life_median_s": _get(f, "best_level_lifetime", "both", "median_s"),
        "best_life_p90_s": _get(f, "best_level_lifetime", "both", "p90_s"),
        "markout_100ms_bps": _get(f, "markout", "100ms", "bps"),
        "markout_1s_bps": _get(f, "markout", "1s", "bps"),
        "markout_10s_bps": _get(f, "markout", "10s", "bps"),
    }


# name -> (kind, band, weight in the loss). "ratio": in band when sim / real is within
# [1/band, band] (loss: log ratio squared); "diff": when |sim - real| <= band (loss: (diff /
# band) squared); "sign+ratio": same sign and ratio within band.
BANDS = {
    "spread_bps_p50": ("ratio", 2.0, 2.0),
    "spread_bps_mean": ("ratio", 2.0, 1.0),
    "depth_value_p50": ("ratio", 2.0, 1.0),
    "trade_value_median": ("ratio", 2.0, 1.0),
    "trades_per_s": ("ratio", 2.0, 2.0),
    "vol_1s_bps": ("ratio", 1.5, 2.0),
    "vol_10s_bps": ("ratio", 1.5, 1.0),
    "vol_60s_bps": ("ratio", 1.5, 1.0),
    "kurt_1s": ("ratio", 3.0, 0.5),
    "kurt_10s": ("ratio", 3.0, 0.5),
    "abs_ret_acf_1": ("diff", 0.1, 0.5),
    "abs_ret_acf_5": ("diff", 0.1, 0.5),
    "sign_acf_1": ("diff", 0.15, 1.0),
    "sign_acf_5": ("diff", 0.1, 1.0),
    "sign_acf_10": ("diff", 0.1, 1.0),
    "sign_acf_50": ("diff", 0.1, 0.5),
    "impact_1s_bps": ("sign+ratio", 2.0, 1.0),
    "best_life_median_s": ("ratio", 2.0, 1.5),
    "best_life_p90_s": ("ratio", 2.0, 0.5),
    "markout_100ms_bps": ("sign+ratio", 2.0, 0.5),
    "markout_1s_bps": ("sign+ratio", 2.0, 1.5),
    "markout_10s_bps": ("sign+ratio", 2.0, 1.0),
}

# the parameters fitted, in search order, each with the statistic that drives it and the
# factors tried in the first round (then shrunk toward 1 each round)
PARAMS = (
    ("event_rate_per_s", "trades_per_s", (0.4, 0.7, 1.4, 2.5)),
    ("p_market", "best_life_median_s", (0.4, 0.7, 1.4, 2.5)),
    ("half_spread_bps", "spread_bps_p50", (0.4, 0.7, 1.4, 2.5)),
    ("depth_bps", "spread_bps_mean", (0.4, 0.7, 1.4, 2.5)),
    ("limit_notional", "depth_value_p50", (0.4, 0.7, 1.4, 2.5)),
    ("market_notional", "trade_value_median", (0.6, 0.8, 1.25, 1.6)),
    ("vol_bps", "vol_1s_bps", (0.5, 0.7, 1.4, 2.0)),
    ("jump_bps", "kurt_10s", (0.4, 0.7, 1.4, 2.5)),
    ("impact_bps", "markout_1s_bps", (0.4, 0.7, 1.4, 2.5)),
    ("p_value", "markout_10s_bps", (0.25, 0.5, 2.0, 4.0)),
    ("p_meta", "sign_acf_1", (0.4, 0.7, 1.4, 2.5)),
    ("hawkes_jump", "abs_ret_acf_1", (0.4, 0.7, 1.4, 2.5)),
)
# joint moves (a x f, b x f^power): the event rate up and the market-order share down by the
# same factor keeps trades per second and changes how busy the book is (best-level lifetime),
# a direction that one parameter at a time cannot take
JOINT = (
    (("event_rate_per_s", 1.0), ("p_market", -1.0), "best_life_median_s", (0.25, 0.5, 2.0, 4.0)),
)
PROBABILITIES = ("p_market", "p_informed", "p_meta", "p_value")


def _term(kind, band, sim, real):
    if sim is None or real is None:
        return None
    if kind == "diff":
        return (sim - real) / band
    if kind == "ratio":
        if sim <= 0 or real <= 0:
            return 3.0   # a missing positive figure (no trades, flat book) is far off
        return math.log(sim / real) / math.log(band)
    # sign+ratio
    if real == 0:
        return sim / band
    if sim == 0 or (sim > 0) != (real > 0):
        return 3.0
    return math.log(sim / real) / math.log(band)


def loss(sim: dict, real: dict) -> float:
    """Weighted squared distance of two ``targets`` dicts, in band units (1 = on the band)."""
    tot = 0.0
    for name, (kind, band, w) in BANDS.items():
        t = _term(kind, band, sim.get(name), real.get(name))
        if t is None:
            if real.get(name) is not None:
                tot += w * 9.0
            continue
        tot += w * t * t
    return tot


def check(sim: dict, real: dict) -> list[dict]:
    """Every fact: sim, real, band text, in band or not."""
    rows = []
    for name, (kind, band, _w) in BANDS.items():
        s, r = sim.get(name), real.get(name)
        t = _term(kind, band, s, r)
        ok = t is not None and abs(t) <= 1.0 + 1e-12
        text = {"ratio": f"x{band:g}", "diff": f"+-{band:g}",
                "sign+ratio": f"same sign, x{band:g}"}[kind]
        rows.append({"fact": name, "sim": s, "real": r, "band": text, "in_band": bool(ok)})
    return rows


def average(dicts: list[dict]) -> dict:
    """Mean of each figure over seeds (None where any seed has none)."""
    out = {}
    for k in dicts[0]:
        vals = [d.get(k) for d in dicts]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def initial_guess(real: dict, start: FlowParams, venue_instruments: int) -> FlowParams:
    """Method of moments from the recording's figures (each step the first-order relation of
    the model, refined by the search)."""
    p = start
    kw = {}
    if real.get("spread_bps_p50"):
        kw["half_spread_bps"] = 0.25 * real["spread_bps_p50"]
        kw["depth_bps"] = 0.5 * real["spread_bps_p50"]
    if real.get("depth_value_p50"):
        kw["limit_notional"] = real["depth_value_p50"]
    if real.get("trade_value_median"):
        kw["market_notional"] = real["trade_value_median"] / LN2   # exponential: median/ln 2
    if real.get("vol_1s_bps"):
        kw["vol_bps"] = 0.7 * real["vol_1s_bps"]
        kw["jump_bps"] = 3.0 * real["vol_1s_bps"]
    if real.get("trades_per_s"):
        # about a third of the trades are plain market orders, the rest arbitrageurs taking a
        # book that lags the latent price
        kw["event_rate_per_s"] = venue_instruments * real["trades_per_s"] / (3.0 * p.p_market)
    if real.get("markout_1s_bps"):
        kw["impact_bps"] = 0.5 * abs(real["markout_1s_bps"])
        kw["value_bps"] = 2.0 * abs(real["markout_1s_bps"])
    kw.setdefault("p_meta", 0.1)
    kw["p_meta"] = max(kw["p_meta"], 0.05)
    kw["p_value"] = max(p.p_value, 0.05)
    kw["hawkes_jump"] = max(p.hawkes_jump, 0.5)
    return p.replace(**kw)


def _clip(name: str, value: float) -> float:
    if name in PROBABILITIES:
        return min(0.95, max(1e-4, value))
    return max(1e-6, value)


@dataclasses.dataclass
class FitResult:
    params: FlowParams
    loss: float
    sim: dict            # the averaged targets of the fitted market
    evaluations: int
    history: list        # (parameter, value, loss) of every accepted step


def fit(evaluate, real: dict, start: FlowParams, rounds: int = 2, progress=None) -> FitResult:
    """Coordinate search from ``start``; ``evaluate(params) -> targets`` simulates (same
    seeds every time)."""
    cache = {}

    def score(p):
        key = tuple(dataclasses.astuple(p))
        if key not in cache:
            sim = evaluate(p)
            cache[key] = (loss(sim, real), sim)
        return cache[key]

    best = start
    best_loss, best_sim = score(best)
    history = [("start", None, best_loss)]
    if progress:
        progress(f"calibrate: start loss {best_loss:.2f}")
    for rnd in range(rounds):
        shrink = 1.0 / (1 + rnd)
        for name, _stat, factors in PARAMS:
            cur = getattr(best, name)
            for fct in factors:
                f = math.exp(math.log(fct) * shrink)
                try:
                    cand = best.replace(**{name: _clip(name, cur * f)})
                except ValueError:
                    continue
                c_loss, c_sim = score(cand)
                if c_loss < best_loss - 1e-9:
                    best, best_loss, best_sim = cand, c_loss, c_sim
            if getattr(best, name) != cur:
                history.append((name, getattr(best, name), best_loss))
            if progress:
                progress(f"calibrate: round {rnd + 1} {name} = {getattr(best, name):.6g}, "
                         f"loss {best_loss:.2f}")
        for (na, pa), (nb, pb), _stat, factors in JOINT:
            ca, cb = getattr(best, na), getattr(best, nb)
            for fct in factors:
                f = math.exp(math.log(fct) * shrink)
                try:
                    cand = best.replace(**{na: _clip(na, ca * f ** pa),
                                           nb: _clip(nb, cb * f ** pb)})
                except ValueError:
                    continue
                c_loss, c_sim = score(cand)
                if c_loss < best_loss - 1e-9:
                    best, best_loss, best_sim = cand, c_loss, c_sim
            if (getattr(best, na), getattr(best, nb)) != (ca, cb):
                history.append((f"{na}+{nb}", (getattr(best, na), getattr(best, nb)), best_loss))
            if progress:
                progress(f"calibrate: round {rnd + 1} {na} = {getattr(best, na):.6g} with "
                         f"{nb} = {getattr(best, nb):.6g}, loss {best_loss:.2f}")
    return FitResult(best, best_loss, best_sim, len(cache), history)
