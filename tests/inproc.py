"""One hftfarm instance inside the test process: the controller's segments (every ring, status
block, risk view and histogram of a config), stage objects started in-process, and ring ends
for the test to play the other stages. No processes, so a kernel can be stepped batch by batch
and a crash simulated at an exact point.

    with InProcessInstance(tmp_path, shm_prefix, strategies=3) as inst:
        gate = inst.stage("risk_gate")              # RiskGateStage, on_start done
        w = inst.writer("intent-s1")                # the test is strategy s1
        ...
        gate.poll()
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from shm.records import RECORD_DTYPES

UNIT_INSTRUMENT = """
[[instruments]]
symbol = "UNIT-USD"
venue = "simA"
tick_size = "1"
lot_size = "1"
group = "UNIT"
start_price = "10000"
volatility_bps = 3.0
"""


def write_config(path: Path, instance: str, run_dir: Path, strategies: int = 3,
                 risk: str = "", rings: str = "order_capacity = 4096") -> Path:
    strats = "".join(f"""
[[strategies]]
name = "s{i}"
kind = "market_making"
instruments = ["UNIT-USD@simA"]
""" for i in range(1, strategies + 1))
    text = textwrap.dedent(f"""
    [instance]
    name = "{instance}"
    run_dir = "{run_dir}"

    [[venues]]
    name = "simA"
    kind = "sim"
    rate_limit_per_s = 100000
    """) + UNIT_INSTRUMENT + strats + f"""
[risk]
{risk or 'max_order_qty_lots = 100'}

[rings]
{rings}

[journal]
enabled = true
"""
    path.write_text(text)
    return path


class InProcessInstance:
    def __init__(self, tmp_path: Path, instance: str, strategies: int = 3, risk: str = "",
                 rings: str = "order_capacity = 4096"):
        from pipeline.config import load_config
        from pipeline.controller import Controller

        self.tmp = Path(tmp_path)
        cfg_path = write_config(self.tmp / "config.toml", instance, self.tmp / "runs",
                                strategies, risk, rings)
        self.cfg = load_config(cfg_path)
        self.ctl = Controller(self.cfg, str(cfg_path))
        self.ctl.create_segments()
        self.ctl.run_dir.mkdir(parents=True, exist_ok=True)
        self.instance = instance
        self.topology = self.ctl.topology
        self.run_dir = self.ctl.run_dir
        self.jdir = self.run_dir / "journal"
        self.stages = []
        self.ends = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        for st in self.stages:
            try:
                st.on_stop()
            except Exception:   # a stage the test "crashed" may be half-closed already
                pass
        self.stages.clear()
        for ring in self.ends:
            ring.close()
        self.ends.clear()
        self.ctl.close()

    # -- stages ------------------------------------------------------------------------------
    def stage(self, name: str, restarts: int = 0, reconcile: bool = False):
        from pipeline.stage_main import make_stage
        from stages.base import StageContext

        spec = self.topology.stage(name)
        ctx = StageContext(instance=self.instance, name=spec.name, role=spec.role,
                           config=self.cfg, topology=self.topology, run_dir=self.run_dir,
                           slot=spec.slot, restarts=restarts,
                           extra={"spec": spec, "reconcile": reconcile})
        st = make_stage(spec)
        st.on_start(ctx)
        self.stages.append(st)
        return st

    def crash(self, stage) -> None:
        """What kill -9 leaves: the stage's process-local state is gone, its rings stay."""
        self.stages.remove(stage)
        for r in getattr(stage, "_rings", []):
            r.close()

    # -- the test's own ring ends ------------------------------------------------------------
    def _ring(self, name: str):
        from shm.ring import BroadcastRing, SpscRing

        spec = next(r for r in self.topology.rings if r.name == name)
        cls = BroadcastRing if spec.kind == "broadcast" else SpscRing
        ring = cls.attach(self.instance, name, RECORD_DTYPES[spec.dtype])
        self.ends.append(ring)
        return ring

    def writer(self, name: str):
        return self._ring(name).writer()

    def reader(self, name: str, md_reader: str | None = None):
        ring = self._ring(name)
        if md_reader is not None:
            return ring.reader(self.topology.md_readers[name[3:]][md_reader], from_start=True)
        return ring.reader()

    def strategy_id(self, name: str) -> int:
        return next(s.strategy_id for s in self.topology.strategies() if s.process == name)


def drain(reader, dtype, batch: int = 4096) -> np.ndarray:
    """Everything readable now from ``reader``."""
    out = []
    buf = np.zeros(batch, dtype=dtype)
    while True:
        n = reader.poll(buf)
        if n == 0:
            break
        out.append(buf[:n].copy())
    return np.concatenate(out) if out else np.zeros(0, dtype=dtype)
