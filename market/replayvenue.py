"""A venue replayed from recorded market data, where our orders do not move the market: passive
fills come from a queue-position model. Runs in the backtest process; ``replay_advance`` and
``replay_submit`` (and what they call) are @njit HOT PATH, ``ReplayVenue`` is cold.

The recorded book is the truth at exchange time; our orders live beside it:

- an order that is marketable on arrival takes the displayed opposite levels up to its limit
  (taker fee), without changing the recorded book (our size is assumed small against it);
  POST_ONLY that would take is rejected, FOK that cannot fill completely is rejected, IOC and
  MARKET remainders expire;
- a resting order joins the back of its level: queue ahead = the displayed size at its price
  when it arrives (0 inside the spread);
- a trade at our price by an aggressor on the other side advances the queue by its size; what is
  left of the trade after the queue ahead fills us (maker, at our price); a trade through our
  price (a sell below our bid) fills what is left of us;
- a new or larger level on the other side at or through our price (someone posted a crossing
  order) would have traded with us: we fill up to the size it added;
- several of our orders share one trade or one added level, never more than its size: at one
  price they take the trade in the order they joined the level (``Q_JOIN``), and the volume
  given to our orders ahead does not advance the queue of those behind (it is ours, not
  the displayed orders'); an added crossing level fills our orders up to its size in all;
- cancels: ``conservative`` (QUEUE_CONSERVATIVE) never lets cancels advance us, except that the
  queue ahead can never exceed the level's displayed size; ``probabilistic`` (QUEUE_PROB) splits
  a decrease of the level not explained by trades between ahead and behind us: the share ahead
  is f(ahead) / (f(ahead) + f(behind)) with f(x) = x**PROB_POWER (hftbacktest's power
  probability queue model, after the idea of Rigtorp's queue-position estimate), so cancels
  near the front are unlikely when we are near the front.

The recorded trade records come before the level records of the same event (as the LOBSTER
converter and the matching engine write them), so a level decrease caused by a trade is
recognised and not counted twice (``QF_TRADED``).

Which time drives the replay (``replay_clock``, applied once when the venue is made): the
venue applies record k at its *venue time*, which is its exchange time ``exch_ts_ns`` where it
has one, else its receive time ``recv_ts_ns`` (venue recordings converted by ``run.py replay
binance|coinbase|kraken`` carry no exchange time on snapshots, status records and many level
updates: ``exch_ts_ns == 0`` there; the live replay stage, stages/feed_replay.py, makes the
same substitution). The venue applies the file in file order, the order its books were built
in, so venue times are made non-decreasing (a record never applies before the one ahead of it:
a running maximum; exchange times in a venue recording come from the venue's clock and may run
a few ms out of step with the receive clock). A record reaches the strategy at its recorded
receive time if that is later than its venue time, else at the venue time + the venue's
market-data latency (FIFO), and never before the record ahead of it. The run's time span is
first venue time .. last delivery (``replay_time_span``); a record with neither time, or a span
over ``MAX_REPLAY_SPAN_NS``, is refused with a ``ReplayTimeError`` naming the file, before
anything is sized from the span.

Latency: orders reach the venue after the order latency and reports come back after it again,
as in ``market.sim``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.book import (ASK, BID, META_N_ASK, META_N_BID, book_apply_market)
from market.latency import (CH_MD, CH_ORDER, LatencyModel, fifo_arrival, rng_seed,
                            sample_latency_ns)
from market.venuequeue import NEVER, make_queue, q_drain_due, q_min, q_next_ns, q_push_slot, \
    q_remove
from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK,
                         INTENT_CANCEL, INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE, LIQ_MAKER,
                         LIQ_NONE, LIQ_TAKER, MSG_LEVEL, MSG_TRADE, ORD_FOK, ORD_IOC,
                         ORD_LIMIT, ORD_MARKET, ORD_POST_ONLY, ORDER_DTYPE, REJECT_FOK,
                         REJECT_INVALID, REJECT_MAX_OPEN_ORDERS, REJECT_NO_LIQUIDITY,
                         REJECT_POST_ONLY, REJECT_UNKNOWN_ORDER, SIDE_BUY, SIDE_SELL)

QUEUE_CONSERVATIVE = 0
QUEUE_PROB = 1
QUEUE_MODELS = {"conservative": QUEUE_CONSERVATIVE, "probabilistic": QUEUE_PROB}
PROB_POWER = 3.0
MAX_ORDERS = 512

# st[RS_*]
RS_EXCH = 0        # next record to apply at the venue
RS_RECV = 1        # next record to deliver to the strategy
RS_NOW = 2
RS_NEXT_VOID = 3
RS_TRADE_ID = 4
RS_MODEL = 5
RS_N_OPEN = 6
RS_MAKER_FILLS = 7
RS_TAKER_FILLS = 8
RS_HI = 9           # 1 + highest order slot in use: scans stop there
RS_JOIN = 10        # next queue-join sequence (Q_JOIN)
RS_WORDS = 11
# ords[k, Q_*]
Q_ACTIVE, Q_COID, Q_INST, Q_SIDE, Q_PX, Q_LEAVES, Q_CUM, Q_STRAT, Q_VOID, Q_CAUSE, Q_TYPE, \
    Q_JOIN = range(12)
Q_WORDS = 12
QF_AHEAD = 0
QF_TRADED = 1
# The longest span a replay may have: the backtest sizes its equity curve from the span (one
# sample per 100 ms by default), so a span of decades (a time of 0 beside epoch times) must be
# refused, not allocated. A week of 100 ms samples is ~290 MB per curve row.
MAX_REPLAY_SPAN_NS = 7 * 86_400 * 1_000_000_000


class ReplayTimeError(ValueError):
    """Record times that cannot define a replay; the message names the file."""


def _source_of(records, source) -> str:
    """The file behind ``records`` (a numpy.memmap, or a view of one) for error messages."""
    if source:
        return str(source)
    a = records
    while a is not None:
        name = getattr(a, "filename", None)
        if name:
            return str(name)
        a = getattr(a, "base", None)
    return "the replayed records"


def replay_clock(records, source=None) -> np.ndarray:
    """A copy of ``records`` whose ``exch_ts_ns`` is the venue time the replay applies each
    record at (see the module docstring): the exchange time, else the receive time, made
    non-decreasing in file order. ReplayTimeError (naming the file) for a record with neither
    time or a span over MAX_REPLAY_SPAN_NS."""
    recs = np.array(records, dtype=records.dtype, copy=True)
    if len(recs) == 0:
        return recs
    name = _source_of(records, source)
    exch = recs["exch_ts_ns"].copy()
    recv = recs["recv_ts_ns"]
    missing = exch <= 0
    exch[missing] = recv[missing]
    bad = np.flatnonzero(exch <= 0)
    if bad.size:
        raise ReplayTimeError(f"{name}: record {int(bad[0])} ({bad.size} of {len(recs)} "
                              f"records) has neither an exchange time nor a receive time; a "
                              f"replay needs one of them on every record")
    exch = np.maximum.accumulate(exch)
    recs["exch_ts_ns"] = exch
    start = int(exch[0])
    end = max(int(exch[-1]), int(recv.max()))
    if end - start > MAX_REPLAY_SPAN_NS:
        k = int(np.argmax(np.diff(exch))) + 1 if len(exch) > 1 else 0
        late = int(recv.max()) > int(exch[-1])
        where = (f"receive time {int(recv.max())} ns at record {int(np.argmax(recv))}" if late
                 else f"the largest jump is at record {k}: {int(exch[k - 1]) if k else start}"
                      f" -> {int(exch[k])} ns")
        raise ReplayTimeError(f"{name}: record times span {(end - start) / 86_400e9:.1f} days "
                              f"({start} .. {end} ns; {where}), more than the "
                              f"{MAX_REPLAY_SPAN_NS // 86_400_000_000_000} days a replay may "
                              f"span: the file's times are wrong (a time in other units, or "
                              f"missing) or the recording must be split")
    return recs


def replay_time_span(records, source=None) -> tuple[int, int]:
    """(first venue time, last venue or receive time) of ``records``, in ns, on the clock the
    replay runs on (``replay_clock``); ReplayTimeError naming the file for bad times. (0, 0)
    for no records."""
    if len(records) == 0:
        return 0, 0
    recs = replay_clock(records, source)
    return int(recs["exch_ts_ns"][0]), max(int(recs["exch_ts_ns"][-1]),
                                           int(recs["recv_ts_ns"].max()))


class ReplayVenue:
    """Recorded MARKET_DTYPE records as a venue for our orders (see the module docstring)."""

    def __init__(self, records: np.ndarray, instruments, cfg, *, queue_model: str,
                 seed: int = 0, max_levels: int = 256, source: str | None = None):
        if queue_model not in QUEUE_MODELS:
            raise ValueError(f"queue model {queue_model!r}: choose one of "
                             f"{', '.join(QUEUE_MODELS)}")
        self.instruments = list(instruments)
        n = max(i.instrument_id for i in self.instruments)
        venue_names = [v.name for v in cfg.venues]
        n_venues = max(max(i.venue_id for i in self.instruments), 1)
        lat = LatencyModel(n_venues)
        fee = np.zeros((n + 1, 2), dtype=np.float64)
        inst_venue = np.zeros(n + 1, dtype=np.int64)
        for inst in self.instruments:
            # The recording's venue if the config knows it, else the first configured venue.
            vc = cfg.venues[venue_names.index(inst.venue)] if inst.venue in venue_names \
                else cfg.venues[0]
            lat.set_constant_jitter(inst.venue_id, CH_MD, vc.md_latency_us * 1e3,
                                    vc.md_jitter_us * 1e3)
            lat.set_constant_jitter(inst.venue_id, CH_ORDER, vc.order_latency_us * 1e3,
                                    vc.order_jitter_us * 1e3)
            value_e9 = float(inst.tick_size * inst.lot_size * 1_000_000_000)
            fee[inst.instrument_id, 0] = value_e9 * vc.maker_fee_bps / 1e4
            fee[inst.instrument_id, 1] = value_e9 * vc.taker_fee_bps / 1e4
            inst_venue[inst.instrument_id] = inst.venue_id
        rng = np.zeros(n_venues + 2, dtype=np.uint64)
        rng_seed(rng, seed)
        fifo = np.zeros((n_venues + 1, 3), dtype=np.int64)
        recs = replay_clock(records, source)
        stamp_receive_times(recs, lat.params, lat.hist, lat.hist_n, rng, inst_venue, fifo)
        if len(recs):
            # delivered in file order: a record never reaches the strategy before the one
            # ahead of it (recorded receive times beside stamped ones)
            recs["recv_ts_ns"] = np.maximum.accumulate(recs["recv_ts_ns"])
        self.records = recs
        st = np.zeros(RS_WORDS, dtype=np.int64)
        st[RS_MODEL] = QUEUE_MODELS[queue_model]
        st[RS_NEXT_VOID] = 1
        st[RS_TRADE_ID] = 1
        st[RS_NOW] = int(recs[0]["exch_ts_ns"]) if len(recs) else 0
        vpx = np.zeros((n + 1, 2, max_levels), dtype=np.int64)
        vqty = np.zeros((n + 1, 2, max_levels), dtype=np.int64)
        from market.book import META_WORDS
        vmeta = np.zeros((n + 1, META_WORDS), dtype=np.int64)
        ords = np.zeros((MAX_ORDERS, Q_WORDS), dtype=np.int64)
        qf = np.zeros((MAX_ORDERS, 2), dtype=np.float64)
        self.state = (st, recs, vpx, vqty, vmeta, ords, qf, make_queue(ORDER_DTYPE, 4096),
                      make_queue(EXEC_DTYPE, 8192), fee, inst_venue, lat.arrays, rng, fifo)

    @property
    def start_ns(self) -> int:
        return int(self.records[0]["exch_ts_ns"]) if len(self.records) else 0

    @property
    def end_ns(self) -> int:
        return int(self.records["recv_ts_ns"].max()) if len(self.records) else 0


@njit(cache=True, _nrt=False)
def stamp_receive_times(recs, params, hist, hist_n, rng, inst_venue, fifo):
    """recv_ts = exch_ts + market-data latency (FIFO per venue, one draw per venue message:
    records up to MFLAG_LAST_IN_BATCH share it) where the recording has no later receive time."""
    lat = np.int64(-1)
    for k in range(recs.shape[0]):
        r = recs[k]
        if r.recv_ts_ns > r.exch_ts_ns:
            continue
        v = inst_venue[r.instrument_id] if r.instrument_id < inst_venue.shape[0] else 1
        if lat < 0:
            lat = fifo_arrival(fifo[:, 0], v, r.exch_ts_ns,
                               sample_latency_ns(params, hist, hist_n, rng, 0, v, CH_MD))
        r.recv_ts_ns = max(lat, r.exch_ts_ns)
        if r.flags & 2:   # MFLAG_LAST_IN_BATCH: the next record is a new venue message
            lat = -1


# ------------------------------------------------------------------------------------------
# Kernels (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False)
def _level_qty(vpx, vqty, vmeta, inst, side, px):
    n = vmeta[inst, META_N_BID + side]
    for i in range(n):
        if vpx[inst, side, i] == px:
            return vqty[inst, side, i]
    return 0


@njit(cache=True, _nrt=False)
def _report(rv, k, kind, px, qty, liq, reject, t):
    """Queue an exec report about order slot k (or k < 0: the scratch order in ords[-1])."""
    st, ords, outbox, fee, inst_venue, lat, rng, fifo = (rv[0], rv[5], rv[8], rv[9], rv[10],
                                                         rv[11], rv[12], rv[13])
    inst = ords[k, Q_INST]
    v = inst_venue[inst] if inst < inst_venue.shape[0] else 1
    due = fifo_arrival(fifo[:, 2], v, t, sample_latency_ns(lat[0], lat[1], lat[2], rng, 1, v,
                                                           CH_ORDER))
    j = q_push_slot(outbox[0], outbox[1], outbox[2], outbox[3], due)
    if j < 0:
        return
    e = outbox[0][j]
    e.kind = kind
    e.side = ords[k, Q_SIDE]
    e.liquidity = liq
    e.flags = 0
    e.instrument_id = inst
    e.client_order_id = ords[k, Q_COID]
    e.venue_order_id = ords[k, Q_VOID]
    e.px_ticks = px
    e.qty_lots = qty
    e.leaves_lots = ords[k, Q_LEAVES]
    e.cum_qty_lots = ords[k, Q_CUM]
    e.venue_ts_ns = t
    e.cause_recv_ts_ns = ords[k, Q_CAUSE]
    e.send_ts_ns = t
    e.fee_e9 = 0
    e.trade_id = 0
    if liq != LIQ_NONE:
        e.fee_e9 = np.int64(np.floor(px * qty * fee[inst, liq - 1] + 0.5))
        e.trade_id = st[RS_TRADE_ID]
        st[RS_TRADE_ID] += 1
    e.strategy_id = ords[k, Q_STRAT]
    e.reject_code = reject
    e.venue_id = v
    e.order_px_ticks = ords[k, Q_PX]
    e.reserved = 0


@njit(cache=True, _nrt=False)
def _fill(rv, k, px, q, liq, t):
    ords = rv[5]
    ords[k, Q_LEAVES] -= q
    ords[k, Q_CUM] += q
    done = ords[k, Q_LEAVES] == 0
    _report(rv, k, EXEC_FILL if done else EXEC_PARTIAL, px, q, liq, 0, t)
    if liq == LIQ_MAKER:
        rv[0][RS_MAKER_FILLS] += 1
    else:
        rv[0][RS_TAKER_FILLS] += 1
    if done:
        _close(rv, k)


@njit(cache=True, _nrt=False)
def _close(rv, k):
    st, ords = rv[0], rv[5]
    if ords[k, Q_ACTIVE] != 0:
        ords[k, Q_ACTIVE] = 0
        st[RS_N_OPEN] -= 1
        while st[RS_HI] > 0 and ords[st[RS_HI] - 1, Q_ACTIVE] == 0:
            st[RS_HI] -= 1


@njit(cache=True, _nrt=False)
def _take(rv, k, limit, t):
    """Take the displayed opposite levels up to ``limit`` (never changing the recorded book)."""
    vpx, vqty, vmeta, ords = rv[2], rv[3], rv[4], rv[5]
    inst = ords[k, Q_INST]
    side = BID if ords[k, Q_SIDE] == SIDE_BUY else ASK
    opp = 1 - side
    for i in range(vmeta[inst, META_N_BID + opp]):
        if ords[k, Q_LEAVES] == 0:
            break
        lpx = vpx[inst, opp, i]
        if (side == BID and lpx > limit) or (side == ASK and lpx < limit):
            break
        _fill(rv, k, lpx, min(ords[k, Q_LEAVES], vqty[inst, opp, i]), LIQ_TAKER, t)


@njit(cache=True, _nrt=False)
def _available(rv, inst, side, limit):
    vpx, vqty, vmeta = rv[2], rv[3], rv[4]
    opp = 1 - side
    avail = 0
    for i in range(vmeta[inst, META_N_BID + opp]):
        lpx = vpx[inst, opp, i]
        if (side == BID and lpx > limit) or (side == ASK and lpx < limit):
            break
        avail += vqty[inst, opp, i]
    return avail


@njit(cache=True, _nrt=False)
def _find(ords, hi, coid, strat):
    for k in range(hi):
        if ords[k, Q_ACTIVE] != 0 and ords[k, Q_COID] == coid and ords[k, Q_STRAT] == strat:
            return k
    return -1


@njit(cache=True, _nrt=False)
def _rest_or_take(rv, k, t):
    """A (re)priced order at the venue: take what crosses, then rest (joining the queue) or
    expire according to its type."""
    st, vpx, vqty, vmeta, ords, qf = rv[0], rv[2], rv[3], rv[4], rv[5], rv[6]
    inst = ords[k, Q_INST]
    side = BID if ords[k, Q_SIDE] == SIDE_BUY else ASK
    otype = ords[k, Q_TYPE]
    limit = ords[k, Q_PX]
    if otype == ORD_MARKET:
        limit = np.int64(1) << 62 if side == BID else np.int64(1)
    _take(rv, k, limit, t)
    if ords[k, Q_ACTIVE] == 0:
        return
    if otype == ORD_LIMIT or otype == ORD_POST_ONLY:
        qf[k, QF_AHEAD] = _level_qty(vpx, vqty, vmeta, inst, side, limit)
        qf[k, QF_TRADED] = 0.0
        ords[k, Q_JOIN] = st[RS_JOIN]
        st[RS_JOIN] += 1
        return
    left = ords[k, Q_LEAVES]
    ords[k, Q_LEAVES] = 0
    _report(rv, k, EXEC_EXPIRED, limit, left, LIQ_NONE, 0, t)
    _close(rv, k)


@njit(cache=True, _nrt=False)
def _order_arrives(rv, rec, t):
    st, vmeta, ords = rv[0], rv[4], rv[5]
    kind = rec.kind
    scratch = ords.shape[0] - 1   # the last row reports on orders that never became active
    if kind == INTENT_NEW:
        inst = np.int64(rec.instrument_id)
        ok = (rec.side == SIDE_BUY or rec.side == SIDE_SELL) and rec.qty_lots > 0 and \
            inst >= 1 and inst < vmeta.shape[0] and rec.order_type >= ORD_LIMIT and \
            rec.order_type <= ORD_POST_ONLY and (rec.order_type == ORD_MARKET or rec.px_ticks > 0)
        k = -1
        if ok:
            for j in range(ords.shape[0] - 1):
                if ords[j, Q_ACTIVE] == 0:
                    k = j
                    break
        dst = k if k >= 0 else scratch
        ords[dst, Q_COID] = rec.client_order_id
        ords[dst, Q_INST] = rec.instrument_id
        ords[dst, Q_SIDE] = rec.side
        ords[dst, Q_PX] = rec.px_ticks
        ords[dst, Q_LEAVES] = rec.qty_lots
        ords[dst, Q_CUM] = 0
        ords[dst, Q_STRAT] = rec.strategy_id
        ords[dst, Q_CAUSE] = rec.cause_recv_ts_ns
        ords[dst, Q_TYPE] = rec.order_type
        ords[dst, Q_VOID] = 0
        if not ok or k < 0:
            _report(rv, scratch, EXEC_REJECT, rec.px_ticks, rec.qty_lots, LIQ_NONE,
                    REJECT_INVALID if not ok else REJECT_MAX_OPEN_ORDERS, t)
            return
        side = BID if rec.side == SIDE_BUY else ASK
        avail = _available(rv, inst, side, rec.px_ticks if rec.order_type != ORD_MARKET else
                           ((np.int64(1) << 62) if side == BID else np.int64(1)))
        reject = 0
        if rec.order_type == ORD_POST_ONLY and avail > 0:
            reject = REJECT_POST_ONLY
        elif rec.order_type == ORD_FOK and avail < rec.qty_lots:
            reject = REJECT_FOK
        elif rec.order_type == ORD_MARKET and avail == 0:
            reject = REJECT_NO_LIQUIDITY
        if reject != 0:
            _report(rv, k, EXEC_REJECT, rec.px_ticks, rec.qty_lots, LIQ_NONE, reject, t)
            return
        ords[k, Q_ACTIVE] = 1
        st[RS_N_OPEN] += 1
        st[RS_HI] = max(st[RS_HI], k + 1)
        ords[k, Q_VOID] = st[RS_NEXT_VOID]
        st[RS_NEXT_VOID] += 1
        _report(rv, k, EXEC_ACK, rec.px_ticks, rec.qty_lots, LIQ_NONE, 0, t)
        _rest_or_take(rv, k, t)
    elif kind == INTENT_CANCEL or kind == INTENT_REPLACE:
        k = _find(ords, st[RS_HI], rec.client_order_id, rec.strategy_id)
        if k < 0:
            ords[scratch, :] = 0
            ords[scratch, Q_COID] = rec.client_order_id
            ords[scratch, Q_INST] = rec.instrument_id
            ords[scratch, Q_SIDE] = rec.side
            ords[scratch, Q_STRAT] = rec.strategy_id
            _report(rv, scratch, EXEC_CANCEL_REJECT, rec.px_ticks, rec.qty_lots, LIQ_NONE,
                    REJECT_UNKNOWN_ORDER, t)
            return
        if kind == INTENT_CANCEL:
            left = ords[k, Q_LEAVES]
            ords[k, Q_LEAVES] = 0
            _report(rv, k, EXEC_CANCEL_ACK, ords[k, Q_PX], left, LIQ_NONE, 0, t)
            _close(rv, k)
            return
        new_px = rec.px_ticks if rec.px_ticks != 0 else ords[k, Q_PX]
        if rec.qty_lots <= 0:
            _report(rv, k, EXEC_CANCEL_REJECT, new_px, rec.qty_lots, LIQ_NONE, REJECT_INVALID, t)
            return
        keep = new_px == ords[k, Q_PX] and rec.qty_lots <= ords[k, Q_LEAVES]
        side = BID if ords[k, Q_SIDE] == SIDE_BUY else ASK
        if not keep and ords[k, Q_TYPE] == ORD_POST_ONLY and \
                _available(rv, ords[k, Q_INST], side, new_px) > 0:
            _report(rv, k, EXEC_CANCEL_REJECT, new_px, rec.qty_lots, LIQ_NONE,
                    REJECT_POST_ONLY, t)
            return
        ords[k, Q_PX] = new_px
        ords[k, Q_LEAVES] = rec.qty_lots
        _report(rv, k, EXEC_REPLACE_ACK, new_px, rec.qty_lots, LIQ_NONE, 0, t)
        if not keep:
            _rest_or_take(rv, k, t)   # a new price loses its place in the queue
    elif kind == INTENT_CANCEL_ALL:
        for k in range(st[RS_HI]):
            if ords[k, Q_ACTIVE] != 0 and ords[k, Q_STRAT] == rec.strategy_id and \
                    (rec.instrument_id == 0 or ords[k, Q_INST] == rec.instrument_id):
                left = ords[k, Q_LEAVES]
                ords[k, Q_LEAVES] = 0
                _report(rv, k, EXEC_CANCEL_ACK, ords[k, Q_PX], left, LIQ_NONE, 0, t)
                _close(rv, k)


@njit(cache=True, _nrt=False)
def _on_trade(rv, rec, t):
    st, ords, qf = rv[0], rv[5], rv[6]
    inst = rec.instrument_id
    maker_side = SIDE_SELL if rec.side == SIDE_BUY else SIDE_BUY
    for k in range(st[RS_HI]):
        if ords[k, Q_ACTIVE] == 0 or ords[k, Q_INST] != inst or ords[k, Q_SIDE] != maker_side:
            continue
        px = ords[k, Q_PX]
        through = (maker_side == SIDE_BUY and rec.px_ticks < px) or \
            (maker_side == SIDE_SELL and rec.px_ticks > px)
        if through:
            _fill(rv, k, px, ords[k, Q_LEAVES], LIQ_MAKER, t)
    # at our price: our orders in the order they joined the level; what the trade gave to
    # ours ahead is not volume of the displayed queue ahead of the next one
    given = 0.0
    last = np.int64(-1)
    while True:
        k = -1
        for j in range(st[RS_HI]):
            if ords[j, Q_ACTIVE] != 0 and ords[j, Q_INST] == inst and \
                    ords[j, Q_SIDE] == maker_side and ords[j, Q_PX] == rec.px_ticks and \
                    ords[j, Q_JOIN] > last and (k < 0 or ords[j, Q_JOIN] < ords[k, Q_JOIN]):
                k = j
        if k < 0:
            break
        last = ords[k, Q_JOIN]
        qf[k, QF_TRADED] += float(rec.qty_lots)
        vol = float(rec.qty_lots) - given
        if vol > qf[k, QF_AHEAD]:
            q = min(np.int64(vol - qf[k, QF_AHEAD]), ords[k, Q_LEAVES])
            qf[k, QF_AHEAD] = 0.0
            if q > 0:
                given += float(q)
                _fill(rv, k, rec.px_ticks, q, LIQ_MAKER, t)
        elif vol > 0.0:
            qf[k, QF_AHEAD] -= vol


@njit(cache=True, _nrt=False)
def _on_level(rv, rec, prev, t):
    st, ords, qf = rv[0], rv[5], rv[6]
    inst = rec.instrument_id
    new = rec.qty_lots
    added = new - prev    # a crossing level's added size, shared by our orders it crosses
    for k in range(st[RS_HI]):
        if ords[k, Q_ACTIVE] == 0 or ords[k, Q_INST] != inst:
            continue
        px = ords[k, Q_PX]
        if ords[k, Q_SIDE] == rec.side:
            if px != rec.px_ticks:
                continue
            traded = qf[k, QF_TRADED]
            qf[k, QF_TRADED] = 0.0
            cancelled = float(prev - new) - traded
            ahead = qf[k, QF_AHEAD]
            if st[RS_MODEL] == QUEUE_PROB and cancelled > 0.0:
                behind = max(float(prev) - traded - ahead, 0.0)
                fa = ahead ** PROB_POWER
                fb = behind ** PROB_POWER
                share = fa / (fa + fb) if fa + fb > 0.0 else 1.0
                ahead -= cancelled * share
            qf[k, QF_AHEAD] = max(0.0, min(ahead, float(new)))
        else:
            crosses = (ords[k, Q_SIDE] == SIDE_BUY and rec.px_ticks <= px) or \
                (ords[k, Q_SIDE] == SIDE_SELL and rec.px_ticks >= px)
            if crosses and added > 0:
                q = min(ords[k, Q_LEAVES], added)
                added -= q
                _fill(rv, k, px, q, LIQ_MAKER, t)


@njit(cache=True, _nrt=False)
def _apply_record(rv, rec, t):
    st, vpx, vqty, vmeta = rv[0], rv[2], rv[3], rv[4]
    if st[RS_N_OPEN] > 0 and rec.kind == MSG_LEVEL and (rec.side == SIDE_BUY or
                                                        rec.side == SIDE_SELL):
        side = BID if rec.side == SIDE_BUY else ASK
        prev = _level_qty(vpx, vqty, vmeta, rec.instrument_id, side, rec.px_ticks)
        book_apply_market(vpx, vqty, vmeta, rec)
        _on_level(rv, rec, prev, t)
        return
    book_apply_market(vpx, vqty, vmeta, rec)
    if st[RS_N_OPEN] > 0 and rec.kind == MSG_TRADE:
        _on_trade(rv, rec, t)


@njit(cache=True, _nrt=False)
def replay_next_ns(rv):
    st, recs, pend, outbox = rv[0], rv[1], rv[7], rv[8]
    t = NEVER
    if st[RS_EXCH] < recs.shape[0]:
        t = recs[st[RS_EXCH]].exch_ts_ns
    if st[RS_RECV] < recs.shape[0]:
        t = min(t, recs[st[RS_RECV]].recv_ts_ns)
    t = min(t, q_next_ns(pend[1], pend[2], pend[3]))
    return min(t, q_next_ns(outbox[1], outbox[2], outbox[3]))


@njit(cache=True, _nrt=False)
def replay_advance(rv, t_limit, out_md, n_md, out_ex, n_ex, stop_at_delivery):
    """Same contract as ``market.sim.sim_advance``: returns (n_md, n_ex, time reached)."""
    st, recs, pend, outbox = rv[0], rv[1], rv[7], rv[8]
    n = recs.shape[0]
    while True:
        te = recs[st[RS_EXCH]].exch_ts_ns if st[RS_EXCH] < n else NEVER
        jo = q_min(pend[1], pend[2], pend[3])
        is_order = jo >= 0 and pend[1][jo] < te
        if is_order:
            te = pend[1][jo]
        td = recs[st[RS_RECV]].recv_ts_ns if st[RS_RECV] < n else NEVER
        td = min(td, q_next_ns(outbox[1], outbox[2], outbox[3]))
        if td <= te and td <= t_limit:
            st[RS_NOW] = max(st[RS_NOW], td)
            while st[RS_RECV] < n and n_md < out_md.shape[0] and \
                    recs[st[RS_RECV]].recv_ts_ns <= td:
                out_md[n_md] = recs[st[RS_RECV]]
                n_md += 1
                st[RS_RECV] += 1
            n_ex = q_drain_due(outbox[0], outbox[1], outbox[2], outbox[3], td, out_ex, n_ex)
            if stop_at_delivery or n_md >= out_md.shape[0] or n_ex >= out_ex.shape[0]:
                return n_md, n_ex, td
            continue
        if te > t_limit or te == NEVER:
            st[RS_NOW] = max(st[RS_NOW], min(t_limit, te))
            return n_md, n_ex, t_limit
        st[RS_NOW] = te
        if is_order:
            _order_arrives(rv, pend[0][jo], te)
            q_remove(pend[0], pend[1], pend[2], pend[3], jo)
        else:
            _apply_record(rv, recs[st[RS_EXCH]], te)
            st[RS_EXCH] += 1


@njit(cache=True, _nrt=False)
def replay_submit(rv, order, send_ns):
    pend, inst_venue, lat, rng, fifo = rv[7], rv[10], rv[11], rv[12], rv[13]
    inst = order.instrument_id
    v = inst_venue[inst] if inst < inst_venue.shape[0] and inst_venue[inst] > 0 else 1
    due = fifo_arrival(fifo[:, 1], v, send_ns,
                       sample_latency_ns(lat[0], lat[1], lat[2], rng, 1, v, CH_ORDER))
    j = q_push_slot(pend[0], pend[1], pend[2], pend[3], due)
    if j >= 0:
        pend[0][j] = order
    return j


# The venue-side kernels the paper venue (market/papervenue.py) drives with live records.
venue_order_arrives = _order_arrives
venue_apply_record = _apply_record
