"""The package's import structure, read with `ast` (nothing is imported): no file imports itself
back through others, no package of `nightjar_rl` imports itself back through others, and
`nightjar_rl.contracts` stands on nothing of the package.

Every import counts: at module level, inside functions and under `if TYPE_CHECKING`. A unit of the
package-level graph is a subpackage (`nightjar_rl/env/`, with all its files) or a top-level module
(`nightjar_rl/stack.py`); `nightjar_rl/__init__.py` is the unit `nightjar_rl`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "nightjar_rl"
CONTRACTS = "nightjar_rl.contracts"
# old import paths kept for users outside the package only: the package itself imports the new ones
KEPT_FOR_USERS = {
    "nightjar_rl.env.observation": "nightjar_rl.contracts.observation",
    "nightjar_rl.env.rewards": "nightjar_rl.contracts.rewards",
    "nightjar_rl.sim.profile": "nightjar_rl.hardware",
}

Graph = Mapping[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """The package's modules that module `name` imports anywhere in its file (`from a.b import c`
    names the module a.b.c when there is one, else a.b)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: anchored at this module's package
                anchor = name.split(".")[: None if path.name == "__init__.py" else -1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


IMPORTS: dict[str, set[str]] = {name: imported_modules(name, path) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """The unit of the package-level graph that `module` belongs to."""
    return ".".join(module.split(".")[:2])


def strongly_connected(graph: Graph) -> list[list[str]]:
    """The graph's cycles as its strongly connected components of two or more nodes (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(components: list[list[str]], edges: Mapping[tuple[str, str], list[str]]) -> str:
    lines = []
    for component in components:
        lines.append("cycle: " + ", ".join(component))
        members = set(component)
        for (a, b), why in sorted(edges.items()):
            if a in members and b in members:
                lines.append(f"  {a} -> {b}: " + "; ".join(sorted(why)))
    return "\n".join(lines)


def test_the_modules_were_read():
    assert {"nightjar_rl", "nightjar_rl.contracts.plan", "nightjar_rl.runtime.driver"} <= set(MODULES)
    assert "nightjar_rl.decoding.stats" in IMPORTS["nightjar_rl.decoding.engine"]


def test_no_file_level_import_cycles():
    edges = {(a, b): [f"{a} imports {b}"] for a, targets in IMPORTS.items() for b in targets}
    components = strongly_connected(IMPORTS)
    assert not components, describe(components, edges)


def test_no_package_level_import_cycles():
    edges: dict[tuple[str, str], list[str]] = {}
    for module, targets in IMPORTS.items():
        for target in targets:
            if unit(module) != unit(target):
                edges.setdefault((unit(module), unit(target)), []).append(f"{module} imports {target}")
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    components = strongly_connected(graph)
    assert not components, describe(components, edges)


def test_contracts_import_nothing_else_of_the_package():
    outside = {f"{module} imports {target}" for module, targets in IMPORTS.items() if unit(module) == CONTRACTS
               for target in targets if unit(target) != CONTRACTS}
    assert not outside, "\n".join(sorted(outside))


def test_old_paths_are_kept_for_users_only():
    users = {f"{module} imports {target}" for module, targets in IMPORTS.items()
             for target in targets & set(KEPT_FOR_USERS)}
    assert not users, "\n".join(sorted(users))
    for old, new in KEPT_FOR_USERS.items():
        assert IMPORTS[old] == {new}, f"{old} should only re-export {new}"
