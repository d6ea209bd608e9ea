"""Checks of the files and numbers a command is given, shared by the data commands (cold path,
operator's shell). Each raises ``CliError`` with exit 2 and a message that names the option,
the value and the fix, before any work starts. Not a command: the leading underscore keeps
pipeline.cli from registering it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.exits import EXIT_USAGE, CliError

RECORD_MAGIC_PREFIX = b"HFTREC"     # market.recordfile.MAGIC starts so (not imported: no numpy)


def input_file(path: str, flag: str, what: str, *, empty_ok: bool = False) -> Path:
    """``path`` as an existing, readable, regular file (non-empty unless ``empty_ok``)."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path}: is a directory, not a {what}; name a file in it",
                       EXIT_USAGE)
    if not p.exists():
        hint = "" if p.parent.is_dir() else f" (no directory {p.parent})"
        raise CliError(f"{flag} {path}: no such {what}{hint}; check the path", EXIT_USAGE)
    if not p.is_file():
        raise CliError(f"{flag} {path}: not a regular file; give a {what}", EXIT_USAGE)
    if not os.access(p, os.R_OK):
        raise CliError(f"{flag} {path}: not readable (permissions); give a {what} you can read",
                       EXIT_USAGE)
    if not empty_ok and p.stat().st_size == 0:
        raise CliError(f"{flag} {path}: the file is empty, not a {what}", EXIT_USAGE)
    return p


def output_file(path: str, flag: str) -> Path:
    """``path`` as a file that can be created or replaced (its folder exists, it is no folder)."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{flag} {path}: is a directory; name a file to write, e.g. "
                       f"{p / 'out'}", EXIT_USAGE)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CliError(f"{flag} {path}: directory {parent} does not exist; create it first or "
                       f"choose another path", EXIT_USAGE)
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise CliError(f"{flag} {path}: not writable (permissions); choose another path",
                       EXIT_USAGE)
    return p


def output_dir(path: str, flag: str) -> Path:
    """``path`` as a folder to write into (it may not exist yet, but must not be a file)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CliError(f"{flag} {path}: is a file, not a directory; name a directory to "
                       f"write into", EXIT_USAGE)
    return p


def sniff(path) -> str:
    """What a file looks like, for hints: 'record', 'lobster-message', 'lobster-orderbook',
    'recording' (venue traffic, hftfarm or cryptofeed format), 'binary' or 'unknown'."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unknown"
    if head.startswith(RECORD_MAGIC_PREFIX):
        return "record"
    first = head.split(b"\n", 1)[0].strip()
    if b"\0" in head:
        return "binary"
    if first.startswith((b'{"ts_ns"', b"wss://", b"ws://", b"https://", b"http://")):
        return "recording"
    cells = first.split(b",")
    if len(cells) >= 4 and all(c.strip().lstrip(b"-").replace(b".", b"", 1).isdigit()
                               for c in cells):
        # LOBSTER: message files have 6 columns and a decimal time; order books 4 x levels
        return "lobster-message" if len(cells) == 6 and b"." in cells[0] else "lobster-orderbook"
    if first[:1].isdigit() and b": " in first:
        return "recording"
    return "unknown"


def record_file_hint(path) -> str:
    """The fix for a file that is not a readable hftfarm record file."""
    kind = sniff(path)
    if kind in ("lobster-message", "lobster-orderbook"):
        return ("it looks like a LOBSTER CSV; convert the message + order book pair first: "
                "run.py replay lobster --message M --orderbook O --levels N --out F.rec")
    if kind == "recording":
        return ("it looks like a venue recording; convert it first: run.py replay "
                "binance|coinbase|kraken --file F --out F.rec")
    return ("record files are written by run.py replay lobster|binance|coinbase|kraken "
            "(and by backtests and the journal)")


def _number(kind, text: str, ok, rule: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or not ok(v):     # v != v: NaN
        raise argparse.ArgumentTypeError(f"{text}: must be {rule}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(int, text, lambda v: v >= 1, "an integer >= 1")


def non_negative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a number >= 0")


def tcp_port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    return _number(int, text, lambda v: 0 <= v <= 65535, "a TCP port 0-65535 (0: any free port)")


def recording_venue_mismatch(files: list[str], accepted: tuple[str, ...]):
    """(venue, evidence) when the recording was evidently made on a venue (or Kraken version)
    outside ``accepted``; None when it fits or nothing tells. Uses feeds.meta's detection
    (endpoint URLs, Kraken's frame shapes), the same that ``replay kraken`` picks its version
    with."""
    from feeds.meta import kraken_version_seen, recorded_venue

    try:
        found = recorded_venue(files)
        if found is None and any(v.startswith("kraken") for v in accepted):
            seen = kraken_version_seen(files)
            if seen is not None:
                found = (seen, "v1 array frames" if seen == "kraken-v1" else "v2 frames")
    except (OSError, ValueError):
        return None
    if found is None or found[0] in accepted:
        return None
    return found


def venue_label(venue: str) -> str:
    return {"kraken": "Kraken websocket v2", "kraken-v1": "Kraken websocket v1",
            "coinbase-at": "Coinbase Advanced Trade", "coinbase": "Coinbase Exchange",
            "binance": "Binance"}.get(venue, venue)
