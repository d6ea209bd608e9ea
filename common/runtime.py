"""Names and defaults the strategy runtime and the control plane share (a leaf: imports nothing).

Runs wherever it is imported; no hot path. Defined once here so that the config schema
(pipeline/config.py), the runtime (strategies/host.py), the generated host steps
(stages/host_codegen.py) and the warm-spare manifests (pipeline/numba_cache.py) agree.
"""

DEFAULT_TIMER_MS = 10.0     # [[strategies]] timer_ms: on_timer period, live, replay, backtest
DEFAULT_BOOK_LEVELS = 64    # [[strategies]] book_levels: price levels per side in its books
# module-name prefix of a strategy's generated host step (stages/host_codegen.py), which lives
# outside the packages (in the numba cache directory)
GENERATED_PREFIX = "hftfarm_hostgen_"

MAX_SHARDS = 256            # [[strategies]] shards: a shard index fits 8 bits of a client order id


def shard_instruments(instruments, shards: int) -> list[list]:
    """Which instruments each shard of a strategy trades: the documented, deterministic
    assignment. ``instruments`` in config order are cut into ``shards`` contiguous blocks of
    equal size (shard k gets instruments[k*m:(k+1)*m], m = len / shards), so a pairs strategy
    listing its pairs one after the other gets one pair per shard, and the same config always
    gives the same split. ValueError if the count does not divide."""
    instruments = list(instruments)
    if shards < 1 or shards > MAX_SHARDS:
        raise ValueError(f"shards = {shards}: must be in 1..{MAX_SHARDS}")
    if len(instruments) % shards:
        raise ValueError(f"{len(instruments)} instrument(s) cannot be split into {shards} equal "
                         f"shards: list a multiple of {shards}")
    m = len(instruments) // shards
    return [instruments[k * m:(k + 1) * m] for k in range(shards)]


def strategy_ids(strategies) -> dict:
    """(strategy name, shard) -> strategy id, as a live instance numbers its strategy processes:
    1, 2, ... over the enabled ``[[strategies]]`` entries in config order, one id per shard.
    Every process (shard) has its own id, so rings, routing and the per-shard risk limits work
    by id; the risk gate also sums each strategy's shards (``group_ids``)."""
    out = {}
    sid = 0
    for s in strategies:
        if not getattr(s, "enabled", True):
            continue
        for k in range(int(getattr(s, "shards", 1))):
            sid += 1
            out[(s.name, k)] = sid
    return out


def group_ids(strategies) -> dict:
    """strategy id -> the id of its strategy's first shard (the id the risk gate sums a
    strategy's shards under); an unsharded strategy is its own group."""
    ids = strategy_ids(strategies)
    first = {}
    for (name, k), sid in ids.items():
        first.setdefault(name, sid)
    return {sid: first[name] for (name, k), sid in ids.items()}


def process_name(name: str, shard: int, shards: int) -> str:
    """The name a strategy process goes by (its rings, histograms, status row): the strategy's
    name, or ``name.k`` for shard k of a sharded one (a '.' never appears in a config name)."""
    return name if shards <= 1 else f"{name}.{shard}"

MAX_STRATEGY_ID = (1 << 15) - 1   # client_order_id = strategy_id << 48 | ...: stays positive


def shard_position_limits(max_position_lots: int, strategies) -> dict:
    """strategy id -> its own position limit (lots), as the risk gate holds each process:
    ``shard_max_position_lots`` of its strategy, else ``max_position_lots`` split evenly over
    the shards (rounded up); an unsharded strategy keeps ``max_position_lots``."""
    by_name = {s.name: s for s in strategies}
    out = {}
    for (name, _k), sid in strategy_ids(strategies).items():
        s = by_name[name]
        own = getattr(s, "shard_max_position_lots", None)
        out[sid] = own if own is not None else -(-max_position_lots // int(s.shards))
    return out


# ---- hctl: int64 words of one strategy host (strategies/host.py; the backtest loop reads some)
H_NEXT_TIMER = 0      # time of the next timer tick (ns); -1 = not started (the first batch
                      # starts the timer: its first tick is one period later)
H_FB_N = 1            # live: push-back answers waiting for the next batch
H_MD_IN = 2           # market records read
H_EX_IN = 3           # execution reports read from the rings
H_OUT = 4             # intents published to the gate
H_PUSHBACK = 5        # intents the full intent ring refused (answered REJECT_HALTED)
H_CALLS = 6           # batches that called hooks
H_KERNEL_ERRORS = 7   # hook calls that raised (or wrote a bad count): the strategy halted
H_DISCARDED = 8       # intents discarded with those calls
H_LAST_SEQ = 9        # newest router sequence number applied (restored from the journal)
H_SKIPPED = 10        # exec reports skipped as already applied (reserved <= H_LAST_SEQ)
H_TIMER_NS = 11       # timer period (ns)
H_PARAMS_PENDING = 12  # a new parameter record is waiting to be applied between batches
H_SG_IN = 13          # signal records read (farm signal agents)
H_WORDS = 16
