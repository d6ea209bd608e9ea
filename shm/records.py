"""Every record layout and every MSG_* / REJECT_* / flag constant of hftfarm (the only place).

Runs in every process; the dtypes are used on the hot path (numba sees them as Records), this
module itself is imported once at start-up.

Units, everywhere: prices are integer ticks of the instrument (``px_ticks``), quantities integer
lots (``qty_lots``), times integer nanoseconds of CLOCK_REALTIME (``*_ts_ns``; one clock that all
processes share, so a receive time stamped in the feed process can be subtracted in the router).

Ring contract: the first 8 bytes of every record (``ring_seq``) belong to the ring. The ring
writes the record's sequence number + 1 there *last*, with a release store, and a reader spins on
that word inside the slot itself: one cache line moves per hop. Writers of records leave it 0.

Every record is 64 bytes (or a multiple, cache-line aligned) so a slot never straddles lines.
"""
from __future__ import annotations

import zlib

import numpy as np

CACHE_LINE = 64

# ---------------------------------------------------------------------------------------------
# Market record (feed / venue -> strategies, risk gate, journal): 64 bytes
#
#   0        8    9    10        12             16             24             32
#   +--------+----+----+---------+--------------+--------------+--------------+
#   |ring_seq|kind|side|  flags  |instrument_id |  exch_ts_ns  |  recv_ts_ns  |
#   +--------+----+----+---------+--------------+--------------+--------------+
#   32             40             48             56             64
#   +--------------+--------------+--------------+--------------+
#   |   px_ticks   |   qty_lots   |  aux0        |  aux1        |
#   +--------------+--------------+--------------+--------------+
#
#   kind            px_ticks      qty_lots        aux0                 aux1
#   MSG_TRADE       trade px      trade qty       venue trade id       -          side = aggressor
#   MSG_TOP         bid px        bid qty         ask px               ask qty
#   MSG_LEVEL       level px      new total qty   venue update id      level index or -1
#                   (qty 0 removes the level; side says bid or ask)
#   MSG_SNAP_START  -             -               venue update id      levels to follow
#   MSG_SNAP_END    -             -               venue update id      -
#   MSG_STATUS      -             -               STATUS_* code        reason (GAP_*, ...)
#   MSG_NEWS        -             sentiment x1e4  headline id          -          (signed)
#   MSG_CLEAR       -             -               venue update id      -          (drop the book)
# ---------------------------------------------------------------------------------------------
MARKET_DTYPE = np.dtype(
    [
        ("ring_seq", "<i8"),
        ("kind", "u1"),
        ("side", "u1"),
        ("flags", "<u2"),
        ("instrument_id", "<u4"),
        ("exch_ts_ns", "<i8"),
        ("recv_ts_ns", "<i8"),
        ("px_ticks", "<i8"),
        ("qty_lots", "<i8"),
        ("aux0", "<i8"),
        ("aux1", "<i8"),
    ],
    align=True,
)

MSG_TRADE = 1
MSG_TOP = 2
MSG_LEVEL = 3
MSG_SNAP_START = 4
MSG_SNAP_END = 5
MSG_STATUS = 6
MSG_NEWS = 7
MSG_CLEAR = 8
MARKET_KIND_NAMES = {
    MSG_TRADE: "trade", MSG_TOP: "top", MSG_LEVEL: "level", MSG_SNAP_START: "snap_start",
    MSG_SNAP_END: "snap_end", MSG_STATUS: "status", MSG_NEWS: "news", MSG_CLEAR: "clear",
}

# MSG_STATUS codes (aux0) and reasons (aux1)
STATUS_BOOK_VALID = 1
STATUS_BOOK_INVALID = 2
STATUS_FEED_UP = 3
STATUS_FEED_DOWN = 4
STATUS_HALTED = 5
STATUS_TRADING = 6
STATUS_UNCHANGED = 7    # a venue event that changed nothing visible (e.g. a LOBSTER message
                        # below the recorded depth): marks the end of its batch

REASON_NONE = 0
REASON_GAP = 1            # sequence / update-id gap
REASON_CHECKSUM = 2       # venue checksum mismatch
REASON_STALE = 3          # no update within the staleness limit
REASON_CROSSED = 4        # local book crossed or locked
REASON_RECONNECT = 5      # connection lost
REASON_LAPPED = 6         # a broadcast-ring reader was lapped and lost records
REASON_SNAPSHOT = 7       # fresh snapshot applied (with STATUS_BOOK_VALID)
REASON_NAMES = {
    REASON_NONE: "none", REASON_GAP: "gap", REASON_CHECKSUM: "checksum", REASON_STALE: "stale",
    REASON_CROSSED: "crossed", REASON_RECONNECT: "reconnect", REASON_LAPPED: "lapped",
    REASON_SNAPSHOT: "snapshot",
}

# Market record flags (bit set)
MFLAG_SNAPSHOT = 1 << 0     # this level belongs to a snapshot (between SNAP_START and SNAP_END)
MFLAG_LAST_IN_BATCH = 1 << 1  # last record of one venue message: the book is consistent here
MFLAG_REPLAY = 1 << 2       # from a recording, not a live connection

# ---------------------------------------------------------------------------------------------
# Sides, order types
# ---------------------------------------------------------------------------------------------
SIDE_NONE = 0
SIDE_BUY = 1   # bid side of a book; buy order; aggressor bought
SIDE_SELL = 2  # ask side of a book; sell order; aggressor sold

ORD_LIMIT = 1
ORD_MARKET = 2
ORD_IOC = 3        # limit, immediate-or-cancel
ORD_FOK = 4        # limit, fill-or-kill
ORD_POST_ONLY = 5  # limit, rejected if it would take
ORDER_TYPE_NAMES = {ORD_LIMIT: "limit", ORD_MARKET: "market", ORD_IOC: "ioc", ORD_FOK: "fok",
                    ORD_POST_ONLY: "post_only"}

# ---------------------------------------------------------------------------------------------
# Order intent (strategy -> risk gate; approved order: risk gate -> router): 64 bytes
#
#   0        8    9    10   11   12             16                  24
#   +--------+----+----+----+----+--------------+-------------------+
#   |ring_seq|kind|side|type|flag|instrument_id |  client_order_id  |
#   +--------+----+----+----+----+--------------+-------------------+
#   24             32             40                  48             56      58      60     64
#   +--------------+--------------+-------------------+--------------+-------+-------+------+
#   |   px_ticks   |   qty_lots   | cause_recv_ts_ns  |  send_ts_ns  |strat  |reject |venue |
#   +--------------+--------------+-------------------+--------------+-------+-------+------+
#
#   client_order_id  unique per strategy (the high 16 bits are the strategy id); CANCEL and
#                    REPLACE name the order they act on by it.
#   cause_recv_ts_ns receive time of the market record that caused this intent (tick-to-trade).
#   send_ts_ns       when this record was published on its current hop (each hop rewrites it).
#   reject_code      0 in intents; REJECT_* when the gate sends a denial back as an exec report.
# ---------------------------------------------------------------------------------------------
ORDER_DTYPE = np.dtype(
    [
        ("ring_seq", "<i8"),
        ("kind", "u1"),
        ("side", "u1"),
        ("order_type", "u1"),
        ("flags", "u1"),
        ("instrument_id", "<u4"),
        ("client_order_id", "<i8"),
        ("px_ticks", "<i8"),
        ("qty_lots", "<i8"),
        ("cause_recv_ts_ns", "<i8"),
        ("send_ts_ns", "<i8"),
        ("strategy_id", "<u2"),
        ("reject_code", "<u2"),
        ("venue_id", "<u4"),
    ],
    align=True,
)

INTENT_NEW = 1
INTENT_CANCEL = 2
INTENT_REPLACE = 3   # new px_ticks / qty_lots for an existing client_order_id
INTENT_CANCEL_ALL = 4  # every open order of strategy_id (instrument_id 0 = all instruments)
INTENT_KIND_NAMES = {INTENT_NEW: "new", INTENT_CANCEL: "cancel", INTENT_REPLACE: "replace",
                     INTENT_CANCEL_ALL: "cancel_all"}

OFLAG_REDUCE_ONLY = 1 << 0   # set by a strategy on exposure-reducing orders (gate verifies)
OFLAG_RISK_SYSTEM = 1 << 1   # generated by the risk gate itself (kill switch, flatten)

# ---------------------------------------------------------------------------------------------
# Execution report (venue/router -> strategies, risk gate, journal; gate -> strategy for
# denials): 128 bytes, two cache lines
#
#   0        8    9    10   11   12             16                  24                 32
#   +--------+----+----+----+----+--------------+-------------------+------------------+
#   |ring_seq|kind|side|liq |flag|instrument_id |  client_order_id  |  venue_order_id  |
#   +--------+----+----+----+----+--------------+-------------------+------------------+
#   32             40             48              56              64
#   +--------------+--------------+---------------+---------------+
#   | px_ticks     |  qty_lots    |  leaves_lots  |  cum_qty_lots |
#   +--------------+--------------+---------------+---------------+
#   64             72                 80             88           96     98     100    104
#   +--------------+------------------+--------------+------------+------+------+------+
#   | venue_ts_ns  | cause_recv_ts_ns |  send_ts_ns  |  fee_e9    |strat |reject|venue |
#   +--------------+------------------+--------------+------------+------+------+------+
#   104            112            120            128
#   +--------------+--------------+--------------+
#   | order_px     | trade_id     |  reserved    |
#   +--------------+--------------+--------------+
#
#   px_ticks/qty_lots  fill price and fill quantity (FILL, PARTIAL); order price/qty otherwise
#   fee_e9             fee paid in quote currency x 1e9 (negative = rebate received)
#   liquidity          LIQ_MAKER / LIQ_TAKER for fills
# ---------------------------------------------------------------------------------------------
EXEC_DTYPE = np.dtype(
    [
        ("ring_seq", "<i8"),
        ("kind", "u1"),
        ("side", "u1"),
        ("liquidity", "u1"),
        ("flags", "u1"),
        ("instrument_id", "<u4"),
        ("client_order_id", "<i8"),
        ("venue_order_id", "<i8"),
        ("px_ticks", "<i8"),
        ("qty_lots", "<i8"),
        ("leaves_lots", "<i8"),
        ("cum_qty_lots", "<i8"),
        ("venue_ts_ns", "<i8"),
        ("cause_recv_ts_ns", "<i8"),
        ("send_ts_ns", "<i8"),
        ("fee_e9", "<i8"),
        ("strategy_id", "<u2"),
        ("reject_code", "<u2"),
        ("venue_id", "<u4"),
        ("order_px_ticks", "<i8"),
        ("trade_id", "<i8"),
        ("reserved", "<i8"),
    ],
    align=True,
)

EXEC_ACK = 1
EXEC_REJECT = 2          # order rejected (by the venue, or denied by the risk gate)
EXEC_PARTIAL = 3         # partial fill, order stays open
EXEC_FILL = 4            # final fill
EXEC_CANCEL_ACK = 5      # cancelled (on request, IOC remainder, kill switch)
EXEC_CANCEL_REJECT = 6   # cancel/replace refused (e.g. already filled)
EXEC_REPLACE_ACK = 7
EXEC_EXPIRED = 8         # IOC/FOK remainder expired without a request
EXEC_KIND_NAMES = {
    EXEC_ACK: "ack", EXEC_REJECT: "reject", EXEC_PARTIAL: "partial", EXEC_FILL: "fill",
    EXEC_CANCEL_ACK: "cancel_ack", EXEC_CANCEL_REJECT: "cancel_reject",
    EXEC_REPLACE_ACK: "replace_ack", EXEC_EXPIRED: "expired",
}
# Kinds after which an order has no further reports.
EXEC_FINAL_KINDS = (EXEC_REJECT, EXEC_FILL, EXEC_CANCEL_ACK, EXEC_EXPIRED)

LIQ_NONE = 0
LIQ_MAKER = 1
LIQ_TAKER = 2

EFLAG_FROM_RISK = 1 << 0   # the report was produced by the risk gate (a denial), not a venue
EFLAG_RECONCILE = 1 << 1   # produced while reconciling after a restart

# ---------------------------------------------------------------------------------------------
# Reject / denial reasons (reject_code in ORDER_DTYPE and EXEC_DTYPE). Risk checks return these.
# ---------------------------------------------------------------------------------------------
REJECT_NONE = 0
REJECT_MAX_ORDER_QTY = 1
REJECT_MAX_NOTIONAL = 2
REJECT_MAX_POSITION = 3
REJECT_PRICE_BAND = 4
REJECT_MAX_OPEN_ORDERS = 5
REJECT_ORDER_RATE = 6
REJECT_CANCEL_RATE = 7
REJECT_DAILY_LOSS = 8
REJECT_KILL_SWITCH = 9
REJECT_DRAWDOWN = 10
REJECT_REDUCE_ONLY = 11      # gate REDUCING and the order would add exposure
REJECT_SELF_TRADE = 12       # would cross the strategy's (or instance's) own resting order
REJECT_NO_REFERENCE = 13     # no valid reference price (book invalid or never seen)
REJECT_UNKNOWN_ORDER = 14    # cancel/replace of an order that is not open
REJECT_POST_ONLY = 15        # venue: post-only order would take
REJECT_FOK = 16              # venue: fill-or-kill could not fill completely
REJECT_NO_LIQUIDITY = 17     # venue: market order met an empty side
REJECT_INVALID = 18          # malformed: qty <= 0, price <= 0, unknown instrument or type
REJECT_RATE_LIMIT = 19       # router: venue rate limit
REJECT_VENUE_DOWN = 20       # router: venue not connected
REJECT_HALTED = 21           # gate HALTED
REJECT_ORDER_TO_TRADE = 22   # order-to-trade ratio limit
REJECT_NAMES = {
    REJECT_NONE: "none", REJECT_MAX_ORDER_QTY: "max_order_qty", REJECT_MAX_NOTIONAL: "max_notional",
    REJECT_MAX_POSITION: "max_position", REJECT_PRICE_BAND: "price_band",
    REJECT_MAX_OPEN_ORDERS: "max_open_orders", REJECT_ORDER_RATE: "order_rate",
    REJECT_CANCEL_RATE: "cancel_rate", REJECT_DAILY_LOSS: "daily_loss",
    REJECT_KILL_SWITCH: "kill_switch", REJECT_DRAWDOWN: "drawdown",
    REJECT_REDUCE_ONLY: "reduce_only", REJECT_SELF_TRADE: "self_trade",
    REJECT_NO_REFERENCE: "no_reference", REJECT_UNKNOWN_ORDER: "unknown_order",
    REJECT_POST_ONLY: "post_only", REJECT_FOK: "fok", REJECT_NO_LIQUIDITY: "no_liquidity",
    REJECT_INVALID: "invalid", REJECT_RATE_LIMIT: "rate_limit", REJECT_VENUE_DOWN: "venue_down",
    REJECT_HALTED: "halted", REJECT_ORDER_TO_TRADE: "order_to_trade",
}

# ---------------------------------------------------------------------------------------------
# Signal record (signal agent -> the strategy hosts subscribed to it, broadcast ring sig-<agent>):
# 64 bytes. A signal is a state, not an event: a reader that is lapped, or joins late, loses
# nothing but older values of the same cells.
#
#   0        8         10        12             16             24             32
#   +--------+---------+---------+--------------+--------------+--------------+
#   |ring_seq|  kind   |  flags  |instrument_id |    ts_ns     |cause_recv_ns |
#   +--------+---------+---------+--------------+--------------+--------------+
#   32             40             48             56             64
#   +--------------+--------------+--------------+--------------+
#   |    value     |  other_inst  |    n_obs     |  agent_seq   |
#   +--------------+--------------+--------------+--------------+
#
#   kind                  value (float64)                              other_inst
#   SIG_REALIZED_VOL      realized volatility of the mid, annualised   0
#                         (365-day year; a fraction: 0.6 = 60 %)
#   SIG_ORDER_FLOW_IMB    order-flow imbalance over the publish period, 0
#                         lots (Cont, Kukanov & Stoikov e_n summed)
#   SIG_CORRELATION       Pearson correlation of the sampled mids' log   the pair's other id
#                         returns over the agent's window, in [-1, 1]
#
#   flags & SFLAG_VALID   0: the agent has no value for this cell now (book invalid, window not
#                         full enough); value is NaN. A subscriber sees such a cell, a cell never
#                         written and a cell older than the agent's stale_ms as MISSING, never 0.
#   ts_ns                 when the agent computed it (the shared clock); the age subscribers judge
#   cause_recv_ns         receive time of the newest market record the agent had read
#   n_obs                 observations behind the value (returns in the window, e_n summed)
# ---------------------------------------------------------------------------------------------
SIGNAL_DTYPE = np.dtype(
    [
        ("ring_seq", "<i8"),
        ("kind", "<u2"),
        ("flags", "<u2"),
        ("instrument_id", "<u4"),
        ("ts_ns", "<i8"),
        ("cause_recv_ns", "<i8"),
        ("value", "<f8"),
        ("other_inst", "<i8"),
        ("n_obs", "<i8"),
        ("agent_seq", "<i8"),
    ],
    align=True,
)

SIG_REALIZED_VOL = 1
SIG_ORDER_FLOW_IMB = 2
SIG_CORRELATION = 3
N_SIGNAL_KINDS = 4     # kind codes 1..3; the strategies' signal table keeps a plane per code
SIGNAL_KIND_CODES = {"realized_vol": SIG_REALIZED_VOL, "order_flow_imbalance": SIG_ORDER_FLOW_IMB,
                     "correlation": SIG_CORRELATION}
SFLAG_VALID = 1

# ---------------------------------------------------------------------------------------------
# Control / heartbeat record (controller <-> stages, risk state broadcasts): 64 bytes
#
#   0        8    9    10        12             16             24
#   +--------+----+----+---------+--------------+--------------+
#   |ring_seq|kind|pad |stage_id |    arg_u4    |    ts_ns     |
#   +--------+----+----+---------+--------------+--------------+
#   24             32             40             48             56             64
#   +--------------+--------------+--------------+--------------+--------------+
#   |    arg0      |    arg1      |    arg2      |    arg3      |   reserved   |
#   +--------------+--------------+--------------+--------------+--------------+
# ---------------------------------------------------------------------------------------------
CONTROL_DTYPE = np.dtype(
    [
        ("ring_seq", "<i8"),
        ("kind", "u1"),
        ("pad", "u1"),
        ("stage_id", "<u2"),
        ("arg_u4", "<u4"),
        ("ts_ns", "<i8"),
        ("arg0", "<i8"),
        ("arg1", "<i8"),
        ("arg2", "<i8"),
        ("arg3", "<i8"),
        ("reserved", "<i8"),
    ],
    align=True,
)

CTRL_HEARTBEAT = 1
CTRL_STOP = 2          # finish the current batch, drain, exit
CTRL_KILL = 3          # kill switch: halt and cancel all (arg0 = 1: flatten too)
CTRL_RESUME = 4        # leave HALTED after the operator says so
RESUME_OPERATOR = 1    # CTRL_RESUME arg0 to the gate: the operator's resume (lifts a loss latch);
                       # 0: only the fail-closed kill switch of a restart, after reconciliation
CTRL_RISK_STATE = 5    # risk gate -> strategies: arg0 = RISK_* state
CTRL_CANCEL_ALL = 6    # strategy host: cancel every open order of this strategy
CTRL_RECONCILE = 7     # after a restart: arg0 = phase
CTRL_PARAMS = 8        # strategy host: a new parameter set is in <run dir>/params/<strategy>.json
                       # (arg0 = its version); applied between batches, then on_params runs

RISK_ACTIVE = 0
RISK_REDUCING = 1
RISK_HALTED = 2
RISK_STATE_NAMES = {RISK_ACTIVE: "ACTIVE", RISK_REDUCING: "REDUCING", RISK_HALTED: "HALTED"}

# ---------------------------------------------------------------------------------------------
# Instrument table (symbol, venue, tick and lot size -> instrument id), shared by all processes.
#
# A decimal price p is p = px_ticks * tick_mant * 10**-tick_exp, exactly; likewise quantities
# with lot_mant / lot_exp. Keeping (mantissa, exponent) pairs instead of floats lets a feed
# handler turn "27123.45" into ticks with integer arithmetic only.
# ---------------------------------------------------------------------------------------------
INSTRUMENT_DTYPE = np.dtype(
    [
        ("instrument_id", "<u4"),
        ("venue_id", "<u4"),
        ("symbol", "S24"),
        ("venue", "S16"),
        ("tick_mant", "<i8"),
        ("tick_exp", "<i4"),
        ("lot_exp", "<i4"),
        ("lot_mant", "<i8"),
        ("group_id", "<u4"),   # the same asset on several venues shares a group id
        ("pad", "<u4"),
    ],
    align=True,
)

RECORD_DTYPES = {
    "market": MARKET_DTYPE,
    "order": ORDER_DTYPE,
    "exec": EXEC_DTYPE,
    "control": CONTROL_DTYPE,
    "signal": SIGNAL_DTYPE,
}


def dtype_name(dtype: np.dtype) -> str:
    for name, dt in RECORD_DTYPES.items():
        if dt == dtype:
            return name
    return "custom"


def layout_description(dtype: np.dtype) -> str:
    """A canonical text of a record layout: field names, offsets, formats and the item size.

    Two dtypes describe the same bytes exactly when their descriptions are equal.
    """
    parts = [f"itemsize={dtype.itemsize}"]
    for name in dtype.names:
        fdt, offset = dtype.fields[name][:2]
        parts.append(f"{name}@{offset}:{fdt.str}")
    return ";".join(parts)


def layout_hash(dtype: np.dtype) -> int:
    """A 63-bit hash of ``layout_description`` (positive, so it fits an int64 header word)."""
    text = layout_description(dtype).encode()
    return ((zlib.crc32(text) << 31) ^ zlib.adler32(text)) & 0x7FFF_FFFF_FFFF_FFFF


def layout_diff(expected: np.dtype, actual_description: str) -> str:
    """Human-readable differences between a dtype and a stored layout description."""
    mine = layout_description(expected).split(";")
    theirs = actual_description.split(";")
    only_mine = [f for f in mine if f not in theirs]
    only_theirs = [f for f in theirs if f not in mine]
    out = []
    if only_theirs:
        out.append("segment has " + ", ".join(only_theirs))
    if only_mine:
        out.append("expected " + ", ".join(only_mine))
    return "; ".join(out) or "no field differs"


def _check_layouts() -> None:
    for name, dt in RECORD_DTYPES.items():
        assert dt.itemsize % CACHE_LINE == 0, f"{name} record is {dt.itemsize} bytes"
        assert dt.names[0] == "ring_seq" and dt.fields["ring_seq"][1] == 0, name


_check_layouts()
