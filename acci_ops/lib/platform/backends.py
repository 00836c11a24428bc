"""Where ACCI Framework runs: Helm releases, Compose projects, or a local process.

One small interface (``up``/``down``) so DR drills, on-call recovery and later releases drive
any of them the same way. Commands are argv lists run through an injectable runner, with secrets
in the environment or in a private 0600 values file (never in argv), each call timed and its
output streamed to the log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from acci_ops.lib.core.commands import COMPOSE_ENV, HELM_ENV, CommandResult, child_env, pump_lines, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.platform.paths import deploy_dir
from acci_ops.lib.postgres.urls import DatabaseTarget

Log = Callable[[str], None]
Runner = Callable[..., CommandResult]


@dataclass(frozen=True)
class AppRuntime:
    """What the app is wired to; the URLs carry credentials and travel only in env/values files."""

    database: DatabaseTarget
    redis_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The app's DATABASE_URL (percent-encoded credentials, every option such as sslmode kept)
        and REDIS_URL."""
        return {"DATABASE_URL": self.database.to_url(), "REDIS_URL": self.redis_url, **self.extra_env}


class Platform:
    """Bring the app up (returning the base URL to verify) and, for drills, down again."""

    backend = "abstract"

    def up(self, runtime: AppRuntime, log: Log) -> str:
        raise NotImplementedError

    def down(self, log: Log) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.backend


@dataclass
class HelmPlatform(Platform):
    """``helm upgrade --install`` into a namespace with ``--wait`` and rollback on failure."""

    release: str
    namespace: str
    chart: str
    values_files: Sequence[str] = ()
    app_url: str = ""
    helm: str = "helm"
    kube_context: str | None = None
    timeout_seconds: int = 600
    runner: Runner = run_command
    backend = "helm"

    def __post_init__(self) -> None:
        if not Path(self.chart).joinpath("Chart.yaml").is_file():
            raise ConfigError(f"Helm chart {self.chart} not found (no Chart.yaml there)")
        for values in self.values_files:
            if not Path(values).is_file():
                raise ConfigError(f"Helm values file {values} not found")
        if not self.app_url:
            raise ConfigError("the helm backend needs the app URL to verify (app_url)")

    def _base(self, *args: str) -> list[str]:
        argv = [self.helm, *args, "--namespace", self.namespace]
        if self.kube_context:
            argv += ["--kube-context", self.kube_context]
        return argv

    def upgrade_argv(self, secret_values: str) -> list[str]:
        argv = self._base("upgrade", "--install", self.release, self.chart) + ["--create-namespace"]
        for values in self.values_files:
            argv += ["--values", values]
        # helm v4 spells --atomic as --rollback-on-failure: a failed upgrade is rolled back.
        argv += ["--values", secret_values, "--wait", "--timeout", f"{self.timeout_seconds}s", "--rollback-on-failure"]
        return argv

    def up(self, runtime: AppRuntime, log: Log) -> str:
        env = runtime.env()
        secrets = {"secrets": {"databaseUrl": env["DATABASE_URL"], "redisUrl": env["REDIS_URL"]}}
        with tempfile.TemporaryDirectory(prefix="acci-helm-") as private:
            path = os.path.join(private, "secret-values.yaml")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                yaml.safe_dump(secrets, handle)
            self.runner(self.upgrade_argv(path), timeout=self.timeout_seconds + 60, on_line=log, allow_env=HELM_ENV)
        return self.app_url.format(namespace=self.namespace, release=self.release)

    def down(self, log: Log) -> None:
        self.runner(self._base("uninstall", self.release) + ["--wait", "--timeout", f"{self.timeout_seconds}s"],
                    timeout=self.timeout_seconds + 60, on_line=log, allow_env=HELM_ENV)

    def rollback(self, revision: int, log: Log) -> None:
        self.runner(self._base("rollback", self.release, str(revision)) + ["--wait"],
                    timeout=self.timeout_seconds + 60, on_line=log, allow_env=HELM_ENV)

    def history(self) -> list[dict]:
        lines: list[str] = []
        self.runner(self._base("history", self.release) + ["--output", "json"], timeout=120, on_line=lines.append,
                    allow_env=HELM_ENV)
        return yaml.safe_load("\n".join(lines)) or []

    def describe(self) -> str:
        return f"helm release {self.release} in namespace {self.namespace}"


DRILL_OVERLAY = deploy_dir() / "compose" / "docker-compose.acci-ops.yml"


@dataclass
class ComposePlatform(Platform):
    """A Compose project (base file + prod override), ``up --wait``; ``down --volumes`` for drills.

    For a drill (``drill=True``) the app must use the isolated copy, not the stack's own database
    and cache, and must not take production's port: the overlay file wires the app's DATABASE_URL
    and REDIS_URL to the ones acci_ops passes, and the app is published on a free port
    (``ACCI_FRAMEWORK_PORT``), whose URL ``up`` returns."""

    project: str
    files: Sequence[str]
    app_url: str = "http://127.0.0.1:8080"
    compose: Sequence[str] = ("docker", "compose")
    timeout_seconds: int = 600
    runner: Runner = run_command
    drill: bool = False
    overlay: str = str(DRILL_OVERLAY)
    backend = "compose"

    def __post_init__(self) -> None:
        for path in [*self.files, *([self.overlay] if self.drill else [])]:
            if not Path(path).is_file():
                raise ConfigError(f"Compose file {path} not found")

    def _base(self) -> list[str]:
        argv = [*self.compose, "--project-name", self.project]
        for path in [*self.files, *([self.overlay] if self.drill else [])]:
            argv += ["--file", path]
        return argv

    def up(self, runtime: AppRuntime, log: Log) -> str:
        # The guide's Compose stack runs its own PostgreSQL: it is created with the credentials of the
        # database acci_ops restores into (for recovery that must be this service, published to acci_ops).
        db = runtime.database
        env = {**runtime.env(), "POSTGRES_USER": db.user or "acci", "POSTGRES_DB": db.dbname,
               "POSTGRES_PASSWORD": db.password or ""}
        url = self.app_url
        if self.drill:
            port = free_port()
            env["ACCI_FRAMEWORK_PORT"] = str(port)
            parts = urlsplit(self.app_url)
            url = parts._replace(netloc=f"{parts.hostname or '127.0.0.1'}:{port}").geturl()
        self.runner(self._base() + ["up", "--detach", "--wait", "--wait-timeout", str(self.timeout_seconds)],
                    env=env, timeout=self.timeout_seconds + 60, on_line=log, allow_env=COMPOSE_ENV)
        return url

    def down(self, log: Log) -> None:
        self.runner(self._base() + ["down", "--volumes", "--remove-orphans"], timeout=self.timeout_seconds,
                    on_line=log, allow_env=COMPOSE_ENV)

    def describe(self) -> str:
        return f"compose project {self.project}"


@dataclass
class LocalPlatform(Platform):
    """The app as a local process on a free port (the embedded default, and what tests drive)."""

    command: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 0
    cwd: str | None = None
    stop_timeout: float = 10
    backend = "local"
    _proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            self.command = shlex.split(self.command)
        if not self.command:
            raise ConfigError("the local backend needs the command that starts the app (ACCI_LOCAL_APP_COMMAND)")

    def up(self, runtime: AppRuntime, log: Log) -> str:
        port = self.port or free_port()
        argv = [part.format(port=port) for part in self.command]
        env = {**runtime.env(), "PORT": str(port), "HOST": self.host}
        log(f"starting {' '.join(argv)} on {self.host}:{port}")
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=child_env(env), cwd=self.cwd,
                                          start_new_session=True)
        except FileNotFoundError:
            raise ConfigError(f"cannot start the app: {argv[0]} not found") from None
        pump_lines(self._proc.stdout, lambda line: log(f"app: {line}"), deque(maxlen=50))
        time.sleep(0.05)
        if self._proc.poll() is not None:
            raise AcciOpsError(f"the app exited at once with code {self._proc.returncode}")
        return f"http://{self.host}:{port}"

    def down(self, log: Log) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        log(f"app stopped (exit code {self._proc.returncode})")

    def describe(self) -> str:
        return f"local process {' '.join(self.command)}"
