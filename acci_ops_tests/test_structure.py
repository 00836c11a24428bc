"""The product does not depend on its tests, tests share code only through acci_ops_tests/fixtures, and a
unit test starts no server. Files are parsed (``ast``), not imported."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from acci_ops.dev.servers import start_redis
from acci_ops.lib.platform.paths import deploy_dir
from acci_ops_tests.fixtures.markers import server_started_by
from acci_ops_tests.fixtures.schedule import LONGEST_FIRST

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import in a file, inside functions too; ``from a import b`` gives ``a.b``."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def python_files(*roots: str) -> list[Path]:
    return [p for root in roots for p in (REPO / root).rglob("*.py") if "__pycache__" not in p.parts]


def test_the_product_benchmarks_and_scripts_never_import_the_tests():
    found = [f"{p.relative_to(REPO)}:{line} imports {name}"
             for p in python_files("acci_ops", "benchmarks", "scripts")
             for line, name in imports(p) if name.split(".")[0] == "acci_ops_tests"]
    assert found == []
    for text_file in ("run", "workspace.yaml", "dagster.yaml"):  # what `./run dev` starts
        assert "acci_ops_tests" not in (REPO / text_file).read_text(), text_file


def test_tests_import_neither_test_modules_nor_conftests():
    """Shared fixtures and helpers live in acci_ops_tests/fixtures (loaded through pytest_plugins)."""
    found = []
    for path in python_files("acci_ops_tests"):
        for line, name in imports(path):
            parts = name.split(".")
            if parts[0] == "acci_ops_tests" and (
                    any(p == "conftest" or p.startswith("test_") for p in parts) or parts[1] != "fixtures"):
                found.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert found == []


def test_server_executables_are_recognised_in_any_argv():
    assert server_started_by(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "start"]) == \
        "pg_ctl"
    assert server_started_by(["/venv/bin/moto_server", "-H", "127.0.0.1"]) == "moto_server"
    assert server_started_by("redis-server --port 6379") == "redis-server"
    assert server_started_by([sys.executable, "-m", "acci_ops.dev.fakeapp"]) is None
    assert server_started_by(["helm", "template", "postgres"]) is None  # a chart named postgres is not a server


def test_a_unit_test_that_starts_a_server_fails_naming_it(request, tmp_path):
    assert request.node.get_closest_marker("unit") and not request.node.get_closest_marker("integration")
    try:
        started = start_redis(tmp_path)
    except RuntimeError as refused:
        assert str(refused) == (f"unit test {request.node.nodeid} starts redis-server: request a server fixture "
                                "(auth_registry, caddy_apps, container_tools, denied_s3, dockerd, own_redis, "
                                "pg_server, podman_service, prometheus, redis_server, registry, s3_server) "
                                "or mark it integration")
    else:
        started.stop()
        pytest.fail("a unit test could start redis-server")


def test_the_checkout_deploy_links_point_at_the_shipped_files():
    """deploy/helm and deploy/compose (what deploy/README.md and runbooks name) are the package's files."""
    for name in ("helm", "compose"):
        assert (REPO / "deploy" / name).resolve() == (deploy_dir() / name).resolve()
    assert (deploy_dir() / "helm" / "acci-framework" / "Chart.yaml").is_file()
    assert (deploy_dir() / "compose" / "docker-compose.acci-ops.yml").is_file()


def test_the_longest_first_schedule_names_existing_test_files(request):
    """A renamed or deleted slow file would silently drop out of the schedule and run last again."""
    missing = [path for path in LONGEST_FIRST if not (REPO / path).is_file()]
    assert not missing, f"acci_ops_tests/fixtures/schedule.py names test files that do not exist: {missing}"
    order = [item.nodeid.split("::", 1)[0] for item in request.session.items]
    dealt = list(dict.fromkeys(order))
    present = [p for p in LONGEST_FIRST if p in dealt]
    assert dealt[:len(present)] == present, "the longest files are not collected first"
