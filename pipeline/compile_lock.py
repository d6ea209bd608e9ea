"""One compilation per cached kernel across processes: the second process waits and loads.

Installed by pipeline/numba_locator.py (which numba imports in every hftfarm process that
caches); cold path, never on a hot path (it acts only where numba is about to compile).

numba's on-disk cache has no lock between processes. When two processes need the same
uncached kernel at the same time (two pytest-xdist workers, the stages of a first start, a test
and the ``run.py backtest`` it starts), both compile it and the second result overwrites the
first. Measured on a cold ``make test``: one portfolio backtest loop was compiled twice, by
both workers at once, and a quarter of all compile time went to such duplicates
(``HFTFARM_COMPILE_LOG``, pipeline/compile_watch.py).

How: numba's ``Dispatcher.compile(sig)`` runs once per new signature in a process: it loads
the kernel from the cache or compiles it and saves it there. For a kernel that caches, this
wraps that call in an exclusive ``flock`` on ``<index file>.lock`` next to the kernel's cache
index: the first process compiles and saves while it holds the lock, the next one then finds
it in the cache. The lock is released however the call ends (a failed compilation too), and a
process killed while it holds it releases it (the kernel closes its descriptors). Waiting
cannot deadlock: a process holds locks only along one chain of calls it is compiling, and
kernels do not call each other in a cycle. A cache hit costs one uncontended ``flock``.
"""
from __future__ import annotations

import fcntl
import os


_held: dict[str, int] = {}   # lock path -> descriptor, the locks this process holds
_installed = False


def _lock_path(cache) -> str | None:
    f = getattr(cache, "_cache_file", None)
    idx = getattr(f, "_index_path", None)
    return None if idx is None else idx + ".lock"


def _release(path: str) -> None:
    fd = _held.pop(path, None)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _acquire(path: str) -> bool:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return False   # an unwritable cache: numba will not save there either
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    _held[path] = fd
    return True


def install() -> None:
    """Wrap numba's Dispatcher.compile (once per process)."""
    global _installed
    if _installed:
        return
    _installed = True
    from numba.core.dispatcher import Dispatcher

    compile_ = Dispatcher.compile

    def compile(self, sig):
        cache = getattr(self, "_cache", None)
        path = _lock_path(cache) if getattr(cache, "_enabled", False) else None
        if path is None or path in _held or not _acquire(path):
            return compile_(self, sig)
        try:
            return compile_(self, sig)
        finally:
            _release(path)

    compile.__doc__ = compile_.__doc__
    Dispatcher.compile = compile
