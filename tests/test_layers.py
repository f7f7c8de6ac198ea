"""Imports run one way: a module of `forensics/` imports only its own layer or lower ones (DESIGN.md).

The layer order, bottom to top, is the one drawn in DESIGN.md ("Import layers"). The test reads every
module's imports with `ast` (module-level and function-level alike) and fails naming each import that
reaches up; there is no list of exceptions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "forensics"

# Longest prefix wins; each entry is a dotted module path inside the package.
LAYERS: dict[str, int] = {
    "forensics.errors": 0,
    "forensics.durable": 0,
    "forensics.vocab": 0,
    "forensics.version": 0,
    "forensics.bundle": 1,
    "forensics.models": 1,
    "forensics.config": 1,
    "forensics.hooks": 1,
    "forensics.failure": 1,
    "forensics.record": 2,
    "forensics.replay": 2,
    "forensics.population": 2,
    "forensics.exec": 3,
    "forensics.cf": 3,
    "forensics.cca": 3,
    "forensics.edit": 4,
    "forensics.rca": 4,
    "forensics.faults": 4,
    "forensics.report": 5,
    "forensics.ops": 6,
    "forensics.service": 7,
    "forensics.batch": 7,
    "forensics.commands": 8,
    "forensics.cli": 8,
    "forensics.demo": 8,
    "forensics": 8,  # the package root re-exports the public API and sits on top
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module} is in no layer of DESIGN.md: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every forensics module this tree imports, with its line (relative imports resolved)."""
    found: list[tuple[int, str]] = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "forensics"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "forensics":
                continue
            if target == "forensics":  # `from forensics import x` names submodules or root re-exports
                found += [
                    (node.lineno, f"forensics.{a.name}")
                    if f"forensics.{a.name}" in LAYERS
                    else (node.lineno, "forensics")
                    for a in node.names
                ]
            else:
                found.append((node.lineno, target))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        own = layer_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported(tree, module, path.name == "__init__.py"):
            if target == module or (module.startswith(target + ".") and path.name == "__init__.py"):
                continue
            if target.startswith(module + ".") and path.name == "__init__.py":
                continue  # a package's __init__ re-exports its own submodules
            if layer_of(target) > own:
                bad.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} {module} (layer {own}) "
                    f"imports {target} (layer {layer_of(target)})"
                )
    return bad


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_no_import_runs_back_up() -> None:
    bad = violations()
    assert not bad, "imports against the layer order of DESIGN.md:\n" + "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    """Module -> the forensics modules it imports (any import, module- or function-level). A package's
    ``__init__`` re-exporting its own submodules is not an edge back into them."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for _, target in imported(tree, module, path.name == "__init__.py"):
            while target not in modules and "." in target:  # `from pkg.mod import name` names pkg.mod
                target = target.rsplit(".", 1)[0]
            if target != module and target in modules:
                edges.add(target)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_between_modules() -> None:
    found = cycles(import_graph())
    assert not found, "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_finder_finds_a_loop_of_three() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("module", "target", "ok"),
    [
        ("forensics.cca.fixset", "forensics.replay", True),
        ("forensics.replay.plan", "forensics.cca.fixset", False),
        ("forensics.rca.pipeline", "forensics.report.html", False),
        ("forensics.cca.isc", "forensics.rca.story", False),
        ("forensics.report.html", "forensics.rca.result", True),
        ("forensics.population", "forensics.cf.stats", False),
    ],
)
def test_the_checker_itself_tells_up_from_down(module: str, target: str, ok: bool) -> None:
    assert (layer_of(target) <= layer_of(module)) is ok
