"""pipeline/compile_lock.py: two processes that need the same uncached kernel compile it once."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

KERNEL = '''
from numba import njit

@njit(cache=True)
def kernel(n):
    s = 0
    for i in range(n):
        s += i * i
    return s

@njit(cache=True)
def broken(n):
    return n + "text"
'''

DRIVER = '''
import os, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline.compile_lock as cl
cl.install()
from pipeline.compile_watch import log_compiles_from_env
log_compiles_from_env()
import kmod
what = sys.argv[1]
if what == "path":
    print(cl._lock_path(kmod.kernel._cache))
elif what == "broken":
    try:
        kmod.broken(1)
    except Exception as e:
        print("failed:", type(e).__name__)
    print("held:", len(cl._held))
    print(kmod.kernel(10))
else:
    print("calling", flush=True)
    print(kmod.kernel(10), flush=True)
'''


def _setup(tmp_path):
    (tmp_path / "kmod.py").write_text(KERNEL)
    (tmp_path / "drive.py").write_text(DRIVER.format(root=str(ROOT)))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               HFTFARM_COMPILE_LOG=str(tmp_path / "compiles.tsv"))
    env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
    return env


def _drive(tmp_path, env, what, **kw):
    return subprocess.Popen([sys.executable, str(tmp_path / "drive.py"), what], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _compiles(tmp_path):
    p = tmp_path / "compiles.tsv"
    return [line.split("\t")[3] for line in p.read_text().splitlines()] if p.exists() else []


def test_two_processes_that_miss_the_same_kernel_compile_it_once_and_both_run_it(tmp_path):
    env = _setup(tmp_path)
    path = _drive(tmp_path, env, "path").communicate(timeout=120)[0].strip()
    assert path.endswith(".nbi.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # hold the lock as a compiling process would: both drivers miss the cache and must wait
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs = []
    try:
        procs = [_drive(tmp_path, env, "run") for _ in range(2)]
        for p in procs:
            assert p.stdout.readline().strip() == "calling"
        time.sleep(1.0)   # both are now at the lock (or about to be): neither has compiled
        assert all(p.poll() is None for p in procs)
        assert _compiles(tmp_path) == []
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o[0].strip() for o in outs] == ["285", "285"], outs
    assert [name.rsplit(".", 1)[-1] for name in _compiles(tmp_path)] == ["kernel"]


def test_a_compilation_that_fails_releases_its_lock(tmp_path):
    env = _setup(tmp_path)
    out, err = _drive(tmp_path, env, "broken").communicate(timeout=120)
    assert "failed: TypingError" in out, err
    assert "held: 0" in out and out.strip().endswith("285"), out
    locks = sorted(p.name for p in (tmp_path / "cache").rglob("*.lock"))
    assert [n.split("-", 1)[0] for n in locks] == ["kmod.broken", "kmod.kernel"]   # it locked
    for lock in (tmp_path / "cache").rglob("*.lock"):   # and nothing holds them now
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
