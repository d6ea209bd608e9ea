"""Agent farms in config: ``[[signals]]`` agents and a strategy's ``signals`` / ``budget``. Cold.

Runs wherever the config is loaded (controller, CLI, stage processes). A *farm* is a
``[[strategies]]`` entry that runs as shards (``shards = N``, issue 13), subscribes to signal
agents (``signals = [...]``) and/or holds a risk budget (``budget = {...}``) that the farm
coordinator (pipeline/farm_coordinator.py) reallocates across its shards::

    [[signals]]
    name = "rv"                        # stage signal-rv, ring sig-rv
    kind = "realized_vol"              # realized_vol | order_flow_imbalance | correlation
    instruments = ["BTC-USD@simA", "ETH-USD@simA"]
    publish_ms = 100.0                 # a value per instrument (or the matrix) this often
    window = 100                       # returns in the window (realized_vol, correlation)
    sample_ms = 100.0                  # mid sampled this often (realized_vol, correlation)
    stale_ms = 0.0                     # older than this is missing to subscribers; 0 = 3 x publish_ms

    [[strategies]]
    name = "mm_farm"
    kind = "market_making"
    shards = 2
    instruments = ["BTC-USD@simA", "ETH-USD@simA"]
    signals = ["rv"]
    budget = { notional = 100000.0, loss = 5000.0, rebalance_s = 30.0 }

Declared here (not in pipeline/config.py) to keep the farm's part of the schema in one place;
config.py adds the sections and calls ``farm_problems`` from ``Config.validate``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from common.schema import did_you_mean, opt, req, unknown_instruments

NAME_RE = r"[A-Za-z][A-Za-z0-9_\-]{0,31}"
IDLE_CHOICES = ("busy-spin", "yield", "backoff", "blocking")
# the kinds a signal agent computes (stages/signal_agent.py; their SIG_* codes: shm/records.py)
SIGNAL_KINDS = ("realized_vol", "order_flow_imbalance", "correlation")
MAX_SIGNAL_INSTRUMENTS = 64    # a correlation agent publishes n (n - 1) / 2 records a refresh
MAX_SIGNAL_WINDOW = 100_000


@dataclass(frozen=True)
class SignalConfig:
    name: str = req("signal agent name, unique (stage signal-<name>, ring sig-<name>)",
                    pattern=NAME_RE)
    kind: str = req("what it computes: " + ", ".join(SIGNAL_KINDS), choices=SIGNAL_KINDS)
    instruments: tuple[str, ...] = req("instrument keys SYMBOL@VENUE it computes the signal for")
    publish_ms: float = opt(100.0, "a new value per instrument (correlation: the whole "
                            "matrix) every this many milliseconds", gt=0, le=60_000)
    window: int = opt(100, "realized_vol, correlation: log returns of the sampled mid in the "
                      "window", ge=2, le=MAX_SIGNAL_WINDOW)
    sample_ms: float = opt(100.0, "realized_vol, correlation: the mid is sampled this often "
                           "(one return per sample)", gt=0, le=60_000)
    stale_ms: float = opt(0.0, "a value older than this is MISSING to its subscribers (never "
                          "zero); 0 = three times publish_ms", ge=0, le=3_600_000)
    cpu: Optional[int] = opt(None, "CPU this agent's process is pinned to (None: any)", ge=0)
    idle: str = opt("backoff", "idle strategy of this agent's process", choices=IDLE_CHOICES)
    enabled: bool = opt(True, "false keeps the entry but does not start it")

    @property
    def max_age_ns(self) -> int:
        ms = self.stale_ms if self.stale_ms > 0 else 3.0 * self.publish_ms
        return int(ms * 1e6)

    def validate(self, broken):
        if broken("instruments") or broken("kind"):
            return
        n = len(self.instruments)
        if n == 0:
            yield "instruments", list(self.instruments), "must name at least one instrument"
        elif self.kind == "correlation" and n < 2:
            yield ("instruments", list(self.instruments), "a correlation agent needs at least "
                   "2 instruments")
        if n > MAX_SIGNAL_INSTRUMENTS:
            yield ("instruments", f"{n} instruments", f"at most {MAX_SIGNAL_INSTRUMENTS} per "
                   "agent (split the universe over several agents)")
        dups = sorted({k for k in self.instruments if self.instruments.count(k) > 1})
        if dups:
            yield "instruments", dups, "listed more than once"


@dataclass(frozen=True)
class BudgetConfig:
    notional: float = req("the farm's notional budget, quote currency, shared by its shards "
                          "(each shard's share becomes its inventory limit)", gt=0)
    loss: float = req("the farm's loss budget, quote currency: a shard that loses its share "
                      "gets no notional until the next reallocation gives it some back", gt=0)
    rebalance_s: float = opt(30.0, "the coordinator reallocates this often, seconds", ge=0.1,
                             le=86_400)
    lookback_s: float = opt(300.0, "performance window the reallocation scores shards on, "
                            "seconds", gt=0, le=7 * 86_400)
    min_share: float = opt(0.05, "each shard keeps at least this fraction of the notional "
                           "budget (a cold shard can still show what it earns)", ge=0, le=1)
    tilt: float = opt(0.5, "0 = always equal shares, 1 = shares entirely by risk-adjusted "
                      "performance", ge=0, le=1)
    param: str = opt("max_inventory_lots", "the strategy parameter (an integer, lots per "
                     "instrument) that carries a shard's notional share")

    def validate(self, broken):
        if not broken("min_share") and self.min_share > 0.5:
            yield ("min_share", self.min_share, "must leave room to reallocate (at most 0.5; "
                   "with N shards at most 1/N)")


def farm_problems(cfg, broken):
    """Cross checks of the farm keys (Config.validate). Yields problems as whole messages or
    (key, value, why)."""
    sigs = [(n, s) for n, s in enumerate(getattr(cfg, "signals", ()) or ()) if s is not None]
    names = [s.name for n, s in sigs if not broken(f"signals[{n}].name")]
    for dup in sorted({x for x in names if names.count(x) > 1}):
        yield f"signals: name {dup!r} appears more than once"
    strat_names = {s.name for s in cfg.strategies if s is not None}
    for dup in sorted(set(names) & strat_names):
        yield f"signals: name {dup!r} is also a strategy's name (stage names must differ)"
    keys = [i.key for i in cfg.instruments if i is not None]
    if not broken("instruments"):
        for n, s in sigs:
            if broken(f"signals[{n}].instruments"):
                continue
            yield from unknown_instruments(f"signals[{n}].instruments", s.instruments, keys)
    by_name = {s.name: s for n, s in sigs if not broken(f"signals[{n}].name")}
    sound_kind = {s.name for n, s in sigs if not broken(f"signals[{n}].kind")}
    for n, sc in enumerate(cfg.strategies):
        if sc is None:
            continue
        path = f"strategies[{n}]"
        if not broken(f"{path}.signals") and len(by_name) == len(sigs):
            kinds: dict[str, str] = {}
            for name in dict.fromkeys(sc.signals):
                if name not in by_name:
                    yield (f"{path}.signals: {name!r} is not a [[signals]] agent (agents: "
                           f"{', '.join(by_name) or 'none'}){did_you_mean(name, by_name)}")
                    continue
                agent = by_name[name]
                if not agent.enabled and sc.enabled:
                    yield (f"{path}.signals: {name!r} has enabled = false; a running strategy "
                           "cannot subscribe to an agent that does not run")
                if not broken(f"{path}.instruments") and not \
                        set(agent.instruments) & set(sc.instruments or ()):
                    yield (f"{path}.signals: {name!r} computes for none of this strategy's "
                           f"instruments ({', '.join(agent.instruments)}); list them in the "
                           "agent's instruments")
                if name not in sound_kind:
                    continue
                if agent.kind in kinds:
                    yield (f"{path}.signals: {kinds[agent.kind]!r} and {name!r} are both "
                           f"{agent.kind}: subscribe to one agent per kind")
                kinds[agent.kind] = name
            dups = sorted({x for x in sc.signals if sc.signals.count(x) > 1})
            if dups:
                yield f"{path}.signals", dups, "listed more than once"
        b = sc.budget
        if b is None or broken(f"{path}.budget") or broken(f"{path}.shards"):
            continue
        if b.min_share * sc.shards > 1.0:
            yield (f"{path}.budget.min_share", b.min_share, f"{sc.shards} shards x "
                   f"{b.min_share} is more than the whole budget (at most {1 / sc.shards:.4g})")
        if not broken(f"{path}.kind") and not broken(f"{path}.budget.param"):
            yield from _budget_param(sc, path)


def _budget_param(sc, path):
    import dataclasses

    from strategies.registry import get_strategy_class

    try:
        cls = get_strategy_class(sc.kind)
    except (KeyError, LookupError, ImportError):
        return   # an unknown kind is reported by the strategy build
    fields = {f.name: f for f in dataclasses.fields(cls.Params)}
    f = fields.get(sc.budget.param)
    if f is None:
        yield (f"{path}.budget.param", sc.budget.param, f"is not a parameter of {sc.kind} "
               f"(known: {', '.join(sorted(fields))}){did_you_mean(sc.budget.param, fields)}")
    elif f.type not in (int, "int"):
        yield (f"{path}.budget.param", sc.budget.param, f"{sc.kind}.{sc.budget.param} is not "
               "an integer parameter (lots per instrument)")
