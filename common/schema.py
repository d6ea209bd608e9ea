"""Config-schema primitives: declare a section as a plain dataclass whose fields carry a doc
string and checks (``opt``, ``req``), read a TOML table into it with ``load_section``, and get
every problem at once in a ``ConfigError`` that names the key path and the bad value, e.g.
``config.toml: risk.max_order_qty_lots = -5: must be > 0``. Cold path (controller, CLI,
backtest, strategy set-up).

Unknown keys are rejected (a typo in a risk limit must not silently fall back to a default; a
near miss gets a "did you mean"). Numbers must be finite. All errors are collected: a key that
is wrong marks its path broken, and a section's cross check (``validate(broken)``) skips only
what reads a broken key. pipeline/config.py declares the config file's sections with these;
a strategy declares its parameters with them (strategies/base.py), and both report problems
in the same words.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import typing
from dataclasses import field
from decimal import Decimal, InvalidOperation
from typing import Any


class ConfigError(Exception):
    """One or more config problems; ``problems`` lists them, each naming key and value."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class _Problems:
    """Every problem found, plus the key paths that were wrong (``broken``), so that a cross
    check that reads a wrong field can be skipped while every other check still runs."""

    def __init__(self):
        self.items: list[str] = []
        self.bad: set[str] = set()

    def add(self, path: str, value: Any, why: str) -> None:
        self.items.append(f"{path} = {value!r}: {why}")
        self.bad.add(path)

    def missing(self, path: str) -> None:
        self.items.append(f"{path}: missing (required)")
        self.bad.add(path)

    def broken(self, path: str) -> bool:
        """True if ``path`` or anything inside it (``path.x``, ``path[0]``) was wrong."""
        if not path:
            return bool(self.bad)
        return any(b == path or b.startswith((path + ".", path + "[")) for b in self.bad)


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' when ``word`` is close to one of ``choices``, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_instruments(field: str, wanted, keys) -> list[str]:
    """A problem for each instrument key in ``wanted`` that is not one of ``keys``
    (SYMBOL@VENUE), for the config field ``field``."""
    return [f"{field}: {key!r} is not a configured instrument (SYMBOL@VENUE; known: "
            f"{', '.join(keys)}){did_you_mean(key, keys)}" for key in wanted if key not in keys]


# ------------------------------------------------------------------------------------------
# Generic dataclass reader
# ------------------------------------------------------------------------------------------
def _check_meta(f: dataclasses.Field, path: str, value: Any, problems: _Problems) -> None:
    meta = f.metadata
    if "gt" in meta and not value > meta["gt"]:
        problems.add(path, value, f"must be > {meta['gt']}")
    if "ge" in meta and not value >= meta["ge"]:
        problems.add(path, value, f"must be >= {meta['ge']}")
    if "le" in meta and not value <= meta["le"]:
        problems.add(path, value, f"must be <= {meta['le']}")
    if "lt" in meta and not value < meta["lt"]:
        problems.add(path, value, f"must be < {meta['lt']}")
    if "choices" in meta and value not in meta["choices"]:
        problems.add(path, value, f"must be one of {', '.join(map(str, meta['choices']))}"
                     + did_you_mean(value, meta["choices"]))
    if "pattern" in meta and not re.fullmatch(meta["pattern"], str(value)):
        problems.add(path, value, f"must match {meta['pattern']}")


def _convert(tp: Any, value: Any, path: str, problems: _Problems) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.add(path, value, "must be a table")
            return None
        return _read(tp, value, path, problems)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            problems.add(path, value, "must be a list")
            return ()
        item_t = args[0] if args else Any
        return tuple(_convert(item_t, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.add(path, value, "must be a table")
            return {}
        val_t = args[1] if len(args) > 1 else Any
        return {k: _convert(val_t, v, f"{path}.{k}", problems) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            problems.add(path, value, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.add(path, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.add(path, value, "must be a number")
            return value
        if not math.isfinite(value):
            problems.add(path, value, "must be a finite number (inf and nan are not accepted)")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.add(path, value, "must be a string")
        return value
    if tp is Decimal:
        # Decimals (tick and lot sizes) must be written as strings: a TOML float has already
        # gone through binary floating point by the time we see it.
        if not isinstance(value, str):
            problems.add(path, value, 'must be a decimal string such as "0.01"')
            return Decimal(0)
        try:
            d = Decimal(value)
        except InvalidOperation:
            problems.add(path, value, "is not a decimal number")
            return Decimal(0)
        if not d.is_finite() or d <= 0:
            problems.add(path, value, "must be a positive decimal")
        return d
    return value


def _read(cls, data: dict, path: str, problems: _Problems):
    # fields marked internal (e.g. Config.source) are set by the loader, never by the file
    fields = {f.name: f for f in dataclasses.fields(cls)
              if f.init and not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.add(f"{path}.{key}" if path else key, data[key],
                         f"unknown key{did_you_mean(key, fields)} (known keys: {known})")
    kwargs = {}
    for name, f in fields.items():
        kpath = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.missing(kpath)
                kwargs[name] = None   # keep building: the cross checks skip broken keys
            continue
        before = len(problems.items)
        value = _convert(hints[name], data[name], kpath, problems)
        if len(problems.items) == before and value is not None:
            _check_meta(f, kpath, value, problems)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.items.append(f"{path or '<top>'}: {exc}")
        problems.bad.add(path)
        return None
    check = getattr(obj, "validate", None)
    if check is not None:
        if inspect.signature(check).parameters:
            # validate(broken): it runs every check whose keys are sound;
            # broken("key") says whether <path>.key (or anything inside it) was wrong
            msgs = check(lambda rel: problems.broken(f"{path}.{rel}" if path else rel))
        elif not problems.broken(path):
            msgs = check()
        else:
            msgs = ()
        for msg in msgs or ():
            if isinstance(msg, tuple):   # (key, value, why): a problem of one key
                key, value, why = msg
                problems.add(f"{path}.{key}" if path else key, value, why)
            else:
                problems.items.append(f"{path}: {msg}" if path else msg)
                problems.bad.add(path)
    return obj


def load_section(cls, data: dict, path: str = "", source: str = "config"):
    """Read ``data`` into dataclass ``cls``; raise ConfigError naming every bad key and value."""
    problems = _Problems()
    obj = _read(cls, data, path, problems)
    if problems.items:
        raise ConfigError(problems.items, source)
    return obj


def opt(default, doc: str = "", **checks):
    """A dataclass field with a default, a doc string and checks (gt, ge, le, lt, choices...)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **checks})
    return field(default=default, metadata={"doc": doc, **checks})


def req(doc: str = "", **checks):
    """A required dataclass field with a doc string and checks."""
    return field(metadata={"doc": doc, **checks})
