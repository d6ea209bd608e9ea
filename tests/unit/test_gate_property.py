"""Property test of the risk gate (stage and kernel on in-process rings): random intents of three
strategies, malformed and forged ones among them, random venue answers (acks, partial and full
fills, cancels, replaces, rejects) and a random-walk market. An independent model in this file
follows the same events and checks, after every batch:

- every intent gets exactly one answer: the journal lists each intent once, in the order its
  strategy sent it; the approved ring is the journal's approvals and each strategy's reject ring
  its denials, in order, and nothing else;
- 0 limit breaches: no approved order above max_order_qty or max_notional; worst-case exposure
  (position + open orders on the side, the new one included) within max_position at every
  approval, so the position itself never leaves it; open orders per strategy within
  max_open_orders; no new order or replace approved once equity has crossed the daily-loss limit
  (the latch); no approved order that would cross a resting order of ours (self-trade).

Default: 24 hypothesis examples x 2,000 intents. ``--run-slow``: 100 x 10,000 = 10^6 intents.
"""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_DTYPE, EXEC_FILL,
                         EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL, INTENT_NEW,
                         INTENT_REPLACE, OFLAG_RISK_SYSTEM, ORD_IOC, ORD_LIMIT, ORD_MARKET,
                         ORD_POST_ONLY, ORDER_DTYPE, SIDE_BUY, SIDE_SELL)
from tests.inproc import InProcessInstance, drain
from tests.unit.scenario_records import snapshot

INST = 1
SIDS = (1, 2, 3)


class Model:
    """What the gate must have done, from the events the test itself produced."""

    def __init__(self, lim):
        self.lim = lim
        self.pos = {s: 0 for s in SIDS}
        self.cash = 0.0
        self.mid = 10_000.0
        self.open = {}          # coid -> dict(sid, side, px, leaves, pend_inc, replacing, type)
        self.halted = False
        self.breaches = []

    def equity(self):
        return self.cash + sum(self.pos.values()) * self.mid

    def check_loss(self):
        if self.equity() < -self.lim["daily_loss_limit"] - 1e-6:
            self.halted = True

    def exposure(self, sid, side):
        return sum(o["leaves"] + o["pend_inc"] for o in self.open.values()
                   if o["sid"] == sid and o["side"] == side)

    def approve(self, o):
        sid, kind, coid = int(o["strategy_id"]), int(o["kind"]), int(o["client_order_id"])
        qty, px, otype = int(o["qty_lots"]), int(o["px_ticks"]), int(o["order_type"])
        lim = self.lim
        if kind in (INTENT_NEW, INTENT_REPLACE):
            if self.halted:
                self.breaches.append(("approved while the daily loss was breached", o))
            if qty > lim["max_order_qty_lots"]:
                self.breaches.append(("max_order_qty", o))
            value_px = self.mid if otype == ORD_MARKET else px
            if value_px * qty > lim["max_notional"] + 1e-6:
                self.breaches.append(("max_notional", o))
        if kind == INTENT_NEW:
            side = int(o["side"])
            worst = self.exposure(sid, side) + qty
            p = self.pos[sid]
            if (p + worst if side == SIDE_BUY else -p + worst) > lim["max_position_lots"]:
                self.breaches.append(("max_position", o))
            if sum(1 for x in self.open.values() if x["sid"] == sid) + 1 > lim["max_open_orders"]:
                self.breaches.append(("max_open_orders", o))
            for x in self.open.values():   # self-trade: would it cross a resting order of ours?
                if x["side"] == side:
                    continue
                if otype == ORD_MARKET or (side == SIDE_BUY and px >= x["px"]) or \
                        (side == SIDE_SELL and px <= x["px"]):
                    self.breaches.append(("self_trade", o))
                    break
            self.open[coid] = dict(sid=sid, side=side, px=px, leaves=qty, pend_inc=0,
                                   replacing=False, new_px=0, new_qty=0, type=otype)
        elif kind == INTENT_REPLACE:
            x = self.open.get(coid)
            if x is None or x["replacing"]:
                self.breaches.append(("replace of an unknown order approved", o))
                return
            inc = max(qty - x["leaves"], 0)
            p = self.pos[sid]
            worst = self.exposure(sid, x["side"]) + inc
            if (p + worst if x["side"] == SIDE_BUY else -p + worst) > lim["max_position_lots"]:
                self.breaches.append(("max_position (replace)", o))
            x.update(pend_inc=inc, replacing=True, new_px=px, new_qty=qty)
        elif kind == INTENT_CANCEL and coid not in self.open:
            self.breaches.append(("cancel of an unknown order approved", o))

    def report(self, e):
        coid, kind = int(e["client_order_id"]), int(e["kind"])
        x = self.open.get(coid)
        if kind in (EXEC_PARTIAL, EXEC_FILL):
            sid, q, px = int(e["strategy_id"]), int(e["qty_lots"]), int(e["px_ticks"])
            signed = q if int(e["side"]) == SIDE_BUY else -q
            self.pos[sid] += signed
            self.cash -= signed * px
            if abs(self.pos[sid]) > self.lim["max_position_lots"]:
                self.breaches.append(("position beyond max_position", e))
            if x is not None:
                x["leaves"] = int(e["leaves_lots"]) if kind == EXEC_PARTIAL else 0
                if x["replacing"]:   # a pending replace counts max(leaves, new qty)
                    x["pend_inc"] = max(x["new_qty"] - x["leaves"], 0)
                if x["leaves"] <= 0:
                    del self.open[coid]
            self.check_loss()
        elif x is None:
            return
        elif kind == EXEC_REPLACE_ACK and x["replacing"]:
            x.update(leaves=x["new_qty"], px=x["new_px"], pend_inc=0, replacing=False)
        elif kind == EXEC_CANCEL_ACK:
            del self.open[coid]
        elif kind == EXEC_REJECT:     # the order itself refused: gone
            del self.open[coid]
        elif kind == EXEC_CANCEL_REJECT and x["replacing"]:
            x.update(pend_inc=0, replacing=False)


def _report(o, kind, qty=0, leaves=0, px=None):
    e = np.zeros(1, dtype=EXEC_DTYPE)
    for f in ("side", "instrument_id", "client_order_id", "strategy_id", "venue_id"):
        e[f] = o[f]
    e["kind"], e["qty_lots"], e["leaves_lots"] = kind, qty, leaves
    e["px_ticks"] = o["px_ticks"] if px is None else px
    return e


class Venue:
    """Answers approved orders one round later, at random; keeps its own resting orders."""

    def __init__(self, rng):
        self.rng = rng
        self.resting = {}    # coid -> [order record, leaves]
        self.pending = []

    def take(self, approved):
        self.pending.extend(approved)

    def answer(self, mid):
        out = []
        rng = self.rng
        todo, self.pending = self.pending, []
        for o in todo:
            coid, kind = int(o["client_order_id"]), int(o["kind"])
            r = rng.random()
            if kind == INTENT_NEW:
                if r < 0.1:
                    out.append(_report(o, EXEC_REJECT))
                    continue
                q = int(o["qty_lots"])
                if int(o["order_type"]) == ORD_MARKET or r < 0.4:
                    px = int(mid) if int(o["order_type"]) == ORD_MARKET else None
                    out.append(_report(o, EXEC_FILL, q, 0, px))
                    continue
                out.append(_report(o, EXEC_ACK, leaves=q))
                self.resting[coid] = [o, q]
            elif coid not in self.resting:
                out.append(_report(o, EXEC_CANCEL_REJECT))   # filled or gone already
            elif kind == INTENT_CANCEL:
                out.append(_report(o, EXEC_CANCEL_ACK))
                del self.resting[coid]
            elif kind == INTENT_REPLACE:
                if r < 0.2:
                    out.append(_report(o, EXEC_CANCEL_REJECT))
                else:
                    out.append(_report(o, EXEC_REPLACE_ACK, leaves=int(o["qty_lots"])))
                    self.resting[coid] = [self.resting[coid][0], int(o["qty_lots"])]
        for coid in list(self.resting):   # some resting orders trade
            o, leaves = self.resting[coid]
            if rng.random() < 0.15:
                q = int(rng.integers(1, leaves + 1))
                if q >= leaves:
                    out.append(_report(o, EXEC_FILL, leaves, 0))
                    del self.resting[coid]
                else:
                    out.append(_report(o, EXEC_PARTIAL, q, leaves - q))
                    self.resting[coid][1] = leaves - q
        return np.concatenate(out) if out else np.zeros(0, dtype=EXEC_DTYPE)


def _intents(rng, sid, n, mid, lim, counter, open_coids):
    o = np.zeros(n, dtype=ORDER_DTYPE)
    o["instrument_id"], o["strategy_id"], o["venue_id"] = INST, sid, 1
    kinds = rng.choice([INTENT_NEW, INTENT_CANCEL, INTENT_REPLACE], n, p=[0.7, 0.15, 0.15])
    o["kind"] = kinds
    o["side"] = rng.choice([SIDE_BUY, SIDE_SELL], n)
    o["order_type"] = rng.choice([ORD_LIMIT, ORD_LIMIT, ORD_MARKET, ORD_IOC, ORD_POST_ONLY], n)
    o["qty_lots"] = rng.integers(1, int(lim["max_order_qty_lots"] * 1.5) + 2, n)
    o["px_ticks"] = (mid + rng.normal(0, mid * 0.02, n)).astype(np.int64).clip(1, None)
    for j in range(n):
        if kinds[j] == INTENT_NEW or not open_coids or rng.random() < 0.1:
            counter[0] += 1
            o["client_order_id"][j] = (sid << 48) | counter[0]
        else:
            o["client_order_id"][j] = open_coids[int(rng.integers(len(open_coids)))]
    bad = rng.random(n) < 0.04
    for j in np.flatnonzero(bad):   # malformed, forged, or claiming the gate's own flag
        which = int(rng.integers(5))
        if which == 0:
            o["qty_lots"][j] = 0
        elif which == 1:
            o["side"][j] = 7
        elif which == 2:
            o["instrument_id"][j] = 99
        elif which == 3:
            o["strategy_id"][j] = SIDS[(SIDS.index(sid) + 1) % 3]
        else:
            o["flags"][j] = OFLAG_RISK_SYSTEM
    return o


LIMITS = st.fixed_dictionaries({
    "max_order_qty_lots": st.integers(1, 50),
    "max_notional": st.sampled_from([1e5, 3e5, 1e9]),
    "max_position_lots": st.integers(1, 200),
    "max_open_orders": st.integers(1, 40),
    "daily_loss_limit": st.sampled_from([500.0, 5_000.0, 1e9]),
})


def run_property(tmp_path, shm_prefix, seed, lim, n_intents, skew=0):
    """``skew``: the router's clock against the gate's, in ticks of the test's clock (a tick
    per record): the journal stamps each report ``skew`` off, as two processes' clocks are,
    so a merge by time alone puts some reports on the wrong side of the decisions around
    them."""
    rng = np.random.default_rng(seed)
    risk = "\n".join(f"{k} = {v}" for k, v in lim.items()) + \
        "\nmax_drawdown = 1e12\nprice_band_bps = 300.0\nmax_orders_per_s = 1000000\n" \
        "max_cancels_per_s = 1000000\n"
    with InProcessInstance(tmp_path, shm_prefix, strategies=3, risk=risk) as inst:
        gate = inst.stage("risk_gate")
        md = inst.writer("md-simA")
        iw = {s: inst.writer(f"intent-s{s}") for s in SIDS}
        rr = {s: inst.reader(f"reject-s{s}") for s in SIDS}
        ap_r, j_r, ex_w = inst.reader("approved"), inst.reader("jorder"), inst.writer("exec-gate")
        model, venue = Model(lim), Venue(rng)
        mid, seq, sent_total, counter = 10_000, 0, 0, [0]
        log_ap, log_ex, clock = [], [], [10**6]   # for the journal replay check, in gate order

        def stamp(recs, into, off=0):
            recs = recs.copy()
            recs["send_ts_ns"] = np.arange(clock[0] + 1, clock[0] + 1 + len(recs)) + off
            clock[0] += len(recs)
            into.append(recs)
        answered = 0
        while sent_total < n_intents:
            mid = int(max(100, mid + rng.normal(0, 15)))
            md.publish(snapshot(INST, [(mid - 1, 500)], [(mid + 1, 500)]))
            model.mid = mid
            model.check_loss()
            reports = venue.answer(mid)
            if len(reports):
                seq_arr = np.arange(seq + 1, seq + 1 + len(reports))
                reports["reserved"] = seq_arr
                seq += len(reports)
                assert ex_w.publish(reports) == len(reports)
                stamp(reports, log_ex, skew)
                for e in reports:
                    model.report(e)
            sent = {}
            for s in SIDS:
                n = int(rng.integers(0, 60))
                opens = [c for c, x in model.open.items() if x["sid"] == s]
                sent[s] = _intents(rng, s, n, mid, lim, counter, opens)
                assert iw[s].publish(sent[s]) == n
                sent_total += n
            gate.poll()
            journal = drain(j_r, ORDER_DTYPE)
            approved = drain(ap_r, ORDER_DTYPE)
            # exactly one answer each, in each strategy's order
            assert len(journal) == sum(len(x) for x in sent.values())
            for s in SIDS:
                mine = journal[journal["strategy_id"] == s]
                assert mine["client_order_id"].tolist() == sent[s]["client_order_id"].tolist()
                denials = drain(rr[s], EXEC_DTYPE)
                assert denials["client_order_id"].tolist() == \
                    mine[mine["reject_code"] != 0]["client_order_id"].tolist()
                assert (denials["reject_code"] == mine[mine["reject_code"] != 0]
                        ["reject_code"]).all()
                answered += len(mine)
            assert approved["client_order_id"].tolist() == \
                journal[journal["reject_code"] == 0]["client_order_id"].tolist()
            assert not (journal["flags"] & OFLAG_RISK_SYSTEM).any()
            for o in approved:   # in decision order, as the gate saw them
                model.approve(o)
            assert model.breaches == [], model.breaches[:3]
            venue.take(approved)
            stamp(approved, log_ap)
        assert answered == sent_total
        check_replay(gate, log_ap, log_ex)
        return sent_total


def check_replay(gate, log_ap, log_ex):
    """What a restarted gate rebuilds from the journal (market.risk_state.replay, the approved
    orders and the reports merged by time) is what the live gate holds: positions, open
    orders and exposure, realized PnL and fees."""
    from market.risk import make_risk_state
    from market.risk_state import R_GF, R_N_OPEN, R_OO_COUNT, R_OPEN_BUY, R_OPEN_SELL, R_POS, \
        replay

    fresh = make_risk_state(gate.limits)
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    replay(gate.limits, fresh, cat(log_ap, ORDER_DTYPE), cat(log_ex, EXEC_DTYPE))
    for part in (R_POS, R_OPEN_BUY, R_OPEN_SELL, R_N_OPEN, R_OO_COUNT):
        assert np.array_equal(fresh[part], gate.rstate[part]), part
    assert np.allclose(fresh[R_GF][:2], gate.rstate[R_GF][:2])   # realized, fees


@settings(max_examples=24, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), lim=LIMITS, skew=st.integers(-400, 400))
def test_every_intent_gets_one_answer_and_no_limit_is_breached(tmp_path_factory, shm_prefix,
                                                                  run_slow, seed, lim, skew):
    n = 10_000 if run_slow else 2_000
    run_property(tmp_path_factory.mktemp("gp"), shm_prefix, seed, lim, n, skew)


def test_the_property_runs_a_million_intents_in_the_slow_suite(run_slow, tmp_path_factory,
                                                               shm_prefix):
    """--run-slow: 100 further seeds x 10,000 intents on top of the hypothesis examples."""
    import pytest

    if not run_slow:
        pytest.skip("10^6 intents: --run-slow")
    rng = np.random.default_rng(20261207)
    total = 0
    for k in range(100):
        lim = {"max_order_qty_lots": int(rng.integers(1, 51)),
               "max_notional": float(rng.choice([1e5, 3e5, 1e9])),
               "max_position_lots": int(rng.integers(1, 201)),
               "max_open_orders": int(rng.integers(1, 41)),
               "daily_loss_limit": float(rng.choice([500.0, 5_000.0, 1e9]))}
        total += run_property(tmp_path_factory.mktemp(f"g{k}"), shm_prefix,
                              int(rng.integers(2**32)), lim, 10_000)
    assert total >= 1_000_000
