"""The strategy contract (API v2): a cold Python class per strategy plus @njit hooks.

Runs in every process that hosts a strategy: the live strategy-host stage, the backtest and the
tests. The class is cold: it validates parameters, packs them for the hooks and builds the
state once. The "hot helpers" below run inside hooks or in the runtime around them (no
allocation, no Python objects, no exceptions). ``restore_state`` at the end is cold.
How to write a strategy: docs/strategies.md.

    class MyStrategy(Strategy):
        kind = "my_strategy"
        Params = MyParams                 # frozen dataclass, every field via common.schema.opt
        n_instruments = 1
        on_market = staticmethod(my_on_market)   # @njit hooks; any left out is a no-op
        on_exec = staticmethod(my_on_exec)
        on_timer = staticmethod(my_on_timer)
        on_params = staticmethod(my_on_params)

        def state_fields(self):           # the hooks' named state: a numpy dtype spec
            return [("fast_ewma", "f8"), ("last_coid", "i8"), ("window", "f8", (64,))]

        def derive(self):                 # optional: kernel parameters computed from Params
            return {"requote_ns": self.params.requote_ms * 1e6}

Hooks (each called by the runtime, strategies/host.py, only after it has applied the batch to
the books and to the strategy's order table and positions; a strategy never does that itself):

    on_market(ctx, st, p, md, n_md, now_ns)   market records md[:n_md] arrived
    on_exec(ctx, st, p, ex, n_ex, now_ns)     execution reports / risk denials ex[:n_ex]
    on_timer(ctx, st, p, now_ns)              every ``timer_ms`` of the strategy's config
    on_params(ctx, st, p, now_ns)             parameters changed (``run.py set``)
    on_signal(ctx, st, p, sg, n_sg, now_ns)   signal records sg[:n_sg] of the farm's signal
                                              agents arrived (already in ctx.sig: read them
                                              with ``signal_value`` / ``signal_pair``)

``p`` is the packed parameter record: every numeric field of ``Params`` by name (bools as
0/1), plus ``derive()``'s values. ``st`` is the strategy's state record (``state_fields``, set
up by ``init_state``). ``ctx`` is the runtime's part, a named tuple:

    ctx.rt       RUNTIME_DTYPE[1]: strategy id, shard, counters (read with the helpers)
    ctx.inst     int64[n]: global instrument id of local instrument i (books are by global id)
    ctx.venue    int64[n]: venue id of local instrument i
    ctx.orders   ORDER_SLOT_DTYPE[max_orders]: the strategy's orders, kept by the runtime
    ctx.pos      market.accounting.POSITION_DTYPE[n]: positions, cost, realized PnL, fees
    ctx.out      ORDER_DTYPE[max_intents]: intents of the current hook call
    ctx.px, ctx.qty, ctx.meta   the L2 books (market/book.py), indexed by global id
    ctx.sig      SIGNAL_CELL_DTYPE[N_SIGNAL_KINDS * n_ids * n_ids]: the newest value of every
                 signal cell the strategy subscribes to (kind, instrument id[, other id]),
                 kept by the runtime; a missing or stale cell reads as NaN, never 0

Orders are sent with ``place`` / ``cancel`` / ``replace`` / ``cancel_all`` (by client order
id); intents carry ``client_order_id = strategy_id << 48 | shard << 40 | counter`` and the
receive time of the newest market record (``cause_recv_ts_ns``) so tick-to-trade is measured
end to end. The runtime keeps the order table and inventory from execution reports; a
strategy never enforces risk limits (the gate does).

A hook that raises halts the strategy (the runtime cancels its orders; fills keep being
accounted); see strategies/host.py.
"""
from __future__ import annotations

import dataclasses
import math
from collections import namedtuple

import numpy as np
from numba import njit

from common.runtime import MAX_SHARDS, MAX_STRATEGY_ID
from common.schema import ConfigError, load_section
from market.accounting import POSITION_DTYPE, apply_fill, make_positions
from shm.records import (
    N_SIGNAL_KINDS, SFLAG_VALID, SIGNAL_DTYPE,
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL, EXEC_PARTIAL,
    EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE, ORD_POST_ONLY,
    ORDER_DTYPE, SIDE_BUY, SIDE_SELL,
)

COID_SHIFT = 48          # client_order_id = strategy_id << 48 | shard << 40 | counter
SHARD_SHIFT = 40         # MAX_SHARDS (common/runtime.py) = 256: 8 bits
COUNTER_MASK = (1 << SHARD_SHIFT) - 1

RUNTIME_DTYPE = np.dtype([
    ("strategy_id", "i8"),
    ("shard", "i8"),
    ("next_coid", "i8"),      # counter part of the next client order id (starts at 1)
    ("n_inst", "i8"),
    ("n_out", "i8"),          # intents written into ctx.out by the current hook call
    ("dropped", "i8"),        # intents that did not fit into ctx.out or the order table
    ("last_recv_ts", "i8"),   # recv_ts_ns of the newest market record (cause of intents)
    ("unknown_exec", "i8"),   # reports for client order ids we do not know (counted, ignored)
    ("fills", "i8"),          # fill reports applied
    ("rejects", "i8"),        # EXEC_REJECT reports (venue rejects and risk denials)
    ("last_reject", "i8"),    # reject_code of the latest one
    ("last_reject_ns", "i8"),  # venue_ts_ns of the latest reject (a strategy backs off)
    ("halted", "i8"),         # HALT_* hook that raised; 0 = trading
    ("halt_ns", "i8"),        # when it raised (the batch's now_ns: simulated time in a backtest)
    ("params_version", "i8"),  # parameter sets applied after the first
    ("_pad", "i8"),
], align=True)

HALT_NONE, HALT_MARKET, HALT_EXEC, HALT_TIMER, HALT_PARAMS, HALT_BAD_COUNT = 0, 1, 2, 3, 4, 5
HALT_SIGNAL = 6
HALT_NAMES = {HALT_MARKET: "on_market raised", HALT_EXEC: "on_exec raised",
              HALT_TIMER: "on_timer raised", HALT_PARAMS: "on_params raised",
              HALT_BAD_COUNT: "wrote more intents than ctx.out holds",
              HALT_SIGNAL: "on_signal raised"}

# One cell of the signal table (ctx.sig): the newest value of one signal, as the runtime
# applied it from the agent's records. max_age_ns 0: the strategy does not subscribe to the
# kind (every read is missing); ts_ns 0: never written.
SIGNAL_CELL_DTYPE = np.dtype([
    ("value", "f8"),          # NaN when the agent said it has no value
    ("ts_ns", "i8"),          # when the agent computed it (shared clock)
    ("max_age_ns", "i8"),     # older than this is missing (the agent's stale_ms)
    ("n_obs", "i8"),
], align=True)

ORDER_SLOT_DTYPE = np.dtype([
    ("coid", "i8"),       # client_order_id; 0 = free slot
    ("inst", "i8"),       # local instrument index (0..n-1)
    ("side", "i8"),       # SIDE_BUY / SIDE_SELL
    ("px", "i8"),         # working price (ticks)
    ("leaves", "i8"),     # open quantity (lots)
    ("state", "i8"),      # OST_*
    ("new_px", "i8"),     # pending replace price
    ("new_qty", "i8"),    # pending replace quantity
    ("sent_ns", "i8"),    # when the last intent for this order was written
    ("order_type", "i8"),  # ORD_*
], align=True)

OST_FREE = 0
OST_PENDING_NEW = 1
OST_LIVE = 2
OST_PENDING_CANCEL = 3
OST_PENDING_REPLACE = 4

Ctx = namedtuple("Ctx", "rt inst venue orders pos out px qty meta sig")


def make_signal_table(n_ids: int) -> np.ndarray:
    """Cold: an empty signal table for instrument ids 0..n_ids-1 (every cell missing)."""
    return np.zeros(N_SIGNAL_KINDS * n_ids * n_ids, dtype=SIGNAL_CELL_DTYPE)


def subscribe_signal(sig: np.ndarray, kind: int, max_age_ns: int) -> None:
    """Cold: the strategy reads signal ``kind`` (SIG_*); a value older than ``max_age_ns``
    (the agent's stale_ms) is missing."""
    if not 0 < kind < N_SIGNAL_KINDS:
        raise ValueError(f"signal kind {kind}: must be in 1..{N_SIGNAL_KINDS - 1}")
    if max_age_ns <= 0:
        raise ValueError(f"signal kind {kind}: max_age_ns must be > 0, got {max_age_ns}")
    n = signal_ids(sig)
    sig["max_age_ns"][kind * n * n:(kind + 1) * n * n] = int(max_age_ns)


@njit(cache=True)
def signal_ids(sig):
    """Instrument ids the table covers (its planes are n x n)."""
    return np.int64(round(math.sqrt(sig.shape[0] // N_SIGNAL_KINDS)))


class StrategyState:
    """What one running strategy owns: ``ctx`` (runtime), ``st`` (its state record array) and
    ``p`` (its packed parameters). ``state.st[0]`` / ``state.p[0]`` are the records."""

    __slots__ = ("ctx", "st", "p")

    def __init__(self, ctx, st, p):
        self.ctx, self.st, self.p = ctx, st, p

    @property
    def rt(self):
        return self.ctx.rt[0]

    def arrays(self) -> tuple:
        """Every array of the state (the runtime's, the books, the strategy's, the params)."""
        return (*self.ctx, self.st, self.p)

    @property
    def fields(self):
        """The state record with attribute access (``state.fields.z``), a view: cold code and
        tests read the hooks' named state through it."""
        return self.st.view(np.recarray)[0]

    @property
    def positions(self) -> np.ndarray:
        return self.ctx.pos


# ---- hook defaults ------------------------------------------------------------------------
@njit(cache=True)
def no_market(ctx, st, p, md, n_md, now_ns):
    pass


@njit(cache=True)
def no_exec(ctx, st, p, ex, n_ex, now_ns):
    pass


@njit(cache=True)
def no_timer(ctx, st, p, now_ns):
    pass


@njit(cache=True)
def no_params(ctx, st, p, now_ns):
    pass


@njit(cache=True)
def no_signal(ctx, st, p, sg, n_sg, now_ns):
    pass


def _field_dtype(name: str, value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "i8"
    if isinstance(value, (int, np.integer)):
        return "i8"
    if isinstance(value, (float, np.floating)):
        return "f8"
    raise TypeError(f"kernel parameter {name!r} = {value!r}: only numbers and bools are packed "
                    "for the hooks (derive() a number from it)")


def pack_params(params, derived: dict | None = None) -> np.ndarray:
    """The hooks' parameter record (an array of one): every int / float / bool field of the
    ``params`` dataclass by name, then ``derived``. Strings and other fields are left out
    (a strategy derives the number it needs from them)."""
    values = {}
    for f in dataclasses.fields(params):
        v = getattr(params, f.name)
        if isinstance(v, (bool, int, float, np.integer, np.floating)):
            values[f.name] = v
    for k, v in (derived or {}).items():
        if k in values:
            raise ValueError(f"derive() returns {k!r}, which is already a parameter")
        values[k] = v
    if not values:
        values["_none"] = 0
    dtype = np.dtype([(k, _field_dtype(k, v)) for k, v in values.items()], align=True)
    arr = np.zeros(1, dtype=dtype)
    for k, v in values.items():
        arr[0][k] = int(v) if isinstance(v, (bool, np.bool_)) else v
    return arr


class Strategy:
    """Cold side of a strategy (module docstring). Subclasses set ``kind``, ``Params``,
    ``n_instruments`` (or 0 with ``min_instruments`` / ``max_instruments`` for a kind that
    trades a universe of variable size) and their hooks, and may override ``state_fields``, ``init_state``,
    ``derive``, ``check_instruments`` and ``warm_up``.

    ``params`` (the ``[strategies].params`` table) is validated with ``load_section``: unknown
    keys and bad values raise ``ConfigError`` naming ``strategies.<kind>.params.<key>``.
    """

    kind: str = ""
    Params: type = None
    n_instruments: int = 1        # exact count; 0 = variable, min_instruments..max_instruments
    min_instruments: int = 2      # only when n_instruments == 0
    max_instruments: int = 0      # only when n_instruments == 0; 0 = no upper bound
    max_orders: int = 8
    on_market = staticmethod(no_market)
    on_exec = staticmethod(no_exec)
    on_timer = staticmethod(no_timer)
    on_params = staticmethod(no_params)
    on_signal = staticmethod(no_signal)

    def __init__(self, params: dict, instruments, strategy_id: int, shard: int = 0):
        if not 0 < strategy_id <= MAX_STRATEGY_ID:
            raise ValueError(f"{self.kind}: strategy_id {strategy_id} must be in "
                             f"1..{MAX_STRATEGY_ID}")
        if not 0 <= shard < MAX_SHARDS:
            raise ValueError(f"{self.kind}: shard {shard} must be in 0..{MAX_SHARDS - 1}")
        instruments = list(instruments)
        if not self.instrument_count_ok(len(instruments)):
            keys = ", ".join(i.key for i in instruments) or "none"
            raise ConfigError([f"strategies.{self.kind}.instruments: needs "
                               f"{self.instrument_count_text()} instrument(s), got "
                               f"{len(instruments)} ({keys})"])
        self.params = load_section(self.Params, dict(params or {}),
                                   f"strategies.{self.kind}.params")
        self.instruments = instruments
        self.strategy_id = int(strategy_id)
        self.shard = int(shard)
        self.check_instruments()

    # -- how many instruments (cold) ------------------------------------------------------------
    @classmethod
    def instrument_count_ok(cls, n: int) -> bool:
        """Whether the kind trades ``n`` instruments: exactly ``n_instruments``, or (a
        universe kind, ``n_instruments = 0``) ``min_instruments`` up to ``max_instruments``."""
        if cls.n_instruments > 0:
            return n == cls.n_instruments
        return n >= cls.min_instruments and (cls.max_instruments <= 0
                                             or n <= cls.max_instruments)

    @classmethod
    def instrument_count_text(cls) -> str:
        """The count in words: "exactly 2", "2 or more", "2 to 32"."""
        if cls.n_instruments > 0:
            return f"exactly {cls.n_instruments}"
        if cls.max_instruments <= 0:
            return f"{cls.min_instruments} or more"
        return f"{cls.min_instruments} to {cls.max_instruments}"

    @classmethod
    def smallest_instrument_count(cls) -> int:
        """The fewest instruments the kind trades (what generic tests give it)."""
        return cls.n_instruments if cls.n_instruments > 0 else cls.min_instruments

    # -- what a strategy may override (cold) --------------------------------------------------
    def check_instruments(self) -> None:
        """Reject instrument combinations the model cannot trade."""

    def state_fields(self) -> list:
        """The named state the hooks keep: a numpy structured dtype spec."""
        return []

    def init_state(self, st) -> None:
        """Initial values of the state record ``st`` (zeros before this runs)."""

    def derive(self) -> dict:
        """Kernel parameters computed from ``self.params`` (units converted, alphas, choices
        as numbers); packed after the Params fields."""
        return {}

    def warm_up(self, records) -> None:
        """Prime estimators from historical MARKET_DTYPE records."""

    def updated_params(self, overrides: dict, path: str | None = None):
        """The strategy's parameters with ``overrides`` applied, validated exactly as the
        config is (``ConfigError`` naming ``<path>.<key>`` and the value; every problem at
        once). The strategy itself is unchanged: apply the result with ``kernel_params``."""
        current = {f.name: getattr(self.params, f.name) for f in dataclasses.fields(self.params)}
        unknown = sorted(set(overrides) - set(current))
        where = path or f"strategies.{self.kind}.params"
        if unknown:
            raise ConfigError([f"{where}.{k}: unknown parameter of {self.kind} (known: "
                               f"{', '.join(sorted(current))})" for k in unknown])
        return load_section(self.Params, {**current, **overrides}, where)

    # -- the runtime's side ----------------------------------------------------------------------
    @classmethod
    def hooks(cls) -> tuple:
        return cls.on_market, cls.on_exec, cls.on_timer, cls.on_params, cls.on_signal

    def kernel_params(self, params=None) -> np.ndarray:
        """The packed parameter record for ``params`` (default: the strategy's own)."""
        saved = self.params
        if params is not None:
            self.params = params
        try:
            return pack_params(self.params, self.derive())
        finally:
            self.params = saved

    def make_state(self, px=None, qty=None, meta=None, max_intents: int = 256) -> StrategyState:
        """A fresh state: runtime words, order table, positions, intent buffer, the books
        (``px, qty, meta`` of a ``market.book.L2Book``; a private one sized for these
        instruments if omitted), the state record (``init_state``) and the parameters."""
        if px is None:
            from market.book import L2Book

            px, qty, meta = L2Book(max(i.instrument_id for i in self.instruments), 64).arrays
        n = len(self.instruments)
        rt = np.zeros(1, dtype=RUNTIME_DTYPE)
        rt[0]["strategy_id"] = self.strategy_id
        rt[0]["shard"] = self.shard
        rt[0]["next_coid"] = 1
        rt[0]["n_inst"] = n
        ctx = Ctx(rt, np.array([i.instrument_id for i in self.instruments], dtype=np.int64),
                  np.array([i.venue_id for i in self.instruments], dtype=np.int64),
                  np.zeros(self.max_orders, dtype=ORDER_SLOT_DTYPE), make_positions(n),
                  np.zeros(max_intents, dtype=ORDER_DTYPE), px, qty, meta,
                  make_signal_table(px.shape[0]))
        fields = self.state_fields() or [("_none", "i8")]
        st = np.zeros(1, dtype=np.dtype(fields, align=True))
        self.init_state(st[0])
        return StrategyState(ctx, st, self.kernel_params())

    @classmethod
    def param_docs(cls) -> dict[str, str]:
        """Parameter name -> doc string (for ``--help`` style listings and the docs test)."""
        return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(cls.Params)}


# =============================================================================================
# Hot helpers (called from hooks)
# =============================================================================================
@njit(cache=True)
def local_index(ctx, instrument_id):
    """Local index (0..n-1) of a global instrument id, or -1 if the strategy does not trade it."""
    for i in range(ctx.inst.shape[0]):
        if ctx.inst[i] == instrument_id:
            return i
    return -1


@njit(cache=True)
def position(ctx, i):
    """Position of local instrument i, lots (as the runtime accounted it from fills)."""
    return ctx.pos[i].pos


@njit(cache=True)
def rejects(ctx):
    return ctx.rt[0].rejects


@njit(cache=True)
def last_reject_ns(ctx):
    return ctx.rt[0].last_reject_ns


@njit(cache=True)
def _signal_cell(ctx, kind, inst, other):
    n = signal_ids(ctx.sig)
    if kind <= 0 or kind >= N_SIGNAL_KINDS or inst < 0 or inst >= n or other < 0 or other >= n:
        return np.int64(-1)
    return (kind * n + inst) * n + other


@njit(cache=True)
def _cell_value(ctx, c, now_ns):
    if c < 0:
        return np.nan
    cell = ctx.sig[c]
    if cell.ts_ns == 0 or cell.max_age_ns == 0 or now_ns - cell.ts_ns > cell.max_age_ns:
        return np.nan
    return cell.value


@njit(cache=True)
def signal_value(ctx, kind, instrument_id, now_ns):
    """The newest value of per-instrument signal ``kind`` (SIG_REALIZED_VOL,
    SIG_ORDER_FLOW_IMB) for a global instrument id, or NaN when it is MISSING: not subscribed,
    never received, the agent said it has none, or older than the agent's stale_ms (a dead
    agent's last value goes missing, it never reads as 0)."""
    return _cell_value(ctx, _signal_cell(ctx, kind, instrument_id, 0), now_ns)


@njit(cache=True)
def signal_pair(ctx, kind, instrument_a, instrument_b, now_ns):
    """A pairwise signal (SIG_CORRELATION) of two global instrument ids; NaN when missing."""
    return _cell_value(ctx, _signal_cell(ctx, kind, instrument_a, instrument_b), now_ns)


@njit(cache=True)
def signal_age_ns(ctx, kind, instrument_id, other_id, now_ns):
    """Age of a cell's newest value (ns), -1 when it never arrived."""
    c = _signal_cell(ctx, kind, instrument_id, other_id)
    if c < 0 or ctx.sig[c].ts_ns == 0:
        return np.int64(-1)
    return now_ns - ctx.sig[c].ts_ns


@njit(cache=True)
def emit(ctx, kind, side, order_type, flags, i, coid, px_ticks, qty_lots):
    """Write one intent into ctx.out; False (counted in ``dropped``) if it is full."""
    rt = ctx.rt[0]
    k = rt.n_out
    if k >= ctx.out.shape[0]:
        rt.dropped += 1
        return False
    r = ctx.out[k]
    r.ring_seq = 0
    r.kind = kind
    r.side = side
    r.order_type = order_type
    r.flags = flags
    r.instrument_id = ctx.inst[i]
    r.client_order_id = coid
    r.px_ticks = px_ticks
    r.qty_lots = qty_lots
    r.cause_recv_ts_ns = rt.last_recv_ts
    r.send_ts_ns = 0
    r.strategy_id = rt.strategy_id
    r.reject_code = 0
    r.venue_id = ctx.venue[i]
    rt.n_out = k + 1
    return True


@njit(cache=True)
def order_slot(ctx, coid):
    """Slot of client order id ``coid`` in ctx.orders, -1 if it is not (or no longer) open."""
    if coid == 0:
        return -1
    for s in range(ctx.orders.shape[0]):
        if ctx.orders[s].coid == coid:
            return s
    return -1


@njit(cache=True)
def _free_slot(orders):
    for s in range(orders.shape[0]):
        if orders[s].state == OST_FREE:
            return s
    return -1


@njit(cache=True)
def place(ctx, i, side, order_type, px_ticks, qty_lots, now_ns):
    """A NEW order on local instrument i; its client order id, or 0 if nothing was sent (the
    intent buffer or the order table is full: counted in ``dropped``)."""
    rt = ctx.rt[0]
    if rt.n_out >= ctx.out.shape[0]:
        rt.dropped += 1
        return np.int64(0)
    s = _free_slot(ctx.orders)
    if s < 0:
        rt.dropped += 1
        return np.int64(0)
    coid = (rt.strategy_id << COID_SHIFT) | (rt.shard << SHARD_SHIFT) | rt.next_coid
    rt.next_coid += 1
    o = ctx.orders[s]
    o.coid = coid
    o.inst = i
    o.side = side
    o.px = px_ticks
    o.leaves = qty_lots
    o.state = OST_PENDING_NEW
    o.new_px = px_ticks
    o.new_qty = qty_lots
    o.sent_ns = now_ns
    o.order_type = order_type
    emit(ctx, INTENT_NEW, side, order_type, 0, i, coid, px_ticks, qty_lots)
    return coid


@njit(cache=True)
def cancel(ctx, coid, now_ns):
    """CANCEL a live order; False if it is not live (unknown, or a request is in flight)."""
    s = order_slot(ctx, coid)
    if s < 0:
        return False
    o = ctx.orders[s]
    if o.state != OST_LIVE or ctx.rt[0].n_out >= ctx.out.shape[0]:
        return False
    o.state = OST_PENDING_CANCEL
    o.sent_ns = now_ns
    return emit(ctx, INTENT_CANCEL, o.side, o.order_type, 0, o.inst, o.coid, o.px, o.leaves)


@njit(cache=True)
def replace(ctx, coid, px_ticks, qty_lots, now_ns):
    """REPLACE a live order (same client order id, new price / quantity); False if not live."""
    s = order_slot(ctx, coid)
    if s < 0:
        return False
    o = ctx.orders[s]
    if o.state != OST_LIVE or ctx.rt[0].n_out >= ctx.out.shape[0]:
        return False
    o.state = OST_PENDING_REPLACE
    o.new_px = px_ticks
    o.new_qty = qty_lots
    o.sent_ns = now_ns
    return emit(ctx, INTENT_REPLACE, o.side, o.order_type, 0, o.inst, o.coid, px_ticks,
                qty_lots)


@njit(cache=True)
def cancel_all(ctx, now_ns):
    """CANCEL every live order of the strategy; returns how many were sent."""
    n = 0
    for s in range(ctx.orders.shape[0]):
        if ctx.orders[s].state == OST_LIVE:
            if cancel(ctx, ctx.orders[s].coid, now_ns):
                n += 1
    return n


@njit(cache=True)
def keep_quote(ctx, i, coid, sent_ns, side, want_px, want_qty, move_ticks, qty_slack,
               min_gap_ns, now_ns):
    """One post-only quote on local instrument i brought to (want_px, want_qty); returns (its
    client order id now, 0 if none, and when it was last sent). Placed when there is none,
    cancelled when want_px or want_qty is 0, replaced when its price is off by ``move_ticks``
    or more or its size by more than ``qty_slack`` lots; new and replace at most once per
    ``min_gap_ns`` (rate-limited requotes). While a request is in flight it waits."""
    s = order_slot(ctx, coid)
    can_send = sent_ns == 0 or now_ns - sent_ns >= min_gap_ns
    if s < 0:
        coid = np.int64(0)
        if want_px > 0 and want_qty > 0 and can_send:
            coid = place(ctx, i, side, ORD_POST_ONLY, want_px, want_qty, now_ns)
            if coid != 0:
                sent_ns = now_ns
        return coid, sent_ns
    o = ctx.orders[s]
    if o.state != OST_LIVE:
        return coid, sent_ns
    if want_px <= 0 or want_qty <= 0:
        cancel(ctx, coid, now_ns)
    elif (abs(want_px - o.px) >= move_ticks or abs(want_qty - o.leaves) > qty_slack) \
            and can_send:
        if replace(ctx, coid, want_px, want_qty, now_ns):
            sent_ns = now_ns
    return coid, sent_ns


@njit(cache=True)
def own_extreme(ctx, side):
    """Highest price of our buy orders / lowest of our sells, counting both the working and a
    pending replace price; 0 (buys) or a huge value (sells) when there is none. A quote on
    the other side that would reach it could trade with our own order (self-trade)."""
    best = np.int64(0) if side == SIDE_BUY else np.int64(1 << 62)
    for s in range(ctx.orders.shape[0]):
        o = ctx.orders[s]
        if o.state != OST_FREE and o.side == side:
            for q in (o.px, o.new_px):
                if (side == SIDE_BUY and q > best) or (side == SIDE_SELL and 0 < q < best):
                    best = q
    return best


@njit(cache=True)
def pending_count(ctx):
    """Orders with a request in flight (new / cancel / replace not yet answered)."""
    n = 0
    for s in range(ctx.orders.shape[0]):
        st = ctx.orders[s].state
        if st == OST_PENDING_NEW or st == OST_PENDING_CANCEL or st == OST_PENDING_REPLACE:
            n += 1
    return n


@njit(cache=True)
def open_count(ctx):
    """Orders not yet final (live or with a request in flight)."""
    n = 0
    for s in range(ctx.orders.shape[0]):
        if ctx.orders[s].state != OST_FREE:
            n += 1
    return n


@njit(cache=True)
def open_on(ctx, i):
    """True when local instrument i has an order that is not final."""
    for s in range(ctx.orders.shape[0]):
        if ctx.orders[s].state != OST_FREE and ctx.orders[s].inst == i:
            return True
    return False


# =============================================================================================
# The runtime's bookkeeping (strategies/host.py calls these; hooks never do)
# =============================================================================================
@njit(cache=True)
def note_market(ctx, md, n_md):
    """Remember the newest receive time: the cause stamped on intents of this batch."""
    rt = ctx.rt[0]
    for j in range(n_md):
        if md[j].recv_ts_ns > rt.last_recv_ts:
            rt.last_recv_ts = md[j].recv_ts_ns


@njit(cache=True)
def apply_signals(ctx, sg, n_sg):
    """Store signal records sg[:n_sg] into ctx.sig (newest wins; a pair fills both (a, b) and
    (b, a)). A record without SFLAG_VALID stores NaN: the agent has no value now. Records of
    kinds the strategy does not subscribe to are stored too and stay unreadable."""
    for j in range(n_sg):
        r = sg[j]
        other = np.int64(r.other_inst)
        inst = np.int64(r.instrument_id)
        c = _signal_cell(ctx, np.int64(r.kind), inst, other)
        if c < 0:
            continue
        v = r.value if (r.flags & SFLAG_VALID) != 0 else np.nan
        if r.ts_ns < ctx.sig[c].ts_ns:
            continue   # an older value (a restarted agent's ring read late): keep the newer
        ctx.sig[c].value = v
        ctx.sig[c].ts_ns = r.ts_ns
        ctx.sig[c].n_obs = r.n_obs
        if other != 0:
            c2 = _signal_cell(ctx, np.int64(r.kind), other, inst)
            ctx.sig[c2].value = v
            ctx.sig[c2].ts_ns = r.ts_ns
            ctx.sig[c2].n_obs = r.n_obs


@njit(cache=True)
def apply_execs(ctx, ex, n_ex):
    """Update the order table and positions from this batch's execution reports.

    Returns the number of fill reports applied (PARTIAL + FILL). Reports of other strategies and
    unknown client order ids are skipped (the latter counted).
    """
    rt = ctx.rt[0]
    orders = ctx.orders
    fills = 0
    for j in range(n_ex):
        e = ex[j]
        if e.strategy_id != rt.strategy_id:
            continue
        s = order_slot(ctx, e.client_order_id)
        kind = e.kind
        if kind == EXEC_PARTIAL or kind == EXEC_FILL:
            i = local_index(ctx, e.instrument_id)
            if i >= 0:
                apply_fill(ctx.pos[i], e.side, e.px_ticks, e.qty_lots, e.fee_e9)
                fills += 1
                rt.fills += 1
        if s < 0:
            if kind != EXEC_PARTIAL and kind != EXEC_FILL:
                rt.unknown_exec += 1
            continue
        o = orders[s]
        if kind == EXEC_ACK:
            if o.state == OST_PENDING_NEW:
                o.state = OST_LIVE
        elif kind == EXEC_PARTIAL:
            o.leaves = e.leaves_lots
            if o.state == OST_PENDING_NEW:
                o.state = OST_LIVE
            if e.leaves_lots <= 0:
                _free(o)
        elif kind == EXEC_FILL or kind == EXEC_CANCEL_ACK or kind == EXEC_EXPIRED:
            _free(o)
        elif kind == EXEC_REJECT:
            rt.rejects += 1
            rt.last_reject = e.reject_code
            rt.last_reject_ns = e.venue_ts_ns
            if o.state == OST_PENDING_CANCEL or o.state == OST_PENDING_REPLACE:
                o.state = OST_LIVE   # the request was denied; the order still rests
            else:
                _free(o)
        elif kind == EXEC_CANCEL_REJECT:
            if o.state != OST_FREE:
                o.state = OST_LIVE
        elif kind == EXEC_REPLACE_ACK:
            o.px = o.new_px
            o.leaves = e.leaves_lots if e.leaves_lots > 0 else o.new_qty
            o.state = OST_LIVE
    return fills


@njit(cache=True)
def _free(o):
    o.coid = 0
    o.inst = 0
    o.side = 0
    o.px = 0
    o.leaves = 0
    o.state = OST_FREE
    o.new_px = 0
    o.new_qty = 0
    o.sent_ns = 0
    o.order_type = 0


@njit(cache=True)
def forget_intents(ctx, n):
    """Roll back the order table for intents ctx.out[0:n] that will never be sent (the hook
    that wrote them raised): a NEW's slot is freed, a CANCEL / REPLACE leaves its order LIVE."""
    for j in range(n):
        o = ctx.out[j]
        s = order_slot(ctx, o.client_order_id)
        if s < 0:
            continue
        slot = ctx.orders[s]
        if o.kind == INTENT_NEW:
            if slot.state == OST_PENDING_NEW:
                _free(slot)
        elif slot.state == OST_PENDING_CANCEL or slot.state == OST_PENDING_REPLACE:
            slot.state = OST_LIVE


# =============================================================================================
# Cold: a restarted strategy starts from the journal's view (stages/strategy_host.py on_start)
# =============================================================================================
@njit(cache=True)
def _restore_fills(ctx, fills):
    """Apply fill reports (this strategy's, in router order) to the positions; returns
    (applied, skipped for an instrument the strategy does not trade)."""
    applied = 0
    unknown = 0
    for j in range(fills.shape[0]):
        e = fills[j]
        i = local_index(ctx, e.instrument_id)
        if i < 0:
            unknown += 1
            continue
        apply_fill(ctx.pos[i], e.side, e.px_ticks, e.qty_lots, e.fee_e9)
        applied += 1
    ctx.rt[0].fills += applied
    return applied, unknown


def restore_state(state: StrategyState, orders: np.ndarray, execs: np.ndarray) -> dict:
    """Cold: rebuild the positions and open orders of a fresh ``state`` from journal records:
    ``orders`` (ORDER_DTYPE, every intent the gate decided on, reject_code 0 = approved) and
    ``execs`` (EXEC_DTYPE, every report the router handled, router sequence number in
    ``reserved``), as ``stages.journal.read_journal_orders`` / ``read_journal_exec`` return
    them. Only records of this strategy id count.

    Positions: every EXEC_PARTIAL / EXEC_FILL, in router order, through the same accounting as
    ``apply_execs`` (so average cost, realized PnL and fees come back too).
    Open orders: approved INTENT_NEW without a final report (EXEC_FINAL_KINDS, or a partial
    with nothing left), price and leaves as the last partial / replace ack left them; LIVE once
    the venue answered, PENDING_NEW before; PENDING_CANCEL / PENDING_REPLACE when an approved
    cancel / replace has no answer (replace ack or cancel reject) yet.

    The journal files may still be growing: a report the journal has not written yet is still
    in the strategy's exec ring (the router publishes there first) and is applied live; the
    host skips ring reports with 0 < reserved <= the returned ``last_seq`` (already here).
    The next client order id is moved past every id of this strategy in the journal.

    Returns {"last_seq", "fills", "open_orders", "unknown_instrument", "not_restored"}.
    """
    from shm.records import EXEC_FINAL_KINDS, OFLAG_RISK_SYSTEM

    ctx = state.ctx
    rt = ctx.rt[0]
    table = ctx.orders
    sid = int(rt["strategy_id"])
    last_seq = int(execs["reserved"].max()) if len(execs) else 0
    mine = execs[execs["strategy_id"] == sid]
    mine = mine[np.argsort(mine["reserved"], kind="stable")]
    kinds = mine["kind"]
    fills = np.ascontiguousarray(mine[(kinds == EXEC_PARTIAL) | (kinds == EXEC_FILL)])
    n_fills, unknown = _restore_fills(ctx, fills)

    # the gate's own orders (OFLAG_RISK_SYSTEM: flattening) were never this strategy's: their
    # fills count in its positions above, but their ids and open state are not its to track
    own = orders[(orders["strategy_id"] == sid) & ((orders["flags"] & OFLAG_RISK_SYSTEM) == 0)]
    shard_bits = int(rt["shard"]) << SHARD_SHIFT
    own_shard = own[(own["client_order_id"] & ((1 << COID_SHIFT) - 1) & ~COUNTER_MASK)
                    == shard_bits]
    if len(own_shard):
        counter = int((own_shard["client_order_id"] & COUNTER_MASK).max())
        rt["next_coid"] = max(int(rt["next_coid"]), counter + 1)
    approved = own[own["reject_code"] == 0]
    done = np.isin(kinds, EXEC_FINAL_KINDS) | ((kinds == EXEC_PARTIAL) & (mine["leaves_lots"] <= 0))
    final = set(mine["client_order_id"][done].tolist())
    news = approved[approved["kind"] == INTENT_NEW]
    news = news[~np.isin(news["client_order_id"], list(final))]
    coids = news["client_order_id"]
    answers = mine[np.isin(mine["client_order_id"], coids)]
    requests = approved[np.isin(approved["kind"], (INTENT_CANCEL, INTENT_REPLACE))
                        & np.isin(approved["client_order_id"], coids)]
    n_open = not_restored = 0
    placed = set()
    for o in news:
        coid = int(o["client_order_id"])
        i = int(local_index(ctx, int(o["instrument_id"])))
        if coid in placed:
            continue
        if i < 0:
            unknown += 1
            continue
        free = np.flatnonzero(table["state"] == OST_FREE)
        if len(free) == 0:
            not_restored += 1
            continue
        px, leaves, acked, answered = int(o["px_ticks"]), int(o["qty_lots"]), False, 0
        for e in answers[answers["client_order_id"] == coid]:
            k = int(e["kind"])
            if k == EXEC_ACK:
                acked = True
            elif k == EXEC_PARTIAL:
                leaves, acked = int(e["leaves_lots"]), True
            elif k == EXEC_REPLACE_ACK:
                px, acked, answered = int(e["px_ticks"]), True, answered + 1
                leaves = int(e["leaves_lots"]) if e["leaves_lots"] > 0 else int(e["qty_lots"])
            elif k == EXEC_CANCEL_REJECT:
                answered += 1
        reqs = requests[requests["client_order_id"] == coid]
        s = int(free[0])
        slot = table[s:s + 1]
        slot[:] = 0
        slot["coid"] = coid
        slot["inst"] = i
        slot["side"] = int(o["side"])
        slot["px"] = px
        slot["leaves"] = leaves
        slot["new_px"] = px
        slot["new_qty"] = leaves
        slot["sent_ns"] = int(o["send_ts_ns"])
        slot["order_type"] = int(o["order_type"])
        slot["state"] = OST_LIVE if acked else OST_PENDING_NEW
        if len(reqs) > answered:   # one request in flight at a time: the last one is open
            r = reqs[-1]
            slot["sent_ns"] = int(r["send_ts_ns"])
            if r["kind"] == INTENT_CANCEL:
                slot["state"] = OST_PENDING_CANCEL
            else:
                slot["state"] = OST_PENDING_REPLACE
                slot["new_px"] = int(r["px_ticks"])
                slot["new_qty"] = int(r["qty_lots"])
        placed.add(coid)
        n_open += 1
    return {"last_seq": last_seq, "fills": int(n_fills), "open_orders": n_open,
            "unknown_instrument": int(unknown), "not_restored": not_restored}


__all__ = ["COID_SHIFT", "Ctx", "HALT_NAMES", "ORDER_SLOT_DTYPE", "POSITION_DTYPE",
           "RUNTIME_DTYPE", "SIGNAL_CELL_DTYPE", "SIGNAL_DTYPE", "Strategy", "StrategyState",
           "cancel", "cancel_all", "emit", "local_index", "open_count", "open_on", "order_slot",
           "pending_count", "place", "position", "replace", "restore_state", "signal_age_ns",
           "signal_pair", "signal_value", "subscribe_signal"]
