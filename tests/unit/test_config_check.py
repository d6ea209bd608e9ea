"""check-config builds what start would build: every broken config below is refused with a
message naming its key, all problems come in one pass, and every config the repository uses
(config.toml, the configs the tests write) passes."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.schema import ConfigError
from pipeline.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = (ROOT / "config.toml").read_text()

MM = '''name = "mm_btc"
kind = "market_making"
instruments = ["BTC-USD@simA"]'''
PAIRS_PARAMS = "params = { window = 100, sample_ms = 50.0, entry_z = 2.0, exit_z = 0.5 }"
ARB = '''kind = "cross_venue_arb"
instruments = ["BTC-USD@simA", "BTC-USD@simB"]'''
ETH_B = '''symbol = "ETH-USD"
venue = "simB"'''


def edited(*edits: tuple[str, str]) -> str:
    """config.toml with each (old, new) applied once; old must occur in it."""
    text = DEFAULT
    for old, new in edits:
        assert old in text, f"the default config no longer contains {old!r}"
        text = text.replace(old, new, 1)
    return text


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "c.toml")
    return exc.value.problems


# (what is broken, TOML edits of config.toml, expected substring of one message)
BROKEN = [
    # strategies: kind, instrument count, params
    ("unknown kind, close to a known one", [('kind = "market_making"', 'kind = "market_makng"')],
     "strategies[0].kind = 'market_makng': unknown strategy kind (did you mean 'market_making'?)"
     "; known kinds: cross_venue_arb, "),   # the list grows with every new kind
    ("unknown kind", [('kind = "pairs_trading"', 'kind = "teleportation"')],
     "strategies[1].kind = 'teleportation': unknown strategy kind; known kinds: "
     "cross_venue_arb, "),
    ("market making on two instruments",
     [('instruments = ["BTC-USD@simA"]', 'instruments = ["BTC-USD@simA", "ETH-USD@simA"]')],
     "strategies[0].instruments = ['BTC-USD@simA', 'ETH-USD@simA']: market_making trades "
     "exactly 1 instrument (SYMBOL@VENUE), got 2"),
    ("pairs on one instrument",
     [('instruments = ["BTC-USD@simA", "ETH-USD@simA"]', 'instruments = ["BTC-USD@simA"]')],
     "pairs_trading trades exactly 2 instruments (SYMBOL@VENUE), got 1"),
    ("arbitrage on no instrument", [(ARB, 'kind = "cross_venue_arb"\ninstruments = []')],
     "strategies[2].instruments = []: cross_venue_arb trades exactly 2 instruments"),
    ("unknown strategy parameter", [(MM, MM + "\nparams = { spread_bps = 5 }")],
     "strategies[0].params.spread_bps = 5: unknown key"),
    ("misspelt strategy parameter", [("entry_z = 2.0", "entry_zz = 2.0")],
     "strategies[1].params.entry_zz = 2.0: unknown key (did you mean 'entry_z'?)"),
    ("parameter of the wrong type", [("window = 100", 'window = "100"')],
     "strategies[1].params.window = '100': must be an integer"),
    ("number parameter given as a string", [("taker_fee_bps_a = 1.0", 'taker_fee_bps_a = "1.0"')],
     "strategies[2].params.taker_fee_bps_a = '1.0': must be a number"),
    ("parameter below its range", [("window = 100", "window = 5")],
     "strategies[1].params.window = 5: must be >= 10"),
    ("parameter too large to allocate", [("window = 100", "window = 1099511627776")],
     "strategies[1].params.window = 1099511627776: must be <= 1000000"),
    ("nan parameter", [("sample_ms = 50.0", "sample_ms = nan")],
     "strategies[1].params.sample_ms = nan: must be a finite number"),
    ("parameters that contradict each other", [("exit_z = 0.5", "exit_z = 3.0")],
     "strategies[1].params: need exit_z < entry_z < stop_z"),
    ("params not a table", [(MM, MM + "\nparams = 5")],
     "strategies[0].params = 5: must be a table"),
    ("a pair of one instrument twice",
     [('instruments = ["BTC-USD@simA", "ETH-USD@simA"]',
       'instruments = ["BTC-USD@simA", "BTC-USD@simA"]')],
     "a pair needs two instruments"),
    ("arbitrage on one venue",
     [(ARB, 'kind = "cross_venue_arb"\ninstruments = ["BTC-USD@simA", "ETH-USD@simA"]')],
     "are on the same venue"),
    ("a strategy on an unknown instrument", [('instruments = ["BTC-USD@simA"]',
                                              'instruments = ["BTC-USD@simC"]')],
     "strategies[0].instruments: 'BTC-USD@simC' is not a configured instrument"),
    ("two strategies of one name", [('name = "pairs_btc_eth"', 'name = "mm_btc"')],
     "strategies: name 'mm_btc' appears more than once"),
    # instruments: prices and sizes
    ("start price not a number", [('start_price = "60000"', 'start_price = "abc"')],
     "instruments[0].start_price = 'abc': is not a decimal number"),
    ("negative start price", [('start_price = "3000"', 'start_price = "-3000"')],
     "instruments[2].start_price = '-3000': must be a positive, finite decimal"),
    ("nan start price", [('start_price = "60000"', 'start_price = "NaN"')],
     "instruments[0].start_price = 'NaN': must be a positive, finite decimal"),
    ("start price as a TOML number", [('start_price = "60000"', "start_price = 60000")],
     "instruments[0].start_price = 60000: must be a string"),
    ("start price beyond 2**53 ticks",
     [('tick_size = "0.01"', 'tick_size = "0.000000000000001"')],
     "instruments[0].start_price = '60000': is more than 2**53 ticks"),
    ("tick size not a number", [('tick_size = "0.01"', 'tick_size = "abc"')],
     "instruments[0].tick_size = 'abc': is not a decimal number"),
    ("tick size as a float", [('tick_size = "0.01"', "tick_size = 0.01")],
     'instruments[0].tick_size = 0.01: must be a decimal string'),
    ("lot size beyond the table's range", [('lot_size = "0.0001"', 'lot_size = "1e30"')],
     "instruments[0].lot_size = '1E+30': must be between 1E-18 and 1E+6"),
    ("tick size of too many digits", [('tick_size = "0.01"', 'tick_size = "0.01234567891"')],
     "instruments[0].tick_size = '0.01234567891': has more than 9 significant digits"),
    ("negative volatility", [('start_price = "60000"\n', 'start_price = "60000"\nvolatility_bps = -1.0\n')],
     "instruments[0].volatility_bps = -1.0: must be >= 0"),
    ("symbol wider than the instrument table", [(ETH_B, 'symbol = "' + "X" * 25 + '"\nvenue = '
                                                 '"simB"')],
     "instruments[3].symbol = '" + "X" * 25 + "': must be 1 to 24 bytes"),
    ("instrument on an unknown venue", [(ETH_B, 'symbol = "ETH-USD"\nvenue = "simC"')],
     "instruments[3].venue = 'simC': no such venue (venues: simA, simB) (did you mean 'simB'?)"),
    # venues
    ("nan fee", [("maker_fee_bps = 0.0", "maker_fee_bps = nan")],
     "venues[1].maker_fee_bps = nan: must be a finite number (inf and nan are not accepted)"),
    ("inf latency", [("md_latency_us = 50", "md_latency_us = inf")],
     "venues[0].md_latency_us = inf: must be a finite number"),
    ("venue kind misspelt", [('kind = "sim"', 'kind = "simm"')],
     "venues[0].kind = 'simm': must be one of sim, binance"),
    ("venue rate limit far too high",
     [("rate_limit_per_s = 200", "rate_limit_per_s = 1000000000")],
     "venues[0].rate_limit_per_s = 1000000000: must be <= 1000000"),
    ("live venue without allow_live", [('name = "simB"\nkind = "sim"', 'name = "simB"\n'
                                        'kind = "binance"')],
     "venues simB are live venues but instance.allow_live is false: nothing connects to a "
     "real venue unless you set it"),
    ("paper venue without allow_live names what paper needs", [
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "binance"\nmode = "paper"')],
     "(paper mode too: venues simB send no order, but their market data comes from the real "
     "venue; set [instance] allow_live = true to connect)"),
    ("paper mode on a simulated venue", [('name = "simB"\nkind = "sim"',
                                          'name = "simB"\nkind = "sim"\nmode = "paper"')],
     "venues[1].mode = 'paper': is for live kinds only"),
    ("venue mode misspelt", [
        ("allow_live = false", "allow_live = true"),
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "binance"\nmode = "papr"')],
     "venues[1].mode = 'papr': must be one of paper, live (did you mean 'paper'?)"),
    ("paper queue model misspelt", [
        ("allow_live = false", "allow_live = true"),
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "binance"\n'
                                         'queue_model = "fifo"')],
     "venues[1].queue_model = 'fifo': must be one of conservative, probabilistic"),
    ("websocket endpoint on a simulated venue", [('name = "simB"\nkind = "sim"',
                                                  'name = "simB"\nkind = "sim"\n'
                                                  'ws_url = "ws://127.0.0.1:9000"')],
     "venues[1].ws_url = 'ws://127.0.0.1:9000': is for live kinds only"),
    ("websocket endpoint that is not ws://", [
        ("allow_live = false", "allow_live = true"),
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "coinbase"\n'
                                         'ws_url = "https://127.0.0.1:9000"')],
     "venues[1].ws_url = 'https://127.0.0.1:9000': must be a ws:// or wss:// URL"),
    ("kraken depth it refuses", [
        ("allow_live = false", "allow_live = true"),
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "kraken"\ndepth = 20')],
     "venues[1].depth = 20: Kraken accepts only 10, 25, 100, 500, 1000"),
    ("live staleness limit of zero", [
        ("allow_live = false", "allow_live = true"),
        ('name = "simB"\nkind = "sim"', 'name = "simB"\nkind = "binance"\nstale_after_ms = 0')],
     "venues[1].stale_after_ms = 0: must be > 0"),
    ("feed cpu on a simulated venue", [('name = "simB"\nkind = "sim"',
                                        'name = "simB"\nkind = "sim"\ncpu = 0')],
     "venues[1].cpu = 0: is for live kinds only"),
    ("feed stage that spins", [('journal = { idle = "backoff" }',
                                'journal = { idle = "backoff" }\nfeed = { idle = "busy-spin" }')],
     "stages.feed.idle = 'busy-spin': must be backoff or blocking"),
    # rings
    ("market ring of 2**40 records",
     [("market_capacity = 65536", "market_capacity = 1099511627776")],
     "rings.market_capacity = 1099511627776: must be <= 16777216"),
    ("ring capacity not a power of two", [("order_capacity = 4096", "order_capacity = 3000")],
     "rings.order_capacity = 3000: must be a power of two (e.g. 2048 or 4096)"),
    ("ring capacity zero", [("market_capacity = 65536", "market_capacity = 0")],
     "rings.market_capacity = 0: must be > 0"),
    # limits
    ("inf notional limit", [("max_notional = 250000.0", "max_notional = inf")],
     "risk.max_notional = inf: must be a finite number"),
    ("nan loss limit", [("daily_loss_limit = 20000.0", "daily_loss_limit = nan")],
     "risk.daily_loss_limit = nan: must be a finite number"),
    ("negative drawdown", [("max_drawdown = 30000.0", "max_drawdown = -1.0")],
     "risk.max_drawdown = -1.0: must be > 0"),
    ("order rate window too large to allocate",
     [("max_orders_per_s = 200", "max_orders_per_s = 1000000000000")],
     "risk.max_orders_per_s = 1000000000000: must be <= 1000000"),
    ("open orders beyond the gate's table",
     [("max_open_orders = 40", "max_open_orders = 10000000")],
     "risk.max_open_orders = 10000000: must be <= 100000"),
    ("order size beyond float64's exact integers",
     [("max_order_qty_lots = 100000", "max_order_qty_lots = 9007199254740993")],
     "risk.max_order_qty_lots = 9007199254740993: must be <= 9007199254740992"),
    ("misspelt risk key", [("max_notional = 250000.0", "max_notionl = 250000.0")],
     "risk.max_notionl = 250000.0: unknown key (did you mean 'max_notional'?)"),
    ("trading day roll not HH:MM", [("[risk]", '[risk]\ntrading_day_start_utc = "24:00"')],
     "risk.trading_day_start_utc = '24:00': must match"),
    # everything else
    ("control socket path too long for a Unix socket",
     [('run_dir = "runs"', 'run_dir = "/tmp/' + "r" * 100 + '"')],
     "instance.run_dir = '/tmp/" + "r" * 100 + "': the control socket"),
    ("misspelt section", [("[risk]", "[riks]")], "unknown key (did you mean 'risk'?)"),
    ("source as a config key", [("[sim]", 'source = "feed.rec"\n\n[sim]')],
     "source = 'feed.rec': unknown key"),
    ("idle strategy misspelt", [('venue = { idle = "backoff" }', 'venue = { idle = "busyspin" }')],
     "stages.venue.idle = 'busyspin': must be one of busy-spin, yield, backoff, blocking, hybrid "
     "(did you mean 'busy-spin'?)"),
    ("heartbeat timeout beyond an hour",
     [("heartbeat_timeout_ms = 100", "heartbeat_timeout_ms = 100000000000")],
     "stages.heartbeat_timeout_ms = 100000000000: must be <= 3600000"),
    ("backtest longer than float ns stay exact", [("duration_s = 1800", "duration_s = 1e12")],
     "sim.duration_s = 1000000000000.0: must be <= 8640000.0"),
]


@pytest.mark.parametrize("what, edits, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_config_is_refused_naming_the_key(what, edits, expected):
    problems = problems_of(edited(*edits))
    assert any(expected in p for p in problems), (what, problems)


def test_there_are_at_least_thirty_broken_configs():
    assert len(BROKEN) >= 30


def test_several_independent_errors_are_all_reported_in_one_pass():
    text = edited(('start_price = "60000"', 'start_price = "abc"'),
                  ('kind = "cross_venue_arb"', 'kind = "cross_venue_arbb"'),
                  ("window = 100", 'window = "x"'),
                  ('instruments = ["BTC-USD@simA"]',
                   'instruments = ["BTC-USD@simA", "ETH-USD@simA"]'),
                  ("market_capacity = 65536", "market_capacity = 1099511627776"),
                  ("max_notional = 250000.0", "max_notional = inf"),
                  ("maker_fee_bps = 0.0", "maker_fee_bps = nan"),
                  ('name = "pairs_btc_eth"', 'name = "mm_btc"'),
                  ("[sim]", 'source = "x"\n\n[sim]'))
    problems = problems_of(text)
    expected = ["instruments[0].start_price = 'abc'",
                "strategies[2].kind = 'cross_venue_arbb'",
                "strategies[1].params.window = 'x'",
                "strategies[0].instruments = ['BTC-USD@simA', 'ETH-USD@simA']",
                "rings.market_capacity = 1099511627776",
                "risk.max_notional = inf",
                "venues[1].maker_fee_bps = nan",
                # a cross check still runs while single fields elsewhere are wrong
                "strategies: name 'mm_btc' appears more than once",
                "source = 'x': unknown key"]
    for e in expected:
        assert any(e in p for p in problems), (e, problems)
    assert len(problems) == len(expected), problems


def test_a_missing_required_key_does_not_hide_the_other_problems():
    problems = problems_of(edited(('tick_size = "0.01"\n', ""), ("max_notional = 250000.0",
                                                                "max_notional = -inf")))
    assert "instruments[0].tick_size: missing (required)" in problems
    assert any("risk.max_notional = -inf" in p for p in problems)
    assert not any("__init__" in p for p in problems), problems


def test_rings_that_do_not_fit_into_shared_memory_are_refused_naming_the_bytes(monkeypatch):
    import pipeline.buildcheck as bc

    need = sum(b for _, b in bc.ring_bytes(load_config(ROOT / "config.toml")).values())
    monkeypatch.setattr(bc, "shm_room", lambda instance: (1 << 20, "free in /dev/shm"))
    problems = problems_of(DEFAULT)
    msg = [p for p in problems if p.startswith("rings:")]
    assert msg, problems
    assert f"need {need:,} bytes in all but only 1,048,576 bytes are free in /dev/shm" in msg[0]
    assert "rings.market_capacity = 65536: 2 rings need 8,388,608 bytes" in msg[0]
    assert "rings.order_capacity = 4096" in msg[0]


def test_check_config_exits_2_with_one_error_line_per_problem(tmp_path, capsys):
    from pipeline.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(edited(('start_price = "60000"', 'start_price = "abc"'),
                          ("max_notional = 250000.0", "max_notional = inf")))
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"error: {bad}: ") for line in err), err
    assert main(["check-config", "--config", str(ROOT / "config.toml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].endswith("ok (2 venues, 4 instruments, 3 strategies)")


def accepted_configs(tmp_path):
    """Every config the repository runs: config.toml, examples, and those the tests write."""
    from tests.inproc import write_config as inproc_config
    from tests.integration.test_pipeline_cli import write_config as cli_config

    paths = [ROOT / "config.toml", *sorted((ROOT / "examples").glob("*.toml"))]
    paths.append(cli_config(tmp_path / "cli.toml", "cfgcheck", tmp_path / "runs"))
    paths.append(inproc_config(tmp_path / "inproc.toml", "cfgcheck", tmp_path / "runs"))
    paths.append(inproc_config(tmp_path / "gate.toml", "cfgcheck", tmp_path / "runs", 3,
                               "max_order_qty_lots = 100\ndaily_loss_limit = 1000.0\n"
                               "max_drawdown = 1e9\nmax_open_orders = 1000\n"
                               "max_orders_per_s = 100000\nmax_cancels_per_s = 100000"))
    paths.append(inproc_config(tmp_path / "prop.toml", "cfgcheck", tmp_path / "runs", 3,
                               "max_open_orders = 40\ndaily_loss_limit = 1e9\n"
                               "max_drawdown = 1e12\nprice_band_bps = 300.0\n"
                               "max_orders_per_s = 1000000\nmax_cancels_per_s = 1000000\n"))
    return paths


def test_every_config_the_repository_runs_is_accepted(tmp_path):
    for path in accepted_configs(tmp_path):
        cfg = load_config(path)
        assert cfg.venues and cfg.instruments, path
