"""``run.py sim <subcommand>``: the market simulator on its own.

``run.py sim facts [--config C] [--instrument KEY] [--duration S] [--seed N] [--event-rate R]
[--data F] [--max-seconds S] [--json]`` measures the stylized facts of ``market.facts`` on the
simulator's output and, with --data, on a real recording, and prints them side by side.

``run.py sim paper avellaneda-stoikov ...`` reproduces a published table in its model world
(pipeline/sim_paper_cli.py, docs/avellaneda-stoikov.md).

Cold path (operator's shell). Registration is cheap (argparse only); the handlers import numpy
and numba.
"""
from __future__ import annotations

import sys

DEFAULT_DURATION_S = 600.0
DEFAULT_MAX_SECONDS = 3600.0


def register(sub) -> None:
    p = sub.add_parser("sim", help="the market simulator on its own: stylized facts against "
                       "real recordings (sim facts), its calibration (sim calibrate) and a "
                       "strategy on it beside a replay (sim compare)")
    sim_sub = p.add_subparsers(dest="sim_command", metavar="<subcommand>")
    sim_sub.required = True
    add_facts_parser(sim_sub)
    from pipeline.sim_paper_cli import add_paper_parser

    add_paper_parser(sim_sub)
    add_calibrate_parser(sim_sub)
    add_compare_parser(sim_sub)


def add_facts_parser(sim_sub) -> None:
    from pipeline.commands._inputs import non_negative_int

    p = sim_sub.add_parser(
        "facts", help="stylized facts of the simulator beside a real recording: spread, depth, "
        "trade sizes, returns, volatility clustering, trade-sign memory, impact, best-level "
        "lifetimes, passive-fill markouts (docs/simulator.md)")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--instrument", default=None, metavar="KEY",
                   help="simulated instrument SYMBOL@VENUE (default: the config's first)")
    p.add_argument("--duration", type=_positive_float, default=DEFAULT_DURATION_S,
                   help=f"simulated seconds (default {DEFAULT_DURATION_S:g})")
    p.add_argument("--seed", type=non_negative_int, default=None, help="override sim.seed")
    p.add_argument("--event-rate", type=_positive_float, default=None,
                   help="background events per second per venue (default: "
                   "backtest.event_rate_per_s)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="real recording to compare with: a LOBSTER message file (.csv or "
                   ".csv.gz, its orderbook file beside it), the Bitstamp events log (.log or "
                   ".log.gz) or an hftfarm record file (.rec)")
    p.add_argument("--data-instrument", default=None, metavar="KEY",
                   help="instrument of a record file to measure (default: its first)")
    p.add_argument("--max-seconds", type=_positive_float, default=DEFAULT_MAX_SECONDS,
                   help=f"read only the first that many seconds of --data (default "
                   f"{DEFAULT_MAX_SECONDS:g})")
    p.add_argument("--json", action="store_true", help="print a JSON dict instead of a table")
    p.set_defaults(func=run_facts)


def _positive_float(text: str) -> float:
    import argparse

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
    return v


def _progress(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def run_facts(args) -> int:
    import json

    from common.schema import ConfigError
    from pipeline.config import load_config
    from pipeline.exits import EXIT_USAGE, CliError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    inst = _sim_instrument(cfg, args.instrument)
    data = None
    if args.data is not None:
        data = _load_data(args.data, args.max_seconds, args.data_instrument)
    from market.facts import measure

    seed = cfg.sim.seed if args.seed is None else args.seed
    rate = args.event_rate or cfg.backtest.event_rate_per_s
    recs = simulate(cfg, inst, args.duration, seed, rate)
    _progress(f"sim: measuring {len(recs)} records of {inst.key}")
    columns = {"sim": measure(recs, inst, f"sim {cfg.source} seed {seed}, {rate:g} ev/s")}
    if data is not None:
        recs_d, inst_d, source, price_tick = data
        _progress(f"data: measuring {len(recs_d)} records of {inst_d.key}")
        try:
            columns["data"] = measure(recs_d, inst_d, source, price_tick)
        except ValueError as exc:
            raise CliError(f"--data {args.data}: {exc}", EXIT_USAGE) from None
    if args.json:
        print(json.dumps(columns, indent=1))
    else:
        print(format_table(columns))
    return 0


def _sim_instrument(cfg, key):
    from pipeline.exits import EXIT_USAGE, CliError
    from shm.instruments import InstrumentTable

    table = InstrumentTable.from_config(cfg)
    sims = {v.name for v in cfg.venues if v.kind == "sim"}
    insts = [i for i in table.instruments if i.venue in sims]
    if not insts:
        raise CliError(f"{cfg.source}: no instrument trades on a simulated venue", EXIT_USAGE)
    if key is None:
        return insts[0]
    for i in insts:
        if i.key == key:
            return i
    raise CliError(f"--instrument {key}: not a simulated instrument of {cfg.source}; choose "
                   f"one of {', '.join(i.key for i in insts)}", EXIT_USAGE)


def simulate(cfg, inst, duration_s: float, seed: int, rate: float, chunk_s: float = 30.0,
             flow_params=None, progress: bool = True):
    """The market records of ``inst`` from the config's simulated venues (every venue runs, as
    in a backtest; only this instrument's records are kept); ``flow_params``: the market's
    parameters (default: the calibrated defaults)."""
    import numpy as np

    from market.sim import SimVenue
    from shm.instruments import InstrumentTable
    from shm.records import EXEC_DTYPE, MARKET_DTYPE

    table = InstrumentTable.from_config(cfg)
    sims = [v.name for v in cfg.venues if v.kind == "sim"]
    sv = SimVenue(cfg, list(table.instruments), seed=seed, event_rate_per_s=rate, venues=sims,
                  flow_params=flow_params)
    out_md = np.zeros(1 << 16, dtype=MARKET_DTYPE)
    out_ex = np.zeros(1024, dtype=EXEC_DTYPE)
    start = sv.now_ns
    end = start + int(duration_s * 1e9)
    parts = []
    target = start
    while target < end:
        target = min(end, target + int(chunk_s * 1e9))
        while True:
            n_md, _n_ex = sv.step_until(target, out_md, out_ex)
            got = out_md[:n_md]
            parts.append(got[got["instrument_id"] == inst.instrument_id].copy())
            if n_md < len(out_md):
                break
        if progress:
            _progress(f"sim: {(target - start) / 1e9:.0f}/{duration_s:g} s simulated")
    return np.concatenate(parts) if parts else np.zeros(0, MARKET_DTYPE)


def _load_data(path: str, max_seconds: float, inst_key: str | None):
    """(records, instrument, source text, tick the ticks are reported in or None) of a
    recording, or CliError(2) naming the file."""
    import re
    import warnings
    from decimal import Decimal
    from pathlib import Path

    from pipeline.commands._inputs import input_file, sniff
    from pipeline.exits import EXIT_USAGE, CliError

    p = input_file(path, "--data", "recording")
    name = p.name
    m = re.match(r"^(.+_)message(_\d+\.csv(\.gz)?)$", name)
    if m:
        from market.lobster import LobsterError, convert, lobster_instrument, parse_name

        ob = p.with_name(f"{m.group(1)}orderbook{m.group(2)}")
        input_file(str(ob), "--data (its LOBSTER order book file)", "LOBSTER order book file")
        info = parse_name(p)
        _progress(f"data: reading LOBSTER {name} (first {max_seconds:g} s)")
        try:
            recs, meta = convert(p, ob, info["levels"], max_seconds)
        except LobsterError as exc:
            raise CliError(f"--data {exc}", EXIT_USAGE) from None
        # px_ticks are the file's 1/10000 USD; the market's tick is a cent (NASDAQ, >= $1)
        return recs, lobster_instrument(info["ticker"]), \
            f"LOBSTER {info['ticker']} {info['date']}, {meta['messages']} messages", \
            Decimal("0.01")
    if "orderbook_" in name and re.search(r"\.csv(\.gz)?$", name):
        raise CliError(f"--data {path}: a LOBSTER order book file; give the message file "
                       f"beside it (..._message_N.csv[.gz])", EXIT_USAGE)
    from market.bitstamp import BitstampError, bitstamp_instrument, looks_like_bitstamp

    if looks_like_bitstamp(p):
        from market.bitstamp import convert as bs_convert

        _progress(f"data: reading Bitstamp {name} (first {max_seconds:g} s)")
        try:
            recs, meta = bs_convert(p, max_seconds=max_seconds, progress=_progress)
        except BitstampError as exc:
            raise CliError(f"--data {exc}", EXIT_USAGE) from None
        return recs, bitstamp_instrument(), \
            f"Bitstamp BTC/USD, {meta['lines']} lines, {meta['trades']} trades", None
    if sniff(p) == "record":
        from market.recordfile import RecordFileError, instruments_from_header, open_record_file
        from shm.records import MARKET_DTYPE

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header, recs = open_record_file(p, MARKET_DTYPE)
        except RecordFileError as exc:
            raise CliError(f"--data {exc}", EXIT_USAGE) from None
        insts = instruments_from_header(header)
        if not insts:
            raise CliError(f"--data {path}: the record file names no instrument", EXIT_USAGE)
        inst = insts[0]
        if inst_key is not None:
            found = [i for i in insts if i.key == inst_key]
            if not found:
                raise CliError(f"--data-instrument {inst_key}: not in {path}; it holds "
                               f"{', '.join(i.key for i in insts)}", EXIT_USAGE)
            inst = found[0]
        import numpy as np

        recs = np.asarray(recs)
        t = recs["exch_ts_ns"] if not np.any(recs["exch_ts_ns"] == 0) else recs["recv_ts_ns"]
        if len(recs):
            recs = recs[t <= t[0] + int(max_seconds * 1e9)]
        # a converted LOBSTER file keeps LOBSTER's 1/10000 USD price unit; report in cents
        tick = Decimal("0.01") if inst.venue == "LOBSTER" else None
        return recs, inst, f"record file {Path(path).name}", tick
    raise CliError(f"--data {path}: not a recording this command reads; give a LOBSTER "
                   f"message file, the Bitstamp events log or an hftfarm record file",
                   EXIT_USAGE)


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------
def flatten(d, prefix: str = "") -> dict:
    """Nested dicts and lists -> {"a.b.c": value}; list items named by their index + 1 (or
    their "bucket")."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            name = v.get("bucket", i + 1) if isinstance(v, dict) else i + 1
            out.update(flatten({k: x for k, x in v.items() if k != "bucket"}
                               if isinstance(v, dict) else v, f"{prefix}q{name}."))
    else:
        out[prefix.rstrip(".")] = d
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e7:
            return f"{v:.4g}" if abs(v) < 1 else f"{v:,.2f}" if abs(v) < 1e4 else f"{v:,.0f}"
        return f"{v:.3e}"
    return str(v)


def format_table(columns: dict) -> str:
    flat = {name: flatten(col) for name, col in columns.items()}
    keys = list(next(iter(flat.values())))
    for f in flat.values():
        keys += [k for k in f if k not in keys]
    names = list(flat)
    width = max(len(k) for k in keys)
    cw = 14
    lines = [f"{'statistic':<{width}}  " + "  ".join(f"{n:>{cw}}" for n in names)]
    lines.append("-" * len(lines[0]))
    for k in keys:
        if k in ("source",):
            continue
        lines.append(f"{k:<{width}}  " + "  ".join(f"{_cell(flat[n].get(k)):>{cw}}"
                                                      for n in names))
    for n in names:
        lines.append(f"{n}: {columns[n].get('source', '')}")
    return "\n".join(lines)


# ---- sim calibrate, sim compare ----------------------------------------------------------
# ``run.py sim calibrate`` and ``run.py sim compare``: fit the simulated market to a real
# recording, and set the market maker on the fitted simulator beside the same strategy on the
# recording's replay.
#
# ``run.py sim calibrate --data F [--config C] [--duration S] [--seeds N] [--rounds R]
# [--max-seconds S] [--json] [--write FILE]`` measures the recording's stylized facts, fits
# ``market.flowparams.FlowParams`` to them (``market.calibrate``: method of simulated moments,
# coordinate search over common seeds), prints the fitted values (each with the statistic that
# drives it) and every fact of the fitted simulator beside the recording with its band, and
# with --write stores the fit (``market/calibrated.json`` holds the simulator's defaults).
#
# ``run.py sim compare --data F [--config C] [--strategy NAME] [--order-value Q] [--duration S]
# [--json]`` runs the strategy (default mm_btc) on the simulated venues and on the recording's
# replay for the same span with the same order value in quote currency, and prints the two
# reports' figures side by side (Sharpe, PnL, fills, 1 s maker markout).
#
# Cold path (operator's shell).
DEFAULT_SIM_SECONDS = 3600.0
DEFAULT_SEEDS = 3
DEFAULT_ROUNDS = 3
WHOLE = 1e9                      # --max-seconds default: the whole recording
SHARPE_FACTOR = 3.0              # the target of issue 14: sim Sharpe within x3 of the replay's


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def add_calibrate_parser(sim_sub) -> None:
    from pipeline.commands._inputs import non_negative_int

    p = sim_sub.add_parser(
        "calibrate", help="fit the simulated market's parameters to a real recording and "
        "print the fitted facts beside it with their bands (docs/simulator.md)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="the recording: the Bitstamp events log, a LOBSTER message file or an "
                   "hftfarm record file (as sim facts --data)")
    p.add_argument("--data-instrument", default=None, metavar="KEY",
                   help="instrument of a record file (default: its first)")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--instrument", default=None, metavar="KEY",
                   help="simulated instrument measured (default: the config's first)")
    p.add_argument("--duration", type=_positive_float, default=DEFAULT_SIM_SECONDS,
                   help=f"simulated seconds per seed and candidate (default "
                   f"{DEFAULT_SIM_SECONDS:g})")
    p.add_argument("--seeds", type=non_negative_int, default=DEFAULT_SEEDS,
                   help=f"seeds each candidate runs with, averaged (default {DEFAULT_SEEDS})")
    p.add_argument("--rounds", type=non_negative_int, default=DEFAULT_ROUNDS,
                   help=f"coordinate-search rounds (default {DEFAULT_ROUNDS}; 0: the "
                   f"method-of-moments guess only)")
    p.add_argument("--max-seconds", type=_positive_float, default=WHOLE,
                   help="read only the first that many seconds of --data (default: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--write", default=None, metavar="FILE",
                   help="write the fitted parameters there (market/calibrated.json is the "
                   "simulator's defaults)")
    p.set_defaults(func=run_calibrate)


def add_compare_parser(sim_sub) -> None:

    p = sim_sub.add_parser(
        "compare", help="a strategy on the simulated venues beside the same strategy on a "
        "recording's replay (Sharpe, PnL, fills, markouts)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="the Bitstamp events log or an hftfarm record file")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--strategy", default="mm_btc", help="strategy name (default mm_btc)")
    p.add_argument("--order-value", type=_positive_float, default=None, metavar="Q",
                   help="order size in quote currency on both markets (default: the "
                   "strategy's order_qty_lots on the simulated instrument, at its start price)")
    p.add_argument("--duration", type=_positive_float, default=None,
                   help="seconds of both runs (default: the whole recording)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_compare)


def _load_cfg(path):
    from common.schema import ConfigError
    from pipeline.config import load_config
    from pipeline.exits import EXIT_USAGE, CliError

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def with_volatility(cfg, vol_bps: float):
    """The config with every instrument's latent volatility set to vol_bps."""
    import dataclasses

    insts = tuple(dataclasses.replace(i, volatility_bps=vol_bps) for i in cfg.instruments)
    return dataclasses.replace(cfg, instruments=insts)


def make_evaluator(cfg, inst, duration_s: float, seeds):
    """params -> the seed-averaged targets of the simulated instrument."""
    from market.calibrate import average, targets
    from market.facts import measure

    def evaluate(params):
        c = with_volatility(cfg, params.vol_bps)
        out = []
        for seed in seeds:
            recs = simulate(c, inst, duration_s, seed, params.event_rate_per_s,
                            flow_params=params, progress=False)
            try:
                out.append(targets(measure(recs, inst)))
            except ValueError:       # no records of the instrument at all
                out.append({})
        keys = set().union(*out)
        return average([{k: d.get(k) for k in keys} for d in out])

    return evaluate


def calibrate(cfg, inst, real_facts: dict, duration_s: float, seeds, rounds: int,
              progress=None) -> dict:
    """The whole fit as a JSON-ready dict."""
    from market.calibrate import PARAMS, check, fit, initial_guess, targets
    from market.flowparams import FlowParams

    real = targets(real_facts)
    n_venue = sum(1 for i in cfg.instruments if i.venue == inst.venue)
    start = initial_guess(real, FlowParams.default(), n_venue)
    res = fit(make_evaluator(cfg, inst, duration_s, seeds), real, start, rounds, progress)
    rows = check(res.sim, real)
    drivers = {name: stat for name, stat, _f in PARAMS}
    return {
        "source": real_facts.get("source", ""),
        "instrument": inst.key,
        "method": (f"method of simulated moments: method-of-moments start, then {rounds} "
                   f"rounds of coordinate search; {len(seeds)} seeds x {duration_s:g} s "
                   f"simulated per candidate ({cfg.source}, {inst.key})"),
        "params": res.params.to_dict(),
        "drivers": {k: drivers.get(k, "(not fitted: set by the start)")
                    for k in res.params.to_dict()},
        "loss": res.loss,
        "evaluations": res.evaluations,
        "seeds": list(seeds),
        "duration_s": duration_s,
        "facts": rows,
        "in_band": sum(r["in_band"] for r in rows),
        "misses": [r["fact"] for r in rows if not r["in_band"]],
    }


def run_calibrate(args) -> int:
    import json
    from pathlib import Path

    from market.facts import measure
    from pipeline.commands._inputs import output_file
    from pipeline.exits import EXIT_USAGE, CliError

    if args.seeds < 1:
        raise CliError(f"--seeds {args.seeds}: must be >= 1", EXIT_USAGE)
    if args.write is not None:
        output_file(args.write, "--write")
    cfg = _load_cfg(args.config)
    inst = _sim_instrument(cfg, args.instrument)
    recs_d, inst_d, source, price_tick = _load_data(args.data, args.max_seconds,
                                                    args.data_instrument)
    try:
        real_facts = measure(recs_d, inst_d, source, price_tick)
    except ValueError as exc:
        raise CliError(f"--data {args.data}: {exc}", EXIT_USAGE) from None
    seeds = [cfg.sim.seed + k for k in range(args.seeds)]
    out = calibrate(cfg, inst, real_facts, args.duration, seeds, args.rounds, _progress)
    out["data"] = str(args.data)
    if args.write is not None:
        doc = {"note": "fitted by: python run.py sim calibrate --data "
                       f"{Path(args.data).name} --write <this file> (docs/simulator.md)",
               **{k: out[k] for k in ("source", "instrument", "method", "params", "drivers",
                                      "loss", "evaluations", "seeds", "duration_s", "facts",
                                      "misses")}}
        try:
            Path(args.write).write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as exc:
            raise CliError(f"--write {args.write}: {exc.strerror or exc}") from None
        _progress(f"wrote {args.write}")
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(format_calibration(out))
    return 0


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}"


def format_calibration(out: dict) -> str:
    lines = [f"calibrated to {out['source']} ({out['data'] if 'data' in out else ''})",
             out["method"], f"loss {out['loss']:.3f} after {out['evaluations']} simulations",
             "", f"{'parameter':<20} {'fitted':>12}  driven by"]
    for k, v in out["params"].items():
        lines.append(f"{k:<20} {v:>12.5g}  {out['drivers'][k]}")
    lines += ["", f"{'fact':<20} {'sim':>10} {'real':>10}  {'band':<18} in band"]
    for r in out["facts"]:
        lines.append(f"{r['fact']:<20} {_num(r['sim']):>10} {_num(r['real']):>10}  "
                     f"{r['band']:<18} {'yes' if r['in_band'] else 'NO'}")
    lines.append(f"{out['in_band']} of {len(out['facts'])} facts in band; misses: "
                 f"{', '.join(out['misses']) or 'none'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# sim compare
# ------------------------------------------------------------------------------------------
def _scaled_config(cfg, strategy: str, qty_lots: int, scale: float):
    """cfg with the strategy's order_qty_lots = qty_lots, its max_inventory_lots and the risk
    limits in lots scaled by ``scale`` (the same position in quote currency on another lot)."""
    import dataclasses

    from strategies.backtest import _strategy_config

    sc = _strategy_config(cfg, strategy)
    params = dict(sc.params)
    params["order_qty_lots"] = int(qty_lots)
    if "max_inventory_lots" in params or sc.kind == "market_making":
        from strategies.market_making import MarketMakingParams

        base = params.get("max_inventory_lots", MarketMakingParams.max_inventory_lots)
        params["max_inventory_lots"] = max(1, int(round(base * scale)))
    strats = tuple(dataclasses.replace(s, params=params) if s.name == sc.name else s
                   for s in cfg.strategies)
    risk = dataclasses.replace(
        cfg.risk, max_order_qty_lots=max(1, int(round(cfg.risk.max_order_qty_lots * scale))),
        max_position_lots=max(1, int(round(cfg.risk.max_position_lots * scale))))
    return dataclasses.replace(cfg, strategies=strats, risk=risk)


def _summary(res) -> dict:
    r = res.report
    mk = (r.get("markouts") or {}).get("maker", {}).get("1s", {})
    return {"source": res.source, "sharpe": r["sharpe"], "sharpe_basis": r["sharpe_basis"],
            "pnl": r["pnl"]["total"], "fees": r["pnl"]["fees"], "fills": r["trades"],
            "max_drawdown": r["max_drawdown"],
            "maker_markout_1s_ticks": mk.get("mean_ticks"),
            "maker_markout_1s_quote": mk.get("mean_quote"),
            "warnings": [w["code"] for w in r.get("warnings", [])]}


def run_compare(args) -> int:
    import json
    import os
    from decimal import Decimal
    from pipeline.exits import EXIT_USAGE, CliError
    from strategies.backtest import _strategy_config, run_backtest

    cfg = _load_cfg(args.config)
    try:
        sc = _strategy_config(cfg, args.strategy)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    inst = _sim_instrument(cfg, sc.instruments[0])
    ic = next(i for i in cfg.instruments if i.key == inst.key)
    qty_sim = _default_qty(sc)
    lot_value_sim = Decimal(ic.start_price) * inst.lot_size
    value = float(lot_value_sim * qty_sim) if args.order_value is None else args.order_value
    qty_sim = max(1, round(value / float(lot_value_sim)))
    rec_path, tmp = _record_file(args.data)
    try:
        from market.recordfile import instruments_from_header, open_record_file
        from shm.records import MARKET_DTYPE

        header, recs = open_record_file(rec_path, MARKET_DTYPE)
        d_inst = instruments_from_header(header)[0]
        t = recs["exch_ts_ns"]
        span = (int(t[-1]) - int(t[0])) / 1e9
        mid0 = _first_mid(recs, d_inst)
        lot_value_d = mid0 * float(d_inst.lot_size)
        qty_d = max(1, round(value / lot_value_d))
        dur = span if args.duration is None else min(span, args.duration)
        _progress(f"compare: {sc.name} with orders of {value:.4g} quote: {qty_sim} lots on "
                  f"{inst.key}, {qty_d} lots on {d_inst.key}; {dur:.0f} s each")
        cfg_sim = _scaled_config(cfg, sc.name, qty_sim, qty_sim / max(1, _default_qty(sc)))
        cfg_rep = _scaled_config(cfg, sc.name, qty_d, qty_d / max(1, _default_qty(sc)))
        sim = run_backtest(cfg_sim, sc.name, duration_s=dur)
        rep = run_backtest(cfg_rep, sc.name, rec_path, duration_s=dur)
    except (ValueError, KeyError) as exc:
        raise CliError(f"sim compare: {exc}", EXIT_USAGE) from None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    a, b = _summary(sim), _summary(rep)
    ratio = (a["sharpe"] / b["sharpe"]) if b["sharpe"] else None
    within = (ratio is not None and ratio > 0
              and 1.0 / SHARPE_FACTOR <= ratio <= SHARPE_FACTOR)
    out = {"strategy": sc.name, "order_value": value, "duration_s": dur,
           "sim": a, "replay": b, "sharpe_ratio_sim_over_replay": ratio,
           "sharpe_within_factor_3": within,
           "markout_1s_adverse": {
               "sim": a["maker_markout_1s_quote"] is not None
               and a["maker_markout_1s_quote"] < 0,
               "replay": b["maker_markout_1s_quote"] is not None
               and b["maker_markout_1s_quote"] < 0}}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        rows = [("source", "source"), ("fills", "fills"), ("pnl", "pnl"), ("fees", "fees"),
                ("max_drawdown", "max_drawdown"), ("sharpe", "sharpe"),
                ("maker markout 1s, ticks", "maker_markout_1s_ticks"),
                ("maker markout 1s, quote", "maker_markout_1s_quote"),
                ("warnings", "warnings")]
        print(f"{sc.name}, orders of {value:.4g} quote, {dur:.0f} s each")
        print(f"{'':<26} {'simulator':>22} {'replay':>22}")
        for label, k in rows:
            va, vb = a[k], b[k]
            fa = _num(va) if isinstance(va, float) else str(va)
            fb = _num(vb) if isinstance(vb, float) else str(vb)
            if k == "source":
                fa, fb = fa[-22:], fb[-22:]
            print(f"{label:<26} {fa:>22} {fb:>22}")
        print(f"Sharpe ratio sim / replay: {_num(ratio)} (target within x{SHARPE_FACTOR:g}: "
              f"{'yes' if within else 'NO'}); 1 s maker markout adverse: sim "
              f"{out['markout_1s_adverse']['sim']}, replay {out['markout_1s_adverse']['replay']}")
        print(f"sharpe basis: {a['sharpe_basis']}")
    return 0


def _default_qty(sc) -> int:
    from strategies.market_making import MarketMakingParams

    return int(dict(sc.params).get("order_qty_lots", MarketMakingParams.order_qty_lots))


def _first_mid(recs, inst) -> float:
    from market.facts import build_tape

    tape = build_tape(recs, inst.instrument_id, inst.tick_size, inst.lot_size)
    t, mid = tape.valid_mid()
    if len(mid) == 0:
        raise ValueError("the recording never has a valid book")
    return float(mid[0]) / 2.0 * float(inst.tick_size)


def _record_file(path: str):
    """(record file path, temporary file to remove or None): a Bitstamp log is converted."""
    import tempfile

    from pipeline.commands._inputs import input_file, sniff
    from pipeline.exits import EXIT_USAGE, CliError

    p = input_file(path, "--data", "recording")
    from market.bitstamp import BitstampError, bitstamp_instrument, convert, looks_like_bitstamp

    if looks_like_bitstamp(p):
        from market.recordfile import RecordFileWriter
        from shm.records import MARKET_DTYPE

        try:
            recs, meta = convert(p, progress=_progress)
        except BitstampError as exc:
            raise CliError(f"--data {exc}", EXIT_USAGE) from None
        import os

        fd, tmp = tempfile.mkstemp(suffix=".rec", prefix="hftfarm-compare-")
        os.close(fd)
        try:
            with RecordFileWriter(tmp, MARKET_DTYPE, [bitstamp_instrument()], meta=meta) as w:
                w.append(recs)
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp, tmp
    if sniff(p) == "record":
        return str(p), None
    raise CliError(f"--data {path}: not a Bitstamp events log or an hftfarm record file",
                   EXIT_USAGE)
