"""Spawning and watching stage processes: one OS process per stage. Runs in the controller.

Cold path. Each stage is ``python -m pipeline.stage_main ...`` started with subprocess (a fresh
interpreter: no forked numba/LLVM state, no inherited locks), its own session (a Ctrl-C in the
operator's terminal reaches the controller, which stops stages in order, not every process at
once), stdout/stderr appended to ``<run_dir>/logs/<stage>.log``. The stage pins itself
(sched_setaffinity) and applies real-time priority / mlockall before it reports RUNNING.

Death is noticed through a pidfd per child (readable the moment the process exits: the
controller's selector wakes at once, no polling) and silence through the heartbeat word of the
stage's status block (older than ``heartbeat_timeout_ms`` while RUNNING), unless the kernel's
run-queue accounting shows the stage was waiting for a CPU (see ``_starved``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.status import (ST_COMPILING, ST_DEAD, ST_FAILED, ST_RESTARTING, ST_RUNNING,
                           ST_STOPPED, STATE_NAMES, W_HEARTBEAT_NS, W_PID, W_RESTARTS, W_STATE)

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0   # first start compiles numba kernels: minutes on a busy 2-core box
START_PROGRESS_S = 30.0   # past the timeout, a start still compiling must show, per this many
START_PROGRESS_CPU = 0.05  # seconds, this share of a core (a stuck one shows none)


class StageStartError(Exception):
    """A stage exited or timed out before it reported RUNNING; names it and quotes its log."""


class StageProcess:
    """One stage process: a dedicated stage, or a composite running several (``unit``, a
    stages.topology.ProcessUnit; ``spec`` is its first member's)."""

    def __init__(self, spec, popen: subprocess.Popen, log_path: Path, unit=None):
        self.spec = spec
        self.unit = unit
        self.name = unit.name if unit is not None else spec.name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.started_mono = time.monotonic()
        self.pidfd = -1
        try:
            self.pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            pass  # old kernel: the controller's periodic poll() still notices the exit

    def exited(self) -> int | None:
        return self.popen.poll()

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


class RestartPolicy:
    """Per-stage restart budget: at most ``limit`` restarts within ``window_s``. A stage that
    had run for ``stable_s`` before it failed restarts at once; one that keeps failing soon
    after its (re)start waits ``backoff_s`` from its second quick failure on, doubling each
    time up to ``backoff_max_s`` (a crash loop does not spin). A stage failing more often than
    the budget is given up on (the controller decides what that means for its role)."""

    def __init__(self, limit: int, window_s: float, backoff_s: float, backoff_max_s: float,
                 stable_s: float = 5.0):
        self.limit, self.window_s = int(limit), float(window_s)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.stable_s = float(stable_s)
        self.failures: dict[str, list[float]] = {}
        self.quick: dict[str, int] = {}   # consecutive failures soon after a (re)start
        self.limits: dict[str, int] = {}  # name -> its own limit (a composite's restart_limit)

    def recent(self, name: str, now: float) -> int:
        times = [t for t in self.failures.get(name, ()) if now - t <= self.window_s]
        self.failures[name] = times
        return len(times)

    def on_failure(self, name: str, now: float, uptime_s: float = 0.0) -> float | None:
        """Record a failure at ``now`` of a stage that had run ``uptime_s``; the delay before
        restarting it (s), or None: give up."""
        n = self.recent(name, now) + 1
        self.failures[name].append(now)
        if n > self.limits.get(name, self.limit):
            return None
        if uptime_s >= self.stable_s:
            self.quick[name] = 0
            return 0.0
        k = self.quick.get(name, 0) + 1
        self.quick[name] = k
        return 0.0 if k == 1 else min(self.backoff_max_s, self.backoff_s * 2 ** (k - 2))


class Supervisor:
    def __init__(self, instance: str, config_path: str, run_dir: Path, topology, status,
                 heartbeat_timeout_ms: int, restart_limit: int, silent_restart_ms: int = 0,
                 use_spare: bool = True, restart_window_s: float = 300.0,
                 backoff_s: float = 0.5, backoff_max_s: float = 10.0, stable_s: float = 5.0):
        self.instance = instance
        self.config_path = str(config_path)
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.topology = topology
        self.status = status
        self.heartbeat_timeout_ns = int(heartbeat_timeout_ms) * 1_000_000
        # Silence is *noticed* at heartbeat_timeout_ms (reported at once) but a stage is only
        # killed and replaced once silent for silent_restart_ms: on a machine with fewer cores
        # than stages a healthy stage can miss one 100 ms beat, and a kill loses its state.
        self.silent_restart_ns = max(int(silent_restart_ms) * 1_000_000, self.heartbeat_timeout_ns)
        self.silent_notices: list[tuple[str, str]] = []   # drained by the controller
        self._silent_noticed: set[str] = set()
        self.procs: dict[str, StageProcess] = {}
        self._sched: dict[int, tuple[int, int]] = {}   # pid -> (when, run-queue wait ns)
        self.starved_ticks = 0
        self.stage_args: dict[str, list[str]] = {}   # role -> extra stage_main arguments
        # restarts per process: a dedicated stage's name, or a composite's
        self.restarts: dict[str, int] = {s.name: 0 for s in topology.stages}
        self.policy = RestartPolicy(restart_limit, restart_window_s, backoff_s, backoff_max_s,
                                    stable_s)
        for u in getattr(topology, "units", ()):
            self.restarts.setdefault(u.name, 0)
            if u.restart_limit is not None:
                self.policy.limits[u.name] = u.restart_limit
        self.units: dict[str, StageProcess] = {}   # process name -> its process
        # stops one member of a live composite (the controller's CTRL_STOP on its control
        # ring); set by the controller
        self.member_stop = None
        self.started_at: dict[str, float] = {}   # stage -> when its current process started
        self.given_up: dict[str, str] = {}   # stage -> why it is left down
        self.spawn_order: list[str] = []   # stages in the order first spawned
        self.compiled: set[str] = set()      # stages seen COMPILING while starting
        self.spare: subprocess.Popen | None = None
        self.spare_ready = False
        self.use_spare = use_spare

    # -- spawning -------------------------------------------------------------------------
    def _env(self) -> dict:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only the controller talks to systemd
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def unit_of(self, spec):
        """The process unit running ``spec`` (None: a topology without units)."""
        units = getattr(self.topology, "units", None)
        if not units:
            return None
        return self.topology.unit(getattr(spec, "unit", "") or spec.name)

    def proc_of(self, name: str) -> StageProcess | None:
        """The live process of stage or process ``name``."""
        return self.procs.get(name) or self.units.get(name)

    def spawn(self, spec, *, reconcile: bool = False) -> StageProcess:
        """Start the process that runs ``spec``: the stage alone, or its whole composite (a
        composite already running is not started twice: its process is returned)."""
        unit = self.unit_of(spec)
        pname = unit.name if unit is not None else spec.name
        live = self.units.get(pname)
        if live is not None and live.exited() is None:
            return live
        members = [self.topology.stage(m) for m in unit.members] if unit is not None \
            else [spec]
        log_path = self.log_dir / f"{pname}.log"
        restarts = self.restarts.setdefault(pname, 0)
        args = ["--instance", self.instance, "--config", self.config_path, "--run-dir",
                str(self.run_dir), "--stage", pname, "--restarts",
                str(restarts), "--parent-pid", str(os.getpid())]
        if reconcile:
            args.append("--reconcile")
        for role in dict.fromkeys(m.role for m in members):
            for a in self.stage_args.get(role, []):
                if a not in args:
                    args.append(a)
        for m in members:
            if m.name != pname:   # logs/<stage>.log stays the stage's log: its process's
                link = self.log_dir / f"{m.name}.log"
                if not link.is_symlink() and not link.exists():
                    link.symlink_to(log_path.name)
            self.status.set_word(m.slot, W_STATE, ST_RESTARTING if restarts else 0)
            self.status.set_word(m.slot, W_RESTARTS, restarts)
            self.started_at[m.name] = time.monotonic()
            if m.name not in self.spawn_order:
                self.spawn_order.append(m.name)
        self.started_at[pname] = time.monotonic()
        popen = self._take_spare(args, log_path)
        if popen is None:
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "ab") as log:
                popen = subprocess.Popen([sys.executable, "-m", "pipeline.stage_main", *args],
                                         cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=self._env(),
                                         start_new_session=True, close_fds=True)
        proc = StageProcess(members[0], popen, log_path, unit)
        # the pid is known now; the stage itself confirms it with its first heartbeat
        for m in members:
            self.status.set_word(m.slot, W_PID, popen.pid)
            self.procs[m.name] = proc
        self.units[pname] = proc
        return proc

    # -- the warm spare -----------------------------------------------------------------
    # One process that has already started an interpreter and imported numpy, numba and the
    # stage modules, parked on a pipe (pipeline.stage_main.standby). A restart hands it the
    # stage's arguments instead of starting a new interpreter: most of a cold start's second
    # or two. It is replaced on the controller's next quiet tick (``keep_spare``).
    def keep_spare(self) -> None:
        """Start the spare if there is none (cold; call when no restart is under way)."""
        if not self.use_spare or (self.spare is not None and self.spare.poll() is None):
            return
        log_path = self.log_dir / "standby.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with open(fd, "ab") as log:
            self.spare = subprocess.Popen(
                [sys.executable, "-m", "pipeline.stage_main", "--standby", str(os.getpid()),
                 str(self.run_dir)],
                cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env=self._env(), start_new_session=True, close_fds=True)
            os.set_blocking(self.spare.stdout.fileno(), False)
            self.spare_ready = False

    def spare_is_ready(self) -> bool:
        """True once the spare has finished its imports (it writes one line on its stdout)."""
        sp = self.spare
        if sp is None or sp.poll() is not None:
            return False
        if not self.spare_ready:
            try:
                self.spare_ready = bool(os.read(sp.stdout.fileno(), 64))
            except BlockingIOError:
                pass
        return self.spare_ready

    def _take_spare(self, args, log_path) -> subprocess.Popen | None:
        import json

        spare, self.spare = self.spare, None
        if spare is None or spare.poll() is not None:
            return None
        spare.stdout.close()
        try:
            spare.stdin.write((json.dumps({"argv": args, "log": str(log_path)}) + "\n")
                              .encode())
            spare.stdin.close()
        except OSError:
            self._end_spare(spare)
            return None
        return spare

    @staticmethod
    def _end_spare(spare) -> None:
        if spare.poll() is None:
            try:
                os.killpg(spare.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        spare.wait()
        for f in (spare.stdin, spare.stdout):
            if f is not None and not f.closed:
                f.close()

    def stop_spare(self) -> None:
        if self.spare is not None:
            self._end_spare(self.spare)
            self.spare = None

    def wait_running(self, names, timeout_s: float = START_TIMEOUT_S, should_abort=None) -> None:
        """Block until every named stage reports RUNNING; StageStartError if one dies first.
        Says on stderr (the operator's terminal, or controller.log) when a stage starts
        compiling (its COMPILING state: pipeline.compile_watch) and when each is RUNNING."""
        deadline = time.monotonic() + timeout_s
        pending = list(names)
        while pending:
            for name in list(pending):
                proc = self.procs[name]
                rc = proc.exited()
                if rc is not None:
                    raise StageStartError(
                        f"stage {name} exited with code {rc} during start-up; last lines of "
                        f"{proc.log_path}:\n{log_tail(proc.log_path)}")
                state = self.status.read_word(self.topology.stage(name).slot, W_STATE)
                if state == ST_COMPILING and name not in self.compiled:
                    self.compiled.add(name)
                    print(f"compiling kernels: {name} ({self.spawn_order.index(name) + 1}/"
                          f"{len(self.topology.stages)}) ...", file=sys.stderr, flush=True)
                elif state == ST_RUNNING:
                    pending.remove(name)
                    print(f"stage {name} RUNNING after "
                          f"{time.monotonic() - proc.started_mono:.1f} s"
                          f"{' (compiled)' if name in self.compiled else ''}", file=sys.stderr,
                          flush=True)
            if not pending:
                return
            if should_abort is not None and should_abort():
                raise StageStartError("start-up interrupted")
            if time.monotonic() > deadline:
                late = [n for n in pending if self.start_overdue(self.procs[n], timeout_s)]
                if late:
                    raise StageStartError(
                        f"stage(s) {', '.join(late)} not RUNNING after {timeout_s:.0f} s "
                        f"(and no longer compiling at full speed); see {self.log_dir}")
            time.sleep(0.01)

    # -- watching -------------------------------------------------------------------------
    def pidfds(self) -> dict[int, str]:
        return {p.pidfd: name for name, p in self.units.items() if p.pidfd >= 0}

    def _members(self, proc) -> list[str]:
        """The stages of ``proc`` still under watch (a stopped or retired member is not)."""
        if proc.unit is None:
            return [proc.spec.name] if proc.spec.name in self.procs else []
        return [m for m in proc.unit.members if self.procs.get(m) is proc]

    def check(self, silence: bool = True) -> list[tuple[str, str]]:
        """(stage or process, why) for each process that died or went silent since the last
        check, and each member of a live composite that its loop retired (FAILED)."""
        out = []
        now = time.monotonic_ns()
        for name, proc in list(self.units.items()):
            rc = proc.exited()
            if rc is not None:
                out.append((name, f"exited with code {rc}"))
                continue
            members = self._members(proc)
            if proc.unit is not None and proc.unit.composite:
                failed = [m for m in members if self.status.read_word(
                    self.topology.stage(m).slot, W_STATE) == ST_FAILED]
                for m in failed:
                    out.append((m, f"faulted inside composite {name} (retired from its loop; "
                                   "the other members run on)"))
                members = [m for m in members if m not in failed]
            if not members:
                continue
            slots = [self.topology.stage(m).slot for m in members]
            if any(self.status.read_word(sl, W_STATE) != ST_RUNNING for sl in slots):
                waited = time.monotonic() - proc.started_mono
                if waited > START_TIMEOUT_S and self.start_overdue(proc, START_TIMEOUT_S):
                    out.append((name, f"not RUNNING {waited:.0f} s after it was started"))
                continue
            if not silence:
                continue
            age = max(now - self.status.read_word(sl, W_HEARTBEAT_NS) for sl in slots)
            if age <= self.heartbeat_timeout_ns:
                self._sched.pop(proc.pid, None)
                self._silent_noticed.discard(name)
                continue
            if self._starved(proc.pid, now):
                self.starved_ticks += 1
                continue
            if age <= self.silent_restart_ns:
                if name not in self._silent_noticed:
                    self._silent_noticed.add(name)
                    self.silent_notices.append((name, f"silent for {age / 1e6:.0f} ms "
                                                f"(replaced if silent for "
                                                f"{self.silent_restart_ns / 1e6:.0f} ms)"))
                continue
            self._silent_noticed.discard(name)
            out.append((name, f"silent for {age / 1e6:.0f} ms"))
        return out

    def start_overdue(self, proc, timeout_s: float) -> bool:
        """A stage not RUNNING ``timeout_s`` after its start: is it stuck, or still compiling on
        a machine too busy to give it a core? Stuck when its main thread has had ``timeout_s``
        of CPU (/proc/<pid>/schedstat), or less than START_PROGRESS_CPU of a core over the last
        START_PROGRESS_S;
        a first start on an overloaded 2-core box then takes as long as it takes instead of
        failing half-compiled."""
        try:
            with open(f"/proc/{proc.pid}/schedstat") as f:
                cpu_s = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return True
        if cpu_s >= timeout_s:
            return True
        now = time.monotonic()
        mark = getattr(proc, "progress_mark", None)
        if mark is None or now - mark[0] >= START_PROGRESS_S:
            proc.progress_mark = (now, cpu_s)
            return mark is not None and cpu_s - mark[1] < START_PROGRESS_CPU * (now - mark[0])
        return False

    def _starved(self, pid: int, now_ns: int) -> bool:
        """Stale heartbeat, but is the process merely waiting for a CPU? /proc/<pid>/schedstat
        gives its time waiting on a run queue: a stage that spent most of the last interval
        runnable-but-not-running (an overloaded machine) is slow, not stuck. A stage spinning
        without heartbeats gets CPU and a blocked one does not queue: both count as silent.
        The first stale look only takes a sample and decides on the next tick."""
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                wait_ns = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return False
        prev = self._sched.get(pid)
        self._sched[pid] = (now_ns, wait_ns)
        if prev is None:
            return True
        dt = now_ns - prev[0]
        return dt > 0 and (wait_ns - prev[1]) > dt // 4

    def reap(self, name: str, state: int = ST_DEAD) -> None:
        """Make sure the process of stage or process ``name`` is gone (SIGKILL if silent) and
        forget it, with every stage it ran."""
        proc = self.proc_of(name)
        if proc is None:
            return
        if proc.exited() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.popen.wait()
        proc.close()
        from shm.doorbell import unlink_doorbell

        unlink_doorbell(self.instance, proc.pid)   # a killed process could not remove it
        self.units.pop(proc.name, None)
        for m, p in list(self.procs.items()):
            if p is proc:
                del self.procs[m]
                if self.status.read_word(self.topology.stage(m).slot, W_STATE) != ST_FAILED \
                        or state != ST_DEAD:
                    self.status.set_word(self.topology.stage(m).slot, W_STATE, state)

    def drop_member(self, name: str) -> None:
        """Stop watching one member of a live composite (retired by its loop, or stopped)."""
        self.procs.pop(name, None)

    def restart(self, spec, **kw) -> StageProcess:
        unit = self.unit_of(spec)
        pname = unit.name if unit is not None else spec.name
        self.restarts[pname] = self.restarts.get(pname, 0) + 1
        return self.spawn(spec, **kw)

    # -- stopping -------------------------------------------------------------------------
    def stop(self, names, timeout_s: float = 10.0) -> None:
        """SIGTERM (the runner drains and exits cleanly), SIGKILL after ``timeout_s``. Some
        members of a composite only: CTRL_STOP to each (``member_stop``), and wait for their
        STOPPED; the process goes on with the others."""
        names = [n for n in names if n in self.procs]
        procs = []
        for n in names:
            p = self.procs[n]
            if p not in procs:
                procs.append(p)
        partial = [(p, m) for p in procs for m in self._members(p)
                   if not set(self._members(p)) <= set(names) and m in names]
        procs = [p for p in procs if set(self._members(p)) <= set(names)]
        self._stop_members(partial, timeout_s)
        for p in procs:
            if p.exited() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for p in procs:
            left = max(0.0, deadline - time.monotonic())
            try:
                p.popen.wait(left)
            except subprocess.TimeoutExpired:
                print(f"stage {p.name} ignored SIGTERM for {timeout_s:.0f} s: SIGKILL",
                      file=sys.stderr)
            self.reap(p.name, ST_STOPPED)

    def _stop_members(self, pairs, timeout_s: float) -> None:
        if not pairs:
            return
        for _p, m in pairs:
            if self.member_stop is not None:
                self.member_stop(m)
        deadline = time.monotonic() + timeout_s
        waiting = [m for _p, m in pairs]
        while waiting and time.monotonic() < deadline:
            waiting = [m for m in waiting if self.procs[m].exited() is None and
                       self.status.read_word(self.topology.stage(m).slot, W_STATE)
                       not in (ST_STOPPED, ST_FAILED)]
            time.sleep(0.005)
        for m in waiting:
            print(f"stage {m} (in composite {self.procs[m].name}) did not stop within "
                  f"{timeout_s:.0f} s; it stops with its process", file=sys.stderr)
        for _p, m in pairs:
            self.drop_member(m)

    def kill_all(self) -> None:
        self.stop_spare()
        for name in list(self.units):
            self.reap(name, ST_FAILED)

    def state_name(self, slot: int) -> str:
        return STATE_NAMES.get(self.status.read_word(slot, W_STATE), "?")
