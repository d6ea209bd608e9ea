"""``run.py replay <source> ...``: convert recorded market data into a record file.

Cold path, operator's shell. ``replay lobster`` is market.lobster (LOBSTER message + order book
files); ``replay binance|coinbase|kraken`` hand the venue recordings to the feed handlers via
``feeds.convert.convert_recording`` (imported lazily, so this command registers even in a
checkout without the feeds package).
"""
from __future__ import annotations

VENUES = ("binance", "coinbase", "kraken")


def register(sub) -> None:
    p = sub.add_parser("replay", help="convert recorded market data (LOBSTER, venue recordings) "
                       "into an hftfarm record file")
    rsub = p.add_subparsers(dest="source", metavar="<source>")
    rsub.required = True
    lp = rsub.add_parser("lobster", help="LOBSTER message + order book files -> L2 level updates "
                         "(diffs of consecutive book rows) and trades (types 4, 5)")
    lp.add_argument("--message", required=True, help="LOBSTER ..._message_N.csv")
    lp.add_argument("--orderbook", required=True, help="LOBSTER ..._orderbook_N.csv")
    lp.add_argument("--levels", type=int, required=True, help="levels to use (<= the file's N)")
    lp.add_argument("--out", required=True, help="record file to write")
    lp.set_defaults(func=run_lobster)
    for venue in VENUES:
        vp = rsub.add_parser(venue, help=f"{venue} recording(s) -> record file through the live "
                             "feed handler")
        vp.add_argument("--file", nargs="+", required=True, help="recording file(s), in order")
        vp.add_argument("--out", required=True, help="record file to write")
        vp.add_argument("--config", default=None, help="config whose instruments to use")
        vp.set_defaults(func=run_venue, venue=venue)


def run_lobster(args) -> int:
    from pipeline.cli import EXIT_USAGE, CliError

    if args.levels < 1:
        raise CliError(f"--levels must be >= 1, got {args.levels}", EXIT_USAGE)
    from market.lobster import LobsterError, convert_to_file

    try:
        n = convert_to_file(args.message, args.orderbook, args.levels, args.out)
    except FileNotFoundError as exc:
        raise CliError(f"LOBSTER file not found: {exc.filename}") from None
    except LobsterError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.out}: {n} market records from {args.message}")
    return 0


def run_venue(args) -> int:
    from pipeline.cli import CliError

    try:
        from feeds.convert import convert_recording
    except ImportError as exc:
        raise CliError(f"replay {args.venue} needs feeds.convert.convert_recording, which this "
                       f"checkout does not provide ({exc})") from None
    try:
        summary = convert_recording(args.venue, args.file, args.out, args.config)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"replay {args.venue}: {exc}") from None
    n = summary.get("records", "?") if isinstance(summary, dict) else "?"
    print(f"{args.out}: {n} market records from {len(args.file)} {args.venue} recording(s)")
    return 0
