"""Crash drills against a running instance: kill -9 a stage under load and measure how the
controller and the stages recover. Cold path; runs in the operator's process (``run.py drill``)
and in the test suite (tests/integration/test_crash_drills.py), talking to the controller only
through its control socket and reading the run's journal.

Per drill: the stage's pid from ``status``, SIGKILL, then

- ``back_s``: until the stage is RUNNING again under a new pid;
- ``reconciled_s`` (risk gate, order router): until the controller journaled
  ``resume_after_reconcile`` (gate positions == venue positions, no order open);
- ``venue_orders_while_down`` (risk gate drills): new orders (not the gate's own) that a venue
  acknowledged or filled while trading was halted for the gate's failure (from the
  controller's ``halt`` event, plus 50 ms for orders already in flight, to its resume), from
  the journal: must be 0.

``journal_outcomes(jdir)`` then checks the whole run: every approved new order has exactly one
final outcome (fill, cancel, expiry or reject).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

RECONCILING_ROLES = ("risk_gate", "order_router")


def _status(cfg) -> dict:
    from pipeline.control import client_request

    return client_request(cfg, {"cmd": "status"}, timeout_s=10.0)


def _stage_row(st: dict, name: str) -> dict:
    for row in st["stages"]:
        if row["stage"] == name:
            return row
    raise KeyError(f"no stage {name!r} (stages: {', '.join(r['stage'] for r in st['stages'])})")


def _events_after(jdir: Path, ts_ns: int, what: str) -> list[dict]:
    from stages.journal import read_events

    return [e for e in read_events(jdir) if e["what"] == what and e["ts_ns"] >= ts_ns]


def wait_for_flow(cfg, min_fills: int = 1, timeout_s: float = 60.0) -> dict:
    """Block until the venue has reported at least ``min_fills`` more fills (orders flow)."""
    start = _status(cfg)["risk"]["fills"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = _status(cfg)
        if st["risk"]["fills"] >= start + min_fills:
            return st
        time.sleep(0.05)
    raise TimeoutError(f"no new fill within {timeout_s:.0f} s: is the instance trading?")


def wait_steady(cfg, timeout_s: float = 20.0) -> bool:
    """Block until the controller's warm spare process is ready (a drill then measures recovery
    from a steady state; a second failure within a second or two of the first finds no spare
    and starts cold). False if the instance runs without one or it is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _status(cfg).get("warm_spare"):
            return True
        time.sleep(0.05)
    return False


def kill_stage(cfg, stage: str, timeout_s: float = 60.0, steady: bool = True) -> dict:
    """One drill: SIGKILL ``stage`` and wait for its recovery. Returns the drill's figures.
    ``steady``: first wait until the warm spare is ready (``wait_steady``)."""
    warm = wait_steady(cfg) if steady else _status(cfg).get("warm_spare", False)
    st = _status(cfg)
    run_dir = Path(st["run_dir"])
    jdir = run_dir / "journal"
    row = _stage_row(st, stage)
    old_pid = int(row["pid"])
    t_kill_ns = time.time_ns()
    t0 = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    out = {"drill": f"kill -9 {stage}", "stage": stage, "pid": old_pid, "warm_spare": warm,
           "notice_s": None, "back_s": None,
           "reconciled_s": None, "venue_orders_while_down": None}
    deadline = t0 + timeout_s
    reconciles = row["role"] in RECONCILING_ROLES
    slot = [r["stage"] for r in st["stages"]].index(stage)
    from common.status import ST_RUNNING, W_PID, W_STATE
    from shm.status import StatusTable

    # the stage's own status block, not the controller's socket (which waits while the
    # controller is busy with the restart itself)
    tab = StatusTable.attach(cfg.instance.name)
    try:
        while time.monotonic() < deadline:
            w = tab.words[slot]
            if out["back_s"] is None and w[W_STATE] == ST_RUNNING and \
                    int(w[W_PID]) not in (0, old_pid):
                out["back_s"] = round(time.monotonic() - t0, 3)
            if _recovered(out, jdir, stage, t_kill_ns, reconciles):
                break
            time.sleep(0.005)
    finally:
        tab.close()
    if stage == "risk_gate":   # the router kept running: did it send anything new?
        out["venue_orders_while_down"] = venue_orders_while_halted(jdir, t_kill_ns)
    out.update(check_after(cfg, jdir))
    return out


def _recovered(out, jdir, stage, t_kill_ns, reconciles) -> bool:
    """Fill ``notice_s`` / ``reconciled_s`` from the events journal; True once all is in."""
    from stages.journal import read_events

    if out["notice_s"] is None or (reconciles and out["reconciled_s"] is None):
        for e in read_events(jdir):
            if e["ts_ns"] < t_kill_ns:
                continue
            after = round((e["ts_ns"] - t_kill_ns) / 1e9, 3)
            if e["what"] == "stage_failed" and e.get("stage") == stage \
                    and out["notice_s"] is None:
                out["notice_s"] = after
            elif e["what"] == "resume_after_reconcile" and reconciles \
                    and out["reconciled_s"] is None:
                out["reconciled_s"] = after
    return out["back_s"] is not None and out["notice_s"] is not None and \
        (out["reconciled_s"] is not None or not reconciles)


def check_after(cfg, jdir) -> dict:
    """After a drill: approved orders without exactly one final outcome (more than one, or none
    although nothing is open any more), and whether each strategy's own positions equal the
    gate's (``positions_reconciled``)."""
    def nz(d):
        return {k: v for k, v in d.items() if v}

    deadline = time.monotonic() + 3.0   # fills in flight reach the three views one by one
    while True:
        st = _status(cfg)
        rec = all(nz(s["own_positions_lots"]) == nz(s["positions_lots"])
                  == nz(s["venue_positions_lots"]) for s in st["risk"]["strategies"].values())
        v = journal_outcomes(jdir)   # (the journal writes a moment after the router)
        bad = v["more_than_one_final"] + max(0, v["without_final"]
                                             - int(st["risk"]["open_orders"]))
        if (rec and not bad) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {"orders_without_one_outcome": bad, "positions_reconciled": rec, "leftovers": None}


def kill_controller(cfg, config_path: str, timeout_s: float = 120.0) -> dict:
    """kill -9 of the controller: how soon the stages stop trading (their status words) and
    exit; then ``run.py start`` again, which must clear the debris and close the dead run's
    open orders. ``leftovers``: old stage processes, old segments or orphan orders still there
    after the new start."""
    import subprocess
    import sys

    from common.status import ST_STOPPED, ST_STOPPING, W_STATE
    from pipeline.recovery import stage_pids
    from shm.segment import pid_alive
    from shm.status import StatusTable

    st = _status(cfg)
    run_dir = Path(st["run_dir"])
    pids = {r["stage"]: (i, int(r["pid"])) for i, r in enumerate(st["stages"])
            if r["state"] == "RUNNING"}
    tab = StatusTable.attach(cfg.instance.name)
    t0 = time.monotonic()
    os.kill(int(st["pid"]), signal.SIGKILL)
    stopped, gone = {}, {}
    try:
        while len(gone) < len(pids) and time.monotonic() - t0 < 30:
            for n, (slot, pid) in pids.items():
                if n not in stopped and tab.words[slot, W_STATE] in (ST_STOPPING, ST_STOPPED):
                    stopped[n] = time.monotonic() - t0
                if n not in gone and not pid_alive(pid):
                    gone[n] = time.monotonic() - t0
            time.sleep(0.005)
    finally:
        tab.close()
    out = {"drill": "kill -9 controller", "stage": "controller", "pid": int(st["pid"]),
           "notice_s": round(max(stopped.values()), 3) if stopped else None,
           "stages_exited_s": round(max(gone.values()), 3) if len(gone) == len(pids) else None,
           "back_s": None, "reconciled_s": None, "venue_orders_while_down": None}
    t1 = time.monotonic()
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "run.py"), "start", "--config", config_path],
                       capture_output=True, text=True, timeout=timeout_s)
    if r.returncode == 0:
        out["back_s"] = round(time.monotonic() - t1, 3)
    else:
        out["error"] = (r.stderr or r.stdout).strip()[-300:]
    old = set(p for _s, p in pids.values()) & set(stage_pids(cfg.instance.name))
    v = journal_outcomes(run_dir / "journal")   # the dead run: nothing may stay open
    out.update({"orders_without_one_outcome": v["without_final"] + v["more_than_one_final"],
                "positions_reconciled": None, "leftovers": len(old)})
    return out


def socket_stall(cfg, stage: str, clients: int = 50) -> dict:
    """``clients`` connections to the control socket that never finish a request, held while
    ``stage`` is killed: the controller must notice and recover as if they were not there."""
    import socket

    from pipeline.paths import socket_path

    held = []
    wait_steady(cfg)   # a restart from the warm spare, as in the plain drill
    try:
        for i in range(clients):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(socket_path(cfg)))
            if i % 2:
                s.sendall(b'{"cmd": "sta')
            held.append(s)
        out = kill_stage(cfg, stage)
    finally:
        for s in held:
            s.close()
    out["drill"] = f"{clients} stalled clients + kill -9 {stage}"
    return out


def venue_orders_while_halted(jdir: Path, since_ns: int, grace_ns: int = 50_000_000) -> int:
    """New orders (not the gate's own) that a venue acknowledged or filled between the
    controller's halt for a failure after ``since_ns`` and its resume. ``grace_ns`` after the
    halt: an order the router sent just before it halted reaches the venue a latency later."""
    import numpy as np

    from shm.records import EFLAG_FROM_RISK, EXEC_ACK, EXEC_FILL, EXEC_PARTIAL
    from stages.journal import read_journal_exec
    from stages.risk_gate import FLATTEN_COID_BIT

    halts = _events_after(jdir, since_ns, "halt")
    resumes = _events_after(jdir, since_ns, "resume_after_reconcile")
    if not halts:
        return 0
    lo = halts[0]["ts_ns"] + grace_ns
    hi = resumes[0]["ts_ns"] if resumes else time.time_ns()
    ex = read_journal_exec(jdir)
    if not len(ex):
        return 0
    venue = (ex["flags"] & EFLAG_FROM_RISK) == 0
    kinds = np.isin(ex["kind"], (EXEC_ACK, EXEC_FILL, EXEC_PARTIAL))
    own = (ex["client_order_id"] & FLATTEN_COID_BIT) != 0
    t = ex["venue_ts_ns"]
    return int((venue & kinds & ~own & (t > lo) & (t < hi)).sum())


def journal_outcomes(jdir) -> dict:
    """Approved new orders and how many final outcomes each has in the journal."""
    import numpy as np

    from shm.records import EXEC_FINAL_KINDS, INTENT_NEW
    from stages.journal import read_journal_exec, read_journal_orders

    orders = read_journal_orders(jdir)
    execs = read_journal_exec(jdir)
    approved = orders[(orders["kind"] == INTENT_NEW) & (orders["reject_code"] == 0)] \
        if len(orders) else orders
    finals = execs[np.isin(execs["kind"], EXEC_FINAL_KINDS)] if len(execs) else execs
    ids, counts = np.unique(finals["client_order_id"], return_counts=True) if len(finals) \
        else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    count_of = dict(zip(ids.tolist(), counts.tolist()))
    per = [count_of.get(int(c), 0) for c in approved["client_order_id"]]
    return {"approved": len(approved), "without_final": sum(1 for c in per if c == 0),
            "more_than_one_final": sum(1 for c in per if c > 1),
            "finals_without_order": len(set(count_of) - set(approved["client_order_id"]
                                                            .tolist()))}
