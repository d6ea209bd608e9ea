"""``run.py feed check|serve``: venue feed handlers on recordings. Cold path (operator shell).

    run.py feed check --venue binance|coinbase|coinbase-at|kraken|kraken-v1 --file F [--file F2]
                      [--config C] [--json]
        replay recordings (several files in order, one stream) through the handler; report
        messages, book updates, gaps, resyncs, checksums, crossed books, parse errors and, for
        Binance, the bookTicker oracle. Exit 0 when clean, 1 when not, 2 when the input is
        wrong (missing or empty file, a recording of another venue or Kraken version, bad
        config): the message names the file and the fix, e.g. --venue kraken-v1.
    run.py feed serve --venue V --file F... --port P [--host 127.0.0.1] [--drop-after N]
        replay a recording as a websocket server (and REST endpoint) on loopback.
    run.py feed live --venue V --symbols S[,S2] [--url ws://...] [--duration S]
        watch a live venue (pipeline/feedwatch.py): top of book, messages/s, lag.
"""
from __future__ import annotations

VENUES = ("binance", "coinbase", "coinbase-at", "kraken", "kraken-v1")


def register(sub) -> None:
    from pipeline.commands._inputs import non_negative_float, non_negative_int, tcp_port

    p = sub.add_parser("feed", help="venue feed handlers: check recordings, serve a replay")
    fsub = p.add_subparsers(dest="feed_cmd", metavar="<check|serve|live>")
    fsub.required = True
    c = fsub.add_parser("check", help="replay recordings through a handler and report")
    c.add_argument("--venue", required=True, choices=VENUES)
    c.add_argument("--file", action="append", required=True, metavar="F",
                   help="recording (repeat for several files, replayed as one stream)")
    c.add_argument("--config", default=None,
                   help="config with the instruments (default: derive tick/lot from the data)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_check)
    s = fsub.add_parser("serve", help="serve a recording on loopback (websocket + REST)")
    s.add_argument("--venue", required=True, choices=VENUES)
    s.add_argument("--file", action="append", required=True, metavar="F")
    s.add_argument("--port", type=tcp_port, required=True, help="TCP port (0: any free port)")
    s.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    s.add_argument("--rate", type=non_negative_float, default=0.0,
                   help="frames per second (0: recorded pace is not kept, as fast as possible)")
    s.add_argument("--drop-after", type=non_negative_int, default=0,
                   help="close each connection after N frames (tests reconnects); 0: never")
    s.set_defaults(func=run_serve)
    lv = fsub.add_parser("live", help="watch a live venue: top of book, message rates, lag "
                         "(needs internet; market data only)")
    lv.add_argument("--venue", required=True, choices=VENUES)
    lv.add_argument("--symbols", required=True, help="comma-separated, as the venue writes "
                    "them (BTCUSDT, BTC-USD, XBT/USD)")
    lv.add_argument("--url", default="", help="websocket endpoint instead of the venue's "
                    "public one (e.g. a loopback run.py feed serve)")
    lv.add_argument("--rest-url", default="", help="REST endpoint for snapshots (Binance)")
    lv.add_argument("--duration", type=non_negative_float, default=0.0,
                    help="stop after S seconds (0: until Ctrl-C)")
    lv.add_argument("--interval", type=non_negative_float, default=1.0,
                    help="seconds between printed lines (default 1)")
    lv.add_argument("--connect-timeout", type=non_negative_float, default=15.0,
                    help="give up (exit 1) when no connection succeeded by then (default 15)")
    lv.add_argument("--tick-size", default="0.00000001", help="price step to show prices in")
    lv.add_argument("--lot-size", default="0.00000001", help="quantity step")
    lv.add_argument("--depth", type=non_negative_int, default=10, help="Kraken book depth")
    lv.set_defaults(func=_run_live)


def _check_files(venue: str, files) -> None:
    from pipeline.commands._inputs import input_file, sniff
    from pipeline.exits import EXIT_USAGE, CliError

    for f in files:
        input_file(f, "--file", f"{venue} recording")
        kind = sniff(f)
        if kind == "record":
            raise CliError(f"--file {f}: an hftfarm record file (already converted), not a "
                           f"venue recording; read it with run.py book --data or backtest "
                           f"--data", EXIT_USAGE)
        if kind in ("binary", "lobster-message", "lobster-orderbook"):
            what = "binary data" if kind == "binary" else "a LOBSTER CSV (run.py replay lobster)"
            raise CliError(f"--file {f}: not a venue recording (it looks like {what}); feed "
                           f"reads websocket recordings (hftfarm JSON lines or cryptofeed raw "
                           f"text)", EXIT_USAGE)


def _check_venue(venue: str, files) -> None:
    """The recording's venue and Kraken version against --venue, detected as replay does."""
    from pipeline.commands._inputs import recording_venue_mismatch, venue_label
    from pipeline.exits import EXIT_USAGE, CliError

    found = recording_venue_mismatch(files, (venue,))
    if found is None:
        return
    got, evidence = found
    msg = (f"{' '.join(files)} looks like a {venue_label(got)} recording ({evidence}), but "
           f"--venue {venue} reads {venue_label(venue)}; use --venue {got}")
    if venue.startswith("kraken") and got.startswith("kraken"):
        msg += " (replay kraken detects the version itself)"
    raise CliError(msg, EXIT_USAGE)


def run_check(args) -> int:
    import json

    from common.schema import ConfigError
    from feeds.check import check_recordings, format_report
    from pipeline.config import load_config
    from pipeline.exits import EXIT_USAGE, CliError

    _check_files(args.venue, args.file)
    _check_venue(args.venue, args.file)
    try:
        config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        raise CliError(f"--config: {exc}", EXIT_USAGE) from None
    try:
        report = check_recordings(args.venue, args.file, config)
    except UnicodeDecodeError as exc:
        raise CliError(f"{' '.join(args.file)}: not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start}); feed check reads websocket recordings", EXIT_USAGE) \
            from None
    except ValueError as exc:
        raise CliError(f"{exc}; feed check reads hftfarm recordings (JSON lines) or "
                       f"cryptofeed raw text", EXIT_USAGE) from None
    if not report["instruments"]:
        raise CliError(f"found no {args.venue} book, trade or ticker messages with a symbol in "
                       f"{' '.join(args.file)} ({report['frames']} frames); is it a "
                       f"{args.venue} recording? (choose the venue with --venue, or give the "
                       f"instruments with --config)", EXIT_USAGE)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["clean"] else 1


def _run_live(args) -> int:
    from pipeline.feedwatch import run_feed_live

    return run_feed_live(args)


def run_serve(args) -> int:
    from feeds.server import serve_forever
    from pipeline.exits import EXIT_USAGE, CliError

    _check_files(args.venue, args.file)
    _check_venue(args.venue, args.file)
    try:
        return serve_forever(args.venue, args.file, args.host, args.port, rate=args.rate,
                             drop_after=args.drop_after)
    except ValueError as exc:
        raise CliError(f"{exc}; use --host 127.0.0.1 (or another loopback address)"
                       if "loopback" in str(exc) else str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"--host {args.host} --port {args.port}: cannot listen: "
                       f"{exc.strerror or exc}; choose another --port (0: any free port)",
                       EXIT_USAGE) from None
