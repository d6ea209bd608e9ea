"""Entry point of one stage process: ``python -m pipeline.stage_main --stage NAME ...``.

Runs in each stage process (started by pipeline.supervisor). Cold start-up: load and validate
the config, derive the topology, pin to the configured CPU, optionally take SCHED_FIFO and
mlockall (reported on stderr, never fatal: an unprivileged user still gets a working
pipeline), attach the status block and the stage's control ring, then hand over to the
StageRunner, whose loop is the stage's hot path.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import time
from pathlib import Path


def _apply_os_settings(cpu, cfg, name: str) -> int | None:
    """Pin, real-time priority, mlockall; returns the CPU pinned to (None: not pinned)."""
    pinned = None
    if cpu is None and cfg.instance.controller_cpu is not None:
        try:   # not the controller's CPU, which we inherited: any
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        except OSError:
            pass
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            pinned = cpu
        except OSError as exc:
            print(f"{name}: cannot pin to CPU {cpu}: {exc.strerror} (running unpinned)",
                  file=sys.stderr)
    # a park (sem_timedwait) or sleep ends up to the timer slack late (50 us by default): a
    # stage wakes within a few microseconds of its deadline instead
    PR_SET_TIMERSLACK = 29
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    prio = cfg.instance.realtime_priority
    if prio:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        except (OSError, AttributeError) as exc:
            print(f"{name}: SCHED_FIFO {prio} refused ({exc}); normal scheduling",
                  file=sys.stderr)
    if cfg.instance.lock_memory:
        libc = ctypes.CDLL(None, use_errno=True)
        MCL_CURRENT, MCL_FUTURE = 1, 2
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            err = ctypes.get_errno()
            print(f"{name}: mlockall refused ({os.strerror(err)}; raise LimitMEMLOCK); "
                  "pages may be swapped", file=sys.stderr)
    return pinned


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM us when the controller dies (even by SIGKILL): no orphaned stage keeps trading.
    The getppid check closes the race of a parent that died before prctl ran."""
    PR_SET_PDEATHSIG = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if parent_pid and os.getppid() != parent_pid:
        sys.exit(f"controller {parent_pid} is gone before this stage started")


FEED_PARK_S = 1e-3


def _clock_park(park, runner):
    """``park`` for a process that runs the simulated venue: the venue is driven by the
    clock, not by its input rings, and nothing rings the doorbell when its next event falls
    due; so it parks no longer than until then (market/sim.py ``sim_next_ns``, in the
    simulator's ns, which start at the wall clock). Compiled while the stage starts."""
    from market.sim import sim_next_ns

    def next_due_ns() -> int:
        return int(sim_next_ns(*runner.stage.venue.state))

    runner.warm = next_due_ns

    def clock_park(timeout_s: float) -> bool:
        venue = getattr(runner.stage, "venue", None)
        if venue is not None:
            due_s = (int(sim_next_ns(*venue.state)) - time.time_ns()) / 1e9
            if due_s <= 0:
                return True
            timeout_s = min(timeout_s, due_s)
        return park(timeout_s)

    return clock_park


def make_stage(spec, replay: str | None = None, lockstep: bool = False):
    from stages.topology import (ROLE_FEED, ROLE_GATE, ROLE_JOURNAL, ROLE_ROUTER,
                                 ROLE_STRATEGY, ROLE_VENUE)

    # numba's cache is keyed by every source compiled into a kernel (pipeline/numba_cache.py,
    # configured by run.py and inherited through NUMBA_CACHE_DIR), so no per-module refresh is
    # needed here.
    if spec.role == ROLE_VENUE and lockstep:
        from stages.venue_lockstep import LockstepVenueStage
        return LockstepVenueStage()
    if spec.role == ROLE_VENUE and replay:
        from stages.feed_replay import FeedReplayStage
        return FeedReplayStage()
    if spec.role == ROLE_VENUE:
        from stages.venue_sim import SimVenueStage
        return SimVenueStage()
    if spec.role == ROLE_FEED:
        # a live venue is never simulated nor replayed: its own feed handler plays it
        from stages.feed_live import LiveFeedStage
        return LiveFeedStage()
    if spec.role == ROLE_STRATEGY:
        from stages.strategy_host import StrategyHostStage
        return StrategyHostStage()
    if spec.role == ROLE_GATE:
        from stages.risk_gate import RiskGateStage
        return RiskGateStage()
    if spec.role == ROLE_ROUTER:
        from stages.order_router import OrderRouterStage
        return OrderRouterStage()
    if spec.role == ROLE_JOURNAL:
        from stages.journal import JournalStage
        return JournalStage()
    if spec.role == "signal":   # a farm's signal agent (stages.topology.ROLE_SIGNAL)
        from stages.signal_agent import SignalAgentStage
        return SignalAgentStage()
    raise ValueError(f"no stage class for role {spec.role!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.stage_main")
    ap.add_argument("--instance", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--restarts", type=int, default=0)
    ap.add_argument("--reconcile", action="store_true",
                    help="restarted after a crash: rebuild state from the journal first")
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--replay", default=None, help="venue stage: replay this record file")
    ap.add_argument("--replay-speed", type=float, default=1.0)
    ap.add_argument("--lockstep", action="store_true",
                    help="sim-time mode: work on this stage's turns of the shared clock")
    ap.add_argument("--sim-duration", type=float, default=None,
                    help="sim-time mode: simulated seconds of the session (venue)")
    args = ap.parse_args(argv)
    t_main = time.monotonic_ns()
    _die_with_parent(args.parent_pid)
    from pipeline.compile_watch import CompileWatch

    watch = CompileWatch().install()   # before any kernel module is imported

    from pipeline.config import load_config
    from pipeline.idle import PARKING_IDLES, idle_for
    from pipeline.runner import StageRunner
    from shm.records import CONTROL_DTYPE
    from shm.doorbell import wake_parked
    from shm.ring import SpscRing
    from shm.status import StatusTable
    from stages.base import StageContext
    from stages.topology import build_topology

    import dataclasses

    t_imports = time.monotonic_ns()
    cfg = load_config(args.config, build=False)   # checked by the controller
    if cfg.instance.name != args.instance:
        cfg = dataclasses.replace(cfg, instance=dataclasses.replace(cfg.instance,
                                                                     name=args.instance))
    # sim-time turns are per stage: that mode always runs one process per stage
    topo = build_topology(cfg, dedicated=args.lockstep)
    unit = topo.unit(args.stage)
    cpu = _apply_os_settings(unit.cpu, cfg, unit.name)
    status = StatusTable.attach(args.instance, timeout_s=5.0)
    door = None
    if unit.idle in PARKING_IDLES:
        from shm.doorbell import Doorbell

        door = Doorbell(args.instance)
    parker = [door.park if door is not None else None]
    timeout_s = cfg.stages.park_timeout_ms / 1e3
    if any(topo.stage(m).role == "feed" for m in unit.members):
        # a live feed's socket thread hands messages over in memory, not through a ring:
        # nothing rings the doorbell for them, so such a process parks 1 ms at most
        timeout_s = min(timeout_s, FEED_PARK_S)
    idle = idle_for(unit.idle, park=lambda t: parker[0](t) if parker[0] else time.sleep(t),
                    spin_us=unit.spin_us if unit.spin_us is not None else cfg.stages.spin_us,
                    timeout_s=timeout_s)
    control_rings, runners = [], []
    for name in unit.members:
        spec = topo.stage(name)
        control_ring = SpscRing.attach(args.instance, f"ctl-{spec.name}", CONTROL_DTYPE)
        control_rings.append(control_ring)
        ctx = StageContext(instance=args.instance, name=spec.name, role=spec.role, config=cfg,
                           topology=topo, run_dir=Path(args.run_dir), slot=spec.slot, cpu=cpu,
                           restarts=args.restarts, extra={"spec": spec,
                                                          "reconcile": args.reconcile,
                                                          "replay": args.replay,
                                                          "replay_speed": args.replay_speed,
                                                          "lockstep": args.lockstep,
                                                          "sim_duration_s": args.sim_duration})
        stage = make_stage(spec, args.replay, args.lockstep)
        runner = StageRunner(stage, ctx, status.block(spec.slot), control_ring.reader(), idle)
        runner.wake = wake_parked
        runner.compile_watch = watch
        runners.append(runner)
        if door is not None and spec.role == "venue" and not (args.replay or args.lockstep):
            parker[0] = _clock_park(door.park, runner)   # the simulated venue's process
    t_attached = time.monotonic_ns()
    clk = None
    try:
        if unit.composite:
            from pipeline.composite import CompositeRunner

            for r in runners:
                r.startup_marks = {"main": t_main, "imports": t_imports,
                                   "attached": t_attached}
            comp = CompositeRunner(unit.name, runners, idle, wake=wake_parked,
                                   compile_watch=watch,
                                   member_poll_us=cfg.stages.member_poll_us)
            comp.install_signals()
            return comp.run()
        runner, spec = runners[0], topo.stage(unit.members[0])
        if args.lockstep:
            from shm.lockstep import LockstepClock
            from stages.topology import lockstep_schedule

            schedule = [topo.stage(n).slot for n in lockstep_schedule(topo)]
            if spec.slot in schedule:
                clk = LockstepClock.attach(args.instance, schedule)
                runner.lockstep, runner.lockstep_slot = clk, spec.slot
        runner.startup_marks = {"main": t_main, "imports": t_imports, "attached": t_attached}
        runner.install_signals()
        return runner.run()
    finally:
        if clk is not None:
            clk.close()
        for ring in control_rings:
            ring.close()
        if door is not None:
            door.close()
        status.close()


def _import_for_preload(name: str):
    """importlib.import_module, except a strategy's generated host step (stages/host_codegen),
    which is made, not imported."""
    import importlib

    from common.runtime import GENERATED_PREFIX as prefix

    if name.startswith(prefix):
        from stages.host_codegen import host_step_for

        host_step_for(name[len(prefix):])   # (it took a timer argument once: an ImportError
        # here had left every restarted strategy to load its host step itself)
        return sys.modules[name]
    return importlib.import_module(name)


def _preload(run_dir: str | None) -> None:
    """The compiled code the run's stages use (their manifests under ``warm_dir``), loaded
    from numba's cache now rather than by the stage a restart hands us."""
    from pipeline.numba_cache import preload, warm_dir

    if run_dir:
        n_ok, n_skip = preload(sorted(warm_dir(run_dir).glob("*.pkl")), _import_for_preload)
        print(f"standby: {n_ok} compiled functions preloaded ({n_skip} not in the cache)",
              file=sys.stderr, flush=True)


def standby(parent_pid: int, run_dir: str | None = None) -> int:
    """A warm spare: import everything a stage needs, then wait for the supervisor to say which
    stage to become (one line on stdin: a JSON object with ``argv`` and ``log``). A restart
    then skips the interpreter's start and the imports (numpy, numba, the kernels' modules):
    most of a cold stage's start-up. EOF on stdin (the supervisor closed the pipe, or died)
    ends the spare."""
    import json

    _die_with_parent(parent_pid)
    import numpy  # noqa: F401
    import numba  # noqa: F401

    import market.book  # noqa: F401
    import market.risk  # noqa: F401
    import stages.gate_kernels  # noqa: F401
    import stages.journal  # noqa: F401
    import stages.order_router  # noqa: F401
    import stages.risk_gate  # noqa: F401
    import stages.router_kernels  # noqa: F401
    import stages.strategy_host  # noqa: F401
    import stages.venue_sim  # noqa: F401
    import numpy.ma  # noqa: F401  (numba's typeof imports it lazily on a first call)
    from pipeline.config import load_config  # noqa: F401
    from pipeline.runner import StageRunner  # noqa: F401

    import select

    # an order already waiting (a restart came while we were importing): become that stage
    # now; preloading every stage's compiled code first made such a restart wait seconds
    if not select.select([sys.stdin], [], [], 0)[0]:
        _preload(run_dir)
    try:
        os.write(1, b"ready\n")   # the supervisor counts on us from here
    except BrokenPipeError:
        pass   # it already handed us a stage before we were ready: its order is on stdin
    line = sys.stdin.readline()
    if not line:
        return 0
    order = json.loads(line)
    fd = os.open(order["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return main(order["argv"])


def _exit(rc) -> None:
    """Leave without the interpreter's teardown: the stage has drained, closed its files and
    segments; unloading numba's and LLVM's state would take most of a second per process,
    and on a controller's death every stage exits at once."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc if isinstance(rc, int) else 1)


if __name__ == "__main__":
    if len(sys.argv) in (3, 4) and sys.argv[1] == "--standby":
        _exit(standby(int(sys.argv[2]), sys.argv[3] if len(sys.argv) == 4 else None))
    _exit(main())
