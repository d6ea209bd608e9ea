"""``run.py replay <source> ...``: convert recorded market data into a record file.

Cold path, operator's shell. ``replay lobster`` is market.lobster (LOBSTER message + order book
files); ``replay binance|coinbase|kraken`` hand the venue recordings to the feed handlers via
``feeds.convert.convert_recording`` (imported lazily, so this command registers even in a
checkout without the feeds package); ``replay bitstamp`` is market.bitstamp (the Bitstamp
BTC/USD order-event log of ../shared/data/calibration/bitstamp/: L3 events aggregated into L2
levels, trades with their inferred aggressor, the top-20 snapshots).
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
    bp = rsub.add_parser("bitstamp", help="the Bitstamp BTC/USD order-event log (.log or .log.gz) "
                         "-> L2 level updates and trades (market/bitstamp.py)")
    bp.add_argument("--file", required=True, help="bitstamp_..._events.log(.gz)")
    bp.add_argument("--max-seconds", type=float, default=None,
                    help="only the first S seconds of the log (default: all of it)")
    bp.add_argument("--out", required=True, help="record file to write")
    bp.set_defaults(func=run_bitstamp)
    for venue in VENUES:
        vp = rsub.add_parser(venue, help=f"{venue} recording(s) -> record file through the live "
                             "feed handler")
        vp.add_argument("--file", nargs="+", required=True, help="recording file(s), in order")
        vp.add_argument("--out", required=True, help="record file to write")
        vp.add_argument("--config", default=None, help="config whose instruments to use")
        vp.set_defaults(func=run_venue, venue=venue)


def run_lobster(args) -> int:
    from pipeline.commands._inputs import input_file, output_file, sniff
    from pipeline.exits import EXIT_USAGE, CliError

    if args.levels < 1:
        raise CliError(f"--levels must be >= 1, got {args.levels}", EXIT_USAGE)
    input_file(args.message, "--message", "LOBSTER message file")
    input_file(args.orderbook, "--orderbook", "LOBSTER order book file")
    output_file(args.out, "--out")
    from market.lobster import LobsterError, convert_to_file, parse_name

    for flag, path, want, other in (("--message", args.message, "message", "--orderbook"),
                                    ("--orderbook", args.orderbook, "orderbook", "--message")):
        kind = parse_name(path)["kind"] or sniff(path).removeprefix("lobster-")
        if kind in ("message", "orderbook") and kind != want:
            raise CliError(f"{flag} {path}: this is a LOBSTER {_KIND_NAMES[kind]} file; "
                           f"pass it as {other} (--message takes ..._message_N.csv, "
                           f"--orderbook ..._orderbook_N.csv)", EXIT_USAGE)
    from pipeline.progress import Progress

    try:
        with Progress("replay lobster") as prog:
            prog.phase("converting")
            n = convert_to_file(args.message, args.orderbook, args.levels, args.out)
    except LobsterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None
    print(f"{args.out}: {n} market records from {args.message}")
    return 0


def run_bitstamp(args) -> int:
    from pipeline.commands._inputs import input_file, output_file
    from pipeline.exits import EXIT_USAGE, CliError

    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CliError(f"--max-seconds {args.max_seconds}: must be > 0", EXIT_USAGE)
    input_file(args.file, "--file", "Bitstamp event log")
    output_file(args.out, "--out")
    from market.bitstamp import (BitstampError, bitstamp_instrument, convert,
                                 looks_like_bitstamp)
    from market.recordfile import RecordFileWriter
    from shm.records import MARKET_DTYPE

    if not looks_like_bitstamp(args.file):
        raise CliError(f"--file {args.file}: not a Bitstamp event log (lines of "
                       "'<ms> <event> {json}')", EXIT_USAGE)
    from pipeline.progress import Progress

    try:   # the converter's progress texts: on a terminal in place, nothing when piped
        with Progress("replay bitstamp") as prog:
            recs, meta = convert(args.file, max_seconds=args.max_seconds,
                                 progress=lambda text: prog.phase(text.removeprefix(
                                     "bitstamp: ")))
    except BitstampError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"{exc.filename}: {exc.strerror or exc}") from None
    with RecordFileWriter(args.out, MARKET_DTYPE, [bitstamp_instrument()], meta=meta) as w:
        w.append(recs)
    print(f"{args.out}: {len(recs)} market records from {args.file}")
    return 0


def run_venue(args) -> int:
    from pipeline.commands._inputs import (input_file, output_file, recording_venue_mismatch,
                                           sniff, venue_label)
    from pipeline.exits import EXIT_USAGE, CliError

    for f in args.file:
        input_file(f, "--file", f"{args.venue} recording")
        if sniff(f) in ("record", "binary", "lobster-message", "lobster-orderbook"):
            raise CliError(f"--file {f}: not a venue recording (it looks like "
                           f"{_looks_like(sniff(f))}); replay {args.venue} reads websocket "
                           f"recordings (hftfarm JSON lines or cryptofeed raw text)", EXIT_USAGE)
    output_file(args.out, "--out")
    try:
        from feeds.convert import convert_recording
    except ImportError as exc:
        raise CliError(f"replay {args.venue} needs feeds.convert.convert_recording, which this "
                       f"checkout does not provide ({exc})") from None
    from common.schema import ConfigError
    from pipeline.config import load_config

    accepted = ("kraken", "kraken-v1") if args.venue == "kraken" else (args.venue,)
    found = recording_venue_mismatch(args.file, accepted)
    if found is not None:
        venue, evidence = found
        cmd = "kraken" if venue.startswith("kraken") else venue.removesuffix("-at")
        raise CliError(f"{' '.join(args.file)} looks like a {venue_label(venue)} recording "
                       f"({evidence}), not {args.venue}; use run.py replay {cmd}", EXIT_USAGE)
    try:
        config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        raise CliError(f"--config: {exc}", EXIT_USAGE) from None
    from pipeline.progress import Progress

    try:
        with Progress(f"replay {args.venue}") as prog:
            prog.phase(f"converting {len(args.file)} recording(s)")
            summary = convert_recording(args.venue, args.file, args.out, config)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(f"replay {args.venue}: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"replay {args.venue}: {exc.filename}: {exc.strerror or exc}") from None
    n = summary.get("records", "?") if isinstance(summary, dict) else "?"
    print(f"{args.out}: {n} market records from {len(args.file)} {args.venue} recording(s)")
    return 0


_KIND_NAMES = {"message": "message", "orderbook": "order book"}


def _looks_like(kind: str) -> str:
    return {"record": "an hftfarm record file, already converted: use it with run.py book or "
                      "backtest --data",
            "binary": "binary data",
            "lobster-message": "a LOBSTER message file: use run.py replay lobster",
            "lobster-orderbook": "a LOBSTER order book file: use run.py replay lobster"}[kind]
