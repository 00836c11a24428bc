"""acci_ops itself in containers, for the tests and benchmarks/docker_launch.py: its image built by the
real ``build_ops_image`` job from a checkout's tree, and the shipped Compose stack made runnable here.

Nothing can be pulled here, so the image's base is Debian made with debootstrap
(``acci_ops.dev.debian_base``, kept per machine under ~/.cache/acci_ops) pushed to a local registry;
the dependency wheels are kept per machine too, keyed by the pinned dependency list, so a build only
makes acci_ops's own wheel from the tree (offline, ``ACCI_OPS_IMAGE_OFFLINE``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

from acci_ops.dev.dagster_api import graphql
from acci_ops.dev.podman_service import PodmanService
from acci_ops.dev.registry import LocalRegistry

ROOT = Path(__file__).resolve().parents[2]  # the checkout (dev tools, not shipped use)


def _dependencies() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def dependency_wheelhouse() -> Path:
    """Every pinned dependency as wheels, downloaded once per machine (per dependency list)."""
    deps = sorted(_dependencies())
    key = hashlib.sha256("\n".join([sys.version.split()[0], *deps]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("ACCI_WHEELHOUSE_CACHE", Path.home() / ".cache" / "acci_ops" / "wheelhouse"))
    final = root / key
    if (final / "complete").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "complete").is_file():
            work = root / f"{key}.partial"
            shutil.rmtree(work, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--only-binary=:all:", "--dest", str(work), *deps, "setuptools==80.9.0"], check=True)
            (work / "complete").write_text("\n".join(deps) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(work, final)
    return final


def snapshot_repo(dest: Path) -> Path:
    """The working tree under test (tracked and new files, as they are now) committed in a fresh git
    repository: what build_ops_image clones, so uncommitted changes are built too."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", "-C", str(dest), "-c", "user.name=acci tests", "-c", "user.email=tests@acci.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "tree under test"], check=True)
    return dest


def ops_environ(registry: LocalRegistry, source: Path, base_ref: str, wheels: Path, storage: Path) -> dict[str, str]:
    return {"ACCI_OPS_SOURCE_REPO": str(source), "ACCI_OPS_IMAGE_REPOSITORY": registry.repository("acci/acci-ops"),
            "ACCI_REGISTRY_TLS_VERIFY": "false", "ACCI_OPS_IMAGE_BASE": base_ref,
            "ACCI_OPS_IMAGE_WHEELHOUSE": str(wheels), "ACCI_OPS_IMAGE_OFFLINE": "true",
            "ACCI_IMAGE_STORAGE_DIR": str(storage)}


DOCKER_DIR = ROOT / "deploy" / "dagster" / "docker"
SERVICES = ("acci-ops-code", "dagster-webserver", "dagster-daemon")


def host_network_stack(dest: Path, *, poll_interval_seconds: int = 2, free_slots_after_seconds: int = 2,
                       extra_env_vars: tuple[str, ...] = ()) -> Path:
    """The shipped Compose file with two changes a test needs, written to ``dest/compose.yml``: every
    service on the host's network (the test's PostgreSQL, S3 and webhook listen on 127.0.0.1 only; a
    bridge network cannot reach them, and host networking takes no published ports), and no
    ``dagster-postgres`` service (no PostgreSQL image can be pulled here: Dagster's storage is a
    database on the test's server). The shipped dagster.yaml is mounted with run monitoring polling
    every ``poll_interval_seconds`` (shipped: 60), a dead run's pool slots freed after
    ``free_slots_after_seconds`` (shipped: 60) and ``extra_env_vars`` added to the launcher's list."""
    doc = yaml.safe_load((DOCKER_DIR / "docker-compose.yml").read_text())
    del doc["services"]["dagster-postgres"]
    doc.pop("volumes", None)
    doc.pop("networks", None)
    instance = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    instance["run_monitoring"]["poll_interval_seconds"] = poll_interval_seconds
    instance["run_monitoring"]["free_slots_after_run_end_seconds"] = free_slots_after_seconds
    instance["run_launcher"]["config"]["env_vars"] += list(extra_env_vars)
    (dest / "dagster.yaml").write_text(yaml.safe_dump(instance, sort_keys=False))
    for service in doc["services"].values():
        service["network_mode"] = "host"
        service.pop("ports", None)
        service.pop("depends_on", None)
        service["volumes"] = [str(dest / "dagster.yaml") + v[len("./dagster.yaml"):] if v.startswith("./dagster.yaml")
                              else str(DOCKER_DIR) + v[1:] if v.startswith("./") else v
                              for v in service.get("volumes", [])]
    (dest / "compose.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest / "compose.yml"


PROJECT = "acci-ops-e2e"
RUN_WORKER_LABEL = "io.acci.ops.role=run-worker"


@dataclass
class Stack:
    """The host-network stack on a private podman API service (``start_stack``); ``env`` is what
    docker-compose and the docker CLI are run with."""

    url: str
    compose: list[str]
    env: dict[str, str]
    service: PodmanService
    image_ref: str
    base: Path

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, check=check, capture_output=True, text=True,
                              timeout=120)

    def up(self, *services: str) -> None:
        subprocess.run([*self.compose, "up", "-d", "--force-recreate", *services], env=self.env, check=True,
                       capture_output=True, text=True, timeout=600)

    def wait_for_daemon(self, timeout: float = 180) -> None:
        """A (re)created daemon has loaded the instance and polls the run queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.docker("logs", f"{PROJECT}_dagster-daemon_1", check=False)
            if "QueuedRunCoordinatorDaemon" in logs.stdout + logs.stderr:
                return
            time.sleep(1)
        raise AssertionError(f"the daemon did not start polling the run queue within {timeout:g} s")

    def daemon_log(self) -> str:
        logs = self.docker("logs", "--tail", "30", f"{PROJECT}_dagster-daemon_1", check=False)
        return (logs.stdout + logs.stderr)[-3000:]

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = graphql(self.url, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                         "locationOrLoadError { __typename } } } } }", timeout=5)
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    return
            except (OSError, AssertionError, KeyError):
                pass
            time.sleep(1)
        logs = {name: self.docker("logs", "--tail", "5", f"{PROJECT}_{name}_1", check=False).stdout[-600:]
                for name in SERVICES}
        raise AssertionError(f"the UI did not load acci_ops within {timeout:g} s: {logs}")


def _docker_env(service: PodmanService, base: Path) -> dict[str, str]:
    config = base / "docker-config"
    config.mkdir(exist_ok=True)
    (config / "config.json").write_text("{}")
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(base), "DOCKER_HOST": service.docker_host,
            "DOCKER_CONFIG": str(config)}


def start_stack(base: Path, image_ref: str, registry_host: str, *, dagster_pg: tuple[str, int, str, str, str],
                env_file: Path) -> Stack:
    """Bring the shipped stack up (host networking, Dagster's storage on ``dagster_pg`` = (host, port, user,
    password, database)) on a new private podman service that may pull from ``registry_host``; returns
    once the UI has loaded acci_ops and the daemon polls the queue. ``stop_stack`` undoes it all."""
    from acci_ops.dev.podman_service import start_podman_service
    from acci_ops.lib.core.net import free_port

    base.mkdir(parents=True, exist_ok=True)
    service = start_podman_service(insecure_registries=[registry_host])
    try:  # nothing between the service starting and the stack's own cleanup may leak the service
        # The daemon runs as the image's user with the socket's group (DOCKER_SOCKET_GID), as with
        # /var/run/docker.sock (root:docker 0660); the private service's socket is root's 0600.
        service.socket.chmod(0o660)
        host, port, user, password, database = dagster_pg
        web_port = free_port()
        env = {**_docker_env(service, base), "ACCI_OPS_IMAGE": image_ref, "ACCI_OPS_ENV_FILE": str(env_file),
               "DAGSTER_POSTGRES_USER": user, "DAGSTER_POSTGRES_PASSWORD": password, "DAGSTER_POSTGRES_DB": database,
               "DAGSTER_POSTGRES_HOST": host, "DAGSTER_POSTGRES_PORT": str(port), "ACCI_OPS_RUN_NETWORK": "host",
               "ACCI_OPS_CODE_HOST": "127.0.0.1", "ACCI_OPS_CODE_PORT": str(free_port()),
               "DAGSTER_WEBSERVER_PORT": str(web_port), "DOCKER_SOCKET": str(service.socket), "DOCKER_SOCKET_GID": "0"}
        compose = ["docker-compose", "-p", PROJECT, "-f", str(host_network_stack(base))]
        stack = Stack(f"http://127.0.0.1:{web_port}", compose, env, service, image_ref, base)
    except BaseException:
        service.stop()
        raise
    try:
        stack.up()
        stack.wait_ready()
        stack.wait_for_daemon()
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    """down -v, the run-worker containers, the podman service and its storage."""
    subprocess.run([*stack.compose, "down", "-v", "--timeout", "5"], env=stack.env, capture_output=True, timeout=300)
    stack.service.stop()
