"""The package's import graph, read with `ast`: no import cycle among hf_finetune modules (imports inside
functions count), no `from X import _private` across modules, and nothing in the library imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_finetune"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _target(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package = package[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) for every import of a package module in ``module``."""
    found = []
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _target(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from . import tasks`: the submodule itself
                    found.append((sub, None))
                elif target in MODULES:
                    found.append((target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name in MODULES]
        elif _is_import_module(node):
            target = _dynamic_target(module, node.args[0].value)
            if target in MODULES:
                found.append((target, None))
    return found


def _is_import_module(node: ast.AST) -> bool:
    """``import_module("...")`` / ``importlib.import_module("...")`` with a literal name: a lazy import is
    still an import, and counts in the graph."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    first = node.args[0]
    return name == "import_module" and isinstance(first, ast.Constant) and isinstance(first.value, str)


def _dynamic_target(module: str, name: str) -> str:
    if not name.startswith("."):
        return name
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    return package + name if name.strip(".") else package


def _graph() -> dict[str, set[str]]:
    """module -> the package modules it imports. Importing ``a.b.c`` also runs ``a.b``'s __init__, so that edge
    counts too (a package __init__ that imports a module which imports back into it is a real cycle)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _ in _imports(module):
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                step = ".".join(parts[:depth])
                if step in MODULES and step != module and not module.startswith(step + "."):
                    graph[module].add(step)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_cycle():
    """The cycle finder is not vacuous: it reports a constructed three-module cycle and nothing in a chain."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_is_read():
    graph = _graph()
    lazy = ast.parse('importlib.import_module(".load", __name__)').body[0].value
    assert (
        _is_import_module(lazy)
        and _dynamic_target("hf_finetune.config", ".load") == "hf_finetune.config.load"
    )
    assert len(MODULES) > 30
    assert "hf_finetune.errors" in graph["hf_finetune.outputs"]
    assert sum(len(targets) for targets in graph.values()) > 50


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among hf_finetune modules:\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_no_private_names_imported_across_modules():
    private = [
        f"{module} imports {target}.{name}"
        for module in MODULES
        for target, name in _imports(module)
        if name and name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def test_nothing_in_the_library_imports_the_cli():
    importers = [
        module
        for module in MODULES
        if module not in ("hf_finetune.cli", "hf_finetune.__main__")
        and "hf_finetune.cli" in {target for target, _ in _imports(module)}
    ]
    assert not importers, f"library modules that import the CLI: {importers}"
