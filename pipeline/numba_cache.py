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

from common.runtime import GENERATED_PREFIX  # the generated host steps' module prefix

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "shm", "market", "strategies", "feeds", "stages", "pipeline", "bench",
            "tests")
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


def _dispatchers(prefixes):
    import sys

    from numba.core.registry import CPUDispatcher

    seen: set[int] = set()
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith(prefixes):
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and id(obj) not in seen \
                    and getattr(obj, "__module__", None) == name:
                seen.add(id(obj))
                yield name, attr, obj


def warm_dir(run_dir) -> Path:
    """Where each stage of a run lists the compiled code it uses (``write_manifest``), for the
    warm spare to ``preload``."""
    return Path(run_dir) / "warm"


def write_manifest(path, prefixes=PACKAGES + (GENERATED_PREFIX,)) -> int:
    """Record which compiled overloads this process uses: (module, function, signature) of
    every overload of every @njit function under ``prefixes``, pickled to ``path`` (0600).
    Cold; a stage writes it once it runs, and the warm spare loads exactly those
    (``preload``). Returns how many overloads were recorded."""
    import pickle

    entries = [(name, attr, sig) for name, attr, d in _dispatchers(prefixes)
               for sig in d.signatures]
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        pickle.dump(entries, f)
    os.replace(tmp, path)
    return len(entries)


def preload(manifests, import_module=None) -> tuple[int, int]:
    """Load, from numba's on-disk cache, the overloads the stages' manifests list (see
    ``write_manifest``); nothing is compiled (an overload not in the cache is skipped).

    Cold path: the supervisor's warm spare (pipeline.stage_main.standby) calls it while it
    waits, so that a restarted stage's first calls find their machine code in memory instead
    of unpickling and linking it (tens of ms per function: most of a restart on a loaded
    2-core machine). Uses numba's cache index (``Cache._cache_file._load_index``, a private
    API of the pinned numba); any failure only leaves the spare less warm.
    ``import_module(name)``: how to import a listed module (default importlib's).
    Returns (overloads loaded, overloads skipped)."""
    import importlib
    import pickle

    import_module = import_module or importlib.import_module
    wanted: dict = {}
    for m in manifests:
        try:
            with open(m, "rb") as f:
                for name, attr, sig in pickle.load(f):
                    wanted.setdefault((name, attr), set()).add(sig)
        except (OSError, pickle.PickleError, EOFError, ValueError, TypeError, AttributeError):
            continue   # a manifest half-written by a dying stage: the next one will do
    n_ok = n_skip = 0
    for (name, attr), sigs in sorted(wanted.items(), key=lambda kv: kv[0]):
        try:
            disp = getattr(import_module(name), attr)
            cache = disp._cache
            index = cache._cache_file._load_index()
            codegen = disp.targetctx.codegen()
        except Exception:  # noqa: BLE001 - moved, renamed, or a private API changed
            n_skip += len(sigs)
            continue
        for sig in sigs:
            try:
                if tuple(sig) in disp.overloads:
                    continue
                if cache._index_key(sig, codegen) not in index:
                    n_skip += 1   # not compiled yet: the stage will compile it itself
                    continue
                disp.compile(sig)
                n_ok += 1
            except Exception:  # noqa: BLE001
                n_skip += 1
    return n_ok, n_skip
