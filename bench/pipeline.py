"""``run.py bench pipeline [--json] [--event-rate N] [--seconds S] [--layout L ...] [--idle I ...]``:
the live pipeline measured, for each layout (dedicated: one process per stage; composite: the
config's [[composites]], or venue+journal and strategies+gate+router on CPUs 0 and 1) and each
idle strategy asked for, in one run and one table.

Cold path (the benchmark process only observes). Starts a private instance of the default
config (two simulated venues, three strategies, risk gate, router, journal; default idle
strategy) with the simulated venues driven at ``--event-rate`` background events per second per
venue, lets it warm up, then over a ``--seconds`` window measures:

  - market records/s actually published by the venues (status counters) and records lost by
    any reader (lapped broadcast readers; must stay 0 for the figure to count as sustained),
    and how far the simulator fell behind the wall clock (it publishes late rather than drop);
  - tick-to-trade and per-hop latency percentiles (p50 / p99 / p99.9) from the shared
    histograms, over the window only;
  - CPU per stage and of the controller (psutil, % of one core).

Then it stops the instance (everything unlinked). Several ``--event-rate`` values may be given:
one instance per rate, so the table shows where the machine stops keeping up.

``--farm N [N ...]``: instead of the default strategies, one farm per N: the market maker as N
shards over the first N of the config's instruments (one each), subscribed to a realized-vol
signal agent over them (issue 18's ``bench pipeline --farm``); the other strategies are off.
"""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--event-rate", type=float, nargs="+", default=[20000.0],
                   help="background events per second per simulated venue (default 20000, the "
                        "config's; 80000 gives about 200k market records/s from the two "
                        "venues; 1 is a market with next to no data: the idle CPU)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--idle", nargs="+", default=[None],
                   help="idle strategy of every stage and composite (busy-spin, yield, backoff, "
                        "blocking, hybrid; default: the config's); several: one instance each")
    p.add_argument("--layout", nargs="+", default=["composite", "dedicated"],
                   choices=("dedicated", "composite"),
                   help="process layout(s) to measure (default: both); several: one "
                        "instance each, same table")
    p.add_argument("--config", default=None,
                   help="base config (default: config.toml); its instance name, run dir, "
                        "event rate, layout and idle are set by the benchmark")
    p.add_argument("--spin-us", type=float, default=None,
                   help="hybrid idle's spin budget ([stages] spin_us) for this run")
    p.add_argument("--exporter", choices=("off", "on", "both"), default="off",
                   help="the controller's Prometheus exporter: off (default), on (scraped "
                        "every --scrape-interval s during the window), or both: one instance "
                        "without it and one with it, per rate, in the same run")
    p.add_argument("--farm", type=int, nargs="+", default=None, metavar="SHARDS",
                   help="measure a farm of this many market-maker shards (1 to 4: one per "
                        "instrument of the default config) with a signal agent, instead of the "
                        "default strategies; several values: one instance each")
    p.add_argument("--scrape-interval", type=float, default=1.0,
                   help="seconds between scrapes with --exporter on (default 1)")


# the composite layout used when the config has none: a 2-core machine's
DEFAULT_COMPOSITES = '''
[[composites]]
name = "md"
stages = ["venue", "journal"]
cpu = 0
idle = "hybrid"

[[composites]]
name = "hot"
stages = ["strategy-*", "risk_gate", "order_router"]
cpu = 1
idle = "hybrid"
'''


FARM_INSTRUMENTS = ["BTC-USD@simA", "ETH-USD@simA", "BTC-USD@simB", "ETH-USD@simB"]
MM_BLOCK = '''[[strategies]]
name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''


def _farm_text(text: str, shards: int) -> str:
    """The default config with a farm of ``shards`` market-maker shards and a signal agent in
    place of its strategies."""
    if not 1 <= shards <= len(FARM_INSTRUMENTS):
        raise SystemExit(f"--farm {shards}: 1 to {len(FARM_INSTRUMENTS)} shards (one per "
                         "instrument of the default config)")
    keys = ", ".join(f'"{k}"' for k in FARM_INSTRUMENTS[:shards])
    farm = (f'[[signals]]\nname = "rv"\nkind = "realized_vol"\ninstruments = [{keys}]\n\n'
            f'[[strategies]]\nname = "mm_farm"\nkind = "market_making"\nshards = {shards}\n'
            f'instruments = [{keys}]\nsignals = ["rv"]')
    text = text.replace(MM_BLOCK, farm, 1)
    for name in ("pairs_btc_eth", "arb_btc"):
        text = text.replace(f'name = "{name}"\n', f'name = "{name}"\nenabled = false\n')
    return text


def _config_text(instance: str, run_dir, rate: float, idle: str | None,
                 exporter: bool = False, layout: str = "composite",
                 spin_us: float | None = None, base=None,
                 farm: int | None = None) -> str:
    import re
    from pathlib import Path

    from pipeline.config import DEFAULT_CONFIG

    text = Path(base or DEFAULT_CONFIG).read_text()
    if farm:
        text = _farm_text(text, farm)
    text = re.sub(r"(?m)^layout = .*\n", "", text)
    if spin_us is not None:
        text = re.sub(r"(?m)^spin_us = .*\n", "", text)
    extra = f'layout = "{layout}"\n' + (f"spin_us = {spin_us}\n" if spin_us is not None else "")
    text = text.replace("[stages]\n", "[stages]\n" + extra, 1)
    if layout == "composite" and "[[composites]]" not in text:
        text += DEFAULT_COMPOSITES
    text = re.sub(r'(?m)^name = "[^"]*"', f'name = "{instance}"', text, count=1)
    text = re.sub(r'(?m)^run_dir = "[^"]*"', f'run_dir = "{run_dir}"', text, count=1)
    text = re.sub(r"(?m)^event_rate_per_s = [0-9.]+", f"event_rate_per_s = {rate}", text,
                  count=1)
    # a loaded 2-core box stalls processes for longer than the production 100 ms now and then
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    if idle:
        text = re.sub(r'idle = "[a-z-]+"', f'idle = "{idle}"', text)
        text = text.replace('kind = "market_making"', f'kind = "market_making"\nidle = "{idle}"')
        text = text.replace('kind = "pairs_trading"', f'kind = "pairs_trading"\nidle = "{idle}"')
        text = text.replace('kind = "cross_venue_arb"',
                            f'kind = "cross_venue_arb"\nidle = "{idle}"')
        text = text.replace('kind = "realized_vol"', f'kind = "realized_vol"\nidle = "{idle}"')
    if exporter:
        text += "\n[metrics]\nenabled = true\nport = 0\n"
    return text


class _Scraper:
    """Scrapes the exporter every ``interval_s`` on a thread; wall time of each scrape."""

    def __init__(self, url: str, interval_s: float):
        import threading

        self.url, self.interval_s, self.times, self.errors = url, interval_s, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time
        import urllib.request

        while not self._stop.wait(self.interval_s):
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.times.append(time.perf_counter() - t0)
            except OSError:
                self.errors += 1

    def close(self) -> dict:
        self._stop.set()
        self._thread.join(10)
        t = sorted(self.times)
        return {"scrapes": len(t), "errors": self.errors,
                "wall_ms_p50": round(t[len(t) // 2] * 1e3, 2) if t else None,
                "wall_ms_max": round(t[-1] * 1e3, 2) if t else None}


def _measure(rate: float, args, exporter: bool = False, layout: str = "composite",
             idle: str | None = None, farm: int | None = None) -> dict:
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time
    import uuid
    from pathlib import Path

    import psutil

    from pipeline.config import load_config
    from pipeline.control import client_request
    from common.status import W_X1
    from shm.segment import unlink_instance
    from shm.status import StatusTable

    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="hftfarm-bench-"))
    instance = f"bench{uuid.uuid4().hex[:6]}"
    cfg_path = tmp / "bench.toml"
    cfg_path.write_text(_config_text(instance, tmp / "runs", rate, idle, exporter, layout,
                                     args.spin_us, args.config, farm))
    cfg = load_config(cfg_path)
    r = subprocess.run([sys.executable, "run.py", "start", "--config", str(cfg_path)], cwd=root,
                       capture_output=True, text=True)
    if r.returncode != 0:
        unlink_instance(instance)
        raise RuntimeError(f"could not start the pipeline: {r.stderr.strip()}")
    table = None
    try:
        st = client_request(cfg, {"cmd": "status"})
        ctl_pid = st["pid"]
        stages = {s["stage"]: s for s in st["stages"]}
        table = StatusTable.attach(instance)
        slots = {s["stage"]: i for i, s in enumerate(st["stages"])}
        by_pid: dict[int, list[str]] = {}   # a composite's stages share one process
        for name, s in stages.items():
            by_pid.setdefault(s["pid"], []).append(name)
        procs = {"+".join(names): psutil.Process(pid) for pid, names in by_pid.items()}
        procs["controller"] = psutil.Process(ctl_pid)
        time.sleep(args.warmup)
        scraper = _Scraper(st["monitoring"]["metrics_url"], args.scrape_interval) \
            if exporter else None
        client_request(cfg, {"cmd": "latency", "reset": True})
        for p in procs.values():
            p.cpu_percent(None)
        before = {n: table.read(i) for n, i in slots.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        dt = time.monotonic() - t0
        after = {n: table.read(i) for n, i in slots.items()}
        cpu = {n: round(p.cpu_percent(None), 1) for n, p in procs.items()}
        scrapes = scraper.close() if scraper is not None else None
        lat = client_request(cfg, {"cmd": "latency"}, timeout_s=30)["histograms"]
        venue_recs = after["venue"]["records_out"] - before["venue"]["records_out"]
        lost = sum(after[n]["records_lost"] - before[n]["records_lost"] for n in slots)
        behind_ms = table.read_word(slots["venue"], W_X1) / 1e6
        restarts = sum(after[n]["restarts"] for n in slots)
        return {
            "layout": layout, "idle": idle or "config's",
            "processes": len(by_pid),
            "cpu_total_percent": round(sum(cpu.values()), 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "farm_shards": farm,
            "event_rate_per_venue": rate,
            "exporter": "on" if exporter else "off",
            "scrapes": scrapes,
            "market_records_per_s": round(venue_recs / dt),
            "records_lost": int(lost),
            "sustained": lost == 0 and behind_ms < 100,
            "sim_behind_wall_clock_ms": round(behind_ms, 1),
            "restarts": int(restarts),
            "cpu_percent": cpu,
            "latency": {k: {"title": v["title"], "count": v["count"], "p50_ns": v["p50_ns"],
                            "p99_ns": v["p99_ns"], "p999_ns": v["p999_ns"]}
                        for k, v in lat.items()},
        }
    finally:
        if table is not None:
            table.close()
        subprocess.run([sys.executable, "run.py", "stop", "--config", str(cfg_path)],
                       cwd=root, capture_output=True, text=True)
        unlink_instance(instance)
        shutil.rmtree(tmp, ignore_errors=True)


def main(args) -> int:
    import json
    import os
    import platform

    modes = {"off": [False], "on": [True], "both": [False, True]}[args.exporter]
    farms = args.farm or [None]
    results = [_measure(rate, args, exp, layout, idle, farm) for farm in farms
               for rate in args.event_rate for layout in args.layout
               for idle in args.idle for exp in modes]
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return 0
    print(f"pipeline benchmark: {machine['cpus']} CPUs, window {args.seconds:.0f} s per "
          f"instance, load at the end {machine['load_avg']}")
    for r in results:
        print((f"\nfarm of {r['farm_shards']} shard(s), " if r["farm_shards"] else "\n")
              + f"{r['layout']} layout ({r['processes']} stage processes), idle {r['idle']}, "
              f"event rate {r['event_rate_per_venue']:.0f}/s per venue: "
              f"{r['market_records_per_s']:,} market records/s, lost {r['records_lost']}, "
              f"simulator behind by {r['sim_behind_wall_clock_ms']} ms -> "
              f"{'sustained' if r['sustained'] else 'NOT sustained'}"
              + (f" ({r['restarts']} stage restarts)" if r["restarts"] else "")
              + f"; load {r['load_avg']}; exporter {r['exporter']}"
              + (f" ({r['scrapes']['scrapes']} scrapes, wall p50 "
                 f"{r['scrapes']['wall_ms_p50']} ms, max {r['scrapes']['wall_ms_max']} ms)"
                 if r["scrapes"] else ""))
        print("  latency (us)                                    count      p50      p99    "
              "p99.9")
        for name, h in r["latency"].items():
            print(f"  {h['title']:<46} {h['count']:>8} {h['p50_ns'] / 1e3:>8.1f} "
                  f"{h['p99_ns'] / 1e3:>8.1f} {h['p999_ns'] / 1e3:>8.1f}")
        print(f"  CPU % of one core: total {r['cpu_total_percent']}; "
              + ", ".join(f"{k} {v}" for k, v in r["cpu_percent"].items()))
    if len(results) > 1:
        print("\nsummary (us)              layout      idle        t2t p50  t2t p99 t2t p99.9"
              "   lost  CPU%")
        for r in results:
            t = r["latency"].get("tick_to_trade", {})
            print(f"  rate {r['event_rate_per_venue']:>8.0f}/s  {r['layout']:<11} "
                  f"{r['idle']:<11} {t.get('p50_ns', 0) / 1e3:>8.1f} "
                  f"{t.get('p99_ns', 0) / 1e3:>8.1f} {t.get('p999_ns', 0) / 1e3:>9.1f} "
                  f"{r['records_lost']:>6} {r['cpu_total_percent']:>5}")
    return 0
