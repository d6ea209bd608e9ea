"""Point numba's on-disk cache at a directory keyed by a hash of hftfarm's own source.

Runs once at start-up of every entry point (run.py, the test suite, stage processes inherit
the environment); cold path, must run before numba is imported.

Why: numba invalidates a cached function only when *its own* file changes. A kernel that
inlines another module's function or constant (the CTL_* word offsets of a strategy state, the
engine's state layout) keeps the old code after that other module changes, and silently reads
the wrong slots. Keying the whole cache by the source tree makes any change recompile
everything once; an operator who upgrades can never run yesterday's risk checks.

Set NUMBA_CACHE_DIR yourself to override. Old cache directories beyond the newest
``KEEP`` are removed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shm", "market", "strategies", "feeds", "stages", "pipeline", "bench", "tests")
KEEP = 3


def source_hash(root: Path = ROOT) -> str:
    h = hashlib.sha1()
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def configure() -> str | None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = ROOT / ".numba_cache"
    target = base / source_hash()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # read-only checkout: numba falls back to its own locations
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    try:
        olds = sorted((d for d in base.iterdir() if d.is_dir() and d != target),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for d in olds[KEEP - 1:]:
            shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass
    return str(target)
