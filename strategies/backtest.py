"""The backtest's cold driver: a configured strategy through the strategy runtime against the
simulated venues or a recording (market/backtest.py has the loop and its accounting).

Runs in the ``run.py backtest`` process, the benchmark and the tests; cold path. The strategy
runs exactly as in a live strategy process: the same runtime step
(strategies.host.run_strategy_batch), its live strategy id, timer period and book depth.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from common.runtime import strategy_ids
from market.backtest import (A_VALUE, A_WORDS, ACK_RING, C_N_CURVE, C_N_QUEUE, C_N_TRADES,
                             C_WORDS, COUNTER_NAMES, backtest_loop)
from market.book import L2Book
from market.risk import build_limits, make_risk_state
from shm.records import EXEC_DTYPE, MARKET_DTYPE
from strategies.base import HALT_NAMES
from strategies.host import H_DISCARDED, H_KERNEL_ERRORS, make_hctl, run_strategy_batch


def strategy_id_of(cfg, name: str) -> int:
    """The strategy id ``name`` (its shard 0) has in a live instance of ``cfg``
    (common.runtime.strategy_ids, as stages/topology.py numbers them); a disabled strategy
    gets the next id after them."""
    ids = strategy_ids(cfg.strategies)
    return ids.get((name, 0), len(ids) + 1)


@dataclass
class BacktestResult:
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


def run_backtest(cfg, strategy: str | None = None, data=None, *, duration_s: float | None = None,
                 seed: int | None = None, event_rate_per_s: float | None = None,
                 queue_model: str | None = None, sample_ms: float = 100.0) -> BacktestResult:
    """One strategy instance (by name or kind; default: the first enabled) against the
    simulated venues of ``cfg`` for ``duration_s`` (default cfg.sim.duration_s), or against
    the record file ``data`` (its instruments; the strategy's instruments are taken from the
    file by key, else in file order). The strategy runs with the identity it has live (its
    strategy id from the config's order, shard 0), its own ``timer_ms`` and ``book_levels``."""
    from shm.instruments import InstrumentTable
    from strategies.registry import get_strategy_class

    sc = _strategy_config(cfg, strategy)
    if data is None:
        from market.sim import SimVenue, sim_advance_state, sim_submit_state

        table = InstrumentTable.from_config(cfg)
        instruments = list(table)
        rate = cfg.backtest.event_rate_per_s if event_rate_per_s is None else event_rate_per_s
        venue = SimVenue(cfg, instruments, seed, event_rate_per_s=rate)
        advance, submit, vs = sim_advance_state, sim_submit_state, venue.state
        t_start = venue.now_ns
        dur = cfg.sim.duration_s if duration_s is None else duration_s
        t_end = t_start + int(dur * 1e9)
        source = "sim"
        strat_insts = [table.by_key(k) for k in sc.instruments]
    else:
        from market.recordfile import instruments_from_header, open_record_file
        from market.replayvenue import ReplayVenue, replay_advance, replay_submit

        header, recs = open_record_file(data, MARKET_DTYPE)
        instruments = instruments_from_header(header)
        if not instruments:
            raise ValueError(f"{data}: the record file names no instruments")
        venue = ReplayVenue(np.asarray(recs), instruments, cfg,
                            queue_model=queue_model or cfg.backtest.queue_model,
                            seed=cfg.sim.seed if seed is None else seed)
        advance, submit, vs = replay_advance, replay_submit, venue.state
        t_start = venue.start_ns
        t_end = venue.end_ns if duration_s is None else t_start + int(duration_s * 1e9)
        source = str(data)
        by_key = {i.key: i for i in instruments}
        strat_insts = [by_key.get(k) for k in sc.instruments]
        if any(i is None for i in strat_insts):
            strat_insts = instruments[:len(sc.instruments)]
    n = max(i.instrument_id for i in instruments)
    strat = get_strategy_class(sc.kind)(sc.params, strat_insts, strategy_id_of(cfg, sc.name))
    book = L2Book(n, sc.book_levels)
    px, qty, meta = book.arrays
    sstate = strat.make_state(px, qty, meta, 256)
    limits = build_limits(cfg.risk, instruments)
    rstate = make_risk_state(limits)
    acct = np.zeros((n + 1, A_WORDS))
    for inst in instruments:
        acct[inst.instrument_id, A_VALUE] = float(inst.tick_size * inst.lot_size)
    sample_ns = int(sample_ms * 1e6)
    n_curve = int((t_end - t_start) // sample_ns) + 3
    curve = np.zeros((n_curve, 6))
    trades = np.zeros(1 << 20)
    qtimes = np.zeros(1 << 20, dtype=np.int64)
    acks = np.zeros((ACK_RING, 2), dtype=np.int64)
    cnt = np.zeros(C_WORDS, dtype=np.int64)
    md_buf = np.zeros(4096, dtype=MARKET_DTYPE)
    ex_buf = np.zeros(4096, dtype=EXEC_DTYPE)
    denials = np.zeros(256, dtype=EXEC_DTYPE)
    hctl = make_hctl(sc.timer_ms)
    initial_cash = float(cfg.backtest.initial_cash)
    args = (advance, submit, vs, run_strategy_batch, *type(strat).hooks(), sstate.ctx,
            sstate.st, sstate.p, limits, rstate, acct, curve, trades, qtimes, acks, cnt, md_buf,
            ex_buf, denials, hctl, np.int64(t_start))
    tail = (np.int64(sample_ns), initial_cash)
    # Compile first (a run of zero length: nothing is due at t_start, only two curve points
    # are written and then dropped), so wall_s measures the run and not numba.
    compile_s = time.perf_counter()
    backtest_loop(*args, np.int64(t_start), *tail)
    compile_s = time.perf_counter() - compile_s
    cnt[:] = 0
    hctl[:] = make_hctl(sc.timer_ms)
    curve[:] = 0.0
    wall = time.perf_counter()
    cpu = time.thread_time()
    backtest_loop(*args, np.int64(t_end), *tail)
    cpu = time.thread_time() - cpu
    wall = time.perf_counter() - wall
    counters = {name: int(cnt[i]) for i, name in enumerate(COUNTER_NAMES)}
    counters["kernel_errors"] = int(hctl[H_KERNEL_ERRORS])
    counters["intents_discarded"] = int(hctl[H_DISCARDED])
    counters["wall_s"] = wall
    counters["cpu_s"] = cpu          # this thread's CPU time: the figure on a shared machine
    counters["compile_s"] = compile_s
    counters["events"] = counters["md_records"] + counters["exec_reports"]
    counters["simulated_s"] = (t_end - t_start) / 1e9
    venue_counters = venue.counters() if hasattr(venue, "counters") else {}
    k = int(cnt[C_N_CURVE])
    c = curve[:k]
    curve_d = {"t_ns": c[:, 0].astype(np.int64), "equity": c[:, 1], "realized": c[:, 2],
               "unrealized": c[:, 3], "fees": c[:, 4], "abs_pos": c[:, 5]}
    from market.report import build_report

    tp = trades[:int(cnt[C_N_TRADES])].copy()
    qt = qtimes[:int(cnt[C_N_QUEUE])].copy()
    report = build_report(curve=curve_d, trade_pnls=tp, queue_times_ns=qt, counters=counters,
                          initial_cash=initial_cash)
    report["strategy"] = {"name": sc.name, "kind": sc.kind,
                          "instruments": [i.key for i in strat_insts]}
    report["source"] = source
    report["kernel_errors"] = counters["kernel_errors"]
    rt = sstate.ctx.rt[0]
    if rt["halted"]:
        report["halted"] = {"reason": HALT_NAMES.get(int(rt["halted"]), "halted"),
                            "at_s": (int(rt["halt_ns"]) - t_start) / 1e9}
    return BacktestResult(sc.name, sc.kind, source, report, curve_d, tp, qt, counters,
                          venue_counters, sstate)
