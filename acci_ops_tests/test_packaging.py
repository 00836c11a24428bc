"""The wheel ships the product without its tests, and a normal (non-editable) install finds the Helm
chart and the Compose files it deploys: what runs inside an image.

The wheel is built offline (``--no-build-isolation``, with the venv's pinned setuptools) from a copy of
the sources, so the checkout gets no build/ or egg-info leftovers; it is installed with
``pip install --target`` (its dependencies are the venv's) and used from another directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from acci_ops.lib.platform.paths import deploy_dir

pytestmark = pytest.mark.integration  # builds and installs the wheel (~15 s), no server

REPO = Path(__file__).resolve().parents[1]

# Run inside the installed package: which acci_ops was imported, which jobs exist, and where the DR
# resource's platforms point (found without naming the resource: whatever has platform_for).
INSPECT = """
import json, sys
import dagster as dg
import acci_ops, acci_ops.definitions as entry
from acci_ops.lib.platform.backends import DRILL_OVERLAY
defs = next(v for v in vars(entry).values() if isinstance(v, dg.Definitions))
[dr] = [r for r in (defs.resources or {}).values() if hasattr(r, "platform_for")]
recovery, drill = dr.platform_for(drill=False), dr.platform_for(drill=True, stamp="1")
fields = lambda p: {k: getattr(p, k) for k in ("chart", "values_files", "files", "overlay") if hasattr(p, k)}
loaded = sorted({m.__file__ for n, m in sys.modules.items() if n.split(".")[0] == "acci_ops" and m.__file__})
jobs = sorted(j.name for j in defs.resolve_all_job_defs())
print(json.dumps({"acci_ops": acci_ops.__file__, "loaded": loaded, "jobs": jobs,
                  "overlay": str(DRILL_OVERLAY), "recovery": fields(recovery), "drill": fields(drill)}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copy(REPO / "pyproject.toml", src)
    for package in ("acci_ops", "acci_ops_tests"):  # the tests too: they must be left out
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [built] = out.glob("acci_ops-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def test_the_wheel_has_the_product_and_its_deploy_files_but_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [n for n in names if n.startswith("acci_ops_tests")]
    shipped = {f"acci_ops/deploy/{p.relative_to(deploy_dir()).as_posix()}"
               for p in deploy_dir().rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert "acci_ops/deploy/helm/acci-framework/Chart.yaml" in shipped
    assert "acci_ops/deploy/helm/acci-framework/.helmignore" in shipped
    assert "acci_ops/deploy/compose/docker-compose.yml" in shipped
    assert shipped - names == set(), "deploy files missing from the wheel"
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "acci_ops").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources - names == set(), "modules missing from the wheel"


def installed_env(site: Path, home: Path, **acci: str) -> dict[str, str]:
    """The venv's dependencies plus the installed acci_ops (PYTHONPATH first), DR on, no checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCI_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), DAGSTER_HOME=str(home),
               ACCI_DATABASE_URL="postgresql://acci@127.0.0.1:5/acci", ACCI_BACKUP_URL=f"file://{home}/backups",
               ACCI_SCRATCH_DATABASE_URL="postgresql://acci_scratch@127.0.0.1:5/postgres",
               ACCI_REDIS_URL="redis://127.0.0.1:6/0", ACCI_DRILL_REDIS_URL="redis://127.0.0.1:6/1",
               ACCI_APP_URL="https://api.acci.test", **acci)
    return env


def test_installed_package_validates_with_dr_on_and_finds_its_chart_and_compose_files(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing may resolve against it
    elsewhere.mkdir()
    shipped = installed / "acci_ops" / "deploy"
    helm_env = installed_env(installed, tmp_path, ACCI_PLATFORM="helm")

    validate = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "acci_ops.definitions"],
        cwd=elsewhere, env=helm_env, capture_output=True, text=True, timeout=180)
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "Validation successful" in validate.stdout + validate.stderr

    helm = subprocess.run([sys.executable, "-c", INSPECT], cwd=elsewhere, env=helm_env, capture_output=True,
                          text=True, timeout=180)
    assert helm.returncode == 0, helm.stderr[-3000:]
    seen = json.loads(helm.stdout.splitlines()[-1])
    assert seen["acci_ops"] == str(installed / "acci_ops" / "__init__.py")
    assert [f for f in seen["loaded"] if not f.startswith(f"{installed}/")] == []  # nothing from the checkout
    assert {"dr_drill", "disaster_recovery"} <= set(seen["jobs"])
    assert seen["recovery"]["chart"] == str(shipped / "helm" / "acci-framework")
    assert (shipped / "helm" / "acci-framework" / "Chart.yaml").is_file()
    assert seen["recovery"]["values_files"] == [str(shipped / "helm" / "dr-values.yaml")]
    assert seen["drill"]["values_files"] == [str(shipped / "helm" / "drill-values.yaml")]
    assert seen["overlay"] == str(shipped / "compose" / "docker-compose.acci-ops.yml")

    compose = subprocess.run([sys.executable, "-c", INSPECT], cwd=elsewhere, capture_output=True, text=True,
                             env=installed_env(installed, tmp_path, ACCI_PLATFORM="compose"), timeout=180)
    assert compose.returncode == 0, compose.stderr[-3000:]  # a missing Compose file is a ConfigError here
    seen = json.loads(compose.stdout.splitlines()[-1])
    assert seen["drill"]["files"] == [str(shipped / "compose" / "docker-compose.yml"),
                                      str(shipped / "compose" / "docker-compose.prod.yml")]
    assert seen["drill"]["overlay"] == str(shipped / "compose" / "docker-compose.acci-ops.yml")
