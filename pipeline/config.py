"""config.toml -> frozen, validated dataclasses. Cold path (controller, CLI, backtest).

Every error names the key path and the bad value, e.g.
``config.toml: risk.max_order_qty_lots = -5: must be > 0``. Unknown keys are rejected (a typo
in a risk limit must not silently fall back to a default; a near miss gets a "did you mean").
Numbers must be finite. All errors are collected and reported together, so one ``python run.py
check-config`` run shows every problem: a key that is wrong marks its path broken, and a cross
check (``validate(broken)``) skips only what reads a broken key. ``Config.validate`` ends by
building what ``start`` builds (pipeline/buildcheck.py), so a config that loads can start.

Sections are plain dataclasses declared with the schema primitives of common/schema.py
(``opt``, ``req``, ``load_section``, ``ConfigError``), which a strategy uses for its parameters
too, so both report problems in the same words.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

from common.runtime import DEFAULT_BOOK_LEVELS, DEFAULT_TIMER_MS, MAX_SHARDS
from common.schema import ConfigError, did_you_mean, load_section, opt, req, unknown_instruments
from market.flowparams import FlowParams
from pipeline.buildcheck import build_problems
from pipeline.farm_config import BudgetConfig, SignalConfig, farm_problems
from pipeline.paths import INSTANCE_NAME_PATTERN

_FLOW = FlowParams.default()   # the calibrated defaults of the simulated market

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"


# ------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------
IDLE_CHOICES = ("busy-spin", "yield", "backoff", "blocking", "hybrid")
LAYOUTS = ("dedicated", "composite")
MAX_SPIN_US = 1_000_000.0   # one second of spinning before a park is certainly a typo
VENUE_KINDS = ("sim", "binance", "coinbase", "coinbase-at", "kraken", "kraken-v1")
VENUE_MODES = ("paper", "live")
KRAKEN_DEPTHS = (10, 25, 100, 500, 1000)
NAME_RE = r"[A-Za-z][A-Za-z0-9_\-]{0,31}"
# Upper bounds: a value beyond them cannot be built (arrays sized by it, int64 nanoseconds,
# float64 exactness) or is certainly a typo; each names its reason where it is used.
MAX_LATENCY_US = 10_000_000.0          # 10 s of simulated latency
MAX_RATE_PER_S = 1_000_000             # rate-limit windows hold one slot per order per second
MAX_EVENT_RATE_PER_S = 10_000_000.0
MAX_SIM_DURATION_S = 8_640_000.0       # 100 days: simulated time is float ns, exact below 2**53
MAX_LOTS = 1 << 53                     # lots travel as float64 in the risk limits: exact below
MAX_OPEN_ORDERS = 100_000              # the gate's open-order table has a row per order
MAX_MS = 3_600_000                     # one hour
MAX_MARKET_CAPACITY = 1 << 24          # records per market ring (1 GiB of 64-byte records)
MAX_ORDER_CAPACITY = 1 << 22           # records per order-path ring (the journal's are 4x)
MAX_FLUSH_RECORDS = 1 << 20
# tick and lot sizes: the instrument table keeps them as int64 mantissa * 10**-exp, and the
# risk gate multiplies a tick's and a lot's mantissa (int64): both stay far from overflow
MIN_SIZE = Decimal("1e-18")
MAX_SIZE = Decimal("1e6")


@dataclass(frozen=True)
class InstanceConfig:
    name: str = opt("default", "instance name; shared-memory segments are /hftfarm.<name>.*",
                    pattern=INSTANCE_NAME_PATTERN)
    run_dir: str = opt("runs", "where journals, latency dumps and reports go (per instance)")
    socket: str = opt("", "control socket path; default <run_dir>/<name>/control.sock")
    allow_live: bool = opt(False, "must be true before any stage connects to a real venue")
    latency_log_s: float = opt(10.0, "one interval per this many seconds in the latency "
                               "interval logs <run_dir>/<name>/latency/<hist>.hlog "
                               "(HdrHistogram log format); 0 = no interval logs", ge=0,
                               le=86400)
    controller_cpu: Optional[int] = opt(None, "CPU the controller (and its monitoring "
                                        "threads) is pinned to, off the hot core (None: any)",
                                        ge=0)
    lock_memory: bool = opt(False, "mlockall() in every stage (reported, not fatal, if denied)")
    realtime_priority: int = opt(0, "SCHED_FIFO priority for stages (1-98; 99 is the kill switch's); 0 = normal scheduling",
                                 ge=0, le=98)


@dataclass(frozen=True)
class VenueConfig:
    name: str = req("venue name used by instruments and strategies", pattern=NAME_RE)
    kind: str = req("sim (simulated, default) or a live adapter", choices=VENUE_KINDS)
    maker_fee_bps: float = opt(-0.5, "maker fee in basis points of notional (negative = rebate)",
                               ge=-1000, le=1000)
    taker_fee_bps: float = opt(2.0, "taker fee in basis points of notional", ge=-1000, le=1000)
    md_latency_us: float = opt(50.0, "market-data latency, constant part (microseconds)", ge=0,
                               le=MAX_LATENCY_US)
    md_jitter_us: float = opt(20.0, "market-data latency, mean of the exponential jitter", ge=0,
                              le=MAX_LATENCY_US)
    order_latency_us: float = opt(100.0, "order-entry latency, constant part (microseconds)", ge=0,
                                  le=MAX_LATENCY_US)
    order_jitter_us: float = opt(30.0, "order-entry latency, mean of the exponential jitter", ge=0,
                                 le=MAX_LATENCY_US)
    rate_limit_per_s: int = opt(100, "orders per second the router sends to this venue", gt=0,
                                le=MAX_RATE_PER_S)
    ws_url: str = opt("", "websocket endpoint (live kinds only; default: the venue's public "
                      "endpoint)")
    rest_url: str = opt("", "REST endpoint for snapshots (live kinds only; Binance)")
    stale_after_ms: int = opt(10_000, "live kinds: a book without a message (or, on Binance, a "
                              "connection without a frame) for this long is invalid until it "
                              "resyncs", gt=0, le=MAX_MS)
    depth: int = opt(10, "live kinds: book depth subscribed (Kraken: 10, 25, 100, 500 or "
                     "1000)", ge=1, le=5000)
    resync_timeout_ms: int = opt(10_000, "live kinds: a resubscribed book still invalid after "
                                 "this long reconnects the feed", gt=0, le=MAX_MS)
    backoff_max_ms: int = opt(30_000, "live kinds: longest wait between reconnects (jittered "
                              "exponential backoff from 500 ms)", ge=500, le=MAX_MS)
    cpu: Optional[int] = opt(None, "live kinds: CPU the venue's feed stage is pinned to "
                             "(default: [stages] feed.cpu)", ge=0)
    mode: Optional[str] = opt(None, "live kinds: paper (the default: the real feed, orders rest "
                              "virtually in the real book, nothing is sent to the venue) or "
                              "live (real order entry; not built yet: every order is refused)",
                              choices=VENUE_MODES)
    queue_model: str = opt("probabilistic", "paper mode: queue position of resting orders "
                           "(market/replayvenue.py)", choices=("conservative", "probabilistic"))

    @property
    def paper(self) -> bool:
        """A live kind whose orders the paper venue plays (stages/feed_live.py)."""
        return self.kind != "sim" and (self.mode or "paper") == "paper"

    def validate(self, broken):
        live = not broken("kind") and self.kind != "sim"
        for key, schemes in (("ws_url", ("ws", "wss")), ("rest_url", ("http", "https"))):
            url = getattr(self, key)
            if broken(key) or not url:
                continue
            if not broken("kind") and not live:
                yield key, url, "is for live kinds only (this venue is simulated)"
            elif url.split("://", 1)[0] not in schemes or "://" not in url:
                yield key, url, f"must be a {' or '.join(s + '://' for s in schemes)} URL"
        if not broken("kind") and not live and not broken("cpu") and self.cpu is not None:
            yield ("cpu", self.cpu, "is for live kinds only (simulated venues run in the venue "
                   "stage: [stages] venue.cpu)")
        if not broken("kind") and not live and not broken("mode") and self.mode is not None:
            yield ("mode", self.mode, "is for live kinds only (a simulated venue fills orders "
                   "itself; paper mode is a live venue's real feed with simulated fills)")
        if live and self.kind.startswith("kraken") and not broken("depth") \
                and self.depth not in KRAKEN_DEPTHS:
            yield ("depth", self.depth, f"Kraken accepts only "
                   f"{', '.join(map(str, KRAKEN_DEPTHS))} (anything else is refused)")


@dataclass(frozen=True)
class InstrumentConfig:
    symbol: str = req("symbol as the venue writes it, e.g. BTC-USD or BTCUSDT")
    venue: str = req("name of a [[venues]] entry")
    tick_size: Decimal = req('price increment as a decimal string, e.g. "0.01"')
    lot_size: Decimal = req('quantity increment as a decimal string, e.g. "0.0001"')
    group: str = opt("", "asset group: the same asset on several venues shares a group")
    start_price: str = opt("100", "simulated venues: the latent price at start (decimal string)")
    volatility_bps: float = opt(_FLOW.vol_bps, "simulated venues: latent price volatility per "
                                "second, bps (default: the calibrated vol_bps of "
                                "market/calibrated.json)", ge=0, le=10_000)

    def validate(self, broken):
        for name in ("tick_size", "lot_size"):
            d = getattr(self, name)
            if not broken(name) and not MIN_SIZE <= d <= MAX_SIZE:
                yield name, str(d), f"must be between {MIN_SIZE} and {MAX_SIZE}"
            elif not broken(name) and len(d.normalize().as_tuple().digits) > 9:
                yield name, str(d), "has more than 9 significant digits"
        if not broken("symbol") and not 0 < len(self.symbol.encode()) <= 24:
            yield "symbol", self.symbol, "must be 1 to 24 bytes (the instrument table's width)"
        if not broken("start_price"):
            try:
                p0 = Decimal(self.start_price)
            except InvalidOperation:
                yield ("start_price", self.start_price,
                       'is not a decimal number (write it as a string such as "100.5")')
                return
            if not p0.is_finite() or p0 <= 0:
                yield "start_price", self.start_price, "must be a positive, finite decimal"
            elif not broken("tick_size") and p0 / self.tick_size > MAX_LOTS:
                yield ("start_price", self.start_price, f"is more than 2**53 ticks of "
                       f"{self.tick_size}: prices in ticks must stay exact in float64")

    @property
    def key(self) -> str:
        return f"{self.symbol}@{self.venue}"


@dataclass(frozen=True)
class SimConfig:
    seed: int = opt(42, "seed of the simulated order flow; same seed, same events", ge=0)
    event_rate_per_s: float = opt(20000.0, "background events per second per venue (live sim)",
                                  gt=0, le=MAX_EVENT_RATE_PER_S)
    duration_s: float = opt(1800.0, "backtest: simulated seconds", gt=0, le=MAX_SIM_DURATION_S)
    session_s: float = opt(3600.0, "length of the simulated trading session over which the "
                           "intraday activity profile (session_amplitude) repeats, seconds",
                           gt=0, le=MAX_SIM_DURATION_S)
    session_amplitude: float = opt(0.0, "intraday U-shape of the background event rate: "
                                   "x (1 + a (3 (2 phase - 1)^2 - 1)) over each session, busiest "
                                   "at its open and close (1 + 2a), quietest mid-session "
                                   "(1 - a), mean 1; 0 = flat (market/flow.py)", ge=0, lt=1)


@dataclass(frozen=True)
class StrategyConfig:
    name: str = req("instance name, unique", pattern=NAME_RE)
    kind: str = req("a registered strategy, e.g. market_making (see strategies/)")
    instruments: tuple[str, ...] = req("instrument keys SYMBOL@VENUE this strategy trades")
    params: dict[str, Any] = opt({}, "the strategy's own parameters (validated by the strategy)")
    cpu: Optional[int] = opt(None, "CPU this strategy's process is pinned to (None: any)", ge=0)
    idle: str = opt("backoff", "idle strategy of this strategy's process", choices=IDLE_CHOICES)
    enabled: bool = opt(True, "false keeps the entry but does not start it")
    timer_ms: float = opt(DEFAULT_TIMER_MS, "period of the strategy's on_timer hook, milliseconds (the "
                          "same live, in replay and in backtests)", gt=0, le=60_000)
    book_levels: int = opt(DEFAULT_BOOK_LEVELS, "price levels kept per side in the strategy's "
                           "books", ge=1, le=4096)
    shards: int = opt(1, "processes this strategy runs as; its instruments are cut into this "
                      "many equal contiguous blocks, one per shard (common/runtime.py "
                      "shard_instruments)", ge=1, le=MAX_SHARDS)
    shard_max_position_lots: Optional[int] = opt(None, "per-shard position limit, lots per "
                                                 "instrument (default: [risk] "
                                                 "max_position_lots / shards, rounded up); the "
                                                 "strategy's shards together stay within "
                                                 "[risk] max_position_lots", gt=0, le=MAX_LOTS)
    # agent farms (pipeline/farm_config.py)
    signals: tuple[str, ...] = opt((), "names of the [[signals]] agents this strategy "
                                   "subscribes to (its on_signal hook)")
    budget: Optional[BudgetConfig] = opt(None, "the farm's risk budget, reallocated across "
                                         "its shards by the farm coordinator")

    def validate(self):
        if self.shards > 1 and len(self.instruments) % self.shards:
            yield (f"shards = {self.shards}: {len(self.instruments)} instrument(s) cannot be "
                   f"split into {self.shards} equal shards; list a multiple of {self.shards}")


@dataclass(frozen=True)
class RiskConfig:
    max_order_qty_lots: int = opt(1_000_000, "largest single order, lots", gt=0, le=MAX_LOTS)
    max_notional: float = opt(1_000_000.0, "largest single order notional, quote currency", gt=0)
    max_position_lots: int = opt(10_000_000, "largest absolute position per strategy and "
                                 "instrument, lots", gt=0, le=MAX_LOTS)
    price_band_bps: float = opt(500.0, "limit price at most this far from the reference "
                                "(mid), basis points", gt=0, le=10_000)
    max_open_orders: int = opt(50, "open orders per strategy", gt=0, le=MAX_OPEN_ORDERS)
    max_orders_per_s: int = opt(200, "new orders per strategy per second", gt=0,
                                le=MAX_RATE_PER_S)
    max_cancels_per_s: int = opt(200, "cancels and replaces per strategy per second", gt=0,
                                 le=MAX_RATE_PER_S)
    max_order_to_trade: float = opt(0.0, "orders per fill over the window; 0 = off", ge=0)
    daily_loss_limit: float = opt(50_000.0, "realized + unrealized loss per day (quote) that "
                                  "halts trading", gt=0)
    max_drawdown: float = opt(100_000.0, "drop from peak equity (quote) that halts trading", gt=0)
    reducing_at_fraction: float = opt(0.8, "enter REDUCING at this fraction of the loss or "
                                      "drawdown limit", gt=0, le=1)
    self_trade_prevention: bool = opt(True, "reject orders that would cross our own resting "
                                      "orders")
    trading_day_start_utc: str = opt("00:00", "HH:MM UTC when the trading day rolls over: the "
                                     "daily loss counts from here, and a loss or drawdown halt "
                                     "latched the day before is lifted",
                                     pattern=r"([01][0-9]|2[0-3]):[0-5][0-9]")


@dataclass(frozen=True)
class StageConfig:
    cpu: Optional[int] = opt(None, "CPU to pin this stage to (None: any)", ge=0)
    idle: str = opt("backoff", "idle strategy", choices=IDLE_CHOICES)


@dataclass(frozen=True)
class StagesConfig:
    venue: StageConfig = opt(StageConfig(), "the simulated venues (kind sim) or a replay")
    risk_gate: StageConfig = opt(StageConfig(), "pre-trade risk gate")
    order_router: StageConfig = opt(StageConfig(), "order router")
    journal: StageConfig = opt(StageConfig(), "journal")
    feed: StageConfig = opt(StageConfig(), "the feed-handler stage of each live venue (its "
                            "websocket runs on a thread of its own: the stage's loop must "
                            "sleep when idle, so backoff or blocking)")
    heartbeat_timeout_ms: int = opt(100, "a stage silent this long is reported silent "
                                    "(death is noticed at once through its pidfd)", gt=0,
                                    le=MAX_MS)
    silent_restart_ms: int = opt(1000, "a stage silent this long is killed and replaced",
                                 gt=0, le=MAX_MS)
    restart_limit: int = opt(5, "restarts of one stage within restart_window_s before the "
                             "controller gives up on it (a strategy is then halted alone)",
                             ge=0, le=1_000_000)
    restart_window_s: float = opt(300.0, "the window restart_limit counts failures over (s)",
                                  gt=0, le=7 * 86400)
    restart_stable_s: float = opt(5.0, "a stage that ran this long before it failed restarts "
                                  "at once; one failing sooner backs off", ge=0, le=86400)
    restart_backoff_s: float = opt(0.5, "wait before the 2nd quick restart in a row; doubles "
                                   "for each further one (the 1st is immediate)",
                                   ge=0, le=3600)
    restart_backoff_max_s: float = opt(10.0, "longest wait before a restart (s)", ge=0,
                                       le=3600)
    layout: str = opt("dedicated", "dedicated: one process per stage; composite: the stages "
                      "named in [[composites]] share one process (and core) each, the others "
                      "keep their own", choices=LAYOUTS)
    spin_us: float = opt(50.0, "hybrid idle: microseconds a stage (or composite) keeps polling "
                         "after its last work before it parks on its doorbell", ge=0,
                         le=MAX_SPIN_US)
    member_poll_us: float = opt(1000.0, "composite: a member whose input rings are empty is "
                                "still polled this often (its timers); a member with input "
                                "is polled every round", gt=0, le=1_000_000)
    park_timeout_ms: float = opt(10.0, "blocking and hybrid idle: longest park (heartbeats and "
                                 "control records are handled at least this often)", gt=0,
                                 le=100)

    def validate(self, broken):
        feed = self.feed
        if not broken("feed") and feed is not None and feed.idle not in ("backoff", "blocking"):
            yield ("feed.idle", feed.idle, "must be backoff or blocking: the feed's websocket "
                   "thread needs the interpreter while the stage's loop idles")


@dataclass(frozen=True)
class CompositeConfig:
    name: str = req("the composite's process name (unique; not a stage's name)",
                    pattern=NAME_RE)
    stages: tuple[str, ...] = req("stage names it runs in one loop, e.g. \"venue\", "
                                  "\"journal\", \"risk_gate\", \"order_router\", "
                                  "\"strategy-mm_btc\"; shell patterns such as "
                                  "\"strategy-*\" match several")
    cpu: Optional[int] = opt(None, "CPU the composite's process is pinned to (None: any)", ge=0)
    idle: str = opt("hybrid", "idle strategy of the composite's loop (idle when no member "
                    "found work)", choices=IDLE_CHOICES)
    spin_us: Optional[float] = opt(None, "hybrid idle: spin budget (default: [stages] "
                                   "spin_us)", ge=0, le=MAX_SPIN_US)
    restart_limit: Optional[int] = opt(None, "restarts of this composite within [stages] "
                                       "restart_window_s before the controller gives up "
                                       "(default: [stages] restart_limit)", ge=0,
                                       le=1_000_000)

    def validate(self):
        if not self.stages:
            yield ("stages", [], "name at least one stage")


@dataclass(frozen=True)
class RingsConfig:
    market_capacity: int = opt(1 << 16, "records per market-data broadcast ring (power of 2)",
                               gt=0, le=MAX_MARKET_CAPACITY)
    order_capacity: int = opt(1 << 12, "records per order-path SPSC ring (power of 2)", gt=0,
                              le=MAX_ORDER_CAPACITY)

    def validate(self, broken):
        for name in ("market_capacity", "order_capacity"):
            v = getattr(self, name)
            if not broken(name) and v & (v - 1):
                lo = 1 << (v.bit_length() - 1)
                yield name, v, f"must be a power of two (e.g. {lo} or {lo * 2})"


@dataclass(frozen=True)
class JournalConfig:
    enabled: bool = opt(True, "journal every order-path record")
    market_data: bool = opt(False, "journal market data too")
    flush_records: int = opt(4096, "records buffered in memory before a write", gt=0,
                             le=MAX_FLUSH_RECORDS)


@dataclass(frozen=True)
class BacktestConfig:
    queue_model: str = opt("conservative", "passive fills on recorded data",
                           choices=("conservative", "probabilistic"))
    initial_cash: float = opt(1_000_000.0, "starting equity, quote currency", gt=0)
    event_rate_per_s: float = opt(_FLOW.event_rate_per_s, "background events per second per "
                                  "venue in sim backtests (default: the calibrated rate of "
                                  "market/calibrated.json; sim.event_rate_per_s is the live "
                                  "simulator's)",
                                  gt=0, le=MAX_EVENT_RATE_PER_S)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = opt(False, "serve Prometheus metrics from the controller (pipeline/exporter.py)")
    host: str = opt("127.0.0.1", "address the metrics endpoint listens on (loopback unless "
                    "allow_non_loopback)")
    port: int = opt(9464, "TCP port of /metrics (0: any free port, shown in status)", ge=0,
                    le=65535)
    allow_non_loopback: bool = opt(False, "let host be a non-loopback address (the metrics "
                                   "show positions and PnL to whoever reaches the port)")

    def validate(self, broken):
        if not broken("host") and not self.allow_non_loopback and not _is_loopback(self.host):
            yield ("host", self.host, "is not a loopback address: metrics expose positions and "
                   "PnL; use 127.0.0.1, or set allow_non_loopback = true and firewall the port")


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = opt(False, "serve the read-only web dashboard from the controller "
                        "(token in <run dir>/dashboard.token, mode 0600)")
    host: str = opt("127.0.0.1", "address the dashboard listens on (loopback unless "
                    "allow_non_loopback)")
    port: int = opt(9465, "TCP port of the dashboard (0: any free port, shown in status)",
                    ge=0, le=65535)
    allow_non_loopback: bool = opt(False, "let host be a non-loopback address")

    def validate(self, broken):
        if not broken("host") and not self.allow_non_loopback and not _is_loopback(self.host):
            yield ("host", self.host, "is not a loopback address; use 127.0.0.1, or set "
                   "allow_non_loopback = true")


@dataclass(frozen=True)
class AlertsConfig:
    enabled: bool = opt(True, "evaluate alerts in the controller (status, journal, webhook)")
    interval_s: float = opt(1.0, "how often the controller's monitor thread samples and "
                            "evaluates", gt=0, le=60)
    webhook_url: str = opt("", "POST each alert event as JSON here (http:// or https://); "
                           "empty: none")
    webhook_timeout_s: float = opt(2.0, "timeout of one webhook POST (a thread of its own: "
                                   "never blocks supervision)", gt=0, le=60)
    win_rate_min: float = opt(0.3, "win rate of a strategy's recent closed trades below this "
                              "fires win_rate_degraded", ge=0, le=1)
    win_rate_min_trades: int = opt(20, "recent closed trades needed before the win rate is "
                                   "judged (also the window)", ge=1, le=1_000_000)
    drawdown_fraction: float = opt(0.5, "a strategy's drawdown at this fraction of [risk] "
                                   "max_drawdown fires drawdown_excessive", gt=0, le=1)
    tick_to_trade_p99_us: float = opt(5000.0, "tick-to-trade p99 over the last window above "
                                      "this fires latency_degraded", gt=0)
    latency_min_count: int = opt(50, "tick-to-trade records needed in the window", ge=1)
    stale_feed_s: float = opt(5.0, "a venue without a new market record this long fires "
                              "feed_stale", gt=0, le=86400)
    reject_rate_per_s: float = opt(20.0, "risk denials per second over the window above this "
                                   "fires reject_spike ...", gt=0)
    reject_fraction: float = opt(0.5, "... and only when they are this fraction of decisions",
                                 ge=0, le=1)
    restarts_max: int = opt(3, "restarts of one stage within restarts_window_s that fire "
                            "stage_restarting", ge=1)
    restarts_window_s: float = opt(300.0, "window of restarts_max, seconds", gt=0)
    window_s: float = opt(60.0, "window of the rate and latency alerts, seconds", gt=0,
                          le=86400)

    def validate(self, broken):
        url = self.webhook_url
        if not broken("webhook_url") and url and url.split("://", 1)[0] not in ("http", "https"):
            yield "webhook_url", url, "must be an http:// or https:// URL"


@dataclass(frozen=True)
class PostgresSinkConfig:
    enabled: bool = opt(False, "copy the journal and PnL / latency snapshots into PostgreSQL "
                        "(pipeline/pgsink.py, a process of its own, off the data path)")
    dsn_env: str = opt("HFTFARM_PG_DSN", "environment variable holding the DSN (never logged)")
    dsn_file: str = opt("", "or a file holding the DSN; must be mode 0600")
    batch_records: int = opt(50_000, "records per COPY transaction", gt=0, le=10_000_000)
    poll_ms: int = opt(200, "how often a caught-up sink looks for new journal records", gt=0)
    snapshot_ms: int = opt(1000, "PnL / latency snapshot period (0: none)", ge=0)
    drain_s: float = opt(10.0, "at stop, how long the sink may go on copying what is left",
                         ge=0)


@dataclass(frozen=True)
class SinkConfig:
    postgres: PostgresSinkConfig = opt(PostgresSinkConfig(), "the PostgreSQL sink")


@dataclass(frozen=True)
class Config:
    instance: InstanceConfig = opt(InstanceConfig(), "this instance")
    venues: tuple[VenueConfig, ...] = opt((), "venues, simulated or live (at least one)")
    instruments: tuple[InstrumentConfig, ...] = opt((), "tradable instruments (at least one)")
    strategies: tuple[StrategyConfig, ...] = opt((), "strategy instances, one process each")
    signals: tuple[SignalConfig, ...] = opt((), "signal agents (farms), one process each")
    risk: RiskConfig = opt(RiskConfig(), "pre-trade risk limits")
    sim: SimConfig = opt(SimConfig(), "simulated venues")
    stages: StagesConfig = opt(StagesConfig(), "pinning and idling of the fixed stages")
    composites: tuple[CompositeConfig, ...] = opt((), "stages sharing one process and core "
                                                  "(used when [stages] layout = "
                                                  "\"composite\")")
    rings: RingsConfig = opt(RingsConfig(), "ring sizes")
    journal: JournalConfig = opt(JournalConfig(), "the order-path journal")
    backtest: BacktestConfig = opt(BacktestConfig(), "backtest defaults")
    metrics: MetricsConfig = opt(MetricsConfig(), "Prometheus exporter (loopback only by default)")
    dashboard: DashboardConfig = opt(DashboardConfig(), "read-only web dashboard")
    alerts: AlertsConfig = opt(AlertsConfig(), "alert thresholds and the optional webhook")
    sink: SinkConfig = opt(SinkConfig(), "storage sinks for analysis")
    # where the config came from (set by the loader; not a key of the file)
    source: str = field(default="config", compare=False, metadata={"internal": True})

    def validate(self, broken):
        """Cross checks. ``broken(key)``: that key (or something inside it) was wrong, so the
        checks that read it are skipped; every other check still runs (one pass, every error).
        Last, ``pipeline.buildcheck`` builds what ``start`` builds, without spawning."""
        insts = [(n, i) for n, i in enumerate(self.instruments) if i is not None]
        strats = [(n, s) for n, s in enumerate(self.strategies) if s is not None]
        if not self.venues and not broken("venues"):
            yield "venues: at least one [[venues]] entry is required"
        if not self.instruments and not broken("instruments"):
            yield "instruments: at least one [[instruments]] entry is required"
        venue_names = [v.name for n, v in enumerate(self.venues)
                       if v is not None and not broken(f"venues[{n}].name")]
        all_venues_named = len(venue_names) == len(self.venues)
        for dup in sorted({n for n in venue_names if venue_names.count(n) > 1}):
            yield f"venues: name {dup!r} appears more than once"
        sound = [(n, i) for n, i in insts if not broken(f"instruments[{n}].symbol")
                 and not broken(f"instruments[{n}].venue")]
        keys = [i.key for _, i in sound]
        all_keys_known = len(sound) == len(self.instruments)
        for dup in sorted({k for k in keys if keys.count(k) > 1}):
            yield f"instruments: {dup!r} appears more than once"
        if all_venues_named:
            for n, inst in sound:
                if inst.venue not in venue_names:
                    yield (f"instruments[{n}].venue", inst.venue, "no such venue (venues: "
                           f"{', '.join(venue_names)}){did_you_mean(inst.venue, venue_names)}")
        names = [s.name for n, s in strats if not broken(f"strategies[{n}].name")]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            yield f"strategies: name {dup!r} appears more than once"
        if all_keys_known:
            for n, strat in strats:
                if broken(f"strategies[{n}].instruments"):
                    continue
                yield from unknown_instruments(f"strategies[{n}].instruments",
                                               strat.instruments, keys)
        live = [v.name for n, v in enumerate(self.venues) if v is not None
                and not broken(f"venues[{n}]") and v.kind != "sim"]
        if live and not broken("instance") and not self.instance.allow_live:
            paper = [v.name for v in self.venues if v is not None and v.name in live
                     and v.paper]
            yield (f"venues {', '.join(live)} are live venues but instance.allow_live is false: "
                   "nothing connects to a real venue unless you set it"
                   + (f" (paper mode too: venues {', '.join(paper)} send no order, but their "
                      "market data comes from the real venue; set [instance] allow_live = "
                      "true to connect)" if paper else ""))
        ncpu = os.cpu_count() or 1
        for path, cpu in self.pinned_cpus():
            if not broken(path) and cpu >= ncpu:
                yield f"{path} = {cpu}: this machine has CPUs 0..{ncpu - 1}"
        if self.composites and not any(broken(k) for k in ("composites", "strategies",
                                                             "venues", "journal", "stages")):
            from stages.topology import composite_problems

            yield from composite_problems(self)
        yield from farm_problems(self, broken)
        if not _BUILD[-1]:
            return
        yield from build_problems(self, broken)

    def pinned_cpus(self):
        if self.instance is not None and self.instance.controller_cpu is not None:
            yield "instance.controller_cpu", self.instance.controller_cpu
        for stage in ("venue", "risk_gate", "order_router", "journal", "feed"):
            sc = getattr(self.stages, stage, None) if self.stages is not None else None
            cpu = getattr(sc, "cpu", None)
            if cpu is not None:
                yield f"stages.{stage}.cpu", cpu
        for n, s in enumerate(self.strategies):
            if s is not None and s.cpu is not None:
                yield f"strategies[{n}].cpu", s.cpu
        for n, v in enumerate(self.venues):
            if v is not None and v.cpu is not None:
                yield f"venues[{n}].cpu", v.cpu
        for n, c in enumerate(self.composites):
            if c is not None and c.cpu is not None:
                yield f"composites[{n}].cpu", c.cpu
        for n, g in enumerate(self.signals):
            if g is not None and g.cpu is not None:
                yield f"signals[{n}].cpu", g.cpu

    def instrument(self, key: str) -> InstrumentConfig:
        for inst in self.instruments:
            if inst.key == key:
                return inst
        raise KeyError(key)

    def venue(self, name: str) -> VenueConfig:
        for v in self.venues:
            if v.name == name:
                return v
        raise KeyError(name)


# Whether Config.validate ends with the build checks (pipeline/buildcheck.py, ~0.5 s): on for
# every operator-facing load; a stage process (pipeline/stage_main.py) loads the file its
# controller already checked and turns them off, so a restart stays well under a second.
_BUILD = [True]


def parse_config(text: str, source: str = "config", build: bool = True) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], source) from None
    _BUILD.append(bool(build))
    try:
        cfg = load_section(Config, data, "", source)
    finally:
        _BUILD.pop()
    return dataclasses.replace(cfg, source=source)


def load_config(path: str | os.PathLike | None = None, build: bool = True) -> Config:
    """Load and validate a config file (default: the repository's config.toml). ``build``:
    also build what ``start`` builds (pipeline/buildcheck.py); off only in stage processes."""
    p = Path(path) if path else DEFAULT_CONFIG
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError([f"no such file: {p}"], str(p)) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror}"], str(p)) from None
    return parse_config(text, str(p), build)
