"""Imports point down the layers and never go round in a circle (docs/architecture.md, "Import
directions"). The graph is read from the source with `ast`, so an import inside a function counts as
much as one at the top of a module; only imports under `if TYPE_CHECKING:` are exempt, since they
never run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Small modules every layer may use: they import nothing of seekd but each other.
LOW = frozenset({"config", "sampling_params", "distributed", "progress", "errors", "intmath", "text"})
# The model stack, lowest first: each may use the ones before it (and LOW), nothing above.
CORE = ("kernels", "layers", "models", "engine")
# Front ends the operations layer serves; ops/ must never reach up into them.
ABOVE_OPS = frozenset({"server", "router", "kb", "ui", "bench", "cli"})


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package `seekd` under `root`."""
    modules = {}
    for path in sorted((root / "seekd").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports_that_run(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _imports_that_run_in(child))
            continue
        yield from _imports_that_run_in(node)


def _imports_that_run_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _imports_that_run(node)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the seekd modules it imports. `from a.b import c` counts as importing the module
    `a.b.c` where that exists, else `a.b` (the package whose `__init__` defines `c`)."""
    modules = module_files(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _imports_that_run(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names if alias.name.startswith("seekd"))
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "seekd" or base.startswith("seekd."):
                targets.update(known(f"{base}.{alias.name}") for alias in node.names)
        graph[module] = {t for t in targets if t and t != module}
    return graph


def layer_of(module: str) -> str:
    """`seekd.engine.scheduler` -> `engine`; `seekd.config` -> `config`; the package root -> `seekd`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "seekd"


def may_import(importer: str, imported: str) -> bool:
    if importer == imported:
        return True
    if importer in LOW:
        return imported in LOW
    if importer == "kernels":
        return False
    if importer in CORE:
        return imported in LOW or (imported in CORE and CORE.index(imported) < CORE.index(importer))
    if importer == "ops":
        return imported not in ABOVE_OPS
    return True


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if not may_import(layer_of(module), layer_of(target))
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = lowlink[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = lowlink[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    lowlink[node] = min(lowlink[node], index[succ])
            else:
                work.pop()
                if work:
                    lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def test_no_lower_layer_imports_a_higher_one() -> None:
    upward = upward_imports(import_graph(ROOT))
    assert upward == [], "move what both need down into a lower module (docs/architecture.md, Import directions)"


def test_no_import_cycles_between_seekd_modules() -> None:
    circles = cycles(import_graph(ROOT))
    assert circles == [], "split the shared part of each circle into a module that both import"


def test_the_graph_sees_the_package_it_checks() -> None:
    graph = import_graph(ROOT)
    assert "seekd.kernels.fused_moe" in graph["seekd.layers.moe"]
    assert "seekd.engine.engine_core" in graph["seekd.engine.llm"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_finds_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "seekd/__init__.py": "",
            "seekd/server/__init__.py": "",
            "seekd/server/errors.py": "class APIError(Exception): ...\n",
            "seekd/ops/__init__.py": "",
            "seekd/ops/auth.py": "def check():\n    from seekd.server.errors import APIError\n",
            "seekd/engine/__init__.py": "",
            "seekd/engine/a.py": "from . import b\n",
            "seekd/engine/b.py": "from seekd.engine.a import x\n",
            "seekd/engine/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from seekd.server import errors\n"
            ),
        },
    )
    graph = import_graph(tmp_path)
    assert upward_imports(graph) == ["seekd.ops.auth imports seekd.server.errors"]
    assert cycles(graph) == [["seekd.engine.a", "seekd.engine.b"]]


def test_http_hardening_uses_nothing_of_the_server_above_it() -> None:
    """server/http/ sits under the OpenAI routes: the routes use it, never the reverse."""
    graph = import_graph(ROOT)
    reaching_up = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if module.startswith("seekd.server.http")
        for target in targets
        if target.startswith("seekd.server") and not target.startswith("seekd.server.http")
    )
    assert "seekd.server.http.body_limit" in graph
    assert reaching_up == []
