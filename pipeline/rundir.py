"""What a run left on disk, read back for reports and exports. Cold path (operator's shell).

Two kinds of run directory are understood:

- a live run (``run.py run`` / ``start``): ``<run dir>/report.json`` (the controller's final
  report), ``journal/orders-<k>.rec`` and ``journal/exec-<k>.rec`` (stages/journal.py),
  ``journal/events.jsonl`` and ``latency/<hop>.hgrm`` (the latency dumps);
- a backtest output (``run.py backtest --out DIR``): ``<name>_report.json`` and
  ``<name>_equity.csv`` per strategy (``_total_*`` for the run of several), and, written by the
  same command, ``journal/orders-0.rec`` / ``exec-0.rec`` in the live journal's format (the
  backtest's trace of intents and venue reports), so that both kinds report and export alike.

``load_run_dir`` raises ``RunDirError`` naming the path and what is missing.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class RunDirError(ValueError):
    """The directory is not a run (live or backtest), or a part of it cannot be read."""


@dataclass
class RunDir:
    path: Path
    kind: str                          # "live" or "backtest"
    report: dict                       # report.json (live) or {name: report} (backtest)
    orders: np.ndarray                 # ORDER_DTYPE, deduplicated by ring_seq
    execs: np.ndarray                  # EXEC_DTYPE, deduplicated by ring_seq
    instruments: list = field(default_factory=list)     # shm.instruments.Instrument
    hgrm: dict = field(default_factory=dict)            # hop name -> Path of its .hgrm
    curves: dict = field(default_factory=dict)          # name -> {t_ns, equity, ...} arrays
    strategy_names: dict = field(default_factory=dict)  # strategy_id -> name

    @property
    def journal_dir(self) -> Path:
        return self.path / "journal"

    def instrument(self, instrument_id: int):
        for i in self.instruments:
            if i.instrument_id == int(instrument_id):
                return i
        return None


def journal_instruments(jdir: Path) -> list:
    """The instrument table stored in the journal files' headers (the first file that has
    one)."""
    from market.recordfile import instruments_from_header, read_header

    for f in sorted(Path(jdir).glob("*.rec")):
        try:
            h = read_header(f)
        except (OSError, ValueError):
            continue
        if h.get("instruments"):
            return instruments_from_header(h)
    return []


def is_run_dir(path) -> str | None:
    """"live", "backtest" or None."""
    p = Path(path)
    if (p / "report.json").is_file() or any((p / "journal").glob("orders-*.rec")):
        if not list(p.glob("*_report.json")):
            return "live"
    if list(p.glob("*_report.json")):
        return "backtest"
    return None


def load_run_dir(path) -> RunDir:
    from stages.journal import read_journal_exec, read_journal_orders

    p = Path(path)
    if not p.exists():
        raise RunDirError(f"{p}: no such directory; give the run directory of a live run "
                          "(runs/<instance>/run-<time>, or runs/<instance>/latest) or the "
                          "--out of `run.py backtest`")
    if not p.is_dir():
        raise RunDirError(f"{p}: not a directory; give a run directory")
    kind = is_run_dir(p)
    if kind is None:
        raise RunDirError(f"{p}: not a run directory (no report.json or journal/orders-*.rec of "
                          "a live run, no <name>_report.json of a backtest)")
    jdir = p / "journal"
    try:
        orders = read_journal_orders(jdir)
        execs = read_journal_exec(jdir)
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{jdir}: the journal cannot be read: {exc}") from None
    run = RunDir(p.resolve(), kind, {}, orders, execs, journal_instruments(jdir))
    if kind == "live":
        rp = p / "report.json"
        if rp.is_file():
            try:
                run.report = json.loads(rp.read_text())
            except ValueError as exc:
                raise RunDirError(f"{rp}: not valid JSON ({exc})") from None
        for f in sorted((p / "latency").glob("*.hgrm")):
            run.hgrm[f.stem] = f
        for name, st in (run.report.get("risk") or {}).get("strategies", {}).items():
            run.strategy_names[int(st["strategy_id"])] = name
    else:
        for f in sorted(p.glob("*_report.json")):
            name = f.name[:-len("_report.json")]
            try:
                run.report[name] = json.loads(f.read_text())
            except ValueError as exc:
                raise RunDirError(f"{f}: not valid JSON ({exc})") from None
            c = p / f"{name}_equity.csv"
            if c.is_file():
                run.curves[name] = read_equity_csv(c)
        meta = p / "journal" / "strategies.json"
        if meta.is_file():
            run.strategy_names = {int(k): v for k, v in json.loads(meta.read_text()).items()}
    for sid in sorted(set(int(s) for s in orders["strategy_id"]) |
                      set(int(s) for s in execs["strategy_id"])):
        run.strategy_names.setdefault(sid, f"strategy {sid}")
    return run


def read_equity_csv(path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return {}
    cols = rows[0]
    data = np.array(rows[1:], dtype=object) if len(rows) > 1 else np.zeros((0, len(cols)))
    out = {}
    for j, c in enumerate(cols):
        col = data[:, j] if len(data) else []
        out[c] = np.array([int(x) for x in col], dtype=np.int64) if c == "t_ns" else \
            np.array([float(x) for x in col], dtype=np.float64)
    return out


def read_hgrm(path) -> tuple[np.ndarray, np.ndarray, int]:
    """(values in us, percentiles 0..1, total count) of an HdrHistogram .hgrm text."""
    vals, pcts, total = [], [], 0
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if line.startswith("#"):
            if "Total count" in line:
                total = int(float(line.rsplit("=", 1)[1].strip(" ]")))
            continue
        if len(parts) >= 3:
            try:
                v, q = float(parts[0]), float(parts[1])
            except ValueError:
                continue          # the column titles
            vals.append(v)
            pcts.append(q)
    return np.array(vals), np.array(pcts), total


def fills_of(execs: np.ndarray) -> np.ndarray:
    from shm.records import EXEC_FILL, EXEC_PARTIAL

    return execs[np.isin(execs["kind"], (EXEC_FILL, EXEC_PARTIAL))] if len(execs) else execs


def equity_from_fills(run: RunDir) -> dict:
    """name -> {t_ns, pnl}: each strategy's PnL after every fill, from the journal alone: cash
    from fills less fees, positions marked at the instrument's last fill price. A live run keeps
    no equity curve, and its fills are what the journal has; the final figures in report.json
    (marked at the mid) are the exact ones."""
    from shm.records import SIDE_BUY

    fills = fills_of(run.execs)
    out = {}
    if not len(fills):
        return out
    fills = fills[np.argsort(fills["send_ts_ns"], kind="stable")]
    last_px: dict[int, float] = {}
    for sid in sorted(set(int(s) for s in fills["strategy_id"])):
        cash, pos = 0.0, {}
        ts, pnl = [], []
        for f in fills:
            iid = int(f["instrument_id"])
            inst = run.instrument(iid)
            tick = float(inst.tick_size) if inst else 1.0
            lot = float(inst.lot_size) if inst else 1.0
            px = float(f["px_ticks"]) * tick
            last_px[iid] = px
            if int(f["strategy_id"]) != sid:
                continue
            q = float(f["qty_lots"]) * lot * (1 if int(f["side"]) == SIDE_BUY else -1)
            cash -= q * px + float(f["fee_e9"]) / 1e9
            pos[iid] = pos.get(iid, 0.0) + q
            ts.append(int(f["send_ts_ns"]))
            pnl.append(cash + sum(v * last_px[i] for i, v in pos.items()))
        out[run.strategy_names.get(sid, f"strategy {sid}")] = {
            "t_ns": np.array(ts, dtype=np.int64), "pnl": np.array(pnl)}
    return out


def rejects_by_reason(run: RunDir) -> dict:
    """{"risk:<REASON>" | "venue:<REASON>": count} from the journal (the same counting as the
    live report's, stages.journal.summarize_journal)."""
    from shm.records import EFLAG_FROM_RISK, EXEC_REJECT, INTENT_NEW, REJECT_NAMES

    out: dict[str, int] = {}
    o = run.orders
    new = o[(o["kind"] == INTENT_NEW) & (o["reject_code"] != 0)] if len(o) else o
    for c in new["reject_code"] if len(new) else []:
        k = "risk:" + REJECT_NAMES.get(int(c), str(int(c)))
        out[k] = out.get(k, 0) + 1
    e = run.execs
    vr = e[(e["kind"] == EXEC_REJECT) & ((e["flags"] & EFLAG_FROM_RISK) == 0)] if len(e) else e
    for c in vr["reject_code"] if len(vr) else []:
        k = "venue:" + REJECT_NAMES.get(int(c), str(int(c)))
        out[k] = out.get(k, 0) + 1
    return out


def pnl_by_strategy(run: RunDir) -> dict:
    """name -> {pnl, realized, unrealized, fees} (quote currency)."""
    out = {}
    if run.kind == "live":
        for name, st in (run.report.get("risk") or {}).get("strategies", {}).items():
            out[name] = {"pnl": st["pnl"], "realized": st["realized_pnl"],
                         "unrealized": st["unrealized_pnl"], "fees": st["fees"]}
        if not out:
            for name, c in equity_from_fills(run).items():
                out[name] = {"pnl": float(c["pnl"][-1]) if len(c["pnl"]) else 0.0}
    else:
        for name, rep in run.report.items():
            if name.startswith("_"):
                continue
            p = rep.get("pnl", {})
            out[name] = {"pnl": p.get("total", 0.0), "realized": p.get("realized", 0.0),
                         "unrealized": p.get("unrealized", 0.0), "fees": p.get("fees", 0.0)}
    return out
