"""``run.py bench execution [--config C] [--strategy NAME] [--seeds 11,12,13] [--duration S]
[--modes vwap,is,pov,twap] [--json]``: the execution algorithms (strategies/vwap.py) against a
naive TWAP on the same parent order and the same simulator seeds. Cold path (a comparison, not
a test).

For each seed and mode, the named ``vwap`` strategy runs alone in a sim backtest with its
config's parent order and only ``mode`` changed; the figures are read from its state:
slippage against the arrival mid and against the market VWAP of the window (bps, positive =
worse), fees (bps of the filled notional) and the share of the parent filled. The summary
gives, per mode, the mean and standard deviation across seeds and the mean of the per-seed
difference to TWAP (negative = better than TWAP) with its standard deviation: the spread of
results is part of the figure.
"""
from __future__ import annotations

import dataclasses
import json
import statistics


def add_arguments(p) -> None:
    p.add_argument("--config", default="examples/catalogue_b.toml")
    p.add_argument("--strategy", default="vwap_btc", help="a [[strategies]] entry of kind vwap")
    p.add_argument("--seeds", default="11,12,13,14,15")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--modes", default="vwap,is,pov,twap")
    p.add_argument("--json", action="store_true")


def run_one(cfg, name: str, mode: str, seed: int, duration: float) -> dict:
    from strategies.backtest import run_backtest

    sts = []
    for sc in cfg.strategies:
        if sc.name == name:
            sc = dataclasses.replace(sc, params={**sc.params, "mode": mode})
        sts.append(sc)
    res = run_backtest(dataclasses.replace(cfg, strategies=tuple(sts)), name,
                       duration_s=duration, seed=seed)
    st = res.strategy_state.fields
    qty = dict(cfg_params(cfg, name)).get("quantity_lots", 1000)
    return {"seed": seed, "mode": mode, "filled": int(st.filled_lots) / qty,
            "arrival_bps": float(st.slippage_arrival_bps),
            "vwap_bps": float(st.slippage_vwap_bps), "fee_bps": float(st.fee_bps),
            "crosses": int(st.n_crosses), "children": int(st.n_children)}


def cfg_params(cfg, name):
    for sc in cfg.strategies:
        if sc.name == name:
            return sc.params
    raise ValueError(f"no strategy {name!r} in {cfg.source}")


def main(args) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config)
    cfg_params(cfg, args.strategy)
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    rows = [run_one(cfg, args.strategy, m, s, args.duration) for s in seeds for m in modes]
    summary = {}
    for m in modes:
        mine = [r for r in rows if r["mode"] == m]
        diff = [r["arrival_bps"] + r["fee_bps"]
                - next(t["arrival_bps"] + t["fee_bps"] for t in rows
                       if t["mode"] == "twap" and t["seed"] == r["seed"])
                for r in mine] if "twap" in modes else []
        sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
        summary[m] = {
            "arrival_bps_mean": statistics.mean(r["arrival_bps"] for r in mine),
            "arrival_bps_sd": sd([r["arrival_bps"] for r in mine]),
            "vwap_bps_mean": statistics.mean(r["vwap_bps"] for r in mine),
            "fee_bps_mean": statistics.mean(r["fee_bps"] for r in mine),
            "filled_mean": statistics.mean(r["filled"] for r in mine),
            "cost_vs_twap_bps_mean": statistics.mean(diff) if diff else float("nan"),
            "cost_vs_twap_bps_sd": sd(diff) if diff else float("nan"),
            "better_than_twap": sum(d < 0 for d in diff)}
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}, indent=2))
        return 0
    for r in rows:
        print(f"seed {r['seed']:>4} {r['mode']:>5}: filled {r['filled']:.3f}  vs arrival "
              f"{r['arrival_bps']:+7.3f} bps  vs vwap {r['vwap_bps']:+7.3f} bps  fees "
              f"{r['fee_bps']:+6.3f} bps  crosses {r['crosses']}")
    for m, s in summary.items():
        print(f"{m:>5}: arrival {s['arrival_bps_mean']:+.3f} +- {s['arrival_bps_sd']:.3f} bps, "
              f"vs vwap {s['vwap_bps_mean']:+.3f}, fees {s['fee_bps_mean']:+.3f}, filled "
              f"{s['filled_mean']:.3f}; (arrival + fees) - twap: "
              f"{s['cost_vs_twap_bps_mean']:+.3f} +- {s['cost_vs_twap_bps_sd']:.3f} bps, "
              f"better on {s['better_than_twap']}/{len(seeds)} seeds")
    return 0
