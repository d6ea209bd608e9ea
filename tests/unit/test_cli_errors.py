"""The data commands answer bad input with one line, ``error: <the thing and the fix>``, and
exit 2; exit 1 stays for genuine failures (a recording that checks NOT CLEAN). The README's
exit-code table is the contract. In-process through pipeline.cli.main, no instances started.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.exits import EXIT_FAILURE, EXIT_USAGE

LOBSTER = "lobster/AAPL_2012-06-21_34200000_57600000_{}_10.csv"


def run_cli(capsys, argv) -> tuple[int, str]:
    """(exit code, stderr) of one command; argparse's own usage errors count as their exit."""
    capsys.readouterr()
    try:
        code = cli_main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def assert_input_error(capsys, argv, *needles) -> str:
    code, err = run_cli(capsys, argv)
    assert code == EXIT_USAGE, (code, err)
    assert err.startswith("error: ") or ": error: " in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture
def files(tmp_path):
    """An empty file, a directory, a text file that is no known format."""
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    (tmp_path / "junk.txt").write_text("hello world\nnot data\n")
    return tmp_path


@pytest.fixture
def record_file(shared_data, tmp_path):
    rec = tmp_path / "aapl.rec"
    assert cli_main(["replay", "lobster", "--message", str(shared_data / LOBSTER.format("message")),
                     "--orderbook", str(shared_data / LOBSTER.format("orderbook")),
                     "--levels", "10", "--out", str(rec)]) == 0
    return rec


# --- feed check: the Kraken version, the venue, the file --------------------------------------

def test_feed_check_kraken_on_a_v1_recording_names_the_version_and_the_fix(shared_data, capsys):
    err = assert_input_error(capsys, ["feed", "check", "--venue", "kraken", "--file",
                                      shared_data / "kraken/KRAKEN.ws.50.0"],
                             "Kraken websocket v1 recording", "--venue kraken-v1")
    assert "parse errors" not in err


def test_feed_check_kraken_v1_on_a_v2_recording_suggests_venue_kraken(shared_data, capsys):
    fixture = Path(__file__).parents[1] / "fixtures/feeds_kraken_v2_xmrusd.jsonl"
    assert_input_error(capsys, ["feed", "check", "--venue", "kraken-v1", "--file", fixture],
                       "Kraken websocket v2 recording", "use --venue kraken")


def test_feed_check_on_another_venues_recording_names_the_right_venue(shared_data, capsys):
    assert_input_error(capsys, ["feed", "check", "--venue", "binance", "--file",
                                shared_data / "coinbase/COINBASE.ws.28.0"],
                       "Coinbase", "use --venue coinbase")


def test_feed_check_on_a_directory_an_empty_or_a_missing_file_exits_2(files, capsys):
    assert_input_error(capsys, ["feed", "check", "--venue", "binance", "--file", files / "adir"],
                       "is a directory")
    assert_input_error(capsys, ["feed", "check", "--venue", "binance", "--file",
                                files / "empty.txt"], "empty")
    assert_input_error(capsys, ["feed", "check", "--venue", "binance", "--file",
                                files / "missing"], "no such", "missing")


def test_feed_check_on_a_record_file_says_it_is_already_converted(record_file, capsys):
    assert_input_error(capsys, ["feed", "check", "--venue", "binance", "--file", record_file],
                       "record file", "book --data")


def test_feed_check_unknown_venue_is_a_usage_error(shared_data, capsys):
    assert_input_error(capsys, ["feed", "check", "--venue", "kraken2", "--file",
                                shared_data / "kraken/KRAKEN.ws.50.0"], "--venue", "kraken-v1")


def test_feed_check_that_finds_problems_in_a_valid_recording_still_exits_1(shared_data, capsys):
    code, _ = run_cli(capsys, ["feed", "check", "--venue", "binance", "--file",
                               shared_data / "binance/BINANCE.ws.1.0"])
    assert code == EXIT_FAILURE      # no REST snapshot: a real finding, not bad input


def test_feed_serve_rejects_a_bad_port_before_serving(shared_data, capsys, monkeypatch):
    import feeds.server

    def must_not_serve(*a, **kw):
        raise AssertionError("feed serve started serving on a bad --port")

    monkeypatch.setattr(feeds.server, "serve_forever", must_not_serve)
    assert_input_error(capsys, ["feed", "serve", "--venue", "binance", "--file",
                                shared_data / "binance/BINANCE.ws.1.0", "--port", "99999"],
                       "--port", "0-65535")


# --- book ---------------------------------------------------------------------------------------

def test_book_on_a_missing_data_file_exits_2_not_1(tmp_path, capsys):
    assert_input_error(capsys, ["book", "--data", "/nonexistent", "--levels", "5", "--csv",
                                tmp_path / "o.csv"], "--data /nonexistent", "no such")


def test_book_on_a_directory_exits_2_without_a_traceback(files, capsys):
    assert_input_error(capsys, ["book", "--data", files / "adir", "--levels", "5", "--csv",
                                files / "o.csv"], "is a directory")


def test_book_on_a_lobster_csv_says_to_convert_it_first(shared_data, tmp_path, capsys):
    assert_input_error(capsys, ["book", "--data", shared_data / LOBSTER.format("message"),
                                "--levels", "5", "--csv", tmp_path / "o.csv"],
                       "not an hftfarm record file", "replay lobster")


def test_book_on_a_venue_recording_says_to_replay_it_first(shared_data, tmp_path, capsys):
    assert_input_error(capsys, ["book", "--data", shared_data / "kraken/KRAKEN.ws.50.0",
                                "--levels", "5", "--csv", tmp_path / "o.csv"],
                       "venue recording", "run.py replay")


def test_book_with_bad_levels_or_instrument_exits_2(record_file, tmp_path, capsys):
    assert_input_error(capsys, ["book", "--data", record_file, "--levels", "0", "--csv",
                                tmp_path / "o.csv"], "--levels")
    assert_input_error(capsys, ["book", "--data", record_file, "--levels", "abc", "--csv",
                                tmp_path / "o.csv"], "--levels")
    assert_input_error(capsys, ["book", "--data", record_file, "--levels", "5", "--csv",
                                tmp_path / "o.csv", "--instrument", "7"],
                       "--instrument 7", "AAPL")


def test_book_csv_into_a_missing_directory_or_onto_a_directory_exits_2(record_file, files,
                                                                        capsys):
    assert_input_error(capsys, ["book", "--data", record_file, "--levels", "5", "--csv",
                                files / "no/such/o.csv"], "--csv", "does not exist")
    assert_input_error(capsys, ["book", "--data", record_file, "--levels", "5", "--csv",
                                files / "adir"], "--csv", "is a directory")


# --- replay -------------------------------------------------------------------------------------

def test_replay_lobster_with_too_many_levels_says_how_many_the_file_has(shared_data, tmp_path,
                                                                        capsys):
    assert_input_error(capsys, ["replay", "lobster",
                                "--message", shared_data / LOBSTER.format("message"),
                                "--orderbook", shared_data / LOBSTER.format("orderbook"),
                                "--levels", "20", "--out", tmp_path / "x.rec"],
                       "holds 10 levels", "--levels 10 or fewer")


def test_replay_lobster_with_swapped_files_says_which_goes_where(shared_data, tmp_path, capsys):
    assert_input_error(capsys, ["replay", "lobster",
                                "--message", shared_data / LOBSTER.format("orderbook"),
                                "--orderbook", shared_data / LOBSTER.format("message"),
                                "--levels", "10", "--out", tmp_path / "x.rec"],
                       "order book file", "pass it as --orderbook")


def test_replay_lobster_on_missing_empty_or_directory_inputs_exits_2(shared_data, files, capsys):
    ob = shared_data / LOBSTER.format("orderbook")
    for message, needle in (("/nonexistent", "no such"), (files / "adir", "is a directory"),
                            (files / "empty.txt", "empty")):
        assert_input_error(capsys, ["replay", "lobster", "--message", message, "--orderbook",
                                    ob, "--levels", "10", "--out", files / "x.rec"],
                           "--message", needle)


def test_replay_lobster_into_a_directory_exits_2(shared_data, files, capsys):
    assert_input_error(capsys, ["replay", "lobster",
                                "--message", shared_data / LOBSTER.format("message"),
                                "--orderbook", shared_data / LOBSTER.format("orderbook"),
                                "--levels", "10", "--out", files / "adir"], "--out", "directory")


def test_replay_venue_on_another_venues_recording_names_the_right_command(shared_data, tmp_path,
                                                                          capsys):
    assert_input_error(capsys, ["replay", "binance", "--file",
                                shared_data / "kraken/KRAKEN.ws.50.0", "--out", tmp_path / "k.rec"],
                       "Kraken", "run.py replay kraken")
    assert not (tmp_path / "k.rec").exists()


def test_replay_venue_on_junk_or_missing_config_exits_2(shared_data, files, capsys):
    assert_input_error(capsys, ["replay", "kraken", "--file", files / "junk.txt", "--out",
                                files / "k.rec"], "junk.txt")
    assert_input_error(capsys, ["replay", "kraken", "--file",
                                shared_data / "kraken/KRAKEN.ws.48.0", "--out", files / "k.rec",
                                "--config", files / "missing.toml"], "--config", "missing.toml")


# --- backtest, latency, bench -------------------------------------------------------------------

def test_backtest_on_a_recording_runs_the_strategies_that_can_trade_it(shared_data, tmp_path,
                                                                      capsys):
    """No --strategy and a one-instrument recording: the strategies that need other
    instruments are skipped with their reason, before any of them writes anything."""
    import json

    from market.lobster import convert_to_file

    rec = tmp_path / "aapl.rec"
    convert_to_file(shared_data / LOBSTER.format("message"),
                    shared_data / LOBSTER.format("orderbook"), 10, rec)
    out = tmp_path / "out"
    code, err = run_cli(capsys, ["backtest", "--data", rec, "--out", out])
    assert code == 0, err
    assert "skipped pairs_btc_eth (" in err and "needs exactly 2 instrument(s)" in err
    # the ones that can trade it run together: here the market maker alone, and the total;
    # journal/ holds their intents and venue reports for `run.py report` / `export`
    assert sorted(p.name for p in out.iterdir()) == [
        "_total_equity.csv", "_total_equity.png", "_total_report.json", "journal",
        "mm_btc_equity.csv", "mm_btc_equity.png", "mm_btc_report.json"]
    assert json.loads((out / "journal" / "strategies.json").read_text()) == {"1": "mm_btc"}


def test_backtest_without_strategy_runs_them_together_and_reports_each_and_the_total(
        tmp_path, capsys):
    import json

    out = tmp_path / "out"
    code, err = run_cli(capsys, ["backtest", "--duration", "6", "--event-rate", "300",
                                 "--out", out, "--json"])
    assert code == 0, err
    rep = json.loads((out / "_total_report.json").read_text())
    names = ["mm_btc", "pairs_btc_eth", "arb_btc"]
    assert rep["strategies"] == names
    for n in names + ["_total"]:
        for suffix in ("_equity.csv", "_equity.png", "_report.json"):
            assert (out / f"{n}{suffix}").is_file()
    parts = [json.loads((out / f"{n}_report.json").read_text()) for n in names]
    assert abs(sum(p["pnl"]["total"] for p in parts) - rep["pnl"]["total"]) < 1e-6
    for key in ("turnover", "rejects", "sharpe", "max_drawdown", "fill_rate"):
        assert all(key in p for p in parts + [rep])


def test_backtest_params_schedule_that_is_wrong_exits_2_naming_the_key(tmp_path, files, capsys):
    bad = tmp_path / "sched.toml"
    bad.write_text('[[change]]\nat_s = 2\nstrategy = "mm_btc"\nparams = { gama = 0.5 }\n')
    assert_input_error(capsys, ["backtest", "--strategy", "mm_btc", "--duration", "5",
                                "--params-schedule", bad, "--out", tmp_path / "o"],
                       "--params-schedule", "sched.toml", "change[0].params.gama",
                       "unknown parameter")
    bad.write_text('[[change]]\nat_s = 2\nparams = { gamma = -1.0 }\n')
    assert_input_error(capsys, ["backtest", "--duration", "5", "--params-schedule", bad,
                                "--out", tmp_path / "o"],
                       "change[0].strategy: missing")
    assert_input_error(capsys, ["backtest", "--strategy", "mm_btc", "--params-schedule", bad,
                                "--out", tmp_path / "o"], "change[0].params.gamma = -1.0")
    assert_input_error(capsys, ["backtest", "--params-schedule", files / "junk.txt",
                                "--out", tmp_path / "o"], "junk.txt", "not TOML")
    assert_input_error(capsys, ["backtest", "--params-schedule", files / "missing.toml",
                                "--out", tmp_path / "o"], "--params-schedule", "missing.toml")


def test_backtest_data_that_is_no_record_file_names_the_fix(shared_data, files, capsys):
    assert_input_error(capsys, ["backtest", "--data", files / "adir"], "is a directory")
    assert_input_error(capsys, ["backtest", "--data", shared_data / LOBSTER.format("message")],
                       "--data", "replay lobster")


def test_latency_dump_onto_a_file_exits_2_before_asking_the_controller(files, capsys):
    assert_input_error(capsys, ["latency", "--dump", files / "junk.txt"], "--dump",
                       "not a directory")


def test_bench_with_a_missing_config_exits_2_without_a_traceback(files, capsys):
    assert_input_error(capsys, ["bench", "backtest", "--config", files / "missing.toml"],
                       "missing.toml")


def test_bench_kill_refuses_nonsense_rounds_before_starting_anything(capsys):
    assert_input_error(capsys, ["bench", "kill", "--rounds", "0"], "--rounds")
    assert_input_error(capsys, ["bench", "kill", "--event-rate", "-5"], "--event-rate")


def test_bench_strategies_refuses_nonsense_before_running_anything(capsys):
    assert_input_error(capsys, ["bench", "strategies", "--duration", "0"], "--duration")
    assert_input_error(capsys, ["bench", "strategies", "--repeat", "0"], "--repeat")
    assert_input_error(capsys, ["bench", "strategies", "--config", "config.toml", "--strategy",
                                "nope"], "'nope'")
    # one name no config holds is an error even when another name is found
    assert_input_error(capsys, ["bench", "strategies", "--strategy", "mm_btc", "--strategy",
                                "nope"], "'nope'")


def test_bench_strategies_benches_a_named_strategy_in_the_config_that_holds_it(capsys):
    """--strategy mm_btc with the default configs: the catalogue holds no mm_btc and is left
    out; config.toml's mm_btc alone is benched."""
    import json

    code = cli_main(["bench", "strategies", "--strategy", "mm_btc", "--duration", "2",
                     "--event-rate", "300", "--repeat", "1", "--no-alone", "--json"])
    assert code == 0
    (res,) = json.loads(capsys.readouterr().out)["results"]
    assert res["config"] == "config.toml" and list(res["strategies"]) == ["mm_btc"]


def test_bench_strategies_prints_each_strategys_kernel_figures(capsys):
    import json

    code = cli_main(["bench", "strategies", "--config", "config.toml", "--duration", "3",
                     "--event-rate", "300", "--repeat", "1", "--no-alone", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (res,) = out["results"]
    assert set(res["strategies"]) == {"mm_btc", "pairs_btc_eth", "arb_btc"}
    for r in res["strategies"].values():
        m = r["kernel_ns"]["market"]
        assert m["records"] > 0 and 0 < m["p50"] <= m["p99"]
        assert r["kernel_ns"]["timer"]["calls"] > 0
    assert res["together"]["runs"] == 1 and res["together"]["median"] > 0
