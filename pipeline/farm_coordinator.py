"""The farm coordinator: each farm's risk budget, reallocated across its shards. Cold path.

Runs in the controller, inside its supervision tick (under the controller's lock; never on the
data path). For every enabled ``[[strategies]]`` entry with a ``budget`` (pipeline/farm_config.py):

- every ``SAMPLE_S`` it samples each shard's PnL as the risk gate accounts it (realized +
  unrealized - fees, stages/riskview.py);
- every ``budget.rebalance_s`` it scores each shard on the last ``budget.lookback_s`` (PnL over
  the window against its standard deviation) and splits the farm's notional and loss budgets
  with ``pipeline.farm_budget.allocate`` (a pure function: unit and property tests), each
  shard's share capped by the risk gate's hard limits: its per-shard position limit
  (``common.runtime.shard_position_limits``) and ``[risk] daily_loss_limit``;
- a shard's notional becomes its ``budget.param`` (default ``max_inventory_lots``: lots per
  instrument): ``floor(notional / (instruments x the dearest lot))``, never above the gate's
  per-shard position limit; raised to the smallest value the strategy accepts (its Params
  validation, e.g. at least ``order_qty_lots``) only where that is still within the gate's
  limit;
- the new values go out through the live-parameter path (``LiveParams.commit_shards``: the
  shard's whole set validated as the config is, written to ``<run dir>/params/<name>.json``,
  CTRL_PARAMS to every shard, applied between two batches);
- every reallocation is journaled (``farm_reallocation`` in journal/events.jsonl) with its
  reason, each shard's score, share, value and why, and the round trip from decision to the
  last shard's acknowledgement.

A lot's value is the instrument's ``start_price`` x ``lot_size`` (the simulated venues' price;
for a live venue set ``start_price`` near the market: the coordinator reads no prices).
"""
from __future__ import annotations

import math
import time
from collections import deque
from decimal import Decimal

from pipeline.farm_budget import ShardPerf, allocate

SAMPLE_S = 1.0


class Farm:
    """One farm's shards and the coordinator's memory of them."""

    def __init__(self, cfg, sc, specs, gate_lots: dict):
        self.name, self.sc, self.budget, self.specs = sc.name, sc, sc.budget, specs
        self.samples: deque = deque()          # (monotonic s, [pnl per shard])
        self.next_rebalance = time.monotonic() + self.budget.rebalance_s
        self.rounds = 0
        self.last: dict | None = None          # the last reallocation, as journaled
        lots_value = {}
        for i in cfg.instruments:
            lots_value[i.key] = float(Decimal(i.start_price) * i.lot_size)
        self.lot_value = [max(lots_value[k] for k in s.instruments) for s in specs]
        self.gate_lots = [int(gate_lots[s.strategy_id]) for s in specs]
        self.caps = [lots * len(s.instruments) * v
                     for lots, s, v in zip(self.gate_lots, specs, self.lot_value)]
        self.loss_cap = float(cfg.risk.daily_loss_limit)


class FarmCoordinator:
    def __init__(self, ctl):
        from common.runtime import shard_position_limits

        self.ctl = ctl
        cfg = ctl.cfg
        gate_lots = shard_position_limits(cfg.risk.max_position_lots, cfg.strategies)
        self.farms = []
        for sc in cfg.strategies:
            if sc.enabled and sc.budget is not None:
                specs = [s for s in ctl.topology.strategies() if s.strategy.name == sc.name]
                self.farms.append(Farm(cfg, sc, specs, gate_lots))
        self._next_sample = 0.0

    def pnl(self, spec) -> float:
        from stages.riskview import PNL_FEES, PNL_REALIZED, PNL_UNREALIZED

        p = self.ctl.riskview.gate_pnl[spec.strategy_id]
        return float(p[PNL_REALIZED] + p[PNL_UNREALIZED] - p[PNL_FEES])

    def tick(self, now: float) -> None:
        """Called every supervision tick: sample, and reallocate what is due."""
        if not self.farms:
            return
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_S
            for f in self.farms:
                f.samples.append((now, [self.pnl(s) for s in f.specs]))
                while f.samples and now - f.samples[0][0] > f.budget.lookback_s:
                    f.samples.popleft()
        for f in self.farms:
            if now >= f.next_rebalance:
                f.next_rebalance = now + f.budget.rebalance_s
                self.reallocate(f, f"every {f.budget.rebalance_s:g} s")

    def perf(self, f: Farm) -> list[ShardPerf]:
        """Each shard's PnL over the lookback, its risk (standard deviation of the PnL changes
        between samples, scaled to the window) and its loss so far."""
        out = []
        series = [[pnls[k] for _, pnls in f.samples] for k in range(len(f.specs))]
        for k, s in enumerate(f.specs):
            xs = series[k] or [self.pnl(s)]
            diffs = [b - a for a, b in zip(xs, xs[1:])]
            if len(diffs) >= 2:
                mean = sum(diffs) / len(diffs)
                var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
                risk = math.sqrt(var * len(diffs))
            else:
                risk = 0.0
            now_pnl = self.pnl(s)
            out.append(ShardPerf(pnl=xs[-1] - xs[0], risk=risk, loss=max(0.0, -now_pnl),
                                 cap=f.caps[k], loss_cap=f.loss_cap))
        return out

    def values(self, f: Farm, notional: tuple) -> dict:
        """shard -> {budget.param: lots}: the notional as lots per instrument, within the gate's
        limit; raised to the strategy's smallest accepted value only inside that limit."""
        from stages.live_params import params_dict

        strategy = self.ctl.live_params.strategy(f.name)
        floor_value = _smallest_accepted(strategy, params_dict(strategy.params), f.budget.param)
        out = {}
        for k, s in enumerate(f.specs):
            lots = int(notional[k] // (len(s.instruments) * f.lot_value[k])) \
                if f.lot_value[k] > 0 else 0
            lots = min(lots, f.gate_lots[k])
            if lots < floor_value <= f.gate_lots[k]:
                lots = floor_value
            out[s.shard] = {f.budget.param: lots}
        return out

    def reallocate(self, f: Farm, reason: str) -> dict | None:
        """One reallocation of farm ``f``: allocate, apply through the live-parameter path,
        journal. Returns what was journaled (None when the parameter path refused it)."""
        from pipeline.live_params import SetRefused, send_params

        t0 = time.monotonic()
        perf = self.perf(f)
        b = f.budget
        alloc = allocate(b.notional, b.loss, perf, b.min_share, b.tilt)
        values = self.values(f, alloc.notional)
        t_decided = time.monotonic()
        lp = self.ctl.live_params
        try:
            version, path = lp.commit_shards(f.name, values, "coordinator", reason)
        except SetRefused as exc:
            self.ctl.log(f"farm {f.name}: reallocation refused: {exc}")
            self.ctl.event("farm_reallocation_refused", str(exc), who="coordinator",
                           strategy=f.name)
            return None
        t_written = time.monotonic()
        acked, failed, not_acked = send_params(self.ctl, f.name, version, wait_s=0.5)
        t_acked = time.monotonic()
        # decision -> new limits active in every shard: each acknowledges after it applied the
        # set between two batches (stages/strategy_host.py apply_live_params)
        round_trip_ms = (t_acked - t_decided) * 1e3
        f.rounds += 1
        shards = {}
        for k, s in enumerate(f.specs):
            shards[s.process] = {"shard": s.shard, "pnl": round(perf[k].pnl, 4),
                                 "risk": round(perf[k].risk, 4), "loss": round(perf[k].loss, 4),
                                 "notional": round(alloc.notional[k], 2),
                                 "loss_budget": round(alloc.loss[k], 2),
                                 "gate_cap_notional": round(f.caps[k], 2),
                                 "gate_position_lots": f.gate_lots[k],
                                 b.param: values[s.shard][b.param], "why": alloc.reasons[k]}
        rec = {"round": f.rounds, "version": version, "reason": reason, "shards": shards,
               "acked": acked, "failed": failed, "not_acked": not_acked,
               "round_trip_ms": round(round_trip_ms, 2),
               "decide_ms": round((t_decided - t0) * 1e3, 2),
               "write_ms": round((t_written - t_decided) * 1e3, 2),
               "ack_ms": round((t_acked - t_written) * 1e3, 2), "at": time.strftime("%H:%M:%S")}
        f.last = rec
        self.ctl.event("farm_reallocation", reason, who="coordinator", strategy=f.name,
                       file=path, **{k: v for k, v in rec.items() if k != "at"})
        self.ctl.events.append(f"{rec['at']} farm {f.name} reallocated (v{version}, "
                               f"{round_trip_ms:.1f} ms): " + ", ".join(
                                   f"{p} {v[b.param]}" for p, v in shards.items()))
        return rec

    def view(self) -> dict:
        """Per farm with a budget: the budget and the last reallocation (status)."""
        out = {}
        for f in self.farms:
            b = f.budget
            out[f.name] = {"notional": b.notional, "loss": b.loss,
                           "rebalance_s": b.rebalance_s, "param": b.param, "rounds": f.rounds,
                           "next_in_s": round(max(0.0, f.next_rebalance - time.monotonic()), 1),
                           "last": f.last}
        return out


def _smallest_accepted(strategy, base: dict, param: str) -> int:
    """The smallest value of integer parameter ``param`` the strategy accepts with the rest of
    ``base`` (its Params validation: e.g. max_inventory_lots >= order_qty_lots); 1 if none is
    found within 2**20."""
    from common.schema import ConfigError

    lo, hi = 1, 1 << 20
    try:
        strategy.updated_params({**base, param: hi})
    except ConfigError:
        return 1
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            strategy.updated_params({**base, param: mid})
            hi = mid
        except ConfigError:
            lo = mid + 1
    return lo
