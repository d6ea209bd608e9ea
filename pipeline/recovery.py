"""What a controller that died without stopping (kill -9, OOM, power to the process lost) leaves
behind, found and cleared; its run's open orders closed in its journal.

Cold path. Runs in the next controller before it creates its segments (it holds the instance's
claim then, so nothing found can belong to a live instance) and in ``run.py stop`` when no
controller answers. The stages notice the controller's death by themselves (PR_SET_PDEATHSIG in
pipeline/stage_main.py: SIGTERM, drain, exit); what remains is cleared here:

- stage processes of the instance still alive (a stage stuck in its drain): SIGKILL;
- shared-memory segments and ring semaphores of the instance: unlinked;
- the control socket: unlinked; ``controller.state``: "crashed", with what was found;
- the dead run's journal: every approved order without a final outcome gets one. The venues
  the default config trades are simulated inside the run (the venue stage), so an order of a
  dead run no longer exists anywhere: it is recorded as cancelled (EXEC_CANCEL_ACK with
  EFLAG_RECONCILE, in a journal file of its own) and an event says so. A live venue's orders
  would be looked up and cancelled at the venue; no live order entry exists yet.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def _is_stage_of(pid: int, instance: str) -> bool:
    """``pid`` is a stage process of ``instance`` (or a warm spare, which a restart turns into
    one): checked on its command line, so a recycled pid of some other program is never
    killed. A spare's command line names the run directory, <run_dir>/<instance>/run-*."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"pipeline.stage_main" not in argv:
        return False
    try:
        if b"--standby" in argv:
            run_dir = argv[argv.index(b"--standby") + 2].decode(errors="replace")
            return Path(run_dir).parent.name == instance
        return argv[argv.index(b"--instance") + 1].decode(errors="replace") == instance
    except (ValueError, IndexError):
        return False


def stage_pids(instance: str) -> list[int]:
    """Pids of the instance's stage processes (and warm spares) still alive, from /proc."""
    return sorted(int(d) for d in os.listdir("/proc")
                  if d.isdigit() and int(d) != os.getpid() and _is_stage_of(int(d), instance))


def kill_stages(instance: str, grace_s: float = 1.0) -> list[int]:
    """SIGTERM the instance's leftover stages, SIGKILL what is still there after ``grace_s``."""
    pids = stage_pids(instance)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_is_stage_of(p, instance) for p in pids):
            time.sleep(0.02)
    return pids


def close_orphan_orders(jdir: Path) -> int:
    """Give every approved new order of a dead run that has no final outcome one: cancelled
    (see the module doc). Returns how many. Idempotent: a second call finds none."""
    import numpy as np

    from market.recordfile import RecordFileWriter
    from shm.records import (EFLAG_RECONCILE, EXEC_CANCEL_ACK, EXEC_DTYPE, EXEC_FINAL_KINDS,
                             INTENT_NEW)
    from stages.journal import append_event, read_journal_exec, read_journal_orders

    jdir = Path(jdir)
    if not jdir.is_dir():
        return 0
    orders = read_journal_orders(jdir)
    if not len(orders):
        return 0
    execs = read_journal_exec(jdir)
    approved = orders[(orders["kind"] == INTENT_NEW) & (orders["reject_code"] == 0)]
    final = set(execs["client_order_id"][np.isin(execs["kind"], EXEC_FINAL_KINDS)].tolist()) \
        if len(execs) else set()
    open_ = approved[~np.isin(approved["client_order_id"], list(final))] if final \
        else approved
    if not len(open_):
        return 0
    now = time.time_ns()
    out = np.zeros(len(open_), dtype=EXEC_DTYPE)   # as shm.recordops.reply_to_order, vectorised
    for f in ("side", "instrument_id", "client_order_id", "px_ticks", "qty_lots",
              "cause_recv_ts_ns", "strategy_id", "venue_id"):
        out[f] = open_[f]
    out["order_px_ticks"] = open_["px_ticks"]
    out["kind"], out["flags"] = EXEC_CANCEL_ACK, EFLAG_RECONCILE
    out["venue_ts_ns"] = out["send_ts_ns"] = now
    # ring positions after the run's last: the journal's readers keep one record per position
    last = int(execs["ring_seq"].max()) if len(execs) else -1
    out["ring_seq"] = np.arange(last + 1, last + 1 + len(out))
    nums = [int(p.stem.rsplit("-", 1)[1]) for p in jdir.glob("exec-*.rec")
            if p.stem.rsplit("-", 1)[1].isdigit()]
    path = jdir / f"exec-{max(nums, default=-1) + 1}.rec"
    w = RecordFileWriter(path, EXEC_DTYPE, meta={"written_by": "recovery after a controller "
                                                               "crash"}, buffered=False)
    try:
        w.append(out)
    finally:
        w.close()
    append_event(jdir, "controller", "orders_closed_after_crash",
                 f"{len(out)} approved order(s) of a run whose controller died had no final "
                 "outcome; its venues were simulated in the run, so they are recorded as "
                 "cancelled", client_order_ids=[int(c) for c in open_["client_order_id"]])
    return len(out)


def read_state(cfg, prev: bool = False) -> dict:
    """``controller.state`` of the instance ({} if absent or unreadable). ``prev``: if it is
    absent, the one ``run.py start`` set aside for the controller it starts."""
    from pipeline.paths import instance_dir

    names = ("controller.state", "controller.state.prev") if prev else ("controller.state",)
    for name in names:
        try:
            return json.loads((instance_dir(cfg) / name).read_text())
        except (OSError, ValueError):
            continue
    return {}


def recover(cfg, log=None, state: dict | None = None,
            drop_claim: bool = False) -> dict | None:
    """Clear what a dead controller of ``cfg``'s instance left; None if it left nothing.
    The caller must make sure no live controller owns the instance (holds its claim).
    ``state``: controller.state as the dead controller left it (default: read it now).
    ``drop_claim``: also remove the dead controller's claim file (run.py stop; a starting
    controller holds the claim itself)."""
    from pipeline.paths import instance_dir, socket_path
    from shm.segment import list_segments, unlink_instance

    log = log or (lambda msg: None)
    instance = cfg.instance.name
    inst_dir = instance_dir(cfg)
    state_file = inst_dir / "controller.state"
    if state is None:
        state = read_state(cfg)
    found: dict = {"instance": instance, "state_was": state.get("state", ""),
                   "controller_pid": state.get("pid")}
    found["stages_killed"] = kill_stages(instance)
    segs = list_segments(instance)
    found["semaphores"] = sum(1 for s in segs if s.name.startswith("sem."))
    found["segments"] = len(segs) - found["semaphores"]
    if segs:
        unlink_instance(instance)
    sock = socket_path(cfg)
    found["socket"] = sock.exists()
    if found["socket"]:
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
    if drop_claim:
        from shm.segment import claim_holder, claim_path

        if claim_holder(instance) is None:
            try:
                os.unlink(claim_path(instance))
            except FileNotFoundError:
                pass
    latest = inst_dir / "latest"
    run_dir = latest.resolve() if latest.exists() else None
    crashed = found["state_was"] in ("running", "starting")
    found["run_dir"] = str(run_dir) if run_dir else None
    found["orders_closed"] = close_orphan_orders(run_dir / "journal") if run_dir else 0
    if not (crashed or found["stages_killed"] or segs or found["socket"]
            or found["orders_closed"]):
        return None
    if state_file.exists() and read_state(cfg).get("pid") == found["controller_pid"]:
        detail = (f"controller pid {found['controller_pid']} died without stopping; cleaned "
                  f"{found['segments']} segment(s), {found['semaphores']} semaphore(s)"
                  + (", the control socket" if found["socket"] else "")
                  + f", {len(found['stages_killed'])} stage process(es); "
                  f"{found['orders_closed']} open order(s) closed in the journal")
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"state": "crashed", "detail": detail,
                                   "pid": found["controller_pid"]}))
        os.replace(tmp, state_file)
    if run_dir is not None and (run_dir / "journal").is_dir():
        from stages.journal import append_event

        append_event(run_dir / "journal", "controller", "recovered_after_crash",
                     "the next controller (or run.py stop) cleared what the dead one left",
                     **{k: v for k, v in found.items() if k != "run_dir"})
    log(f"instance {instance}: the previous controller (pid {found['controller_pid']}) died "
        f"without stopping; cleaned {found['segments']} segment(s), {found['semaphores']} "
        f"semaphore(s), socket {'yes' if found['socket'] else 'no'}, "
        f"{len(found['stages_killed'])} stage process(es); {found['orders_closed']} open "
        "order(s) recorded as cancelled")
    return found
