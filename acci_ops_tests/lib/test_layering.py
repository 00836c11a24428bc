"""acci_ops.lib is layered: imports only go downward, and nothing in it knows Dagster or the layers above.

    core  <-  storage, postgres  <-  backup  <-  validation  <-  dr
                    postgres     <-  platform  <-  dr

Every module is parsed (``ast``, nothing is imported), including imports inside functions: a
"lazy" import is still a dependency (the old backup <-> validation cycle hid in one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

LIB = Path(__file__).resolve().parents[2] / "acci_ops" / "lib"

# Each package and the packages it may import (besides itself). Nothing else in acci_ops.lib.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "storage": {"core"},
    "postgres": {"core"},
    "backup": {"core", "storage", "postgres"},
    "validation": {"core", "storage", "postgres", "backup"},
    "platform": {"core", "postgres"},
    "dr": {"core", "storage", "postgres", "backup", "validation", "platform"},
    "images": {"core", "postgres"},
    # Releases reuse DR's probes and the platform backends, and sign their records with the backup keyring.
    "releases": {"core", "storage", "postgres", "backup", "platform", "dr"},
    # The instance check takes image references by the grammar releases deploy by.
    "instance": {"core", "releases"},
    # acci_ops's own image: the image pipeline's engine, checks and policy.
    "ops_image": {"core", "images"},
}
FORBIDDEN_PREFIXES = ("dagster", "acci_ops.defs", "acci_ops.dev", "acci_ops_tests", "acci_ops.settings",
                      "acci_ops.definitions")


def _module_name(path: Path, root: Path) -> str:
    parts = ["acci_ops", "lib", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None or module.startswith("acci_ops.lib") and module.count(".") == 2:
                # "from acci_ops.lib.postgres import catalog" imports the module acci_ops.lib.postgres.catalog
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            else:
                yield node.lineno, module


def module_graph(root: Path = LIB) -> dict[str, set[str]]:
    """acci_ops.lib module -> the acci_ops.lib modules it imports."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for _, imported in _imports(path, root):
            if imported.startswith("acci_ops.lib."):
                # "from acci_ops.lib.backup import signing" -> the module if it exists, else the package
                target = imported if imported in modules else imported.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ""


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    packages: dict[str, set[str]] = {}
    for module, deps in graph.items():
        if _package(module):
            packages.setdefault(_package(module), set()).update(
                _package(d) for d in deps if _package(d) and _package(d) != _package(module))
    return packages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (as a path whose last node is its first), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def layering_problems(root: Path = LIB) -> list[str]:
    """Every violation of the rules above, one line each."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        for line, imported in _imports(path, root):
            if any(imported == p or imported.startswith(p + ".") or imported.startswith(p + "_")
                   for p in FORBIDDEN_PREFIXES):
                problems.append(f"{path.relative_to(root)}:{line} imports {imported}")
    graph = module_graph(root)
    packages = package_graph(graph)
    for package, deps in sorted(packages.items()):
        if package not in ALLOWED:
            problems.append(f"package lib/{package} is not in the layering table (ALLOWED in this test)")
            continue
        for dep in sorted(deps - ALLOWED[package]):
            culprits = sorted(m for m in graph if _package(m) == package and any(_package(d) == dep for d in graph[m]))
            problems.append(f"lib/{package} imports lib/{dep} (upward or sideways), in {', '.join(culprits)}")
    for name, cycle in (("package", find_cycle(packages)), ("module", find_cycle(graph))):
        if cycle:
            problems.append(f"{name} import cycle: {' -> '.join(cycle)}")
    return problems


def test_lib_imports_only_go_downward():
    assert layering_problems() == []


def test_layering_table_is_acyclic_and_covers_every_package():
    assert find_cycle(ALLOWED) is None
    assert {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(ALLOWED)


def test_the_check_finds_upward_imports_cycles_and_dagster(tmp_path):
    """The checker itself: a planted lazy upward import, a cycle and a Dagster import are all named."""
    root = tmp_path / "lib"
    for package in ALLOWED:
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "core" / "errors.py").write_text("import dagster as dg\n")
    (root / "backup" / "inventory.py").write_text(
        "def newest():\n    from acci_ops.lib.validation.validate import newest_validated\n")
    (root / "validation" / "validate.py").write_text("from acci_ops.lib.backup import inventory\n")
    (root / "platform" / "helm.py").write_text("from acci_ops.settings import Settings\n")
    assert layering_problems(root) == [
        "core/errors.py:1 imports dagster",
        "platform/helm.py:1 imports acci_ops.settings",
        "lib/backup imports lib/validation (upward or sideways), in acci_ops.lib.backup.inventory",
        "package import cycle: backup -> validation -> backup",
        "module import cycle: acci_ops.lib.backup.inventory -> acci_ops.lib.validation.validate -> "
        "acci_ops.lib.backup.inventory",
    ]
