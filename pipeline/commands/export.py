"""``run.py export RUN_DIR --parquet OUT``: the journal of a live run or a backtest as Parquet
(pipeline/export_parquet.py): OUT/orders.parquet and OUT/executions.parquet, named and typed
columns, decimal prices. Cold path."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run's journal records to Parquet (decimal "
                       "prices, named typed columns)")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="runs/<instance>/run-<time> (or .../latest), or a backtest's --out")
    p.add_argument("--parquet", required=True, metavar="OUT",
                   help="output folder: OUT/orders.parquet and OUT/executions.parquet")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.exits import EXIT_USAGE, CliError
    from pipeline.rundir import RunDirError, load_run_dir

    try:
        rd = load_run_dir(args.run_dir)
    except RunDirError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    from pipeline.export_parquet import export_parquet

    try:
        written = export_parquet(rd, args.parquet)
    except OSError as exc:
        raise CliError(f"--parquet {args.parquet}: cannot write: {exc.strerror or exc}",
                       1) from None
    for name, n in written.items():
        print(f"wrote {args.parquet}/{name}: {n} rows")
    return 0
