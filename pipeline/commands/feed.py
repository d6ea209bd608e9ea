"""``run.py feed check|serve``: venue feed handlers on recordings. Cold path (operator shell).

    run.py feed check --venue binance|coinbase|coinbase-at|kraken|kraken-v1 --file F [--file F2]
                      [--config C] [--json]
        replay recordings (several files in order, one stream) through the handler; report
        messages, book updates, gaps, resyncs, checksums, crossed books, parse errors and, for
        Binance, the bookTicker oracle. Exit 0 when clean, 1 when not.
    run.py feed serve --venue V --file F... --port P [--host 127.0.0.1] [--drop-after N]
        replay a recording as a websocket server (and REST endpoint) on loopback.
"""
from __future__ import annotations

VENUES = ("binance", "coinbase", "coinbase-at", "kraken", "kraken-v1")


def register(sub) -> None:
    p = sub.add_parser("feed", help="venue feed handlers: check recordings, serve a replay")
    fsub = p.add_subparsers(dest="feed_cmd", metavar="<check|serve>")
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
    s.add_argument("--port", type=int, required=True, help="TCP port (0: any free port)")
    s.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    s.add_argument("--rate", type=float, default=0.0,
                   help="frames per second (0: recorded pace is not kept, as fast as possible)")
    s.add_argument("--drop-after", type=int, default=0,
                   help="close each connection after N frames (tests reconnects); 0: never")
    s.set_defaults(func=run_serve)


def _check_files(files) -> None:
    from pathlib import Path

    from pipeline.cli import CliError
    for f in files:
        if not Path(f).is_file():
            raise CliError(f"recording not found: {f}", 2)


def run_check(args) -> int:
    import json

    from feeds.check import check_recordings, format_report
    from pipeline.cli import CliError
    from pipeline.config import ConfigError

    _check_files(args.file)
    try:
        report = check_recordings(args.venue, args.file, args.config)
    except (ConfigError, ValueError) as exc:
        raise CliError(str(exc), 2) from None
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["clean"] else 1


def run_serve(args) -> int:
    from feeds.server import serve_forever
    from pipeline.cli import CliError

    _check_files(args.file)
    try:
        return serve_forever(args.venue, args.file, args.host, args.port, rate=args.rate,
                             drop_after=args.drop_after)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc), 2) from None
