"""The import graph of the project: no circles, and imports run one way (cli -> ... -> agent).

Every ``import`` counts, module-level or inside a function: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dlas_host": ROOT / "host" / "dlas_host", "dlas_agent": ROOT / "agent" / "dlas_agent"}

# (module prefix, prefixes it must never import): the layering of style.md, lowest layers first
FORBIDDEN = [
    ("dlas_agent", ("dlas_host",)),
    ("dlas_host.lower", ("dlas_host.compile", "dlas_host.bench", "dlas_host.sweep", "dlas_host.cli",
                         "dlas_host.tune", "dlas_host.fleet", "dlas_host.transport", "dlas_host.report")),
    ("dlas_host.store", ("dlas_host.compile", "dlas_host.bench", "dlas_host.sweep", "dlas_host.cli",
                         "dlas_host.lower", "dlas_host.report")),
    ("dlas_host.dimensions", ("dlas_host.cli", "dlas_host.sweep", "dlas_host.store", "dlas_host.bench")),
    ("dlas_host.data", ("dlas_host.compile", "dlas_host.bench", "dlas_host.sweep", "dlas_host.cli",
                        "dlas_host.lower", "dlas_host.optimize")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for pkg, path in PACKAGES.items():
        for file in path.rglob("*.py"):
            parts = [pkg, *file.relative_to(path).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = file
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, file in mods.items():
        package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(file.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) if node.level \
                    else node.module or ""
                base = base.rstrip(".")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def test_imports_run_one_way() -> None:
    graph = import_graph()
    bad = [f"{m} imports {d}" for m, deps in graph.items() for prefix, banned in FORBIDDEN
           if m == prefix or m.startswith(prefix + ".") for d in deps if d.startswith(banned)]
    assert bad == []


def test_the_checker_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
