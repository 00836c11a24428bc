"""Compose releases by digest: pin the app service's image in a generated override file and ``up`` again.

The stack's own files stay as shipped (``docker-compose.yml`` reads ``${ACCI_FRAMEWORK_IMAGE:-...:latest}``);
a deploy adds one more ``--file``, written 0600 in a private directory, that sets
``services.<app>.image: repo@sha256:...``, so what runs is named by content whatever the environment holds.
Rollback is a deploy of the previous digest (Compose keeps no revisions), which ``deploy`` records from the
running app container before it replaces it.

Compose v2 (``docker compose``, or a v2 ``docker-compose``) waits itself (``up --wait --wait-timeout N``).
docker-compose 1.x (Debian's 1.29) has no ``--wait``: after ``up --detach`` the app's containers are polled
with ``docker inspect`` until they run the new image (and are healthy, where a healthcheck exists), then
the app's ``/health`` must answer 2xx, all within the same timeout. Which one runs is decided by the
version ``<compose> version`` reports, not by the command's name, and is logged.

Container state is read as data, not log lines: v2 ``ps --all --format json``, v1 ``docker ps`` by the
project's labels plus ``docker inspect --format`` with a template that prints the name, image and state only (never the
container's environment, which holds DATABASE_URL).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acci_ops.lib.core.commands import COMPOSE_ENV, CommandFailed, CommandTimeout, run_command
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.dr.probes import wait_for_health
from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform
from acci_ops.lib.platform.paths import deploy_dir
from acci_ops.lib.releases.deployers import (
    MAX_STDOUT,
    CurrentState,
    DeployFailed,
    DeployResult,
    ImageRef,
    Log,
    ReleaseTarget,
    RollbackTarget,
    Runner,
    expect,
    load_json,
    parse_image_ref,
    private_dir,
    shown,
    write_private_yaml,
)

COMPOSE_DIR = deploy_dir() / "compose"
DEFAULT_FILES = (str(COMPOSE_DIR / "docker-compose.yml"), str(COMPOSE_DIR / "docker-compose.prod.yml"))
DEFAULT_SERVICE = "app"  # the application service of deploy/compose/docker-compose.yml
STUCK = frozenset({"created", "restarting", "exited", "dead"})  # what a half-finished `up` leaves
READ_TIMEOUT = 120
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_SERVICE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$")
_CONTAINER_ID = re.compile(r"^[0-9a-f]{12,64}$")
# docker inspect prints exactly these fields, as one JSON object per container.
INSPECT_FORMAT = ('{"name":{{json .Name}},"image":{{json .Config.Image}},"state":{{json .State.Status}},'
                  '"health":{{if .State.Health}}{{json .State.Health.Status}}{{else}}""{{end}}}')
OVERRIDE_HEADER = ("# Written by acci_ops for a release: pins the app service to one image by digest.\n"
                   "# Generated; do not edit (the next deploy replaces it).\n")


@dataclass(frozen=True)
class ComposeFlavor:
    """The Compose CLI found: its argv prefix and version."""

    argv: tuple[str, ...]
    version: tuple[int, int]

    @property
    def waits(self) -> bool:
        """``up --wait`` exists from Compose 2.1 on."""
        return self.version >= (2, 1)

    def describe(self) -> str:
        how = "up --wait" if self.waits else "no up --wait: polling docker inspect, then /health"
        return f"{' '.join(self.argv)} {self.version[0]}.{self.version[1]} ({how})"


@dataclass(frozen=True)
class AppContainer:
    name: str
    image: str
    state: str
    health: str = ""


def parse_ps_json(stdout: bytes, project: str) -> list[AppContainer]:
    """Compose v2 ``ps --format json``: a JSON list (before 2.21) or one object per line (since)."""
    what = f"compose ps of project {project}"
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        return []
    if text.startswith("["):
        items = expect(load_json(text.encode(), what), list, what)
    else:
        items = [load_json(line.encode(), f"a line of {what}") for line in text.splitlines() if line.strip()]
    containers = []
    for index, item in enumerate(items):
        entry = expect(item, dict, f"entry {index} of {what}")
        name = expect(entry.get("Name"), str, f"'Name' of entry {index} of {what}")
        image = expect(entry.get("Image"), str, f"'Image' of container {shown(name)}")
        state = expect(entry.get("State"), str, f"'State' of container {shown(name)}")
        health = entry.get("Health") or ""
        containers.append(AppContainer(name, image, state.lower(), expect(health, str, f"'Health' of {shown(name)}")))
    return containers


def parse_inspect_lines(stdout: bytes) -> list[AppContainer]:
    """``docker inspect --format INSPECT_FORMAT``: one JSON object per container."""
    containers = []
    for line in stdout.decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        entry = expect(load_json(line.encode(), "docker inspect of the app containers"), dict,
                       "docker inspect of the app containers")
        name = expect(entry.get("name"), str, "'name' in docker inspect of the app containers").lstrip("/")
        image = expect(entry.get("image"), str, f"'image' of container {shown(name)}")
        state = expect(entry.get("state"), str, f"'state' of container {shown(name)}")
        health = expect(entry.get("health", ""), str, f"'health' of container {shown(name)}")
        containers.append(AppContainer(name, image, state.lower(), health))
    return containers


def pinned(image: str) -> str | None:
    try:
        return str(parse_image_ref(image))
    except ConfigError:
        return None


def services_in(files: Sequence[str]) -> tuple[set[str], object]:
    """The services the Compose files define, and the first file's ``version`` key (if any)."""
    services: set[str] = set()
    version = None
    for index, path in enumerate(files):
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Compose file {path} cannot be read ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"Compose file {path} is not a YAML mapping")
        if index == 0:
            version = data.get("version")
        found = data.get("services") or {}
        if isinstance(found, dict):
            services.update(str(name) for name in found)
    return services, version


@dataclass
class ComposeRelease(ReleaseTarget):
    """A Compose project the release jobs deploy to, by digest.

    ``files``: the stack's Compose files (default: the shipped base and prod files); ``service``: the app
    service whose image is pinned. ``compose``: the CLI argv; None detects it (``docker compose`` when
    ``<docker> compose version`` works, else ``<docker_compose>``). ``run_dir``: where the override file
    is kept (0700 directory, 0600 file) so operators and later commands can add it too; None writes it
    in a temporary directory removed after the deploy. The app's secrets (POSTGRES_PASSWORD, ...) come
    from the ``runtime`` given to ``deploy`` (in the compose command's environment), or else from the
    project's ``.env`` file."""

    project: str
    files: Sequence[str] = DEFAULT_FILES
    service: str = DEFAULT_SERVICE
    app_url: str = "http://127.0.0.1:8080"
    compose: Sequence[str] | None = None
    docker: str = "docker"
    docker_compose: str = "docker-compose"
    timeout_seconds: int = 600
    poll_seconds: float = 2.0
    run_dir: str | None = None
    runner: Runner = run_command
    backend = "compose"
    _flavor: ComposeFlavor | None = field(default=None, init=False, repr=False)
    _version_key: object = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not _PROJECT.fullmatch(self.project):
            raise ConfigError(f"Compose project name {shown(self.project)} must be lowercase letters, digits, '-' "
                              "and '_', starting with a letter or digit")
        if not self.files:
            raise ConfigError("the compose release target needs the stack's Compose files")
        for path in self.files:
            if not Path(path).is_file():
                raise ConfigError(f"Compose file {path} not found")
        if not _SERVICE.fullmatch(self.service):
            raise ConfigError(f"Compose service name {shown(self.service)} is not a valid service name")
        services, self._version_key = services_in(self.files)
        if self.service not in services:
            raise ConfigError(f"service {self.service!r} is not defined in {', '.join(self.files)} "
                              f"(services: {', '.join(sorted(services)) or 'none'})")
        if isinstance(self.timeout_seconds, bool) or not isinstance(self.timeout_seconds, int) \
                or self.timeout_seconds < 1:
            raise ConfigError("compose timeout must be a positive number of seconds, "
                              f"got {shown(self.timeout_seconds)}")
        if self.compose is not None and (isinstance(self.compose, str) or not self.compose):
            raise ConfigError("compose must be an argv list such as ['docker', 'compose'], or None to detect it")

    @classmethod
    def from_platform(cls, platform: ComposePlatform, **overrides: Any) -> ComposeRelease:
        """The release target for the project DR drives (same project, files, URL); the Compose CLI is
        detected (a v1-only host has no ``docker compose``) unless ``compose=`` is given."""
        fields = dict(project=platform.project, files=tuple(platform.files), app_url=platform.app_url,
                      timeout_seconds=platform.timeout_seconds, runner=platform.runner)
        return cls(**{**fields, **overrides})

    def describe(self) -> str:
        return f"compose project {self.project} (service {self.service})"

    @property
    def override_name(self) -> str:
        return f"{self.project}.release.yml"

    # --- the CLI ------------------------------------------------------------------------------

    def flavor(self, log: Log) -> ComposeFlavor:
        """The Compose CLI to use, found once: its ``version`` answer decides v2 (--wait) or v1."""
        if self._flavor is not None:
            return self._flavor
        candidates = [tuple(self.compose)] if self.compose else [(self.docker, "compose"), (self.docker_compose,)]
        tried: list[str] = []
        for argv in candidates:
            name = " ".join(argv)
            try:
                result = self.runner([*argv, "version"], timeout=60, allow_env=COMPOSE_ENV, capture_stdout=True,
                                     max_stdout_bytes=2**20, check=False)
            except ConfigError:
                tried.append(f"{name}: not found")
                continue
            if result.returncode != 0:
                tried.append(f"`{name} version` exited {result.returncode}")
                continue
            match = re.search(r"version v?(\d+)\.(\d+)", result.stdout.decode(errors="replace"), re.IGNORECASE)
            if not match:
                tried.append(f"`{name} version` printed no version number")
                continue
            self._flavor = ComposeFlavor(tuple(argv), (int(match.group(1)), int(match.group(2))))
            log(f"compose: using {self._flavor.describe()}")
            return self._flavor
        raise ConfigError(f"no Docker Compose CLI works here ({'; '.join(tried)}); install Compose v2 "
                          "(`docker compose`) or docker-compose")

    def _base(self, flavor: ComposeFlavor, override: Path | None = None) -> list[str]:
        argv = [*flavor.argv, "--project-name", self.project]
        for path in self.files:
            argv += ["--file", str(path)]
        if override is not None:
            argv += ["--file", str(override)]
        return argv

    def _capture(self, argv: list[str], log: Log) -> bytes:
        try:
            return self.runner(argv, timeout=READ_TIMEOUT, on_line=log, allow_env=COMPOSE_ENV, capture_stdout=True,
                               max_stdout_bytes=MAX_STDOUT).stdout
        except CommandFailed as exc:
            raise AcciOpsError(f"reading the app containers of compose project {self.project} failed: {exc}") from None

    def containers(self, log: Log) -> list[AppContainer]:
        """The app service's containers (running or not) with their image and state."""
        flavor = self.flavor(log)
        if flavor.version[0] >= 2:
            return parse_ps_json(self._capture(self._base(flavor) + ["ps", "--all", "--format", "json", self.service],
                                               log), self.project)
        # The containers docker-compose 1.x labels as this project's service (not its one-off `run`s): what
        # `docker-compose ps -q` lists, asked of the docker CLI, which answers in milliseconds where
        # docker-compose 1.x, a Python program, takes about a second to start.
        ids = self._capture(self.ps_argv(), log).decode(errors="replace").split()
        for cid in ids:
            if not _CONTAINER_ID.fullmatch(cid):
                raise AcciOpsError(f"docker ps printed {shown(cid)}, not a container id")
        if not ids:
            return []
        return parse_inspect_lines(self._capture([self.docker, "inspect", "--format", INSPECT_FORMAT, *ids], log))

    def ps_argv(self) -> list[str]:
        """docker-compose 1.x: the app service's containers, running or not, by the labels it sets."""
        return [self.docker, "ps", "--all", "--quiet", "--no-trunc",
                "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={self.service}",
                "--filter", "label=com.docker.compose.oneoff=False"]

    def current(self, log: Log) -> CurrentState:
        found = self.containers(log)
        if not found:
            return CurrentState(None, None, "absent")
        running = [c for c in found if c.state == "running"]
        image = pinned(running[0].image) if running else None
        status = ",".join(sorted({c.state for c in found}))
        return CurrentState(image, None, status, stuck=any(c.state in STUCK for c in found))

    # --- changing state -----------------------------------------------------------------------

    def _env(self, runtime: AppRuntime | None) -> dict[str, str]:
        """What the Compose files interpolate, as ComposePlatform passes it (environment, never argv)."""
        if runtime is None:
            return {}
        db = runtime.database
        return {**runtime.env(), "POSTGRES_USER": db.user or "acci", "POSTGRES_DB": db.dbname,
                "POSTGRES_PASSWORD": db.password or ""}

    def override(self, image: ImageRef) -> dict:
        """The override file's content: only the app service's image."""
        data: dict = {}
        if self._version_key is not None:  # docker-compose 1.x refuses to merge files of different versions
            data["version"] = self._version_key
        data["services"] = {self.service: {"image": str(image)}}
        return data

    def _up(self, image: ImageRef, runtime: AppRuntime | None, log: Log, *, previous: str | None) -> None:
        flavor = self.flavor(log)
        self._pull(image, log, previous=previous)
        started = time.monotonic()
        with private_dir(self.run_dir, prefix="acci-compose-") as private:
            path = write_private_yaml(private / self.override_name, self.override(image), OVERRIDE_HEADER)
            argv = self._base(flavor, path) + ["up", "--detach"]
            if flavor.waits:
                argv += ["--wait", "--wait-timeout", str(self.timeout_seconds)]
            log(f"compose: deploying {image} as service {self.service} of project {self.project} "
                f"(replacing {previous or 'nothing pinned'}, timeout {self.timeout_seconds} s)")
            try:
                self.runner(argv, env=self._env(runtime), timeout=self.timeout_seconds + 60, on_line=log,
                            allow_env=COMPOSE_ENV)
            except CommandTimeout:
                raise DeployFailed(f"compose up of {image} in project {self.project} did not finish within "
                                   f"{self.timeout_seconds + 60} s and was killed", previous_image_ref=previous,
                                   rolled_back=False) from None
            except CommandFailed as exc:
                raise DeployFailed(f"compose up of {image} in project {self.project} failed: {exc}",
                                   previous_image_ref=previous, rolled_back=False) from None
        if not flavor.waits:
            self._wait_without_compose(image, started, log, previous=previous)

    def _pull(self, image: ImageRef, log: Log, *, previous: str | None) -> None:
        """Pull the digest before anything is replaced: an image the engine cannot fetch (registry
        down, digest gone, credentials refused) fails the deploy while the old containers still run.
        The pull gets no variable of the app's (no database password): only the engine's own.

        A digest the engine already holds is not pulled again: it is that exact content, and a
        rollback or a repair to the previous digest must work while the registry is down."""
        try:
            present = self.runner([self.docker, "image", "inspect", "--format", "{{.Id}}", str(image)], env={},
                                  timeout=60, check=False, capture_stdout=True, allow_env=COMPOSE_ENV)
        except CommandTimeout:
            present = None
        if present is not None and present.returncode == 0:
            log(f"compose: {image} is already on the engine, not pulled")
            return
        log(f"compose: pulling {image}")
        try:
            self.runner([self.docker, "pull", str(image)], env={}, timeout=self.timeout_seconds,
                        on_line=log, allow_env=COMPOSE_ENV)
        except CommandTimeout:
            raise DeployFailed(f"pulling {image} did not finish within {self.timeout_seconds} s; nothing was changed "
                               f"in project {self.project}", previous_image_ref=previous, rolled_back=False) from None
        except CommandFailed as exc:
            raise DeployFailed(f"pulling {image} failed, nothing was changed in project {self.project}: {exc}",
                               previous_image_ref=previous, rolled_back=False) from None

    def _wait_without_compose(self, image: ImageRef, started: float, log: Log, *, previous: str | None) -> None:
        """docker-compose 1.x: poll docker inspect until every app container runs ``image`` (healthy,
        where it has a healthcheck), then wait for ``/health``; the deploy's timeout bounds both."""
        deadline = started + self.timeout_seconds
        last = "no app container"
        while True:
            found = self.containers(log)
            mine = [c for c in found if c.image == str(image)]
            if mine and len(mine) == len(found) and all(c.state == "running" and c.health in ("", "healthy")
                                                         for c in mine):
                break
            last = ", ".join(f"{c.name} {c.state}{' ' + c.health if c.health else ''} ({c.image})" for c in found) \
                or last
            broken = [c for c in mine if c.state == "dead" or c.health == "unhealthy"]
            if broken or time.monotonic() + self.poll_seconds > deadline:
                why = "is broken" if broken else f"did not run within {self.timeout_seconds} s"
                raise DeployFailed(f"the app of compose project {self.project} {why} with {image} (polled docker "
                                   f"inspect; docker-compose 1.x has no up --wait): {last}",
                                   previous_image_ref=previous, rolled_back=False)
            time.sleep(self.poll_seconds)
        log(f"compose: every {self.service} container runs {image}; waiting for {self.url}/health")
        try:
            wait_for_health(self.url, deadline_seconds=max(deadline - time.monotonic(), 1), log=log)
        except AcciOpsError as exc:
            raise DeployFailed(f"the app of compose project {self.project} runs {image} but is not healthy: {exc}",
                               previous_image_ref=previous, rolled_back=False) from None

    @property
    def url(self) -> str:
        return self.app_url.rstrip("/")

    def deploy(self, image_ref: str, runtime: AppRuntime | None, log: Log) -> DeployResult:
        image = parse_image_ref(image_ref)
        started = time.monotonic()
        before = self.current(log)
        previous = before.image_ref
        if before.status != "absent" and previous is None:
            log(f"compose: no running {self.service} container of project {self.project} is pinned by digest "
                f"({before.status}); there is no previous digest to roll back to")
        self._up(image, runtime, log, previous=previous)
        seconds = round(time.monotonic() - started, 3)
        log(f"compose: project {self.project} runs {image} ({seconds:.1f} s)")
        return DeployResult(self.url, None, previous, seconds, str(image))

    def rollback(self, to: RollbackTarget, log: Log, *, runtime: AppRuntime | None = None) -> DeployResult:
        """Deploy the earlier digest again: Compose keeps no revisions to return to."""
        if to.image_ref is None:
            raise ConfigError(f"compose project {self.project} keeps no revisions: roll back to an image_ref "
                              "(the previous_image_ref a deploy returned)")
        log(f"compose: rolling project {self.project} back to {to.image_ref}")
        return self.deploy(to.image_ref, runtime, log)

    def recover_stuck(self, log: Log, *, last_image_ref: str | None = None,
                      runtime: AppRuntime | None = None) -> str | None:
        """App containers left created/restarting/exited/dead by a half-finished ``up`` are brought back
        by running ``up`` again with ``last_image_ref`` (the last deploy that succeeded, which the caller
        recorded): the stuck containers may be the new, broken image, so theirs is not used."""
        found = self.containers(log)
        stuck = [c for c in found if c.state in STUCK]
        if not stuck:
            return None
        states = ", ".join(f"{c.name} {c.state}" for c in stuck)
        if last_image_ref is None:
            raise AcciOpsError(f"compose project {self.project} has app containers left by a half-finished up "
                               f"({states}); give the last deployed image (repo@sha256:...) to recover it")
        image = parse_image_ref(last_image_ref, "last deployed image reference")
        self._up(image, runtime, log, previous=None)
        line = (f"compose project {self.project} was left with {states} by a half-finished up; "
                f"ran up again with {image}")
        log(line)
        return line
