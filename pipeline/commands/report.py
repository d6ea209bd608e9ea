"""``run.py report RUN_DIR [--out FILE]``: one self-contained HTML page of a live run or a
backtest (pipeline/htmlreport.py): equity and drawdown, latency CDFs, fills over the price, PnL
by strategy, rejects by reason; the plots are PNGs embedded as base64. Cold path."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="turn a live run dir or a backtest --out into one HTML "
                       "page with plots")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="runs/<instance>/run-<time> (or .../latest), or a backtest's --out")
    p.add_argument("--out", default=None,
                   help="the HTML file to write (default RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    from pathlib import Path

    from pipeline.exits import EXIT_USAGE, CliError
    from pipeline.htmlreport import render_html
    from pipeline.rundir import RunDirError, load_run_dir

    try:
        rd = load_run_dir(args.run_dir)
    except RunDirError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    out = Path(args.out) if args.out else rd.path / "report.html"
    text = render_html(rd)
    try:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write: {exc.strerror or exc}", 1) from None
    print(f"wrote {out} ({len(text) // 1024} KiB)")
    return 0
