"""``run.py book --data F --levels N --csv OUT``: the L2 book after every event batch, as CSV.

Cold path, operator's shell (the book itself is market.book's @njit kernels). Rows are in
LOBSTER's order book layout: ask px, ask size, bid px, bid size per level, level 1 first;
prices in units of 0.0001 (LOBSTER's USD x 10000), sizes in lots (``--units ticks`` / ``decimal``
for instruments with finer ticks); empty levels hold the dummy prices 9999999999 /
-9999999999 with size 0, as LOBSTER's read-me says. One row per record
flagged MFLAG_LAST_IN_BATCH of the chosen instrument.
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("book", help="write the book after every event batch of a record file as "
                       "LOBSTER-layout CSV")
    p.add_argument("--data", required=True, help="record file of market records")
    p.add_argument("--levels", type=int, required=True, help="levels per side in each row")
    p.add_argument("--csv", required=True, help="CSV file to write")
    p.add_argument("--instrument", type=int, default=None,
                   help="instrument id (default: the file's only instrument)")
    p.add_argument("--units", choices=("lobster", "ticks", "decimal"), default="lobster",
                   help="lobster (default): prices x 10000 and sizes in lots, as LOBSTER; "
                   "ticks: px_ticks and qty_lots; decimal: exact decimal price and quantity")
    p.set_defaults(func=run)


def run(args) -> int:
    from decimal import Decimal

    import numpy as np

    from market.lobster import book_rows
    from market.recordfile import RecordFileError, open_record_file
    from pipeline.commands._inputs import input_file, output_file, record_file_hint
    from pipeline.exits import EXIT_USAGE, CliError
    from shm.records import MARKET_DTYPE

    if args.levels < 1:
        raise CliError(f"--levels must be >= 1, got {args.levels}", EXIT_USAGE)
    input_file(args.data, "--data", "record file")
    output_file(args.csv, "--csv")
    try:
        header, records = open_record_file(args.data, MARKET_DTYPE)
    except RecordFileError as exc:
        raise CliError(f"--data {exc}; {record_file_hint(args.data)}", EXIT_USAGE) from None
    insts = {int(d["instrument_id"]): d for d in header["instruments"]}
    names = ", ".join(f"{k}={v['symbol']}@{v['venue']}" for k, v in insts.items())
    ins = args.instrument
    if ins is None:
        if len(insts) != 1:
            raise CliError(f"{args.data} holds {len(insts)} instruments ({names}); choose one "
                           f"with --instrument", EXIT_USAGE)
        ins = next(iter(insts))
    if ins not in insts:
        raise CliError(f"--instrument {ins}: {args.data} has no instrument {ins}; its "
                       f"instruments are {names or 'none'}", EXIT_USAGE)
    tick, lot = Decimal(insts[ins]["tick_size"]), Decimal(insts[ins]["lot_size"])
    scale = tick * 10000 if args.units == "lobster" else Decimal(1)
    if scale != scale.to_integral_value():
        raise CliError(f"{insts[ins]['symbol']}: tick size {tick} is finer than LOBSTER's price "
                       f"unit 0.0001; use --units ticks or --units decimal", EXIT_USAGE)
    rows = book_rows(np.asarray(records), ins, args.levels, int(scale))
    try:
        _write_csv(args, rows, tick, lot)
    except OSError as exc:
        raise CliError(f"--csv {args.csv}: cannot write: {exc.strerror or exc}") from None
    print(f"{args.csv}: {len(rows)} rows x {args.levels} levels")
    return 0


def _write_csv(args, rows, tick, lot) -> None:
    with open(args.csv, "w") as f:
        for r in rows.tolist():
            if args.units == "decimal":
                r = [_decimal(v, tick if k % 2 == 0 else lot, k % 2 == 0)
                     for k, v in enumerate(r)]
            f.write(",".join(map(str, r)))
            f.write("\n")


def _decimal(v: int, step, is_price: bool) -> str:
    from market.lobster import DUMMY_ASK_PX, DUMMY_BID_PX

    if is_price and v in (DUMMY_ASK_PX, DUMMY_BID_PX):
        return str(v)   # LOBSTER's empty-level markers stay as they are
    return format(step * v, "f")
