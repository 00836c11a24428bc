"""Where the deployment files acci_ops drives live, in a checkout and once installed.

The Helm chart, its DR and drill values and the Compose files ship inside the package
(``acci_ops/deploy/``, declared as package data), so an editable install, a checkout and a normal
install (a wheel, a container image) find them at the same place relative to the code. The
repository's top-level ``deploy/helm`` and ``deploy/compose`` are links to them, for people.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[2]


def deploy_dir() -> Path:
    """The directory holding ``helm/`` (chart, ``dr-values.yaml``, ``drill-values.yaml``) and
    ``compose/``: ``<acci_ops package>/deploy``, whether acci_ops runs from a checkout or is installed.

    Relative chart and Compose settings (the defaults ``deploy/helm/acci-framework``,
    ``deploy/compose/docker-compose.yml``, ...) resolve against its parent, see ``resolve_deploy_path``."""
    return _PACKAGE_DIR / "deploy"


def resolve_deploy_path(value: str) -> str:
    """A chart/values/Compose setting as an absolute path: absolute values as given, relative ones
    against the directory that holds ``deploy/`` (so ``deploy/helm/acci-framework`` is the shipped
    chart wherever acci_ops is installed; name your own files with absolute paths)."""
    return value if os.path.isabs(value) else str(deploy_dir().parent / value)
