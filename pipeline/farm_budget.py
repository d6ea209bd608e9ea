"""The farm's budget allocation: a pure function from shard performance to shard budgets. Cold.

Runs in the controller (the farm coordinator, pipeline/farm_coordinator.py) and in tests; it
imports nothing of hftfarm and touches no state, so the property test can run it over many
random cases.

``allocate(notional, loss, shards, min_share, tilt)``:

1. A shard is *out* when its loss so far reached its equal share of the loss budget
   (``loss / n``): it gets nothing (0 notional, 0 loss) until a later reallocation finds it
   back under that share. Every other shard is *in*.
2. Each shard in is scored by its recent risk-adjusted performance, ``pnl / risk`` (a Sharpe
   ratio over the coordinator's lookback; risk 0 with a gain counts as the best score,
   ``MAX_SCORE``), clipped to [0, MAX_SCORE]: losers score 0, they are not punished twice.
3. Weights: ``(1 - tilt) / m + tilt * score / sum(score)`` over the m shards in (equal shares
   when every score is 0).
4. Targets: each shard in gets ``min_share * notional`` plus its weight of the rest (min_share
   is lowered to 1/m if it would not fit).
5. Hard limits: no shard gets more than its ``cap`` (the notional the risk gate's per-shard
   position limit allows it); what a cap cuts off goes to the shards below their caps in
   proportion to their targets (water-filling), until nothing is left or every shard is
   capped.
6. The loss budget is split in proportion to the notional shares, each within its
   ``loss_cap`` (the gate's loss limit) by the same water-filling.

Guarantees (tests/unit/test_farm_budget.py, a unit test and a property test over thousands of
random cases): no allocation exceeds its cap; nothing is negative; an out shard gets 0; the
notional given out is ``min(notional, sum of the caps of the shards in)`` (the budget is
conserved: never more, and less only where the gate's limits bind), likewise the loss budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

MAX_SCORE = 10.0


@dataclass(frozen=True)
class ShardPerf:
    pnl: float            # PnL over the lookback, quote currency
    risk: float           # its standard deviation over the lookback, quote (>= 0)
    loss: float           # loss so far in this run (>= 0), quote: drawdown from its start
    cap: float            # most notional the risk gate lets this shard hold, quote (>= 0)
    loss_cap: float = math.inf   # most loss the risk gate lets it take, quote


@dataclass(frozen=True)
class Allocation:
    notional: tuple[float, ...]
    loss: tuple[float, ...]
    weights: tuple[float, ...]
    reasons: tuple[str, ...]


def _water_fill(total: float, targets: list[float], caps: list[float]) -> list[float]:
    """Give out ``total`` in proportion to ``targets``, no entry above its cap; what a cap cuts
    off goes to the others in proportion to their targets. Sum = min(total, sum of the caps
    of the entries with a positive target)."""
    n = len(targets)
    out = [0.0] * n
    free = [i for i in range(n) if targets[i] > 0 and caps[i] > 0]
    left = total
    while free and left > 1e-12 * max(1.0, total):
        tsum = sum(targets[i] for i in free)
        frac = {i: targets[i] / tsum for i in free}   # shares first: exact for tiny targets
        over = [i for i in free if out[i] + left * frac[i] >= caps[i]]
        if not over:
            for i in free:
                out[i] += left * frac[i]
            left = 0.0
            break
        for i in over:
            left -= caps[i] - out[i]
            out[i] = caps[i]
        free = [i for i in free if i not in over]
    return [min(max(0.0, x), c) for x, c in zip(out, caps)]


def score(p: ShardPerf) -> float:
    """Risk-adjusted performance of one shard, in [0, MAX_SCORE]."""
    if not (math.isfinite(p.pnl) and math.isfinite(p.risk)):
        return 0.0
    if p.risk <= 0:
        return MAX_SCORE if p.pnl > 0 else 0.0
    return min(MAX_SCORE, max(0.0, p.pnl / p.risk))


def allocate(notional: float, loss: float, shards: list[ShardPerf], min_share: float = 0.0,
             tilt: float = 0.5) -> Allocation:
    """The farm's notional and loss budgets split over ``shards`` (module docstring)."""
    if not (notional >= 0 and loss >= 0 and math.isfinite(notional) and math.isfinite(loss)):
        raise ValueError(f"budgets must be finite and >= 0 (notional {notional}, loss {loss})")
    if not 0 <= min_share <= 1 or not 0 <= tilt <= 1:
        raise ValueError(f"min_share {min_share} and tilt {tilt} must be in [0, 1]")
    n = len(shards)
    if n == 0:
        return Allocation((), (), (), ())
    share_of_loss = loss / n
    inn = [i for i, p in enumerate(shards) if p.loss < share_of_loss and p.cap > 0]
    scores = [score(p) for p in shards]
    m = len(inn)
    weights = [0.0] * n
    if m:
        ssum = sum(scores[i] for i in inn)
        for i in inn:
            perf = scores[i] / ssum if ssum > 0 else 1.0 / m
            weights[i] = (1.0 - tilt) / m + tilt * perf
    floor = min(min_share, 1.0 / m) * notional if m else 0.0
    targets = [floor + (notional - floor * m) * weights[i] if i in inn else 0.0
               for i in range(n)]
    caps = [max(0.0, p.cap) for p in shards]
    given = _water_fill(notional, targets, caps)
    loss_caps = [max(0.0, p.loss_cap) for p in shards]
    loss_given = _water_fill(loss, [g if g > 0 else 0.0 for g in given], loss_caps)
    reasons = []
    for i, p in enumerate(shards):
        if i not in inn:
            why = (f"out: loss {p.loss:.2f} >= its share of the loss budget "
                   f"{share_of_loss:.2f}" if p.loss >= share_of_loss
                   else "out: the gate gives it no room (cap 0)")
        else:
            why = (f"score {scores[i]:.3g} (pnl {p.pnl:.2f} / risk {p.risk:.2f}), weight "
                   f"{weights[i]:.3f}: notional {given[i]:.2f}"
                   + (f" (at the gate's limit {caps[i]:.2f})" if given[i] >= caps[i] - 1e-9
                      else ""))
        reasons.append(why)
    return Allocation(tuple(given), tuple(loss_given), tuple(weights), tuple(reasons))
