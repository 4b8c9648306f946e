"""The package's layers import one way only, and no modules import each other in a circle.

Every import counts, also the ones inside functions (a lazy import is still a dependency).
The layers, lowest first (README, design notes):

    errors, paths  →  contract  →  formats  →  done  →  map | local  →  api  →  agents  →  cli

A module may import its own package and the layers below it; ``map`` and ``local`` sit side by
side and do not import each other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agents"

LAYERS: list[tuple[str, ...]] = [
    ("agents.errors", "agents.paths"),
    ("agents.contract",),
    ("agents.formats",),
    ("agents.done",),
    ("agents.map", "agents.local"),
    ("agents.batch", "agents.watch"),
    ("agents.api", "agents.process"),
    ("agents",),
    ("agents.cli",),
]

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The agents modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                this = module_name(path)
                package = this if path.name == "__init__.py" else this.rpartition(".")[0]
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {name for name in found if name == "agents" or name.startswith("agents.")}


def import_graph() -> Graph:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {module_name(path): imports_of(path, known) for path in paths}


def layer_of(module: str) -> tuple[int, str]:
    """(the layer's rank, the group within it) of a module."""
    best: tuple[int, str] | None = None
    for rank, groups in enumerate(LAYERS):
        for group in groups:
            matches = module == group or (group != "agents" and module.startswith(group + "."))
            if matches and (best is None or len(group) > len(best[1])):
                best = (rank, group)
    if best is None:
        raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")
    return best


def upward_imports(graph: Graph) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        rank, group = layer_of(module)
        for target in targets:
            target_rank, target_group = layer_of(target)
            if target_rank > rank or (target_rank == rank and target_group != group):
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _graph(edges: Iterable[tuple[str, str]]) -> Graph:
    graph: Graph = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    return graph


def test_every_import_points_down_the_layers() -> None:
    assert upward_imports(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_package_facade_is_only_imported_by_the_commands() -> None:
    importers = sorted(module for module, targets in import_graph().items() if "agents" in targets)
    assert all(module.startswith("agents.cli") for module in importers), importers


def test_the_checks_can_fail() -> None:
    """The checks above would see an upward import, a sideways one and a cycle."""
    graph = _graph(
        [
            ("agents.formats.csv", "agents.done.ids"),
            ("agents.map.http", "agents.local.server"),
            ("agents.map.http", "agents.map.limits"),
            ("agents.map.limits", "agents.map.http"),
        ]
    )
    assert upward_imports(graph) == [
        "agents.formats.csv imports agents.done.ids",
        "agents.map.http imports agents.local.server",
    ]
    assert cycles(graph) == [["agents.map.http", "agents.map.limits"]]


def test_lazy_imports_are_seen(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("def late():\n    from agents.map import http\n    import agents.done.ids\n")
    found = imports_of(source, {"agents.map.http", "agents.done.ids"})
    assert found == {"agents.map.http", "agents.done.ids"}
