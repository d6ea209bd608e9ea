"""Build what ``start`` builds from a config, without spawning or creating a segment. Cold path
(``load_config``, so ``check-config``, ``start``, ``run``, ``backtest`` and every stage).

``Config.validate`` calls ``build_problems`` last: the instrument table, each strategy (kind,
instrument count, parameters, instrument checks, state arrays; through
``strategies.registry.validate_strategy``), the simulated venues' price model, the risk limits
and risk state (``market.risk``), and the ring segments' total size against the shared memory
this machine has. A config that passes here does not fail in a stage's ``on_start`` for a
reason the config could have shown. ``broken(key)`` says a key was already reported wrong; the
builds that read it are skipped, every other one still runs.

Problems are yielded as ``(key, value, why)`` (one key) or as whole messages.
"""
from __future__ import annotations

import os

UNIX_PATH_MAX = 107   # sun_path is 108 bytes with the terminating NUL


def build_problems(cfg, broken):
    table = yield from _instrument_table(cfg, broken)
    yield from _strategies(cfg, broken, table)
    if table is not None:
        yield from _sim_prices(cfg, broken, table)
        yield from _risk(cfg, broken, table)
    yield from _rings(cfg, broken)
    yield from _control_socket(cfg, broken)


def _instrument_table(cfg, broken):
    """The InstrumentTable (and its numpy form), or None if an instrument or venue is wrong."""
    from shm.instruments import InstrumentTable

    if broken("instruments") or broken("venues") or not cfg.instruments:
        return None
    names = [v.name for v in cfg.venues]
    if any(i.venue not in names for i in cfg.instruments):
        return None   # reported by Config.validate
    table = InstrumentTable.from_config(cfg)
    for n, inst in enumerate(table):
        try:
            InstrumentTable([inst]).to_array()
        except (ValueError, OverflowError) as exc:
            yield f"instruments[{n}]: {inst.key} cannot be stored in the instrument table: {exc}"
            return None
    return table


def _strategies(cfg, broken, table):
    from strategies.registry import validate_strategy

    from common.runtime import MAX_STRATEGY_ID, shard_instruments

    known = {i.key for i in table} if table is not None else set()
    sid = 0
    for n, sc in enumerate(cfg.strategies):
        path = f"strategies[{n}]"
        if sc is None or broken(f"{path}.kind"):
            continue
        shards = sc.shards if not broken(f"{path}.shards") else 1
        if sc.enabled is True:
            sid += shards   # the topology numbers enabled strategy processes from 1
        insts = sc.instruments if not broken(f"{path}.instruments") else None
        if insts is None:
            continue
        if table is not None and all(k in known for k in insts):
            insts = [table.by_key(k) for k in insts]
        else:
            insts = list(insts)   # counted only: the table or a key is wrong (reported)
        try:
            blocks = shard_instruments(insts, shards)
        except ValueError:
            continue   # the config's own check names it
        for k, block in enumerate(blocks):   # every shard is built as its process builds it
            problems = validate_strategy(sc.kind, sc.params, block, path, max(sid, 1),
                                         check_params=not broken(f"{path}.params") and k == 0)
            if shards > 1:
                problems = [f"{p} (shard {k} of {shards})" for p in problems]
            yield from problems
            if problems:
                break
    if sid > MAX_STRATEGY_ID:
        yield (f"strategies: {sid} strategy processes (shards included); client order ids "
               f"carry at most {MAX_STRATEGY_ID}")


def _sim_prices(cfg, broken, table):
    """The simulated venues' latent price model (market/flow.py), per instrument."""
    from market.flow import FlowModel

    sim = {v.name for v in cfg.venues if v.kind == "sim"}
    for n, inst in enumerate(table):
        if inst.venue not in sim or broken(f"instruments[{n}]"):
            continue
        try:
            FlowModel(cfg, [inst])
        except (ValueError, ArithmeticError) as exc:
            yield f"instruments[{n}]: the simulated venue cannot model {inst.key}: {exc}"


def _risk(cfg, broken, table):
    """The risk gate's limits and state, sized as the gate sizes them."""
    from market.risk import build_limits, make_risk_state

    if broken("risk"):
        return
    n_strats = sum(s.shards if isinstance(s.shards, int) else 1 for s in cfg.strategies
                   if s is not None and s.enabled is True)
    try:
        limits = build_limits(cfg.risk, table, max_strategies=max(1, n_strats))
        make_risk_state(limits)
    except (ValueError, ArithmeticError, MemoryError) as exc:
        yield f"risk: the risk gate's limits cannot be built: {type(exc).__name__}: {exc}"


def ring_bytes(cfg) -> dict[str, tuple[int, int]]:
    """Ring slot bytes by config key: {"rings.market_capacity": (rings, bytes), ...}."""
    from shm.records import RECORD_DTYPES
    from stages.topology import build_topology

    out = {"rings.market_capacity": (0, 0), "rings.order_capacity": (0, 0)}
    for r in build_topology(cfg, dedicated=True).rings:
        if r.dtype == "control":
            continue   # fixed 64 records, not configurable
        key = "rings.market_capacity" if r.dtype == "market" else "rings.order_capacity"
        count, size = out[key]
        out[key] = (count + 1, size + RECORD_DTYPES[r.dtype].itemsize * r.capacity)
    return out


def shm_room(instance: str) -> tuple[int, str]:
    """Bytes this instance may put into shared memory: free space in /dev/shm (plus what its
    own segments hold now: a running instance's are replaced), or physical memory."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return ram, "of physical memory"
    free = st.f_bavail * st.f_frsize
    try:
        from shm.segment import list_segments

        free += sum(s.size for s in list_segments(instance))
    except Exception:   # listing is advisory here: free space alone is still a bound
        pass
    return min(free, ram), "free in /dev/shm"


def _rings(cfg, broken):
    for key in ("rings", "venues", "instruments", "strategies", "journal", "stages"):
        if broken(key):
            return   # the topology is not known; the capacities' own checks already ran
    try:
        need = ring_bytes(cfg)
    except KeyError:
        return   # a strategy names an unknown instrument: reported by Config.validate
    total = sum(b for _, b in need.values())
    room, where = shm_room(cfg.instance.name if not broken("instance") else "")
    if total <= room:
        return
    parts = [f"{key} = {getattr(cfg.rings, key.split('.')[1])}: {n} rings need {b:,} bytes"
             for key, (n, b) in need.items() if n]
    yield (f"rings: the ring segments need {total:,} bytes in all but only {room:,} bytes are "
           f"{where} ({'; '.join(parts)}); lower the capacities")


def _control_socket(cfg, broken):
    """The controller binds a Unix socket there: Linux takes at most 107 bytes of path."""
    from pipeline.paths import socket_path

    if broken("instance"):
        return
    path = str(socket_path(cfg))
    if len(path.encode()) <= UNIX_PATH_MAX:
        return
    key = "instance.socket" if cfg.instance.socket else "instance.run_dir"
    value = cfg.instance.socket or cfg.instance.run_dir
    yield (key, value, f"the control socket {path} is {len(path.encode())} bytes long; a Unix "
           f"socket path takes at most {UNIX_PATH_MAX}: use a shorter run_dir or set "
           "instance.socket")
