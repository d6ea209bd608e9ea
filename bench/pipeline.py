"""``run.py bench pipeline [--json] [--event-rate N] [--seconds S]``: the live pipeline measured.

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
    p.add_argument("--event-rate", type=float, nargs="+", default=[80000.0],
                   help="background events per second per simulated venue (default 80000: "
                        "about 200k market records/s from the two venues)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--idle", default=None, help="idle strategy for every stage (default: "
                                               "config's, i.e. backoff)")
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
                 exporter: bool = False, farm: int | None = None) -> str:
    from pipeline.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text()
    if farm:
        text = _farm_text(text, farm)
    text = text.replace('name = "default"', f'name = "{instance}"', 1)
    text = text.replace('run_dir = "runs"', f'run_dir = "{run_dir}"', 1)
    text = text.replace("event_rate_per_s = 20000", f"event_rate_per_s = {rate}")
    # a loaded 2-core box stalls processes for longer than the production 100 ms now and then
    text = text.replace("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 2000")
    if idle:
        text = text.replace('idle = "backoff"', f'idle = "{idle}"')
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


def _measure(rate: float, args, exporter: bool = False, farm: int | None = None) -> dict:
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
    cfg_path.write_text(_config_text(instance, tmp / "runs", rate, args.idle, exporter, farm))
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
        procs = {name: psutil.Process(s["pid"]) for name, s in stages.items()}
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
    results = [_measure(rate, args, exp, farm) for farm in farms for rate in args.event_rate
               for exp in modes]
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(),
               "load_avg": [round(x, 2) for x in os.getloadavg()],
               "idle": args.idle or "config default (backoff)"}
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return 0
    print(f"pipeline benchmark: {machine['cpus']} CPUs, load {machine['load_avg']}, idle "
          f"{machine['idle']}, window {args.seconds:.0f} s")
    for r in results:
        print((f"\nfarm of {r['farm_shards']} shard(s), " if r["farm_shards"] else "\n")
              + f"event rate {r['event_rate_per_venue']:.0f}/s per venue: "
              f"{r['market_records_per_s']:,} market records/s, lost {r['records_lost']}, "
              f"simulator behind by {r['sim_behind_wall_clock_ms']} ms -> "
              f"{'sustained' if r['sustained'] else 'NOT sustained'}"
              + (f" ({r['restarts']} stage restarts)" if r["restarts"] else "")
              + f"; exporter {r['exporter']}"
              + (f" ({r['scrapes']['scrapes']} scrapes, wall p50 "
                 f"{r['scrapes']['wall_ms_p50']} ms, max {r['scrapes']['wall_ms_max']} ms)"
                 if r["scrapes"] else ""))
        print("  latency (us)                                    count      p50      p99    "
              "p99.9")
        for name, h in r["latency"].items():
            print(f"  {h['title']:<46} {h['count']:>8} {h['p50_ns'] / 1e3:>8.1f} "
                  f"{h['p99_ns'] / 1e3:>8.1f} {h['p999_ns'] / 1e3:>8.1f}")
        print("  CPU % of one core: " + ", ".join(f"{k} {v}" for k, v in r["cpu_percent"].items()))
    return 0
