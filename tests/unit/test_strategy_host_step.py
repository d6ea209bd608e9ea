"""The live strategy host step (the generated ``host_step`` on real shared-memory rings) and the
in-process ``run_strategy_batch`` of the backtest are one runtime: on the same stream of market
records and execution reports they write the same intents and end in the same state, answer
push-back the same way, survive a kernel that raises without losing the batch's fills, and a
restarted host skips the reports the journal already applied."""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit

from market.book import L2Book
from shm.histogram import LatencyHistogram
from shm.records import (
    EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_PARTIAL, EXEC_REJECT, INTENT_NEW, MARKET_DTYPE,
    MSG_TRADE, ORD_IOC, ORDER_DTYPE, REJECT_HALTED, SIDE_BUY, SIDE_SELL,
)
from shm.ring import BroadcastRing, SpscRing
from stages.base import stack_states
from stages.clock import C_BASE_NS
from stages.host_codegen import host_step_for
from stages.strategy_host import TIMER_NS
from strategies import registry
from strategies.base import (
    OS_COID, OS_STATE, OST_PENDING_NEW, PS_POS, Strategy, find_order, make_ctl, make_orders,
    make_positions, restore_state, send_new,
)
from strategies.host import (
    H_CALLS, H_DISCARDED, H_FB_N, H_KERNEL_ERRORS, H_LAST_SEQ, H_OUT, H_PUSHBACK, H_SKIPPED,
    HostedStrategy, make_hctl, skip_applied,
)
from strategies.registry import make_strategy
from tests.unit.scenario_records import ack, execs, fill, instrument, report, snapshot, top, trade
from tests.unit.test_strategy_conformance import INSTRUMENTS, KINDS, STEPS, ScriptedVenue

MS = 1_000_000


class LiveHost:
    """The strategy-host stage's hot path without its process: the generated host_step over
    one market-data broadcast ring, the exec and reject rings and the intent ring. The clock is
    pinned (ns per tick 0), so ``step(now_ns=t)`` runs the kernel at exactly t."""

    def __init__(self, prefix, strategy, intent_capacity=256):
        self.step_fn = host_step_for(strategy.kind, TIMER_NS)
        self.rings = []
        md = self._ring(BroadcastRing.create(prefix, "md", MARKET_DTYPE, 4096, 1))
        ex = self._ring(SpscRing.create(prefix, "exec", EXEC_DTYPE, 256))
        rej = self._ring(SpscRing.create(prefix, "reject", EXEC_DTYPE, 256))
        intent = self._ring(SpscRing.create(prefix, "intent", ORDER_DTYPE, intent_capacity))
        self.md_w, self.ex_w, self.rej_w = md.writer(), ex.writer(), rej.writer()
        self.intent_w, self.intent_r = intent.writer(), intent.reader()
        md_r, ex_r = [md.reader(0)], [ex.reader(), rej.reader()]
        self.md_sts, self.md_slots = stack_states(md_r), tuple(r.slots for r in md_r)
        self.ex_sts, self.ex_slots = stack_states(ex_r), tuple(r.slots for r in ex_r)
        n = max(i.instrument_id for i in strategy.instruments)
        self.book = L2Book(n, 64)
        self.state = strategy.make_state()
        self.hctl = make_hctl()
        self.md = np.zeros(2048, MARKET_DTYPE)
        self.md_i = self.md.view(np.int64).reshape(len(self.md), -1)
        self.ex = np.zeros(512, EXEC_DTYPE)
        self.ex_i = self.ex.view(np.int64).reshape(len(self.ex), -1)
        self.fb = np.zeros(256, EXEC_DTYPE)
        self.out = np.zeros(256, ORDER_DTYPE)
        self.out_i = self.out.view(np.int64).reshape(len(self.out), -1)
        self.cal = np.zeros(3)
        self.hist = LatencyHistogram.local()
        self.got = np.zeros(4096, ORDER_DTYPE)

    def _ring(self, ring):
        self.rings.append(ring)
        return ring

    def step(self, md=None, ex=None, rejects=None, now_ns=0, drain=True):
        """Publish the inputs, run one host step at ``now_ns``; the intents that reached the
        intent ring (all of them, unless ``drain`` is False)."""
        for w, recs in ((self.md_w, md), (self.ex_w, ex), (self.rej_w, rejects)):
            if recs is not None and len(recs):
                assert w.publish(recs) == len(recs)
        self.cal[C_BASE_NS] = now_ns
        px, qty, meta = self.book.arrays
        self.step_fn(self.state, px, qty, meta, self.hctl, self.cal, self.md_sts,
                     self.md_slots, self.md, self.md_i, self.ex_sts, self.ex_slots, self.ex,
                     self.ex_i, self.fb, self.out, self.out_i, self.intent_w.st,
                     self.intent_w.slots, self.hist.array)
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
    for x, y in zip(live.state, ref.state):
        assert x.tobytes() == y.tobytes()
    for x, y in zip(live.book.arrays, ref.book.arrays):
        assert x.tobytes() == y.tobytes()
    for w in (H_CALLS, H_KERNEL_ERRORS, H_DISCARDED, H_LAST_SEQ, H_SKIPPED):
        assert live.hctl[w] == ref.hctl[w], w


def make_kind(kind, sid=3):
    cls = registry.get_strategy_class(kind)
    return cls({}, INSTRUMENTS[:cls.n_instruments], sid)


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
# A kernel that raises
# ------------------------------------------------------------------------------------------
POISON_PX = 13


@njit(cache=True)
def poison_kernel(state, px, qty, meta, md, n_md, ex, n_ex, now_ns, out):
    """Buys one lot at every trade's price; raises after that on a trade at POISON_PX."""
    ctl, orders, pos = state
    k = 0
    for j in range(n_md):
        if md[j].kind == MSG_TRADE:
            k, s = send_new(out, k, ctl, orders, 0, SIDE_BUY, ORD_IOC, md[j].px_ticks, 1, now_ns)
    for j in range(n_md):
        if md[j].kind == MSG_TRADE and md[j].px_ticks == POISON_PX:
            raise ValueError("poison record")
    return k


@dataclass(frozen=True)
class NoParams:
    pass


class PoisonStrategy(Strategy):
    """Test-only strategy whose kernel raises on a chosen record (see poison_kernel)."""

    # named after its source: a changed kernel never meets a stale cached host_step
    kind = "test_poison_" + hashlib.sha1(
        inspect.getsource(poison_kernel.py_func).encode()).hexdigest()[:10]
    Params = NoParams
    n_instruments = 1
    kernel = staticmethod(poison_kernel)

    def make_state(self):
        return make_ctl(self.strategy_id, self.instruments), make_orders(8), make_positions(1)


@pytest.fixture
def poison(monkeypatch):
    monkeypatch.setitem(registry._cache, PoisonStrategy.kind, PoisonStrategy)
    return lambda: PoisonStrategy({}, INSTRUMENTS[:1], 4)


def test_a_kernel_that_raises_loses_no_fill_and_both_hosts_count_it(live_hosts, poison):
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
    # the batch that raises carries the fill of the first order; the kernel had written two
    # intents (for the trades at 102 and at the poison price) before it raised
    t += MS
    md = np.concatenate([trade(1, 102, 1, SIDE_SELL, t), trade(1, POISON_PX, 1, SIDE_SELL, t)])
    assert len(both(md, fill(first[0]), now_ns=t)) == 0
    for h in (live, ref):
        assert h.hctl[H_KERNEL_ERRORS] == 1 and h.hctl[H_DISCARDED] == 2
        ctl, orders, pos = h.state
        assert pos[0, PS_POS] == 1                        # the fill reached the positions
        table = {int(orders[s, OS_COID]): int(orders[s, OS_STATE]) for s in range(8)
                 if orders[s, OS_COID]}
        # filled order gone, the unacked second waiting, the two discarded ones rolled back
        assert table == {int(second[0]["client_order_id"]): OST_PENDING_NEW}
    # and the loop goes on
    t += MS
    after = both(trade(1, 103, 1, SIDE_SELL, t), now_ns=t)
    assert len(after) == 1 and after[0]["px_ticks"] == 103
    assert_same_state(live, ref)


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
    fresh = [make_strategy("market_making", params, INSTRUMENTS[:1], 3).make_state()
             for _ in range(2)]
    for h, state in zip((live, ref), fresh):
        h.state = state
        h.hctl[H_LAST_SEQ] = restore_state(state, quotes, journal)["last_seq"]
        assert state[2][0, PS_POS] == 4
    # the dead incarnation left those two reports unread on its exec ring, then came the rest
    ring = execs(ack(bid), report(bid, EXEC_PARTIAL, qty=4, leaves=6), fill(bid, qty=6))
    ring["reserved"] = [500, 501, 502]
    t += MS
    want = ref.step(ex=ring, now_ns=t).copy()
    assert same_intents(live.step(ex=ring, now_ns=t), want)
    for h in (live, ref):
        assert h.state[2][0, PS_POS] == 4 + 6           # each fill once
        assert h.hctl[H_SKIPPED] == 2 and h.hctl[H_LAST_SEQ] == 502
        assert find_order(h.state[1], int(bid["client_order_id"])) < 0
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
