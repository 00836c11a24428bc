"""Compose projects of the release app (``acci_ops.dev.release_app``) on a Docker API engine such as the
private podman service (``acci_ops.dev.podman_service``): the compose files, a runner that points every
tool at the engine, and the removal of what a project left. Shared by the release tests and
``benchmarks/release.py``, so both deploy the same confined app the same way.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from acci_ops.dev.podman_service import PodmanService
from acci_ops.dev.release_app import APP_PORT, METRICS_PORT
from acci_ops.lib.core.commands import CommandResult, run_command

COMPOSE_SERVICE = "app"
# What a Compose deployment gives the app (no password: nothing here is a secret). A TCP host, as in
# deploy/compose/docker-compose.yml: release app v2.2.0's /health fails with it (release_app's docstring).
DATABASE_URL = "postgres://acci@db:5432/acci"
# A blue/green color's port comes from acci_ops, in the compose command's environment.
COLOR_PORT = "${ACCI_FRAMEWORK_PORT:?acci_ops passes the color's port}"


def compose_file(app_port: int | str, metrics_port: int | None, stop_signal: str | None = None) -> str:
    """Only the app service, confined like the shipped compose file's (read-only root, tmpfs /tmp, no
    new privileges) and with no capabilities, on the engine's default bridge, with a TCP DATABASE_URL as
    a real deployment's (no database runs: none of the release app's versions connects to it).
    ``stop_signal``: one caddy ignores (SIGWINCH) makes every stop take the whole 3 s grace period, so a
    test can kill ``up`` while the engine is stopping the old container. ``metrics_port`` None: caddy's
    metrics are not published (a blue/green color, whose ``app_port`` is ``COLOR_PORT``)."""
    return (
        "version: '3.8'\n"
        "services:\n"
        f"  {COMPOSE_SERVICE}:\n"
        "    image: ${ACCI_FRAMEWORK_IMAGE:-acci/release-app:latest}\n"
        "    network_mode: bridge\n"
        "    ports:\n"
        f'      - "127.0.0.1:{app_port}:{APP_PORT}"\n'
        + (f'      - "127.0.0.1:{metrics_port}:{METRICS_PORT}"\n' if metrics_port else "")
        + "    read_only: true\n"
        "    tmpfs:\n"
        "      - /tmp\n"
        "    cap_drop:\n"
        "      - ALL\n"
        "    security_opt:\n"
        "      - no-new-privileges:true\n"
        "    environment:\n"
        f'      DATABASE_URL: "{DATABASE_URL}"\n'
        "    stop_grace_period: 3s\n"
        + (f"    stop_signal: {stop_signal}\n" if stop_signal else ""))


def service_runner(env: Mapping[str, str]) -> Callable[..., CommandResult]:
    """``run_command`` with the podman service's DOCKER_HOST (and an empty docker config) added to every
    tool's environment, so nothing depends on the test process's own environment."""
    def runner(argv: list[str], **kwargs: Any) -> CommandResult:  # noqa: ANN401 (run_command's signature)
        kwargs["env"] = {**(kwargs.get("env") or {}), **env}
        return run_command(argv, **kwargs)
    return runner


def remove_project(service: PodmanService, project: str) -> list[str]:
    """Force-remove every container of Compose project ``project`` (by its label): the ids removed."""
    removed = project_containers(service, project)
    for container in removed:
        service.api("DELETE", f"/containers/{container}?force=1&v=1", timeout=60)
    return removed




def project_containers(service: PodmanService, project: str) -> list[str]:
    """The ids of every container of Compose project ``project``, running or not."""
    filters = urllib.parse.quote(json.dumps({"label": [f"com.docker.compose.project={project}"]}))
    status, body = service.api("GET", f"/containers/json?all=1&filters={filters}")
    if status != 200:
        raise RuntimeError(f"listing the containers of compose project {project} answered HTTP {status}")
    return [c["Id"] for c in json.loads(body or b"[]")]
