"""A shared snapshot of what each strategy process of a farm sees and does, for ``status``. Cold.

Written by each strategy host (its own row, the row of its status slot) once per heartbeat;
read by the controller (``status``, the farm coordinator). Plain int64 words: aligned 8-byte
stores do not tear on x86-64, and a reader needs a recent, not an instantaneous, picture.

    row[slot]  int64[ROW_WORDS]
      FV_WRITTEN_NS   wall time of the row's last write (0: never)
      FV_NEWS         new orders this incarnation sent
      FV_FILLS        fill reports it applied (restored ones included)
      FV_N_SUBS       signal subscriptions described below (at most MAX_SUBS)
      then per subscription s, SUB_WORDS words from FV_SUBS + SUB_WORDS s:
        kind code (SIG_*), cells (its instruments or pairs), cells valid now,
        age of the oldest cell in microseconds (-1: a cell never arrived),
        dropouts: how often this incarnation saw the subscription go from every cell valid to
        some missing (a restart of its agent, a stale feed), counted at each row write, so an
        operator (and a drill) sees an outage that is over by the time it looks
"""
from __future__ import annotations

import numpy as np

FV_WRITTEN_NS, FV_NEWS, FV_FILLS, FV_N_SUBS = 0, 1, 2, 3
FV_SUBS = 4
SUB_WORDS = 5
MAX_SUBS = 5
# 256 bytes (FV_SUBS + SUB_WORDS * MAX_SUBS <= 32): one writer per row, rows never share a
# cache line
ROW_WORDS = 32
SEGMENT = "farmview"


class FarmView:
    def __init__(self, buf: np.ndarray, n_rows: int, segment=None):
        self.segment = segment
        self.n_rows = n_rows
        self.rows = buf[: n_rows * ROW_WORDS * 8].view(np.int64).reshape(n_rows, ROW_WORDS)

    @classmethod
    def create(cls, instance: str, n_rows: int) -> "FarmView":
        from shm.segment import Segment

        n_rows = max(1, int(n_rows))
        seg = Segment.create(instance, SEGMENT, n_rows * ROW_WORDS * 8, SEGMENT,
                             capacity=n_rows)
        seg.mark_ready()
        return cls(seg.data, n_rows, seg)

    @classmethod
    def attach(cls, instance: str) -> "FarmView":
        from shm.segment import Segment

        seg = Segment.attach(instance, SEGMENT, timeout_s=2.0)
        return cls(seg.data, int(seg.header["capacity"]), seg)

    def write(self, slot: int, now_ns: int, news: int, fills: int, subs) -> None:
        """One strategy process's row: ``subs`` as ``StrategyHostStage.signal_view`` gives."""
        row = self.rows[slot]
        row[FV_NEWS] = news
        row[FV_FILLS] = fills
        subs = list(subs)[:MAX_SUBS]
        for s, (_name, code, cells, valid, oldest_ns, dropouts) in enumerate(subs):
            w = FV_SUBS + SUB_WORDS * s
            row[w:w + SUB_WORDS] = (code, cells, valid,
                                    oldest_ns // 1000 if oldest_ns >= 0 else -1, dropouts)
        row[FV_N_SUBS] = len(subs)
        row[FV_WRITTEN_NS] = now_ns

    def read(self, slot: int) -> dict:
        row = self.rows[slot].copy()
        subs = []
        for s in range(min(int(row[FV_N_SUBS]), MAX_SUBS)):
            w = FV_SUBS + SUB_WORDS * s
            code, cells, valid, age_us, dropouts = (int(x) for x in row[w:w + SUB_WORDS])
            subs.append({"kind": code, "cells": cells, "valid": valid,
                         "oldest_age_ms": None if age_us < 0 else round(age_us / 1000, 1),
                         "dropouts": dropouts})
        return {"written_ns": int(row[FV_WRITTEN_NS]), "news": int(row[FV_NEWS]),
                "fills": int(row[FV_FILLS]), "signals": subs}

    def close(self) -> None:
        self.rows = None
        if self.segment is not None:
            self.segment.close()
            self.segment = None
