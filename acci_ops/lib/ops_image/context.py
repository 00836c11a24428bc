"""What the acci_ops image's build context gets before ``buildah build`` (deploy/dagster/Containerfile).

The Containerfile's RUN steps fetch nothing: pip installs from a wheelhouse in the context with
``--no-index --no-deps``, and helm is copied in. Both are made here, on the build host, from the
exported checkout: ``pip wheel`` builds acci_ops's own wheel from that tree and downloads the pinned
dependencies (through pip's configured index, or only from ``wheel_dirs`` when ``offline``), so the
image holds exactly what this commit's pyproject.toml pins, resolved once.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.lib.core.commands import CommandFailed, LineSink, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError

WHEELS = "deploy/dagster/wheels"
HELM = "deploy/dagster/bin/helm"
CONTAINERFILE = "deploy/dagster/Containerfile"
# pip's own settings may come from the environment (an index with a token, a CA bundle): pip reads them,
# nothing else does, and none of them reaches the image (only the wheels do).
PIP_ENV = ("PIP_*", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


class ContextError(AcciOpsError):
    """The build context could not be completed (pip or helm); the build does not start."""


@dataclass(frozen=True)
class OpsContext:
    """How the context is completed. ``wheel_dirs``: directories pip may take wheels from (a
    per-machine cache); ``offline``: only from those (``--no-index``)."""

    wheel_dirs: tuple[Path, ...] = ()
    offline: bool = False
    helm: str | None = None  # the helm binary copied in; default: the one on PATH
    timeout_seconds: float = 1800
    python: str = field(default=sys.executable)


def _helm(explicit: str | None) -> Path:
    beside_python = Path(sys.executable).parent / "helm"  # where ./run install puts it, on PATH or not
    found = explicit or shutil.which("helm") or (str(beside_python) if beside_python.is_file() else None)
    if not found or not Path(found).is_file():
        raise ConfigError("helm is not installed on the build host: the acci_ops image copies it in "
                          "(./run install puts it next to Python; or set ACCI_OPS_IMAGE_HELM)")
    return Path(found).resolve()


def pip_argv(config: OpsContext, project: Path, dest: Path) -> list[str]:
    """``pip wheel`` of the project and every pinned dependency into ``dest``."""
    argv = [config.python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir", str(dest)]
    if importlib.util.find_spec("setuptools") is not None:
        argv.append("--no-build-isolation")  # the build backend is here already: nothing fetched for it
    if config.offline:
        argv.append("--no-index")
    for directory in config.wheel_dirs:
        argv += ["--find-links", str(directory)]
    argv.append(str(project))
    return argv


def prepare_context(root: Path, config: OpsContext, log: LineSink | None = None) -> dict[str, object]:
    """Put the wheelhouse and helm into the exported checkout ``root``; what was added, for metadata."""
    say = log or (lambda _line: None)
    root = Path(root)
    if not (root / CONTAINERFILE).is_file():
        raise ConfigError(f"{CONTAINERFILE} is not in this checkout of acci_ops (ACCI_OPS_SOURCE_REPO names "
                          "another repository, or a commit before the image existed)")
    wheels = root / WHEELS
    if wheels.exists():
        raise ContextError(f"{WHEELS} is committed in the source; the build makes it (remove it from the repository)")
    wheels.mkdir(parents=True)
    say(f"ops image: pip wheel of {root.name} and its pinned dependencies"
        + (" (offline, from " + ", ".join(map(str, config.wheel_dirs)) + ")" if config.offline else ""))
    lines: list[str] = []
    try:
        run_command(pip_argv(config, root, wheels), allow_env=PIP_ENV, timeout=config.timeout_seconds,
                    on_line=lines.append)
    except CommandFailed as exc:
        cause = next((line for line in reversed(exc.result.tail) if "ERROR" in line), exc.result.last_line)
        raise ContextError(f"pip could not make the image's wheelhouse: {' '.join(cause.split())}") from None
    names = sorted(path.name for path in wheels.glob("*.whl"))
    if not any(name.startswith("acci_ops-") for name in names):
        raise ContextError("pip made no acci_ops wheel from the checkout")
    helm = _helm(config.helm)
    target = root / HELM
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(helm, target)
    target.chmod(0o755)
    size = sum(path.stat().st_size for path in wheels.glob("*.whl"))
    say(f"ops image: {len(names)} wheels ({size / 1e6:.0f} MB) and helm from {helm} added to the build context")
    return {"wheels": len(names), "wheel_bytes": size, "helm": str(helm)}


def check_wheel_dirs(dirs: Sequence[Path]) -> None:
    """A wheel directory that is not there is a typo, not an empty cache."""
    for directory in dirs:
        if not Path(directory).is_dir():
            raise ConfigError(f"ACCI_OPS_IMAGE_WHEELHOUSE {directory} is not a directory")
