"""The pipeline's topology, derived deterministically from config. Cold path.

Computed the same way by the controller (which creates every segment) and by each stage process
(which attaches the ones it needs), so nothing but the config path crosses the process boundary.

Rings (segment names under the instance prefix; one writer each, see CONVENTIONS.md):

  md-<venue>        Broadcast MARKET   venue (sim) or feed-<venue> (live kinds) -> strategies
                                       on it, risk gate, (journal)
  intent-<strat>    SPSC ORDER         strategy -> risk gate
  reject-<strat>    SPSC EXEC          risk gate -> strategy (denials, EFLAG_FROM_RISK)
  exec-<strat>      SPSC EXEC          router -> strategy
  approved          SPSC ORDER         risk gate -> router
  exec-gate         SPSC EXEC          router -> risk gate
  jorder            SPSC ORDER         risk gate -> journal (every intent + its decision)
  jexec             SPSC EXEC          router -> journal (every execution report)
  vorder-<venue>    SPSC ORDER         router -> venue (sim) or feed-<venue> (live kinds)
  vexec-<venue>     SPSC EXEC          venue or feed-<venue> -> router

Stages: one ``venue`` stage plays every simulated venue (``kind = "sim"``; none when there is
none), and each live venue (binance, coinbase, kraken ...) has a feed-handler stage of its own,
``feed-<venue>`` (stages/feed_live.py): the one writer of that venue's md ring, and the venue
side of its order rings: in ``mode = "paper"`` (the default) its paper venue fills them
virtually in the real book (market/papervenue.py, reading ``md-<venue>`` back); in ``live``
mode (no live order entry yet) it answers every order REJECT_VENUE_DOWN.
  sig-<agent>       Broadcast SIGNAL   signal-<agent> -> the strategy processes subscribed to it
  ctl-<stage>       SPSC CONTROL       controller -> stage
  status, riskview, hist-*             status blocks, risk snapshot, latency histograms
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.runtime import process_name, shard_instruments, strategy_ids

ROLE_VENUE = "venue"
ROLE_JOURNAL = "journal"
ROLE_ROUTER = "order_router"
ROLE_GATE = "risk_gate"
ROLE_STRATEGY = "strategy"
ROLE_FEED = "feed"
ROLE_SIGNAL = "signal"   # a farm's signal agent (stages/signal_agent.py)
SIGNAL_RING_CAPACITY = 4096   # records per sig-<agent> ring (signals are states: a lapped
                              # reader loses only older values of the same cells)

# latency histograms: (segment name, title)
HIST_GATE = ("intent_to_gate", "intent -> gate read")
HIST_ROUTER = ("approval_to_router", "approval -> router read")
HIST_VENUE_ACK = ("router_to_venue_ack", "router -> venue ack")
HIST_T2T = ("tick_to_trade", "tick-to-trade (market recv -> order to venue)")


@dataclass(frozen=True)
class StageSpec:
    name: str                 # unique stage name; also its control ring suffix
    role: str
    slot: int                 # status block index
    cpu: int | None
    idle: str
    strategy: object = None   # StrategyConfig for strategy hosts
    strategy_id: int = 0      # one per strategy process (each shard has its own)
    restartable: bool = True  # strategies and feeds restart; gate/router restart with a halt
    shard: int = 0            # which shard of its strategy this process is (0..shards-1)
    instruments: tuple = ()   # the instrument keys this process trades (its shard's block)
    group_id: int = 0         # the strategy id of shard 0: the risk gate sums shards under it
    venue: str = ""           # feed stages: the live venue this process plays
    unit: str = ""            # the process that runs it: its own name, or its composite's
    signal: object = None     # SignalConfig for signal agents

    @property
    def process(self) -> str:
        """The strategy process's own name (rings, histograms): the strategy's name, or
        ``name.k`` for shard k of a sharded strategy."""
        return process_name(self.strategy.name, self.shard, self.strategy.shards)


@dataclass(frozen=True)
class ProcessUnit:
    """One stage process: a dedicated stage (``members`` is just it, ``name`` its name) or a
    composite ([[composites]]: several stages polled in one loop, pipeline/composite.py)."""
    name: str
    members: tuple            # stage names, in start order
    cpu: int | None
    idle: str
    composite: bool = False
    spin_us: float | None = None
    restart_limit: int | None = None


@dataclass(frozen=True)
class RingSpec:
    name: str
    kind: str                 # "spsc" | "broadcast"
    dtype: str                # "market" | "order" | "exec" | "control"
    capacity: int
    max_readers: int = 1


@dataclass
class Topology:
    stages: list[StageSpec]
    rings: list[RingSpec]
    venues: list[str]
    md_readers: dict[str, dict[str, int]] = field(default_factory=dict)  # venue -> stage -> idx
    # signal agent name -> subscribed strategy stage -> reader index of sig-<agent>
    sig_readers: dict[str, dict[str, int]] = field(default_factory=dict)
    journal: bool = True
    journal_md: bool = False
    units: list[ProcessUnit] = field(default_factory=list)

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage {name!r} (stages: {', '.join(s.name for s in self.stages)})")

    def unit(self, name: str) -> ProcessUnit:
        """The process unit called ``name`` (a composite, or a dedicated stage)."""
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(f"no process {name!r} (processes: "
                       f"{', '.join(u.name for u in self.units)})")

    def unit_of(self, stage: str) -> ProcessUnit:
        return self.unit(self.stage(stage).unit)

    def composites(self) -> list[ProcessUnit]:
        return [u for u in self.units if u.composite]

    def feeds(self) -> list[StageSpec]:
        return [s for s in self.stages if s.role == ROLE_FEED]

    def strategies(self) -> list[StageSpec]:
        return [s for s in self.stages if s.role == ROLE_STRATEGY]

    def signals(self) -> list[StageSpec]:
        return [s for s in self.stages if s.role == ROLE_SIGNAL]

    def start_order(self) -> list[StageSpec]:
        rank = {ROLE_JOURNAL: 0, ROLE_VENUE: 1, ROLE_FEED: 1, ROLE_ROUTER: 2, ROLE_SIGNAL: 2,
                ROLE_GATE: 3, ROLE_STRATEGY: 4}
        return sorted(self.stages, key=lambda s: (rank[s.role], s.slot))

    def histograms(self) -> list[tuple[str, str]]:
        out = [HIST_GATE, HIST_ROUTER, HIST_VENUE_ACK, HIST_T2T]
        for s in self.strategies():
            out.append((f"md_to_{s.name}", f"md recv -> {s.name} read"))
            if s.strategy.signals:
                out.append((f"sig_to_{s.name}", f"signal publish -> {s.name} read"))
        for f in self.feeds():
            out.append((f"exch_to_recv_{f.venue}",
                        f"{f.venue}: exchange time -> feed receive (venue clock vs ours)"))
        return out


def lockstep_schedule(topo: Topology) -> list[str]:
    """The stages of one round of the sim-time (lockstep) mode, in turn order: the venue
    delivers what is due, the router fans its reports out, every strategy takes its batch (in
    strategy-id order), the gate takes market data, reports and every strategy's intents, the
    router forwards the approved orders; the venue takes them at the start of the next round.
    This is market/backtest.py's round, stage by stage. The journal is not in it (it only
    records)."""
    return (["venue", "order_router"] + [s.name for s in topo.strategies()]
            + ["risk_gate", "order_router"])


def sim_venues(cfg) -> list[str]:
    """The venues the ``venue`` stage simulates (kind "sim"); the others are live feeds."""
    return [v.name for v in cfg.venues if v.kind == "sim"]


def live_venues(cfg) -> list[str]:
    return [v.name for v in cfg.venues if v.kind != "sim"]


FIXED_STAGES = ("venue", "journal", "order_router", "risk_gate")
STAGE_PREFIXES = ("strategy-", "feed-", "signal-")


def _match_composites(cfg, names: list[str]):
    """(stage -> composite index, problems): which composite runs each stage named in
    ``cfg.composites``. Entries are stage names or shell patterns (``strategy-*``)."""
    import fnmatch

    from common.schema import did_you_mean

    owner: dict[str, int] = {}
    problems: list[str] = []
    comp_names = [c.name for c in cfg.composites]
    for dup in sorted({n for n in comp_names if comp_names.count(n) > 1}):
        problems.append(f"composites: name {dup!r} appears more than once")
    for n, comp in enumerate(cfg.composites):
        where = f"composites[{n}] ({comp.name})"
        if comp.name in names:
            problems.append(f"{where}.name = {comp.name!r}: is a stage's name; give the "
                            "composite a name of its own")
        for entry in comp.stages:
            if any(ch in entry for ch in "*?["):
                hits = fnmatch.filter(names, entry)
                if not hits and not entry.startswith(STAGE_PREFIXES):
                    # "strategy-*" or "feed-*" may match nothing in a config without any
                    problems.append(f"{where}.stages: pattern {entry!r} matches no stage "
                                    f"(stages: {', '.join(names)}; patterns begin "
                                    f"{' or '.join(map(repr, STAGE_PREFIXES))})")
            elif entry in names:
                hits = [entry]
            elif entry in FIXED_STAGES:
                continue   # a stage this config has none of (no sim venue, no journal)
            else:
                problems.append(f"{where}.stages: {entry!r} is not a stage (stages: "
                                f"{', '.join(names)}){did_you_mean(entry, names)}")
                continue
            for stage in hits:
                prev = owner.get(stage)
                if prev is not None and prev != n:
                    problems.append(f"{where}.stages: stage {stage!r} is already in "
                                    f"composites[{prev}] ({cfg.composites[prev].name}); a "
                                    "stage runs in one process only")
                else:
                    owner[stage] = n
        live = [s for s, i in owner.items() if i == n and s.startswith("feed-")]
        if live and comp.idle in ("busy-spin", "yield"):
            problems.append(f"{where}.idle = {comp.idle!r}: it runs feed stage(s) "
                            f"{', '.join(live)}, whose websocket thread needs the interpreter "
                            "while the loop idles: use hybrid, blocking or backoff")
    return owner, problems


def composite_problems(cfg) -> list[str]:
    """Every problem of ``cfg``'s [[composites]] (unknown stage, a stage in two composites,
    a name clash ...), each naming the composite and the entry; [] when sound."""
    try:
        names = [s.name for s in build_topology(cfg, dedicated=True).stages]
    except (KeyError, ValueError):
        return []   # the config's other problems (reported on their own) stop the topology
    return _match_composites(cfg, names)[1]


def _units(cfg, stages: list[StageSpec], dedicated: bool):
    """The stage specs (cpu / idle / unit as their process runs them) and the process units."""
    import dataclasses

    owner: dict[str, int] = {}
    if not dedicated and cfg.stages.layout == "composite" and cfg.composites:
        owner, problems = _match_composites(cfg, [s.name for s in stages])
        if problems:
            raise ValueError("; ".join(problems))
    out, units = [], []
    for s in stages:
        n = owner.get(s.name)
        if n is None:
            out.append(dataclasses.replace(s, unit=s.name))
            units.append(ProcessUnit(s.name, (s.name,), s.cpu, s.idle))
        else:
            c = cfg.composites[n]
            out.append(dataclasses.replace(s, unit=c.name, cpu=c.cpu, idle=c.idle))
    rank = {ROLE_JOURNAL: 0, ROLE_VENUE: 1, ROLE_FEED: 1, ROLE_ROUTER: 2, ROLE_GATE: 3,
            ROLE_SIGNAL: 4, ROLE_STRATEGY: 5}
    for n, c in enumerate(cfg.composites):
        members = sorted((s for s in out if owner.get(s.name) == n),
                         key=lambda s: (rank[s.role], s.slot))
        if members:
            units.append(ProcessUnit(c.name, tuple(s.name for s in members), c.cpu, c.idle,
                                     composite=True, spin_us=c.spin_us,
                                     restart_limit=c.restart_limit))
    return out, units


def build_topology(cfg, dedicated: bool = False) -> Topology:
    """``dedicated``: one process per stage whatever [stages] layout says (sim-time mode,
    whose lockstep turns are per stage)."""
    st = cfg.stages
    stages: list[StageSpec] = []
    slot = 0

    def add(name, role, sc, cpu=None, **kw):
        nonlocal slot
        stages.append(StageSpec(name, role, slot, sc.cpu if cpu is None else cpu, sc.idle,
                                **kw))
        slot += 1

    journal = bool(cfg.journal.enabled)
    journal_md = journal and bool(cfg.journal.market_data)
    if journal:
        add("journal", ROLE_JOURNAL, st.journal)
    if sim_venues(cfg):
        add("venue", ROLE_VENUE, st.venue)
    for v in cfg.venues:
        if v.kind != "sim":
            add(f"feed-{v.name}", ROLE_FEED, st.feed, cpu=v.cpu, venue=v.name)
    add("order_router", ROLE_ROUTER, st.order_router, restartable=False)
    add("risk_gate", ROLE_GATE, st.risk_gate, restartable=False)
    for g in getattr(cfg, "signals", ()):
        if g.enabled:
            stages.append(StageSpec(f"signal-{g.name}", ROLE_SIGNAL, slot, g.cpu, g.idle,
                                    signal=g, instruments=tuple(g.instruments)))
            slot += 1
    ids = strategy_ids(cfg.strategies)
    for s in cfg.strategies:
        if not s.enabled:
            continue
        for k, block in enumerate(shard_instruments(s.instruments, s.shards)):
            sid = ids[(s.name, k)]
            stages.append(StageSpec(f"strategy-{process_name(s.name, k, s.shards)}",
                                    ROLE_STRATEGY, slot, s.cpu, s.idle, strategy=s,
                                    strategy_id=sid, shard=k, instruments=tuple(block),
                                    group_id=ids[(s.name, 0)]))
            slot += 1

    stages, units = _units(cfg, stages, dedicated)
    venues = [v.name for v in cfg.venues]
    md_readers: dict[str, dict[str, int]] = {v: {} for v in venues}
    for spec in stages:
        if spec.role in (ROLE_STRATEGY, ROLE_SIGNAL):
            for key in spec.instruments:
                v = cfg.instrument(key).venue
                md_readers[v].setdefault(spec.name, len(md_readers[v]))
    sig_readers: dict[str, dict[str, int]] = {s.signal.name: {} for s in stages
                                              if s.role == ROLE_SIGNAL}
    for spec in stages:
        if spec.role == ROLE_STRATEGY:
            for agent in spec.strategy.signals:
                if agent in sig_readers:
                    sig_readers[agent][spec.name] = len(sig_readers[agent])
    for v in venues:
        md_readers[v]["risk_gate"] = len(md_readers[v])
        if cfg.venue(v).paper:   # the paper venue in feed-<v> reads the book it fills against
            md_readers[v][f"feed-{v}"] = len(md_readers[v])
        if journal_md:
            md_readers[v]["journal"] = len(md_readers[v])

    mc, oc = cfg.rings.market_capacity, cfg.rings.order_capacity
    rings = [RingSpec(f"md-{v}", "broadcast", "market", mc, len(md_readers[v])) for v in venues]
    for spec in stages:
        if spec.role == ROLE_STRATEGY:
            n = spec.process
            rings += [RingSpec(f"intent-{n}", "spsc", "order", oc),
                      RingSpec(f"reject-{n}", "spsc", "exec", oc),
                      RingSpec(f"exec-{n}", "spsc", "exec", oc)]
    rings += [RingSpec(f"sig-{a}", "broadcast", "signal", SIGNAL_RING_CAPACITY, max(1, len(r)))
              for a, r in sig_readers.items()]
    rings += [RingSpec("approved", "spsc", "order", oc), RingSpec("exec-gate", "spsc", "exec", oc)]
    if journal:
        # the journal sees every record of the order path: give it room to lag a flush
        rings += [RingSpec("jorder", "spsc", "order", oc * 4),
                  RingSpec("jexec", "spsc", "exec", oc * 4)]
    for v in venues:
        rings += [RingSpec(f"vorder-{v}", "spsc", "order", oc),
                  RingSpec(f"vexec-{v}", "spsc", "exec", oc * 4)]
    for spec in stages:
        rings.append(RingSpec(f"ctl-{spec.name}", "spsc", "control", 64))
    return Topology(stages, rings, venues, md_readers, journal=journal, journal_md=journal_md,
                    units=units, sig_readers=sig_readers)
