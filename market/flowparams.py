"""The fitted parameters of the simulated market (``FlowParams``) and the file that holds the
defaults, ``market/calibrated.json`` (written by ``run.py sim calibrate --write``; the method is
in docs/simulator.md). Cold path, and free of numba so that the config schema can read the
defaults (``backtest.event_rate_per_s``, ``instruments[].volatility_bps``) cheaply.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CALIBRATED_PATH = Path(__file__).with_name("calibrated.json")


@dataclass(frozen=True)
class FlowParams:
    """The fitted parameters of the market model (``run.py sim calibrate``; docs/simulator.md
    says which statistic drives which). Defaults: ``FlowParams.default()``, read from
    ``market/calibrated.json``."""
    event_rate_per_s: float     # background events per second per venue (backtests)
    vol_bps: float              # latent volatility per second, bps (instruments without one)
    jump_bps: float             # standard deviation of a latent jump, bps
    half_spread_bps: float      # background limit orders: latent -/+ (half spread + Exp(depth))
    depth_bps: float
    limit_notional: float       # mean size of a background limit order, quote units
    market_notional: float      # mean size of a background market order, quote units
    p_market: float             # share of plain events that are market orders
    p_informed: float           # arbitrageurs: chance an event takes a book lagging the latent
    informed_bps: float         #   price by more than this
    impact_bps: float           # informed flow: latent move per market order of the mean size
    p_meta: float               # metaorders: chance a plain market order starts one
    meta_alpha: float           #   Pareto tail exponent of its length in child orders
    hawkes_jump: float          # Hawkes: H_v jump per market order
    hawkes_half_life_s: float   #   and its decay
    p_value: float              # value agents: chance an event trades against |I| > value_bps
    value_bps: float

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"flow parameter {f.name} = {v!r}: must be a finite number "
                                 f">= 0")
        if self.event_rate_per_s <= 0 or self.half_spread_bps + self.depth_bps <= 0:
            raise ValueError("flow parameters: event_rate_per_s and half_spread_bps + "
                             "depth_bps must be > 0")
        for name in ("p_market", "p_informed", "p_meta", "p_value"):
            if getattr(self, name) > 1:
                raise ValueError(f"flow parameter {name} = {getattr(self, name)}: a "
                                 f"probability must be <= 1")
        if self.meta_alpha <= 0 or self.hawkes_half_life_s <= 0:
            raise ValueError("flow parameters: meta_alpha and hawkes_half_life_s must be > 0")

    def replace(self, **kw) -> "FlowParams":
        d = asdict(self)
        d.update(kw)
        return FlowParams(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "flow parameters") -> "FlowParams":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            raise ValueError(f"{source}: unknown {unknown} / missing {missing} flow parameters")
        return cls(**{k: float(v) for k, v in d.items()})

    @classmethod
    def load(cls, path=CALIBRATED_PATH) -> "FlowParams":
        """The ``params`` of a file written by ``run.py sim calibrate --write``."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            params = doc["params"]
        except FileNotFoundError:
            raise ValueError(f"{path}: flow parameter file not found (run.py sim calibrate "
                             f"--write {path} makes it)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a flow parameter file ({exc})") from None
        return cls.from_dict(params, str(path))

    @classmethod
    def default(cls) -> "FlowParams":
        global _DEFAULT
        if _DEFAULT is None:
            _DEFAULT = cls.load()
        return _DEFAULT


_DEFAULT = None
