"""numba cache locator for the functions of this checkout: where their compiled code is filed.

Imported by numba itself (NUMBA_CACHE_LOCATOR_CLASSES, set by pipeline/numba_cache.py's
``configure``) when a ``cache=True`` function is defined, in any process of hftfarm; cold.

numba's own UserProvidedCacheLocator files a function under
``$NUMBA_CACHE_DIR/<dir name>_<sha1 of the directory's absolute path>``, so a clone of the same
sources at another path finds nothing and recompiles every kernel (minutes on 2 cores). This
one files a function defined in this checkout under ``$NUMBA_CACHE_DIR/tree/<its directory
relative to the checkout>`` and a generated module that lives inside $NUMBA_CACHE_DIR (the
strategy host steps of stages/host_codegen.py) next to itself, and stamps it with a SHA-256 of
its file's content, never its mtime, so any clone of the same sources loads the same code.
Cross-module staleness is not this class's business: $NUMBA_CACHE_DIR is keyed by every kernel
source (pipeline/numba_cache.py). Anything else (a file outside both, an IPython cell) falls
through to numba's own locators, listed after this one.
"""
from __future__ import annotations

import functools
import hashlib
import os

from numba.core import config
from numba.core.caching import _CacheLocator, _SourceFileBackedLocatorMixin

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

# one compilation per kernel across processes (pipeline/compile_lock.py)
from pipeline.compile_lock import install as _install_compile_lock  # noqa: E402

_install_compile_lock()

if os.environ.get("HFTFARM_COMPILE_LOG"):   # diagnostic: pipeline/compile_watch.py CompileLog
    from pipeline.compile_watch import log_compiles_from_env

    log_compiles_from_env()


@functools.lru_cache(maxsize=None)
def _content_hash(path: str, mtime_ns: int, size: int) -> str:
    # (mtime, size) only decide whether to read the file again in this process
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _inside(path: str, directory: str) -> str | None:
    """``path`` relative to ``directory`` if it lies inside it, else None."""
    rel = os.path.relpath(path, directory)
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


class CheckoutCacheLocator(_SourceFileBackedLocatorMixin, _CacheLocator):
    """A function of this checkout (or generated into the cache directory): filed by its
    place relative to the checkout, stamped by content."""

    def __init__(self, py_func, py_file: str, cache_path: str):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = cache_path

    def get_cache_path(self) -> str:
        return self._cache_path

    def get_source_stamp(self) -> str:
        st = os.stat(self._py_file)
        return "sha256:" + _content_hash(self._py_file, st.st_mtime_ns, st.st_size)

    @classmethod
    def from_function(cls, py_func, py_file):
        if not config.CACHE_DIR or not os.path.isfile(py_file):
            return None
        cache_dir = os.path.realpath(config.CACHE_DIR)
        src_dir = os.path.dirname(os.path.realpath(py_file))
        if _inside(src_dir, cache_dir) is not None:
            cache_path = src_dir   # generated into the (keyed) cache directory itself
        else:
            rel = _inside(src_dir, ROOT)
            if rel is None:
                return None
            cache_path = os.path.normpath(os.path.join(cache_dir, "tree", rel))
        self = cls(py_func, py_file, cache_path)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self
