"""Strategy registry: kind name -> Strategy class. Cold path (controller, backtest, tests).

A strategy is the module ``strategies/<kind>.py`` that defines one ``Strategy`` subclass with
``kind = "<kind>"``. Discovery is by module name, so adding a strategy is adding a file; nothing
here needs editing. Strategies kept outside the checkout are found the same way in the
directories of ``$HFTFARM_STRATEGY_PATH`` (``os.pathsep``-separated; inherited by every stage
process): ``<dir>/<kind>.py``. A built-in kind cannot be shadowed. Modules are imported on first use (importing defines, but does not compile,
the numba kernels).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from common.codegen import import_file

STRATEGY_PATH_ENV = "HFTFARM_STRATEGY_PATH"

_NOT_STRATEGIES = {"base", "registry", "host", "backtest", "backtest_codegen", "param_schedule",
                   "features", "signals", "__init__"}   # signals: the farm's signal agents
_cache: dict[str, type] = {}


def _builtin_names() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here])
                  if not m.ispkg and m.name not in _NOT_STRATEGIES and not m.name.startswith("_"))


def _plugin_files() -> dict[str, Path]:
    """kind -> file of the strategies in $HFTFARM_STRATEGY_PATH (first directory wins)."""
    out: dict[str, Path] = {}
    builtin = set(_builtin_names())
    for d in filter(None, os.environ.get(STRATEGY_PATH_ENV, "").split(os.pathsep)):
        for m in pkgutil.iter_modules([d]):
            if not m.ispkg and not m.name.startswith("_") and m.name not in builtin:
                out.setdefault(m.name, Path(d) / f"{m.name}.py")
    return out


def _module_names() -> list[str]:
    return sorted({*_builtin_names(), *_plugin_files()})


def _load(kind: str) -> type | None:
    from strategies.base import Strategy

    plugin = _plugin_files().get(kind) if kind not in _builtin_names() else None
    if plugin is not None:
        mod = import_file(f"hftfarm_strategy_{kind}", plugin)
    else:
        mod = importlib.import_module(f"strategies.{kind}")
    found = [obj for obj in vars(mod).values()
             if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy
             and getattr(obj, "kind", "") == kind]
    if len(found) != 1:
        raise LookupError(f"{getattr(mod, '__file__', kind)} must define exactly one Strategy "
                          f"subclass with kind = {kind!r}; found {len(found)}")
    return found[0]


def available_kinds() -> list[str]:
    """Every registered strategy kind, sorted."""
    return _module_names()


def get_strategy_class(kind: str) -> type:
    """The Strategy class of ``kind``; KeyError naming the known kinds if there is none."""
    if kind in _cache:
        return _cache[kind]
    kinds = _module_names()
    if kind not in kinds:
        raise KeyError(f"unknown strategy kind {kind!r} (known: {', '.join(kinds) or 'none'})")
    cls = _load(kind)
    _cache[kind] = cls
    return cls


def make_strategy(kind: str, params: dict, instruments, strategy_id: int, shard: int = 0):
    """Convenience: validate params and build the strategy object (cold)."""
    return get_strategy_class(kind)(params, instruments, strategy_id, shard)


def validate_strategy(kind: str, params, instruments, path: str, strategy_id: int = 1,
                      check_params: bool = True) -> list[str]:
    """Cold: build strategy ``kind`` as the strategy host would (class, parameters, instrument
    checks, state arrays) and return every problem as a message naming its key under ``path``
    (``strategies[1].kind``, ``.instruments``, ``.params.<key>``); [] when it builds.

    ``instruments``: ``shm.instruments.Instrument`` objects (then the strategy is built), or
    SYMBOL@VENUE strings when the instrument table cannot be built (then only counted).
    ``check_params=False`` skips the parameters (the table itself was wrong).
    """
    from difflib import get_close_matches

    from common.schema import ConfigError, load_section

    kinds = _module_names()
    if kind not in kinds:
        close = get_close_matches(str(kind), kinds, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return [f"{path}.kind = {kind!r}: unknown strategy kind{hint}; known kinds: "
                f"{', '.join(kinds) or 'none'}"]
    try:
        cls = get_strategy_class(kind)
    except (LookupError, ImportError) as exc:
        return [f"{path}.kind = {kind!r}: {exc}"]
    problems: list[str] = []
    instruments = list(instruments)
    keys = [i if isinstance(i, str) else i.key for i in instruments]
    if not cls.instrument_count_ok(len(instruments)):
        need = cls.instrument_count_text()
        plural = "s" if cls.n_instruments != 1 else ""
        problems.append(f"{path}.instruments = {keys!r}: {kind} trades {need} "
                        f"instrument{plural} (SYMBOL@VENUE), got {len(instruments)}")
    if check_params:
        try:
            load_section(cls.Params, dict(params or {}), f"{path}.params")
        except ConfigError as exc:
            problems += exc.problems
    if problems or not check_params or any(isinstance(i, str) for i in instruments):
        return problems
    try:
        strategy = cls(params, instruments, strategy_id)
    except (ConfigError, ValueError) as exc:
        return [f"{path}.instruments = {keys!r}: {exc}"]
    try:
        strategy.make_state()
    except (ValueError, OverflowError, MemoryError) as exc:
        return [f"{path}.params: the strategy's state cannot be built: {exc}"]
    return []
