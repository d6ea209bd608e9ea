"""The kill switch's send path (pipeline/killswitch.py): it finds the control socket and writes
the request without tomllib or json, so it must agree with them exactly, and it must send before
it imports anything else. Where it is unsure it must give up *before* sending."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from pipeline.killswitch import (control_socket, instance_fields, json_string, kill_request,
                                 parse_args)

ROOT = Path(__file__).resolve().parent.parent.parent


def _tomllib_fields(text: str) -> dict:
    inst = tomllib.loads(text).get("instance", {})
    return {"name": inst.get("name", "default"), "run_dir": inst.get("run_dir", "runs"),
            "socket": inst.get("socket", "")}


# -- the [instance] scanner against tomllib -----------------------------------------------------
def test_the_shipped_configs_are_read_on_the_fast_path_exactly_as_tomllib_reads_them():
    for path in [ROOT / "config.toml", *sorted((ROOT / "examples").glob("*.toml"))]:
        text = path.read_text()
        assert instance_fields(text) == _tomllib_fields(text), path


@pytest.mark.parametrize("text", [
    '[instance]\nname = "a"\nname = "b"\n',                 # duplicate key (tomllib refuses)
    '[instance]\nname = "a\\tb"\n',                         # an escape: left to tomllib
    '[instance]\nname = """a"""\n',                        # multi-line string
    '[instance]\nname = \'lit\'\n',                         # literal string
    'instance.name = "x"\n',                               # dotted key at the top
    'instance = { name = "x" }\n',                         # inline table
    '["instance"]\nname = "x"\n',                          # quoted header
    '[instance]\nname = "x"\n[instance]\nrun_dir = "y"\n',  # the table twice
    '[instance.sub]\nname = "x"\n',                        # a sub-table of instance
    '[[instance]]\nname = "x"\n',                          # an array of tables
    '[instance]\n"name" = "x"\n',                          # quoted key
    '[instance]\nname = "x" trailing\n',                   # junk after the value
    '[instance]\nname = "x/y"\n',                          # not a valid instance name
    '[instance]\nrun_dir = ""\n',                          # empty run_dir
    '[instance]\nname = "x"\n[a]\nv = [\n  [1, 2],\n]\n',  # a line that looks like a header
    '[instance\nname = "x"\n',                             # a broken header
])
def test_anything_unusual_is_left_to_tomllib(text):
    assert instance_fields(text) is None


def _random_config(rng: random.Random) -> str:
    """A config of the plain form with random [instance] values, comments, spacing and
    surrounding tables, in random order."""
    alphabet = "abcXYZ019_-"
    inst_lines = []
    for key in rng.sample(["name", "run_dir", "socket", "lock_memory", "realtime_priority"],
                          rng.randint(0, 5)):
        if key == "name":
            v = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        elif key in ("run_dir", "socket"):
            v = rng.choice(["runs", "/tmp/x y/runs", "a/b", "ü-dir", "/r#not-a-comment"])
        else:
            inst_lines.append(f"{key} = {rng.choice(['true', '0', '5'])}")
            continue
        sp1, sp2 = rng.choice(["", " ", "  "]), rng.choice(["", " ", "\t"])
        comment = rng.choice(["", "  # a comment", ' # "quoted" # twice'])
        inst_lines.append(f'{key}{sp1}={sp2}"{v}"{comment}')
    blocks = ["[instance]" + rng.choice(["", "  # the instance"]) + "\n" + "\n".join(inst_lines)]
    blocks.append('[limits]\nname = "not the instance"\nmax_order_qty = 5')
    blocks.append('[[strategies]]\nname = "mm"\nrun_dir = "nope"\ninstruments = ["a", "b"]')
    blocks.append("# a comment block\n# [instance]\n")
    blocks.append('[venues.sim]\nsocket = "not this one"')
    rng.shuffle(blocks)
    return "\n\n".join(blocks) + "\n"


def test_property_the_fast_path_never_disagrees_with_tomllib():
    """Over 2,000 random configs: wherever the scanner answers, tomllib says the same."""
    rng = random.Random(12)
    answered = 0
    for _ in range(2000):
        text = _random_config(rng)
        got = instance_fields(text)
        if got is not None:
            answered += 1
            assert got == _tomllib_fields(text), text
    assert answered > 1500   # the plain form is taken, not left to the slow path


def test_the_socket_path_is_resolved_like_the_full_cli():
    from types import SimpleNamespace

    from pipeline.paths import socket_path

    for fields in ({"name": "n1", "run_dir": "runs", "socket": ""},
                   {"name": "n1", "run_dir": "/tmp/../tmp/r", "socket": ""},
                   {"name": "n1", "run_dir": "runs", "socket": "x/../c.sock"}):
        cfg = SimpleNamespace(instance=SimpleNamespace(**fields))
        assert control_socket(fields) == str(socket_path(cfg))


# -- the request ---------------------------------------------------------------------------------
def test_property_the_hand_written_request_is_the_json_the_controller_expects():
    rng = random.Random(5)
    pool = ['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "€", "😀", "a", " ", "/", "'"]
    for _ in range(3000):
        why = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        flatten = rng.random() < 0.5
        raw = kill_request(flatten, why)
        assert raw.endswith(b"\n") and raw.count(b"\n") == 1
        assert json.loads(raw) == {"cmd": "kill", "flatten": flatten, "who": "cli", "why": why}
        assert json.loads(json_string(why)) == why


@pytest.mark.parametrize("argv, want", [
    ([], {"config": None, "flatten": False, "why": ""}),
    (["--flatten", "--config", "c.toml"], {"config": "c.toml", "flatten": True, "why": ""}),
    (["--config=c.toml", "--why=fat finger"], {"config": "c.toml", "flatten": False,
                                                "why": "fat finger"}),
    (["--why", "x y", "--flatten"], {"config": None, "flatten": True, "why": "x y"}),
    (["--help"], None), (["-h"], None), (["--config"], None), (["--config", "--flatten"], None),
    (["--flaten"], None), (["extra"], None), (["--config="], None),
])
def test_arguments_it_does_not_know_go_to_the_full_parser(argv, want):
    assert parse_args(argv) == want


# -- end to end: nothing is imported before the request is on the socket ---------------------------
_PROBE = r"""
import runpy, sys
import pkgutil  # runpy.run_path imports it (and re, typing) before run.py starts
seen, before_connect = [], None
def hook(event, args):
    global before_connect
    if event == "import":
        seen.append(args[0])
    elif event == "socket.connect" and before_connect is None:
        before_connect = list(seen)
sys.addaudithook(hook)
sys.argv = ["run.py", "kill", "--config", sys.argv[1], "--why", "probe"]
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit as e:
    code = e.code
print("BEFORE", ",".join(before_connect or []), file=sys.stderr)
sys.exit(code)
"""


def _fake_controller(path: Path, answer: bytes):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    got = []

    def serve():
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(4096)
            got.append(data)
            conn.sendall(answer)
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("answer, code, out", [
    (b'{"ok": true, "halted": ["risk_gate", "order_router"]}\n', 0,
     "HALTED (risk_gate, order_router acknowledged)"),
    (b'{"ok": false, "error": "no gate"}\n', 1, "error: controller: no gate"),
    (b"", 3, "closed the connection without an answer"),
])
def test_kill_is_on_the_socket_before_anything_but_the_c_socket_module_is_imported(
        tmp_path, answer, code, out):
    run_dir = tmp_path / "runs"
    (run_dir / "ks1").mkdir(parents=True)
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "config.toml").read_text()
                   .replace('name = "default"', 'name = "ks1"', 1)
                   .replace('run_dir = "runs"', f'run_dir = "{run_dir}"', 1))
    t, got = _fake_controller(run_dir / "ks1" / "control.sock", answer)
    r = subprocess.run([sys.executable, "-c", _PROBE, str(cfg)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    t.join(10)
    assert r.returncode == code, r.stderr
    assert out in (r.stdout + r.stderr)
    assert json.loads(got[0]) == {"cmd": "kill", "flatten": False, "who": "cli", "why": "probe"}
    before = [line for line in r.stderr.splitlines() if line.startswith("BEFORE")][0]
    imported = set(before[len("BEFORE "):].split(",")) - {""}
    assert imported <= {"pipeline", "pipeline.killswitch", "__future__", "_socket"}, imported


def test_with_no_controller_the_full_path_names_the_instance_and_exits_3(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text((ROOT / "config.toml").read_text()
                   .replace('name = "default"', 'name = "ks2"', 1)
                   .replace('run_dir = "runs"', f'run_dir = "{tmp_path}"', 1))
    r = subprocess.run([sys.executable, "run.py", "kill", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "instance 'ks2' is not running" in r.stderr
    assert os.listdir(tmp_path) == ["c.toml"]   # nothing created on the way
