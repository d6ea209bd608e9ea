"""A plain-Python reference of the matching semantics in market.matching's docstring.

Test helper only (slow and obvious on purpose): dicts and lists, no numba, Python ints (so
it never overflows: the int64 limits are explicit rules). ``process(rec)`` returns the
execution reports the engine must produce, as (kind, client id, px, qty, reject); a CANCEL_ALL's
cancels come in client id order (the engine's come in slot order: compare them sorted).
Capacities (``max_orders``, ``max_levels``, ``level_pool``) are those of make_engine_arrays;
None means unlimited.
"""
from __future__ import annotations

from shm.records import (EXEC_ACK, EXEC_CANCEL_ACK, EXEC_CANCEL_REJECT, EXEC_EXPIRED,
                         EXEC_FILL, EXEC_PARTIAL, EXEC_REJECT, EXEC_REPLACE_ACK, INTENT_CANCEL,
                         INTENT_CANCEL_ALL, INTENT_NEW, INTENT_REPLACE, ORD_FOK, ORD_LIMIT,
                         ORD_MARKET, ORD_POST_ONLY, REJECT_FOK, REJECT_INVALID,
                         REJECT_MAX_OPEN_ORDERS, REJECT_MAX_ORDER_QTY, REJECT_NO_LIQUIDITY,
                         REJECT_POST_ONLY, REJECT_SELF_TRADE, REJECT_UNKNOWN_ORDER)

I64_MAX = (1 << 63) - 1
HUGE = I64_MAX          # a market buy's limit


class RefEngine:
    def __init__(self, stp: str, n_instruments: int = 2, max_orders: int | None = None,
                 max_levels: int | None = None, level_pool: int | None = None):
        self.stp = stp
        self.n = n_instruments
        self.max_orders = max_orders
        self.max_levels = max_levels
        if level_pool is None and max_orders is not None and max_levels is not None:
            level_pool = min(max_orders, 2 * n_instruments * max_levels)
        self.level_pool = level_pool
        self.orders: dict[int, dict] = {}               # resting orders by client id
        self.queues: dict[tuple, list[int]] = {}        # (ins, side, px) -> FIFO of client ids

    # ---- book helpers ------------------------------------------------------------------
    def _prices(self, ins, side):
        ps = [k[2] for k, q in self.queues.items() if k[0] == ins and k[1] == side and q]
        return sorted(ps, reverse=(side == 0))

    def depth(self, ins, side):
        return [(p, sum(self.orders[c]["leaves"] for c in self.queues[(ins, side, p)]))
                for p in self._prices(ins, side)]

    def _best(self, ins, side):
        ps = self._prices(ins, side)
        return ps[0] if ps else 0

    @staticmethod
    def _crosses(side, limit, px):
        return px <= limit if side == 0 else px >= limit

    def _checks(self, owner):
        return self.stp != "none" and owner != 0

    def _walk(self, ins, side, limit, qty, owner):
        avail = 0
        for p in self._prices(ins, 1 - side):
            if not self._crosses(side, limit, p):
                break
            for c in self.queues[(ins, 1 - side, p)]:
                if self._checks(owner) and self.orders[c]["owner"] == owner:
                    return avail, True
                avail += self.orders[c]["leaves"]
                if avail >= qty:
                    return qty, False
        return avail, False

    def _n_levels(self):
        return sum(1 for q in self.queues.values() if q)

    def _full(self):
        return self.max_orders is not None and len(self.orders) >= self.max_orders

    def _no_room(self, o):
        """Why the order cannot rest (a REJECT_*), or 0."""
        if self._full():
            return REJECT_MAX_OPEN_ORDERS
        q = self.queues.get((o["ins"], o["side"], o["px"]))
        if not q:
            if self.max_levels is not None and \
                    len(self._prices(o["ins"], o["side"])) >= self.max_levels:
                return REJECT_MAX_OPEN_ORDERS
            if self.level_pool is not None and self._n_levels() >= self.level_pool:
                return REJECT_MAX_OPEN_ORDERS
            return 0
        if sum(self.orders[c]["leaves"] for c in q) + o["leaves"] > I64_MAX:
            return REJECT_MAX_ORDER_QTY
        return 0

    def _rest(self, o):
        self.orders[o["cid"]] = o
        self.queues.setdefault((o["ins"], o["side"], o["px"]), []).append(o["cid"])

    def _unrest(self, cid):
        o = self.orders.pop(cid)
        self.queues[(o["ins"], o["side"], o["px"])].remove(cid)
        return o

    # ---- matching -------------------------------------------------------------------------
    def _match(self, o, limit, out):
        ins, side = o["ins"], o["side"]
        while o["leaves"] > 0:
            p = self._best(ins, 1 - side)
            if p == 0 or not self._crosses(side, limit, p):
                return False
            for c in list(self.queues[(ins, 1 - side, p)]):
                m = self.orders[c]
                if self._checks(o["owner"]) and m["owner"] == o["owner"]:
                    return True
                q = min(o["leaves"], m["leaves"])
                m["leaves"] -= q
                o["leaves"] -= q
                m["cum"] += q
                o["cum"] += q
                out.append((EXEC_FILL if m["leaves"] == 0 else EXEC_PARTIAL, c, p, q, 0))
                out.append((EXEC_FILL if o["leaves"] == 0 else EXEC_PARTIAL, o["cid"], p, q, 0))
                if m["leaves"] == 0:
                    self._unrest(c)
                if o["leaves"] == 0:
                    break
        return False

    def _after(self, o, stp_hit, out):
        if o["leaves"] == 0:
            return
        if stp_hit:
            out.append((EXEC_CANCEL_ACK, o["cid"], o["px"], o["leaves"], REJECT_SELF_TRADE))
        elif o["type"] in (ORD_LIMIT, ORD_POST_ONLY):
            why = self._no_room(o)
            if why:
                out.append((EXEC_CANCEL_ACK, o["cid"], o["px"], o["leaves"], why))
            else:
                self._rest(o)
        else:
            out.append((EXEC_EXPIRED, o["cid"], o["px"], o["leaves"], 0))

    def process(self, r):
        kind = int(r["kind"])
        cid, owner = int(r["client_order_id"]), int(r["strategy_id"])
        px, qty = int(r["px_ticks"]), int(r["qty_lots"])
        if kind == INTENT_NEW:
            return self._new(r, cid, owner, px, qty)
        if kind == INTENT_CANCEL:
            if cid not in self.orders or self.orders[cid]["owner"] != owner:
                return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_UNKNOWN_ORDER)]
            o = self._unrest(cid)
            return [(EXEC_CANCEL_ACK, cid, o["px"], o["leaves"], 0)]
        if kind == INTENT_REPLACE:
            return self._replace(cid, owner, px, qty)
        if kind == INTENT_CANCEL_ALL:
            ins = int(r["instrument_id"])
            out = []
            for c in sorted(c for c, o in self.orders.items()
                            if o["owner"] == owner and (ins == 0 or o["ins"] == ins)):
                o = self._unrest(c)
                out.append((EXEC_CANCEL_ACK, c, o["px"], o["leaves"], 0))
            return out
        return [(EXEC_REJECT, cid, px, qty, REJECT_INVALID)]

    def _new(self, r, cid, owner, px, qty):
        side, ins, typ = int(r["side"]) - 1, int(r["instrument_id"]), int(r["order_type"])
        rej = [(EXEC_REJECT, cid, px, qty, 0)]
        ok = side in (0, 1) and 1 <= ins <= self.n and qty > 0 and 1 <= typ <= 5 and \
            (typ == ORD_MARKET or px > 0)
        if not ok or cid in self.orders:
            return [rej[0][:4] + (REJECT_INVALID,)]
        limit = px
        opp_best = self._best(ins, 1 - side)
        if typ == ORD_MARKET:
            if opp_best == 0:
                return [rej[0][:4] + (REJECT_NO_LIQUIDITY,)]
            limit = HUGE if side == 0 else 1
        if typ == ORD_POST_ONLY and opp_best and self._crosses(side, limit, opp_best):
            return [rej[0][:4] + (REJECT_POST_ONLY,)]
        if typ == ORD_FOK or (self.stp == "reject" and owner != 0):
            avail, own = self._walk(ins, side, limit, qty, owner)
            if own and self.stp == "reject":
                return [rej[0][:4] + (REJECT_SELF_TRADE,)]
            if typ == ORD_FOK and avail < qty:
                return [rej[0][:4] + (REJECT_FOK,)]
        if self._full() and not (opp_best and self._crosses(side, limit, opp_best)):
            return [rej[0][:4] + (REJECT_MAX_OPEN_ORDERS,)]
        o = {"cid": cid, "ins": ins, "side": side, "px": 0 if typ == ORD_MARKET else limit,
             "leaves": qty, "cum": 0, "owner": owner, "type": typ}
        out = [(EXEC_ACK, cid, o["px"], qty, 0)]
        hit = self._match(o, limit, out)
        self._after(o, hit, out)
        return out

    def _replace(self, cid, owner, px, qty):
        if cid not in self.orders or self.orders[cid]["owner"] != owner:
            return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_UNKNOWN_ORDER)]
        o = self.orders[cid]
        new_px = px or o["px"]
        if qty <= 0 or new_px < 0:
            return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_INVALID)]
        if o["cum"] + qty > I64_MAX:
            return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_MAX_ORDER_QTY)]
        if new_px == o["px"] and qty <= o["leaves"]:
            o["leaves"] = qty
            return [(EXEC_REPLACE_ACK, cid, new_px, qty, 0)]
        opp_best = self._best(o["ins"], 1 - o["side"])
        if o["type"] == ORD_POST_ONLY and opp_best and self._crosses(o["side"], new_px, opp_best):
            return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_POST_ONLY)]
        if self.stp == "reject" and owner != 0:
            _, own = self._walk(o["ins"], o["side"], new_px, qty, owner)
            if own:
                return [(EXEC_CANCEL_REJECT, cid, px, qty, REJECT_SELF_TRADE)]
        self._unrest(cid)
        o["px"], o["leaves"] = new_px, qty
        out = [(EXEC_REPLACE_ACK, cid, new_px, qty, 0)]
        hit = self._match(o, new_px, out)
        self._after(o, hit, out)
        return out
