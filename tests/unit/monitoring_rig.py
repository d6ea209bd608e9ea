"""A controller's monitoring parts over real shared memory, without stages: the status table,
risk view and latency histograms a controller creates, filled by the test (helper module)."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tests.integration.test_pipeline_cli import ROOT

STRATEGY = '''
[[strategies]]
name = "mm{i}"
kind = "market_making"
instruments = ["BTC-USD@simA"]
'''


def config_text(instance: str, run_dir, n_strategies: int = 3, extra: str = "") -> str:
    text = (ROOT / "config.toml").read_text()
    text = text.replace('name = "default"', f'name = "{instance}"', 1)
    text = text.replace('run_dir = "runs"', f'run_dir = "{run_dir}"', 1)
    head, rest = text.split("[[strategies]]", 1)
    tail = rest[rest.index("[risk]"):]
    return head + "".join(STRATEGY.format(i=i) for i in range(n_strategies)) + "\n" + tail + extra


class Rig:
    """``ctl``: what pipeline.monitor / exporter read of a controller. Close it."""

    def __init__(self, instance: str, tmp: Path, n_strategies: int = 3, extra: str = ""):
        from pipeline.config import parse_config
        from shm.histogram import LatencyHistogram
        from shm.status import StatusTable
        from stages.riskview import RiskView
        from stages.topology import build_topology

        cfg = parse_config(config_text(instance, tmp / "runs", n_strategies, extra),
                           build=False)
        topo = build_topology(cfg)
        run_dir = tmp / "runs" / instance / "run-test"
        (run_dir / "journal").mkdir(parents=True)
        self.ctl = SimpleNamespace(
            cfg=cfg, topology=topo, instance=instance, run_dir=run_dir,
            status=StatusTable.create(instance, len(topo.stages)),
            riskview=RiskView.create(instance, len(topo.strategies()), len(cfg.instruments)),
            hists={n: LatencyHistogram.create(instance, n) for n, _ in topo.histograms()},
            started_at=time.time(), monitor=None, monitoring=None, lock=threading.RLock(),
            events=[], log=lambda m: None, event=lambda *a, **k: None)

    def close(self) -> None:
        from shm.segment import unlink_instance

        c = self.ctl
        for h in c.hists.values():
            h.close()
        c.status.close()
        c.riskview.close()
        unlink_instance(c.instance)
