"""Package layering (CONVENTIONS.md, "Layers"): the import-linter contracts in .importlinter
hold, they name every package there is, and no package's imports go round in a cycle, inside
a package or between packages. Imports inside functions count (grimp reads them all)."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CONTRACTS = ROOT / ".importlinter"


def _lint_imports(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.prefix) / "bin" / "lint-imports"
    if not exe.exists():
        pytest.fail(f"{exe} not found: import-linter is in requirements.txt (make venv)")
    return subprocess.run([str(exe), "--no-cache", "--no-logo", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _options() -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    assert cp.read(CONTRACTS), f"{CONTRACTS} is missing"
    return cp


def _lines(value: str) -> list[str]:
    return [ln.strip() for ln in value.splitlines() if ln.strip()]


def _packages_on_disk() -> set[str]:
    return {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}


def _layer_packages(cp) -> list[str]:
    return [m.strip() for layer in _lines(cp["importlinter:contract:layers"]["layers"])
            for m in layer.split("|")]


def test_lint_imports_keeps_every_contract():
    r = _lint_imports()
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    cp = _options()
    contracts = {s.split(":")[-1]: cp[s]["name"] for s in cp.sections()
                 if s.startswith("importlinter:contract:")}
    assert {"layers", "acyclic"} <= set(contracts)
    for name in contracts.values():
        assert f"{name} KEPT" in out, out
    assert "0 broken" in out, out


def test_the_contracts_name_every_package_once():
    cp = _options()
    packages = _packages_on_disk()
    assert "common" in packages and "pipeline" in packages
    assert set(_lines(cp["importlinter"]["root_packages"])) == packages
    layered = _layer_packages(cp)
    assert sorted(layered) == sorted(packages), "each package in exactly one layer"
    assert set(_lines(cp["importlinter:contract:acyclic"]["ancestors"])) == packages


def test_the_layers_run_bench_pipeline_stages_feeds_or_strategies_market_shm_common():
    cp = _options()
    layers = [sorted(m.strip() for m in layer.split("|"))
              for layer in _lines(cp["importlinter:contract:layers"]["layers"])]
    assert layers == [["bench"], ["pipeline"], ["stages"], ["feeds", "strategies"],
                      ["market"], ["shm"], ["common"]]
    assert "|" in _lines(cp["importlinter:contract:layers"]["layers"])[3], \
        "feeds and strategies are independent siblings"


def test_no_import_cycle_between_the_modules_of_any_package():
    """import-linter's acyclic_siblings contract: within each package and each subpackage, the
    children (a subpackage counted with everything inside it) import one another acyclically."""
    r = _lint_imports("--contract", "acyclic")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "KEPT" in r.stdout


def test_no_import_cycle_between_packages():
    """Each package counted with everything inside it, the packages' imports form no cycle,
    leaving out only the layers contract's ignored imports (named exceptions, each with its
    removal noted in .importlinter)."""
    import grimp

    cp = _options()
    packages = sorted(_packages_on_disk())
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph(*packages, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    ignored = {tuple(part.strip() for part in line.split("->"))
               for line in _lines(cp["importlinter:contract:layers"].get("ignore_imports", ""))}
    for importer, imported in ignored:
        assert graph.direct_import_exists(importer=importer, imported=imported), \
            f"{importer} -> {imported} is ignored but no longer exists: drop it from the contract"
        graph.remove_import(importer=importer, imported=imported)
    edges = {p: set() for p in packages}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = module.split(".")[0], imported.split(".")[0]
            if a != b:
                edges[a].add(b)
    # a package that reaches itself through others is on a cycle: name the path
    for start in packages:
        came_from = {b: start for b in edges[start]}
        todo = sorted(edges[start])
        while todo:
            p = todo.pop()
            if p == start:
                path = [start]
                while len(path) == 1 or path[-1] != start:
                    path.append(came_from[path[-1]])
                raise AssertionError("import cycle between packages: "
                                     + " -> ".join(reversed(path)))
            for q in sorted(edges[p]):
                if q not in came_from:
                    came_from[q] = p
                    todo.append(q)


def test_the_numba_cache_hashes_every_package():
    """Kernels inline other modules' constants (common/status.py's word offsets, say); the
    cache is keyed by a hash of the packages it lists, so each package must be listed."""
    from pipeline.numba_cache import PACKAGES

    assert _packages_on_disk() <= set(PACKAGES)
