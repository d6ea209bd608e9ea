"""Noticing, in a stage process, that numba compiles rather than loads from its cache.

Runs in every stage process during its start-up (pipeline.stage_main installs it before the
stage's imports; pipeline.runner removes it once the stage is RUNNING); cold path.

numba announces a ``numba:compile`` event only when it compiles: a function found in the
on-disk cache is loaded without one (numba/core/dispatcher.py, ``Dispatcher.compile``). So
"this stage had a cache miss" is known for certain, at the moment it happens, at no cost to a
stage whose kernels are all cached. The runner turns it into the stage's COMPILING state, which
the controller shows while it waits (``compiling kernels: risk_gate (4/7) ...``), and into the
stage's start-up line (``compiled 23 functions in 31.2 s``).
"""
from __future__ import annotations

import time

from numba.core import event


class CompileWatch(event.Listener):
    """Counts the functions numba compiles in this process, and the time spent compiling
    (outermost compilations only: one kernel compiles the functions it calls inside its own)."""

    def __init__(self):
        self.functions = 0
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0
        self._on_compile = None
        self._installed = False

    def on_start(self, ev) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1
        self.functions += 1
        if self._on_compile is not None:
            self._on_compile()

    def on_end(self, ev) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0

    def install(self) -> "CompileWatch":
        if not self._installed:
            event.register("numba:compile", self)
            self._installed = True
        return self

    def uninstall(self) -> None:
        self._on_compile = None
        if self._installed:
            event.unregister("numba:compile", self)
            self._installed = False

    def call_on_compile(self, fn) -> None:
        """Call ``fn()`` on every compilation from now on, and now if one has happened. It runs
        inside numba's compiler lock: it must not call compiled code."""
        self._on_compile = fn
        if self.functions and fn is not None:
            fn()

    def summary(self) -> str:
        if not self.functions:
            return "kernels from the cache"
        return f"compiled {self.functions} functions in {self.seconds:.1f} s"


class CompileLog(event.Listener):
    """``HFTFARM_COMPILE_LOG=FILE``: every process that compiles appends one line per outermost
    numba compilation to FILE: ``pid  seconds  nested  function`` (tab-separated). A
    diagnostic for "where do the minutes of a cold start or a cold ``make test`` go"
    (``python -m pipeline.compile_watch FILE`` sums it up); off unless the variable is set."""

    def __init__(self, path: str):
        self.path = path
        self._depth = 0
        self._nested = 0
        self._t0 = 0.0
        self._name = ""

    def on_start(self, ev) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
            self._nested = 0
            d = ev.data.get("dispatcher") if isinstance(ev.data, dict) else None
            py = getattr(d, "py_func", None)
            self._name = (f"{py.__module__}.{py.__qualname__}" if py is not None else repr(d))
        else:
            self._nested += 1
        self._depth += 1

    def on_end(self, ev) -> None:
        self._depth -= 1
        if self._depth == 0:
            import os

            line = (f"{os.getpid()}\t{time.perf_counter() - self._t0:.3f}\t{self._nested}\t"
                    f"{self._name}\n")
            with open(self.path, "a") as f:
                f.write(line)


def log_compiles_from_env() -> None:
    """Install CompileLog in this process when HFTFARM_COMPILE_LOG names a file (once)."""
    import os

    path = os.environ.get("HFTFARM_COMPILE_LOG")
    if path and not getattr(log_compiles_from_env, "_done", False):
        log_compiles_from_env._done = True
        event.register("numba:compile", CompileLog(path))


def _summary(path: str, top: int = 40) -> str:
    by_fn: dict = {}
    total = 0.0
    pids = set()
    for line in open(path):
        pid, s, _n, name = line.rstrip("\n").split("\t", 3)
        s = float(s)
        total += s
        pids.add(pid)
        t, c = by_fn.get(name, (0.0, 0))
        by_fn[name] = (t + s, c + 1)
    rows = sorted(by_fn.items(), key=lambda kv: -kv[1][0])[:top]
    out = [f"{total:.1f} s compiling in {len(pids)} processes, {len(by_fn)} functions"]
    out += [f"{t:8.1f} s  x{c:<3d} {name}" for name, (t, c) in rows]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(_summary(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40))
