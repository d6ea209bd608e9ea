"""Fill accounting, written once: position, average cost, realized PnL and fees per instrument.

Runs wherever fills are counted: in every strategy's runtime (strategies/base.py
``apply_execs``, and ``restore_state`` after a restart) and in the backtest's books of record.
``apply_fill`` is HOT PATH (@njit, no allocation).

One row of ``POSITION_DTYPE`` per instrument, in the instrument's own units:

    pos        position, lots (float64: exact below 2**53)
    cost       signed sum of px_ticks * lots of the open position (its average price is
               cost / pos)
    realized   realized PnL, ticks x lots (one tick of one lot = 1), before fees
    fees       fees paid, quote currency (fee_e9 / 1e9; negative = rebates)
    last_px    price of the latest fill, ticks
    fills      fills applied
    closed_pnl realized PnL of the latest fill that reduced the position, ticks x lots (the
               backtest turns it into a closed-trade PnL)

Average-cost method: a fill that adds to the position adds its cost; one that reduces it
realizes (px - avg) per lot closed (the reverse for a short); one that crosses zero closes the
old position and opens the rest at the fill price. Quote-currency PnL = realized x tick value
(tick_size x lot_size) - fees.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shm.records import SIDE_BUY

POSITION_DTYPE = np.dtype([("pos", "f8"), ("cost", "f8"), ("realized", "f8"), ("fees", "f8"),
                           ("last_px", "f8"), ("fills", "i8"), ("closed_pnl", "f8"),
                           ("_pad", "f8")], align=True)


def make_positions(n_inst: int) -> np.ndarray:
    return np.zeros(n_inst, dtype=POSITION_DTYPE)


@njit(cache=True)
def apply_fill(p, side, px_ticks, qty_lots, fee_e9):
    """Account one fill into the position record ``p``. Returns the PnL it realized (ticks x
    lots, before fees; 0 for a fill that only adds)."""
    signed = float(qty_lots) if side == SIDE_BUY else -float(qty_lots)
    px = float(px_ticks)
    pos = p.pos
    realized = 0.0
    if pos == 0.0 or (pos > 0.0) == (signed > 0.0):
        p.cost += signed * px
    else:
        closed = min(abs(pos), abs(signed))
        avg = p.cost / pos
        if pos > 0.0:   # closing a long at px realizes (px - avg) per lot; a short the reverse
            realized = closed * (px - avg)
            p.cost -= closed * avg
        else:
            realized = closed * (avg - px)
            p.cost += closed * avg
        rest = abs(signed) - closed
        if rest > 0.0:  # flipped through zero: the remainder opens at px
            p.cost = (rest if signed > 0.0 else -rest) * px
        p.realized += realized
        p.closed_pnl = realized
    p.pos = pos + signed
    if p.pos == 0.0:
        p.cost = 0.0
    p.fees += fee_e9 / 1e9
    p.last_px = px
    p.fills += 1
    return realized


@njit(cache=True)
def unrealized_ticks(p, mid_x2):
    """Open PnL of ``p`` marked at the mid (bid + ask, ticks), ticks x lots; 0 without a mid."""
    if p.pos == 0.0 or mid_x2 <= 0:
        return 0.0
    return p.pos * mid_x2 * 0.5 - p.cost
