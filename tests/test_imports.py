"""duetrl's module graph, read from the source with ``ast``: it has no cycle, and config sits below the algorithms.

Every import counts, top-level or inside a function (a function-level import only hides a cycle until the
function runs), except those under ``if TYPE_CHECKING:``, which never run. An edge goes to the module named
(``from duetrl.algos import get_algo`` -> ``duetrl.algos``; ``from duetrl import checkpoint`` ->
``duetrl.checkpoint``), not to the packages Python initialises on the way.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules in ``known`` that module ``name``'s source imports anywhere but under ``if TYPE_CHECKING:``."""
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..algos import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return out & known - {name}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in (root / "duetrl").rglob("*.py")}
    known = set(files)
    return {name: imported_modules(p.read_text(), name, p.name == "__init__.py", known) for name, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    assert "duetrl.config" in graph and "duetrl.algos.ppo" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_config_and_validators_sit_below_the_algorithms():
    """The algorithms import their validators and settings; nothing those import reaches back to an algorithm."""
    graph = import_graph()
    assert graph["duetrl.validate"] <= {"duetrl.errors"}
    for low in ("duetrl.config", "duetrl.validate", "duetrl.errors"):
        assert not {m for m in reaches(graph, low) if m.startswith("duetrl.algos")}, low


def test_function_level_imports_count_and_type_checking_ones_do_not():
    known = {"duetrl", "duetrl.algos", "duetrl.algos.base", "duetrl.config", "duetrl.checkpoint"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from duetrl.algos.base import AlgoSpec\n"
        "def resolve():\n    from duetrl.algos import get_algo\n"
        "from . import checkpoint\n"
    )
    assert imported_modules(source, "duetrl.config", False, known) == {"duetrl.algos", "duetrl.checkpoint"}
    graph = {"duetrl.config": {"duetrl.algos"}, "duetrl.algos": {"duetrl.config"}}
    assert find_cycle(graph) == ["duetrl.algos", "duetrl.config", "duetrl.algos"]
