"""The layout rules of docs/DESIGN.md, checked from the AST of rsbench/ (no import is executed).

- no import cycle between modules of the package (function-level and TYPE_CHECKING imports count: they
  are dependencies too, and a cycle hidden in a function is still a cycle a reader has to untangle);
- nothing outside rsbench/cli/ imports rsbench.cli;
- rsbench.datasets and rsbench.methods never import each other;
- every layer imports only the layers below it (LAYERS);
- no function or method longer than 80 lines;
- at most 8 modules at the package root.

Each checker is also run on a small package written to tmp_path that breaks its rule, so a checker that
silently stopped finding anything would fail here.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsbench"
MAX_FUNCTION_LINES = 80
MAX_ROOT_MODULES = 8
# layer -> the layers it may import (besides itself and the package's own __init__, i.e. __version__).
# "root" = the modules directly in rsbench/ (errors, io, locks, contracts, text).
LAYERS: dict[str, set[str]] = {
    "root": set(),
    "evaluation": {"root"},
    "datasets": {"root"},
    "methods": {"root"},
    "config": {"root", "methods", "evaluation"},
    "results": {"root", "evaluation", "datasets"},
    "engine": {"root", "config", "datasets", "methods", "evaluation", "results"},
    "benchmarks": {"root", "config", "datasets", "methods", "evaluation", "results", "engine"},
    "cli": {"root", "config", "datasets", "methods", "evaluation", "results", "engine", "benchmarks"},
}


# ---- reading the package --------------------------------------------------------------------------

def modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package __init__) for every .py file under `package`."""
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = [package.name, *f.relative_to(package).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _resolve(name: str, mods: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of `name` that is a module of the package."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, pkg: str, root: str, mods: dict[str, tuple[Path, bool]]) -> list[str]:
    """Modules of the package that one import statement names."""
    if isinstance(node, ast.Import):
        return [t for a in node.names if a.name.split(".")[0] == root and (t := _resolve(a.name, mods))]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    if src.split(".")[0] != root:
        return []
    found = []
    for a in node.names:
        t = _resolve(f"{src}.{a.name}", mods) if f"{src}.{a.name}" in mods else _resolve(src, mods)
        if t:
            found.append(t)
    return found


def import_graph(package: Path) -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}. Importing a.b.c also runs a/__init__ and a/b/__init__,
    so those packages count as imported too (except the importer's own ancestors)."""
    mods = modules(package)
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m, (f, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            for t in _targets(node, pkg, package.name, mods):
                chain = [t] + [".".join(t.split(".")[:i]) for i in range(2, t.count(".") + 1)]
                for target in chain:
                    if target != m and not m.startswith(target + "."):
                        graph[m][target] = min(node.lineno, graph[m].get(target, node.lineno))
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = itertools.count()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer(module: str, packages: set[str]) -> str:
    """'rsbench.engine.cell' and 'rsbench.engine' -> 'engine'; a module directly in the package
    (rsbench.io) -> 'root'; the package itself -> ''."""
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return "root" if len(parts) == 2 and module not in packages else parts[1]


def layer_violations(graph: dict[str, dict[str, int]], package: Path, layers: dict[str, set[str]]) -> list[str]:
    packages = {m for m, (_, is_pkg) in modules(package).items() if is_pkg}
    out = []
    for m, targets in sorted(graph.items()):
        src = layer(m, packages)
        if m == package.name or src not in layers:
            continue
        for t, line in sorted(targets.items()):
            dst = layer(t, packages)
            if t != package.name and dst != src and dst not in layers[src]:
                out.append(f"{m}:{line} imports {t} ({src} may import only {sorted(layers[src]) or 'nothing'})")
    return out


def long_functions(package: Path, limit: int) -> list[str]:
    """'file:line name (N lines)' for every def (module level, method or nested) longer than `limit`."""
    out = []
    for f in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > limit:
                    out.append(f"{f.relative_to(package.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def root_modules(package: Path) -> list[str]:
    return sorted(p.name for p in package.glob("*.py") if p.name != "__init__.py")


def importers_of(graph: dict[str, dict[str, int]], target: str) -> list[str]:
    """Modules outside `target` that import it or one of its submodules."""
    return sorted(f"{m}:{line} imports {t}" for m, ts in graph.items() if not (m == target or m.startswith(target + "."))
                  for t, line in ts.items() if t == target or t.startswith(target + "."))


# ---- the rules on rsbench ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    assert (PACKAGE / "__init__.py").is_file(), f"{PACKAGE}: package not found (this file lives in tests/)"
    return import_graph(PACKAGE)


def test_package_is_found() -> None:
    """Every rule below would pass on an empty tree: make sure it is the real one."""
    assert len(modules(PACKAGE)) > 20


def test_no_import_cycle(graph: dict[str, dict[str, int]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles (each group imports itself through the others):\n" + "\n".join(
        ", ".join(c) for c in found)


def test_nothing_imports_the_cli(graph: dict[str, dict[str, int]]) -> None:
    bad = importers_of(graph, "rsbench.cli")
    assert not bad, "the CLI is the top layer; move what these need out of rsbench.cli:\n" + "\n".join(bad)


def test_datasets_and_methods_do_not_import_each_other(graph: dict[str, dict[str, int]]) -> None:
    bad = [line for line in importers_of(graph, "rsbench.methods") if line.startswith("rsbench.datasets")]
    bad += [line for line in importers_of(graph, "rsbench.datasets") if line.startswith("rsbench.methods")]
    assert not bad, "shared contracts belong in rsbench.contracts:\n" + "\n".join(bad)


def test_layers_import_only_layers_below(graph: dict[str, dict[str, int]]) -> None:
    bad = layer_violations(graph, PACKAGE, LAYERS)
    assert not bad, "\n".join(bad)


def test_every_subpackage_is_a_known_layer() -> None:
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert found <= set(LAYERS), f"new subpackage(s) {sorted(found - set(LAYERS))}: add them to LAYERS"


def test_no_function_longer_than_80_lines() -> None:
    bad = long_functions(PACKAGE, MAX_FUNCTION_LINES)
    assert not bad, "split these into named steps:\n" + "\n".join(bad)


def test_at_most_8_modules_at_the_package_root() -> None:
    found = root_modules(PACKAGE)
    assert len(found) <= MAX_ROOT_MODULES, f"{len(found)} modules at the root: {found}"


# ---- the checkers find what they should ----------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_checkers_find_planted_violations(tmp_path: Path) -> None:
    body = "\n".join(f"    x = {i}" for i in range(MAX_FUNCTION_LINES))
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from .cli import app\n",  # function-level import of the CLI
        "pkg/cli/__init__.py": "from ..datasets import x\n",
        "pkg/datasets/__init__.py": "from ..methods.m import y\nx = 1\n",
        "pkg/methods/__init__.py": "",
        "pkg/methods/m.py": "import pkg.datasets\ny = 2\n",  # cycle datasets <-> methods.m
        "pkg/long.py": f"def g():\n{body}\n",
    })
    g = import_graph(pkg)
    assert cycles(g) == [["pkg.datasets", "pkg.methods.m"]]
    assert importers_of(g, "pkg.cli") == ["pkg.a:2 imports pkg.cli"]
    assert "pkg.datasets:1 imports pkg.methods.m" in importers_of(g, "pkg.methods")
    assert "pkg.methods.m:1 imports pkg.datasets" in importers_of(g, "pkg.datasets")
    assert long_functions(pkg, MAX_FUNCTION_LINES) == ["pkg/long.py:1 g (81 lines)"]
    assert root_modules(pkg) == ["a.py", "long.py"]
    bad = layer_violations(g, pkg, {"root": set(), "datasets": {"root"}, "methods": {"root"}, "cli": {"root"}})
    assert any(v.startswith("pkg.cli:1 imports pkg.datasets") for v in bad)
    assert any(v.startswith("pkg.a:2 imports pkg.cli") for v in bad)


def test_clean_package_passes(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/errors.py": "",
        "pkg/datasets/__init__.py": "from ..errors import *\n",
        "pkg/cli/__init__.py": "def main():\n    from ..datasets import x\n",
    })
    g = import_graph(pkg)
    assert cycles(g) == [] and importers_of(g, "pkg.cli") == []
    assert layer_violations(g, pkg, {"root": set(), "datasets": {"root"}, "cli": {"root", "datasets"}}) == []
