"""``run.py latency [--json] [--dump DIR] [--reset] [--config F]``: percentiles per latency
histogram of the running instance; ``--dump`` writes one .hgrm (HdrHistogram percentile
distribution) and one .hlog (HdrHistogram interval log) per histogram; ``--reset`` starts a new
measurement interval (cold, operator's shell)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("latency", help="per-hop and tick-to-trade latency percentiles")
    p.add_argument("--config", default=None, help="config file (default: config.toml)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dump", metavar="DIR", default=None,
                   help="write <hist>.hgrm and <hist>.hlog files into DIR")
    p.add_argument("--reset", action="store_true",
                   help="after reading, start a new interval (later reads count from now)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    from pipeline.control import client_request, load_config_or_exit

    cfg = load_config_or_exit(args.config)
    req = {"cmd": "latency", "reset": bool(args.reset)}
    if args.dump:
        from pipeline.commands._inputs import output_dir
        output_dir(args.dump, "--dump")
        req["dump"] = os.path.abspath(args.dump)
    reply = client_request(cfg, req, timeout_s=30.0)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(format_latency(reply["histograms"]))
    for f in reply.get("files", []):
        print(f"wrote {f}")
    return 0


def format_latency(hists: dict) -> str:
    def us(ns):
        return f"{ns / 1000:.1f}"

    rows = [("histogram", "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us")]
    for name, h in hists.items():
        rows.append((h.get("title", name), str(h["count"]), us(h["p50_ns"]), us(h["p90_ns"]),
                     us(h["p99_ns"]), us(h["p999_ns"]), us(h["max_ns"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))) for r in rows)
