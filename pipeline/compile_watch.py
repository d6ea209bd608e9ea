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
