"""The paper venue: our orders rest virtually in a live venue's real book. Runs in the venue's
feed stage (``feed-<venue>``, stages/feed_live.py, ``mode = "paper"``); ``paper_submit`` and
``paper_step`` are @njit HOT PATH, ``PaperVenue`` is cold.

It is the replay venue of the backtest (market/replayvenue.py) fed with live records instead of
a file: the same book, queue-position model (``queue_model``: conservative or hftbacktest's
power-probability model), taking of marketable orders, fees and latency model, so a strategy
meets the same fill rules in paper trading as in the backtest of the venue's recordings:

- a resting order's queue ahead is the displayed size of its level when it arrives; trades at
  its price advance it, decreases of the level advance it (probabilistic: the share of the
  cancels ahead; conservative: only down to the level's size); it fills from the trades that
  print through its queue position or through its price;
- a marketable order takes the displayed levels at the venue when it arrives (taker fee), never
  changing the real book;
- fees are the venue's ``maker_fee_bps`` / ``taker_fee_bps``.

Time. Everything runs on our clock (the receive times the feed stamps, the router's send
times). The venue sees a market record at ``recv_ts_ns - md_latency`` (the venue's configured
market-data latency, made non-decreasing): that is when the event happened at the venue, as far
as we can tell without trusting the venue's clock. An order reaches the venue at its send time
+ the venue's order latency (market/latency.py: constant + exponential jitter, FIFO), and its
reports come back after the order latency again. An order is applied between the market records
before and after its arrival time; when no record follows, once no record from before its
arrival can still come (``now - md_latency - PUBLISH_GUARD_NS``).

Snapshots (the feed's resync snapshots, and its whole book published again every second) are a
state, not events: they rebuild the book and cap each resting order's queue ahead at its
level's size, but never fill.

Known limits: Binance's trade and depth streams are not synchronised, so a depth decrease seen
before the trade that caused it counts as cancels first (probabilistic model: our queue moves
a little early); hidden and iceberg liquidity is not seen.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import book_apply_market
from market.replayvenue import (QF_AHEAD, Q_ACTIVE, Q_INST, Q_PX, Q_SIDE, RS_HI, RS_MAKER_FILLS,
                                RS_N_OPEN, RS_NOW, RS_TAKER_FILLS, ReplayVenue, replay_submit,
                                venue_apply_record, venue_order_arrives)
from market.venuequeue import QS_DROPPED, QS_N, q_drain_due, q_min, q_remove
from shm.records import MARKET_DTYPE, MFLAG_SNAPSHOT, MSG_LEVEL, SIDE_BUY, SIDE_SELL

# a record received before ``now`` may still be on its way through the feed's parser into the
# ring: an order waits this much longer before it is applied without a record after it
PUBLISH_GUARD_NS = 100_000

# clock words
PC_VENUE_NS = 0      # venue time reached (non-decreasing)
PC_RECORDS = 1       # market records applied
PC_ORDERS = 2        # orders that reached the venue
PC_WORDS = 4


class PaperVenue:
    """The paper venue of one live venue ``venue`` of ``cfg`` (cold)."""

    def __init__(self, cfg, venue: str, seed: int = 0):
        from shm.instruments import InstrumentTable

        vc = cfg.venue(venue)
        insts = [i for i in InstrumentTable.from_config(cfg) if i.venue == venue]
        if not insts:
            raise ValueError(f"venue {venue!r}: no instrument to paper-trade")
        self.rv = ReplayVenue(np.zeros(0, dtype=MARKET_DTYPE), insts, cfg,
                              queue_model=vc.queue_model, seed=seed)
        self.state = self.rv.state
        self.md_latency_ns = int(vc.md_latency_us * 1000)
        self.clock = np.zeros(PC_WORDS, dtype=np.int64)

    def pending(self) -> bool:
        """Orders on their way to the venue or reports on their way back."""
        return bool(self.state[7][3][QS_N] or self.state[8][3][QS_N])

    def counters(self) -> dict:
        st, pend, outbox = self.state[0], self.state[7], self.state[8]
        return {"orders": int(self.clock[PC_ORDERS]), "open": int(st[RS_N_OPEN]),
                "maker_fills": int(st[RS_MAKER_FILLS]), "taker_fills": int(st[RS_TAKER_FILLS]),
                "records": int(self.clock[PC_RECORDS]),
                "dropped": int(pend[3][QS_DROPPED] + outbox[3][QS_DROPPED])}


@njit(cache=True, _nrt=False)
def paper_submit(rv, orders, n):
    """Orders from the router (ORDER_DTYPE[0:n]) on their way to the venue, sent at their
    ``send_ts_ns``. Returns how many were queued (the rest are counted as dropped)."""
    k = 0
    for i in range(n):
        if replay_submit(rv, orders[i], orders[i].send_ts_ns) >= 0:
            k += 1
    return k


@njit(cache=True, _nrt=False)
def _arrive_until(rv, clock, t_ns, inclusive):
    """Every order due before ``t_ns`` (at or before with ``inclusive``) reaches the venue."""
    pend = rv[7]
    while True:
        j = q_min(pend[1], pend[2], pend[3])
        if j < 0:
            return
        due = pend[1][j]
        if due > t_ns or (due == t_ns and not inclusive):
            return
        t = max(due, clock[PC_VENUE_NS])
        clock[PC_VENUE_NS] = t
        rv[0][RS_NOW] = t
        venue_order_arrives(rv, pend[0][j], t)
        q_remove(pend[0], pend[1], pend[2], pend[3], j)
        clock[PC_ORDERS] += 1


@njit(cache=True, _nrt=False)
def _snapshot_level(rv, rec):
    """A snapshot's level: the book takes it; a resting order's queue ahead is capped at it."""
    vpx, vqty, vmeta, ords, qf = rv[2], rv[3], rv[4], rv[5], rv[6]
    book_apply_market(vpx, vqty, vmeta, rec)
    if rec.kind != MSG_LEVEL or (rec.side != SIDE_BUY and rec.side != SIDE_SELL):
        return
    for k in range(rv[0][RS_HI]):
        if ords[k, Q_ACTIVE] != 0 and ords[k, Q_INST] == rec.instrument_id and \
                ords[k, Q_SIDE] == rec.side and ords[k, Q_PX] == rec.px_ticks:
            qf[k, QF_AHEAD] = min(qf[k, QF_AHEAD], float(rec.qty_lots))


@njit(cache=True, _nrt=False)
def paper_step(rv, clock, md, n_md, now_ns, md_latency_ns, out_ex):
    """Apply the live records md[0:n_md] (in ring order) with the orders that reach the venue
    between them, then the orders due by ``now_ns`` that no later record can precede; move the
    execution reports due by ``now_ns`` into ``out_ex``. Returns how many."""
    for i in range(n_md):
        rec = md[i]
        t = max(clock[PC_VENUE_NS], rec.recv_ts_ns - md_latency_ns)
        _arrive_until(rv, clock, t, False)
        clock[PC_VENUE_NS] = t
        rv[0][RS_NOW] = t
        if rec.flags & MFLAG_SNAPSHOT:
            _snapshot_level(rv, rec)
        else:
            venue_apply_record(rv, rec, t)
        clock[PC_RECORDS] += 1
    _arrive_until(rv, clock, now_ns - md_latency_ns - PUBLISH_GUARD_NS, True)
    outbox = rv[8]
    return q_drain_due(outbox[0], outbox[1], outbox[2], outbox[3], now_ns, out_ex, 0)

