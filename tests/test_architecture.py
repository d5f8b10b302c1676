"""The import graph keeps the pass's order (docs/architecture.md, "Code layout").

Every `import` in src/emsweep is read, lazy ones (inside functions) included; only imports under
`if TYPE_CHECKING:` are left out, since they never run. Three rules:
- a stage imports only the shared modules, its own package and the stages to its left;
- the shared modules import only each other;
- the package graph has no cycle. In it, a stage's `spec.py` (its recipe section, a schema the recipe composes)
  is a node of its own, and `recipe.py` with `passthrough.py` (which checks the recipe's pass-through sections)
  is one node: the composition layer above the stages.
Also: no module over ~450 lines without a docstring that says why it is that long.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "emsweep"
STAGES = ["data", "train", "generate", "judge", "evals", "analysis"]
SHARED = {"__init__", "config", "io", "layout", "lock", "provenance", "terminal", "registry"}
COMPOSER = {"recipe", "passthrough"}
MAX_LINES = 450


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported emsweep module, line) for every import that can run."""
    rel = path.relative_to(SRC)
    package = ["emsweep", *rel.parts[:-1]]
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)]
                    module = ".".join([*base, child.module] if child.module else base)
                else:
                    module = child.module or ""
                # `from emsweep.x import y` may import the module emsweep.x.y
                out.append((module, child.lineno))
                out.extend((f"{module}.{a.name}", child.lineno) for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return [(m, line) for m, line in out if m == "emsweep" or m.startswith("emsweep.")]


def _modules() -> dict[str, Path]:
    return {".".join(("emsweep", *p.relative_to(SRC).with_suffix("").parts)): p for p in SRC.rglob("*.py")}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module file an imported name refers to (a name imported from a module resolves to that module)."""
    while name:
        if name in MODULES:
            return name
        if f"{name}.__init__" in MODULES:
            return f"{name}.__init__"
        name = name.rpartition(".")[0]
    return None


def _top(module: str) -> str:
    """emsweep.data.mix -> data; emsweep.io -> io; emsweep.__init__ -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _node(module: str) -> str:
    parts = module.split(".")
    top = _top(module)
    if top in COMPOSER:
        return "recipe"
    if len(parts) == 3 and parts[2] == "spec":
        return f"{top}.spec"
    return top


def _edges() -> list[tuple[str, str, int, str]]:
    """(importing module, imported module, line, file) across the package, self-imports left out."""
    edges = []
    for module, path in MODULES.items():
        for name, line in _imports(path):
            target = _resolve(name)
            if target is not None and target != module:
                edges.append((module, target, line, str(path.relative_to(SRC.parent))))
    return edges


EDGES = _edges()


def test_the_graph_is_read() -> None:
    """The reader finds edges it must find (a broken reader would make every rule below pass)."""
    pairs = {(a, b) for a, b, _, _ in EDGES}
    assert ("emsweep.data.mix", "emsweep.data.spec") in pairs
    assert ("emsweep.cli.__init__", "emsweep.cli.train") in pairs
    assert ("emsweep.recipe", "emsweep.passthrough") in pairs  # a lazy import, inside load_recipe
    assert len(EDGES) > 200


def test_stages_import_only_to_their_left() -> None:
    bad = []
    for src, dst, line, file in EDGES:
        a, b = _top(src), _top(dst)
        if a not in STAGES or a == b or b in SHARED:
            continue
        if b not in STAGES or STAGES.index(b) > STAGES.index(a):
            bad.append(f"{file}:{line}: stage {a} imports {dst}")
    assert not bad, "imports against the stage order:\n" + "\n".join(sorted(bad))


def test_shared_modules_import_only_shared_modules() -> None:
    bad = [
        f"{file}:{line}: {src} imports {dst}"
        for src, dst, line, file in EDGES
        if _top(src) in SHARED and _top(dst) not in SHARED
    ]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    return out


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _, _ in EDGES:
        a, b = _node(src), _node(dst)
        if a != b and a.split(".")[0] != b.split(".")[0]:  # a spec and its own package are one package
            graph[a].add(b)
    return graph


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_package_cycle() -> None:
    graph = package_graph()
    cycles = _cycles(graph)
    detail = []
    for comp in cycles:
        members = set(comp)
        detail += [
            f"{file}:{line}: {src} -> {dst}"
            for src, dst, line, file in EDGES
            if _node(src) in members and _node(dst) in members and _node(src) != _node(dst)
        ]
    assert not cycles, f"package cycles {cycles}:\n" + "\n".join(sorted(detail))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_modules_say_why(module: str) -> None:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    n = text.count("\n")
    if n <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert "450 lines" in doc, (
        f"{path.relative_to(SRC.parent)} has {n} lines: split it along a real seam, or say in its docstring why it "
        "is one module (\"Over ~450 lines because ...\")"
    )
