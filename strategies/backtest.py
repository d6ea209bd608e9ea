"""The backtest's cold driver: configured strategies through the strategy runtime against the
simulated venues or a recording, one alone or several together (market/backtest.py has the
loop, strategies/backtest_codegen.py makes it cacheable for each strategy set).

Runs in the ``run.py backtest`` process, the benchmark and the tests; cold path. Each strategy
runs exactly as in a live strategy process: the same runtime step
(strategies.host.run_strategy_batch), its live strategy id (stages/topology.py's numbering),
its own timer period and book depth. Together they share one risk state (the live gate's
checks and limits), one simulated market (their orders meet on its books) and one set of books
of record (market/accounting.py, per strategy x instrument).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from common.runtime import (group_ids, process_name, shard_instruments, shard_position_limits,
                            strategy_ids)
from market.backtest import (COUNTER_NAMES, HOLD_AREA, HOLD_OPENED, KT_MARKET, KT_NAMES,
                             KTN_CALLS, KTN_RECORDS, KTN_TICKS, MARKOUT_NAMES, BacktestArrays,
                             make_backtest_arrays, start_loop)
from market.book import L2Book
from market.risk import build_limits
from shm.records import REJECT_NAMES
from strategies.backtest_codegen import backtest_run_for
from strategies.base import HALT_NAMES
from strategies.host import H_DISCARDED, H_KERNEL_ERRORS, H_SG_IN, apply_params, make_hctl
from strategies.param_schedule import as_schedule, resolve

MAX_INTENTS = 256
PROGRESS_STEPS = 100   # stretches of a run with a progress callback
# counters a total is not the sum of its strategies' (the loop keeps them for the whole run)
_RUN_COUNTERS = ("md_records", "curve_points", "closed_trades", "queue_samples", "max_abs_pos")


def strategy_id_of(cfg, name: str) -> int:
    """The strategy id ``name`` (its shard 0) has in a live instance of ``cfg``
    (common.runtime.strategy_ids, as stages/topology.py numbers them); a disabled strategy
    gets the next id after them."""
    ids = strategy_ids(cfg.strategies)
    return ids.get((name, 0), len(ids) + 1)


@dataclass
class BacktestResult:
    """One strategy's part of a run (or the whole run of one strategy)."""
    name: str
    kind: str
    source: str                  # "sim" or the record file
    report: dict
    curve: dict                  # t_ns, equity, realized, unrealized, fees, abs_pos arrays
    trade_pnls: np.ndarray
    queue_times_ns: np.ndarray
    counters: dict
    venue_counters: dict = field(default_factory=dict)
    strategy_state: object = None   # the strategy's StrategyState at the end (ctx, st, p)
    trace: dict | None = None       # run_backtest(trace=N): see _trace


@dataclass
class PortfolioResult:
    """Several strategies run together: each one's part and the total (``total.name`` is
    "total"). ``report`` = {"total": ..., "strategies": {name: ...}, "source", "skipped"}."""
    source: str
    report: dict
    total: BacktestResult
    strategies: dict             # name -> BacktestResult
    counters: dict
    venue_counters: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)   # name -> why it could not trade the data
    trace: dict | None = None       # run_backtest(trace=N): see _trace


def _strategy_config(cfg, which: str | None):
    enabled = [s for s in cfg.strategies if s.enabled]
    if which is None:
        if not enabled:
            raise ValueError(f"{cfg.source}: no enabled [[strategies]] entry to backtest")
        return enabled[0]
    for s in cfg.strategies:
        if s.name == which:
            return s
    for s in enabled:
        if s.kind == which:
            return s
    names = ", ".join(f"{s.name} ({s.kind})" for s in cfg.strategies) or "none"
    raise ValueError(f"no strategy named or of kind {which!r} in {cfg.source} (have: {names})")


@dataclass
class _Market:
    kind: str            # "sim" | "replay"
    venue: object
    instruments: list
    t_start: int
    t_end: int
    source: str

    def strategy_instruments(self, keys):
        by_key = {i.key: i for i in self.instruments}
        found = [by_key.get(k) for k in keys]
        if self.kind == "replay" and any(i is None for i in found):
            # a recording of other instruments: the strategy trades the file's, in file order
            return self.instruments[:len(keys)]
        return found


def backtest_market(cfg, data=None, duration_s: float | None = None) -> _Market:
    """The market ``run.py backtest`` would run on, with its defaults (the sim-time mode of the
    live pipeline plays it: stages/venue_lockstep.py)."""
    return _market(cfg, data, duration_s, None, None, None)


def _market(cfg, data, duration_s, seed, event_rate_per_s, queue_model) -> _Market:
    from shm.instruments import InstrumentTable

    if data is None:
        from market.sim import SimVenue

        instruments = list(InstrumentTable.from_config(cfg))
        rate = cfg.backtest.event_rate_per_s if event_rate_per_s is None else event_rate_per_s
        venue = SimVenue(cfg, instruments, seed, event_rate_per_s=rate)
        t_start = venue.now_ns
        dur = cfg.sim.duration_s if duration_s is None else duration_s
        return _Market("sim", venue, instruments, t_start, t_start + int(dur * 1e9), "sim")
    from market.recordfile import instruments_from_header, open_record_file
    from market.replayvenue import ReplayVenue
    from shm.records import MARKET_DTYPE

    header, recs = open_record_file(data, MARKET_DTYPE)
    instruments = instruments_from_header(header)
    if not instruments:
        raise ValueError(f"{data}: the record file names no instruments")
    venue = ReplayVenue(np.asarray(recs), instruments, cfg,
                        queue_model=queue_model or cfg.backtest.queue_model,
                        seed=cfg.sim.seed if seed is None else seed)
    t_start = venue.start_ns
    t_end = venue.end_ns if duration_s is None else t_start + int(duration_s * 1e9)
    return _Market("replay", venue, instruments, t_start, t_end, str(data))


def _select(cfg, strategy):
    """(strategy configs in run order, together?) for run_backtest's ``strategy``."""
    if isinstance(strategy, str):
        sc = _strategy_config(cfg, strategy)
        return [sc], sc.shards > 1   # a sharded one runs as its shards, together
    if strategy is None:
        chosen = [s for s in cfg.strategies if s.enabled]
        if not chosen:
            raise ValueError(f"{cfg.source}: no enabled [[strategies]] entry to backtest")
    else:
        chosen = [_strategy_config(cfg, n) for n in strategy]
        if len({s.name for s in chosen}) != len(chosen):
            raise ValueError(f"strategies {list(strategy)}: each may run once")
    # the live order (strategy ids), whatever order they were named in
    return sorted(chosen, key=lambda s: strategy_id_of(cfg, s.name)), True


def run_backtest(cfg, strategy=None, data=None, *, duration_s: float | None = None,
                 seed: int | None = None, event_rate_per_s: float | None = None,
                 queue_model: str | None = None, sample_ms: float = 100.0, schedule=None,
                 trace: int = 0, progress=None, kernel_timing: int = 0):
    """Backtest against the simulated venues of ``cfg`` for ``duration_s`` (default
    cfg.sim.duration_s), or against the record file ``data`` (its instruments; a strategy's
    instruments are taken from the file by key, else in file order).

    ``strategy``: a name or kind -> that instance alone (a BacktestResult); None -> every
    enabled instance together, in one market and under one risk state (a PortfolioResult);
    a list of names -> those together. Each runs with the identity it has live (its strategy
    id from the config's order, shard 0), its own ``timer_ms`` and ``book_levels``. Together on
    ``data``, a strategy that cannot trade what the file holds is left out (named in
    ``skipped``) unless none can.

    ``schedule``: parameter changes at simulated times (strategies/param_schedule.py), applied
    as ``run.py set`` applies them live; ConfigError naming every bad entry and key.

    ``trace``: keep the first ``trace`` intents (as the gate decided them) and venue execution
    reports in order, and the final risk state, in the result's ``trace`` (see ``_trace``).

    ``progress(done_s, total_s)``: called with the simulated seconds done, PROGRESS_STEPS times
    over the run (``run.py backtest``'s bar); the result is the same with it or without.

    ``kernel_timing``: 0, or a power of two: time every call of each strategy's step and keep
    the last ``kernel_timing`` of each kind (market records, reports only, timer); each
    report then has ``kernel_ns`` (``_kernel_figures``). For ``run.py bench strategies``; the
    trading is the same with it or without.
    """
    from common.schema import ConfigError
    from strategies.registry import get_strategy_class

    configs, together = _select(cfg, strategy)
    mk = _market(cfg, data, duration_s, seed, event_rate_per_s, queue_model)
    n_inst = max(i.instrument_id for i in mk.instruments)
    built, skipped = [], {}
    ids = strategy_ids(cfg.strategies)
    for sc0 in configs:
        # a sharded strategy runs as its shards, each with its block and live id ("name.k")
        for k, block in enumerate(shard_instruments(sc0.instruments, sc0.shards)):
            sc = sc0 if sc0.shards == 1 else dataclasses.replace(
                sc0, name=process_name(sc0.name, k, sc0.shards), instruments=tuple(block),
                shards=1)
            insts = mk.strategy_instruments(sc.instruments)
            try:
                strat = get_strategy_class(sc.kind)(sc.params, insts,
                                                    ids.get((sc0.name, k),
                                                            strategy_id_of(cfg, sc0.name)), k)
            except (ConfigError, ValueError) as exc:   # it refuses the file's instruments
                if not (together and data is not None):
                    raise
                skipped[sc.name] = str(exc)
                continue
            px, qty, meta = L2Book(n_inst, sc.book_levels).arrays
            built.append((sc, strat, insts, strat.make_state(px, qty, meta, MAX_INTENTS)))
    if not built:
        raise ConfigError([f"{name}: {why}" for name, why in skipped.items()],
                          f"no strategy can trade what {data} holds")
    agents, agent_names, sg_cap = _signal_agents(cfg, built, mk, n_inst)
    n_enabled = len(ids)
    sids = [s.strategy_id for _sc, s, _i, _st in built]
    # sized as the live gate sizes it for this config (stages/risk_gate.py)
    limits = build_limits(cfg.risk, mk.instruments, max_strategies=max(1, n_enabled, *sids),
                          groups=group_ids(cfg.strategies),
                          shard_limits=shard_position_limits(cfg.risk.max_position_lots,
                                                             cfg.strategies))
    sample_ns = int(sample_ms * 1e6)
    venues = [v.name for v in cfg.venues]   # the live topology's ring order
    venues += [v for v in dict.fromkeys(i.venue for i in mk.instruments) if v not in venues]
    G = make_backtest_arrays(sids, mk.instruments, limits,
                             [make_hctl(sc.timer_ms) for sc, *_ in built],
                             n_samples=int((mk.t_end - mk.t_start) // sample_ns) + 3,
                             venues=venues,
                             strategy_venues=[{i.venue for i in insts}
                                              for _sc, _s, insts, _st in built],
                             trace_capacity=int(trace), kernel_timing=int(kernel_timing),
                             signal_capacity=sg_cap)
    S = tuple((st.ctx, st.st, st.p) for *_x, st in built) + tuple(agents)
    sets = []
    if schedule:
        sets = resolve(as_schedule(schedule), {sc.name: s for sc, s, *_ in built},
                       {sc.name: st for sc, _s, _i, st in built},
                       (mk.t_end - mk.t_start) / 1e9)
    run = backtest_run_for(mk.kind, [type(s) for _sc, s, *_ in built], len(agents))
    vs = mk.venue.state
    initial_cash = float(cfg.backtest.initial_cash)
    t_end = np.int64(mk.t_end)
    compile_s = time.perf_counter()
    _compile(run, (vs, S, G, t_end, t_end, np.int64(sample_ns), initial_cash))
    compile_s = time.perf_counter() - compile_s

    start_loop(G, mk.t_start)
    span = max(1, mk.t_end - mk.t_start)
    stretch = span // PROGRESS_STEPS + 1 if progress is not None else span + 1

    def run_to(t: int) -> None:
        """The loop up to simulated time t; with ``progress``, in stretches of 1/PROGRESS_STEPS
        of the run (the loop keeps its state between them: the same run, to the record)."""
        while True:
            stop = min(t, int(G.loop[0]["now"]) + stretch)
            run(vs, S, G, np.int64(stop), t_end, np.int64(sample_ns), initial_cash)
            if progress is not None:
                progress((min(stop, mk.t_end) - mk.t_start) / 1e9, span / 1e9)
            if stop >= t:
                return

    from common.tsc import TscSpan

    tsc = TscSpan().start()
    wall = time.perf_counter()
    cpu = time.thread_time()
    for ss in sets:
        t = np.int64(mk.t_start + ss.t_ns)
        if t > G.loop[0]["now"]:
            run_to(int(t))
        _sc, strat, _i, state = built[ss.index]
        apply_params(strat, state, G.hctl[ss.index], ss.params)
    run_to(int(t_end))
    cpu = time.thread_time() - cpu
    wall = time.perf_counter() - wall
    timing = {"wall_s": wall, "cpu_s": cpu, "compile_s": compile_s}
    ns_per_tick = tsc.ns_per_tick()
    venue_counters = mk.venue.counters() if hasattr(mk.venue, "counters") else {}
    parts = {}
    for k, (sc, strat, insts, state) in enumerate(built):
        parts[sc.name] = _strategy_result(G, k, sc, strat, insts, state, mk, initial_cash,
                                          [s for s in sets if s.index == k],
                                          timing if not together else {}, venue_counters,
                                          ns_per_tick)
    traced = _trace(G, mk) if trace else None
    from shm.records import SIGNAL_KIND_CODES

    kind_names = {v: k for k, v in SIGNAL_KIND_CODES.items()}
    ran = {name: {"kind": kind_names.get(int(a.ctl[0]["kind"]), "?"),
                  "records": int(a.ctl[0]["seq"]), "publishes": int(a.ctl[0]["publishes"])}
           for name, (a, *_r) in zip(agent_names, agents)}
    if not together:
        one = parts[configs[0].name]
        one.trace = traced
        if ran:
            one.report["signal_agents"] = ran
        return one
    total = _total_result(G, parts, mk, initial_cash, sets, timing, venue_counters)
    if ran:
        total.report["signal_agents"] = ran
    report = {"total": total.report, "strategies": {n: r.report for n, r in parts.items()},
              "source": mk.source, "skipped": dict(skipped)}
    return PortfolioResult(mk.source, report, total, parts, total.counters, venue_counters,
                           dict(skipped), traced)


def _trace(G: BacktestArrays, mk) -> dict:
    """What a live run of the same input must reproduce: ``intents`` (ORDER_DTYPE, every
    intent as the gate decided it: send_ts_ns = decision time, reject_code), ``reports``
    (EXEC_DTYPE, every venue report), their totals (``n_intents``, ``n_reports``: beyond the
    capacity they are counted, not kept), the final risk state and limits, and the run's
    simulated start and end."""
    n_o, n_e = int(G.trn[0]), int(G.trn[1])
    return {"intents": G.tro[:min(n_o, len(G.tro))].copy(),
            "reports": G.tre[:min(n_e, len(G.tre))].copy(),
            "n_intents": n_o, "n_reports": n_e, "rstate": G.rstate, "limits": G.limits,
            "t_start": mk.t_start, "t_end": mk.t_end}


def _compile(run, args) -> None:
    """Compile (or load from numba's cache) ``run`` for these arguments without running it,
    so that the run's wall time measures the run and not numba."""
    import numba

    run.compile(tuple(numba.typeof(a) for a in args))


def _rejects(row) -> dict:
    return {REJECT_NAMES.get(c, f"REJECT_{c}"): int(n) for c, n in enumerate(row) if n}


def _report(curve, trades, qtimes, counters, initial_cash, markouts=None):
    from market.report import build_report

    return build_report(curve=curve, trade_pnls=trades, queue_times_ns=qtimes, counters=counters,
                        initial_cash=initial_cash, markouts=markouts)


def _markouts(G: BacktestArrays, ks) -> dict:
    """build_report's ``markouts`` for the strategies ``ks`` together (their sums added); the
    ring's overflow and fills without a mark are the run's."""
    ks = list(ks)
    ctl = G.mko_ctl[0]
    return {"sums": G.mko_sum[ks].sum(axis=0), "names": MARKOUT_NAMES,
            "left_out": G.mko_left[ks].sum(axis=0),
            "dropped": {"ring_overflow": int(ctl["overflow"]),
                        "no_mark": int(ctl["no_mark"])}}


def _curve(G: BacktestArrays, row: int) -> dict:
    n = int(G.cnt[-1]["curve_points"])
    c = G.curve[row, :n]
    return {name: c[name].copy() for name in c.dtype.names}


def _signal_agents(cfg, built, mk, n_inst: int):
    """The ``[[signals]]`` agents the backtested strategies subscribe to, as the live farm runs
    them (stages/signal_agent.py): (one (agent, px, qty, meta, subscriber indices) each, their
    names, the signal records one round can bring a strategy). Each subscriber's ctx.sig
    reads the agent's kind, missing once older than its stale_ms, as a live strategy host
    subscribes it. An agent whose instruments the market does not hold (a recording of
    others) does not run: its subscribers see its signal missing, as live while it is down."""
    from shm.records import SIGNAL_KIND_CODES
    from strategies.base import subscribe_signal
    from strategies.signals import AGENT_BOOK_LEVELS, make_agent

    wanted = {name for sc, *_ in built for name in sc.signals}
    agents, names, cap = [], [], 0
    by_key = {i.key: i for i in mk.instruments}
    for g in getattr(cfg, "signals", ()):
        if g.name not in wanted or not g.enabled:
            continue
        if any(k not in by_key for k in g.instruments):
            continue
        a = make_agent(g.kind, [by_key[k].instrument_id for k in g.instruments], g.window,
                       g.sample_ms, g.publish_ms)
        subs = [k for k, (sc, *_r) in enumerate(built) if g.name in sc.signals]
        for k in subs:
            subscribe_signal(built[k][3].ctx.sig, SIGNAL_KIND_CODES[g.kind], g.max_age_ns)
        px, qty, meta = L2Book(n_inst, AGENT_BOOK_LEVELS).arrays   # as the agent stage's
        agents.append((a, px, qty, meta, np.array(subs, dtype=np.int64)))
        names.append(g.name)
        cap += len(a.out)
    return agents, names, max(1, cap)


def _holding(G: BacktestArrays, ks, t_end: int) -> dict:
    """Mean holding time of the strategies ``ks`` together, by Little's law: the sum over
    instruments of |position| x time (lot-seconds; a position still open at the end counts up
    to ``t_end``) over the lots opened. None when no lot was opened."""
    area = opened = 0.0
    for k in ks:
        pos = G.pos[k]["pos"]
        open_ = np.abs(pos) > 0
        area += float(G.hold[k, HOLD_AREA])
        area += float((np.abs(pos[open_]) * (t_end - G.hold_t[k][open_]) / 1e9).sum())
        opened += float(G.hold[k, HOLD_OPENED])
    return {"mean_holding_s": area / opened if opened > 0 else None,
            "lots_opened": opened}


def _kernel_figures(G: BacktestArrays, k: int, ns_per_tick: float) -> dict:
    """Strategy k's timed step calls (``kernel_timing``), per kind of call: calls, market
    records, and ns per call (per market record for "market"): p50, p99, max of the calls kept,
    and the mean over all of them."""
    out = {}
    ring = G.kt.shape[2]
    for kind, name in enumerate(KT_NAMES):
        n = int(G.ktn[k, kind, KTN_CALLS])
        if n == 0:
            continue
        x = G.kt[k, kind, :min(n, ring)] * ns_per_tick
        recs = int(G.ktn[k, kind, KTN_RECORDS])
        per = recs if kind == KT_MARKET else n
        out[name] = {"calls": n, "records": recs, "kept": int(min(n, ring)),
                     "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99)),
                     "max": float(x.max()),
                     "mean": float(G.ktn[k, kind, KTN_TICKS]) * ns_per_tick / per}
    return out


def _strategy_result(G, k, sc, strat, insts, state, mk, initial_cash, sets, timing,
                     venue_counters, ns_per_tick: float = 0.0) -> BacktestResult:
    cnt = G.cnt[k]
    counters = {name: int(cnt[name]) for name in COUNTER_NAMES}
    for name in ("md_records", "curve_points"):
        counters[name] = int(G.cnt[-1][name])
    hctl = G.hctl[k]
    counters["kernel_errors"] = int(hctl[H_KERNEL_ERRORS])
    counters["intents_discarded"] = int(hctl[H_DISCARDED])
    counters["signal_records"] = int(hctl[H_SG_IN])
    counters.update(timing)
    counters["events"] = counters["md_records"] + counters["exec_reports"]
    counters["simulated_s"] = (mk.t_end - mk.t_start) / 1e9
    n_tr = int(G.cnt[-1]["closed_trades"])
    n_q = int(G.cnt[-1]["queue_samples"])
    tp = G.trades[:n_tr][G.trade_k[:n_tr] == k].copy()
    qt = G.qtimes[:n_q][G.qtime_k[:n_q] == k].copy()
    curve = _curve(G, k)
    report = _report(curve, tp, qt, counters, initial_cash, _markouts(G, [k]))
    report["strategy"] = {"name": sc.name, "kind": sc.kind, "strategy_id": strat.strategy_id,
                          "instruments": [i.key for i in insts]}
    report["source"] = mk.source
    report["kernel_errors"] = counters["kernel_errors"]
    report["turnover"] = float(G.turnover[k])
    report["rejects"] = {"risk": _rejects(G.rej_risk[k]), "venue": _rejects(G.rej_venue[k])}
    if sets:
        report["params_schedule"] = [{"at_s": s.t_ns / 1e9, "params": s.overrides}
                                     for s in sets]
    rt = state.ctx.rt[0]
    if rt["halted"]:
        report["halted"] = {"reason": HALT_NAMES.get(int(rt["halted"]), "halted"),
                            "at_s": (int(rt["halt_ns"]) - mk.t_start) / 1e9}
    report.update(_holding(G, [k], mk.t_end))
    if ns_per_tick > 0 and G.kt.shape[2] > 0:
        report["kernel_ns"] = _kernel_figures(G, k, ns_per_tick)
    return BacktestResult(sc.name, sc.kind, mk.source, report, curve, tp, qt, counters,
                          venue_counters, state)


def _total_result(G, parts, mk, initial_cash, sets, timing, venue_counters) -> BacktestResult:
    counters = {name: sum(p.counters[name] for p in parts.values()) for name in COUNTER_NAMES}
    for name in _RUN_COUNTERS:
        counters[name] = int(G.cnt[-1][name])
    for name in ("kernel_errors", "intents_discarded", "signal_records"):
        counters[name] = sum(p.counters[name] for p in parts.values())
    counters.update(timing)
    counters["events"] = counters["md_records"] + counters["exec_reports"]
    counters["simulated_s"] = (mk.t_end - mk.t_start) / 1e9
    n_tr = counters["closed_trades"]
    n_q = counters["queue_samples"]
    tp = G.trades[:n_tr].copy()
    qt = G.qtimes[:n_q].copy()
    curve = _curve(G, len(parts))
    report = _report(curve, tp, qt, counters, initial_cash, _markouts(G, range(len(parts))))
    report["strategies"] = list(parts)
    report["source"] = mk.source
    report.update(_holding(G, range(len(parts)), mk.t_end))
    report["kernel_errors"] = counters["kernel_errors"]
    report["turnover"] = float(G.turnover.sum())
    report["rejects"] = {"risk": _rejects(G.rej_risk.sum(axis=0)),
                         "venue": _rejects(G.rej_venue.sum(axis=0))}
    if sets:
        report["params_schedule"] = [{"at_s": s.t_ns / 1e9, "strategy": s.name,
                                      "params": s.overrides} for s in sets]
    return BacktestResult("total", "portfolio", mk.source, report, curve, tp, qt, counters,
                          venue_counters, None)
