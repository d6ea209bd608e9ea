"""Point numba's on-disk cache at a per-user directory keyed by the sources compiled into kernels.

Runs once at start-up of every entry point (run.py, the test suite; stage processes and the
controller daemon inherit the environment); cold path, must run before numba is imported.

Why a key: numba invalidates a cached function only when *its own* file changes. A kernel that
inlines another module's function or constant (the CTL_* word offsets of a strategy state, the
engine's state layout) keeps the old code after that other module changes, and silently reads
the wrong slots. Keying the whole cache by every source that can be compiled into a kernel
makes any such change recompile everything once; an operator who upgrades can never run
yesterday's risk checks.

Which sources (``kernel_sources``): every module that imports numba or llvmlite at module level
(or applies a jit decorator there), and every module of this checkout that those import at
module level, transitively. A compiled function sees only its own module's globals, and those
come from that module's module-level imports, so nothing else can be inlined. The set is found
by reading the imports (ast), not listed: a new module is covered as soon as a kernel module
imports it. Tests and benchmarks are not walked from (numba's own per-file stamp covers their
kernels), and kernel modules do not import the CLI, the controller, docs or configs: editing
those keeps every compiled function.

Where: ``$XDG_CACHE_HOME/hftfarm/numba/<key>`` (``~/.cache/hftfarm/numba/<key>`` by default;
the checkout's ``.numba_cache/<key>`` if neither is writable), not anywhere that names the
checkout: numba's own locator files a function under a hash of its directory's absolute path,
so a second clone would recompile everything. pipeline/numba_locator.py's locator, registered
here through NUMBA_CACHE_LOCATOR_CLASSES (which the stage processes inherit), files it under
``<key>/tree/<its directory relative to the checkout>`` and stamps it with its file's content
hash, never an mtime: a clone of the same sources, at any path, loads the first one's code.

NUMBA_CACHE_DIR set by the user overrides all of this (numba's own locators then). Key
directories beyond the ``KEEP`` most recently used are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from common.runtime import GENERATED_PREFIX  # the generated host steps' module prefix

ROOT = Path(__file__).resolve().parent.parent
KEEP = 3
# A key directory is removed only when it is beyond the KEEP most recently used AND unused for
# this long: several checkouts (or a running instance and a newer one) use theirs at the same
# time, and a directory removed under a process that is compiling into it fails that process.
PRUNE_UNUSED_S = 2 * 86400
# the packages whose compiled functions write_manifest lists for the warm spare
PACKAGES = ("shm", "market", "strategies", "feeds", "stages", "pipeline", "common", "bench",
            "tests")

# not walked from: their own kernels are stamped by numba per file, and nothing compiled into
# the product's kernels lives there
NOT_WALKED = frozenset({"tests", "bench"})
JIT_PACKAGES = frozenset({"numba", "llvmlite"})
JIT_DECORATORS = frozenset({"njit", "jit", "vectorize", "guvectorize", "cfunc", "stencil",
                            "jitclass", "generated_jit", "register_jitable", "intrinsic",
                            "overload", "overload_method", "overload_attribute"})
_MARKERS = re.compile(rb"numba|llvmlite|jit|vectorize|cfunc|stencil|intrinsic|overload")
# numba's default locators after ours (numba/core/caching.py, CacheImpl._locator_classes)
LOCATORS = ("pipeline.numba_locator.CheckoutCacheLocator,UserProvidedCacheLocator,"
            "InTreeCacheLocator,UserWideCacheLocator,IPythonCacheLocator,ZipCacheLocator")
KEY_RULE = b"kernel sources v1"   # part of the key: a change of the rule starts a new cache
_KEY_NAME = re.compile(r"[0-9a-f]{16}")
MEMO_NAME = "imports.json"   # beside the key directories: kernel_key's memo


def _python_files(root: Path) -> dict[str, Path]:
    """Module name -> file of every Python module of the checkout at ``root``: top-level .py
    files and packages (a directory with an ``__init__.py`` or .py files of its own); hidden
    directories, __pycache__ and virtual environments skipped."""
    files: dict[str, Path] = {}
    for top in sorted(root.iterdir()):
        if top.name.startswith((".", "__pycache__")):
            continue
        if top.suffix == ".py" and top.is_file():
            files[top.stem] = top
            continue
        if not top.is_dir() or (top / "pyvenv.cfg").exists() \
                or not any(p.suffix == ".py" for p in top.iterdir()):
            continue   # runs/, deploy/ ...: no Python package; a virtual environment
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__"))
                                 and d != "site-packages")
            rel = Path(dirpath).relative_to(root).parts
            for f in filenames:
                if f.endswith(".py"):
                    parts = rel if f == "__init__.py" else (*rel, f[:-3])
                    files[".".join(parts)] = Path(dirpath, f)
    return files


def _module_level(body):
    """The statements that run when a module is imported (not those inside functions), and the
    decorators of its functions."""
    import ast

    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from node.decorator_list
            continue
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "decorator_list"):
            sub = getattr(node, name, None)
            if isinstance(sub, list):
                yield from _module_level(sub)


def _jit_name(node) -> bool:
    """Is ``node`` (a decorator or a called function) numba's njit, jit, vectorize ...?"""
    import ast

    if isinstance(node, ast.Call):
        node = node.func
    return ((isinstance(node, ast.Name) and node.id in JIT_DECORATORS)
            or (isinstance(node, ast.Attribute) and node.attr in JIT_DECORATORS))


def _read_imports(text: bytes, module: str, is_package: bool) -> tuple[bool, list[str]]:
    """(whether the module defines compiled code, the module names its module level imports:
    ``import a.b`` -> a, a.b; ``from a import b`` -> a, a.b; relative imports resolved)."""
    import ast   # here: a warm configure() finds every answer in the memo

    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return True, []   # cannot tell: count it as kernel source (its import fails anyway)
    package = module if is_package else module.rpartition(".")[0]
    jit, names = False, set()
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                base = parts[:len(parts) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            found = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:   # a decorator, or a statement that may call njit(...)(f)
            value = node if not isinstance(node, (ast.Assign, ast.Expr)) else node.value
            jit = jit or _jit_name(value) or (isinstance(value, ast.Call)
                                              and _jit_name(value.func))
            continue
        for name in found:
            parts = name.split(".")
            jit = jit or parts[0] in JIT_PACKAGES
            names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return jit, sorted(names)


def kernel_sources(root: Path = ROOT, memo: dict | None = None) -> list[Path]:
    """The files whose code can end up inside a compiled function (see the module docstring),
    sorted. ``memo``: what earlier calls read from files of the same name and content (parsing
    is most of the cost); updated in place to hold exactly the entries of this call."""
    files = _python_files(root)
    texts = {m: p.read_bytes() for m, p in files.items()}
    old, used = dict(memo or {}), {}

    def read(m: str) -> tuple[bool, list[str]]:
        is_package = files[m].name == "__init__.py"
        key = f"{m}{'/' if is_package else ''}:{hashlib.sha1(texts[m]).hexdigest()}"
        if key not in used:
            hit = old.get(key)
            used[key] = hit if hit is not None else _read_imports(texts[m], m, is_package)
        return used[key]

    todo = [m for m in files if m.split(".")[0] not in NOT_WALKED and _MARKERS.search(texts[m])
            and read(m)[0]]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(n for n in read(m)[1] if n in files and n not in seen)
    if memo is not None:
        memo.clear()
        memo.update(used)
    return sorted(files[m] for m in seen)


def kernel_key(root: Path = ROOT, memo_path: Path | None = None) -> str:
    """Hash of the kernel sources' paths (relative to ``root``) and contents: the same for any
    clone of the same sources, whatever its path and mtimes. ``memo_path``: a JSON file that
    keeps what was read from each file between calls (missing or unreadable: parse again)."""
    memo: dict = {}
    if memo_path is not None:
        try:
            memo = {k: (bool(v[0]), list(v[1])) for k, v in
                    json.loads(memo_path.read_text()).items()}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            memo = {}
    before = dict(memo)
    h = hashlib.sha256(KEY_RULE)
    for path in kernel_sources(root, memo):
        data = path.read_bytes()
        h.update(f"\0{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    if memo_path is not None and memo != before:
        try:
            memo_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = memo_path.with_name(f"{memo_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, sort_keys=True))
            os.replace(tmp, memo_path)
        except OSError:
            pass
    return h.hexdigest()[:16]


def cache_root() -> Path:
    """The per-user root of the key directories: $XDG_CACHE_HOME/hftfarm/numba, else
    ~/.cache/hftfarm/numba."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "hftfarm" / "numba"


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def configure(root: Path = ROOT) -> str | None:
    """Set NUMBA_CACHE_DIR (and our locator) for this process and its children; returns the
    directory, or None when nothing is writable (numba then uses its own locations)."""
    if os.environ.get("HFTFARM_COMPILE_LOG"):   # diagnostic (pipeline/compile_watch.py)
        from pipeline.compile_watch import log_compiles_from_env

        log_compiles_from_env()
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    bases = []
    try:
        bases.append(cache_root())
    except (RuntimeError, KeyError, OSError):   # no home directory at all
        pass
    bases.append(root / ".numba_cache")
    key = kernel_key(root, bases[0] / MEMO_NAME)
    for base in bases:
        target = base / key
        if _writable_dir(target):
            break
    else:
        return None
    os.environ["NUMBA_CACHE_DIR"] = str(target)
    os.environ["NUMBA_CACHE_LOCATOR_CLASSES"] = LOCATORS
    config = sys.modules.get("numba.core.config")
    if config is not None:   # numba came first: tell it too (it reads the environment once)
        config.CACHE_DIR = str(target)
        config.CACHE_LOCATOR_CLASSES = LOCATORS
    _prune(base, target)
    return str(target)


def _prune(base: Path, target: Path) -> None:
    """Mark ``target`` used now; remove key directories beyond the ``KEEP`` used last that
    nothing used for ``PRUNE_UNUSED_S``."""
    import shutil
    import time

    try:
        os.utime(target)
        olds = sorted(((d.stat().st_mtime, d) for d in base.iterdir()
                       if d.is_dir() and d != target and _KEY_NAME.fullmatch(d.name)),
                      reverse=True)
        cutoff = time.time() - PRUNE_UNUSED_S
        for used, d in olds[KEEP - 1:]:
            if used < cutoff:
                shutil.rmtree(d, ignore_errors=True)
    except OSError:
        pass


def _dispatchers(prefixes):
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
