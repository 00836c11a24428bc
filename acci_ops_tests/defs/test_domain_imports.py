"""The Dagster domains (``acci_ops/defs/<domain>/``) do not import each other: only
``acci_ops/definitions.py`` knows them all, builds them and hands DR the others' resources.

    acci_ops/definitions.py   ->  every domain            (and nothing else in acci_ops imports one)
    defs/<domain>/...         ->  its own package, defs/_shared.py, defs/_contracts.py
    defs/_shared.py, ...      ->  no domain

What one domain relies on in another (an asset name, a group, the part of a resource it calls) is
declared in ``defs/_contracts.py``. Files are parsed (``ast``), not imported, including imports
inside functions and ``TYPE_CHECKING`` blocks: a type-only import still ties one domain to another.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "acci_ops"
BARE = {"acci_ops", "acci_ops.defs"}  # "from acci_ops.defs import backups" imports the package backups


def domains(package: Path = PACKAGE) -> set[str]:
    """The packages under defs/; a leading underscore marks a shared module or package instead."""
    return {p.name for p in (package / "defs").iterdir()
            if p.is_dir() and (p / "__init__.py").exists() and not p.name.startswith("_")}


def _module_name(path: Path, package: Path) -> list[str]:
    parts = ["acci_ops", *path.relative_to(package).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imports(path: Path, package: Path = PACKAGE) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the file, relative ones resolved."""
    here = _module_name(path, package)
    if path.name != "__init__.py":
        here = here[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module is None or module in BARE:
                for alias in node.names:
                    yield node.lineno, f"{module}.{alias.name}"
            else:
                yield node.lineno, module


def _domain_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if parts[:2] == ["acci_ops", "defs"] and len(parts) > 2 else None


def domain_import_problems(package: Path = PACKAGE) -> list[str]:
    """Every import that breaks the rule above, one line each."""
    known = domains(package)
    entry = package / "definitions.py"
    problems = []
    for path in sorted(package.rglob("*.py")):
        if path == entry or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(package)
        inside = relative.parts[1] if relative.parts[0] == "defs" and len(relative.parts) > 2 else None
        own = inside if inside in known else None
        for line, name in sorted(imports(path, package)):
            other = _domain_of(name)
            if name == "acci_ops.definitions" or name.startswith("acci_ops.definitions."):
                problems.append(f"acci_ops/{relative}:{line} imports acci_ops.definitions, which only the code "
                                "location loads")
            elif other in known and other != own:
                who = f"domain {own}" if own else "it"
                problems.append(f"acci_ops/{relative}:{line} imports {name}: {who} may not know domain {other} "
                                "(share it through defs/_contracts.py or acci_ops/definitions.py)")
    wired = {_domain_of(name) for _, name in imports(entry, package)}
    for missing in sorted(known - wired):
        problems.append(f"acci_ops/definitions.py does not build domain {missing}")
    return problems


def test_domains_import_no_other_domain():
    assert domain_import_problems() == []


def test_every_domain_has_build_defs_and_is_built():
    """Each domain is a package with definitions.py defining build_defs, and definitions.py builds it."""
    from acci_ops import definitions

    for domain in sorted(domains()):
        tree = ast.parse((PACKAGE / "defs" / domain / "definitions.py").read_text())
        assert "build_defs" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, domain
    assert {definitions.domain_name(d) for d in (*definitions.DOMAINS, *definitions.LATE)} == domains()


def test_the_check_names_sideways_lazy_type_only_and_relative_imports(tmp_path):
    """The checker itself: planted imports of another domain (top-level, inside a function, under
    TYPE_CHECKING, relative, "from acci_ops.defs import x"), a shared module importing a domain,
    a domain importing the entry point and a domain definitions.py does not build are all named;
    imports of one's own domain and of the shared modules are not."""
    package = tmp_path / "acci_ops"
    for domain in ("backups", "dr", "alerts"):
        (package / "defs" / domain).mkdir(parents=True)
        (package / "defs" / domain / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "defs" / "_shared.py").write_text("from acci_ops.defs.backups.resources import AcciEnvironment\n")
    (package / "defs" / "_contracts.py").write_text("from acci_ops.defs._shared import asset_key\n")
    (package / "definitions.py").write_text("from acci_ops.defs.backups import definitions as backups\n"
                                            "from acci_ops.defs.dr import definitions as dr\n")
    (package / "defs" / "backups" / "assets.py").write_text(
        "from acci_ops.defs._contracts import BACKUPS_GROUP\nfrom acci_ops.defs.backups.resources import X\n"
        "from .resources import Y\n")
    (package / "defs" / "dr" / "jobs.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from acci_ops.defs.alerts.resources import notify\n"
        "if TYPE_CHECKING:\n    from acci_ops.defs.backups.resources import AcciEnvironment\n"
        "def build():\n    from ..alerts import sensors\n    from acci_ops.defs import backups\n"
        "    import acci_ops.definitions\n")
    assert domain_import_problems(package) == [
        "acci_ops/defs/_shared.py:1 imports acci_ops.defs.backups.resources: it may not know domain backups "
        "(share it through defs/_contracts.py or acci_ops/definitions.py)",
        *(f"acci_ops/defs/dr/jobs.py:{line} imports {name}: domain dr may not know domain {other} "
          "(share it through defs/_contracts.py or acci_ops/definitions.py)"
          for line, name, other in [(2, "acci_ops.defs.alerts.resources", "alerts"),
                                    (4, "acci_ops.defs.backups.resources", "backups"),
                                    (6, "acci_ops.defs.alerts", "alerts"),
                                    (7, "acci_ops.defs.backups", "backups")]),
        "acci_ops/defs/dr/jobs.py:8 imports acci_ops.definitions, which only the code location loads",
        "acci_ops/definitions.py does not build domain alerts",
    ]


def test_each_resource_other_domains_use_offers_what_they_call():
    """The resource classes implement the Protocols in defs/_contracts.py that validation and DR
    type them by (a renamed method fails here, not in a 3 a.m. recovery)."""
    from acci_ops.defs._contracts import BackupEnvironment, Notifier, ScratchServer
    from acci_ops.defs.alerts.resources import alert_resource
    from acci_ops.defs.backups.resources import backup_resource
    from acci_ops.defs.validation.resources import validation_resource
    from acci_ops.settings import load_settings

    settings = load_settings({"ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:9/postgres"})
    [spec] = settings.environments
    assert isinstance(backup_resource(spec), BackupEnvironment)
    assert isinstance(validation_resource(spec), ScratchServer)
    assert isinstance(alert_resource(settings.alerts), Notifier)
    assert not isinstance(validation_resource(spec), BackupEnvironment)
