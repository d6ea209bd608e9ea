"""Progress bars and the live line (pipeline/progress.py, run's LiveStatus line): drawn in
place on a terminal, nothing at all when stderr is piped."""
from __future__ import annotations

import io
import time

from pipeline.commands.run import format_live_line
from pipeline.progress import LiveLine, Progress, format_bar


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_nothing_is_written_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    with Progress("backtest", total=10, stream=out, refresh_s=0.01) as p:
        for k in range(10):
            p.update(k + 1)
        p.phase("writing")
        time.sleep(0.05)
    line = LiveLine(stream=out)
    line.show("trading 3 s")
    line.clear()
    assert out.getvalue() == ""


def test_on_a_terminal_the_bar_is_drawn_in_place_and_cleared_at_the_end():
    out = Tty()
    with Progress("replay", total=4, stream=out) as p:
        p.update(2)
    text = out.getvalue()
    assert "\r" in text and "replay [" in text and " 50%" in text
    assert text.endswith("\r\x1b[K")          # the line is cleared when the work ends
    assert "\n" not in text


def test_bar_and_eta():
    assert format_bar(5, 10, 10.0, width=10) == "[#####.....]  50% 10.0 s, ETA 10 s"
    assert format_bar(10, 10, 3.0, width=4) == "[####] 100% 3.0 s"


def test_live_line_shows_elapsed_pnl_fills_rejects_and_tick_to_trade_p50():
    status = {"uptime_s": 12.4, "risk": {"state": "ACTIVE", "fills": 31, "rejected": 4,
                                         "strategies": {"a": {"pnl": 1.5}, "b": {"pnl": -0.25}}}}
    latency = {"histograms": {"tick_to_trade": {"count": 9, "p50_ns": 41_500}}}
    assert format_live_line(status, latency) == (
        "trading 12 s  PnL +1.25  fills 31  rejects 4  tick-to-trade p50 41.5 us  [ACTIVE]")
    assert "p50 -" in format_live_line(status, {})


def test_a_log_line_written_to_stderr_clears_the_live_line_first(monkeypatch):
    import sys

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    line = LiveLine()
    line.take_stderr()
    try:
        line.show("trading 3 s")
        print("stop: strategies stopped", file=sys.stderr)
    finally:
        line.release_stderr()
    assert sys.stderr is tty
    assert tty.getvalue() == "\rtrading 3 s\x1b[K\r\x1b[Kstop: strategies stopped\n"
