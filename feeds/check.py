"""Replay recordings through a venue handler and report what it saw. Cold path (CLI, tests).

``check_recordings(venue, files)`` reads every file (several files in order form one stream,
see feeds.recording.read_recordings), resolves instruments (from a loaded config if given,
else derived from the data, see feeds.meta), feeds every frame and returns the handler's
counters plus a verdict: ``clean`` is true when nothing was lost or inconsistent (no gaps,
checksum failures, crossed books, parse errors, oracle mismatches, and every book seen ended
valid).
"""
from __future__ import annotations

from feeds.meta import derive_instruments, instruments_from_config, make_handler
from feeds.recording import feed_frames, read_recordings


def resolve_instruments(venue: str, files: list[str], config=None):
    """From ``config`` (a loaded config) when it lists any of this venue's instruments, else
    derived from the recording."""
    if config is not None:
        inst = instruments_from_config(config, venue)
        if inst:
            return inst, "config"
    return derive_instruments(venue, read_recordings(files)), "derived from the recording"


def check_recordings(venue: str, files: list[str], config=None,
                     handler_kw: dict | None = None) -> dict:
    instruments, source = resolve_instruments(venue, files, config)
    handler = make_handler(venue, instruments, replay=True, **(handler_kw or {}))
    frames = feed_frames(handler, read_recordings(files))
    if hasattr(handler, "flush_oracle"):
        handler.flush_oracle()
    st = handler.stats.as_dict()
    books = {sym: {"valid": b.valid, "bids": len(b.bids), "asks": len(b.asks),
                   "update_id": b.update_id} for sym, b in sorted(handler.books.items())}
    problems = [k for k in ("gaps", "checksum_fail", "crossed", "parse_errors", "oracle_mismatch",
                            "stale") if st[k]]
    invalid = [s for s, b in books.items() if not b["valid"]]
    if invalid:
        problems.append("invalid books at the end: " + ", ".join(invalid))
    report = {
        "venue": venue,
        "files": list(files),
        "frames": frames,
        "instruments": {s: {"id": i.instrument_id, "tick": f"{i.price.step:f}",
                            "lot": f"{i.qty.step:f}"} for s, i in sorted(instruments.items())},
        "instrument_source": source,
        "stats": st,
        "books": books,
        "clean": not problems,
        "problems": problems,
    }
    if venue == "binance":
        compared = st["oracle_match"] + st["oracle_mismatch"]
        report["book_ticker_oracle"] = {
            "compared": compared, "matched": st["oracle_match"],
            "not_comparable": st["oracle_skipped"],
        }
    return report


def format_report(r: dict) -> str:
    st = r["stats"]
    lines = [
        f"venue {r['venue']}: {r['frames']} frames from {len(r['files'])} file(s); "
        f"{len(r['instruments'])} instruments ({r['instrument_source']})",
        f"  messages {st['messages']}  book updates {st['book_updates']}  snapshots "
        f"{st['snapshots']}  trades {st['trades']}  tops {st['tops']}  heartbeats "
        f"{st['heartbeats']}",
        f"  gaps {st['gaps']}  resyncs {st['resyncs']}  checksum ok {st['checksum_ok']} "
        f"fail {st['checksum_fail']}  crossed {st['crossed']}  parse errors "
        f"{st['parse_errors']}  stale {st['stale']}  ignored {st['ignored']}  unknown symbol "
        f"{st['unknown_symbol']}",
    ]
    if "book_ticker_oracle" in r:
        o = r["book_ticker_oracle"]
        lines.append(f"  bookTicker oracle: {o['matched']}/{o['compared']} matched the local "
                     f"best bid/ask at the same update id ({o['not_comparable']} tickers at ids "
                     "the local book never stood at)")
    for sym, b in r["books"].items():
        lines.append(f"  {sym}: {'valid' if b['valid'] else 'INVALID'}, {b['bids']} bids, "
                     f"{b['asks']} asks" + (f", update id {b['update_id']}"
                                            if b["update_id"] else ""))
    lines.append("clean" if r["clean"] else "NOT CLEAN: " + "; ".join(r["problems"]))
    return "\n".join(lines)
