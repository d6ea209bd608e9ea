"""The controller: topology, segments, ordered start and stop, supervision, control socket.

Runs in the controller process (``run.py start`` daemonises it, ``start --foreground`` and
``run.py run`` keep it in the operator's process). Cold path only: it never touches a data
ring; it creates every segment, spawns the stages (pipeline.supervisor), then sleeps in a
selector on its control socket and the stages' pidfds, waking every ``TICK_S`` to check
heartbeats, drive reconciliation and feed the systemd watchdog.

Failure policy (issue 4): a strategy, the venue or the journal that dies or goes silent is
restarted (a strategy's orphaned orders are cancelled at the venue first). If the risk gate or
the router dies, trading halts: the surviving one is told CTRL_KILL (router: cancel every open
order at the venue), the journal is flushed, the dead stage restarts with ``--reconcile``
(rebuilds positions from the journal), and trading resumes only when the gate's positions
equal the router's (venue-reported) positions and no order is open.

Segments are always unlinked on the way out (``finally`` + ``unlink_instance``), crash or not.
"""
from __future__ import annotations

import fcntl
import json
import os
import selectors
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common.status import ST_FAILED, ST_RESTARTING, ST_RUNNING, W_CTRL_ACK, W_STATE, W_X3
from pipeline import control as ops
from pipeline.live_params import LiveParams
from pipeline.paths import instance_dir, socket_path
from pipeline.supervisor import StageStartError, Supervisor
from shm.records import (CONTROL_DTYPE, CTRL_CANCEL_ALL, CTRL_KILL, CTRL_RECONCILE, CTRL_RESUME,
                         CTRL_STOP)
from shm.status import StatusTable
from stages.topology import (ROLE_FEED, ROLE_GATE, ROLE_JOURNAL, ROLE_ROUTER,
                             ROLE_STRATEGY, ROLE_VENUE, build_topology)

TICK_S = 0.02


class ControllerError(Exception):
    pass


class Controller:
    def __init__(self, cfg, config_path: str, duration_s: float | None = None,
                 notifier=None, log=None, replay: str | None = None,
                 replay_speed: float = 1.0, sim_time: bool = False,
                 sim_duration_s: float | None = None):
        self.cfg = cfg
        self.config_path = str(Path(config_path).resolve())
        self.instance = cfg.instance.name
        # sim-time turns are per stage: that mode runs one process per stage whatever the
        # layout (pipeline/stage_main.py does the same)
        self.topology = build_topology(cfg, dedicated=bool(sim_time))
        self.inst_dir = instance_dir(cfg)
        self.run_dir = self.inst_dir / time.strftime("run-%Y%m%d-%H%M%S")
        self.duration_s = duration_s
        self.replay = str(Path(replay).resolve()) if replay else None
        self.replay_speed = float(replay_speed)
        # sim-time mode: the stages run in lockstep on the backtest's market and clock
        # (shm/lockstep.py, stages/venue_lockstep.py) until the simulated session ends
        self.sim_time = bool(sim_time)
        self.sim_duration_s = sim_duration_s
        self.clock = None
        self.sim_failed = ""
        self.sim_stopped_early = False
        self._next_progress = 0.0
        self.notifier = notifier
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stop_requested = False
        self.status = None
        self.riskview = None
        self.farmview = None
        self.rings: dict = {}
        self.ctl_writers: dict = {}
        self.ctl_seq = 0
        self.hists: dict = {}
        self.interval_logs: dict = {}   # hist name -> shm.histogram.IntervalLog (run dir)
        self._next_hlog = 0.0
        self.supervisor = None
        self.server = None
        # held by each supervision tick and by each control-socket request (other threads)
        self.lock = threading.RLock()
        self._wake = (-1, -1)
        self.lock_fd = -1
        self.claim_fd = -1
        self.prior_state = None   # controller.state as the previous controller left it
        self.reconciling: dict[str, float] = {}   # stage -> deadline
        self.restarting: dict[str, float] = {}    # stage -> when its failure was noticed
        self.strategy_halts: dict[str, int] = {}  # strategy -> HALT_* code its hook raised
        self.pending_restarts: dict[str, float] = {}   # stage -> when its backoff ends
        self.halted_reason = ""
        self.kill_switch = False   # set by `run.py kill`; only a restart of the instance clears it
        self.events: list[str] = []
        self.live_params = LiveParams(cfg, self.topology, self.run_dir)   # `run.py set`
        self.started_at = time.time()
        self.report: dict = {}
        self.monitor = None        # pipeline/monitor.py: KPIs and alerts (status, exporter)
        self.monitoring = None     # pipeline/monitoring.py: monitor thread, exporter, dashboard
        self.farms = None          # pipeline/farm_coordinator.py: farms' budgets (after start)

    # ---------------------------------------------------------------------------------------
    def check_mode(self) -> None:
        """A replay (--replay) and sim-time play every venue in the venue stage: a live venue
        is never simulated nor replayed, so those modes refuse a config that has one."""
        from stages.topology import live_venues

        live = live_venues(self.cfg)
        if live and (self.replay or self.sim_time):
            mode = "--replay" if self.replay else "sim-time"
            raise ControllerError(
                f"{mode} plays every venue itself, and venues {', '.join(live)} are live "
                f"(kind {', '.join(sorted({self.cfg.venue(v).kind for v in live}))}): a live "
                "venue is never simulated; use a config whose venues are kind = \"sim\"")

    def acquire_lock(self) -> None:
        """One controller per instance: an flock on <run_dir>/<name>/controller.lock."""
        self.inst_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.inst_dir / "controller.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ControllerError(f"instance {self.instance!r} is already running "
                                  f"(lock {self.inst_dir / 'controller.lock'} is held)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd
        # segment names are machine-wide: so is the claim on the instance name
        from shm.segment import InstanceClaimed, claim_instance

        try:
            self.claim_fd = claim_instance(self.instance, {"run_dir": str(self.inst_dir),
                                                           "config": self.config_path})
        except InstanceClaimed as exc:
            os.close(fd)
            self.lock_fd = -1
            raise ControllerError(str(exc)) from None

    def create_segments(self) -> None:
        from pipeline.recovery import recover
        from shm.histogram import LatencyHistogram
        from shm.records import RECORD_DTYPES
        from shm.ring import BroadcastRing, SpscRing
        from stages.riskview import RiskView

        # we hold the instance's claim: whatever of it exists, a dead controller left
        recover(self.cfg, self.log, state=self.prior_state)
        topo = self.topology
        self.status = StatusTable.create(self.instance, len(topo.stages))
        self.riskview = RiskView.create(self.instance, len(topo.strategies()),
                                        len(self.cfg.instruments))
        # a parking idle (blocking, hybrid) needs its writers to look for parked readers
        from pipeline.idle import PARKING_IDLES

        wakeups = any(u.idle in PARKING_IDLES for u in topo.units)
        from stages.farmview import FarmView   # farms: what each strategy process sees

        self.farmview = FarmView.create(self.instance, len(topo.stages))
        for r in topo.rings:
            dt = RECORD_DTYPES[r.dtype]
            if r.kind == "broadcast":
                self.rings[r.name] = BroadcastRing.create(self.instance, r.name, dt, r.capacity,
                                                          r.max_readers, wakeups=wakeups)
            else:
                self.rings[r.name] = SpscRing.create(self.instance, r.name, dt, r.capacity,
                                                     wakeups=wakeups)
        for s in topo.stages:
            self.ctl_writers[s.name] = self.rings[f"ctl-{s.name}"].writer()
        for name, _title in topo.histograms():
            self.hists[name] = LatencyHistogram.create(self.instance, name)
        if self.sim_time:
            from shm.lockstep import LockstepClock
            from stages.topology import lockstep_schedule

            self.clock = LockstepClock.create(
                self.instance, [topo.stage(n).slot for n in lockstep_schedule(topo)])

    # -- control commands to stages ----------------------------------------------------
    def send_all(self, commands, wait_s: float) -> list[str]:
        """Send (stage, kind, arg0) to each stage at once, then wait up to ``wait_s`` for all
        of them together; returns the stages that acknowledged."""
        seqs = {}
        for stage, kind, arg0 in commands:
            if stage in self.supervisor.procs and self.send(stage, kind, arg0):
                seqs[stage] = self.ctl_seq
        return self._await_acks(seqs, wait_s)

    def _await_acks(self, seqs: dict, wait_s: float) -> list[str]:
        """Stages of ``seqs`` (stage -> control seq sent) that acknowledged within ``wait_s``,
        in ``seqs``' order."""
        return self.await_answers(seqs, wait_s)[0]

    def await_answers(self, seqs: dict, wait_s: float) -> tuple[list[str], list[str]]:
        """(acknowledged, failed): the stages of ``seqs`` (stage -> control seq sent) that
        handled their command within ``wait_s``, and those that answered that it failed (the
        stage's on_control raised: its ack word is the negated seq), in ``seqs``' order. A stage
        handles its commands in order, so an ack word at or past ``seq`` either way (a later
        command failed) means this one was handled."""
        def ack(stage):
            return self.status.read_word(self.topology.stage(stage).slot, W_CTRL_ACK)

        waiting = dict(seqs)
        deadline = time.monotonic() + wait_s
        while waiting:
            for stage, seq in list(waiting.items()):
                if abs(ack(stage)) >= seq or stage not in self.supervisor.procs:
                    del waiting[stage]
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        answers = {s: ack(s) for s in seqs if s not in waiting}
        return ([s for s, a in answers.items() if abs(a) >= seqs[s] and a != -seqs[s]],
                [s for s, a in answers.items() if a == -seqs[s]])

    def venue_mask(self, spec) -> int:
        """The venue ids (bit v: venue id v, the config's order from 1) whose resting orders
        die with stage ``spec``: the simulated venues of the venue stage, a paper venue's own
        (a live-mode feed rests nothing: it rejects every order); 0 for other stages."""
        venues = self.cfg.venues
        if spec.role == ROLE_VENUE:
            return sum(1 << (n + 1) for n, v in enumerate(venues) if v.kind == "sim")
        if spec.role == ROLE_FEED:
            return sum(1 << (n + 1) for n, v in enumerate(venues)
                       if v.name == spec.venue and v.paper)
        return 0

    def send(self, stage: str, kind: int, arg0: int = 0, arg1: int = 0,
             wait_s: float = 0.0) -> bool:
        """Send a control record; with ``wait_s`` wait until the stage acknowledged it."""
        spec = self.topology.stage(stage)
        self.ctl_seq += 1
        rec = np.zeros(1, dtype=CONTROL_DTYPE)
        rec["kind"] = kind
        rec["stage_id"] = spec.slot
        rec["arg_u4"] = self.ctl_seq
        rec["ts_ns"] = time.time_ns()
        rec["arg0"] = arg0
        rec["arg1"] = arg1
        if self.ctl_writers[stage].publish(rec) != 1:
            self.log(f"control ring of {stage} is full: command {kind} dropped")
            return False
        return wait_s <= 0 or bool(self._await_acks({stage: self.ctl_seq}, wait_s))

    def alive(self, stage: str) -> bool:
        spec = self.topology.stage(stage)
        return (stage in self.supervisor.procs
                and self.status.read_word(spec.slot, W_STATE) == ST_RUNNING)

    # -- start ------------------------------------------------------------------------------
    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        latest = self.inst_dir / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(self.run_dir.name)
        stages_cfg = self.cfg.stages
        self.supervisor = Supervisor(self.instance, self.config_path, self.run_dir,
                                     self.topology, self.status,
                                     stages_cfg.heartbeat_timeout_ms, stages_cfg.restart_limit,
                                     stages_cfg.silent_restart_ms,
                                     restart_window_s=stages_cfg.restart_window_s,
                                     backoff_s=stages_cfg.restart_backoff_s,
                                     backoff_max_s=stages_cfg.restart_backoff_max_s,
                                     stable_s=stages_cfg.restart_stable_s)
        self.supervisor.member_stop = lambda stage: self.send(stage, CTRL_STOP)
        if self.replay:
            self.supervisor.stage_args[ROLE_VENUE] = ["--replay", self.replay, "--replay-speed",
                                                      str(self.replay_speed)]
        if self.sim_time:
            extra = ["--lockstep"]
            if self.sim_duration_s:
                extra += ["--sim-duration", repr(float(self.sim_duration_s))]
            for spec in self.topology.stages:
                self.supervisor.stage_args[spec.role] = \
                    self.supervisor.stage_args.get(spec.role, []) + extra
        tiers = [[s for s in self.topology.start_order() if s.role not in (ROLE_GATE,
                                                                            ROLE_STRATEGY)],
                 [s for s in self.topology.stages if s.role == ROLE_GATE],
                 self.topology.strategies()]
        t0 = time.monotonic()
        for tier in tiers:
            for spec in tier:
                self.supervisor.spawn(spec)
            self.supervisor.wait_running([s.name for s in tier],
                                         should_abort=lambda: self.stop_requested)
        n, compiled = len(self.topology.stages), len(self.supervisor.compiled)
        cache = os.environ.get("NUMBA_CACHE_DIR") or "numba's default places"
        if compiled:
            self.log(f"kernels compiled by {compiled} of {n} stages "
                     f"({time.monotonic() - t0:.0f} s); cached in {cache} for the next start")
        else:
            self.log(f"kernels cached: {n} stages started in {time.monotonic() - t0:.1f} s "
                     f"without compiling ({cache})")
        self.log(f"instance {self.instance}: {len(self.topology.stages)} stages RUNNING "
                 f"(run dir {self.run_dir})")
        if self.clock is not None:
            self.log("sim-time: the stages run in lockstep on the backtest's market and "
                     "simulated clock until the session ends")
            self.clock.start()
        from pipeline.sink_proc import start_sink   # [sink.postgres]: a process of its own
        self.sink_proc = start_sink(self)

    # -- supervision ------------------------------------------------------------------------
    def on_failure(self, name: str, why: str) -> None:
        """A stage died or went silent: contain it now (a strategy's orders cancelled, trading
        halted for the gate or router), restart it when its restart policy says (at once the
        first time in the window, later with backoff), or give up on it."""
        unit = next((u for u in self.topology.units if u.name == name), None)
        if unit is not None and unit.composite:
            self.on_composite_failure(unit, why)
            return
        spec = self.topology.stage(name)
        if spec.unit and spec.unit != spec.name:
            self.on_member_fault(spec, why)
            return
        self.events.append(f"{time.strftime('%H:%M:%S')} {name} {why}")
        self.log(f"stage {name} {why}")
        self.event("stage_failed", why, stage=name)
        if self.clock is not None:
            # a restart cannot rejoin a lockstep session where it left it: the run is over
            self.sim_failed = f"stage {name} {why}"
            self.log(f"sim-time: {self.sim_failed}; the session cannot go on, stopping")
            self.supervisor.reap(name)
            self.stop_requested = True
            return
        self.supervisor.reap(name)
        now = time.monotonic()
        self.restarting[name] = now
        uptime = now - self.supervisor.started_at.get(name, now)
        delay = self.supervisor.policy.on_failure(name, now, uptime)
        if spec.role == ROLE_STRATEGY:
            # its open orders are orphans now: cancel them at the venue before it comes back;
            # the replacement rebuilds its positions and open orders from the journal
            if self.alive("order_router"):
                self.send("order_router", CTRL_CANCEL_ALL, spec.strategy_id)
        elif spec.role in (ROLE_GATE, ROLE_ROUTER):
            self.halt(f"{name} {why}")
        elif spec.role in (ROLE_VENUE, ROLE_FEED) and self.alive("order_router"):
            # a new simulator (or paper venue) starts with empty books: our orders at the
            # venues it ran are gone; those at other venues are not
            mask = self.venue_mask(spec)
            if mask:
                self.send("order_router", CTRL_RECONCILE, mask, wait_s=1.0)
        if delay is None:
            self.give_up(spec, why)
            return
        if delay > 0:
            self.pending_restarts[name] = now + delay
            self.log(f"stage {name}: restart in {delay:.1f} s (failure "
                     f"{self.supervisor.policy.recent(name, now)} within "
                     f"{self.cfg.stages.restart_window_s:.0f} s)")
            self.status.set_word(spec.slot, W_STATE, ST_RESTARTING)
            return
        self.restart_stage(spec)

    def on_member_fault(self, spec, why: str) -> None:
        """A member retired by its composite's loop (its poll kept raising) while the others
        run on. A strategy is left down (its orders cancelled), as a strategy that halted
        itself; any other member takes its composite through a restart (fail-closed: the
        gate's halt and reconciliation as if the process had died)."""
        name = spec.name
        self.events.append(f"{time.strftime('%H:%M:%S')} {name} {why}")
        self.log(f"stage {name} {why}")
        self.event("stage_failed", why, stage=name, process=spec.unit)
        self.supervisor.drop_member(name)
        if spec.role != ROLE_STRATEGY:
            self.on_composite_failure(self.topology.unit(spec.unit), f"(member {name} {why})")
            return
        if self.alive("order_router"):
            self.send("order_router", CTRL_CANCEL_ALL, spec.strategy_id)
        reason = f"{why}; left down until composite {spec.unit} restarts"
        self.supervisor.given_up[name] = reason
        self.event("stage_given_up", reason, stage=name)

    def on_composite_failure(self, unit, why: str) -> None:
        """A composite's process died, went silent, or lost a non-strategy member: every
        member is contained as its role asks (strategies' orders cancelled; gate or router:
        trading halts; venue: the router reconciles), then the composite restarts as one, by
        its own restart policy, with ``--reconcile`` when it runs the gate or the router (they
        start HALTED; trading resumes only after reconciliation)."""
        self.events.append(f"{time.strftime('%H:%M:%S')} {unit.name} {why}")
        self.log(f"composite {unit.name} ({', '.join(unit.members)}) {why}")
        members = [self.topology.stage(m) for m in unit.members]
        for m in members:
            self.event("stage_failed", why, stage=m.name, process=unit.name)
        if self.clock is not None:
            self.sim_failed = f"composite {unit.name} {why}"
            self.supervisor.reap(unit.name)
            self.stop_requested = True
            return
        self.supervisor.reap(unit.name)
        now = time.monotonic()
        self.restarting[unit.name] = now
        uptime = now - self.supervisor.started_at.get(unit.name, now)
        delay = self.supervisor.policy.on_failure(unit.name, now, uptime)
        roles = {m.role for m in members}
        if roles & {ROLE_GATE, ROLE_ROUTER}:
            self.halt(f"composite {unit.name} {why}")
        elif self.alive("order_router"):
            for m in members:
                if m.role == ROLE_STRATEGY:
                    self.send("order_router", CTRL_CANCEL_ALL, m.strategy_id)
            # a new simulator (or paper venue) starts with empty books: our orders at the
            # venues that died with the composite are gone (arg0: their mask), others are not
            mask = 0
            for m in members:
                mask |= self.venue_mask(m)
            if mask:
                self.send("order_router", CTRL_RECONCILE, mask, wait_s=1.0)
        if delay is None:
            sc = self.cfg.stages
            reason = (f"failed more than its restart limit within {sc.restart_window_s:.0f} s "
                      f"(last: {why}); left down")
            self.restarting.pop(unit.name, None)
            for m in members:
                self.supervisor.given_up[m.name] = reason
                self.status.set_word(m.slot, W_STATE, ST_FAILED)
            self.log(f"composite {unit.name} {reason}")
            self.event("stage_given_up", reason, stage=unit.name)
            if roles - {ROLE_STRATEGY}:
                self.halt(f"composite {unit.name} failed permanently")
            return
        if delay > 0:
            self.pending_restarts[unit.name] = now + delay
            self.log(f"composite {unit.name}: restart in {delay:.1f} s")
            for m in members:
                self.status.set_word(m.slot, W_STATE, ST_RESTARTING)
            return
        self.restart_unit(unit)

    def restart_unit(self, unit) -> None:
        members = [self.topology.stage(m) for m in unit.members]
        for m in members:
            self.supervisor.given_up.pop(m.name, None)
        reconcile = any(m.role in (ROLE_GATE, ROLE_ROUTER) for m in members)
        if "journal" not in unit.members:
            self.flush_journal(wait_s=0.5 if not reconcile else 2.0)
        self.supervisor.restart(members[0], reconcile=reconcile)
        for m in members:
            if m.role in (ROLE_GATE, ROLE_ROUTER):
                self.reconciling[m.name] = time.monotonic() + 60.0

    def give_up(self, spec, why: str) -> None:
        """Leave a stage down: a strategy alone (its orders were cancelled; the others trade
        on), any other stage halts trading."""
        name = spec.name
        sc = self.cfg.stages
        reason = (f"failed {sc.restart_limit + 1} times within {sc.restart_window_s:.0f} s "
                  f"(last: {why}); left down")
        self.supervisor.given_up[name] = reason
        self.restarting.pop(name, None)
        self.status.set_word(spec.slot, W_STATE, ST_FAILED)
        self.log(f"stage {name} {reason}")
        self.events.append(f"{time.strftime('%H:%M:%S')} {name} {reason}")
        self.event("stage_given_up", reason, stage=name)
        if spec.role != ROLE_STRATEGY:
            self.halt(f"{name} failed permanently")

    def restart_due(self) -> None:
        """Restarts whose backoff is over (called every tick)."""
        now = time.monotonic()
        for name, due in list(self.pending_restarts.items()):
            if now >= due:
                del self.pending_restarts[name]
                unit = next((u for u in self.topology.units if u.name == name), None)
                if unit is not None and unit.composite:
                    self.restart_unit(unit)
                else:
                    self.restart_stage(self.topology.stage(name))

    def restart_stage(self, spec) -> None:
        if spec.role == ROLE_STRATEGY:
            self.flush_journal(wait_s=0.5)
            self.supervisor.restart(spec)
        elif spec.role in (ROLE_GATE, ROLE_ROUTER):
            self.flush_journal()
            self.supervisor.restart(spec, reconcile=True)
            self.reconciling[spec.name] = time.monotonic() + 60.0
        else:
            self.supervisor.restart(spec)

    def halt(self, reason: str) -> None:
        self.halted_reason = reason
        acked = self.send_all([("risk_gate", CTRL_KILL, 0), ("order_router", CTRL_KILL, 0)],
                              wait_s=0.5)
        self.event("halt", reason, acked_by=acked)

    def event(self, what: str, why: str = "", who: str = "controller", **fields) -> None:
        """An event of the controller's into the run's events journal (journal/events.jsonl)."""
        from stages.journal import append_event

        try:
            append_event(self.run_dir / "journal", who, what, why, **fields)
        except OSError as exc:
            self.log(f"could not journal event {what}: {exc}")

    def flush_journal(self, wait_s: float = 2.0) -> None:
        if self.topology.journal and self.alive("journal"):
            if not self.send("journal", CTRL_RECONCILE, wait_s=wait_s):
                self.log(f"journal did not confirm its flush within {wait_s} s")

    def note_strategy_halts(self) -> None:
        """A strategy whose hook raised halts itself (strategies/host.py) and says which hook in
        its status word x3: journal it once, with the reason, and show it in ``status``."""
        from strategies.base import HALT_NAMES

        seen = self.strategy_halts
        for spec in self.topology.strategies():
            code = self.status.read_word(spec.slot, W_X3)
            if code and seen.get(spec.name) != code:
                seen[spec.name] = code
                why = HALT_NAMES.get(int(code), f"halt code {code}")
                self.log(f"strategy {spec.name} halted itself: {why}; its orders are cancelled, "
                         "the other strategies trade on")
                self.events.append(f"{time.strftime('%H:%M:%S')} {spec.name} halted: {why}")
                self.event("strategy_halted", why, who=spec.process, stage=spec.name,
                           strategy=spec.strategy.name, shard=spec.shard)
            elif not code and spec.name in seen:
                del seen[spec.name]   # a restarted incarnation trades again

    def note_restarts_running(self) -> None:
        for name, t0 in list(self.restarting.items()):
            proc = self.supervisor.proc_of(name)
            if proc is None:
                del self.restarting[name]
            elif all(self.status.read_word(self.topology.stage(m).slot, W_STATE) == ST_RUNNING
                     for m in (proc.unit.members if proc.unit is not None
                               else (proc.spec.name,))):
                del self.restarting[name]
                self.events.append(f"{time.strftime('%H:%M:%S')} {name} restarted (pid "
                                   f"{proc.pid}), RUNNING {time.monotonic() - t0:.1f} s after "
                                   "the failure was noticed")

    def drive_reconciliation(self) -> None:
        self.note_restarts_running()
        if not self.reconciling:
            return
        if not all(self.alive(s) for s in ("risk_gate", "order_router")):
            return
        ok, why = ops.positions_reconciled(self.riskview)
        if ok and self.kill_switch:
            self.log(f"reconciled after {', '.join(self.reconciling)} restart; the kill switch "
                     "is engaged, so trading stays HALTED")
            self.events.append(f"{time.strftime('%H:%M:%S')} reconciled, HALTED (kill switch)")
            self.reconciling.clear()
            return
        if ok:
            self.send("order_router", CTRL_RESUME, wait_s=0.5)
            self.send("risk_gate", CTRL_RESUME, wait_s=0.5)
            self.log(f"reconciled after {', '.join(self.reconciling)} restart: "
                     "positions match the venue, no open orders; trading resumed")
            self.event("resume_after_reconcile", f"{', '.join(self.reconciling)} restarted; "
                       "positions match the venue, no open orders")
            self.events.append(f"{time.strftime('%H:%M:%S')} reconciled, trading resumed")
            self.reconciling.clear()
            self.halted_reason = ""
            return
        for name, deadline in list(self.reconciling.items()):
            if time.monotonic() > deadline:
                self.log(f"reconciliation after {name} restart failed: {why}; staying HALTED")
                del self.reconciling[name]

    # -- main loop ----------------------------------------------------------------------
    def serve(self) -> None:
        from pipeline.control import ControlServer
        from pipeline.sdnotify import watchdog_interval_s

        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake = (wake_r, wake_w)
        self.server = ControlServer(socket_path(self.cfg), self.handle_request, lock=self.lock,
                                    wake_fd=wake_w)
        if self.notifier is not None:
            self.notifier.ready(f"{len(self.topology.stages)} stages running")
        self._wd_every = watchdog_interval_s(1.0)
        self._next_wd = 0.0
        end = time.monotonic() + self.duration_s if self.duration_s else None
        try:
            self.interval_logs = ops.open_interval_logs(self)
        except OSError as exc:
            self.log(f"latency interval logs off: {exc}")
        self._next_hlog = time.monotonic() + self.cfg.instance.latency_log_s
        sel = selectors.DefaultSelector()
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        watched: dict[int, str] = {}
        last_tick = time.monotonic()
        while not self.stop_requested:
            fds = self.supervisor.pidfds()
            if fds.keys() != watched.keys():
                for fd in watched.keys() - fds.keys():
                    try:
                        sel.unregister(fd)
                    except (KeyError, ValueError):
                        pass
                for fd in fds.keys() - watched.keys():
                    sel.register(fd, selectors.EVENT_READ, "pid")
                watched = fds
            for key, _ in sel.select(TICK_S):
                if key.data == "wake":
                    try:
                        os.read(wake_r, 4096)   # a request was answered: re-check stop
                    except BlockingIOError:
                        pass
            t = time.monotonic()
            with self.lock:   # requests (control-socket threads) wait for the tick, and back
                if self._tick(end, t - last_tick):
                    break
            last_tick = t
        sel.close()

    def _tick(self, end, since_last_s: float) -> bool:
        """One supervision round; True when the run's duration is over."""
        # If this loop itself woke far too late, the whole machine stalled (swap, a
        # hypervisor pause, an overloaded box): heartbeats are stale for the same reason,
        # so judge silence only on the next, punctual tick. Deaths still count.
        punctual = since_last_s < TICK_S + self.cfg.stages.heartbeat_timeout_ms / 2000
        for name, why in self.supervisor.check(silence=punctual):
            self.on_failure(name, why)
        for name, why in self.supervisor.silent_notices:
            self.events.append(f"{time.strftime('%H:%M:%S')} {name} {why}")
            self.log(f"stage {name} {why}")
        self.supervisor.silent_notices.clear()
        self.restart_due()
        self.drive_reconciliation()
        self.note_strategy_halts()
        if self.farms is not None and self.clock is None and not self.kill_switch:
            self.farms.tick(time.monotonic())
        if not self.restarting and not self.reconciling:
            self.supervisor.keep_spare()   # a warm spare for the next restart
        now = time.monotonic()
        if self.notifier is not None and now >= self._next_wd:
            self.notifier.watchdog()
            self._next_wd = now + self._wd_every
        if self.interval_logs and now >= self._next_hlog:
            self._next_hlog = now + self.cfg.instance.latency_log_s
            try:
                ops.tick_interval_logs(self)
            except OSError as exc:   # a full disk stops the logs, never the supervision
                self.log(f"latency interval logs stopped: {exc}")
                self.interval_logs = {}
        if self.clock is not None:
            return self._sim_progress(now)
        return end is not None and now >= end

    def _sim_progress(self, now: float) -> bool:
        """Sim-time mode: a progress line every few seconds; True once the session is over."""
        from shm.lockstep import W_ROUNDS, W_T_END, W_T_START

        h = self.clock.head
        if self.clock.done:
            self.log(f"sim-time: session over after {int(h[W_ROUNDS])} rounds, "
                     f"{(int(h[W_T_END]) - int(h[W_T_START])) / 1e9:g} simulated s")
            return True
        if now >= self._next_progress and h[W_T_END] > h[W_T_START]:
            self._next_progress = now + 5.0
            t0, t1 = int(h[W_T_START]), int(h[W_T_END])
            self.log(f"sim-time: {(self.clock.now - t0) / 1e9:.1f} of {(t1 - t0) / 1e9:g} "
                     f"simulated s, {int(h[W_ROUNDS])} rounds")
        return False

    def sim_summary(self) -> dict:
        """The sim-time session as the report shows it."""
        from shm.lockstep import W_INTENTS, W_REPORTS, W_ROUNDS, W_T_END, W_T_START

        h = self.clock.head
        return {"done": bool(self.clock.done) and not self.sim_stopped_early,
                "rounds": int(h[W_ROUNDS]),
                "t_start_ns": int(h[W_T_START]), "t_end_ns": int(h[W_T_END]),
                "now_ns": self.clock.now, "venue_reports": int(h[W_REPORTS]),
                "intents": int(h[W_INTENTS]), "source": self.replay or "sim",
                "failed": self.sim_failed}

    def handle_request(self, req: dict) -> dict:
        return ops.handle_request(self, req)

    # -- stop -------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Strategies first, cancel open orders, drain, then gate, router, venue, journal."""
        if self.monitoring is not None:   # a stop is no alert: monitoring ends before it
            self.monitoring.close()
        with self.lock:   # no control request runs while the stages are being stopped
            self._shutdown()

    def _shutdown(self) -> None:
        if self.notifier is not None:
            self.notifier.stopping()
        sup = self.supervisor
        if sup is None:
            return
        if self.clock is not None and not self.clock.done:
            # stopped before the simulated session's end: end it, so that the venue answers
            # the stop's cancels and no stage takes another turn
            self.sim_stopped_early = True
            self.clock.finish()
        sup.stop_spare()
        t0 = time.monotonic()

        def phase(what):
            self.log(f"stop: {what} (+{time.monotonic() - t0:.2f} s)")

        sup.stop([s.name for s in self.topology.strategies()])
        phase("strategies stopped")
        if self.alive("order_router"):
            self.send("order_router", CTRL_CANCEL_ALL, 0, wait_s=1.0)
            closed = ops.wait_orders_closed(self, timeout_s=2.0)
            phase("open orders cancelled" if closed else "orders still open after 2 s")
        self.report = ops.collect_report(self, before_stop=True)
        if self.clock is not None:
            self.report["sim_time"] = self.sim_summary()
        for name in ("risk_gate", "order_router", "venue",
                     *[f.name for f in self.topology.feeds()], "journal"):
            if name in sup.procs:
                sup.stop([name])
                phase(f"{name} stopped")
        ops.finish_report(self)
        phase("report written")

    def close(self) -> None:
        """Release everything; safe to call after any failure, and more than once."""
        from shm.segment import unlink_instance

        try:
            if self.monitoring is not None:   # its threads read the segments: stop them first
                self.monitoring.close()
            if self.supervisor is not None:
                self.supervisor.kill_all()
            from pipeline.sink_proc import stop_sink   # after the journal: it drains the rest
            stop_sink(self, getattr(self, "sink_proc", None))
        finally:
            if self.server is not None:
                self.server.close()
                self.server = None
            for fd in self._wake:
                if fd >= 0:
                    os.close(fd)
            self._wake = (-1, -1)
            for w in self.ctl_writers.values():
                w._drop()
            self.ctl_writers.clear()
            for ring in self.rings.values():
                ring.close()
            self.rings.clear()
            for log in self.interval_logs.values():
                try:
                    log.close()
                except OSError:
                    pass
            self.interval_logs = {}
            for h in self.hists.values():
                h.close()
            self.hists.clear()
            for obj in (self.status, self.riskview, self.clock, self.farmview):
                if obj is not None:
                    obj.close()
            self.status = self.riskview = self.clock = self.farmview = None
            unlink_instance(self.instance)
            if self.claim_fd >= 0:
                from shm.segment import release_claim

                release_claim(self.claim_fd, self.instance)
                self.claim_fd = -1
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
                self.lock_fd = -1

    def run(self, on_started=None) -> int:
        """The whole life: lock, segments, start, serve, stop, unlink. Returns an exit code."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.check_mode()
        cpu = self.cfg.instance.controller_cpu
        if cpu is not None:   # off the hot core; stages re-pin (or unpin) themselves
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as exc:
                self.log(f"cannot pin the controller to CPU {cpu}: {exc.strerror}")
        self.acquire_lock()
        try:
            self.create_segments()
            self.start()
            from pipeline.farm_coordinator import FarmCoordinator

            self.farms = FarmCoordinator(self)
            from pipeline.monitoring import Monitoring, MonitoringError

            self.monitoring = Monitoring(self)
            try:
                self.monitoring.start()
            except MonitoringError as exc:
                raise ControllerError(str(exc)) from None
            if on_started is not None:
                on_started(self)
            self.serve()
            self.shutdown()
            return 1 if self.sim_failed else 0
        except StageStartError as exc:
            self.log(f"error: {exc}")
            if on_started is not None:
                on_started(self, error=str(exc))
            return 1
        finally:
            self.close()

    def _on_signal(self, signum, frame):
        if self.stop_requested:
            return
        self.stop_requested = True
        if self.run_dir.is_dir():
            self.event("stop", f"{signal.Signals(signum).name} to the controller", who="signal")


def write_state(path: Path, state: str, detail: str = "") -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"state": state, "detail": detail, "pid": os.getpid()}))
    os.replace(tmp, path)


def main(argv=None) -> int:
    """``python -m pipeline.controller --config F``: the daemon body of ``run.py start``."""
    import argparse

    from pipeline.config import load_config
    from pipeline.sdnotify import SdNotifier

    ap = argparse.ArgumentParser(prog="python -m pipeline.controller")
    ap.add_argument("--config", required=True)
    ap.add_argument("--replay", default=None)
    ap.add_argument("--replay-speed", type=float, default=1.0)
    args = ap.parse_args(argv)
    os.umask(0o077)   # run directories 0700, journals, reports and logs 0600
    cfg = load_config(args.config)
    state_file = instance_dir(cfg) / "controller.state"
    instance_dir(cfg).mkdir(parents=True, exist_ok=True)

    def on_started(ctl, error=None):
        write_state(state_file, "failed" if error else "running", error or "")

    ctl = Controller(cfg, args.config, notifier=SdNotifier(), replay=args.replay,
                     replay_speed=args.replay_speed)
    from pipeline.recovery import read_state

    ctl.prior_state = read_state(cfg, prev=True)
    try:
        write_state(state_file, "starting")
        rc = ctl.run(on_started)
    except ControllerError as exc:
        write_state(state_file, "failed", str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BaseException as exc:
        write_state(state_file, "failed", f"{type(exc).__name__}: {exc}")
        raise
    write_state(state_file, "stopped" if rc == 0 else "failed",
                "" if rc == 0 else "see controller.log")
    return rc


if __name__ == "__main__":
    sys.exit(main())
