"""Progress bars and live status lines for long commands. Cold path (operator's shell).

Shown only on a terminal: ``enabled`` defaults to ``stream.isatty()`` (stderr), so a piped or
redirected command prints nothing extra and its stdout stays exactly what it was. One line,
rewritten in place with ``\\r`` and cleared (``\\x1b[K``) when the work ends.

``Progress(label, total)``: ``update(done)`` draws ``label [#####.....] 48% 12.0 s, ETA 13 s``;
without a total (work whose size is not known ahead, a backtest inside one numba call) it shows
the phase and the elapsed time, refreshed by a daemon thread about once a second.
``LiveLine``: a caller-made text, refreshed by the caller (``run``'s trading line).
"""
from __future__ import annotations

import sys
import threading
import time

BAR_WIDTH = 30


def format_bar(done: float, total: float, elapsed_s: float, width: int = BAR_WIDTH) -> str:
    frac = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    n = int(frac * width)
    eta = f", ETA {elapsed_s * (1 - frac) / frac:.0f} s" if 0 < frac < 1 else ""
    return f"[{'#' * n}{'.' * (width - n)}] {frac * 100:3.0f}% {elapsed_s:.1f} s{eta}"


class LiveLine:
    """One status line on ``stream`` (default stderr), only where it is a terminal."""

    def __init__(self, stream=None, enabled: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            try:
                enabled = self.stream.isatty()
            except (AttributeError, ValueError):
                enabled = False
        self.enabled = bool(enabled)
        self._lock = threading.Lock()
        self._shown = False

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if not self.enabled or not self._shown:
            return
        with self._lock:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def take_stderr(self) -> None:
        """Route other writers' stderr text (the controller's log lines) through a proxy that
        clears the live line first, so a log line never lands at the end of it."""
        if self.enabled and sys.stderr is self.stream:
            sys.stderr = _ClearFirst(self.stream, self)

    def release_stderr(self) -> None:
        if isinstance(sys.stderr, _ClearFirst) and sys.stderr.line is self:
            sys.stderr = self.stream


class _ClearFirst:
    def __init__(self, real, line: LiveLine):
        self.real, self.line = real, line

    def write(self, text):
        self.line.clear()
        return self.real.write(text)

    def __getattr__(self, name):
        return getattr(self.real, name)


class Progress(LiveLine):
    def __init__(self, label: str, total: float | None = None, stream=None,
                 enabled: bool | None = None, refresh_s: float = 1.0):
        super().__init__(stream, enabled)
        self.label = label
        self.total = total
        self.done = 0.0
        self.phase_text = ""
        self.t0 = time.monotonic()
        self.refresh_s = refresh_s
        self._last = 0.0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True,
                                            name="progress")
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.clear()
        return False

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.show(self.render())

    def render(self) -> str:
        elapsed = time.monotonic() - self.t0
        phase = f" {self.phase_text}" if self.phase_text else ""
        if self.total:
            return f"{self.label}{phase} {format_bar(self.done, self.total, elapsed)}"
        return f"{self.label}{phase} ... {elapsed:.0f} s"

    def phase(self, text: str) -> None:
        self.phase_text = text
        self.show(self.render())

    def update(self, done: float, total: float | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if now - self._last >= 0.1:          # at most ten redraws a second
            self._last = now
            self.show(self.render())
