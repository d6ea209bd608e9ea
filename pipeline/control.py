"""The controller's control socket: JSON requests and replies over a Unix stream socket.

Cold path, off the data path: the server side runs in the controller, on threads of its own
(ControlServer: one request per connection, a bounded number of clients, per-connection
deadlines; only the handler call shares a lock with the supervision loop), the client side in
the CLI (`run.py status|stop|kill|resume|set|latency`). The socket is created with mode 0600
(umask around bind, then chmod) so only the instance's user can drive it.

Wire format: one JSON object per line each way. Requests ``{"cmd": "status", ...}``; replies
``{"ok": true, ...}`` or ``{"ok": false, "error": "<message>"}``.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pipeline.exits import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_USAGE, CliError
from pipeline.paths import INSTANCE_NAME_PATTERN, instance_dir, socket_path

MAX_REQUEST = 1 << 20


class NotRunning(Exception):
    """No controller answers on the socket (absent, refused, or stale)."""


class ControlServer:
    """Serves the control socket from its own threads, off the supervision loop.

    An accept thread hands each connection to a thread of its own, at most ``max_clients`` at
    a time (one more is told ``busy`` and closed). A connection has ``timeout_s`` to send its
    request line and to take its reply, then it is dropped: a silent, slow or hostile client
    holds one of those threads, never the supervision loop. Only the handler call itself runs
    under ``lock`` (the controller holds the same lock for each supervision tick), so requests
    and supervision never touch the controller's state at once. ``wake_fd`` (optional) gets a
    byte after each request, so the supervision loop sees a ``stop`` at once."""

    def __init__(self, path: str | os.PathLike, handler, lock=None, max_clients: int = 64,
                 timeout_s: float = 2.0, wake_fd: int = -1):
        import threading

        self.path = str(path)
        self.handler = handler
        self.lock = lock if lock is not None else threading.Lock()
        self.timeout_s = timeout_s
        self.wake_fd = wake_fd
        self.slots = threading.BoundedSemaphore(max_clients)
        self.max_clients = max_clients
        self.refused_busy = 0
        self.dropped_slow = 0
        self._closing = False
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale from a crashed run: the caller checked nobody answers
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.settimeout(0.2)   # the accept thread checks for close() this often
        self.sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control-accept",
                                        daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        import threading

        while not self._closing:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout, InterruptedError):
                continue
            except OSError:
                return   # closed
            if not self.slots.acquire(blocking=False):
                self.refused_busy += 1
                self._refuse(conn)
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), name="control-client",
                             daemon=True).start()

    def _refuse(self, conn) -> None:
        with conn:
            conn.settimeout(0.05)
            try:
                conn.sendall(json.dumps({"ok": False, "error": (
                    f"busy: {self.max_clients} control clients connected; try again")})
                    .encode() + b"\n")
            except OSError:
                pass

    def _serve_conn(self, conn) -> None:
        import time

        try:
            with conn:
                deadline = time.monotonic() + self.timeout_s
                data = b""
                while not data.endswith(b"\n") and len(data) < MAX_REQUEST:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.dropped_slow += 1
                        return   # too slow: dropped without an answer
                    conn.settimeout(left)
                    try:
                        chunk = conn.recv(65536)
                    except (TimeoutError, socket.timeout):
                        self.dropped_slow += 1
                        return
                    if not chunk:
                        break
                    data += chunk
                if not data:
                    return   # connected and left without a word
                reply = self.answer(data)
                conn.settimeout(self.timeout_s)
                conn.sendall(json.dumps(reply, default=_jsonable).encode() + b"\n")
        except OSError:
            pass  # client went away
        finally:
            self.slots.release()

    def answer(self, data: bytes) -> dict:
        """The reply to one request line (garbage gets an error naming what was wrong)."""
        try:
            req = json.loads(data)
        except ValueError as exc:
            return {"ok": False, "error": f"request is not JSON ({exc}); send one JSON object "
                                          "per line, e.g. {\"cmd\": \"status\"}"}
        if not isinstance(req, dict):
            return {"ok": False, "error": "request must be a JSON object, e.g. "
                                          "{\"cmd\": \"status\"}"}
        try:
            with self.lock:
                if self._closing:
                    return {"ok": False, "error": "controller is shutting down"}
                reply = self.handler(req)
        except Exception as exc:  # a bad request must never take the controller down
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if self.wake_fd >= 0:
            try:
                os.write(self.wake_fd, b"!")
            except OSError:
                pass   # the pipe is full: the loop is awake anyway
        return reply

    def close(self) -> None:
        self._closing = True
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(timeout=1.0)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def request(path: str | os.PathLike, req: dict, timeout_s: float = 10.0) -> dict:
    """Send one request, return the reply; NotRunning if no controller listens at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(f"no controller at {path} ({exc.strerror})") from None
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass   # a busy server answers at once and hangs up: its answer is still readable
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    if not data:
        raise NotRunning(f"controller at {path} closed the connection without a reply")
    return json.loads(data)


def is_running(path: str | os.PathLike) -> bool:
    try:
        return bool(request(path, {"cmd": "ping"}, timeout_s=3.0).get("ok"))
    except (NotRunning, OSError, ValueError):
        return False


# =============================================================================================
# Controller side: request handlers and the snapshots they return (run in the controller)
# =============================================================================================
PERCENTILES = (50, 90, 99, 99.9, 99.99)


def stage_table(ctl) -> list[dict]:
    import time as _time

    from common.status import STATE_NAMES

    rows = []
    for spec in ctl.topology.stages:
        b = ctl.status.read(spec.slot)
        now = _time.monotonic_ns()
        hb = b["heartbeat_ns"]
        rows.append({
            "stage": spec.name, "role": spec.role, "state": STATE_NAMES.get(b["state"], "?"),
            "process": spec.unit or spec.name,   # its composite's name, or its own
            "pid": b["pid"], "cpu": None if b["cpu"] < 0 else b["cpu"],
            "configured_cpu": spec.cpu,
            "heartbeat_age_ms": round((now - hb) / 1e6, 1) if hb else None,
            "records_in": b["records_in"], "records_out": b["records_out"],
            "ring_lag": b["ring_lag"], "records_lost": b["records_lost"],
            "errors": b["errors"], "restarts": b["restarts"],
            "reason": _stage_reason(ctl, spec.name)})
    return rows


def _stage_reason(ctl, name: str) -> str:
    """Why a stage is not simply running: given up on, or waiting out a restart backoff."""
    import time as _time

    sup = ctl.supervisor
    if sup is not None and name in sup.given_up:
        return sup.given_up[name]
    halted = getattr(ctl, "strategy_halts", {}).get(name)
    if halted:
        from strategies.base import HALT_NAMES

        return f"halted: {HALT_NAMES.get(int(halted), halted)} (orders cancelled)"
    pending = getattr(ctl, "pending_restarts", {})
    due = pending.get(name)
    topo = getattr(ctl, "topology", None)
    unit = getattr(topo.stage(name), "unit", "") if topo is not None else ""
    if due is None and unit and unit != name:
        due = pending.get(unit)   # its composite restarts as one
    if due is not None:
        return f"restart in {max(0.0, due - _time.monotonic()):.1f} s (backoff)"
    return ""


def feed_snapshot(ctl) -> dict:
    """Per live venue: its feed stage's status words (connection state, messages/s, exchange ->
    receive lag, books valid) and the detail it writes every second (reconnects, gaps,
    resyncs, validity per instrument, why it is not connected)."""
    from common.status import FEED_CONNECTED, FEED_STATE_NAMES, STATE_NAMES
    from stages.feed_live import read_feed_status

    out = {}
    for spec in ctl.topology.feeds():
        b = ctl.status.read(spec.slot)
        detail = read_feed_status(ctl.run_dir, spec.venue) or {}
        code = int(b["x0"])
        out[spec.venue] = {**detail, "stage": spec.name,
                           "stage_state": STATE_NAMES.get(int(b["state"]), "?"),
                           "state": detail.get("state") if detail.get("state") == "stopped"
                           else FEED_STATE_NAMES.get(code, str(code)),
                           "connected": code == FEED_CONNECTED, "messages_per_s": int(b["x1"]),
                           "lag_us": int(b["x2"]), "books_valid_count": int(b["x3"]),
                           "parse_errors": int(b["errors"])}
    return out


def farm_snapshot(ctl) -> dict:
    from pipeline.farm_status import farm_snapshot as snapshot

    return snapshot(ctl)


def risk_snapshot(ctl) -> dict:
    from shm.records import RISK_STATE_NAMES
    from stages.riskview import (G_APPROVED, G_REJECTED, G_STATE, PNL_FEES, PNL_REALIZED,
                                 PNL_UNREALIZED, R_FILLS, R_HALTED, R_OPEN, R_SENT)

    rv = ctl.riskview
    insts = list(ctl.cfg.instruments)
    strategies = {}
    for spec in ctl.topology.strategies():
        sid = spec.strategy_id
        pos = {insts[i - 1].key: int(rv.gate_pos[sid, i]) for i in range(1, len(insts) + 1)
               if rv.gate_pos[sid, i] or rv.router_pos[sid, i]}
        pnl = rv.gate_pnl[sid]
        strategies[spec.process] = {
            "strategy_id": sid, "strategy": spec.strategy.name, "shard": spec.shard,
            "shards": spec.strategy.shards, "instruments": list(spec.instruments),
            "positions_lots": pos,
            "venue_positions_lots": {insts[i - 1].key: int(rv.router_pos[sid, i])
                                     for i in range(1, len(insts) + 1) if rv.router_pos[sid, i]},
            "own_positions_lots": {insts[i - 1].key: int(rv.strat_pos[sid, i])
                                   for i in range(1, len(insts) + 1) if rv.strat_pos[sid, i]},
            "open_orders": int(rv.router_open[sid]),
            "realized_pnl": float(pnl[PNL_REALIZED]), "unrealized_pnl": float(pnl[PNL_UNREALIZED]),
            "fees": float(pnl[PNL_FEES]),
            "pnl": float(pnl[PNL_REALIZED] + pnl[PNL_UNREALIZED] - pnl[PNL_FEES])}
    return {"state": RISK_STATE_NAMES.get(int(rv.gate[G_STATE]), "?"),
            "halted_reason": ctl.halted_reason, "reconciling": sorted(ctl.reconciling),
            "approved": int(rv.gate[G_APPROVED]), "rejected": int(rv.gate[G_REJECTED]),
            "router_halted": bool(rv.router[R_HALTED]), "open_orders": int(rv.router[R_OPEN]),
            "orders_sent": int(rv.router[R_SENT]), "fills": int(rv.router[R_FILLS]),
            "strategies": strategies}


def positions_reconciled(rv) -> tuple[bool, str]:
    """Gate positions == venue-reported positions, gate ready, and no order open."""
    import numpy as np

    from stages.riskview import G_READY, R_OPEN

    if not rv.gate[G_READY]:
        return False, "risk gate has not finished rebuilding from the journal"
    if rv.router[R_OPEN]:
        return False, f"{int(rv.router[R_OPEN])} order(s) still open at the venue"
    diff = np.argwhere(rv.gate_pos != rv.router_pos)
    if len(diff):
        s, i = diff[0]
        return False, (f"strategy {s} instrument {i}: gate has {int(rv.gate_pos[s, i])} lots, "
                       f"the venue {int(rv.router_pos[s, i])}")
    return True, ""


def wait_orders_closed(ctl, timeout_s: float) -> bool:
    import time as _time

    from stages.riskview import R_OPEN

    deadline = _time.monotonic() + timeout_s
    while _time.monotonic() < deadline:
        if ctl.riskview.router[R_OPEN] == 0:
            return True
        _time.sleep(0.01)
    return False


def latency_summary(ctl, baseline: dict | None = None) -> dict:
    out = {}
    titles = dict(ctl.topology.histograms())
    for name, h in ctl.hists.items():
        snap = h.snapshot()
        if baseline and name in baseline:
            snap = h.delta(baseline[name])
        s = snap.summary()
        s["title"] = titles.get(name, name)
        out[name] = s
    return out


def open_interval_logs(ctl) -> dict:
    """The run's HdrHistogram interval logs, <run_dir>/latency/<hist>.hlog, one per histogram
    (cold, controller): ``tick_interval_logs`` adds an interval every
    ``instance.latency_log_s`` seconds, each holding what the stages recorded in it."""
    from shm.histogram import IntervalLog

    if ctl.cfg.instance.latency_log_s <= 0:
        return {}
    out_dir = ctl.run_dir / "latency"
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: IntervalLog(str(out_dir / f"{name}.hlog"), h,
                              comment=f"hftfarm {ctl.instance} {name}")
            for name, h in ctl.hists.items()}


def tick_interval_logs(ctl) -> None:
    for log in ctl.interval_logs.values():
        log.tick()


def dump_latency(ctl, out_dir, baseline: dict | None = None) -> list[str]:
    """One .hgrm (percentile distribution, us) per histogram and its .hlog: the run's interval
    log up to now (intervals of ``instance.latency_log_s``, the last one ending now; the whole
    run, whatever the baseline)."""
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    logs = getattr(ctl, "interval_logs", {}) or {}
    written = []
    for name, h in ctl.hists.items():
        snap = h.snapshot()
        if baseline and name in baseline:
            snap = h.delta(baseline[name])
        p = out_dir / f"{name}.hgrm"
        snap.write_hgrm(str(p))
        written.append(str(p))
        log = logs.get(name)
        if log is None:
            continue
        log.tick()
        lp = out_dir / f"{name}.hlog"
        if Path(log.path).resolve() != lp.resolve():
            shutil.copyfile(log.path, lp)
        written.append(str(lp))
    return written


def handle_request(ctl, req: dict) -> dict:
    from shm.records import CTRL_KILL, CTRL_RESUME, RESUME_OPERATOR

    cmd = req.get("cmd")
    if cmd == "ping":
        return {"ok": True, "pid": os.getpid(), "instance": ctl.instance}
    if cmd == "status":
        return {"ok": True, "instance": ctl.instance, "pid": os.getpid(),
                "run_dir": str(ctl.run_dir), "uptime_s": round(time_since(ctl.started_at), 1),
                "stages": stage_table(ctl), "risk": risk_snapshot(ctl),
                "feeds": feed_snapshot(ctl), "warm_spare": ctl.supervisor.spare_is_ready(),
                "params": ctl.live_params.view(), "events": ctl.events[-20:],
                "farms": farm_snapshot(ctl),
                "monitor": ctl.monitor.snapshot() if getattr(ctl, "monitor", None) else None,
                "monitoring": ctl.monitoring.urls() if getattr(ctl, "monitoring", None)
                else None}
    if cmd == "stop":
        if not ctl.stop_requested:
            journal_event(ctl, "stop", req)
        ctl.stop_requested = True
        return {"ok": True, "pid": os.getpid()}
    if cmd == "kill":
        flatten = bool(req.get("flatten"))
        ctl.kill_switch = True
        ctl.halted_reason = "kill switch" + (" (flatten)" if flatten else "")
        # the gate flattens (its own orders go through its journal); the router cancels
        acked = ctl.send_all([("risk_gate", CTRL_KILL, int(flatten)),
                              ("order_router", CTRL_KILL, 0)], wait_s=1.0)
        journal_event(ctl, "kill", req, flatten=flatten, acked_by=acked)
        return {"ok": True, "halted": acked, "flatten": flatten}
    if cmd == "resume":
        ctl.kill_switch = False
        journal_event(ctl, "resume", req)
        acked = ctl.send_all([("order_router", CTRL_RESUME, RESUME_OPERATOR),
                              ("risk_gate", CTRL_RESUME, RESUME_OPERATOR)], wait_s=1.0)
        # what the gate resumed into, from its own view (a loss breach still live re-latches)
        state = risk_snapshot(ctl)["state"]
        ctl.halted_reason = "" if state == "ACTIVE" else f"still {state} after the resume"
        return {"ok": True, "resumed": acked, "risk_state": state,
                "halted_reason": ctl.halted_reason}
    if cmd == "set":
        from pipeline.live_params import handle_set

        return handle_set(ctl, req)
    if cmd == "latency":
        baseline = getattr(ctl, "latency_baseline", None)
        reply = {"ok": True, "histograms": latency_summary(ctl, baseline)}
        if req.get("dump"):
            reply["files"] = dump_latency(ctl, req["dump"], baseline)
        if req.get("reset"):
            # the stages own their histograms; a reset is a new baseline for our reads
            ctl.latency_baseline = {n: h.snapshot() for n, h in ctl.hists.items()}
        return reply
    return {"ok": False, "error": f"unknown command {cmd!r} (ping, status, stop, kill, resume, "
                                  "set, latency)"}


def journal_event(ctl, what: str, req: dict, **fields) -> None:
    """An operator command into the run's events journal, with who sent it and why."""
    from stages.journal import append_event

    who = str(req.get("who") or "cli")[:32]
    why = str(req.get("why") or "")[:200]
    try:
        append_event(ctl.run_dir / "journal", who, what, why, **fields)
    except OSError as exc:
        ctl.log(f"could not journal the {what} command: {exc}")


def time_since(t: float) -> float:
    import time as _time

    return _time.time() - t


def collect_report(ctl, before_stop: bool = False) -> dict:
    rows = stage_table(ctl)
    return {"instance": ctl.instance, "run_dir": str(ctl.run_dir),
            "duration_s": round(time_since(ctl.started_at), 2),
            "stages": rows, "risk": risk_snapshot(ctl), "feeds": feed_snapshot(ctl),
            "params": ctl.live_params.view(),
            "records_lost": sum(r["records_lost"] for r in rows),
            "latency": latency_summary(ctl), "events": list(ctl.events)}


def finish_report(ctl) -> None:
    """After the stages stopped: order-path counts from the journal, latency dumps, report."""
    report = ctl.report or collect_report(ctl)
    report["latency_files"] = dump_latency(ctl, ctl.run_dir / "latency")
    if ctl.topology.journal:
        try:
            from stages.journal import summarize_journal

            report["orders"] = summarize_journal(ctl.run_dir / "journal")
        except Exception as exc:  # the report must not hide the rest because of one part
            report["orders"] = {"error": f"{type(exc).__name__}: {exc}"}
    ctl.report = report
    (ctl.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))


# =============================================================================================
# CLI side helpers (run in the operator's shell)
# =============================================================================================
def socket_config(path):
    """Just enough of a config to find the instance's control socket ([instance] name, run_dir,
    socket), read with tomllib alone: the commands that only talk to the socket (kill, resume,
    status) answer without loading and checking the whole config, and without numba. Falls
    back to ``load_config_or_exit`` (every problem named) if that part is missing or odd."""
    import re
    import tomllib
    from types import SimpleNamespace

    default = Path(__file__).resolve().parent.parent / "config.toml"  # = config.DEFAULT_CONFIG
    try:
        with open(path or default, "rb") as f:
            inst = tomllib.load(f).get("instance", {})
        name, run_dir = inst.get("name", "default"), inst.get("run_dir", "runs")
        sock = inst.get("socket", "")
        if isinstance(name, str) and re.fullmatch(INSTANCE_NAME_PATTERN, name) and \
                isinstance(run_dir, str) and run_dir and isinstance(sock, str):
            return SimpleNamespace(instance=SimpleNamespace(name=name, run_dir=run_dir,
                                                            socket=sock))
    except (OSError, ValueError):
        pass
    return load_config_or_exit(path)


def load_config_or_exit(path):
    """The validated config, or CliError(exit 2) listing every problem."""
    from common.schema import ConfigError
    from pipeline.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError("invalid config:\n  " + "\n  ".join(
            f"{exc.source}: {p}" for p in exc.problems), EXIT_USAGE) from None


def lock_held(cfg) -> bool:
    """True if a controller of this instance holds its lock (starting or running)."""
    import fcntl

    path = instance_dir(cfg) / "controller.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the lock if we got it
    return False


def client_request(cfg, req: dict, timeout_s: float = 10.0) -> dict:
    """Send ``req`` to the instance's controller; CliError(exit 3) if it is not running."""
    try:
        reply = request(socket_path(cfg), req, timeout_s)
    except NotRunning:
        if lock_held(cfg):
            raise CliError(f"instance {cfg.instance.name!r} is starting (its controller does "
                           "not answer until every stage is up); try again shortly",
                           EXIT_NOT_RUNNING) from None
        raise CliError(f"instance {cfg.instance.name!r} is not running (no controller at "
                       f"{socket_path(cfg)})", EXIT_NOT_RUNNING) from None
    if not reply.get("ok"):
        # the controller may say a request was refused as a usage error (`set` with a bad
        # value: exit 2); anything else it refuses is a failure (exit 1)
        code = reply.get("exit_code")
        raise CliError(f"controller: {reply.get('error', 'request failed')}",
                       code if code in (EXIT_FAILURE, EXIT_USAGE) else EXIT_FAILURE)
    return reply
