"""Live parameters (`run.py set`): the CLI reads values as TOML; the controller validates the
new set exactly as the config (every problem named, nothing changed), writes it owner-only and
atomically to the run directory, tells every process of the strategy and journals it; the
strategy host applies it between two batches, so that on_params runs exactly once before any
other hook; a failed command is answered as failed."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from numba import njit

from common.schema import ConfigError, opt
from common.status import W_CTRL_ACK
from pipeline.commands.set import parse_assignments, parse_value
from pipeline.config import load_config
from pipeline.controller import Controller
from pipeline.exits import EXIT_FAILURE, EXIT_USAGE, CliError
from pipeline.live_params import LiveParams, SetRefused, handle_set
from shm.records import CONTROL_DTYPE, CTRL_PARAMS
from stages.journal import read_events
from stages.live_params import (ParamSetError, params_path, read_param_set, write_param_set)
from stages.topology import build_topology
from strategies.base import Strategy
from strategies.host import H_PARAMS_PENDING, HostedStrategy
from tests.unit.scenario_records import instrument, snapshot

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# The CLI: values are TOML values, a bare word is a string
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("3", 3), ("0.5", 0.5), ("-2", -2), ("1e-4", 1e-4), ("true", True), ("false", False),
    ('"market"', "market"), ("'market'", "market"), ("market", "market"), ("", ""),
    ("[1, 2]", [1, 2]), ("3 lots", "3 lots"), ("1979-05-27", "1979-05-27"),
    ("1\nx = 2", "1\nx = 2"),
])
def test_values_are_read_as_toml_and_a_bare_word_is_a_string(text, want):
    got = parse_value(text)
    assert got == want and type(got) is type(want)


def test_assignments_become_a_table_of_typed_values():
    assert parse_assignments(["gamma=0.5", "order_type=\"market\"", "enabled=true",
                              "order_qty_lots = 3"]) == {
        "gamma": 0.5, "order_type": "market", "enabled": True, "order_qty_lots": 3}


def test_a_malformed_or_repeated_assignment_exits_2_naming_each():
    with pytest.raises(CliError) as exc:
        parse_assignments(["gamma", "=3", "a=1", "a=2", "b-c=1"])
    assert exc.value.exit_code == EXIT_USAGE
    msg = str(exc.value)
    for item in ("'gamma'", "'=3'", "'a=2': a is given twice", "'b-c=1'"):
        assert item in msg
    assert "'a=1'" not in msg


# ------------------------------------------------------------------------------------------
# The controller's validation: exactly the config's, before anything reaches a strategy
# ------------------------------------------------------------------------------------------
@pytest.fixture
def live(tmp_path):
    cfg = load_config(ROOT / "config.toml")
    return LiveParams(cfg, build_topology(cfg), tmp_path)


def refused(lp, name, overrides) -> SetRefused:
    with pytest.raises(SetRefused) as exc:
        lp.validate(name, overrides)
    assert exc.value.exit_code == EXIT_USAGE
    return exc.value


def test_a_value_of_the_wrong_type_is_refused_naming_key_and_value(live):
    e = refused(live, "mm_btc", {"order_qty_lots": "three"})
    assert "strategies[0].params.order_qty_lots = 'three': must be an integer" in str(e)
    e = refused(live, "pairs_btc_eth", {"entry_z": True})
    assert "strategies[1].params.entry_z = True: must be a number" in str(e)


def test_a_value_out_of_range_is_refused_and_every_problem_is_named_at_once(live):
    e = refused(live, "mm_btc", {"order_qty_lots": 0, "gamma": -1.0, "k_init": float("nan")})
    msg = str(e)
    assert "strategies[0].params.order_qty_lots = 0: must be > 0" in msg
    assert "strategies[0].params.gamma = -1.0: must be > 0" in msg
    assert "strategies[0].params.k_init" in msg and "finite" in msg
    assert "nothing changed" in msg


def test_a_cross_check_sees_the_current_set_and_the_new_values_together(live):
    e = refused(live, "mm_btc", {"order_qty_lots": 500})   # max_inventory_lots is 100
    assert "max_inventory_lots = 100: must be >= order_qty_lots (500)" in str(e)
    _, new = live.validate("mm_btc", {"order_qty_lots": 500, "max_inventory_lots": 1000})
    assert (new.order_qty_lots, new.max_inventory_lots) == (500, 1000)


def test_an_unknown_parameter_is_refused_naming_the_known_ones(live):
    e = refused(live, "mm_btc", {"order_qty": 3})
    assert "strategies[0].params.order_qty: unknown parameter of market_making" in str(e)
    assert "order_qty_lots" in str(e)


def test_an_unknown_strategy_is_refused_naming_the_running_ones(live):
    e = refused(live, "mm_eth", {"order_qty_lots": 3})
    assert "unknown strategy 'mm_eth'" in str(e)
    assert "mm_btc, pairs_btc_eth, arb_btc" in str(e)
    assert "no parameters" in str(refused(live, "mm_btc", {}))


def test_a_value_that_cannot_be_packed_for_the_hooks_is_refused(live):
    e = refused(live, "mm_btc", {"order_qty_lots": 1 << 70, "max_inventory_lots": 1 << 71})
    assert "cannot be packed" in str(e)


def test_validation_changes_nothing(live, tmp_path):
    refused(live, "mm_btc", {"order_qty_lots": 0})
    assert live.view()["mm_btc"] == {"version": 0, "changed": {}}
    assert not params_path(tmp_path, "mm_btc").exists()


# ------------------------------------------------------------------------------------------
# The request: file, control command to every process of the strategy, journal, reply
# ------------------------------------------------------------------------------------------
class FakeController:
    """What handle_set uses of the controller: live_params, the supervisor's processes, send,
    await_answers, events, log and event (the real Controller.event, into run_dir/journal)."""

    event = Controller.event

    def __init__(self, lp, answers=None):
        self.live_params = lp
        self.run_dir = lp.run_dir
        self.supervisor = SimpleNamespace(procs={s.name: 1 for s in lp.topology.stages})
        self.ctl_seq = 0
        self.sent = []
        self.events = []
        self.logged = []
        self.answers = answers or {}

    def send(self, stage, kind, arg0=0, arg1=0, wait_s=0.0):
        self.ctl_seq += 1
        self.sent.append((stage, kind, arg0))
        return True

    def alive(self, stage):
        return True

    def await_answers(self, seqs, wait_s):
        got = {s: self.answers.get(s, "ack") for s in seqs}
        return ([s for s, a in got.items() if a == "ack"],
                [s for s, a in got.items() if a == "failed"])

    def log(self, msg):
        self.logged.append(msg)


def two_shard_topology(cfg):
    """The default topology with a second process of mm_btc (a shard of the same strategy)."""
    topo = build_topology(cfg)
    spec = next(s for s in topo.stages if s.name == "strategy-mm_btc")
    shard = dataclasses.replace(spec, name="strategy-mm_btc-1", slot=len(topo.stages))
    topo.stages.append(shard)
    return topo


def test_a_set_is_written_sent_to_every_process_of_the_strategy_and_journaled(tmp_path):
    cfg = load_config(ROOT / "config.toml")
    lp = LiveParams(cfg, two_shard_topology(cfg), tmp_path)
    ctl = FakeController(lp, answers={"strategy-mm_btc-1": "none"})
    reply = handle_set(ctl, {"cmd": "set", "strategy": "mm_btc",
                             "params": {"order_qty_lots": 3, "gamma": 1e-4},
                             "who": "cli", "why": "smaller clips"})
    assert reply["ok"] and reply["version"] == 1
    assert reply["changed"] == {"order_qty_lots": [10, 3]}
    assert reply["old"] == {"order_qty_lots": 10, "gamma": 1e-4}
    assert ctl.sent == [("strategy-mm_btc", CTRL_PARAMS, 1), ("strategy-mm_btc-1", CTRL_PARAMS, 1)]
    assert reply["acked"] == ["strategy-mm_btc"] and reply["not_acked"] == ["strategy-mm_btc-1"]
    # the file: the full set, owner-only, what a strategy process reads
    path = params_path(tmp_path, "mm_btc")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    rec = read_param_set(tmp_path, "mm_btc")
    assert rec["version"] == 1 and rec["who"] == "cli" and rec["why"] == "smaller clips"
    assert rec["params"]["order_qty_lots"] == 3 and rec["params"]["max_inventory_lots"] == 100
    assert set(rec["params"]) == set(lp.strategy("mm_btc").param_docs())
    assert [p.name for p in path.parent.iterdir()] == ["mm_btc.json"]   # no temp file left
    # the journal: who, why, strategy, old and new values, the time, who acknowledged
    ev = [e for e in read_events(tmp_path / "journal") if e["what"] == "params_set"]
    assert len(ev) == 1
    ev = ev[0]
    assert (ev["who"], ev["why"], ev["strategy"], ev["version"]) == ("cli", "smaller clips",
                                                                    "mm_btc", 1)
    assert ev["old"]["order_qty_lots"] == 10 and ev["new"]["order_qty_lots"] == 3
    assert ev["ts_ns"] > 0 and ev["acked_by"] == ["strategy-mm_btc"]
    # status: the version and what differs from the config
    assert lp.view()["mm_btc"]["version"] == 1
    assert lp.view()["mm_btc"]["changed"] == {"order_qty_lots": {"config": 10, "now": 3}}
    assert lp.view()["arb_btc"] == {"version": 0, "changed": {}}
    # a second set builds on the first; setting the config's value back leaves no difference
    reply = handle_set(ctl, {"cmd": "set", "strategy": "mm_btc",
                             "params": {"max_inventory_lots": 50}})
    assert reply["version"] == 2 and read_param_set(tmp_path, "mm_btc")["params"][
        "order_qty_lots"] == 3
    handle_set(ctl, {"cmd": "set", "strategy": "mm_btc",
                     "params": {"order_qty_lots": 10, "max_inventory_lots": 100}})
    assert lp.view()["mm_btc"]["version"] == 3 and lp.view()["mm_btc"]["changed"] == {}


def test_a_refused_set_writes_sends_and_journals_nothing(tmp_path):
    cfg = load_config(ROOT / "config.toml")
    ctl = FakeController(LiveParams(cfg, build_topology(cfg), tmp_path))
    for req in ({"strategy": "mm_btc", "params": {"order_qty_lots": -3}},
                {"strategy": "nope", "params": {"order_qty_lots": 3}},
                {"strategy": "mm_btc", "params": "order_qty_lots=3"}):
        reply = handle_set(ctl, {"cmd": "set", **req})
        assert reply["ok"] is False and reply["exit_code"] == EXIT_USAGE, reply
    assert ctl.sent == [] and not (tmp_path / "params").exists()
    assert read_events(tmp_path / "journal") == []


def test_a_process_that_refuses_the_set_is_reported(tmp_path):
    cfg = load_config(ROOT / "config.toml")
    ctl = FakeController(LiveParams(cfg, build_topology(cfg), tmp_path),
                         answers={"strategy-mm_btc": "failed"})
    reply = handle_set(ctl, {"cmd": "set", "strategy": "mm_btc", "params": {"gamma": 0.5}})
    assert reply["ok"] and reply["failed"] == ["strategy-mm_btc"] and reply["acked"] == []


def test_the_cli_exits_with_the_code_the_controller_gives_a_refusal(tmp_path):
    from pipeline.control import ControlServer, client_request

    sock = tmp_path / "c.sock"
    replies = iter([{"ok": False, "error": "invalid parameters", "exit_code": 2},
                    {"ok": False, "error": "could not write", "exit_code": 1},
                    {"ok": False, "error": "odd", "exit_code": 0}])
    server = ControlServer(sock, lambda req: next(replies))
    try:
        cfg = SimpleNamespace(instance=SimpleNamespace(name="x", run_dir=str(tmp_path),
                                                       socket=str(sock)))
        for want in (EXIT_USAGE, EXIT_FAILURE, EXIT_FAILURE):
            with pytest.raises(CliError) as exc:
                client_request(cfg, {"cmd": "set"})
            assert exc.value.exit_code == want
    finally:
        server.close()


# ------------------------------------------------------------------------------------------
# The file
# ------------------------------------------------------------------------------------------
def test_the_file_is_replaced_atomically_and_a_foreign_or_broken_one_is_named(tmp_path):
    write_param_set(tmp_path, "s1", 1, {"a": 1})
    write_param_set(tmp_path, "s1", 2, {"a": 2})
    assert read_param_set(tmp_path, "s1")["params"] == {"a": 2}
    assert read_param_set(tmp_path, "other") is None
    path = params_path(tmp_path, "s1")
    for text in ("{", json.dumps({"strategy": "s2", "version": 1, "params": {}}),
                 json.dumps({"strategy": "s1", "version": 0, "params": {}}),
                 json.dumps({"strategy": "s1", "version": 1, "params": [1]})):
        path.write_text(text)
        with pytest.raises(ParamSetError, match=str(path)):
            read_param_set(tmp_path, "s1")


# ------------------------------------------------------------------------------------------
# The strategy side: applied between batches, on_params once, before any other hook
# ------------------------------------------------------------------------------------------
@njit(cache=True)
def probe_on_params(ctx, st, p, now_ns):
    st.params_calls += 1
    st.params_seen_qty = p.qty
    st.params_seen_half = p.half_scale
    st.params_before_market = st.market_calls


@njit(cache=True)
def probe_on_market(ctx, st, p, md, n_md, now_ns):
    st.market_calls += 1
    st.market_seen_qty = p.qty


PROBE_HOOKS = (probe_on_params, probe_on_market)


@dataclass(frozen=True)
class ProbeParams:
    qty: int = opt(1, "lots", gt=0, le=1000)
    scale: float = opt(1.0, "a number derive() halves", gt=0)

    def validate(self):
        if self.qty > 100 and self.scale < 1:
            yield f"scale = {self.scale}: must be >= 1 when qty > 100"


class ProbeStrategy(Strategy):
    """Test-only: on_params records the parameters it sees and how many market calls came
    before it."""

    kind = "test_params_probe_" + hashlib.sha1("".join(
        inspect.getsource(f.py_func) for f in PROBE_HOOKS).encode()).hexdigest()[:10]
    Params = ProbeParams
    n_instruments = 1
    on_params = staticmethod(probe_on_params)
    on_market = staticmethod(probe_on_market)

    def state_fields(self):
        return [("params_calls", "i8"), ("params_seen_qty", "i8"), ("params_seen_half", "f8"),
                ("params_before_market", "i8"), ("market_calls", "i8"),
                ("market_seen_qty", "i8")]

    def derive(self):
        return {"half_scale": self.params.scale / 2}


def probe_host():
    return HostedStrategy(ProbeStrategy({}, [instrument(1)], 3))


def test_new_parameters_apply_between_batches_and_on_params_runs_once_before_the_hooks():
    h = probe_host()
    h.step(snapshot(1, [(99, 5)], [(101, 5)], 1), now_ns=1_000)
    assert (h.st.params_calls, h.st.market_calls, h.st.market_seen_qty) == (0, 1, 1)
    h.set_params(h.strategy.updated_params({"qty": 7, "scale": 3.0}))
    # packed in place at once (cold), the hook not yet called
    assert h.state.p[0]["qty"] == 7 and h.state.p[0]["half_scale"] == 1.5
    assert h.hctl[H_PARAMS_PENDING] == 1 and h.st.params_calls == 0
    assert h.rt["params_version"] == 1
    h.step(snapshot(1, [(98, 5)], [(101, 5)], 2), now_ns=2_000)
    assert h.st.params_calls == 1 and h.st.params_before_market == 1   # before on_market
    assert (h.st.params_seen_qty, h.st.params_seen_half) == (7, 1.5)
    assert h.st.market_calls == 2 and h.st.market_seen_qty == 7
    h.step(snapshot(1, [(97, 5)], [(101, 5)], 3), now_ns=3_000)
    h.step(now_ns=4_000)
    assert h.st.params_calls == 1 and h.hctl[H_PARAMS_PENDING] == 0


def host_stage(h, run_dir, name="probe"):
    """A StrategyHostStage around a HostedStrategy's strategy and state: what on_start leaves
    for the control path (no rings needed)."""
    from stages.strategy_host import StrategyHostStage

    stage = StrategyHostStage()
    stage.strategy, stage.state, stage.hctl = h.strategy, h.state, h.hctl
    stage.name, stage.run_dir, stage.params_where = name, run_dir, "strategies[0].params"
    return stage


def ctrl_params(version):
    rec = np.zeros(1, CONTROL_DTYPE)
    rec["kind"] = CTRL_PARAMS
    rec["arg0"] = version
    return rec[0]


def test_the_strategy_host_applies_the_run_directorys_set_on_ctrl_params(tmp_path):
    h = probe_host()
    stage = host_stage(h, tmp_path)
    h.step(snapshot(1, [(99, 5)], [(101, 5)], 1), now_ns=1_000)
    write_param_set(tmp_path, "probe", 1, {"qty": 4, "scale": 1.0})
    stage.on_control(CTRL_PARAMS, ctrl_params(1))
    assert h.strategy.params.qty == 4 and h.state.p[0]["qty"] == 4
    assert h.rt["params_version"] == 1
    h.step(now_ns=2_000)
    assert h.st.params_calls == 1 and h.st.params_seen_qty == 4
    # the same set announced again (a restarted process read it at start): no second on_params
    stage.on_control(CTRL_PARAMS, ctrl_params(1))
    h.step(now_ns=3_000)
    assert h.st.params_calls == 1


def test_the_strategy_host_refuses_a_bad_or_missing_set_and_keeps_its_parameters(tmp_path):
    h = probe_host()
    stage = host_stage(h, tmp_path)
    with pytest.raises(ParamSetError, match="announced"):
        stage.on_control(CTRL_PARAMS, ctrl_params(1))
    write_param_set(tmp_path, "probe", 1, {"qty": 5000, "scale": 0.5})
    with pytest.raises(ConfigError) as exc:
        stage.on_control(CTRL_PARAMS, ctrl_params(1))
    assert "strategies[0].params.qty = 5000: must be <= 1000" in str(exc.value)
    write_param_set(tmp_path, "probe", 1, {"qty": 500, "scale": 0.5})
    with pytest.raises(ConfigError) as exc:
        stage.on_control(CTRL_PARAMS, ctrl_params(1))
    assert "scale = 0.5: must be >= 1 when qty > 100" in str(exc.value)
    assert h.strategy.params.qty == 1 and h.state.p[0]["qty"] == 1
    assert h.hctl[H_PARAMS_PENDING] == 0 and h.rt["params_version"] == 0


def test_a_restarted_strategy_process_reads_the_last_set(tmp_path):
    h = probe_host()
    stage = host_stage(h, tmp_path)
    assert stage.read_live_params() is None
    write_param_set(tmp_path, "probe", 3, {"qty": 9, "scale": 2.0})
    params, version = stage.read_live_params()
    assert (params.qty, params.scale, version) == (9, 2.0, 3)
    assert stage.read_live_params(newer_than=3) is None


# ------------------------------------------------------------------------------------------
# Acknowledgements: a command whose on_control raised is answered as failed
# ------------------------------------------------------------------------------------------
def test_a_control_command_that_raises_is_acknowledged_negated():
    from pipeline.runner import StageRunner

    class Boom:
        errors = 0

        def on_control(self, kind, rec):
            if kind == CTRL_PARAMS:
                raise ValueError("bad set")

    words = {}
    recs = np.zeros(2, CONTROL_DTYPE)
    recs["kind"] = [CTRL_PARAMS, 6]
    recs["arg_u4"] = [7, 8]
    queue = [recs[:1], recs[1:]]

    def poll(buf):
        got = queue.pop(0) if queue else recs[:0]
        buf[:len(got)] = got
        return len(got)

    runner = StageRunner(Boom(), SimpleNamespace(name="s"),
                         SimpleNamespace(set=words.__setitem__), SimpleNamespace(poll=poll),
                         None)
    runner.handle_control()
    assert words[W_CTRL_ACK] == -7 and runner.stage.errors == 1
    runner.handle_control()
    assert words[W_CTRL_ACK] == 8


def test_the_controller_tells_acknowledged_failed_and_silent_stages_apart():
    acks = {"a": 5, "b": -6, "c": 3, "d": -9}
    ctl = Controller.__new__(Controller)
    ctl.topology = SimpleNamespace(stage=lambda name: SimpleNamespace(slot=name))
    ctl.status = SimpleNamespace(read_word=lambda slot, word: acks[slot])
    ctl.supervisor = SimpleNamespace(procs=set(acks))
    # a: done; b: its own command failed; c: not yet; d: a later command failed, b's was done
    acked, failed = ctl.await_answers({"a": 5, "b": 6, "c": 7, "d": 8}, wait_s=0.01)
    assert acked == ["a", "d"] and failed == ["b"]
    assert ctl._await_acks({"a": 5, "b": 6}, 0.0) == ["a"]
