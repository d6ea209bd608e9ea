"""Every registered strategy: compiles, survives empty / one-sided / crossed / locked / halted
books (from the start and after a warm market) without sending orders into them and without
raising (the runtime would catch it: ``kernel_errors`` must stay 0), keeps the intent contract
(ids, cause times, lawful quotes) on a random two-venue stream answered by a scripted venue,
and replays bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from market.book import META_HALTED, best_ask_px, best_bid_px, is_valid
from shm.records import (
    EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED, EXEC_FILL, EXEC_REJECT,
    EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW, INTENT_REPLACE, MSG_STATUS, ORD_IOC,
    ORD_MARKET, ORD_POST_ONLY, ORDER_DTYPE, SIDE_BUY, SIDE_SELL, STATUS_HALTED,
)
from strategies.host import HostedStrategy
from strategies.registry import available_kinds, get_strategy_class
from tests.unit.scenario_records import execs, instrument, market, report, snapshot, top, trade

MS = 1_000_000
INSTRUMENTS = [instrument(1, 1), instrument(2, 2)]
KINDS = available_kinds()


def make_host(kind, strategy_id=3, **kw):
    # a kind whose defaults are built to stay silent on noise (momentum_burst: a detector of
    # one-sided bursts) names, as ``conformance_params``, a set under which the random stream
    # below does make it trade; every other kind runs on its defaults
    cls = get_strategy_class(kind)
    params = dict(getattr(cls, "conformance_params", {}))
    return HostedStrategy(cls(params, INSTRUMENTS[:cls.smallest_instrument_count()],
                              strategy_id), **kw)


def test_the_three_strategies_are_registered():
    assert {"market_making", "pairs_trading", "cross_venue_arb"} <= set(KINDS)
    for kind in KINDS:
        cls = get_strategy_class(kind)
        assert cls.kind == kind and cls.__doc__ and cls.Params is not None
        assert all(doc for doc in cls.param_docs().values()), f"{kind}: undocumented parameter"
        module = __import__(cls.__module__, fromlist=["_"])
        for name in cls.param_docs():
            assert name in module.__doc__ or name in (cls.__doc__ or ""), \
                f"{kind}: module docstring does not explain {name}"


def halted(inst, ts):
    out = market(1)
    out[0]["kind"], out[0]["instrument_id"], out[0]["aux0"], out[0]["recv_ts_ns"] = \
        MSG_STATUS, inst, STATUS_HALTED, ts
    return out


def bad_books(kind_of_bad, t):
    recs = []
    for inst in (1, 2):
        if kind_of_bad == "empty":
            recs.append(snapshot(inst, [], [], t))
        elif kind_of_bad == "one_sided":
            recs.append(snapshot(inst, [(99_990, 5)], [], t))
        elif kind_of_bad == "crossed":
            recs.append(snapshot(inst, [(100_020, 5)], [(100_000, 5)], t))
        elif kind_of_bad == "locked":
            recs.append(snapshot(inst, [(100_000, 5)], [(100_000, 5)], t))
        elif kind_of_bad == "halted":
            recs.append(snapshot(inst, [(99_990, 5)], [(100_010, 5)], t))
            recs.append(halted(inst, t))
    return np.concatenate(recs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", ["none", "empty", "one_sided", "crossed", "locked", "halted"])
def test_no_orders_without_a_usable_book(kind, bad):
    h = make_host(kind)
    for n in range(300):   # 30 s of timer ticks / bad books: long enough to pass any warm-up
        t = n * 100 * MS + 1
        md = bad_books(bad, t) if bad != "none" else None
        out = h.step(md, now_ns=t)
        assert len(out) == 0, (kind, bad, out)
    assert h.kernel_errors == 0


class ScriptedVenue:
    """Answers intents the next step: IOC/market fill at the touch if marketable (else expire),
    post-only rejects if it would take, resting orders fill when the touch trades through."""

    def __init__(self):
        self.resting: dict[int, np.ndarray] = {}

    def answer(self, intents, book):
        px, qty, meta = book.arrays
        reps = []
        for r in intents:
            rec = r.reshape(1)[0:1].copy()
            coid = int(r["client_order_id"])
            inst, side, kind = int(r["instrument_id"]), int(r["side"]), int(r["kind"])
            bid, ask = best_bid_px(px, meta, inst), best_ask_px(px, meta, inst)
            if kind == INTENT_NEW:
                crosses = (side == SIDE_BUY and ask > 0 and (r["order_type"] == ORD_MARKET or
                                                             r["px_ticks"] >= ask)) or \
                          (side == SIDE_SELL and bid > 0 and (r["order_type"] == ORD_MARKET or
                                                              r["px_ticks"] <= bid))
                if r["order_type"] in (ORD_IOC, ORD_MARKET):
                    if crosses:
                        reps.append(report(rec[0], EXEC_FILL, px=ask if side == SIDE_BUY else bid))
                    else:
                        reps.append(report(rec[0], EXEC_EXPIRED))
                elif r["order_type"] == ORD_POST_ONLY and crosses:
                    reps.append(report(rec[0], EXEC_REJECT))
                else:
                    reps.append(report(rec[0], EXEC_ACK, leaves=int(r["qty_lots"])))
                    self.resting[coid] = rec
            elif kind == INTENT_CANCEL:
                if coid in self.resting:
                    reps.append(report(self.resting.pop(coid)[0], EXEC_CANCEL_ACK))
                else:
                    reps.append(report(rec[0], EXEC_CANCEL_REJECT))
            elif kind == INTENT_REPLACE:
                if coid in self.resting:
                    self.resting[coid][0]["px_ticks"] = r["px_ticks"]
                    self.resting[coid][0]["qty_lots"] = r["qty_lots"]
                    reps.append(report(rec[0], EXEC_REPLACE_ACK, leaves=int(r["qty_lots"])))
                else:
                    reps.append(report(rec[0], EXEC_CANCEL_REJECT))
        for coid, rec in list(self.resting.items()):
            o = rec[0]
            inst = int(o["instrument_id"])
            bid, ask = best_bid_px(px, meta, inst), best_ask_px(px, meta, inst)
            if (o["side"] == SIDE_BUY and 0 < ask <= o["px_ticks"]) or \
               (o["side"] == SIDE_SELL and o["px_ticks"] <= bid):
                reps.append(report(o, EXEC_FILL))
                del self.resting[coid]
        return execs(*reps)

    def check_no_self_cross(self):
        for inst in (1, 2):
            bids = [int(r[0]["px_ticks"]) for r in self.resting.values()
                    if r[0]["instrument_id"] == inst and r[0]["side"] == SIDE_BUY]
            asks = [int(r[0]["px_ticks"]) for r in self.resting.values()
                    if r[0]["instrument_id"] == inst and r[0]["side"] == SIDE_SELL]
            if bids and asks:
                assert max(bids) < min(asks), "the strategy's own orders cross"


def stream(n_steps, seed=11):
    """Two venues quoting one asset around a random walk, with trades and dislocations."""
    rng = np.random.default_rng(seed)
    p = 100_000
    steps = []
    disloc = 0
    for n in range(n_steps):
        t = n * 10 * MS + 1_000
        p += int(rng.integers(-3, 4))
        if disloc == 0 and rng.random() < 0.01:
            disloc = int(rng.choice([-1, 1])) * int(rng.integers(30, 120))
        elif disloc and rng.random() < 0.2:
            disloc = 0
        recs = []
        if n == 0:
            recs += [snapshot(1, [], [], t), snapshot(2, [], [], t)]
        for inst, off in ((1, 0), (2, disloc)):
            half = int(rng.integers(1, 4))
            recs.append(top(inst, p + off - half, int(rng.integers(1, 50)), p + off + half,
                            int(rng.integers(1, 50)), t))
            if rng.random() < 0.3:
                side = int(rng.integers(1, 3))
                recs.append(trade(inst, p + off + (half if side == SIDE_BUY else -half),
                                  int(rng.integers(1, 10)), side, t))
        steps.append((t, np.concatenate(recs)))
    return steps


def run_stream(kind, steps):
    h = make_host(kind)
    venue = ScriptedVenue()
    inst_ids = [i.instrument_id for i in INSTRUMENTS[:type(h.strategy).smallest_instrument_count()]]
    all_out, seen_coids, last_recv = [], set(), 0
    ex = None
    for t, md in steps:
        last_recv = max(last_recv, int(md["recv_ts_ns"].max()))
        out = h.step(md, ex, now_ns=t).copy()
        px, qty, meta = h.book.arrays
        for r in out:
            assert r["strategy_id"] == 3 and r["client_order_id"] >> 48 == 3
            assert r["instrument_id"] in inst_ids
            assert r["venue_id"] == INSTRUMENTS[int(r["instrument_id"]) - 1].venue_id
            assert r["cause_recv_ts_ns"] == last_recv and r["ring_seq"] == 0
            if r["kind"] in (INTENT_NEW, INTENT_REPLACE):
                inst = int(r["instrument_id"])
                assert is_valid(px, meta, inst) and meta[inst, META_HALTED] == 0
                assert r["qty_lots"] > 0
                assert r["px_ticks"] > 0 or r["order_type"] == ORD_MARKET
                if r["order_type"] == ORD_POST_ONLY:   # passive: never at or through the touch
                    if r["side"] == SIDE_BUY:
                        assert r["px_ticks"] < best_ask_px(px, meta, inst)
                    else:
                        assert r["px_ticks"] > best_bid_px(px, meta, inst)
            if r["kind"] == INTENT_NEW:
                assert int(r["client_order_id"]) not in seen_coids
                seen_coids.add(int(r["client_order_id"]))
        ex = venue.answer(out, h.book)
        venue.check_no_self_cross()
        all_out.append(out)
    return h, np.concatenate(all_out) if all_out else np.zeros(0, ORDER_DTYPE)


STEPS = stream(4_000)   # 40 s at 10 ms


@pytest.mark.parametrize("kind", KINDS)
def test_strategy_keeps_the_intent_contract_and_replays_bit_for_bit(kind):
    h1, out1 = run_stream(kind, STEPS)
    h2, out2 = run_stream(kind, STEPS)
    assert len(out1) > 0, f"{kind} never traded on the stream: the scenario tests nothing"
    assert h1.kernel_errors == 0
    assert out1.tobytes() == out2.tobytes()
    for a, b in zip(h1.state.arrays(), h2.state.arrays()):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", ["crossed", "one_sided", "empty", "locked", "halted"])
def test_a_book_that_goes_bad_gets_no_new_orders_and_raises_nothing(kind, bad):
    # after 34 s of a normal market every model is warm (pairs: a full window, a z-score, and
    # flat at that moment, so its next sample would size an entry off the bad book)
    h = make_host(kind)
    venue = ScriptedVenue()
    ex = None
    for t, md in STEPS[:3_400]:
        out = h.step(md, ex, now_ns=t).copy()
        ex = venue.answer(out, h.book)
    t = STEPS[3_399][0] + 10 * MS
    for n in range(300):   # 300 ms of timer ticks: every sampler comes due on the bad book
        md = bad_books(bad, t + n * MS) if n == 0 else None
        out = h.step(md, ex, now_ns=t + n * MS).copy()
        ex = venue.answer(out, h.book)
        assert not np.isin(out["kind"], [INTENT_NEW, INTENT_REPLACE]).any(), out
    assert h.kernel_errors == 0, f"{kind} raised on a {bad} book"


def test_intent_buffer_overflow_is_counted_not_written_past_the_end():
    cls = get_strategy_class("market_making")
    h = HostedStrategy(cls({"sigma_init_ticks": 10.0}, INSTRUMENTS[:1], 3), max_intents=1)
    out = h.step(snapshot(1, [(99_990, 5)], [(100_010, 5)], 1), now_ns=1)
    assert len(out) == 1 and h.rt["dropped"] == 1
    # the arbitrage needs both legs in one batch: with room for one it sends none
    h = make_host("cross_venue_arb", max_intents=1)
    md = np.concatenate([snapshot(1, [(100_200, 5)], [(100_210, 5)], 1),
                         snapshot(2, [(99_900, 5)], [(99_910, 5)], 1)])
    assert len(h.step(md, now_ns=1)) == 0


def test_a_strategy_outside_the_checkout_is_found_through_the_strategy_path(tmp_path,
                                                                             monkeypatch):
    from strategies import registry

    (tmp_path / "my_own.py").write_text(
        "from strategies.base import Strategy\nfrom strategies.market_making import "
        "MarketMakingParams\n\n\nclass MyOwn(Strategy):\n    kind = 'my_own'\n"
        "    Params = MarketMakingParams\n")
    (tmp_path / "market_making.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.setenv(registry.STRATEGY_PATH_ENV, str(tmp_path))
    monkeypatch.setattr(registry, "_cache", {})
    assert "my_own" in registry.available_kinds()
    assert registry.get_strategy_class("my_own").__name__ == "MyOwn"
    # a built-in kind is never shadowed by a file of the same name on the path
    assert registry.get_strategy_class("market_making").__module__ == "strategies.market_making"
    monkeypatch.delenv(registry.STRATEGY_PATH_ENV)
    monkeypatch.setattr(registry, "_cache", {})
    assert "my_own" not in registry.available_kinds()
