"""Strategy registry: kind name -> Strategy class. Cold path (controller, backtest, tests).

A strategy is the module ``strategies/<kind>.py`` that defines one ``Strategy`` subclass with
``kind = "<kind>"``. Discovery is by module name, so adding a strategy is adding a file; nothing
here needs editing. Modules are imported on first use (importing defines, but does not compile,
the numba kernels).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_NOT_STRATEGIES = {"base", "registry", "host", "__init__"}
_cache: dict[str, type] = {}


def _module_names() -> list[str]:
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here])
                  if not m.ispkg and m.name not in _NOT_STRATEGIES and not m.name.startswith("_"))


def _load(kind: str) -> type | None:
    from strategies.base import Strategy

    mod = importlib.import_module(f"strategies.{kind}")
    found = [obj for obj in vars(mod).values()
             if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy
             and getattr(obj, "kind", "") == kind]
    if len(found) != 1:
        raise LookupError(f"strategies/{kind}.py must define exactly one Strategy subclass with "
                          f"kind = {kind!r}; found {len(found)}")
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


def make_strategy(kind: str, params: dict, instruments, strategy_id: int):
    """Convenience: validate params and build the strategy object (cold)."""
    return get_strategy_class(kind)(params, instruments, strategy_id)
