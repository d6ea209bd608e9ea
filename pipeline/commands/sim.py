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

DEFAULT_DURATION_S = 600.0
DEFAULT_MAX_SECONDS = 3600.0


def register(sub) -> None:
    p = sub.add_parser("sim", help="the market simulator on its own: stylized facts against "
                       "real recordings (sim facts), its calibration (sim calibrate) and a "
                       "strategy on it beside a replay (sim compare)")
    sim_sub = p.add_subparsers(dest="sim_command", metavar="<subcommand>")
    sim_sub.required = True
    add_facts_parser(sim_sub)
    from pipeline.sim_calibrate_cli import add_calibrate_parser, add_compare_parser
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
