"""Live parameter sets of running strategies: ``<run dir>/params/<strategy>.json``. Cold path.

Written by the controller (``run.py set``, pipeline/live_params.py) *before* it sends the
strategy's processes CTRL_PARAMS; read by the strategy host (stages/strategy_host.py) when that
command arrives, between two batches, and when a (re)started strategy process builds its
strategy: a strategy restarted after a crash trades on the last set, not the config's.

One JSON object per strategy name (every shard of the strategy reads the same file)::

    {"strategy": "mm_btc", "version": 2, "params": {<every field of its Params>},
     "ts_ns": ..., "who": "cli", "why": "..."}

A farm's coordinator (pipeline/farm_coordinator.py) adds ``"shards": {"<k>": {key: value}}``:
values that only shard k takes on top of ``params`` (its share of the farm's budget). A shard's
set is ``params`` updated with its own entry (``shard_params``), validated as a whole.

``params`` is the full set, so a reader never has to know the history; ``version`` counts the
sets of this run (1 = the first ``run.py set``). The file is written owner-only (file 0600,
directory 0700) and atomically: a temporary file in the same directory, fsync, rename over the
old one, fsync of the directory. A reader sees the previous set or the new one, never a mix.

The file belongs to one run directory: a new start of the instance (a new run directory)
begins again from the config.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

PARAMS_DIR = "params"


class ParamSetError(Exception):
    """A parameter-set file that cannot be read or is not what the controller writes."""


def params_path(run_dir, strategy: str) -> Path:
    return Path(run_dir) / PARAMS_DIR / f"{strategy}.json"


def config_params_path(cfg, strategy: str) -> str:
    """The config key path of a strategy's params (``strategies[0].params``), the prefix of
    every validation message, as ``check-config`` names it."""
    for n, sc in enumerate(cfg.strategies):
        if sc.name == strategy:
            return f"strategies[{n}].params"
    return f"strategies[{strategy}].params"


def write_param_set(run_dir, strategy: str, version: int, params: dict, who: str = "",
                    why: str = "", shards: dict | None = None) -> Path:
    """Replace ``<run_dir>/params/<strategy>.json`` atomically (module docstring)."""
    path = params_path(run_dir, strategy)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    rec = {"strategy": strategy, "version": int(version), "params": params,
           "ts_ns": time.time_ns(), "who": who, "why": why}
    if shards:
        rec["shards"] = {str(k): dict(v) for k, v in shards.items()}
    body = json.dumps(rec, sort_keys=True, allow_nan=False, indent=1).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)   # a leftover temp file of a crashed writer keeps its old mode
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)   # the rename itself survives a power cut
    finally:
        os.close(dfd)
    return path


def read_param_set(run_dir, strategy: str) -> dict | None:
    """The strategy's current set ({"version", "params", "who", "why", "ts_ns", ...}), or None
    when none was set in this run. ParamSetError naming the file when it is not one."""
    path = params_path(run_dir, strategy)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ParamSetError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        rec = json.loads(text)
    except ValueError as exc:
        raise ParamSetError(f"{path}: not JSON ({exc})") from None
    if not isinstance(rec, dict) or rec.get("strategy") != strategy:
        raise ParamSetError(f"{path}: not the parameter set of strategy {strategy!r}")
    version, params = rec.get("version"), rec.get("params")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ParamSetError(f"{path}: version = {version!r}: must be an integer >= 1")
    if not isinstance(params, dict):
        raise ParamSetError(f"{path}: params = {params!r}: must be a table")
    shards = rec.get("shards", {})
    if not isinstance(shards, dict) or not all(isinstance(v, dict) for v in shards.values()):
        raise ParamSetError(f"{path}: shards = {shards!r}: must be a table of tables")
    return rec


def shard_params(rec: dict, shard: int) -> dict:
    """The full parameter table shard ``shard`` runs on: ``params`` with its own entry of
    ``shards`` (the coordinator's share of the farm's budget) on top."""
    return {**rec["params"], **rec.get("shards", {}).get(str(int(shard)), {})}


def changed_values(before, after) -> dict:
    """{field: [before, after]} for every field of two Params instances that differs."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(after):
        a, b = getattr(before, f.name), getattr(after, f.name)
        if a != b:
            out[f.name] = [a, b]
    return out


def params_dict(params) -> dict:
    """A Params instance as the JSON table the file holds (tuples as lists)."""
    import dataclasses

    return {f.name: (list(v) if isinstance(v := getattr(params, f.name), tuple) else v)
            for f in dataclasses.fields(params)}
