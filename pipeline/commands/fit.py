"""``run.py fit <kind> --data F``: fit a strategy's model on recorded or simulated data and
print the parameters it loads (a TOML ``params`` line; ``--out FILE`` also writes it there).

Kinds:
- ``microstructure_alpha``: ridge regression of the forward mid return (``--horizon-ms``) on
  the strategy's features (strategies/microstructure_alpha.py), fitted on the first
  1 - ``--holdout`` of the samples, its R^2 reported in and out of sample.
- ``vwap``: the ``volume_curve`` of a window of ``--window-s`` seconds in ``--bins`` bins
  (strategies/vwap.py ``fit_volume_curve``).

``--data F``: an hftfarm record file (``.rec``, e.g. from ``run.py replay``), a LOBSTER
message file or the Bitstamp events log (as ``run.py sim facts --data``); or ``--data sim``:
the simulator of ``--config`` run for ``--duration`` seconds on ``--seed`` at the backtest's
event rate (``--event-rate``; fit on seeds
other than those you evaluate on). ``--instrument KEY`` picks the instrument (default: the
file's or config's first). A missing, unreadable or foreign file is exit 2 naming it.

Cold path (operator's shell); registration imports nothing heavy.
"""
from __future__ import annotations

KINDS = ("microstructure_alpha", "vwap")


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit a strategy's model on a recording or the simulator "
                       "and print the parameters it loads")
    p.add_argument("kind", choices=KINDS, help="strategy kind whose model is fitted")
    p.add_argument("--data", required=True, metavar="F",
                   help="record file (.rec), LOBSTER message file, Bitstamp log, or 'sim'")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--instrument", default=None, metavar="KEY", help="SYMBOL@VENUE")
    p.add_argument("--seed", type=int, default=None, help="--data sim: simulator seed")
    p.add_argument("--event-rate", type=float, default=None,
                   help="--data sim: events per second per venue (default: the config's "
                   "[backtest] event_rate_per_s, the market the backtest trades in)")
    p.add_argument("--duration", type=float, default=600.0,
                   help="--data sim: simulated seconds; a file: at most this many (default 600)")
    p.add_argument("--horizon-ms", type=float, default=1000.0, help="forecast horizon, ms")
    p.add_argument("--sample-ms", type=float, default=100.0, help="sampling grid, ms")
    p.add_argument("--halflife-ms", type=float, default=200.0, help="feature EWMA half-life")
    p.add_argument("--depth-levels", type=int, default=3, help="levels in depth imbalance")
    p.add_argument("--ridge", type=float, default=1e-3, help="ridge penalty per sample")
    p.add_argument("--holdout", type=float, default=0.3,
                   help="share of the samples (the last) kept out of the fit")
    p.add_argument("--window-s", type=float, default=60.0, help="vwap: window, seconds")
    p.add_argument("--bins", type=int, default=12, help="vwap: bins of the curve")
    p.add_argument("--out", default=None, help="also write the params line to this file")
    p.set_defaults(func=run)


def _records(args):
    """(MARKET_DTYPE records, instrument, source text) or CliError(2)."""
    from pipeline.exits import EXIT_USAGE, CliError

    if args.duration <= 0:
        raise CliError(f"--duration {args.duration}: must be > 0", EXIT_USAGE)
    if args.data == "sim":
        from common.schema import ConfigError
        from pipeline.commands.sim import _sim_instrument, simulate
        from pipeline.config import load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CliError(f"--config: {exc}", EXIT_USAGE) from None
        inst = _sim_instrument(cfg, args.instrument)
        seed = cfg.sim.seed if args.seed is None else args.seed
        rate = cfg.backtest.event_rate_per_s if args.event_rate is None else args.event_rate
        if rate <= 0:
            raise CliError(f"--event-rate {rate}: must be > 0", EXIT_USAGE)
        recs = simulate(cfg, inst, args.duration, seed, rate)
        return recs, inst, f"simulator seed {seed}, {args.duration:g} s, {inst.key}"
    from pipeline.commands.sim import _load_data

    recs, inst, source, _tick = _load_data(args.data, args.duration, args.instrument)
    return recs, inst, source


def _fmt(d: dict) -> str:
    body = ", ".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v:.6g}"
                     for k, v in d.items())
    return f"params = {{ {body} }}"


def run(args) -> int:
    import sys

    import numpy as np

    from pipeline.exits import EXIT_USAGE, CliError

    recs, inst, source = _records(args)
    lines = [f"# run.py fit {args.kind} on {source}"]
    if args.kind == "vwap":
        from strategies.vwap import fit_volume_curve

        try:
            w = fit_volume_curve(recs, inst.instrument_id, args.window_s, args.bins)
        except ValueError as exc:
            raise CliError(f"--data {args.data}: {exc}", EXIT_USAGE) from None
        lines.append(_fmt({"volume_curve": ",".join(f"{x:.4f}" for x in w)}))
    else:
        from strategies.microstructure_alpha import FEATURES, fit_samples, r_squared, ridge_fit

        if not 0 <= args.holdout < 1:
            raise CliError(f"--holdout {args.holdout}: must be in [0, 1)", EXIT_USAGE)
        try:
            X, y = fit_samples(recs, inst.instrument_id, args.horizon_ms, args.sample_ms,
                               args.halflife_ms, args.depth_levels)
        except ValueError as exc:
            raise CliError(f"--data {args.data}: {exc}", EXIT_USAGE) from None
        n_fit = int(len(y) * (1 - args.holdout))
        coef, icpt = ridge_fit(X[:n_fit], y[:n_fit], args.ridge)
        r2_in = r_squared(X[:n_fit], y[:n_fit], coef, icpt)
        r2_out = r_squared(X[n_fit:], y[n_fit:], coef, icpt) if n_fit < len(y) else float("nan")
        lines.append(f"# {len(y)} samples ({n_fit} fitted), horizon {args.horizon_ms:g} ms, "
                     f"R^2 in-sample {r2_in:.4f}, held-out {r2_out:.4f}, y sd "
                     f"{float(np.std(y)):.3f} bps")
        params = {f"coef_{name}": float(c) for name, c in zip(FEATURES, coef)}
        params.update({"intercept_bps": icpt, "horizon_ms": args.horizon_ms,
                       "feature_halflife_ms": args.halflife_ms,
                       "depth_levels": args.depth_levels})
        lines.append(_fmt(params).replace("depth_levels = " + f"{args.depth_levels:.6g}",
                                          f"depth_levels = {args.depth_levels}"))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        try:
            with open(args.out, "w") as f:
                f.write(text)
        except OSError as exc:
            raise CliError(f"--out {args.out}: {exc.strerror}", EXIT_USAGE) from None
    return 0
