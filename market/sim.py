"""Simulated venues: the matching engine fed by the seeded background flow of ``market.flow``,
publishing L2 updates, trades and news with market-data latency, taking strategy orders with
order-entry latency and returning execution reports. Deterministic: same seed, same events.

Runs in the backtest process and in the live pipeline's venue stage. ``sim_advance`` and
``sim_submit`` (and what they call) are @njit HOT PATH; ``SimVenue`` is the cold owner.

Books live per instrument, and an instrument belongs to exactly one venue (BTC-USD@simA and
BTC-USD@simB are two instruments, two books, one latent BTC price), so one matching-engine
state holds the books of all simulated venues; each venue has its own fee schedule, its own
latency model, its own event clock and random stream, and its own FIFO channels. Exec reports
are stamped with the instrument's venue id.

Time. Everything inside is absolute ns (``t0_ns`` = start). A venue event at exchange time t
publishes its records with exch_ts = t and recv_ts = t + md latency (FIFO per venue: a message
never overtakes the previous one). A strategy order sent at s reaches the venue at s + order
latency (FIFO per venue) and its reports come back with the order latency again.

Driving it:
  backtest   ``sim_advance(..., t_limit, ..., stop_at_delivery=True)`` returns as soon as a
             batch of records/reports is due to the strategy (one strategy call per batch)
  live       ``SimVenue.step_until(now_ns, out_md, out_ex)`` runs everything up to the wall
             clock and hands over what has been received by then (the venue stage calls it
             in its poll loop; ``event_rate_per_s`` sets the background rate)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from market.flow import (ACT_CANCEL, ACT_LIMIT, IP_INFORMED, IP_P_INFORMED,
                         MIN_LEVELS, NS, FlowModel, FlowParams, draw_action, draw_limit,
                         event_rate_mult, flow_init, hawkes_kick, hawkes_mult, session_mult,
                         latent_price_ticks, market_impact, next_scheduled_ns, run_scheduled)
from market.l3book import S_QUIET_ANON, S_VENUE_ID, l3_best_px, make_engine_arrays
from market.latency import (CH_MD, CH_ORDER, LatencyModel, fifo_arrival, rng_below, rng_exp,
                            rng_seed, rng_uniform, sample_latency_ns)
from market.matching import (STP_CANCEL_NEWEST, engine_process, engine_process_inline,
                             engine_set_fees, engine_snapshot)
from market.venuequeue import NEVER, make_queue, q_drain_due, q_min, q_next_ns, q_push, q_remove
from shm.records import (EXEC_DTYPE, INTENT_CANCEL, INTENT_NEW, MARKET_DTYPE,
                         ORD_LIMIT, ORD_MARKET, ORDER_DTYPE, SIDE_BUY, SIDE_SELL)

DEFAULT_T0_NS = 1_767_225_600_000_000_000   # 2026-01-01T00:00:00Z: backtests start here
POOL = 400               # resting background orders kept per instrument (bounds book depth)
INITIAL_ORDERS = 60      # background orders placed per instrument before the start
MD_RING = 1 << 14        # in-flight market records per venue (a power of two: slots are masked)
SCRATCH = 1024

# st[ST_*] int64 words of the simulator
ST_T0 = 0
ST_NOW = 1
ST_NEXT_COID = 2       # background client order ids are -1, -2, ... (never a strategy's)
ST_EVENTS = 3          # background events processed
ST_ORDERS_IN = 4       # strategy orders that reached the venue
ST_MD_OUT = 5          # market records published
ST_MD_DROPPED = 6      # market records lost to a full delivery ring (should stay 0)
ST_NEWS = 7
ST_N_VENUES = 8
ST_STALE_CANCELS = 9   # cancels of background orders already filled
ST_WORDS = 12
# rng streams: 0 latent model, 1..V venue flow, V+1..2V latency
# fifo[v, F_*]: last arrival on each channel
F_MD = 0
F_ORDER_IN = 1
F_REPORT_OUT = 2


class SimVenue:
    """All simulated venues of a config (or the given venue names), deterministic per seed.

    ``state`` is the tuple the kernels take; see ``sim_advance``.
    """

    def __init__(self, cfg, instruments, seed: int | None = None, *, t0_ns: int = DEFAULT_T0_NS,
                 event_rate_per_s: float | None = None, venues=None,
                 flow_params: FlowParams | None = None):
        self.cfg = cfg
        self.seed = cfg.sim.seed if seed is None else int(seed)
        self.rate = float(cfg.sim.event_rate_per_s if event_rate_per_s is None
                          else event_rate_per_s)
        if self.rate <= 0:
            raise ValueError(f"event_rate_per_s must be > 0, got {self.rate}")
        names = [v.name for v in cfg.venues] if venues is None else list(venues)
        insts = [i for i in instruments if i.venue in names]
        if not insts:
            raise ValueError(f"SimVenue: no instrument trades on venues {names}")
        self.instruments = insts
        n_inst = max(i.instrument_id for i in instruments)
        n_venues = len(cfg.venues)
        self.latency = LatencyModel.from_config(cfg)
        self.flow = FlowModel(cfg, insts, flow_params, self.rate)
        self.eng = make_engine_arrays(n_inst, max_orders=1 << 14, max_levels=1024)
        self.eng[6][S_VENUE_ID] = 0   # stamped per instrument instead, see module doc
        self.eng[6][4] = STP_CANCEL_NEWEST
        self.eng[6][S_QUIET_ANON] = 1   # background reports would be dropped unread
        inst_venue = np.zeros(n_inst + 1, dtype=np.int64)
        venue_insts = np.zeros((n_venues + 1, max(1, len(insts))), dtype=np.int64)
        venue_n = np.zeros(n_venues + 1, dtype=np.int64)
        for inst in insts:
            v = cfg.venue(inst.venue)
            value_e9 = float(inst.tick_size * inst.lot_size * 1_000_000_000)
            engine_set_fees(self.eng, inst.instrument_id, value_e9, v.maker_fee_bps,
                            v.taker_fee_bps)
            inst_venue[inst.instrument_id] = inst.venue_id
            venue_insts[inst.venue_id, venue_n[inst.venue_id]] = inst.instrument_id
            venue_n[inst.venue_id] += 1
        st = np.zeros(ST_WORDS, dtype=np.int64)
        st[ST_T0] = t0_ns
        st[ST_NOW] = t0_ns
        st[ST_N_VENUES] = n_venues
        rng = np.zeros(1 + 2 * n_venues + 1, dtype=np.uint64)
        rng_seed(rng, self.seed)
        vnext = np.full(n_venues + 1, NEVER, dtype=np.int64)
        rates = np.zeros(n_venues + 1, dtype=np.float64)
        for v in range(1, n_venues + 1):
            if venue_n[v] > 0:
                rates[v] = self.rate
        pool = np.zeros((n_inst + 1, POOL), dtype=np.int64)
        pool_n = np.zeros(n_inst + 1, dtype=np.int64)
        md_ring = np.zeros((n_venues + 1, MD_RING), dtype=MARKET_DTYPE)
        md_ht = np.zeros((n_venues + 1, 2), dtype=np.int64)   # head (next to deliver), tail
        fifo = np.zeros((n_venues + 1, 3), dtype=np.int64)
        pend = make_queue(ORDER_DTYPE, 4096)
        outbox = make_queue(EXEC_DTYPE, 8192)
        scratch = (np.zeros(2, dtype=ORDER_DTYPE), np.zeros(SCRATCH, dtype=EXEC_DTYPE),
                   np.zeros(SCRATCH, dtype=MARKET_DTYPE), np.zeros(64, dtype=MARKET_DTYPE),
                   np.zeros(4, dtype=np.int64))
        self.state = (st, rng, self.flow.arrays, self.eng, self.latency.arrays, inst_venue,
                      venue_insts, venue_n, vnext, rates, pool, pool_n, md_ring, md_ht, fifo,
                      pend, outbox, scratch)
        sim_start(*self.state)

    # --- cold conveniences ---------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        return int(self.state[0][ST_NOW])

    def counters(self) -> dict:
        st = self.state[0]
        return {"events": int(st[ST_EVENTS]), "strategy_orders": int(st[ST_ORDERS_IN]),
                "md_published": int(st[ST_MD_OUT]), "md_dropped": int(st[ST_MD_DROPPED]),
                "news": int(st[ST_NEWS]), "stale_cancels": int(st[ST_STALE_CANCELS]),
                "jumps": int(self.flow.gl[6])}

    def step_until(self, now_ns: int, out_md: np.ndarray, out_ex: np.ndarray):
        """Run the venues up to ``now_ns`` and write what has been received by then into the
        caller's arrays. Returns (n_md, n_ex); if an array filled up, the rest follows on the
        next call (``now_ns`` of the simulator then stays behind the wall clock)."""
        n_md, n_ex, _ = sim_advance_state(self.state, np.int64(now_ns), out_md, 0, out_ex, 0,
                                           False)
        return int(n_md), int(n_ex)

    def submit(self, order: np.ndarray, send_ns: int) -> None:
        """Send one ORDER_DTYPE record at ``send_ns`` (it arrives after the order latency)."""
        sim_submit(*self.state, order, np.int64(send_ns))

    def run(self, duration_s: float, batch: int = 1 << 16):
        """Every market record of the first ``duration_s`` simulated seconds (cold; tests)."""
        end = self.now_ns + int(duration_s * NS)
        out_md = np.zeros(batch, dtype=MARKET_DTYPE)
        out_ex = np.zeros(256, dtype=EXEC_DTYPE)
        parts = []
        while True:
            n_md, _n_ex, t = sim_advance_state(self.state, np.int64(end), out_md, 0, out_ex, 0,
                                              False)
            parts.append(out_md[:n_md].copy())
            if t >= end and n_md < batch:
                break
        return np.concatenate(parts)


# ------------------------------------------------------------------------------------------
# Kernels (hot path)
# ------------------------------------------------------------------------------------------
# Why inline="always" on the per-event kernels below: numba passes every array argument as
# its exploded struct (7-11 machine words), so a call that takes the engine tuple and the
# simulator state pushes 150-250 words on the stack; measured on the venue alone, these
# argument copies were the largest single cost of a background event. Each inlined kernel has
# ONE call site in ``sim_advance`` (the engine is entered from one place, see ``_apply_op``),
# so the compiled code does not multiply.
@njit(cache=True, _nrt=False, inline="always")
def _publish(st, lat, rng, md_ring, md_ht, fifo, venue, recs, n, t):
    """Queue recs[0:n] (one venue message) for delivery: one latency draw for the message."""
    if n == 0:
        return
    params, hist, hist_n = lat
    nv = st[ST_N_VENUES]
    recv = fifo_arrival(fifo[:, F_MD], venue, t,
                        sample_latency_ns(params, hist, hist_n, rng, 1 + nv + venue, venue, CH_MD))
    cap = md_ring.shape[1]
    for k in range(n):
        if md_ht[venue, 1] - md_ht[venue, 0] >= cap:
            st[ST_MD_DROPPED] += 1
            continue
        slot = md_ht[venue, 1] & (cap - 1)   # cap = MD_RING, a power of two: no division
        md_ring[venue, slot] = recs[k]
        md_ring[venue, slot].recv_ts_ns = recv
        md_ht[venue, 1] += 1
        st[ST_MD_OUT] += 1


@njit(cache=True, _nrt=False, inline="always")
def _route_reports(st, lat, rng, inst_venue, fifo, outbox, ex, kx, t):
    """Strategy-owned reports of one venue message into the outbox (background ones are the
    flow's own business and dropped)."""
    params, hist, hist_n = lat
    nv = st[ST_N_VENUES]
    recs, q_t, q_seq, q_st = outbox
    for k in range(kx):
        if ex[k].strategy_id == 0:
            continue
        v = inst_venue[ex[k].instrument_id]
        ex[k].venue_id = v
        ex[k].send_ts_ns = t
        due = fifo_arrival(fifo[:, F_REPORT_OUT], v, t,
                           sample_latency_ns(params, hist, hist_n, rng, 1 + nv + v, v, CH_ORDER))
        q_push(recs, q_t, q_seq, q_st, ex[k], due)


@njit(cache=True, _nrt=False, inline="always")
def _apply_op(st, rng, lat, eng, inst_venue, md_ring, md_ht, fifo, outbox, scratch, k,
              background, t):
    """One order (scratch[0][k]) through the matching engine at t: its market records
    published, its strategy-owned reports routed. A background cancel of an order that had
    been filled already is counted (st[ST_STALE_CANCELS])."""
    ops, ex, md = scratch[0], scratch[1], scratch[2]
    _done, kx, km = engine_process_inline(eng, ops[k:k + 1], 1, ex, md, t)
    if background and ops[k].kind == INTENT_CANCEL and km == 0:
        # the order had been filled already (the engine writes no reports for background
        # orders, S_QUIET_ANON; a cancel that found its order always publishes its level)
        st[ST_STALE_CANCELS] += 1
    v = inst_venue[ops[k].instrument_id]
    _publish(st, lat, rng, md_ring, md_ht, fifo, v, md, km, t)
    _route_reports(st, lat, rng, inst_venue, fifo, outbox, ex, kx, t)


@njit(cache=True, _nrt=False)
def _bg_order(o, kind, inst, side, otype, px, qty, coid):
    o.kind = kind
    o.side = side
    o.order_type = otype
    o.instrument_id = inst
    o.client_order_id = coid
    o.px_ticks = px
    o.qty_lots = qty
    o.strategy_id = 0


@njit(cache=True, _nrt=False, inline="always")
def _bg_cancel(pool, pool_n, inst, j, op):
    """A cancel of the background order pool[inst, j] into op (the pool forgets it now)."""
    coid = pool[inst, j]
    pool_n[inst] -= 1
    pool[inst, j] = pool[inst, pool_n[inst]]
    _bg_order(op, INTENT_CANCEL, inst, 0, ORD_LIMIT, 0, 0, coid)


@njit(cache=True, _nrt=False, inline="always")
def _background_event(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, pool, pool_n,
                      md_ring, md_ht, fifo, outbox, scratch, v, t):
    """Draw one background event of venue v at t: scheduled model events (news published
    here), then the event's orders into scratch[0][0:n] for the engine, in the order they
    reach it (a cancel that makes room in a full pool, then the new order). Returns n."""
    ip, is_, gp, gs, gl = fm
    t0 = st[ST_T0]
    act_out = scratch[4]
    news = scratch[3]
    ops = scratch[0]
    n_news = 0
    if next_scheduled_ns(ip, is_, gs, gl) <= float(t - t0):   # rare: run_scheduled's own test
        n_news = run_scheduled(ip, is_, gp, gs, gl, float(t - t0), rng, 0, news, 0)
    for k in range(n_news):
        news[k].exch_ts_ns += t0
        iv = inst_venue[news[k].instrument_id]
        _publish(st, lat, rng, md_ring, md_ht, fifo, iv, news[k:k + 1], 1, news[k].exch_ts_ns)
        st[ST_NEWS] += 1
    act = draw_action(ip, is_, gp, gs, gl, venue_insts[v], venue_n[v], float(t - t0), rng, v,
                      act_out)
    inst = act_out[0]
    st[ST_EVENTS] += 1
    n_bid = eng[3][inst, 0]
    n_ask = eng[3][inst, 1]
    if min(n_bid, n_ask) < MIN_LEVELS:
        # liquidity providers refill the thin side first (see market.flow)
        draw_limit(ip, is_, gp, gs, gl, inst, SIDE_BUY if n_bid < n_ask else SIDE_SELL,
                   float(t - t0), rng, v, act_out)
        act = ACT_LIMIT
    if act != ACT_CANCEL and rng_uniform(rng, v) < ip[inst, IP_P_INFORMED]:
        # arbitrageurs: when the book lags the latent price by more than informed_bps, take
        # the stale side up to the latent price (a marketable limit)
        lat_px = latent_price_ticks(ip, is_, gp, gs, gl, inst, float(t - t0), rng, v)
        ask = l3_best_px(eng, inst, 1)
        bid = l3_best_px(eng, inst, 0)
        edge = lat_px * ip[inst, IP_INFORMED]
        if ask > 0 and lat_px - edge > ask:
            act_out[1] = SIDE_BUY
            act_out[2] = np.int64(lat_px - edge)
            act = ACT_LIMIT
        elif bid > 0 and lat_px + edge < bid:
            act_out[1] = SIDE_SELL
            act_out[2] = np.int64(lat_px + edge) + 1
            act = ACT_LIMIT
    if act == ACT_CANCEL:
        if pool_n[inst] > 0:
            j = rng_below(rng, v, pool_n[inst])
            _bg_cancel(pool, pool_n, inst, j, ops[0])
            return 1
        return 0
    n = 0
    if act == ACT_LIMIT:
        if pool_n[inst] >= pool.shape[1]:
            j = rng_below(rng, v, pool_n[inst])
            _bg_cancel(pool, pool_n, inst, j, ops[0])
            # the order record is reused from op to op: carry the one field _bg_order does
            # not set, so the engine stores exactly what it stored from a single scratch slot
            ops[1].cause_recv_ts_ns = ops[0].cause_recv_ts_ns
            n = 1
        st[ST_NEXT_COID] -= 1
        coid = st[ST_NEXT_COID]
        _bg_order(ops[n], INTENT_NEW, inst, act_out[1], ORD_LIMIT, act_out[2], act_out[3], coid)
        pool[inst, pool_n[inst]] = coid
        pool_n[inst] += 1
    else:
        st[ST_NEXT_COID] -= 1
        _bg_order(ops[n], INTENT_NEW, inst, act_out[1], ORD_MARKET, 0, act_out[3],
                  st[ST_NEXT_COID])
        # informed flow moves the latent price; trades excite the venue's event rate
        market_impact(ip, gs, inst, act_out[1], act_out[3])
        hawkes_kick(gl, v, float(t - t0))
    return n + 1


@njit(cache=True, _nrt=False)
def sim_start(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext, rates, pool,
              pool_n, md_ring, md_ht, fifo, pend, outbox, scratch):
    """Seed the model, fill each book with INITIAL_ORDERS background limit orders, publish a
    snapshot per instrument at t0 and schedule each venue's first event."""
    ip, is_, gp, gs, gl = fm
    flow_init(ip, is_, gp, gs, gl, rng, 0)
    t0 = st[ST_T0]
    rec = scratch[0]
    act_out = scratch[4]
    md = scratch[2]
    for v in range(1, vnext.shape[0]):
        for k in range(venue_n[v]):
            inst = venue_insts[v, k]
            for _ in range(INITIAL_ORDERS):
                # draw limit orders only: retry draws until the action is a limit order
                while draw_action(ip, is_, gp, gs, gl, venue_insts[v, k:k + 1], 1, 0.0, rng, v,
                                  act_out) != ACT_LIMIT:
                    pass
                st[ST_NEXT_COID] -= 1
                _bg_order(rec[0], INTENT_NEW, inst, act_out[1], ORD_LIMIT, act_out[2],
                          act_out[3], st[ST_NEXT_COID])
                engine_process(eng, rec, 1, scratch[1], md, t0)
                pool[inst, pool_n[inst]] = st[ST_NEXT_COID]
                pool_n[inst] += 1
            km = engine_snapshot(eng, inst, md, 0, t0)
            _publish(st, lat, rng, md_ring, md_ht, fifo, v, md, km, t0)
        if rates[v] > 0.0:
            vnext[v] = t0 + np.int64(rng_exp(rng, v, NS / rates[v])) + 1


@njit(cache=True, _nrt=False, inline="always")
def _next_md_venue(md_ring, md_ht):
    best = -1
    best_t = NEVER
    cap = md_ring.shape[1]
    for v in range(1, md_ht.shape[0]):
        if md_ht[v, 0] < md_ht[v, 1]:
            t = md_ring[v, md_ht[v, 0] & (cap - 1)].recv_ts_ns
            if t < best_t:
                best_t = t
                best = v
    return best, best_t


@njit(cache=True, _nrt=False)
def sim_next_ns(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext, rates, pool,
                pool_n, md_ring, md_ht, fifo, pend, outbox, scratch):
    """The earliest time anything happens: a venue event, an order arrival or a delivery."""
    t = NEVER
    for v in range(1, vnext.shape[0]):
        t = min(t, vnext[v])
    t = min(t, q_next_ns(pend[1], pend[2], pend[3]))
    t = min(t, q_next_ns(outbox[1], outbox[2], outbox[3]))
    _v, tm = _next_md_venue(md_ring, md_ht)
    return min(t, tm)


@njit(cache=True, _nrt=False, inline="always")
def _deliver(md_ring, md_ht, outbox, t, out_md, n_md, out_ex, n_ex):
    cap = md_ring.shape[1]
    while n_md < out_md.shape[0]:
        v, tm = _next_md_venue(md_ring, md_ht)
        if v < 0 or tm > t:
            break
        out_md[n_md] = md_ring[v, md_ht[v, 0] & (cap - 1)]
        md_ht[v, 0] += 1
        n_md += 1
    n_ex = q_drain_due(outbox[0], outbox[1], outbox[2], outbox[3], t, out_ex, n_ex)
    return n_md, n_ex


@njit(cache=True, _nrt=False)
def sim_advance(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext, rates, pool,
                pool_n, md_ring, md_ht, fifo, pend, outbox, scratch, t_limit, out_md, n_md,
                out_ex, n_ex, stop_at_delivery):
    """Run venue events and order arrivals in time order up to t_limit, appending what is
    received into out_md[n_md:] / out_ex[n_ex:]. With ``stop_at_delivery`` it returns at the
    first delivery time (one batch for the strategy). Returns (n_md, n_ex, time reached).
    The work is done by ``sim_advance_state`` (on the state tuple)."""
    return sim_advance_state((st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext,
                              rates, pool, pool_n, md_ring, md_ht, fifo, pend, outbox, scratch),
                             t_limit, out_md, n_md, out_ex, n_ex, stop_at_delivery)


# The backtest calls the venue on its state tuple once per delivery; the body lives here, so
# no second call re-passes the 18 members as exploded arguments (about 200 machine words).
@njit(cache=True, _nrt=False)
def sim_advance_state(s, t_limit, out_md, n_md, out_ex, n_ex, stop_at_delivery):
    """``sim_advance`` on the state tuple (the backtest's venue interface)."""
    (st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext, rates, pool, pool_n,
     md_ring, md_ht, fifo, pend, outbox, scratch) = s
    gl = fm[4]
    while True:
        te = NEVER
        ve = 0
        for v in range(1, vnext.shape[0]):
            if vnext[v] < te:
                te = vnext[v]
                ve = v
        jo = q_min(pend[1], pend[2], pend[3])
        if jo >= 0 and pend[1][jo] <= te:
            te = pend[1][jo]
            ve = -1
        _v, tm = _next_md_venue(md_ring, md_ht)
        td = min(tm, q_next_ns(outbox[1], outbox[2], outbox[3]))
        if td <= te and td <= t_limit:
            st[ST_NOW] = max(st[ST_NOW], td)
            n_md, n_ex = _deliver(md_ring, md_ht, outbox, td, out_md, n_md, out_ex, n_ex)
            if stop_at_delivery or n_md >= out_md.shape[0] or n_ex >= out_ex.shape[0]:
                return n_md, n_ex, td
            continue
        if te > t_limit:
            st[ST_NOW] = max(st[ST_NOW], t_limit)
            return n_md, n_ex, t_limit
        st[ST_NOW] = te
        if ve < 0:
            scratch[0][0] = pend[0][jo]
            st[ST_ORDERS_IN] += 1
            q_remove(pend[0], pend[1], pend[2], pend[3], jo)
            n_ops = 1
        else:
            n_ops = _background_event(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n,
                                      pool, pool_n, md_ring, md_ht, fifo, outbox, scratch, ve,
                                      te)
        for k in range(n_ops):
            _apply_op(st, rng, lat, eng, inst_venue, md_ring, md_ht, fifo, outbox, scratch, k,
                      ve > 0, te)
        if ve > 0:
            tf = float(te - st[ST_T0])
            rate = rates[ve] * event_rate_mult(gl) * hawkes_mult(gl, ve, tf) * session_mult(gl, tf)
            vnext[ve] = te + np.int64(rng_exp(rng, ve, NS / rate)) + 1


@njit(cache=True, _nrt=False, inline="always")   # small: sim_submit_state takes it whole
def sim_submit(st, rng, fm, eng, lat, inst_venue, venue_insts, venue_n, vnext, rates, pool,
               pool_n, md_ring, md_ht, fifo, pend, outbox, scratch, order, send_ns):
    """A strategy order sent at send_ns: it reaches its venue after the order latency."""
    params, hist, hist_n = lat
    nv = st[ST_N_VENUES]
    v = inst_venue[order.instrument_id] if order.instrument_id < inst_venue.shape[0] else 0
    if v == 0:
        v = 1   # unknown instrument: the engine answers REJECT_INVALID on venue 1
    due = fifo_arrival(fifo[:, F_ORDER_IN], v, send_ns,
                       sample_latency_ns(params, hist, hist_n, rng, 1 + nv + v, v, CH_ORDER))
    return q_push(pend[0], pend[1], pend[2], pend[3], order, due)


@njit(cache=True, _nrt=False)
def sim_submit_state(s, order, send_ns):
    return sim_submit(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11],
                      s[12], s[13], s[14], s[15], s[16], s[17], order, send_ns)
