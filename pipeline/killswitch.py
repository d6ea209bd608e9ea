"""The kill switch's send path: ``run.py kill`` reaches the controller before it imports anything.

The kill must take effect within 100 ms of the command while the box is busy trading. On the
default 2-core load a Python module costs milliseconds to import, and the usual CLI path
(argparse, tomllib, json, socket, pathlib: 40 ms on an idle core here) was most of a 340 ms
kill. So this path imports nothing but the C socket module until the request is sent:

  1. the command line is read by hand (only ``--config F``, ``--flatten``, ``--why W``);
  2. the control socket is found from the ``[instance]`` table by a scanner that understands
     the plain form the shipped configs use (``key = "string"`` lines, comments);
  3. the request is written as JSON by hand and sent over ``_socket``.

Anything outside that (``--help``, another option, a config the scanner does not fully
understand, no controller listening) returns None *before anything is sent*, and ``run.py``
goes the usual way: argparse, tomllib, every error named. After the send, the reply is read and
printed by ``report`` here, whose answer line the full path (pipeline/commands/kill.py) prints
too, so the two paths answer the same.
"""
from __future__ import annotations

import os

_KEYS = ("name", "run_dir", "socket")
_DEFAULTS = {"name": "default", "run_dir": "runs", "socket": ""}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def parse_args(argv: list[str]) -> dict | None:
    """``{"config", "flatten", "why"}`` from the kill command's arguments, or None for anything
    the full parser should handle (help, unknown options, a missing value)."""
    out = {"config": None, "flatten": False, "why": ""}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--flatten":
            out["flatten"] = True
        elif a in ("--config", "--why"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None
            out[a[2:]] = argv[i + 1]
            i += 1
        elif a.startswith(("--config=", "--why=")):
            key, _, value = a[2:].partition("=")
            out[key] = value
        else:
            return None
        i += 1
    if out["config"] == "":
        return None
    return out


def instance_fields(text: str) -> dict | None:
    """``name``, ``run_dir`` and ``socket`` of the ``[instance]`` table in a TOML text, with the
    config's defaults, when every line that could bear on them is of the plain form; else None
    (the caller then reads the file with tomllib). Never guesses: a dotted ``instance.`` key,
    an inline ``instance = {...}``, a multi-line or escaped string, or a second ``[instance]``
    header all give None."""
    if '"""' in text or "'''" in text:
        return None
    found = dict(_DEFAULTS)
    given = set()
    table = None
    seen_instance = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = line.split("#", 1)[0].strip()
            if header.startswith("[["):
                inner = header[2:-2].strip()
                if not header.endswith("]]") or \
                        inner.split(".")[0].strip().strip("\"'") == "instance":
                    return None
                table = "[[" + inner  # an array of tables: never [instance]
                continue
            if not header.endswith("]"):
                return None
            inner = header[1:-1].strip()
            if inner.split(".")[0].strip().strip("\"'") == "instance":
                if inner != "instance" or seen_instance:
                    return None
                seen_instance = True
            table = inner
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if table is None and (not eq or key.split(".")[0].strip("\"'") == "instance"):
            return None
        if table != "instance":
            continue
        if not eq or "." in key or key.strip("\"'") != key:
            return None
        if key not in _KEYS:
            continue
        value = value.strip()
        end = value.find('"', 1) if value.startswith('"') else -1
        if end < 0 or key in given:
            return None
        s, rest = value[1:end], value[end + 1:].strip()
        if "\\" in s or (rest and not rest.startswith("#")):
            return None
        found[key] = s
        given.add(key)
    name = found["name"]
    if not 1 <= len(name) <= 24 or not set(name) <= _NAME_CHARS or not found["run_dir"]:
        return None
    return found


def control_socket(fields: dict) -> str:
    """The control socket's path, resolved as ``pipeline.paths.socket_path`` does."""
    if fields["socket"]:
        return os.path.realpath(fields["socket"])
    return os.path.join(os.path.realpath(fields["run_dir"]), fields["name"], "control.sock")


def json_string(s: str) -> str:
    """``s`` as a JSON string literal (json.dumps with ensure_ascii=False, without json)."""
    out = ['"']
    for ch in s:
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def kill_request(flatten: bool, why: str) -> bytes:
    return ('{"cmd": "kill", "flatten": ' + ("true" if flatten else "false")
            + ', "who": "cli", "why": ' + json_string(why) + "}\n").encode("utf-8",
                                                                          "surrogateescape")


def normal_priority() -> None:
    """Back to normal scheduling once the kill is sent (run.py raised it to SCHED_FIFO)."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (OSError, AttributeError):
        pass


def send_kill(argv: list[str], default_config: str) -> int | None:
    """Send the kill and print the answer; the exit code, or None when nothing was sent and
    the full CLI should take over."""
    import _socket

    args = parse_args(argv)
    if args is None:
        return None
    try:
        with open(args["config"] or default_config, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    fields = instance_fields(text)
    if fields is None:
        return None
    path = control_socket(fields)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(10.0)
        try:
            sock.connect(path)
        except OSError:
            return None  # not running, or starting: the full path says which
        sock.sendall(kill_request(args["flatten"], args["why"]))
        normal_priority()
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        import sys

        print(f"error: kill sent to {path}, but its answer was lost ({exc}); check "
              "`run.py status`", file=sys.stderr)
        return 1
    finally:
        sock.close()
    return report(fields["name"], data, args["flatten"])


def answer_line(name: str, reply: dict, flatten: bool) -> str:
    """The line a kill prints for the controller's ``ok`` answer (both paths print it)."""
    return (f"instance {name}: HALTED ({', '.join(reply['halted']) or 'no stage'} "
            f"acknowledged); open orders cancelled" + ("; flattening positions"
                                                      if flatten else ""))


def report(name: str, data: bytes, flatten: bool) -> int:
    """Print the controller's answer to a kill sent by ``send_kill``; the exit code (as the
    full path, pipeline/commands/kill.py, would give it). Runs after the send, so it may
    import."""
    import json
    import sys

    from pipeline.exits import EXIT_FAILURE, EXIT_NOT_RUNNING

    try:
        reply = json.loads(data) if data else None
    except ValueError:
        reply = {"ok": False, "error": f"unreadable answer {data[:80]!r}"}
    if reply is None:
        print(f"error: the kill was sent, but instance {name!r}'s controller closed the "
              "connection without an answer; check `run.py status`", file=sys.stderr)
        return EXIT_NOT_RUNNING
    if not reply.get("ok"):
        print(f"error: controller: {reply.get('error', 'request failed')}", file=sys.stderr)
        return EXIT_FAILURE
    print(answer_line(name, reply, flatten))
    return 0
