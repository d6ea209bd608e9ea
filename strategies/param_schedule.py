"""Parameter schedules of a backtest: at given simulated times, new parameters for a strategy,
applied exactly as ``run.py set`` applies them live. Cold path (the backtest driver and CLI).

A change is validated as the config is (``Strategy.updated_params``: unknown keys, types,
ranges and the strategy's own cross checks, every problem at once, each naming its key), on
top of the strategy's parameters as the earlier changes left them. At its time the backtest
packs it into the running state (``strategies.host.apply_params``: ``kernel_params`` into
the state's ``p`` in place, ``hctl[H_PARAMS_PENDING] = 1``), so the strategy's ``on_params``
hook runs before its next batch, at that simulated instant.

The file (``run.py backtest --params-schedule FILE``) is TOML, or JSON with the same
structure when its name ends in ``.json``::

    [[change]]
    at_s = 60                       # simulated seconds after the start of the run
    strategy = "mm_btc"             # the instance; may be left out when one strategy runs
    params = { gamma = 0.5, order_qty_lots = 5 }

    [[change]]
    at_s = 120
    strategy = "mm_btc"
    params = { gamma = 0.1 }

In code: ``run_backtest(cfg, ..., schedule=[(60, {"gamma": 0.5})])`` (one strategy), or
``(60, "mm_btc", {"gamma": 0.5})`` / ``{"at_s": 60, "strategy": "mm_btc", "params": {...}}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.schema import ConfigError, load_section, opt, req

EXAMPLE = """[[change]]
at_s = 60                 # simulated seconds after the start
strategy = "mm_btc"       # may be left out when one strategy runs
params = { gamma = 0.5, order_qty_lots = 5 }"""


@dataclass(frozen=True)
class ParamChange:
    at_s: float = req("simulated seconds after the start of the run", ge=0)
    params: dict[str, Any] = req("the parameters it changes, as in [strategies].params")
    strategy: str = opt("", "the strategy instance it changes (may be left out when one "
                        "strategy runs)")


@dataclass(frozen=True)
class ParamSchedule:
    change: tuple[ParamChange, ...] = opt((), "the changes, in any order")
    # where it came from (set by the loader; not a key of the file)
    source: str = field(default="schedule", compare=False, metadata={"internal": True})


@dataclass(frozen=True)
class ScheduledSet:
    """One validated change: at ``t_ns`` after the start, strategy ``index`` of the run gets
    ``params`` (a full, validated Params instance)."""
    t_ns: int
    index: int
    name: str
    overrides: dict
    params: object


def load_schedule(path) -> ParamSchedule:
    """Read a schedule file (module docstring); ConfigError naming the file and the key."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot be read: {exc.strerror or exc}"], source) from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError([f"not JSON: {exc}"], source) from None
        if isinstance(data, list):
            data = {"change": data}
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not TOML: {exc}; a schedule looks like:\n{EXAMPLE}"],
                              source) from None
    if not isinstance(data, dict):
        raise ConfigError([f"must be a table with [[change]] entries, like:\n{EXAMPLE}"], source)
    return replace(load_section(ParamSchedule, data, "", source), source=source)


def as_schedule(items) -> ParamSchedule:
    """The API forms (module docstring) as a ParamSchedule (ConfigError naming the entry)."""
    if isinstance(items, ParamSchedule):
        return items
    entries = []
    problems = []
    for n, item in enumerate(items or ()):
        if isinstance(item, ParamChange):
            entries.append({"at_s": item.at_s, "strategy": item.strategy,
                            "params": item.params})
        elif isinstance(item, dict):
            entries.append(dict(item))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            entries.append({"at_s": item[0], "params": item[1]})
        elif isinstance(item, (tuple, list)) and len(item) == 3:
            entries.append({"at_s": item[0], "strategy": item[1], "params": item[2]})
        else:
            problems.append(f"change[{n}] = {item!r}: must be (at_s, params), "
                            "(at_s, strategy, params) or a table")
    if problems:
        raise ConfigError(problems, "schedule")
    return load_section(ParamSchedule, {"change": entries}, "", "schedule")


def resolve(schedule: ParamSchedule, strategies, states, duration_s: float) -> list[ScheduledSet]:
    """Validate ``schedule`` against the run's strategies (``strategies``: name -> Strategy,
    in run order; ``states`` their StrategyState) and a run of ``duration_s`` simulated
    seconds: every change in time order (ties in file order), on top of the earlier ones of
    the same strategy. Returns the sets in time order; ConfigError with every problem."""
    names = list(strategies)
    problems: list[str] = []
    order = sorted(range(len(schedule.change)), key=lambda n: schedule.change[n].at_s)
    current = {name: s.params for name, s in strategies.items()}
    out: list[ScheduledSet] = []
    for n in order:
        ch = schedule.change[n]
        where = f"change[{n}]"
        name = ch.strategy
        if not name:
            if len(names) != 1:
                problems.append(f"{where}.strategy: missing (required when {len(names)} "
                                f"strategies run: {', '.join(names)})")
                continue
            name = names[0]
        elif name not in strategies:
            problems.append(f"{where}.strategy = {name!r}: not a strategy of this run (it "
                            f"runs {', '.join(names)})")
            continue
        if ch.at_s >= duration_s:
            problems.append(f"{where}.at_s = {ch.at_s!r}: must be < the run's length "
                            f"({duration_s:g} simulated seconds)")
        if not ch.params:
            problems.append(f"{where}.params: empty (name at least one parameter)")
            continue
        strat = strategies[name]
        saved = strat.params
        strat.params = current[name]   # validated on top of the earlier changes
        try:
            params = strat.updated_params(ch.params, f"{where}.params")
            packed = strat.kernel_params(params)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        except ValueError as exc:
            problems.append(f"{where}.params: {exc}")
            continue
        finally:
            strat.params = saved
        if packed.dtype != states[name].p.dtype:
            problems.append(f"{where}.params: pack into another layout than the running "
                            f"parameters ({strat.kind}.derive() must return the same keys "
                            "and types for every value)")
            continue
        current[name] = params
        out.append(ScheduledSet(int(round(ch.at_s * 1e9)), names.index(name), name,
                                dict(ch.params), params))
    if problems:
        raise ConfigError(problems, schedule.source)
    return out
