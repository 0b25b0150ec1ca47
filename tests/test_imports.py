"""The import graph of src/ntl: no circles, and the library never imports the lab.

Every ``import`` / ``from ... import`` in every module counts, including those inside functions
(lazy imports still run, just later). An edge goes to the module named (``from ntl.a import b``
is an edge to ``ntl.a.b`` when that is a module, else to ``ntl.a``); package ``__init__``
modules executed on the way are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
#: The library: importable with torch alone, never importing the lab.
LIBRARY = ("ntl", "ntl.numbers", "ntl.parsing", "ntl.decoding", "ntl.losses", "ntl.integrations",
           "ntl._optional", "ntl._deprecation", "ntl.errors")
#: The bottom layer: imports no other ntl module, so every module may import it.
BOTTOM = ("ntl.errors",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "ntl").rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import ntl.a.b.c` of a function/class
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over src/ntl."""
    modules = _modules()
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_library(module: str) -> bool:
    return module == "ntl" or any(module == p or module.startswith(p + ".") for p in LIBRARY[1:])


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # `from ntl.losses import functional` names a submodule
    assert "ntl.losses.functional" in graph["ntl.losses.kernel"]
    assert "ntl.lab.arms" in graph["ntl.lab.train"]  # imported inside train_arm
    assert "ntl.lab.metrics" in graph["ntl.lab.report"]


def test_no_import_circles():
    cycles = _cycles(import_graph())
    assert not cycles, "import circles in src/ntl: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_library_never_imports_the_lab():
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in import_graph().items() if _is_library(module)
        for target in targets if not _is_library(target)
    )
    assert not bad, "library modules importing lab modules: " + "; ".join(bad)


def test_the_bottom_layer_imports_nothing_from_ntl():
    graph = import_graph()
    bad = sorted(f"{module} imports {target}" for module in BOTTOM for target in graph[module])
    assert not bad, "the bottom layer must not import ntl modules: " + "; ".join(bad)
