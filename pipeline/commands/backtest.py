"""``run.py backtest [--config F] [--strategy NAME] [--data F] [--json] [--out DIR]``.

Cold path (operator's shell). Runs the deterministic backtest of ``strategies.backtest`` for one
strategy instance, or for each enabled instance when --strategy is not given, and writes the
report, the equity curve (CSV) and its plot (PNG) into --out (default
runs/backtest/<UTC timestamp>). Imports numpy/numba only inside the handler.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "backtest", help="deterministic backtest of a strategy on simulated venues or recorded "
        "data; writes report, equity CSV and PNG")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--strategy", default=None,
                   help="strategy instance name or kind from [[strategies]] (default: every "
                   "enabled instance, one after the other)")
    p.add_argument("--data", default=None,
                   help="record file (market/recordfile.py format, e.g. from `run.py replay "
                   "lobster`): replay it instead of simulating; passive fills then come from "
                   "the queue model backtest.queue_model")
    p.add_argument("--queue-model", default=None, choices=("conservative", "probabilistic"),
                   help="override backtest.queue_model for --data")
    p.add_argument("--duration", type=float, default=None,
                   help="simulated seconds (default: sim.duration_s; with --data: the file)")
    p.add_argument("--seed", type=int, default=None, help="override sim.seed")
    p.add_argument("--event-rate", type=float, default=None,
                   help="background events per second per simulated venue "
                   "(default: backtest.event_rate_per_s, 1000)")
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON")
    p.add_argument("--out", default=None, help="output folder (default runs/backtest/<UTC time>)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from common.schema import ConfigError
    from pipeline.commands._inputs import output_dir
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

    from strategies.backtest import _strategy_config, run_backtest
    from market.report import format_text, to_json, write_equity_csv, write_equity_png

    if args.strategy is not None:
        try:
            names = [_strategy_config(cfg, args.strategy).name]
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    else:
        names = [s.name for s in cfg.strategies if s.enabled]
        if not names:
            raise CliError(f"{cfg.source}: no enabled [[strategies]] entry", EXIT_USAGE)
    out = Path(args.out) if args.out else \
        Path(cfg.instance.run_dir) / "backtest" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output_dir(str(out), "--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot create the directory: {exc.strerror or exc}; "
                       f"choose another --out", EXIT_USAGE) from None
    reports = {}
    skipped: list[str] = []
    for name in names:
        try:
            res = run_backtest(cfg, name, args.data, duration_s=args.duration, seed=args.seed,
                               event_rate_per_s=args.event_rate or cfg.backtest.event_rate_per_s,
                               queue_model=args.queue_model)
        except (ValueError, KeyError) as exc:
            raise CliError(f"backtest {name}: {exc}", EXIT_USAGE) from None
        except ConfigError as exc:
            if args.data is not None and args.strategy is None:
                # a replay of a recording runs the strategies that can trade what it holds
                skipped.append(f"{name} ({exc})")
                continue
            hint = "" if args.data is None else (
                f"; {args.data} may not hold the instruments {name} trades: choose a strategy "
                f"for them with --strategy")
            raise CliError(f"backtest {name}: {exc}{hint}", EXIT_USAGE) from None
        write_equity_csv(out / f"{name}_equity.csv", res.curve)
        write_equity_png(out / f"{name}_equity.png", res.curve,
                         f"{name} ({res.kind}) on {res.source}")
        (out / f"{name}_report.json").write_text(to_json(res.report) + "\n")
        reports[name] = res.report
        if not args.json:
            print(format_text(res.report, name))
            print(f"  wrote {out / (name + '_equity.csv')}, .png, _report.json")
    for why in skipped:
        print(f"skipped {why}", file=sys.stderr)
    if not reports:
        raise CliError(f"no strategy of {cfg.source} can trade what {args.data} holds; "
                       "choose one for it with --strategy", EXIT_USAGE)
    if args.json:
        print(to_json(reports if len(reports) > 1 else next(iter(reports.values()))))
    sys.stdout.flush()
    return 0


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
