"""Generated glue modules: written once per content, imported from their file. Cold path.

Why they exist: numba specialises a function per dispatcher passed to it as an argument and
cannot cache that specialisation on disk, so code that takes a strategy's hooks as arguments
is compiled again by every process. A small generated module whose *globals* are the hooks
compiles to ordinary cached functions. Two users: the live strategy host
(stages/host_codegen.py, one host step per strategy kind) and the backtest
(strategies/backtest_codegen.py, one loop per set of strategy kinds). The generated text only
binds names; the logic stays in real modules.

numba's cache checks only the stamp of the file that defines a function, so each generated
text carries a fingerprint of every source compiled into it (``sources_fingerprint``): a
change anywhere rewrites the file and the cache entry goes with it.

Imports only the standard library (common/ is the leaf layer).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path


def generated_dir(sub: str, override_env: str | None = None) -> Path:
    """Where generated modules of kind ``sub`` live: $``override_env`` if set, else beside
    numba's cache ($NUMBA_CACHE_DIR/<sub>; pipeline/numba_cache.py keys that directory by the
    source tree), else ~/.cache/hftfarm/<sub>; a private temp directory if none is writable."""
    if override_env and os.environ.get(override_env):
        d = Path(os.environ[override_env])
    elif os.environ.get("NUMBA_CACHE_DIR"):
        d = Path(os.environ["NUMBA_CACHE_DIR"]) / sub
    else:
        d = Path.home() / ".cache" / "hftfarm" / sub
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:   # no writable home (a service user)
        d = Path(tempfile.gettempdir()) / f"hftfarm-{sub}-{os.getuid()}"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    return d


def sources_fingerprint(files) -> str:
    """Hash of the names and contents of ``files`` (missing ones are skipped)."""
    h = hashlib.sha1()
    for f in sorted({Path(f) for f in files}):
        try:
            h.update(f.name.encode() + f.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def load_generated(directory: Path, filename: str, text: str, module_name: str):
    """The module ``module_name`` with source ``text`` from ``directory/filename``: the file is
    rewritten only when its text differs (atomically: concurrent processes never see half a
    file), so numba's cache beside it stays valid; imported once per process."""
    path = Path(directory) / filename
    try:
        current = path.read_text()
    except OSError:
        current = None
    if current != text:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return import_file(module_name, path, fresh=current != text)


def import_file(module_name: str, path, fresh: bool = False):
    """The module file ``path`` imported as ``module_name``, once per process (again when
    ``fresh`` or when a module of that name came from another file); a module whose code
    raises is not left half-made in sys.modules."""
    mod = sys.modules.get(module_name)
    if mod is None or fresh or getattr(mod, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(module_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[module_name]
            raise
    return mod
