"""``run.py sink RUN_DIR [--config F] [--follow]``: copy a run's journal, and its PnL /
latency snapshots, into PostgreSQL ([sink.postgres]; pipeline/pgsink.py). Resumes where the
database's cursor says, so it finishes what a live sink could not (the database was down when
the run stopped) and never copies a record twice. Cold path."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sink", help="copy a run's journal into PostgreSQL ([sink.postgres]), "
                       "resuming from the database's cursor")
    p.add_argument("run_dir", metavar="RUN_DIR", help="runs/<instance>/run-<time> or .../latest")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--follow", action="store_true",
                   help="keep tailing (and taking snapshots from the running instance) until "
                   "Ctrl-C, then copy what is left")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pipeline.control import load_config_or_exit
    from pipeline.exits import EXIT_USAGE, CliError

    p = Path(args.run_dir)
    if not (p / "journal").is_dir():
        raise CliError(f"{p}: not a run directory (no journal/ in it)", EXIT_USAGE)
    cfg = load_config_or_exit(args.config)
    from pipeline.pgsink import SinkConfigError, read_dsn, run_sink

    pc = cfg.sink.postgres
    try:
        dsn = read_dsn(pc.dsn_env, pc.dsn_file)
    except SinkConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    rc = run_sink(cfg, dsn, p, follow=args.follow)
    if rc:
        raise CliError(f"{p}: not everything was copied (the database did not answer); run "
                       "it again", 1)
    return 0
