"""The hftbacktest side of ``run.py bench backtest``: runs under hftbacktest's own virtualenv
(.venv/hbt, because hftbacktest 2.4.4 pins numpy < 2.3 and hftfarm uses numpy 2.4), as a
subprocess of bench/backtest.py. Not imported by hftfarm.

    .venv/hbt/bin/python bench/_hbt_mm.py COLUMNS.npz TICK MD_LATENCY_NS ORDER_LATENCY_NS
        MAKER_FEE TAKER_FEE

COLUMNS.npz holds our replayed market records as plain columns (kind, side, exch_ts, px_ticks,
qty): level updates become DEPTH events, trades TRADE events (what hftbacktest replays), with
local_ts = exch_ts + MD_LATENCY_NS. The market-making loop mirrors ours: it wakes on every feed
event and every order response, keeps one quote per side around the mid skewed against
inventory, and replaces a quote when its price moves by at least 2 ticks. Queue model:
risk-averse (hftbacktest's conservative one), no partial fills. Prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from numba import njit

from hftbacktest import GTX, LIMIT, BacktestAsset, HashMapMarketDepthBacktest
from hftbacktest.types import (BUY_EVENT, DEPTH_EVENT, EXCH_EVENT, LOCAL_EVENT, SELL_EVENT,
                               TRADE_EVENT, event_dtype)

MSG_TRADE = 1
MSG_LEVEL = 3
SIDE_BUY = 1


def to_events(cols, tick: float, md_latency_ns: int) -> np.ndarray:
    kind, side = cols["kind"], cols["side"]
    keep = (kind == MSG_LEVEL) | (kind == MSG_TRADE)
    ev = np.zeros(int(keep.sum()), dtype=event_dtype)
    k, s = kind[keep], side[keep]
    flags = np.where(k == MSG_LEVEL, DEPTH_EVENT, TRADE_EVENT).astype(np.uint64)
    flags |= np.where(s == SIDE_BUY, BUY_EVENT, SELL_EVENT).astype(np.uint64)
    ev["ev"] = flags | np.uint64(EXCH_EVENT) | np.uint64(LOCAL_EVENT)
    ev["exch_ts"] = cols["exch_ts"][keep]
    ev["local_ts"] = cols["exch_ts"][keep] + md_latency_ns
    ev["px"] = cols["px_ticks"][keep] * tick
    ev["qty"] = cols["qty"][keep]
    return ev


@njit
def mm_loop(hbt, tick, half_spread_ticks, skew_ticks_per_lot, qty, max_pos):
    wakeups = 0
    next_id = 1
    bid_id = 0
    ask_id = 0
    bid_px = 0
    ask_px = 0
    while True:
        r = hbt.wait_next_feed(True, 1_000_000_000)
        if r == 1:
            break
        wakeups += 1
        depth = hbt.depth(0)
        bb = depth.best_bid_tick
        ba = depth.best_ask_tick
        if bb <= 0 or ba <= bb or ba > 1 << 50:
            continue
        hbt.clear_inactive_orders(0)
        orders = hbt.orders(0)
        if bid_id != 0 and bid_id not in orders:
            bid_id = 0
        if ask_id != 0 and ask_id not in orders:
            ask_id = 0
        pos = hbt.position(0)
        skew = pos * skew_ticks_per_lot
        want_bid = int((bb + ba) / 2.0 - half_spread_ticks - skew)
        want_ask = int((bb + ba) / 2.0 + half_spread_ticks - skew + 0.999999)
        want_bid = min(want_bid, ba - 1)
        want_ask = max(want_ask, bb + 1)
        if pos < max_pos and (bid_id == 0 or abs(want_bid - bid_px) >= 2):
            if bid_id != 0:
                hbt.cancel(0, bid_id, False)
            bid_id = next_id
            next_id += 1
            bid_px = want_bid
            hbt.submit_buy_order(0, bid_id, want_bid * tick, qty, GTX, LIMIT, False)
        if pos > -max_pos and (ask_id == 0 or abs(want_ask - ask_px) >= 2):
            if ask_id != 0:
                hbt.cancel(0, ask_id, False)
            ask_id = next_id
            next_id += 1
            ask_px = want_ask
            hbt.submit_sell_order(0, ask_id, want_ask * tick, qty, GTX, LIMIT, False)
    return wakeups


def main(argv) -> int:
    path, tick, md_lat, ord_lat, maker, taker = argv[1], float(argv[2]), int(argv[3]), \
        int(argv[4]), float(argv[5]), float(argv[6])
    cols = dict(np.load(path))
    data = to_events(cols, tick, md_lat)
    asset = (BacktestAsset().data([data]).linear_asset(1.0)
             .constant_order_latency(ord_lat, ord_lat).risk_adverse_queue_model()
             .no_partial_fill_exchange().trading_value_fee_model(maker, taker)
             .tick_size(tick).lot_size(1.0).last_trades_capacity(0))
    hbt = HashMapMarketDepthBacktest([asset])
    t0 = time.perf_counter()
    c0 = time.thread_time()
    mm_loop(hbt, tick, 2.0, 0.05, 10.0, 100.0)      # includes numba compilation: run once ...
    compile_and_run = time.perf_counter() - t0
    hbt.close()
    hbt = HashMapMarketDepthBacktest([asset])
    t0 = time.perf_counter()
    c0 = time.thread_time()
    wakeups = mm_loop(hbt, tick, 2.0, 0.05, 10.0, 100.0)   # ... and time the second run
    cpu = time.thread_time() - c0
    wall = time.perf_counter() - t0
    position = float(hbt.position(0))
    hbt.close()
    print(json.dumps({"events": int(len(data)), "wall_s": wall, "cpu_s": cpu,
                      "wakeups": int(wakeups), "first_run_s": compile_and_run,
                      "position": position}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
