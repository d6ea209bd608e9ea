"""The venue kind in config is what runs (a live kind gets its own feed stage and is never
simulated), and the feed handlers' status records reach the strategy runtime's books: a book the
feed says is not trustworthy is not valid to anyone who prices off it (market/book.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = (ROOT / "config.toml").read_text()
DATA = ROOT.parent / "shared" / "data"


def _config(simB_kind: str = "sim", simA_kind: str = "sim"):
    text = DEFAULT.replace("allow_live = false", "allow_live = true  # loopback tests only")
    text = text.replace('name = "simA"\nkind = "sim"', f'name = "simA"\nkind = "{simA_kind}"')
    text = text.replace('name = "simB"\nkind = "sim"', f'name = "simB"\nkind = "{simB_kind}"')
    return parse_config(text, "c.toml", build=False)


def test_default_config_has_one_venue_stage_and_no_feed():
    from stages.topology import build_topology

    topo = build_topology(parse_config(DEFAULT, "c.toml", build=False))
    assert [s.name for s in topo.stages if s.role in ("venue", "feed")] == ["venue"]


def test_a_live_venue_gets_a_feed_stage_and_the_venue_stage_plays_only_the_sim_ones():
    from stages.topology import build_topology, live_venues, sim_venues

    cfg = _config(simB_kind="binance")
    topo = build_topology(cfg)
    feeds = topo.feeds()
    assert [(f.name, f.venue, f.role) for f in feeds] == [("feed-simB", "simB", "feed")]
    assert sim_venues(cfg) == ["simA"] and live_venues(cfg) == ["simB"]
    assert "venue" in [s.name for s in topo.stages]
    # the feed starts with the venue stage, before the router, the gate and the strategies
    order = [s.name for s in topo.start_order()]
    assert order.index("feed-simB") < order.index("order_router")
    # its rings exist as for any venue
    names = {r.name for r in topo.rings}
    assert {"md-simB", "vorder-simB", "vexec-simB", "ctl-feed-simB"} <= names


def test_a_feed_stage_is_pinned_to_its_venue_cpu_or_the_feed_default():
    from stages.topology import build_topology

    text = DEFAULT.replace("allow_live = false", "allow_live = true")
    text = text.replace('name = "simA"\nkind = "sim"', 'name = "simA"\nkind = "binance"\ncpu = 1')
    text = text.replace('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "kraken"')
    text = text.replace('journal = { idle = "backoff" }',
                        'journal = { idle = "backoff" }\nfeed = { idle = "backoff", cpu = 0 }')
    # per-stage pins are the dedicated layout's; the composite layout pins its processes
    ded = text.replace('layout = "composite"', 'layout = "dedicated"')
    topo = build_topology(parse_config(ded, "c.toml", build=False))
    assert {f.name: f.cpu for f in topo.feeds()} == {"feed-simA": 1, "feed-simB": 0}
    comp = build_topology(parse_config(text, "c.toml", build=False))
    md = next(u for u in comp.units if u.composite and "journal" in u.members)
    assert {f.name: (f.unit, f.cpu) for f in comp.feeds()} == \
        {"feed-simA": (md.name, md.cpu), "feed-simB": (md.name, md.cpu)}


def test_all_live_venues_leave_no_venue_stage():
    from stages.topology import build_topology

    topo = build_topology(_config(simA_kind="kraken", simB_kind="coinbase"))
    assert [s.name for s in topo.stages if s.role in ("venue", "feed")] == ["feed-simA",
                                                                             "feed-simB"]


@pytest.mark.parametrize("mode", ["replay", "sim_time"])
def test_replay_and_sim_time_refuse_a_live_venue(mode, tmp_path):
    from pipeline.controller import Controller, ControllerError

    cfg = _config(simB_kind="binance")
    kw = {"replay": str(tmp_path / "x.rec")} if mode == "replay" else {"sim_time": True}
    ctl = Controller(cfg, str(tmp_path / "c.toml"), **kw)
    with pytest.raises(ControllerError, match="simB are live .kind binance.: a live venue is "
                                              "never simulated"):
        ctl.check_mode()


def test_feed_status_records_make_the_strategy_books_invalid_until_the_resync():
    """The Binance recording through the handler into an L2Book (the strategy runtime's book):
    valid after the REST snapshots; the connection lost -> STATUS BOOK_INVALID -> is_valid
    false and no reference price; the resync's snapshot -> valid again."""
    from feeds.meta import derive_instruments, make_handler
    from feeds.recording import KIND_REST, KIND_WS, read_recordings
    from market.book import L2Book, book_apply_batch, is_valid, valid_mid_x2

    files = [str(DATA / "binance/BINANCE.ws.1.0"), str(DATA / "binance/BINANCE.http.0.0")]
    inst = derive_instruments("binance", read_recordings(files))
    h = make_handler("binance", inst)
    book = L2Book(len(inst), 64)
    px, qty, meta = book.arrays
    frames = [f for f in read_recordings(files) if f.kind in (KIND_WS, KIND_REST)]

    def apply(n):
        book_apply_batch(px, qty, meta, h.out, n)

    for f in frames:
        apply(h.feed_rest(f.url, f.data, f.ts_ns) if f.kind == KIND_REST else
              h.feed(f.data, f.ts_ns))
    ids = [i.instrument_id for i in inst.values()]
    assert all(is_valid(px, meta, i) for i in ids)
    assert all(valid_mid_x2(px, meta, i) > 0 for i in ids)

    apply(h.connection_lost(frames[-1].ts_ns + 1))
    assert not any(is_valid(px, meta, i) for i in ids)
    assert all(valid_mid_x2(px, meta, i) == 0 for i in ids)   # no price: strategies don't quote

    # the resync: a new connection's REST snapshots and diffs make every book valid again
    for f in frames:
        apply(h.feed_rest(f.url, f.data, f.ts_ns) if f.kind == KIND_REST else
              h.feed(f.data, f.ts_ns))
    assert all(is_valid(px, meta, i) for i in ids)
    assert h.stats.resyncs >= len(ids)
    assert np.all(meta[ids, 2] == 1)   # META_VALID


def test_the_readme_s_live_venue_example_is_a_valid_config():
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Live venues"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    cfg = parse_config(block, "README.md")
    assert [(v.name, v.kind) for v in cfg.venues] == [("bn", "binance")]
    assert cfg.instance.allow_live


def test_a_paper_venue_reads_its_own_md_ring_and_a_live_mode_venue_does_not():
    from stages.topology import build_topology

    text = DEFAULT.replace("allow_live = false", "allow_live = true")
    text = text.replace('name = "simA"\nkind = "sim"', 'name = "simA"\nkind = "binance"')
    text = text.replace('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "kraken"\n'
                        'mode = "live"')
    cfg = parse_config(text, "c.toml", build=False)
    assert cfg.venue("simA").paper and not cfg.venue("simB").paper   # paper: the default
    topo = build_topology(cfg)
    assert "feed-simA" in topo.md_readers["simA"]
    assert "feed-simB" not in topo.md_readers["simB"]
    ring = {r.name: r for r in topo.rings}["md-simA"]
    assert ring.max_readers == len(topo.md_readers["simA"])
