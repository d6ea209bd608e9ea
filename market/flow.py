"""Latent prices and background order flow of the simulated venues (the market model).

Runs inside the simulator (``market/sim.py``: the backtest process, or the live pipeline's venue
stage). Everything @njit is HOT PATH (one call per simulated event, no allocation);
``FlowModel`` is cold and builds the arrays from config.

The model, in log prices, for groups g (an asset: BTC, ETH; the same group on several venues
shares one latent price) and instruments i (a group on one venue):

    F(t)        common factor: Brownian motion, sigma_F = volatility of the leader group
                (the group of the first configured instrument), times the regime multiplier
    x_lead(t)   = log p0_lead + F + J_lead
    x_g(t)      = log p0_g + beta_g F + u_g         (g not the leader)
                beta_g = vol_g / vol_lead, so each group has its configured volatility, and
                u_g is an Ornstein-Uhlenbeck spread (half-life SPREAD_HALF_LIFE_S): x_g and
                x_lead are COINTEGRATED (x_g - beta_g x_lead is stationary) and their returns
                correlated (about 1 / sqrt(1 + IDIO_VOL_FRACTION^2) over short horizons)
    latent_i    = x_g + d_i, d_i a per-venue DISLOCATION: a fast OU (half-life
                DISLOC_HALF_LIFE_S) kicked by shocks of DISLOC_SHOCK_BPS at rate DISLOC_RATE_HZ,
                so the same asset on two venues drifts apart by a few bps for a few hundred ms

Volatility regimes: a two-state Markov chain (calm / volatile, volatility x VOL_REGIME_MULT and
event rate x RATE_REGIME_MULT), switching at rates CALM_TO_VOL_HZ / VOL_TO_CALM_HZ.
Jumps: per group at JUMP_RATE_HZ, normal size jump_bps; half of them market-wide (in F), the
others idiosyncratic (permanent for the leader, into u_g, and so mean-reverting, for the
others); a fraction NEWS_PROB of jumps is announced by a MSG_NEWS record at the jump time
(instrument = first instrument of the group, qty_lots = sentiment x 1e4 in [-1e4, 1e4] with
the jump's sign, aux0 = headline id).

Background orders, per venue event (Poisson, ``event_rate_per_s`` per venue, times the
Hawkes factor below): an instrument of the venue uniformly; then a limit order (probability
(1 - p_market) x LIMIT_SHARE) on a random side at latent -/+ (half_spread_bps +
Exp(depth_bps)) on a price grid of GRID_BPS (marketable when the book lags the latent price:
that is how books follow it), a cancel of a random resting background order (the rest of
1 - p_market), or a market order (p_market). Bursts of one-sided flow: per instrument at
BURST_RATE_HZ, lasting Exp(BURST_S), during which P_BURST_MARKET of events are market orders
on the burst's side. Sizes are exponential with mean limit_notional / market_notional quote
units. Liquidity providers refill a thin book: while a side has fewer than MIN_LEVELS levels
(after a jump swept it), the venue's next event is a limit order on that side; and
arbitrageurs: with probability p_informed an order event whose book lags the latent price by
more than informed_bps becomes a marketable limit up to the latent price (``market.sim``), so
books follow their latent price, dislocations included, within a few events.

Mechanisms added for the calibration to a real market (issue 14; parameters in ``FlowParams``,
fitted by ``run.py sim calibrate`` and stored in ``market/calibrated.json``, the defaults):

- informed flow (price impact): every background market order carries information: it moves
  its group's latent price by ``impact_bps`` x sqrt(size / mean size) in its direction
  (a permanent impact term I_g, part of x_g). Books follow the latent price, so a passive
  order that was filled is, on average, behind the price a moment later (adverse selection).
- value agents around a fundamental price: the fundamental is the latent price without I_g.
  When |I_g| exceeds ``value_bps``, with probability ``p_value`` a venue event is a market
  order against the deviation (its own impact pulls the price back toward the fundamental).
- metaorders: a plain market order starts, with probability ``p_meta``, a metaorder of L child
  orders, L Pareto-distributed with tail exponent ``meta_alpha`` (P(L > l) = l^-alpha, capped
  at META_MAX_CHILDREN); the next L - 1 plain market orders of the instrument are its children,
  all on its side. Power-law lengths give trade signs a long memory (their autocorrelation
  decays like lag^-(alpha - 1), Lillo-Mike-Farmer).
- rate invariance: ``impact_bps`` and ``hawkes_jump`` are the values at the fitted
  ``event_rate_per_s``; a venue run at another rate R gets impact x sqrt(fitted / R) and jump
  x fitted / R, so the impact's variance per second and the extra events per trade stay the
  fitted ones (``FlowModel``).
- Hawkes-type clustering of order arrival: each venue's event rate is
  rate x (1 + H_v), H_v jumping by ``hawkes_jump`` at every background market order and
  decaying with half-life ``hawkes_half_life_s`` (self-exciting bursts of activity; the next
  event is drawn at the intensity of the last one, a piecewise-constant approximation of the
  Hawkes intensity; H is capped at HAWKES_MAX).
- an intraday activity profile (issue 16, for the execution algorithms): the venues' event
  rate times ``session_mult``, a U-shape over each session of ``sim.session_s`` seconds with
  amplitude ``sim.session_amplitude`` (busiest at the open and the close, as equity and futures
  sessions are: Admati and Pfleiderer (1988), "A theory of intraday patterns", Rev. Fin.
  Studies 1(1); Jain and Joh (1988)). Flat by default; a VWAP schedule has a volume curve to
  learn only where it is on.

All of it is drawn from the same seeded streams: same seed, same events.
"""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
from numba import njit

from market.flowparams import FlowParams
from market.latency import rng_below, rng_exp, rng_normal, rng_uniform
from shm.records import MSG_NEWS, SIDE_BUY, SIDE_SELL

NS = 1_000_000_000

# --- model constants (documented in the module docstring) -----------------------------------
IDIO_VOL_FRACTION = 0.5
SPREAD_HALF_LIFE_S = 60.0
DISLOC_HALF_LIFE_S = 0.25
DISLOC_NOISE_BPS = 0.3          # stationary std of d_i between shocks
DISLOC_RATE_HZ = 1.0 / 8.0
DISLOC_SHOCK_BPS = 6.0          # mean absolute shock (uniform in [0.5, 1.5] x this): above the
                                # two taker fees at times, so cross-venue arbitrage has chances
VOL_REGIME_MULT = 3.0
RATE_REGIME_MULT = 1.5
CALM_TO_VOL_HZ = 1.0 / 300.0
VOL_TO_CALM_HZ = 1.0 / 60.0
JUMP_RATE_HZ = 1.0 / 120.0
NEWS_PROB = 0.6
GRID_BPS = 0.1
BURST_RATE_HZ = 1.0 / 30.0
BURST_S = 1.5
P_BURST_MARKET = 0.5
MIN_LEVELS = 5
LIMIT_SHARE = 0.5 / 0.9         # of the events that are not market orders: limit orders (the
                                # rest cancels), the pre-calibration 0.5 : 0.4
META_MAX_CHILDREN = 100_000.0
HAWKES_MAX = 50.0

# --- flow actions ----------------------------------------------------------------------------
ACT_NONE = 0
ACT_LIMIT = 1
ACT_MARKET = 2
ACT_CANCEL = 3

# per-instrument parameters ip[i, IP_*] (float64)
IP_GROUP = 0
IP_VENUE = 1
IP_TICK = 2          # quote units per tick
IP_GRID = 3          # price grid of background orders, ticks
IP_HALF_SPREAD = 4   # relative (fraction of price)
IP_DEPTH = 5         # relative
IP_LIMIT_LOTS = 6    # mean size of limit orders, lots
IP_MARKET_LOTS = 7
IP_P_LIMIT = 8
IP_P_CANCEL = 9      # cumulative: limit below P_LIMIT, cancel below P_CANCEL, else market
IP_P_INFORMED = 10
IP_INFORMED = 11     # relative
IP_IMPACT = 12       # relative latent move per market order of the mean size
IP_P_META = 13
IP_META_ALPHA = 14
IP_P_VALUE = 15
IP_VALUE = 16        # relative
IP_WORDS = 17
# per-instrument state is_[i, IS_*] (float64)
IS_DISLOC = 0
IS_T_DISLOC = 1      # ns since start of the last update of d_i
IS_NEXT_SHOCK = 2
IS_BURST_SIDE = 3    # 0 none, else SIDE_*
IS_BURST_END = 4
IS_NEXT_BURST = 5
IS_META_SIDE = 6     # side of the running metaorder
IS_META_LEFT = 7     # its child orders still to come
IS_WORDS = 8
# per-group parameters gp[g, GP_*] and state gs[g, GS_*]
GP_LOGP0 = 0
GP_BETA = 1
GP_SIGMA_U = 2       # per sqrt(second)
GP_LEADER = 3
GP_FIRST_INST = 4
GP_WORDS = 5
GS_U = 0
GS_J = 1
GS_T = 2
GS_NEXT_JUMP = 3
GS_IMPACT = 4        # I_g: the informed flow's permanent impact (log price)
GS_WORDS = 5
# global state gl[GL_*]
GL_F = 0
GL_T = 1
GL_REGIME = 2        # 0 calm, 1 volatile
GL_NEXT_SWITCH = 3
GL_SIGMA_F = 4
GL_HEADLINES = 5
GL_JUMPS = 6
GL_JUMP_SD = 7       # relative
GL_HK_JUMP = 8
GL_HK_DECAY = 9      # ln 2 / half-life, per ns
GL_SESSION_AMP = 10  # the intraday profile's amplitude a (0: flat)
GL_SESSION_NS = 11   # the session's length, ns
GL_WORDS = 12        # then per venue v: gl[GL_WORDS + 2v] = H_v, gl[GL_WORDS + 2v + 1] = its time


class FlowModel:
    """Arrays of the market model for every instrument of the given (simulated) venues.

    ``arrays`` -> (ip, is_, gp, gs, gl); times inside are float ns since the simulation
    start (exact below 2**53 ns, about 104 days of simulated time).
    """

    def __init__(self, cfg, instruments, params: FlowParams | None = None,
                 event_rate_per_s: float | None = None):
        self.params = p = FlowParams.default() if params is None else params
        # impact_bps and hawkes_jump are fitted at p.event_rate_per_s; at another rate they are
        # scaled so that the impact's variance per second and the extra events a trade
        # triggers stay what was fitted (else a busier market would be more volatile and its
        # Hawkes excitation explosive)
        ratio = 1.0 if event_rate_per_s is None else p.event_rate_per_s / float(event_rate_per_s)
        self.instruments = list(instruments)
        n = max(i.instrument_id for i in self.instruments)
        groups: dict[str, int] = {}
        for inst in self.instruments:
            groups.setdefault(inst.group or inst.symbol, len(groups))
        self.groups = groups
        self.ip = np.zeros((n + 1, IP_WORDS))
        self.is_ = np.zeros((n + 1, IS_WORDS))
        self.gp = np.zeros((len(groups), GP_WORDS))
        self.gs = np.zeros((len(groups), GS_WORDS))
        n_venues = max(i.venue_id for i in self.instruments)
        self.gl = np.zeros(GL_WORDS + 2 * (n_venues + 1))
        self.gl[GL_JUMP_SD] = p.jump_bps * 1e-4
        self.gl[GL_HK_JUMP] = p.hawkes_jump * ratio
        self.gl[GL_HK_DECAY] = 0.6931471805599453 / (p.hawkes_half_life_s * NS)
        sim = getattr(cfg, "sim", None)
        amp = float(getattr(sim, "session_amplitude", 0.0))
        if not 0.0 <= amp < 1.0:
            raise ValueError(f"sim.session_amplitude {amp}: in [0, 1)")
        self.gl[GL_SESSION_AMP] = amp
        self.gl[GL_SESSION_NS] = float(getattr(sim, "session_s", 3600.0)) * NS
        by_key = {ic.key: ic for ic in cfg.instruments}
        first_of_group: dict[int, tuple] = {}
        for inst in self.instruments:
            ic = by_key[inst.key]
            g = groups[inst.group or inst.symbol]
            p0 = Decimal(ic.start_price)
            if p0 <= 0:
                raise ValueError(f"instrument {inst.key}: start_price {ic.start_price} must be > 0")
            row = self.ip[inst.instrument_id]
            tick = float(inst.tick_size)
            price_ticks = float(p0 / inst.tick_size)
            row[IP_GROUP] = g
            row[IP_VENUE] = inst.venue_id
            row[IP_TICK] = tick
            row[IP_GRID] = max(1.0, round(price_ticks * GRID_BPS * 1e-4))
            row[IP_HALF_SPREAD] = p.half_spread_bps * 1e-4
            row[IP_DEPTH] = p.depth_bps * 1e-4
            lot_value = float(p0 * inst.lot_size)
            row[IP_LIMIT_LOTS] = max(1.0, p.limit_notional / lot_value)
            row[IP_MARKET_LOTS] = max(1.0, p.market_notional / lot_value)
            row[IP_P_LIMIT] = (1.0 - p.p_market) * LIMIT_SHARE
            row[IP_P_CANCEL] = 1.0 - p.p_market
            row[IP_P_INFORMED] = p.p_informed
            row[IP_INFORMED] = p.informed_bps * 1e-4
            row[IP_IMPACT] = p.impact_bps * 1e-4 * math.sqrt(ratio)
            row[IP_P_META] = p.p_meta
            row[IP_META_ALPHA] = p.meta_alpha
            row[IP_P_VALUE] = p.p_value
            row[IP_VALUE] = p.value_bps * 1e-4
            if g not in first_of_group:
                first_of_group[g] = (inst.instrument_id, math.log(float(p0)),
                                     ic.volatility_bps * 1e-4)
        lead_vol = first_of_group[0][2]
        for g, (first_id, logp0, vol) in first_of_group.items():
            self.gp[g, GP_LOGP0] = logp0
            self.gp[g, GP_FIRST_INST] = first_id
            self.gp[g, GP_LEADER] = 1.0 if g == 0 else 0.0
            self.gp[g, GP_BETA] = 1.0 if g == 0 else (vol / lead_vol if lead_vol > 0 else 0.0)
            self.gp[g, GP_SIGMA_U] = 0.0 if g == 0 else IDIO_VOL_FRACTION * vol
        self.gl[GL_SIGMA_F] = lead_vol

    @property
    def arrays(self):
        return self.ip, self.is_, self.gp, self.gs, self.gl


# ------------------------------------------------------------------------------------------
# Latent prices (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, inline="always", _nrt=False)
def _ou_step(x, dt_s, half_life_s, sigma, rng, stream):
    """Exact OU transition over dt: mean reversion to 0 with the given half-life, diffusion
    sigma per sqrt(second)."""
    if dt_s <= 0.0:
        return x
    k = 0.6931471805599453 / half_life_s
    a = math.exp(-k * dt_s)
    sd = sigma * math.sqrt((1.0 - a * a) / (2.0 * k))
    return x * a + sd * rng_normal(rng, stream)


@njit(cache=True, _nrt=False)
def flow_init(ip, is_, gp, gs, gl, rng, stream):
    """Draw the first scheduled times (regime switch, jumps, shocks, bursts) at t = 0."""
    gl[GL_T] = 0.0
    gl[GL_REGIME] = 0.0
    gl[GL_NEXT_SWITCH] = rng_exp(rng, stream, NS / CALM_TO_VOL_HZ)
    for g in range(gs.shape[0]):
        gs[g, GS_NEXT_JUMP] = rng_exp(rng, stream, NS / JUMP_RATE_HZ)
    for i in range(1, ip.shape[0]):
        if ip[i, IP_TICK] == 0.0:
            continue
        is_[i, IS_NEXT_SHOCK] = rng_exp(rng, stream, NS / DISLOC_RATE_HZ)
        is_[i, IS_NEXT_BURST] = rng_exp(rng, stream, NS / BURST_RATE_HZ)


@njit(cache=True, _nrt=False)
def _advance_factor(gl, t, rng, stream):
    dt = (t - gl[GL_T]) * 1e-9
    if dt > 0.0:
        mult = VOL_REGIME_MULT if gl[GL_REGIME] > 0.0 else 1.0
        gl[GL_F] += gl[GL_SIGMA_F] * mult * math.sqrt(dt) * rng_normal(rng, stream)
        gl[GL_T] = t


@njit(cache=True, _nrt=False)
def _advance_group(gp, gs, gl, g, t, rng, stream):
    dt = (t - gs[g, GS_T]) * 1e-9
    if dt > 0.0:
        if gp[g, GP_SIGMA_U] > 0.0:
            mult = VOL_REGIME_MULT if gl[GL_REGIME] > 0.0 else 1.0
            gs[g, GS_U] = _ou_step(gs[g, GS_U], dt, SPREAD_HALF_LIFE_S,
                                   gp[g, GP_SIGMA_U] * mult, rng, stream)
        gs[g, GS_T] = t


@njit(cache=True, _nrt=False)
def _advance_disloc(is_, i, t, rng, stream):
    dt = (t - is_[i, IS_T_DISLOC]) * 1e-9
    if dt > 0.0:
        sigma = DISLOC_NOISE_BPS * 1e-4 * math.sqrt(2.0 * 0.6931471805599453 / DISLOC_HALF_LIFE_S)
        is_[i, IS_DISLOC] = _ou_step(is_[i, IS_DISLOC], dt, DISLOC_HALF_LIFE_S, sigma, rng,
                                     stream)
        is_[i, IS_T_DISLOC] = t


@njit(cache=True, _nrt=False)
def group_log_price(gp, gs, gl, g):
    """x_g at the time of the last advance (no draw)."""
    x = gp[g, GP_LOGP0] + gp[g, GP_BETA] * gl[GL_F] + gs[g, GS_U] + gs[g, GS_IMPACT]
    if gp[g, GP_LEADER] > 0.0:
        x += gs[g, GS_J]
    return x


# inline="always" on the per-event functions (latent_price_ticks, next_scheduled_ns,
# draw_action, draw_limit): numba passes each array argument as its exploded struct (7-9 words),
# so a call taking the model's five arrays and the streams pushed about 60 words, more than
# the work of a cheap draw (see market.sim).
@njit(cache=True, _nrt=False, inline="always")
def latent_price_ticks(ip, is_, gp, gs, gl, i, t, rng, stream):
    """Latent price of instrument i at time t (float ticks); advances the model to t."""
    g = np.int64(ip[i, IP_GROUP])
    _advance_factor(gl, t, rng, stream)
    _advance_group(gp, gs, gl, g, t, rng, stream)
    _advance_disloc(is_, i, t, rng, stream)
    return math.exp(group_log_price(gp, gs, gl, g) + is_[i, IS_DISLOC]) / ip[i, IP_TICK]


@njit(cache=True, _nrt=False, inline="always")
def next_scheduled_ns(ip, is_, gs, gl):
    """The earliest scheduled model event (regime switch, jump, shock, burst start)."""
    t = gl[GL_NEXT_SWITCH]
    for g in range(gs.shape[0]):
        t = min(t, gs[g, GS_NEXT_JUMP])
    for i in range(1, ip.shape[0]):
        if ip[i, IP_TICK] != 0.0:
            t = min(t, is_[i, IS_NEXT_SHOCK], is_[i, IS_NEXT_BURST])
    return t


@njit(cache=True, _nrt=False)
def run_scheduled(ip, is_, gp, gs, gl, t, rng, stream, news, n_news):
    """Apply every scheduled model event at or before t (in time order); write MSG_NEWS
    records (exch_ts relative ns, to be shifted by the caller) into news[n_news:].
    Returns the new n_news."""
    while True:
        te = next_scheduled_ns(ip, is_, gs, gl)
        if te > t:
            return n_news
        if te == gl[GL_NEXT_SWITCH]:
            _advance_factor(gl, te, rng, stream)
            for g in range(gs.shape[0]):
                _advance_group(gp, gs, gl, g, te, rng, stream)
            if gl[GL_REGIME] > 0.0:
                gl[GL_REGIME] = 0.0
                gl[GL_NEXT_SWITCH] = te + rng_exp(rng, stream, NS / CALM_TO_VOL_HZ)
            else:
                gl[GL_REGIME] = 1.0
                gl[GL_NEXT_SWITCH] = te + rng_exp(rng, stream, NS / VOL_TO_CALM_HZ)
            continue
        done = False
        for g in range(gs.shape[0]):
            if gs[g, GS_NEXT_JUMP] == te:
                _advance_factor(gl, te, rng, stream)
                _advance_group(gp, gs, gl, g, te, rng, stream)
                size = gl[GL_JUMP_SD] * rng_normal(rng, stream)
                if rng_uniform(rng, stream) < 0.5:
                    gl[GL_F] += size          # market-wide: every group moves (beta_g)
                elif gp[g, GP_LEADER] > 0.0:
                    gs[g, GS_J] += size       # leader: permanent
                else:
                    gs[g, GS_U] += size       # others: into the cointegration spread
                gl[GL_JUMPS] += 1.0
                if rng_uniform(rng, stream) < NEWS_PROB and n_news < news.shape[0]:
                    gl[GL_HEADLINES] += 1.0
                    sent = size / (2.0 * gl[GL_JUMP_SD]) if gl[GL_JUMP_SD] > 0.0 else 0.0
                    sent = max(-1.0, min(1.0, sent))
                    rec = news[n_news]
                    rec.kind = MSG_NEWS
                    rec.instrument_id = np.uint32(gp[g, GP_FIRST_INST])
                    rec.exch_ts_ns = np.int64(te)
                    rec.qty_lots = np.int64(round(sent * 1e4))
                    rec.aux0 = np.int64(gl[GL_HEADLINES])
                    n_news += 1
                gs[g, GS_NEXT_JUMP] = te + rng_exp(rng, stream, NS / JUMP_RATE_HZ)
                done = True
                break
        if done:
            continue
        for i in range(1, ip.shape[0]):
            if ip[i, IP_TICK] == 0.0:
                continue
            if is_[i, IS_NEXT_SHOCK] == te:
                _advance_disloc(is_, i, te, rng, stream)
                shock = DISLOC_SHOCK_BPS * 1e-4 * (0.5 + rng_uniform(rng, stream))
                if rng_uniform(rng, stream) < 0.5:
                    shock = -shock
                is_[i, IS_DISLOC] += shock
                is_[i, IS_NEXT_SHOCK] = te + rng_exp(rng, stream, NS / DISLOC_RATE_HZ)
                break
            if is_[i, IS_NEXT_BURST] == te:
                is_[i, IS_BURST_SIDE] = SIDE_BUY if rng_uniform(rng, stream) < 0.5 else SIDE_SELL
                is_[i, IS_BURST_END] = te + rng_exp(rng, stream, BURST_S * NS)
                is_[i, IS_NEXT_BURST] = te + rng_exp(rng, stream, NS / BURST_RATE_HZ)
                break


@njit(cache=True, _nrt=False)
def event_rate_mult(gl):
    return RATE_REGIME_MULT if gl[GL_REGIME] > 0.0 else 1.0


@njit(cache=True, _nrt=False, inline="always")
def session_mult(gl, t):
    """The intraday profile at t (float ns since start): 1 + a (3 (2 phase - 1)^2 - 1), phase
    the position in the session in [0, 1): 1 + 2a at the open and the close, 1 - a mid-session,
    mean 1 over a session. Exactly 1.0 when a = 0 (the default: the flow is what it was)."""
    a = gl[GL_SESSION_AMP]
    if a == 0.0:
        return 1.0
    x = 2.0 * ((t % gl[GL_SESSION_NS]) / gl[GL_SESSION_NS]) - 1.0
    return 1.0 + a * (3.0 * x * x - 1.0)


# ------------------------------------------------------------------------------------------
# Background orders (hot path)
# ------------------------------------------------------------------------------------------
@njit(cache=True, _nrt=False, inline="always")
def draw_action(ip, is_, gp, gs, gl, venue_insts, n_venue_insts, t, rng, stream, out):
    """Decide one background event of a venue at time t. ``out`` int64[4] receives
    (instrument id, side, price ticks, qty lots); returns ACT_*. For ACT_CANCEL the caller
    picks the order (from its own pool) with the venue's stream. A market order's impact is
    the caller's (``market_impact``), once it is sent."""
    i = venue_insts[rng_below(rng, stream, n_venue_insts)]
    out[0] = i
    u = rng_uniform(rng, stream)
    burst = is_[i, IS_BURST_SIDE]
    if burst != 0.0 and t >= is_[i, IS_BURST_END]:
        is_[i, IS_BURST_SIDE] = 0.0
        burst = 0.0
    if burst != 0.0 and u < P_BURST_MARKET:
        out[1] = np.int64(burst)
        out[2] = 0
        out[3] = 1 + np.int64(rng_exp(rng, stream, ip[i, IP_MARKET_LOTS]))
        return ACT_MARKET
    if burst != 0.0:
        u = (u - P_BURST_MARKET) / (1.0 - P_BURST_MARKET)
    if ip[i, IP_P_VALUE] > 0.0:
        # value agents: trade the price back toward the fundamental (latent without I_g)
        dev = gs[np.int64(ip[i, IP_GROUP]), GS_IMPACT]
        if abs(dev) > ip[i, IP_VALUE] and rng_uniform(rng, stream) < ip[i, IP_P_VALUE]:
            out[1] = SIDE_SELL if dev > 0.0 else SIDE_BUY
            out[2] = 0
            out[3] = 1 + np.int64(rng_exp(rng, stream, ip[i, IP_MARKET_LOTS]))
            return ACT_MARKET
    if u < ip[i, IP_P_LIMIT]:
        side = SIDE_BUY if rng_uniform(rng, stream) < 0.5 else SIDE_SELL
        draw_limit(ip, is_, gp, gs, gl, i, side, t, rng, stream, out)
        return ACT_LIMIT
    if u < ip[i, IP_P_CANCEL]:
        return ACT_CANCEL
    side = SIDE_BUY if rng_uniform(rng, stream) < 0.5 else SIDE_SELL
    if is_[i, IS_META_LEFT] > 0.0:
        # the next child order of the running metaorder
        side = np.int64(is_[i, IS_META_SIDE])
        is_[i, IS_META_LEFT] -= 1.0
    elif ip[i, IP_P_META] > 0.0 and rng_uniform(rng, stream) < ip[i, IP_P_META]:
        # a new metaorder of L children, P(L > l) = l^-alpha; this order is the first
        n = math.floor(rng_uniform(rng, stream) ** (-1.0 / ip[i, IP_META_ALPHA]))
        is_[i, IS_META_SIDE] = side
        is_[i, IS_META_LEFT] = min(META_MAX_CHILDREN, n) - 1.0
    out[1] = side
    out[2] = 0
    out[3] = 1 + np.int64(rng_exp(rng, stream, ip[i, IP_MARKET_LOTS]))
    return ACT_MARKET


@njit(cache=True, _nrt=False, inline="always")
def market_impact(ip, gs, i, side, qty):
    """Informed flow: a background market order of instrument i moves its group's latent
    price by impact x sqrt(qty / mean qty) its way (the permanent impact term I_g)."""
    k = ip[i, IP_IMPACT]
    if k > 0.0:
        m = k * math.sqrt(qty / ip[i, IP_MARKET_LOTS])
        g = np.int64(ip[i, IP_GROUP])
        gs[g, GS_IMPACT] += m if side == SIDE_BUY else -m


@njit(cache=True, _nrt=False, inline="always")
def hawkes_mult(gl, v, t):
    """1 + H_v at time t (float ns since start), H_v decayed to t."""
    j = GL_WORDS + 2 * v
    h = gl[j]
    if h > 0.0:
        h *= math.exp(-gl[GL_HK_DECAY] * (t - gl[j + 1]))
        gl[j] = h
    gl[j + 1] = t
    return 1.0 + h


@njit(cache=True, _nrt=False, inline="always")
def hawkes_kick(gl, v, t):
    """A market order on venue v at t excites its event rate (H_v += jump, capped)."""
    if gl[GL_HK_JUMP] > 0.0:
        hawkes_mult(gl, v, t)
        j = GL_WORDS + 2 * v
        gl[j] = min(HAWKES_MAX, gl[j] + gl[GL_HK_JUMP])


@njit(cache=True, _nrt=False, inline="always")
def draw_limit(ip, is_, gp, gs, gl, i, side, t, rng, stream, out):
    """A background limit order of instrument i on ``side`` at time t into out (see
    ``draw_action``): latent -/+ (half spread + Exp(depth)), on the instrument's price grid."""
    p = latent_price_ticks(ip, is_, gp, gs, gl, i, t, rng, stream)
    off = p * (ip[i, IP_HALF_SPREAD] + rng_exp(rng, stream, ip[i, IP_DEPTH]))
    grid = ip[i, IP_GRID]
    out[0] = i
    out[1] = side
    if side == SIDE_BUY:
        px = np.int64(math.floor((p - off) / grid)) * np.int64(grid)
    else:
        px = np.int64(math.ceil((p + off) / grid)) * np.int64(grid)
    out[2] = max(np.int64(1), px)
    out[3] = 1 + np.int64(rng_exp(rng, stream, ip[i, IP_LIMIT_LOTS]))
