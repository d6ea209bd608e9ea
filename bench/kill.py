"""``run.py bench kill [--rounds N] [--event-rate R] [--json]``: the kill switch, timed.

Cold path (the benchmark only observes). Starts a private instance of the default config
under its default load (the simulated venues at ``--event-rate`` background events/s each,
three strategies trading), then ``--rounds`` times:

  1. runs ``python run.py kill --config ...`` as an operator would from a shell;
  2. times, from just before that process is spawned:
       - gate halted: the risk gate has applied the kill (it acknowledged the command in its
         status block; from then on it denies every new order);
       - router halted: the order router has applied it (its halted flag);
       - command done: the CLI process has printed its answer and exited;
  3. resumes (``resume`` over the socket) and waits for ACTIVE before the next round.

For reference it also times a bare ``python -c pass`` under the same load: the part of the
figure that is the interpreter's own start-up on this machine. Then it stops the instance
(everything unlinked).
"""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--rounds", type=int, default=20, help="kill/resume rounds (default 20)")
    p.add_argument("--event-rate", type=float, default=None,
                   help="background events/s per simulated venue (default: the config's)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of trading before the "
                                                            "first kill (default 3)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _pct(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _measure(args) -> dict:
    import shutil
    import subprocess
    import sys
    import tempfile
    import time
    import uuid
    from pathlib import Path

    from bench.pipeline import _config_text
    from common.status import W_CTRL_ACK, W_X0
    from pipeline.config import DEFAULT_CONFIG, load_config
    from pipeline.control import client_request
    from shm.segment import unlink_instance
    from shm.status import StatusTable

    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix="hftfarm-bench-"))
    instance = f"bench{uuid.uuid4().hex[:6]}"
    cfg_path = tmp / "bench.toml"
    default_rate = load_config(DEFAULT_CONFIG).sim.event_rate_per_s
    rate = args.event_rate if args.event_rate is not None else default_rate
    cfg_path.write_text(_config_text(instance, tmp / "runs", rate, None))
    cfg = load_config(cfg_path)
    py = sys.executable
    r = subprocess.run([py, "run.py", "start", "--config", str(cfg_path)], cwd=root,
                       capture_output=True, text=True)
    if r.returncode != 0:
        unlink_instance(instance)
        raise RuntimeError(f"could not start the pipeline: {r.stderr.strip()}")
    table = None
    gate_ms, router_ms, done_ms, bare_ms = [], [], [], []
    try:
        st = client_request(cfg, {"cmd": "status"})
        slots = {s["stage"]: i for i, s in enumerate(st["stages"])}
        table = StatusTable.attach(instance)
        gate, router = slots["risk_gate"], slots["order_router"]
        time.sleep(args.warmup)
        for i in range(args.rounds):
            g0 = table.read_word(gate, W_CTRL_ACK)
            t0 = time.perf_counter()
            proc = subprocess.Popen([py, "run.py", "kill", "--config", str(cfg_path),
                                     "--why", f"bench round {i + 1}"], cwd=root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            tg = tr = None
            while tg is None or tr is None:
                now = time.perf_counter()
                if tg is None and table.read_word(gate, W_CTRL_ACK) != g0:
                    tg = now
                if tr is None and table.read_word(router, W_X0) != 0:
                    tr = now
                if now - t0 > 30:
                    proc.kill()
                    raise RuntimeError("the kill was not applied within 30 s")
                time.sleep(0.0002)
            _, err = proc.communicate(timeout=30)
            td = time.perf_counter()
            if proc.returncode != 0:
                raise RuntimeError(f"run.py kill answered {proc.returncode}: {err.decode()}")
            gate_ms.append((tg - t0) * 1e3)
            router_ms.append((tr - t0) * 1e3)
            done_ms.append((td - t0) * 1e3)
            client_request(cfg, {"cmd": "resume", "who": "bench", "why": "next round"},
                           timeout_s=30)
            t = time.perf_counter()
            subprocess.run([py, "-c", "pass"])
            bare_ms.append((time.perf_counter() - t) * 1e3)
            time.sleep(0.3)
            if not args.json:
                print(f"  round {i + 1}/{args.rounds}: gate halted {gate_ms[-1]:.0f} ms, "
                      f"command done {done_ms[-1]:.0f} ms", flush=True)
    finally:
        if table is not None:
            table.close()
        subprocess.run([py, "run.py", "stop", "--config", str(cfg_path)], cwd=root,
                       capture_output=True, text=True)
        unlink_instance(instance)
        shutil.rmtree(tmp, ignore_errors=True)

    def summary(xs):
        return {"p50_ms": round(_pct(xs, 0.5), 1), "p90_ms": round(_pct(xs, 0.9), 1),
                "max_ms": round(max(xs), 1)}

    return {"event_rate_per_venue": rate, "rounds": args.rounds,
            "gate_halted": summary(gate_ms), "router_halted": summary(router_ms),
            "command_done": summary(done_ms), "bare_python_start": summary(bare_ms)}


def main(args) -> int:
    import json
    import os

    from pipeline.exits import EXIT_USAGE, CliError

    if args.rounds < 1:
        raise CliError("--rounds: need at least 1", EXIT_USAGE)
    if args.event_rate is not None and args.event_rate < 0:
        raise CliError("--event-rate: must be >= 0", EXIT_USAGE)
    if not args.json:
        print(f"kill switch benchmark: {os.cpu_count()} CPUs, {args.rounds} rounds "
              "(run.py kill from a shell -> risk gate halted)", flush=True)
    res = _measure(args)
    res["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"\nunder {res['event_rate_per_venue']:.0f} events/s per venue:")
    print("  from `run.py kill` spawned to          p50 ms   p90 ms   max ms")
    for key, title in (("gate_halted", "risk gate halted"), ("router_halted", "router halted"),
                       ("command_done", "command answered and exited"),
                       ("bare_python_start", "(reference: bare `python -c pass`)")):
        s = res[key]
        print(f"  {title:<36} {s['p50_ms']:>8.1f} {s['p90_ms']:>8.1f} {s['max_ms']:>8.1f}")
    return 0
