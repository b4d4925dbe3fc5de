"""The import graph of src/linkdns, drawn from the code: no circles.

Imports are read from the source (every ``import`` and ``from ... import``, also those inside
functions); ``from pkg import name`` counts as an import of ``pkg.name`` when that is a
module. An import under ``if TYPE_CHECKING:`` is type-only: a circle is allowed only when it
is closed by type-only imports and stays inside one plugin package (a handler and its setup
naming each other's types). Everything else, plugins included, must form a tree-like order:
config -> plugin -> plugins, and the server above them, never the other way.
"""

from __future__ import annotations

import ast
from pathlib import Path

import linkdns

ROOT = Path(linkdns.__file__).parent


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, mods: dict[str, Path]) -> dict[str, bool]:
    """Modules of linkdns that ``name`` imports -> True when only under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                type_only.update(id(n) for n in ast.walk(inner))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, bool] = {}

    def add(target: str, node: ast.AST) -> None:
        if target in mods and target != name:
            out[target] = out.get(target, True) and id(node) in type_only

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name, node)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                sub = f"{module}.{a.name}"
                add(sub if sub in mods else module, node)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _graph(type_only: bool) -> dict[str, set[str]]:
    mods = _modules()
    edges = {n: _imports(n, p, mods) for n, p in mods.items()}
    return {n: {m for m, tc in e.items() if type_only or not tc} for n, e in edges.items()}


def _plugin_package(comp: list[str]) -> str | None:
    pkgs = {".".join(m.split(".")[:3]) for m in comp}
    if len(pkgs) == 1:
        (pkg,) = pkgs
        if pkg.startswith("linkdns.plugins."):
            return pkg
    return None


def test_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_graph_is_read_from_the_code() -> None:
    graph = _graph(type_only=True)
    assert "linkdns.plugin" in graph["linkdns.config"]
    assert "linkdns.plugin" in graph["linkdns.plugins.cache.handler"]


def test_no_import_circle_at_run_time() -> None:
    assert _cycles(_graph(type_only=False)) == []


def test_type_only_circles_stay_inside_one_plugin_package() -> None:
    outside = [c for c in _cycles(_graph(type_only=True)) if _plugin_package(c) is None]
    assert outside == []


def test_no_plugin_imports_the_server() -> None:
    graph = _graph(type_only=True)
    offenders = sorted(
        (m, dep) for m, deps in graph.items() if m.startswith("linkdns.plugins")
        for dep in deps if dep.startswith("linkdns.server"))
    assert offenders == []
