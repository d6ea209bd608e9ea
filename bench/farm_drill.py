"""A farm drill with figures (not collected by pytest): start an instance of a farm config, then

1. kill -9 shard 0 of the farm: time until it is RUNNING again as a new process, and whether
   the other shard kept its process;
2. kill -9 a signal agent: time until every shard sees its signal missing, and until it is
   valid again (restarted agent);
3. the coordinator's reallocations: round trip (decision -> every shard acknowledged) of each;
4. the signal agent -> strategy hop (histogram ``sig_to_<shard>``) and unique memory (USS) per
   process;

then stop it and check that nothing is left. Run: python bench/farm_drill.py [--config F]
(default examples/farm.toml). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "examples" / "farm.toml"))
    ap.add_argument("--settle-s", type=float, default=25.0)
    ap.add_argument("--agent-first", action="store_true",
                    help="kill the agent, then the shard as soon as the agent is back (the "
                         "restart's warm spare is then still being replaced)")
    args = ap.parse_args()
    from pipeline.config import load_config
    from pipeline.control import client_request

    cfg = load_config(args.config)
    farm = next(s for s in cfg.strategies if s.shards > 1)
    agent = farm.signals[0]
    r = subprocess.run([sys.executable, "run.py", "start", "--config", args.config], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        return 1
    out: dict = {}
    try:
        def st():
            return client_request(cfg, {"cmd": "status"}, timeout_s=10.0)

        def shards(s):
            return s["farms"][farm.name]["shards"]

        def seen(s):   # (valid, cells) of the agent's kind per shard
            kind = next(g.kind for g in cfg.signals if g.name == agent)
            return [next((x["valid"], x["cells"]) for x in sh["signals"] if x["kind"] == kind)
                    for sh in shards(s)]

        deadline = time.monotonic() + 60
        while not all(v == c for v, c in seen(st())) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(args.settle_s)
        s = st()
        pids = {row["stage"]: row["pid"] for row in s["stages"]}
        import psutil

        out["uss_mb"] = {name: round(psutil.Process(pid).memory_full_info().uss / 2**20, 1)
                         for name, pid in pids.items()}
        lat = client_request(cfg, {"cmd": "latency"})["histograms"]
        out["latency_ns"] = {k: {q: v.get(q) for q in ("count", "p50_ns", "p99_ns")}
                             for k, v in lat.items()
                             if k.startswith(("sig_to_", "md_to_", "tick_to_trade"))}
        def kill_shard():
            # 1. shard 0 (the warm spare is ready: nothing was restarted yet)
            stage0 = f"strategy-{farm.name}.0"
            stage1 = f"strategy-{farm.name}.1"
            victim = pids[stage0]
            sids = {sh["shard"]: sh for sh in s["risk"]["strategies"].values()
                    if sh["strategy"] == farm.name}
            t0 = time.monotonic()
            kill_ns = time.time_ns()
            os.kill(victim, signal.SIGKILL)
            t_run = None
            while time.monotonic() - t0 < 60:
                rows = {row["stage"]: row for row in st()["stages"]}
                if rows[stage0]["state"] == "RUNNING" and rows[stage0]["pid"] != victim:
                    t_run = time.monotonic() - t0
                    break
                time.sleep(0.005)
            back_ns = time.time_ns()
            rows = {row["stage"]: row for row in st()["stages"]}
            time.sleep(1.0)   # the journal's flush
            from shm.records import INTENT_NEW
            from stages.journal import read_journal_orders

            o = read_journal_orders(Path(s["run_dir"]) / "journal")
            win = o[(o["kind"] == INTENT_NEW) & (o["reject_code"] == 0)
                    & (o["send_ts_ns"] > kill_ns) & (o["send_ts_ns"] < back_ns)]
            out["shard_kill"] = {"running_again_after_s": t_run,
                                 "new_orders_while_down": {
                                     f"shard {k}": int((win["strategy_id"] ==
                                                        sids[k]["strategy_id"]).sum())
                                     for k in sorted(sids)},
                                 "other_shard_same_pid": rows[stage1]["pid"] == pids[stage1],
                                 "other_shard_restarts": rows[stage1]["restarts"]}

        def kill_agent():
            # 2. the signal agent, once the restart's spare is ready again
            victim = pids[f"signal-{agent}"]
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            t_missing = t_back = None
            while time.monotonic() - t0 < 60:
                v = seen(st())
                now = time.monotonic() - t0
                if t_missing is None and all(x[0] == 0 for x in v):
                    t_missing = now
                if t_missing is not None and all(a == c for a, c in v):
                    t_back = now
                    break
                time.sleep(0.01)
            out["agent_kill"] = {"missing_after_s": t_missing, "valid_again_after_s": t_back,
                                 "stale_ms": next(g.max_age_ns for g in cfg.signals
                                                  if g.name == agent) / 1e6}

        if args.agent_first:   # back to back: the shard dies while the spare is being replaced
            kill_agent()
            kill_shard()
        else:
            kill_shard()
            time.sleep(args.settle_s / 2)
            kill_agent()
        time.sleep(3)
        s = st()
        run_dir = Path(s["run_dir"])
        from stages.journal import read_events

        rounds = [e for e in read_events(run_dir / "journal")
                  if e.get("what") == "farm_reallocation"]
        out["reallocations"] = {"count": len(rounds),
                                "round_trip_ms": [e["round_trip_ms"] for e in rounds],
                                "write_ms": [e.get("write_ms") for e in rounds],
                                "ack_ms": [e.get("ack_ms") for e in rounds],
                                "rounds_acked_by_every_shard": sum(
                                    len(e["acked"]) == farm.shards for e in rounds)}
        out["farm_status_text_lines"] = subprocess.run(
            [sys.executable, "run.py", "status", "--config", args.config], cwd=ROOT,
            capture_output=True, text=True).stdout.split("\n\nfarm ", 1)[-1].splitlines()[:12]
        pids_all = [row["pid"] for row in s["stages"]]
    finally:
        subprocess.run([sys.executable, "run.py", "stop", "--config", args.config], cwd=ROOT,
                       capture_output=True, timeout=120)
    time.sleep(0.5)
    from shm.segment import list_segments

    out["left_behind"] = {"segments": [x.name for x in list_segments(cfg.instance.name)],
                          "processes": [p for p in pids_all if Path(f"/proc/{p}").exists()]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
