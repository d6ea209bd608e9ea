"""``run.py backtest [--config F] [--strategy NAME] [--data F] [--params-schedule F] [--json]
[--out DIR]``.

Cold path (operator's shell). Runs the deterministic backtest of ``strategies.backtest``: one
strategy instance alone (--strategy), or every enabled instance together in one simulated
market under one risk state (the default), and writes the report(s), the equity curve(s) (CSV)
and plot(s) (PNG) into --out (default runs/backtest/<UTC timestamp>): per strategy
``<name>_equity.csv|png`` and ``<name>_report.json``, for the run of several the total as
``_total_equity.csv|png`` and ``_total_report.json`` (no strategy name starts with ``_``), and
``journal/`` (the intents and venue reports in the live journal's format, for ``run.py report``
and ``run.py export``). On a terminal it shows its progress on stderr; piped, nothing.
Imports numpy/numba only inside the handler.
"""
from __future__ import annotations

SCHEDULE_HELP = """\
--params-schedule FILE: parameter changes at simulated times, a TOML file (JSON with the
same structure when the name ends in .json). Each change is applied as `run.py set` applies
it live and validated as the config is (exit 2 naming the entry and the key); strategy may
be left out with --strategy. Example:
    [[change]]
    at_s = 60
    strategy = "mm_btc"
    params = { gamma = 0.5, order_qty_lots = 5 }"""


JOURNAL_RECORDS = 200_000     # x (64 + 128) bytes kept in memory by the trace: about 38 MB


def register(sub) -> None:
    import argparse

    p = sub.add_parser(
        "backtest", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="deterministic backtest of the configured strategies (together, or one with "
        "--strategy) on simulated venues or recorded data; writes reports, equity CSV and PNG",
        epilog=SCHEDULE_HELP)
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--strategy", default=None,
                   help="strategy instance name or kind from [[strategies]]: that instance "
                   "alone (default: every enabled instance together, in one market, under one "
                   "risk state, each with its own report and the total)")
    p.add_argument("--data", default=None,
                   help="record file (market/recordfile.py format, from `run.py replay "
                   "lobster|binance|coinbase|kraken`): replay it instead of simulating; passive "
                   "fills then come from the queue model backtest.queue_model. The replay runs "
                   "on each record's exchange time, its receive time where it has none "
                   "(market/replayvenue.py); a file whose times span more than a week is "
                   "refused. Without --strategy, the strategies that can trade what it holds "
                   "run together (the others are skipped)")
    p.add_argument("--queue-model", default=None, choices=("conservative", "probabilistic"),
                   help="override backtest.queue_model for --data")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds (default: sim.duration_s; with --data: the file)")
    p.add_argument("--seed", type=int, default=None, help="override sim.seed")
    p.add_argument("--event-rate", type=float, default=None,
                   help="background events per second per simulated venue "
                   "(default: backtest.event_rate_per_s, the calibrated rate of "
                   "market/calibrated.json)")
    p.add_argument("--params-schedule", default=None, metavar="FILE",
                   help="parameter changes at simulated times (TOML; see below)")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    p.add_argument("--out", default=None, help="output folder (default runs/backtest/<UTC time>)")
    p.add_argument("--journal-records", type=int, default=JOURNAL_RECORDS, metavar="N",
                   help="also write the first N intents and N venue reports into OUT/journal "
                   "in the live journal's format, so `run.py report OUT` and `run.py export "
                   f"OUT` read it as they read a live run (default {JOURNAL_RECORDS}; 0: none)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time
    from pathlib import Path

    from common.schema import ConfigError
    from pipeline.commands._inputs import input_file, output_dir
    from pipeline.config import load_config
    from pipeline.exits import EXIT_USAGE, CliError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.data is not None:
        _check_data(args.data)
    if args.duration is not None and args.duration <= 0:
        raise CliError(f"--duration {args.duration}: must be > 0 seconds", EXIT_USAGE)
    if args.event_rate is not None and args.event_rate <= 0:
        raise CliError(f"--event-rate {args.event_rate}: must be > 0", EXIT_USAGE)
    if args.journal_records < 0:
        raise CliError(f"--journal-records {args.journal_records}: must be >= 0", EXIT_USAGE)
    schedule = None
    if args.params_schedule is not None:
        from strategies.param_schedule import load_schedule

        input_file(args.params_schedule, "--params-schedule", "schedule file (TOML)")
        try:
            schedule = load_schedule(args.params_schedule)
        except ConfigError as exc:
            raise CliError(f"--params-schedule {exc}", EXIT_USAGE) from None

    from strategies.backtest import _strategy_config, run_backtest

    if args.strategy is not None:
        try:
            name = _strategy_config(cfg, args.strategy).name
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    else:
        name = None
        if not any(s.enabled for s in cfg.strategies):
            raise CliError(f"{cfg.source}: no enabled [[strategies]] entry", EXIT_USAGE)
    out = Path(args.out) if args.out else \
        Path(cfg.instance.run_dir) / "backtest" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output_dir(str(out), "--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create the directory: {exc.strerror or exc}; "
                       f"choose another --out", EXIT_USAGE) from None
    what = f"backtest {name}" if name else "backtest"
    from pipeline.progress import Progress

    try:
        with Progress(what) as prog:
            prog.phase("simulating")
            res = run_backtest(cfg, name, args.data, duration_s=args.duration, seed=args.seed,
                               event_rate_per_s=args.event_rate or
                               cfg.backtest.event_rate_per_s,
                               queue_model=args.queue_model, schedule=schedule,
                               trace=args.journal_records,
                               progress=lambda done, total: prog.update(done, total))
            prog.phase("writing")
    except (ValueError, KeyError) as exc:
        raise CliError(f"{what}: {exc}", EXIT_USAGE) from None
    except ConfigError as exc:
        if schedule is not None and exc.source == schedule.source:
            raise CliError(f"--params-schedule {exc}", EXIT_USAGE) from None
        hint = ""
        if args.data is not None:
            hint = (f"; {args.data} may not hold the instruments {name} trades: choose a "
                    f"strategy for them with --strategy" if name else
                    "; choose a strategy for it with --strategy")
        raise CliError(f"{what}: {exc}{hint}", EXIT_USAGE) from None
    if res.trace is not None:
        _write_journal(out / "journal", cfg, args.data, res, name)
    if name is not None:
        _write(out, name, res, f"{name} ({res.kind}) on {res.source}")
        _print(args, res.report, name, out)
    else:
        for why in res.skipped.items():
            print(f"skipped {why[0]} ({why[1]})", file=sys.stderr)
        for n, part in res.strategies.items():
            _write(out, n, part, f"{n} ({part.kind}) on {res.source}, with "
                   f"{', '.join(x for x in res.strategies if x != n) or 'nothing else'}")
        _write(out, "_total", res.total,
               f"total of {', '.join(res.strategies)} on {res.source}")
        _print(args, res.report, None, out)
    sys.stdout.flush()
    return 0


def _write(out, name: str, res, title: str) -> None:
    from market.report import to_json, write_equity_csv, write_equity_png

    write_equity_csv(out / f"{name}_equity.csv", res.curve)
    write_equity_png(out / f"{name}_equity.png", res.curve, title)
    (out / f"{name}_report.json").write_text(to_json(res.report) + "\n")


def _write_journal(jdir, cfg, data, res, name) -> None:
    """The backtest's trace (every intent as the gate decided it, every venue report) as
    ``journal/orders-0.rec`` and ``exec-0.rec`` of the live journal's format, with the
    instrument table in their headers and ``strategies.json`` (strategy id -> name)."""
    import json
    import sys

    import numpy as np

    from market.recordfile import RecordFileWriter, instruments_from_header, read_header
    from shm.instruments import InstrumentTable
    from shm.records import EXEC_DTYPE, ORDER_DTYPE
    from strategies.backtest import strategy_id_of

    insts = instruments_from_header(read_header(data)) if data else \
        list(InstrumentTable.from_config(cfg))
    jdir.mkdir(parents=True, exist_ok=True)
    tr = res.trace
    meta = {"backtest": True, "source": res.source}
    for fname, dtype, key, total in (("orders-0.rec", ORDER_DTYPE, "intents", "n_intents"),
                                     ("exec-0.rec", EXEC_DTYPE, "reports", "n_reports")):
        recs = np.array(tr[key], dtype=dtype)
        # the journal's readers keep the first copy of each ring position: a backtest has no
        # rings, so its records are numbered in the order the gate / the venue made them
        recs["ring_seq"] = np.arange(1, len(recs) + 1)
        with RecordFileWriter(jdir / fname, dtype, insts, meta=meta) as w:
            w.append(recs)
        if tr[total] > len(recs):
            print(f"journal: kept the first {len(recs)} of {tr[total]} {key} "
                  "(raise --journal-records)", file=sys.stderr)
    names = [name] if name is not None else list(res.strategies)
    (jdir / "strategies.json").write_text(json.dumps(
        {str(strategy_id_of(cfg, n)): n for n in names}, indent=1))


def _print(args, report: dict, name: str | None, out) -> None:
    from market.report import format_portfolio, format_text, to_json

    if args.json:
        print(to_json(report))
    elif name is not None:
        print(format_text(report, name))
        print(f"  wrote {out / (name + '_equity.csv')}, .png, _report.json")
    else:
        print(format_portfolio(report))
        print(f"  wrote <strategy>_equity.csv, .png, _report.json and _total_* into {out}")


def _check_data(path: str) -> None:
    """--data as a readable record file of market records, or CliError(2) naming the fix."""
    import warnings

    from market.recordfile import RecordFileError, open_record_file
    from pipeline.commands._inputs import input_file, record_file_hint
    from pipeline.exits import EXIT_USAGE, CliError
    from shm.records import MARKET_DTYPE

    input_file(path, "--data", "record file")
    try:
        with warnings.catch_warnings():     # a cut-short file warns once, in the run itself
            warnings.simplefilter("ignore")
            open_record_file(path, MARKET_DTYPE)
    except RecordFileError as exc:
        raise CliError(f"--data {exc}; {record_file_hint(path)}", EXIT_USAGE) from None
