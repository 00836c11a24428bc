"""buildah, skopeo and podman with configuration and storage of our own, nothing global changed.

Every container tool reads its configuration from files under one directory of ours (storage
root and runroot with the vfs driver, storage.conf, containers.conf, registries.conf,
policy.json), named through its environment (``CONTAINERS_STORAGE_CONF``, ``CONTAINERS_CONF``,
``CONTAINERS_REGISTRIES_CONF``) and, where a tool has no variable for it, a flag
(``--signature-policy`` / ``--policy``). So two ``ContainerTools`` (a test session and ``./run
dev``) never see each other's images, and /etc/containers is never edited.

Registry credentials reach a tool only through an auth file (mode 0600, in a private 0700
directory under ``base/auth``, deleted afterwards) named by ``--authfile``: never ``--creds`` in
argv, which anyone on the machine can read in ``ps`` and which lands in logs. Whatever a killed
acci_ops leaves (auth directories, build directories, run roots, the tools it started: each call
records its process group in ``base/pids``) is found again and removed by ``cleanup.remove_stale``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from acci_ops.lib.core.commands import CommandResult, LineSink, child_env, find_tool, process_start_ticks, run_command
from acci_ops.lib.core.errors import ConfigError

# Debian package of each tool, for the one-line "install it" error.
PACKAGES = {"buildah": "buildah", "skopeo": "skopeo", "podman": "podman", "runc": "runc",
            "docker-registry": "docker-registry"}
# podman cannot run a container here with its default limits ("setrlimit RLIMIT_NOFILE: Operation
# not permitted") nor with crun on cgroups v1 hybrid hosts: see docs/images.md "Containers on a host like this one".
DEFAULT_ULIMITS = ("nofile=20000:20000", "nproc=32768:32768")
# What the tools may inherit from acci_ops's environment besides the base allow-list: proxies for
# reaching a registry. Their configuration is ours (set explicitly), never the operator's.
TOOL_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")


RUN_ROOT_MAX = 48  # podman: "the specified runroot is longer than 50 characters"
RUN_ROOT_PREFIX = "acci-run-"
AUTH_PREFIX = "acci-auth-"
# In a run root outside ``base`` (/tmp/acci-run-<hash>): the base it belongs to, so a cleanup can
# tell which run roots are left over from a build directory that is gone.
RUN_ROOT_MARKER = ".acci-base"
# In a directory acci_ops works in (an auth directory, a build directory): "<pid> <start ticks>" of
# the process using it; a cleanup leaves it alone while that process lives.
OWNER_FILE = ".acci-owner"


def run_root_for(base: Path) -> Path:
    """The short run root of a base whose own ``base/run`` is too long for podman."""
    digest = hashlib.sha256(str(base).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"{RUN_ROOT_PREFIX}{digest}"


def claim(directory: Path) -> None:
    """Mark ``directory`` as in use by this process (``OWNER_FILE``): ``cleanup.remove_stale``
    never removes it while the process lives, however old it is."""
    (Path(directory) / OWNER_FILE).write_text(f"{os.getpid()} {process_start_ticks(os.getpid()) or 0}\n")


def default_storage_dir() -> Path:
    """Where builds keep layers when ACCI_IMAGE_STORAGE_DIR is unset: /var/tmp survives reboots
    (the layer cache is worth keeping) and is not a tmpfs on most hosts (images are large)."""
    return Path("/var/tmp/acci_ops-images")


def _toml_str(value: str | os.PathLike[str]) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


@dataclass
class ContainerTools:
    """The container tools, configured to keep everything under ``base``.

    ``base/storage`` (graph root, vfs), ``base/run`` (run root, podman's tmp dir), ``base/conf``
    (the four config files), ``base/tmp`` (TMPDIR of the tools: buildah writes whole layers there).
    """

    base: Path
    runtime: str = "runc"
    ulimits: Sequence[str] = DEFAULT_ULIMITS

    def __post_init__(self) -> None:
        self.base = Path(self.base).resolve()
        self.storage_root = self.base / "storage"
        self.run_root = self.base / "run"
        if len(str(self.run_root / "storage")) > RUN_ROOT_MAX:
            # podman refuses a run root longer than 50 characters: state that is gone at reboot
            # anyway goes to a short directory named after the base, so one base keeps one run root.
            self.run_root = run_root_for(self.base)
        self.conf_dir = self.base / "conf"
        self.tmp_dir = self.base / "tmp"
        self.pid_dir = self.base / "pids"  # one "<pgid> ..." file per running tool (run_command's pidfile)
        self.auth_dir = self.base / "auth"  # registry auth directories (auth_file(..., directory=))
        for directory in (self.storage_root, self.run_root, self.conf_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if not self.run_root.is_relative_to(self.base):
            (self.run_root / RUN_ROOT_MARKER).write_text(str(self.base) + "\n")
        self.storage_conf = self.conf_dir / "storage.conf"
        self.containers_conf = self.conf_dir / "containers.conf"
        self.registries_conf = self.conf_dir / "registries.conf"
        self.policy_json = self.conf_dir / "policy.json"
        self._write_configs()

    def _write_configs(self) -> None:
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f"runroot = {_toml_str(self.run_root / 'storage')}\n"
            f"graphroot = {_toml_str(self.storage_root)}\n")
        ulimits = ", ".join(_toml_str(u) for u in self.ulimits)
        self.containers_conf.write_text(
            "[containers]\n"
            f"default_ulimits = [{ulimits}]\n"
            "[engine]\n"
            f"runtime = {_toml_str(self.runtime)}\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f"events_logfile_path = {_toml_str(self.run_root / 'events.log')}\n"
            f"tmp_dir = {_toml_str(self.run_root / 'libpod')}\n"
            f"static_dir = {_toml_str(self.storage_root / 'libpod')}\n"
            f"volume_path = {_toml_str(self.storage_root / 'volumes')}\n"
            "[network]\n"
            f"network_config_dir = {_toml_str(self.conf_dir / 'networks')}\n")
        # Fully qualified names only: an unqualified name must never silently resolve to docker.io.
        self.registries_conf.write_text("unqualified-search-registries = []\n")
        # Local images and a registry of the operator's choosing; signature verification is out of
        # scope here (nothing is pulled from a public registry).
        self.policy_json.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n")

    # -- environment and argv -----------------------------------------------------------------
    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a buildah/skopeo/podman child: the allow-list plus our config files."""
        own = {
            "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            "CONTAINERS_CONF": str(self.containers_conf),
            "CONTAINERS_REGISTRIES_CONF": str(self.registries_conf),
            "XDG_CONFIG_HOME": str(self.conf_dir / "xdg"),  # no per-user config files sneak in
            "TMPDIR": str(self.tmp_dir),
            "BUILDAH_ISOLATION": "chroot",
            "STORAGE_DRIVER": "vfs",
        }
        own.update(extra or {})
        return child_env(own, allow=TOOL_ENV)

    def tool(self, name: str) -> str:
        """The path of a container tool, or a ConfigError naming the package to install."""
        package = PACKAGES.get(name, name)
        return find_tool(name, hint=f"install it with `apt-get install -y {package}` (./run test does this)")

    def storage_args(self) -> list[str]:
        return ["--storage-driver", "vfs", "--root", str(self.storage_root),
                "--runroot", str(self.run_root / "storage")]

    def buildah_argv(self, *args: str) -> list[str]:
        return [self.tool("buildah"), *self.storage_args(), *args]

    def skopeo_argv(self, *args: str) -> list[str]:
        return [self.tool("skopeo"), "--policy", str(self.policy_json), "--registries-conf",
                str(self.registries_conf), *args]

    def podman_argv(self, *args: str) -> list[str]:
        return [self.tool("podman"), *self.storage_args(), "--cgroup-manager", "cgroupfs", "--events-backend",
                "file", "--runtime", self.tool(self.runtime) if "/" not in self.runtime else self.runtime,
                "--tmpdir", str(self.run_root / "libpod"), *args]

    def run_args(self) -> list[str]:
        """``podman run`` options this machine needs (explicit ulimits, as in containers.conf)."""
        out: list[str] = []
        for limit in self.ulimits:
            out += ["--ulimit", limit]
        return out

    # -- running -----------------------------------------------------------------------------
    def _run(self, argv: list[str], log: LineSink | None, timeout: float | None, env: Mapping[str, str] | None,
             check: bool, capture_stdout: bool) -> CommandResult:
        pidfile = self.pid_dir / f"{uuid.uuid4().hex}.pid"
        return run_command(argv, env=self.env(env), on_line=log, timeout=timeout, check=check,
                           capture_stdout=capture_stdout, pidfile=pidfile)

    def buildah(self, *args: str, log: LineSink | None = None, timeout: float | None = 1800,
                env: Mapping[str, str] | None = None, check: bool = True,
                capture_stdout: bool = False) -> CommandResult:
        return self._run(self.buildah_argv(*args), log, timeout, env, check, capture_stdout)

    def skopeo(self, *args: str, log: LineSink | None = None, timeout: float | None = 1800,
               env: Mapping[str, str] | None = None, check: bool = True, capture_stdout: bool = False) -> CommandResult:
        return self._run(self.skopeo_argv(*args), log, timeout, env, check, capture_stdout)

    def podman(self, *args: str, log: LineSink | None = None, timeout: float | None = 600,
               env: Mapping[str, str] | None = None, check: bool = True, capture_stdout: bool = False) -> CommandResult:
        return self._run(self.podman_argv(*args), log, timeout, env, check, capture_stdout)

    def remove_storage(self) -> None:
        """Delete everything under ``base`` (images, containers, configs) and the run root."""
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.run_root, ignore_errors=True)


def auth_json(registry_host: str, username: str, password: str) -> str:
    """The containers-auth.json text for one registry (``host[:port]``)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {registry_host: {"auth": token}}})


@contextmanager
def auth_file(registry_host: str, username: str | None, password: str | None, *,
              directory: str | os.PathLike | None = None) -> Iterator[Path | None]:
    """An auth file for ``registry_host`` (0600, in a private 0700 ``acci-auth-*`` directory),
    deleted on exit.

    ``directory``: where that directory is made (``ContainerTools.auth_dir``), so that what a killed
    run leaves behind is found and removed by ``cleanup.remove_stale``; default the temp directory.
    Yields None when there are no credentials (anonymous registry). Pass it as ``--authfile``."""
    if not username and not password:
        yield None
        return
    if not username or not password:
        raise ConfigError("registry credentials are incomplete: set both ACCI_REGISTRY_USERNAME and "
                          "ACCI_REGISTRY_PASSWORD, or neither")
    parent = None
    if directory is not None:
        parent = Path(directory)
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent.chmod(0o700)
    private = Path(tempfile.mkdtemp(prefix=AUTH_PREFIX, dir=parent))  # mkdtemp: mode 0700, owned by us
    path = private / "auth.json"
    try:
        claim(private)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(auth_json(registry_host, username, password))
        yield path
    finally:
        shutil.rmtree(private, ignore_errors=True)
