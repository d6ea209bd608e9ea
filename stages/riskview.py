"""A shared snapshot of positions, PnL and risk state for the controller. Cold path.

Written by the risk gate (its positions / PnL / state) and by the order router (positions and
open orders as the venue reports them), each into its own 128-byte-aligned region, once per
heartbeat; read by the controller for ``status``, reconciliation after a restart, and the
final report. Plain int64 / float64 words: aligned 8-byte stores do not tear on x86-64, and a
reader only needs a recent, not an instantaneous, picture.

    gate  header   int64[16]   G_STATE (RISK_*), G_READY, G_FILLS, G_SEQ ...
    gate  pos      int64[S+1, I+1]      lots per strategy id x instrument id
    gate  pnl      float64[S+1, PNL_WORDS]  realized, unrealized, fees, equity peak (quote)
    router header  int64[16]   R_HALTED, R_OPEN, R_SENT, R_FILLS ...
    router pos     int64[S+1, I+1]
    router open    int64[S+1]           open orders per strategy
    strat  pos     int64[S+1, I+1]      each strategy's own view of its positions (row sid,
                                        written by that strategy's host only)
"""
from __future__ import annotations

import numpy as np

G_STATE, G_READY, G_FILLS, G_SEQ, G_APPROVED, G_REJECTED = 0, 1, 2, 3, 4, 5
R_HALTED, R_OPEN, R_SENT, R_FILLS, R_SEQ, R_RATE_REJECTS = 0, 1, 2, 3, 4, 5
PNL_REALIZED, PNL_UNREALIZED, PNL_FEES, PNL_PEAK = 0, 1, 2, 3
PNL_WORDS = 4


def _align(n: int) -> int:
    return (n + 127) // 128 * 128


class RiskView:
    def __init__(self, buf: np.ndarray, n_strat: int, n_inst: int, segment=None):
        self.segment = segment
        self.n_strat, self.n_inst = n_strat, n_inst
        s1, i1 = n_strat + 1, n_inst + 1
        off = 0

        def take(count, dtype, shape):
            nonlocal off
            a = buf[off: off + count * 8].view(dtype).reshape(shape)
            off = _align(off + count * 8)
            return a

        self.gate = take(16, np.int64, (16,))
        self.gate_pos = take(s1 * i1, np.int64, (s1, i1))
        self.gate_pnl = take(s1 * PNL_WORDS, np.float64, (s1, PNL_WORDS))
        self.router = take(16, np.int64, (16,))
        self.router_pos = take(s1 * i1, np.int64, (s1, i1))
        self.router_open = take(s1, np.int64, (s1,))
        self.strat_pos = take(s1 * i1, np.int64, (s1, i1))
        self.size = off

    @staticmethod
    def size_for(n_strat: int, n_inst: int) -> int:
        s1, i1 = n_strat + 1, n_inst + 1
        return sum(_align(n * 8) for n in (16, s1 * i1, s1 * PNL_WORDS, 16, s1 * i1, s1,
                                           s1 * i1))

    @classmethod
    def create(cls, instance: str, n_strat: int, n_inst: int) -> "RiskView":
        from shm.segment import Segment

        seg = Segment.create(instance, "riskview", cls.size_for(n_strat, n_inst), "riskview",
                             capacity=n_strat, n_readers=n_inst)
        seg.mark_ready()
        return cls(seg.data, n_strat, n_inst, seg)

    @classmethod
    def attach(cls, instance: str) -> "RiskView":
        from shm.segment import Segment

        seg = Segment.attach(instance, "riskview", timeout_s=2.0)
        return cls(seg.data, int(seg.header["capacity"]), int(seg.header["n_readers"]), seg)

    def close(self) -> None:
        self.gate = self.gate_pos = self.gate_pnl = None
        self.router = self.router_pos = self.router_open = self.strat_pos = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None
