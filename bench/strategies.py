"""``run.py bench strategies [--config C ...] [--duration S] [--event-rate R] [--json]``: what
each strategy costs. Cold path (a benchmark, not a test).

Figures, per strategy of each config (default: ``examples/catalogue.toml``, the nine
market-data kinds, and ``config.toml``, the three of the default config):

  market ns/record   the strategy's step (strategies/host.py ``run_strategy_batch``: books,
                     the runtime's bookkeeping, then its hooks) per market record: p50, p99
                     and mean over the calls that carried market records (a call's time over
                     its number of records). This is the kernel's whole cost per record, the
                     runtime's share included, so it bounds the hooks' own cost from above.
  timer ns           calls with neither market records nor reports: the timer hook, where
                     the periodic scans and refits run (statistical_arbitrage's pair scan,
                     microstructure_alpha's refit, ...): p50, p99 and the largest.
  events/s alone     the strategy alone in a backtest on the same market: market records +
                     its execution reports per CPU second of the loop (median of --repeat
                     runs; the best beside it).
  together           every enabled strategy of the config in one backtest, one risk gate:
                     events per CPU second (median and best of --repeat).

How: the backtest (market/backtest.py) reads the TSC around every step call when asked
(``kernel_timing``), in the run itself, with the gate, the venue and the fills of a real
backtest; the rate of the TSC is measured over the run. The calls are the backtest's own, so
the batches are the backtest's (records that arrive at one simulated instant come together).
The timed run is not used for events/s: those runs are untimed.

The market is the config's simulated venues at ``--event-rate`` background events per second
per venue (default: bench backtest's 1000; the calibrated rate of the configs is a thin book's
few events per second, too few records to time), seed ``--seed`` (default: the config's).
"""
from __future__ import annotations

import json
import statistics
import sys
import time

DEFAULT_CONFIGS = ("examples/catalogue.toml", "config.toml")
TIMING_RING = 1 << 16
TARGET_RECORD_NS = 1_000.0     # issue: a strategy's hook p50 under 1 us per market record
TARGET_SCAN_NS = 1_000_000.0   # a periodic scan or refit under 1 ms
TARGET_EVENTS_S = 500_000.0    # the catalogue's backtest with every strategy running


def add_arguments(p) -> None:
    from bench.backtest import BENCH_EVENT_RATE

    p.add_argument("--config", action="append", default=None,
                   help="config file (repeatable; default: " + ", ".join(DEFAULT_CONFIGS) + ")")
    p.add_argument("--strategy", action="append", default=None,
                   help="only this [[strategies]] name (repeatable; default: every enabled one)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="simulated seconds of each backtest (default 60)")
    p.add_argument("--event-rate", type=float, default=BENCH_EVENT_RATE,
                   help=f"background events per second per simulated venue (default "
                   f"{BENCH_EVENT_RATE:g})")
    p.add_argument("--seed", type=int, default=None, help="simulator seed (default: the config's)")
    p.add_argument("--repeat", type=int, default=3,
                   help="untimed runs for each events/s figure (median and best; default 3)")
    p.add_argument("--no-alone", action="store_true",
                   help="skip the strategies' backtests alone (each alone is a backtest loop "
                   "of its own, compiled on its first run)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _events_per_cpu_s(runs) -> dict:
    rates = sorted((r.counters["events"] / r.counters["cpu_s"] for r in runs
                    if r.counters.get("cpu_s")), reverse=True)
    if not rates:
        return {"runs": len(runs), "events": 0, "median": None, "best": None}
    return {"runs": len(runs), "events": int(runs[0].counters["events"]),
            "median": statistics.median(rates), "best": rates[0]}


def _check_args(args) -> None:
    from common.schema import ConfigError

    bad = []
    if not args.duration > 0:
        bad.append(f"--duration {args.duration}: simulated seconds, > 0")
    if not args.event_rate > 0:
        bad.append(f"--event-rate {args.event_rate}: events per second, > 0")
    if args.repeat < 1:
        bad.append(f"--repeat {args.repeat}: at least 1")
    if bad:
        raise ConfigError(bad, "bench strategies")


def _chosen(configs, wanted) -> list:
    """(path, config, names to bench) per config: every enabled strategy, or the ``wanted``
    names it holds (a config holding none of them is left out). ConfigError naming every
    wanted name no config holds."""
    from common.schema import ConfigError
    from pipeline.config import load_config

    out, seen = [], set()
    for path in configs:
        cfg = load_config(path)
        if wanted:
            known = {s.name for s in cfg.strategies}
            names = [n for n in wanted if n in known]
            seen.update(names)
        else:
            names = [s.name for s in cfg.strategies if s.enabled]
        if names:
            out.append((path, cfg, names))
    missing = [n for n in (wanted or ()) if n not in seen]
    if missing:
        raise ConfigError([f"--strategy {n!r}: not a [[strategies]] name of "
                           f"{', '.join(configs)}" for n in missing], "bench strategies")
    return out


def bench_config(path: str, cfg, names, args) -> dict:
    from strategies.backtest import run_backtest

    run = dict(duration_s=args.duration, event_rate_per_s=args.event_rate, seed=args.seed)
    t0 = time.perf_counter()
    _say(f"{path}: timing {len(names)} strategies together ({args.duration:g} simulated s at "
         f"{args.event_rate:g} events/s per venue; the first run compiles)")
    timed = run_backtest(cfg, names, kernel_timing=TIMING_RING, **run)
    rows = {}
    for name, part in timed.strategies.items():
        rows[name] = {"kind": part.kind, "kernel_ns": part.report.get("kernel_ns", {}),
                      "fills": part.counters["fills"], "md_records": part.counters["md_records"]}
    _say(f"{path}: {len(names)} together, untimed, x{args.repeat}")
    together = _events_per_cpu_s([run_backtest(cfg, names, **run) for _ in range(args.repeat)])
    if not args.no_alone:
        for name in rows:
            _say(f"{path}: {name} alone, x{args.repeat}")
            rows[name]["alone"] = _events_per_cpu_s(
                [run_backtest(cfg, name, **run) for _ in range(args.repeat)])
    return {"config": path, "strategies": rows, "together": together,
            "seconds": time.perf_counter() - t0}


def _ns(x) -> str:
    if x is None:
        return "-"
    return f"{x / 1e3:,.1f} us" if x >= 10_000 else f"{x:,.0f}"


def _rate(x) -> str:
    return "-" if x is None else f"{x / 1e6:.2f} M"


def format_text(results: list, args) -> str:
    lines = [f"run.py bench strategies: {args.duration:g} simulated s, {args.event_rate:g} "
             f"background events/s per venue; kernel ns (TSC, the backtest's own calls)",
             "",
             f"{'strategy':<22} {'kind':<22} {'records':>8} {'p50 ns/rec':>10} "
             f"{'p99':>9} {'mean':>7} {'timer calls':>11} {'timer p50':>10} {'p99':>9} "
             f"{'max':>10} {'alone ev/CPU-s':>15}"]
    worst_p50 = worst_scan = 0.0
    for res in results:
        lines.append(f"-- {res['config']}")
        for name, r in res["strategies"].items():
            m = r["kernel_ns"].get("market", {})
            t = r["kernel_ns"].get("timer", {})
            alone = r.get("alone", {}).get("median")
            worst_p50 = max(worst_p50, m.get("p50", 0.0))
            worst_scan = max(worst_scan, t.get("max", 0.0))
            lines.append(f"{name:<22} {r['kind']:<22} {m.get('records', 0):>8} "
                         f"{_ns(m.get('p50')):>10} {_ns(m.get('p99')):>9} "
                         f"{_ns(m.get('mean')):>7} {t.get('calls', 0):>11} "
                         f"{_ns(t.get('p50')):>10} {_ns(t.get('p99')):>9} "
                         f"{_ns(t.get('max')):>10} {_rate(alone):>15}")
        tg = res["together"]
        lines.append(f"{'together':<22} {'':<22} {tg['events']:>8} events: "
                     f"{_rate(tg['median'])} events/CPU-s (median of {tg['runs']}; best "
                     f"{_rate(tg['best'])})")
    lines += ["",
              f"targets: p50 per market record < {TARGET_RECORD_NS:,.0f} ns (worst here "
              f"{worst_p50:,.0f} ns: {'met' if worst_p50 < TARGET_RECORD_NS else 'NOT met'}); "
              f"a timer call (scan, refit) < 1 ms (largest here {_ns(worst_scan)}: "
              f"{'met' if worst_scan < TARGET_SCAN_NS else 'NOT met'})"]
    for res in results:
        if res["config"].endswith("catalogue.toml"):
            m = res["together"]["median"] or 0.0
            lines.append(f"         catalogue backtest >= {TARGET_EVENTS_S / 1e3:,.0f} k "
                         f"events/CPU-s: {m / 1e3:,.0f} k "
                         f"({'met' if m >= TARGET_EVENTS_S else 'NOT met'})")
    return "\n".join(lines)


def main(args) -> int:
    from bench._procs import machine_info

    _check_args(args)
    chosen = _chosen(list(args.config or DEFAULT_CONFIGS), args.strategy)
    results = [bench_config(path, cfg, names, args) for path, cfg, names in chosen]
    if args.json:
        print(json.dumps({"machine": machine_info(), "duration_s": args.duration,
                          "event_rate_per_s": args.event_rate, "results": results}, indent=2))
    else:
        print(format_text(results, args))
    return 0
