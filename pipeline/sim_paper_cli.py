"""``run.py sim paper avellaneda-stoikov [--paths N] [--seed N] [--json] ...``: a published
table reproduced with hftfarm's own strategy kernel in the paper's model world.

Cold path (operator's shell). ``add_paper_parser(sim_subparsers)`` adds the ``paper``
subcommand to the ``sim`` command's sub-subparsers (pipeline/commands/sim.py calls it); the
handler runs strategies/paper/avellaneda_stoikov.py: the market_making kernel through the
strategy runtime in market/asworld.py, and the symmetric benchmark, for gamma = 0.01, 0.1 and
0.5, and prints ours beside Avellaneda & Stoikov (2008), Tables 1-3, with standard errors and
a verdict per figure (docs/avellaneda-stoikov.md). Progress goes to stderr. Imports numpy and
numba only inside the handler.
"""
from __future__ import annotations

MODELS = ("avellaneda-stoikov",)

EPILOG = """\
The world: a mid starting at 100 moving +-sigma sqrt(dt) (sigma 2, dt 0.005, T 1), quotes hit
with probability A exp(-k delta) dt per step (A 140, k 1.5), one unit each; our market_making
kernel (inventory strategy) and the same kernel with no skew and the spread
(2/gamma) ln(1 + gamma/k) (symmetric strategy), over --paths paths per gamma. Mapping of
units, results and every difference: docs/avellaneda-stoikov.md."""


def add_paper_parser(sim_subparsers) -> None:
    """Add ``paper`` to the ``sim`` command's sub-subparsers."""
    import argparse

    p = sim_subparsers.add_parser(
        "paper", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="reproduce a published table with our own strategy kernel in the paper's model "
        "world (avellaneda-stoikov: Avellaneda & Stoikov 2008, Tables 1-3)",
        description="Reproduce a published table with hftfarm's own strategy kernel in the "
        "paper's model world, ours beside the published figures with standard errors.",
        epilog=EPILOG)
    p.add_argument("model", choices=MODELS, help="which paper")
    p.add_argument("--paths", type=int, default=1000,
                   help="simulated paths per gamma and strategy (default 1000, as the paper)")
    p.add_argument("--seed", type=int, default=1, help="seed of the worlds (default 1)")
    p.add_argument("--gamma", type=float, action="append", default=None,
                   help="risk aversion to run (repeatable; default 0.01, 0.1 and 0.5)")
    p.add_argument("--horizon", choices=("finite", "rolling"), default="finite",
                   help="finite: the kernel's horizon_s is set to T - t each step, as the "
                   "paper (default); rolling: the kernel's own constant horizon (horizon_s = T)")
    p.add_argument("--fill-mid", choices=("moved", "quoted"), default="moved",
                   help="the mid a step's fill distances are measured from: after the step's "
                   "move (default; reproduces the published figures) or the one quoted against")
    p.add_argument("--tick", type=float, default=1e-4,
                   help="tick size in the paper's price units (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_paper)


def run_paper(args) -> int:
    import json
    import sys

    from pipeline.exits import EXIT_USAGE, CliError

    if args.paths < 2:
        raise CliError(f"--paths {args.paths}: at least 2 (a standard deviation needs two)",
                       EXIT_USAGE)
    if not 0 < args.tick <= 0.01:
        raise CliError(f"--tick {args.tick}: must be in (0, 0.01] price units (the quotes are "
                       "about 0.6 from the mid)", EXIT_USAGE)
    gammas = tuple(args.gamma) if args.gamma else None
    if gammas is not None and any(g <= 0 for g in gammas):
        raise CliError(f"--gamma {', '.join(map(str, gammas))}: each must be > 0", EXIT_USAGE)

    from strategies.paper.avellaneda_stoikov import GAMMAS, Setting, format_table, reproduce

    res = reproduce(args.paths, args.seed, gammas=gammas or GAMMAS, horizon=args.horizon,
                    setting=Setting(tick_size=args.tick, fill_mid=args.fill_mid))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_table(res))
    sys.stdout.flush()
    return 0
