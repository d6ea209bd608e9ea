"""The live strategy host step (the generated ``host_step`` on real shared-memory rings) and the
in-process ``run_strategy_batch`` of the backtest are one runtime: on the same stream of market
records and execution reports they write the same intents and end in the same state, answer
push-back the same way, halt a strategy whose hook raises (its intents discarded, its live orders
cancelled, no hook called again) without losing a fill, and a restarted host skips the reports
the journal already applied."""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from common.runtime import DEFAULT_BOOK_LEVELS, DEFAULT_TIMER_MS
from market.book import L2Book
from shm.histogram import LatencyHistogram
from shm.records import (
    EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_PARTIAL, EXEC_REJECT, INTENT_CANCEL, INTENT_NEW,
    MARKET_DTYPE, MSG_TRADE, ORD_IOC, ORDER_DTYPE, REJECT_HALTED, SIDE_BUY, SIDE_SELL,
    SIGNAL_DTYPE,
)
from shm.ring import BroadcastRing, SpscRing
from stages.base import stack_states
from stages.clock import C_BASE_NS
from stages.host_codegen import host_step_for
from strategies import registry
from strategies.base import (
    HALT_MARKET, HALT_NAMES, OST_PENDING_CANCEL, OST_PENDING_NEW, Strategy, order_slot, place, restore_state,
)
from strategies.host import (
    H_CALLS, H_DISCARDED, H_FB_N, H_KERNEL_ERRORS, H_LAST_SEQ, H_OUT, H_PUSHBACK, H_SKIPPED,
    HostedStrategy, HostView, make_hctl, skip_applied,
)
from strategies.registry import make_strategy
from tests.unit.scenario_records import ack, execs, fill, instrument, report, snapshot, top, trade
from tests.unit.test_strategy_conformance import INSTRUMENTS, KINDS, STEPS, ScriptedVenue

MS = 1_000_000


class LiveHost(HostView):
    """The strategy-host stage's hot path without its process: the generated host_step over
    one market-data broadcast ring, the exec and reject rings and the intent ring. The clock is
    pinned (ns per tick 0), so ``step(now_ns=t)`` runs the hooks at exactly t. Books, buffer
    sizes and timer as ``HostedStrategy``'s defaults, so the two hosts are comparable."""

    def __init__(self, prefix, strategy, intent_capacity=256, max_intents=256,
                 timer_ms=DEFAULT_TIMER_MS):
        self.step_fn = host_step_for(strategy.kind)
        self.rings = []
        md = self._ring(BroadcastRing.create(prefix, "md", MARKET_DTYPE, 4096, 1))
        ex = self._ring(SpscRing.create(prefix, "exec", EXEC_DTYPE, 256))
        rej = self._ring(SpscRing.create(prefix, "reject", EXEC_DTYPE, 256))
        intent = self._ring(SpscRing.create(prefix, "intent", ORDER_DTYPE, intent_capacity))
        self.md_w, self.ex_w, self.rej_w = md.writer(), ex.writer(), rej.writer()
        self.intent_w, self.intent_r = intent.writer(), intent.reader()
        sig = self._ring(BroadcastRing.create(prefix, "sig", SIGNAL_DTYPE, 256, 1))
        self.sig_w = sig.writer()
        self.sg_sts = stack_states([sig.reader(0)])
        self.sg = np.zeros(256, SIGNAL_DTYPE)
        self.sg_i = self.sg.view(np.int64).reshape(len(self.sg), -1)
        md_r, ex_r = [md.reader(0)], [ex.reader(), rej.reader()]
        self.md_sts, self.md_slots = stack_states(md_r), tuple(r.slots for r in md_r)
        self.ex_sts, self.ex_slots = stack_states(ex_r), tuple(r.slots for r in ex_r)
        n = max(i.instrument_id for i in strategy.instruments)
        self.book = L2Book(n, DEFAULT_BOOK_LEVELS)
        self.state = strategy.make_state(*self.book.arrays, max_intents=max_intents)
        self.hctl = make_hctl(timer_ms)
        self.md = np.zeros(2048, MARKET_DTYPE)
        self.md_i = self.md.view(np.int64).reshape(len(self.md), -1)
        self.ex = np.zeros(512, EXEC_DTYPE)
        self.ex_i = self.ex.view(np.int64).reshape(len(self.ex), -1)
        self.fb = np.zeros(256, EXEC_DTYPE)
        self.cal = np.zeros(5)
        self.hist = LatencyHistogram.local()
        self.got = np.zeros(4096, ORDER_DTYPE)

    def _ring(self, ring):
        self.rings.append(ring)
        return ring

    def step(self, md=None, ex=None, rejects=None, now_ns=0, drain=True, sg=None):
        """Publish the inputs, run one host step at ``now_ns``; the intents that reached the
        intent ring (all of them, unless ``drain`` is False)."""
        for w, recs in ((self.md_w, md), (self.ex_w, ex), (self.rej_w, rejects),
                        (self.sig_w, sg)):
            if recs is not None and len(recs):
                assert w.publish(recs) == len(recs)
        self.cal[C_BASE_NS] = now_ns
        s = self.state   # replaced by a restored one in the restart test: view its buffer
        out_i = s.ctx.out.view(np.int64).reshape(len(s.ctx.out), -1)
        self.step_fn(s.ctx, s.st, s.p, self.hctl, self.cal, self.md_sts, self.md_slots,
                     self.md, self.md_i, self.ex_sts, self.ex_slots, self.ex, self.ex_i, self.fb,
                     out_i, self.intent_w.st, self.intent_w.slots, self.hist.array,
                     self.sg_sts, self.sg, self.sg_i, self.hist.array)
        if not drain:
            return self.got[:0]
        return self.got[:self.intent_r.poll(self.got)].copy()

    def close(self):
        for r in self.rings:
            r.unlink()
            r.close()


@pytest.fixture
def live_hosts(shm_prefix):
    made = []

    def make(strategy, **kw):
        h = LiveHost(f"{shm_prefix}{len(made)}", strategy, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def same_intents(live, inproc):
    """Intents as the gate sees them, minus what each hop rewrites (ring_seq, send_ts_ns)."""
    a, b = live.copy(), np.asarray(inproc).copy()
    for r in (a, b):
        r["ring_seq"] = 0
        r["send_ts_ns"] = 0
    return a.tobytes() == b.tobytes()


def assert_same_state(live, ref):
    a, b = live.state.arrays(), ref.state.arrays()
    assert len(a) == len(b)
    names = [*live.state.ctx._fields, "st", "p"]
    for name, x, y in zip(names, a, b):
        if name == "out":   # the intent buffer: the live host stamps send_ts_ns in place
            x, y = x.copy(), y.copy()
            for r in (x, y):
                r["ring_seq"] = 0
                r["send_ts_ns"] = 0
        assert x.tobytes() == y.tobytes(), name
    for x, y in zip(live.book.arrays, ref.book.arrays):
        assert x.tobytes() == y.tobytes()
    for w in (H_CALLS, H_KERNEL_ERRORS, H_DISCARDED, H_LAST_SEQ, H_SKIPPED):
        assert live.hctl[w] == ref.hctl[w], w


def make_kind(kind, sid=3):
    cls = registry.get_strategy_class(kind)   # a detector silent on noise names the set
    params = dict(getattr(cls, "conformance_params", {}))   # under which the stream moves it
    return cls(params, INSTRUMENTS[:cls.smallest_instrument_count()], sid)


# ------------------------------------------------------------------------------------------
# One runtime, two drivers
# ------------------------------------------------------------------------------------------
# numba refuses to cache a function that embeds a Python object; host_step must stay cached
@pytest.mark.filterwarnings("error:Cannot cache compiled function")
@pytest.mark.parametrize("kind", KINDS)
def test_live_host_step_and_run_strategy_batch_write_the_same_intents(kind, live_hosts):
    live, ref = live_hosts(make_kind(kind)), HostedStrategy(make_kind(kind))
    venue = ScriptedVenue()
    ex, n_intents = None, 0
    for t, md in STEPS:
        want = ref.step(md, ex, now_ns=t).copy()
        got = live.step(md, ex, now_ns=t)
        assert same_intents(got, want), (kind, t)
        n_intents += len(want)
        ex = venue.answer(want, ref.book)
    assert n_intents > 0, f"{kind} never traded: the comparison tests nothing"
    assert_same_state(live, ref)
    assert live.hctl[H_CALLS] == len(STEPS) and live.hctl[H_PUSHBACK] == 0


def halted_answers(intents, t):
    """What the host must answer for intents that never reached the gate."""
    out = [report(o, EXEC_REJECT if o["kind"] == INTENT_NEW else EXEC_CANCEL_REJECT, ts=t)
           for o in intents]
    for r in out:
        r["reject_code"] = REJECT_HALTED
    return out


def test_a_full_intent_ring_answers_the_unsent_intents_next_batch_as_in_process(live_hosts):
    params = {"sigma_init_ticks": 10.0, "min_requote_interval_ms": 0.0}
    live = live_hosts(make_strategy("market_making", params, INSTRUMENTS[:1], 3),
                      intent_capacity=2)           # room for one pair of quotes, not drained
    ref = HostedStrategy(make_strategy("market_making", params, INSTRUMENTS[:1], 3))
    t = 1_000
    book = snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=t)
    quotes = ref.step(book, now_ns=t).copy()
    live.step(book, now_ns=t, drain=False)
    assert len(quotes) == 2 and live.hctl[H_OUT] == 2 and live.hctl[H_PUSHBACK] == 0
    # both quotes acked, the market moves: two replaces, and the ring is still full
    acks = execs(*[ack(q) for q in quotes])
    t += MS
    move = top(1, 99_995, 50, 100_015, 50, t)
    replaces = ref.step(move, acks, now_ns=t).copy()
    live.step(move, acks, now_ns=t, drain=False)
    assert len(replaces) == 2 and live.hctl[H_OUT] == 2
    assert live.hctl[H_PUSHBACK] == 2 and live.hctl[H_FB_N] == 2
    fb = live.fb[:2]
    assert list(fb["kind"]) == [EXEC_CANCEL_REJECT] * 2
    assert list(fb["reject_code"]) == [REJECT_HALTED] * 2
    assert list(fb["client_order_id"]) == list(replaces["client_order_id"])
    assert_same_state(live, ref)
    # next batch: the answers come first (in-process: the same records, built here), the
    # quotes are LIVE again and replaced again, and refused again
    t += MS
    again = ref.step(top(1, 99_995, 50, 100_015, 50, t),
                     execs(*halted_answers(replaces, t - MS)), now_ns=t).copy()
    live.step(top(1, 99_995, 50, 100_015, 50, t), now_ns=t, drain=False)
    assert len(again) == 2 and live.hctl[H_PUSHBACK] == 4
    assert list(live.fb[:2]["client_order_id"]) == list(again["client_order_id"])
    assert_same_state(live, ref)
    # a new order refused is answered EXEC_REJECT: its slot is freed, not left pending
    t += MS
    bid = quotes[quotes["side"] == SIDE_BUY][0]
    again = ref.step(ex=execs(*halted_answers(again, t - MS), fill(bid)), now_ns=t).copy()
    live.step(ex=fill(bid), now_ns=t, drain=False)
    new = again[again["kind"] == INTENT_NEW]
    assert len(new) == 1
    fb = live.fb[:live.hctl[H_FB_N]]
    assert EXEC_REJECT in list(fb["kind"])
    assert int(fb[fb["kind"] == EXEC_REJECT][0]["client_order_id"]) == \
        int(new[0]["client_order_id"])
    t += MS
    ref.step(ex=execs(*halted_answers(again, t - MS)), now_ns=t)
    live.step(now_ns=t, drain=False)
    assert_same_state(live, ref)
    # the gate finally drains the ring: only the first two quotes ever left
    assert same_intents(live.step(now_ns=t + MS), quotes)


# ------------------------------------------------------------------------------------------
# A hook that raises
# ------------------------------------------------------------------------------------------
POISON_PX = 13


@njit(cache=True)
def poison_on_market(ctx, st, p, md, n_md, now_ns):
    """Buys one lot at every trade's price; raises after that on a trade at POISON_PX."""
    st.calls += 1
    for j in range(n_md):
        if md[j].kind == MSG_TRADE:
            place(ctx, 0, SIDE_BUY, ORD_IOC, md[j].px_ticks, 1, now_ns)
    for j in range(n_md):
        if md[j].kind == MSG_TRADE and md[j].px_ticks == POISON_PX:
            raise ValueError("poison record")


@njit(cache=True)
def poison_on_exec(ctx, st, p, ex, n_ex, now_ns):
    st.calls += 1


@njit(cache=True)
def poison_on_timer(ctx, st, p, now_ns):
    st.calls += 1


POISON_HOOKS = (poison_on_market, poison_on_exec, poison_on_timer)


@dataclass(frozen=True)
class NoParams:
    pass


class PoisonStrategy(Strategy):
    """Test-only strategy whose on_market raises on a chosen record (see poison_on_market);
    every hook counts its calls in ``st.calls``."""

    # named after its source: a changed hook never meets a stale cached host_step
    kind = "test_poison_" + hashlib.sha1("".join(
        inspect.getsource(f.py_func) for f in POISON_HOOKS).encode()).hexdigest()[:10]
    Params = NoParams
    n_instruments = 1
    on_market = staticmethod(poison_on_market)
    on_exec = staticmethod(poison_on_exec)
    on_timer = staticmethod(poison_on_timer)

    def state_fields(self):
        return [("calls", "i8")]


@pytest.fixture
def poison(monkeypatch):
    monkeypatch.setitem(registry._cache, PoisonStrategy.kind, PoisonStrategy)
    return lambda: PoisonStrategy({}, INSTRUMENTS[:1], 4)


def order_table(h):
    orders = h.ctx.orders
    return {int(o["coid"]): int(o["state"]) for o in orders if o["coid"]}


def test_a_hook_that_raises_halts_the_strategy_loses_no_fill_and_both_hosts_agree(
        live_hosts, poison):
    live, ref = live_hosts(poison()), HostedStrategy(poison())

    def both(md=None, ex=None, now_ns=0):
        want = ref.step(md, ex, now_ns=now_ns).copy()
        assert same_intents(live.step(md, ex, now_ns=now_ns), want)
        return want

    t = 1_000
    assert len(both(snapshot(1, [(99, 5)], [(101, 5)], t), now_ns=t)) == 0
    t += MS
    first = both(trade(1, 100, 1, SIDE_SELL, t), now_ns=t)
    t += MS
    second = both(trade(1, 101, 1, SIDE_SELL, t), ack(first[0]), now_ns=t)
    assert len(first) == len(second) == 1
    # the batch that raises carries the fill of the first order and the ack of the second; the
    # hook had written two intents (for the trades at 102 and at the poison price) before it
    # raised. API v2: the strategy halts, and the runtime cancels its one live order
    t += MS
    halt_ns = t
    md = np.concatenate([trade(1, 102, 1, SIDE_SELL, t), trade(1, POISON_PX, 1, SIDE_SELL, t)])
    out = both(md, execs(fill(first[0]), ack(second[0])), now_ns=t)
    coid2 = int(second[0]["client_order_id"])
    assert len(out) == 1
    assert out[0]["kind"] == INTENT_CANCEL and int(out[0]["client_order_id"]) == coid2
    for h in (live, ref):
        assert h.hctl[H_KERNEL_ERRORS] == 1 and h.hctl[H_DISCARDED] == 2
        assert h.rt["halted"] == HALT_MARKET and HALT_NAMES[int(h.rt["halted"])] == \
            "on_market raised"
        assert h.rt["halt_ns"] == halt_ns
        assert h.ctx.pos[0]["pos"] == 1                   # the fill reached the positions
        # filled order gone, the second being cancelled, the two discarded ones rolled back
        assert order_table(h) == {coid2: OST_PENDING_CANCEL}
    calls = [int(h.st.calls) for h in (live, ref)]
    hook_batches = [int(h.hctl[H_CALLS]) for h in (live, ref)]
    assert calls[0] == calls[1] > 0
    # and no hook runs again: not on trades, reports or timer ticks; the fill of the second
    # order (it raced the cancel) is still accounted
    t += MS
    assert len(both(trade(1, 103, 1, SIDE_SELL, t), fill(second[0]), now_ns=t)) == 0
    t += 50 * MS                                          # several timer periods later
    assert len(both(trade(1, 104, 1, SIDE_SELL, t), now_ns=t)) == 0
    t += 50 * MS
    assert len(both(now_ns=t)) == 0
    for h, n, b in zip((live, ref), calls, hook_batches):
        assert h.ctx.pos[0]["pos"] == 2
        assert order_table(h) == {}
        assert int(h.st.calls) == n and h.hctl[H_CALLS] == b
        assert h.rt["halted"] == HALT_MARKET and h.rt["halt_ns"] == halt_ns
        assert h.hctl[H_KERNEL_ERRORS] == 1
    assert_same_state(live, ref)


def test_an_order_in_flight_at_the_halt_is_cancelled_when_it_comes_back_live(poison):
    """A NEW not yet acknowledged at the halt cannot be cancelled then; when its ack arrives
    the runtime cancels it, and again after a cancel reject: a halted strategy never leaves
    an order resting."""
    h = HostedStrategy(poison())
    t = 1_000
    h.step(snapshot(1, [(99, 5)], [(101, 5)], t), now_ns=t)
    t += MS
    first = h.step(trade(1, 100, 1, SIDE_SELL, t), now_ns=t).copy()
    assert len(first) == 1 and first[0]["kind"] == INTENT_NEW
    t += MS
    assert len(h.step(trade(1, POISON_PX, 1, SIDE_SELL, t), now_ns=t)) == 0   # halts
    coid = int(first[0]["client_order_id"])
    assert h.rt["halted"] == HALT_MARKET and order_table(h) == {coid: OST_PENDING_NEW}
    t += MS
    out = h.step(ex=ack(first[0]), now_ns=t).copy()
    assert len(out) == 1 and out[0]["kind"] == INTENT_CANCEL
    assert int(out[0]["client_order_id"]) == coid
    t += MS
    out = h.step(ex=report(out[0], EXEC_CANCEL_REJECT), now_ns=t).copy()
    assert len(out) == 1 and out[0]["kind"] == INTENT_CANCEL       # asked again, once
    t += 50 * MS
    assert len(h.step(now_ns=t)) == 0                              # not on every tick


# ------------------------------------------------------------------------------------------
# A restarted host
# ------------------------------------------------------------------------------------------
def test_a_restarted_host_skips_ring_reports_the_journal_already_applied(live_hosts):
    params = {"sigma_init_ticks": 10.0}
    live = live_hosts(make_strategy("market_making", params, INSTRUMENTS[:1], 3))
    ref = HostedStrategy(make_strategy("market_making", params, INSTRUMENTS[:1], 3))
    t = 1_000
    quotes = ref.step(snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=t), now_ns=t).copy()
    live.step(snapshot(1, [(99_990, 50)], [(100_010, 50)], ts=t), now_ns=t)
    bid = quotes[quotes["side"] == SIDE_BUY][0]
    # what the journal holds: both quotes approved, the bid acked and partially filled
    journal = execs(ack(bid), report(bid, EXEC_PARTIAL, qty=4, leaves=6))
    journal["reserved"] = [500, 501]
    # a restarted host keeps its books (the fresh state is made over them) and its intent ring
    fresh = [make_strategy("market_making", params, INSTRUMENTS[:1], 3).make_state(
        *h.book.arrays) for h in (live, ref)]
    for h, state in zip((live, ref), fresh):
        h.state = state
        h.hctl[H_LAST_SEQ] = restore_state(state, quotes, journal)["last_seq"]
        assert state.ctx.pos[0]["pos"] == 4
    # the dead incarnation left those two reports unread on its exec ring, then came the rest
    ring = execs(ack(bid), report(bid, EXEC_PARTIAL, qty=4, leaves=6), fill(bid, qty=6))
    ring["reserved"] = [500, 501, 502]
    t += MS
    want = ref.step(ex=ring, now_ns=t).copy()
    assert same_intents(live.step(ex=ring, now_ns=t), want)
    for h in (live, ref):
        assert h.state.ctx.pos[0]["pos"] == 4 + 6        # each fill once
        assert h.hctl[H_SKIPPED] == 2 and h.hctl[H_LAST_SEQ] == 502
        assert order_slot(h.state.ctx, int(bid["client_order_id"])) < 0
    assert_same_state(live, ref)


def test_the_dedupe_keeps_reports_without_a_router_sequence_number():
    ex = np.zeros(5, EXEC_DTYPE)
    ex["reserved"] = [0, 5, 6, 0, 7]        # 0: a gate denial or a push-back answer
    ex["client_order_id"] = [1, 2, 3, 4, 5]
    hctl = make_hctl()
    hctl[H_LAST_SEQ] = 6
    n = skip_applied(ex, len(ex), hctl)
    assert list(ex["client_order_id"][:n]) == [1, 4, 5]
    assert hctl[H_SKIPPED] == 2 and hctl[H_LAST_SEQ] == 7
