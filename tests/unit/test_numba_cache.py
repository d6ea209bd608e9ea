"""numba's cache: keyed by the sources compiled into kernels only, shared by clones at any path
(pipeline/numba_cache.py, pipeline/numba_locator.py), and a start that says it is compiling
(pipeline/compile_watch.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from pipeline import numba_cache
from pipeline.numba_cache import KEEP, kernel_key, kernel_sources

ROOT = Path(__file__).resolve().parent.parent.parent


def _copy_tree(dst: Path) -> Path:
    """The checkout's sources (no .git, .venv, caches or run directories) copied to ``dst``."""
    shutil.copytree(ROOT, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "*.pyc", "runs", "out"))
    return dst


def _append(path: Path, text: str = "\n# touched by a test\n") -> None:
    with open(path, "a") as f:
        f.write(text)


@pytest.fixture
def tree(tmp_path) -> Path:
    return _copy_tree(tmp_path / "a")


@pytest.fixture
def key(tmp_path):
    """kernel_key with a memo (parsing every module for every call is slow on 2 busy cores;
    test_the_import_memo_gives_the_key_parsing_gives checks the memo changes nothing)."""
    memo = tmp_path / "memo.json"
    return lambda root: kernel_key(root, memo)


# -- the key: which sources --------------------------------------------------------------------
def test_key_stays_when_tests_docs_cli_controller_bench_or_config_change(tree, key):
    before = key(tree)
    for rel in ("tests/unit/test_sim.py", "tests/conftest.py", "README.md", "config.toml",
                "run.py", "pipeline/cli.py", "pipeline/commands/run.py", "pipeline/controller.py",
                "pipeline/supervisor.py", "bench/_ipc_kernels.py", "Makefile"):
        _append(tree / rel)
        assert key(tree) == before, f"{rel} changed the kernels' cache key"
    venv = tree / "venv"   # a virtual environment inside the checkout is not its source
    (venv / "lib" / "site-packages" / "jitted").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "site-packages" / "jitted" / "k.py").write_text("import numba\n")
    (venv / "tool.py").write_text("import numba\n")
    assert key(tree) == before


@pytest.mark.parametrize("rel", [
    "stages/gate_kernels.py",   # defines kernels
    "shm/records.py",           # constants that kernels inline
    "market/risk_state.py",     # re-exported through market/risk.py
    "common/schema.py",         # imported by strategies/base.py
    "common/runtime.py",        # the runtime's defaults, imported by strategies/host.py
    "strategies/registry.py",   # picks the kernel a generated host step is compiled with
    "stages/host_codegen.py",   # the generated host steps' template
    "strategies/market_making.py",
])
def test_key_changes_with_a_kernel_source_or_anything_it_imports(tree, key, rel):
    before = key(tree)
    original = (tree / rel).read_bytes()
    _append(tree / rel)
    assert key(tree) != before
    (tree / rel).write_bytes(original)
    assert key(tree) == before


def test_key_follows_imports_into_new_modules_and_packages(tree, key):
    """Rule-based, not a list: a new leaf package counts once a kernel module imports it, by an
    absolute or a relative import, and so does a module that only applies a re-exported njit."""
    (tree / "leaf").mkdir()
    (tree / "leaf" / "__init__.py").write_text("")
    (tree / "leaf" / "layout.py").write_text("W_STATE = 0\n")
    k0 = key(tree)
    assert tree / "leaf" / "layout.py" not in kernel_sources(tree)   # nobody imports it yet
    _append(tree / "shm" / "ringops.py", "\nfrom leaf.layout import W_STATE  # noqa\n")
    k1 = key(tree)
    assert k1 != k0
    _append(tree / "leaf" / "layout.py", "W_PID = 1\n")
    assert key(tree) != k1

    (tree / "market" / "helpers.py").write_text("SCALE = 10\n")
    (tree / "market" / "newkern.py").write_text(
        "from numba import njit\n\nfrom .helpers import SCALE\n\n\n@njit(cache=True)\n"
        "def scaled(x):\n    return x * SCALE\n")
    assert tree / "market" / "helpers.py" in kernel_sources(tree)

    (tree / "stages" / "reexported.py").write_text(
        "from market.book import njit\nfrom pipeline.idle import make_idle  # noqa\n\n\n"
        "@njit(cache=True)\ndef one():\n    return 1\n")
    assert tree / "pipeline" / "idle.py" in kernel_sources(tree)


def test_key_is_the_same_for_copies_at_other_paths_with_other_mtimes(tmp_path, tree, key):
    other = _copy_tree(tmp_path / "elsewhere" / "b")
    for dirpath, _, files in os.walk(other):
        for f in files:
            os.utime(os.path.join(dirpath, f), (1_000_000_000, 1_000_000_000))
    assert key(other) == key(tree)
    assert [p.relative_to(other) for p in kernel_sources(other)] == \
        [p.relative_to(tree) for p in kernel_sources(tree)]


def test_the_import_memo_gives_the_key_parsing_gives(tmp_path, tree):
    memo = tmp_path / "memo" / "imports.json"
    k = kernel_key(tree)
    assert kernel_key(tree, memo) == k and memo.exists()     # parsed, memo written
    assert kernel_key(tree, memo) == k                        # from the memo
    _append(tree / "shm" / "records.py")
    assert kernel_key(tree, memo) == kernel_key(tree) != k    # a changed file is parsed again
    memo.write_text("{not json")
    assert kernel_key(tree, memo) == kernel_key(tree)


# -- configure: where --------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No NUMBA_CACHE_DIR of ours or the user's, a private XDG_CACHE_HOME; numba's config (read
    once, at its import) restored afterwards."""
    import numba.core.config as ncfg

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_LOCATOR_CLASSES", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(ncfg, "CACHE_DIR", ncfg.CACHE_DIR)
    monkeypatch.setattr(ncfg, "CACHE_LOCATOR_CLASSES", ncfg.CACHE_LOCATOR_CLASSES)
    return tmp_path / "xdg" / "hftfarm" / "numba"


def test_configure_puts_the_cache_under_the_users_cache_root_by_key(clean_env, tree):
    d = numba_cache.configure(tree)
    assert d == str(clean_env / kernel_key(tree))
    assert os.environ["NUMBA_CACHE_DIR"] == d and Path(d).is_dir()
    assert os.environ["NUMBA_CACHE_LOCATOR_CLASSES"].startswith(
        "pipeline.numba_locator.CheckoutCacheLocator,")
    assert (clean_env / numba_cache.MEMO_NAME).exists()
    assert numba_cache.configure(tree) == d   # inherited: left as it is


def test_a_users_numba_cache_dir_overrides_everything(clean_env, monkeypatch, tmp_path, tree):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "mine"))
    assert numba_cache.configure(tree) == str(tmp_path / "mine")
    assert "NUMBA_CACHE_LOCATOR_CLASSES" not in os.environ
    assert not clean_env.exists()


def test_an_unwritable_cache_root_falls_back_to_the_checkout(clean_env, monkeypatch, tmp_path,
                                                             tree):
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))
    assert numba_cache.configure(tree) == str(tree / ".numba_cache" / kernel_key(tree))


def test_old_keys_beyond_the_most_recently_used_are_pruned(clean_env, tree):
    olds = []
    for i in range(KEEP + 2):
        d = clean_env / f"{i:016x}"
        d.mkdir(parents=True)
        os.utime(d, (1_000_000 + i, 1_000_000 + i))
        olds.append(d)
    (clean_env / "not-a-key").mkdir()
    d = numba_cache.configure(tree)
    left = sorted(p.name for p in clean_env.iterdir() if p.is_dir())
    assert left == sorted([Path(d).name, "not-a-key", *(o.name for o in olds[-(KEEP - 1):])])


def test_keys_in_use_lately_are_kept_however_many(clean_env, tree):
    """Other checkouts compiling now (or a running instance on older code) keep their keys:
    only keys unused for PRUNE_UNUSED_S go, and never one of the KEEP used last."""
    now = time.time()
    recent = []
    for i in range(KEEP + 3):   # all used within the last hour
        d = clean_env / f"{i + 1:016x}"
        d.mkdir(parents=True)
        os.utime(d, (now - 3600 + i, now - 3600 + i))
        recent.append(d.name)
    stale = clean_env / f"{0xfff:016x}"
    stale.mkdir()
    t = now - numba_cache.PRUNE_UNUSED_S - 60
    os.utime(stale, (t, t))
    d = numba_cache.configure(tree)
    left = sorted(p.name for p in clean_env.iterdir() if p.is_dir())
    assert left == sorted([Path(d).name, *recent])


# -- the locator: a clone at another path loads the first one's compiled code ----------------
_KERNEL = "from numba import njit\n\nfrom kern.consts import OFFSET\n\n\n" \
          "@njit(cache=True)\ndef f(x):\n    return x + OFFSET\n"
_TINY = "from numba import njit\n\n\n@njit(cache=True)\ndef g(x):\n    return x * 2\n"
_CHILD = """
import json
from pipeline import numba_cache
d = numba_cache.configure()
import kern.mod, tests.tiny
out = {"dir": d, "r": [kern.mod.f(1), tests.tiny.g(3)]}
for name, fn in (("f", kern.mod.f), ("g", tests.tiny.g)):
    st = fn.stats
    out[name] = [sum(st.cache_hits.values()), sum(st.cache_misses.values()), st.cache_path]
print(json.dumps(out))
"""


def _mini_project(where: Path) -> Path:
    """A checkout in miniature: hftfarm's cache set-up, a kernel module importing a constant,
    and a kernel under tests/ (outside the key, so only the locator's stamp guards it)."""
    (where / "pipeline").mkdir(parents=True)
    for f in ("__init__.py", "numba_cache.py", "numba_locator.py", "compile_lock.py"):
        shutil.copy(ROOT / "pipeline" / f, where / "pipeline" / f)
    shutil.copytree(ROOT / "common", where / "common",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (where / "kern").mkdir()
    (where / "kern" / "__init__.py").write_text("")
    (where / "kern" / "consts.py").write_text("OFFSET = 1\n")
    (where / "kern" / "mod.py").write_text(_KERNEL)
    (where / "tests").mkdir()
    (where / "tests" / "__init__.py").write_text("")
    (where / "tests" / "tiny.py").write_text(_TINY)
    return where


def _run_child(cwd: Path, tmp_path: Path, **extra_env) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "NUMBA_CACHE_LOCATOR_CLASSES", "PYTHONPATH",
                        "HFTFARM_COMPILE_LOG")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"), **extra_env)
    r = subprocess.run([sys.executable, "-c", _CHILD], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_clone_elsewhere_with_other_mtimes_loads_the_first_ones_compiled_code(tmp_path):
    a = _mini_project(tmp_path / "clone-a")
    first = _run_child(a, tmp_path)
    assert first["r"] == [2, 6]
    assert first["f"][:2] == [0, 1] and first["g"][:2] == [0, 1]   # compiled, and saved
    assert first["dir"].startswith(str(tmp_path / "xdg" / "hftfarm" / "numba"))
    assert first["f"][2] == os.path.join(first["dir"], "tree", "kern")
    assert first["g"][2] == os.path.join(first["dir"], "tree", "tests")

    b = tmp_path / "somewhere" / "else" / "clone-b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, _, files in os.walk(b):
        for f in files:
            os.utime(os.path.join(dirpath, f), (1_500_000_000, 1_500_000_000))
    second = _run_child(b, tmp_path)
    assert second["dir"] == first["dir"]
    assert second["f"][:2] == [1, 0] and second["g"][:2] == [1, 0]   # loaded, not compiled

    # what the locator saves: numba's own one (a user's NUMBA_CACHE_DIR) files by path
    by_path = _run_child(b, tmp_path, NUMBA_CACHE_DIR=first["dir"])
    assert by_path["f"][:2] == [0, 1]

    # content, not mtime: a changed kernel outside the key is recompiled in the same key
    (b / "tests" / "tiny.py").write_text(_TINY.replace("x * 2", "x * 3"))
    third = _run_child(b, tmp_path)
    assert third["dir"] == first["dir"] and third["r"] == [2, 9]
    assert third["g"][:2] == [0, 1] and third["f"][:2] == [1, 0]

    # a changed constant a kernel inlines: a new key, so nothing stale is loaded
    (b / "kern" / "consts.py").write_text("OFFSET = 5\n")
    fourth = _run_child(b, tmp_path)
    assert fourth["dir"] != first["dir"] and fourth["r"] == [6, 9]
    assert fourth["f"][:2] == [0, 1]


# -- saying that a stage compiles --------------------------------------------------------------
def test_compile_watch_counts_compilations_and_not_reuse():
    from numba import njit

    from pipeline.compile_watch import CompileWatch

    calls = []
    watch = CompileWatch().install()
    try:
        watch.call_on_compile(lambda: calls.append(1))

        @njit(cache=False)
        def add_one(x):
            return x + 1

        assert add_one(1) == 2
        n = watch.functions
        assert n >= 1 and len(calls) == n and watch.seconds > 0
        assert add_one(2) == 3 and watch.functions == n   # compiled once
        assert watch.summary().startswith(f"compiled {n} functions in ")
    finally:
        watch.uninstall()
    assert CompileWatch().summary() == "kernels from the cache"


def test_compile_log_names_each_outermost_compilation_once_and_sums_them(tmp_path):
    from numba import njit
    from numba.core import event

    from pipeline.compile_watch import CompileLog, _summary

    path = tmp_path / "compiles.tsv"
    log = CompileLog(str(path))
    event.register("numba:compile", log)
    try:
        @njit(cache=False)
        def inner_twice(x):
            return 2 * x

        @njit(cache=False)
        def outer_plus_one(x):
            return inner_twice(x) + 1

        assert outer_plus_one(3) == 7 and outer_plus_one(4) == 9   # compiled once
    finally:
        event.unregister("numba:compile", log)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(rows) == 1   # inner_twice compiled inside outer_plus_one: one outermost line
    pid, seconds, nested, name = rows[0]
    assert int(pid) == os.getpid() and float(seconds) > 0 and int(nested) >= 1
    assert name.endswith("outer_plus_one")
    summary = _summary(str(path))
    assert "1 processes, 1 functions" in summary
    assert "x1" in summary and "outer_plus_one" in summary


@pytest.mark.parametrize("when", ["imports", "on_start"])
def test_a_stage_that_compiles_while_starting_shows_compiling_then_running(shm_prefix, when):
    from numba import njit

    from pipeline.compile_watch import CompileWatch
    from pipeline.runner import StageRunner
    from common.status import ST_COMPILING, ST_STOPPED, W_STATE
    from shm.status import StatusTable
    from stages.base import Stage

    def compile_something():
        @njit(cache=False)
        def fresh(x):
            return x * 7

        assert fresh(6) == 42

    table = StatusTable.create(shm_prefix, 1)
    seen = []

    class Compiles(Stage):
        def on_start(self, ctx):
            if when == "on_start":
                compile_something()
            seen.append(table.read_word(0, W_STATE))
            runner.stop_requested = True

        def poll(self):
            return 0

    try:
        ctx = types.SimpleNamespace(name="compiles", cpu=None, run_dir=None)
        runner = StageRunner(Compiles(), ctx, table.block(0), None,
                             types.SimpleNamespace(idle=lambda n: None))
        runner.compile_watch = CompileWatch().install()
        if when == "imports":   # before the runner's first heartbeat
            compile_something()
        assert runner.run() == 0
        assert seen == [ST_COMPILING]
        assert table.read_word(0, W_STATE) == ST_STOPPED
        assert not runner.compile_watch._installed   # removed once RUNNING
    finally:
        runner.compile_watch.uninstall()
        table.segment.unlink()
        table.close()
