"""The container engines that run a staged image (``ACCI_CONTAINER_ENGINE``): podman or Docker.

The smoke test is written once against ``ContainerEngine``; an engine only says how an image of the
staged OCI layout gets into it (``load``) and out again (``unload``), and which options ``run`` and
``rm`` need. Both CLIs share the rest of the argv (``run -d --name``, ``container inspect
--format``, ``logs --tail``).

The container runs with ``--network none``: its own network namespace holding only a loopback
interface, so it reaches nothing (not this machine's loopback services, not its other addresses, not
the outside). The smoke test talks to it through ``network_namespace``: a handle on that namespace
(``/proc/<pid>/ns/net`` of the container's first process, checked to be the container's own through
its cgroup), in which a short-lived thread opens each probe socket (``setns`` changes the namespace
of one thread only), so the probes reach the app on the container's own 127.0.0.1 and no port is
published anywhere. That needs the engine on this machine and the right to enter the namespace
(root, as the rootful engines here run); otherwise the smoke test fails saying so.

- ``PodmanEngine``: daemonless, in acci_ops's own container storage (``ContainerTools``); the image
  is copied from the layout with ``skopeo copy oci:DIR containers-storage:localhost/acci-smoke-<id>``
  (a generated name: ``podman pull oci:DIR`` would name it after the directory's path, which is
  not a valid reference when a path component starts with a dot or has capitals or spaces) and run
  by its image id.
- ``DockerEngine``: a Docker engine at ``ACCI_DOCKER_HOST`` (default the local socket). The
  host-platform image is copied from the layout straight into the engine with ``skopeo copy oci:DIR
  docker-daemon:NAME`` (nothing is pushed to a registry). The docker CLI gets the endpoint as
  ``DOCKER_HOST`` in its own environment; skopeo, which ignores ``DOCKER_HOST``, as
  ``--dest-daemon-host``. An image the engine already held is run as it is and left alone.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import tempfile
import threading
import urllib.parse
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from acci_ops.lib.core.commands import CommandResult, LineSink, find_tool, run_command
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.tools import TOOL_ENV, ContainerTools

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# What the docker CLI may inherit besides the base allow-list: its client config and TLS settings
# (never DOCKER_HOST: the endpoint is always the configured one, set explicitly).
DOCKER_ENV = ("DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", *TOOL_ENV)


class EngineUnreachable(AcciOpsError):
    """The container engine does not answer; the message is the one line to show."""


class NamespaceUnavailable(AcciOpsError):
    """The container's network namespace cannot be entered from here; the message says why."""


CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class NetworkNamespace:
    """An open handle on a container's network namespace (the fd keeps it valid even if the
    container's process is replaced); sockets made by ``socket`` live in that namespace."""

    def __init__(self, fd: int, description: str) -> None:
        self.fd = fd
        self.description = description

    def socket(self, factory: type[socket.socket] = socket.socket) -> socket.socket:
        """A new TCP socket inside the namespace (only the helper thread enters it)."""
        made: dict[str, object] = {}

        def enter() -> None:
            try:
                _setns(self.fd)
                made["socket"] = factory(socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                made["error"] = exc

        thread = threading.Thread(target=enter, name="acci-smoke-netns", daemon=True)
        thread.start()
        thread.join()
        if "error" in made:
            error = made["error"]
            assert isinstance(error, OSError)
            raise NamespaceUnavailable(f"cannot enter {self.description}: {error.strerror or error}"
                                       + ("; the smoke test must run as root" if error.errno == 1 else ""))
        sock = made["socket"]
        assert isinstance(sock, socket.socket)
        return sock

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_network_namespace(pid: int, container_id: str, name: str) -> NetworkNamespace:
    """The network namespace of process ``pid``, once it is proven to be container ``container_id``'s
    (its cgroup names the id: a pid reported by an engine on another machine is some other process
    here) and not this process's own (a container on the host network would be refused)."""
    if pid <= 0:
        raise NamespaceUnavailable(f"container {name} has no running process")
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceUnavailable(f"container {name}'s process {pid} is not on this machine: the smoke test needs "
                                   "the container engine to run here") from None
    except PermissionError:
        raise NamespaceUnavailable(f"cannot open the network namespace of container {name}: permission denied; the "
                                   "smoke test must run as root") from None
    try:
        try:
            cgroups = open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace").read()
        except OSError:
            cgroups = ""
        if not container_id or container_id not in cgroups:
            raise NamespaceUnavailable(f"process {pid} is not container {name}'s on this machine: the smoke test needs "
                                       "the container engine to run here")
        if os.fstat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
            raise NamespaceUnavailable(f"container {name} shares this machine's network namespace; refusing to "
                                       "smoke-test it there")
    except BaseException:
        os.close(fd)
        raise
    return NetworkNamespace(fd, f"the network namespace of container {name}")


@dataclass(frozen=True)
class LoadedImage:
    """An image made available to an engine for one run: ``ref`` is what ``run`` is given;
    ``owned`` when the load created the image (so ``unload`` removes it); ``added_names`` names the
    load added to an image that was already there (only those are removed)."""

    ref: str
    image_id: str
    owned: bool
    added_names: tuple[str, ...] = ()


def split_platform(platform: str) -> tuple[str, str, str]:
    """``linux/arm/v7`` -> ``("linux", "arm", "v7")``; the variant is "" when absent."""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise AcciOpsError(f"platform {platform!r} is not os/arch[/variant]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


class ContainerEngine(ABC):
    """One engine's CLI, as the smoke test uses it."""

    name: str = ""

    @abstractmethod
    def cli(self, *args: str, log: LineSink | None = None, timeout: float | None = 600,
            env: Mapping[str, str] | None = None, check: bool = True) -> CommandResult:
        """Run the engine's CLI with ``args``; ``env`` adds variables to its environment only."""

    def check(self) -> None:
        """Raise EngineUnreachable when the engine cannot be used at all (daemonless: never)."""
        return None

    @abstractmethod
    def load(self, oci_dir: Path, platform: str, config_digest: str, say: LineSink) -> LoadedImage:
        """Make the ``platform`` image of the OCI layout runnable by this engine."""

    @abstractmethod
    def unload(self, image: LoadedImage) -> str:
        """Undo ``load`` (only what it added); return a problem, or "" when it worked."""

    def run_options(self) -> list[str]:
        """Options this engine's ``run`` needs on this machine and for isolation (e.g. no proxy
        variables handed in)."""
        return []

    def remove_options(self) -> list[str]:
        """Options of ``rm`` besides ``-f`` (no grace period, no error for a missing container)."""
        return []

    def run(self, name: str, image: str, options: list[str], command: list[str], *,
            env: Mapping[str, str], log: LineSink) -> CommandResult:
        """Start ``image`` detached in a network namespace of its own with nothing but loopback
        (``--network none``); ``env`` values reach the container only through ``--env NAME`` in
        ``options`` (argv carries the name, never the value)."""
        return self.cli("run", "-d", "--name", name, "--network", "none", *self.run_options(), *options, image,
                        *command, log=log, env=env, timeout=120)

    def network_namespace(self, name: str) -> NetworkNamespace:
        """The running container's network namespace (see ``open_network_namespace``)."""
        result = self.cli("container", "inspect", "--format", "{{.State.Pid}} {{.Id}}", name, timeout=30,
                          check=False)
        parts = result.last_line.split()
        if result.returncode != 0 or len(parts) != 2 or not parts[0].isdigit():
            raise NamespaceUnavailable(f"cannot tell the process of container {name}: "
                                       f"{result.last_line or 'no answer'}")
        return open_network_namespace(int(parts[0]), parts[1], name)

    def state(self, name: str) -> tuple[str, int]:
        """``(status, exit code)`` of a container, ``("unknown", -1)`` when it cannot be told."""
        result = self.cli("container", "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name,
                          timeout=30, check=False)
        parts = result.last_line.split()
        if result.returncode != 0 or len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            return "unknown", -1
        return parts[0], int(parts[1])

    def logs(self, name: str, lines: int = 20) -> CommandResult:
        return self.cli("logs", "--tail", str(lines), name, timeout=30, check=False)

    def remove_container(self, name: str) -> str:
        """Remove the container, forced; return a problem, or "" when it is gone."""
        try:
            result = self.cli("rm", "-f", *self.remove_options(), name, timeout=60, check=False)
        except AcciOpsError as exc:
            return f"container {name} not removed: {exc}"
        if result.returncode != 0 and "no such container" not in result.last_line.lower():
            return f"container {name} not removed: {result.last_line}"
        return ""


@dataclass
class PodmanEngine(ContainerEngine):
    """podman over acci_ops's own container storage (runc, explicit ulimits: docs/images.md,
    "Containers on a host like this one")."""

    tools: ContainerTools
    name: str = "podman"

    def cli(self, *args: str, log: LineSink | None = None, timeout: float | None = 600,
            env: Mapping[str, str] | None = None, check: bool = True) -> CommandResult:
        return self.tools.podman(*args, log=log, timeout=timeout, env=env, check=check)

    def run_options(self) -> list[str]:
        # --http-proxy=false: podman would otherwise copy the proxy variables it inherited into the container.
        return [*self.tools.run_args(), "--http-proxy=false"]

    def remove_options(self) -> list[str]:
        return ["-t", "0", "--ignore"]

    def _image_names(self, image: str) -> list[str] | None:
        """The names of an image in storage, or None when storage does not hold it."""
        result = self.cli("image", "inspect", "--format", "{{json .RepoTags}}", image, timeout=30, check=False)
        if result.returncode != 0:
            return None
        try:
            return list(json.loads(result.last_line) or [])
        except ValueError:
            return []

    def load(self, oci_dir: Path, platform: str, config_digest: str, say: LineSink) -> LoadedImage:
        # containers/storage names an image by its config digest: if the storage already holds it,
        # the copy only adds our name, and only that name is removed later.
        image_id = config_digest.partition(":")[2]
        names_before = self._image_names(image_id)
        name = f"localhost/acci-smoke-{uuid.uuid4().hex[:12]}:latest"
        os_name, arch, variant = split_platform(platform)
        self.tools.skopeo("copy", "-q", "--override-os", os_name, "--override-arch", arch,
                          *(["--override-variant", variant] if variant else []),
                          f"oci:{Path(oci_dir).resolve()}", f"containers-storage:{name}", log=say, timeout=300)
        if names_before is None:
            return LoadedImage(image_id, image_id, owned=True, added_names=(name,))
        return LoadedImage(image_id, image_id, owned=False, added_names=(name,))

    def unload(self, image: LoadedImage) -> str:
        try:
            if image.owned:
                # Not forced: another container using the same image keeps it.
                self.cli("rmi", image.image_id, timeout=60, check=False)
            else:
                for image_name in image.added_names:
                    self.cli("untag", image.image_id, image_name, timeout=60, check=False)
        except AcciOpsError as exc:
            return f"image {image.image_id[:12]} not removed: {exc}"
        return ""


def _connect_problem(host: str) -> str:
    """Why nothing answers at a ``unix://`` or ``tcp://`` DOCKER_HOST ("" when a connection opens,
    or for other schemes): the docker CLI only says "Cannot connect ... Is the docker daemon running?"."""
    scheme, _, rest = host.partition("://")
    try:
        if scheme == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(3)
                sock.connect(rest)
        elif scheme == "tcp":
            parts = urllib.parse.urlsplit(host)
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 2375), timeout=3).close()
    except OSError as exc:
        return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return ""


@dataclass
class DockerEngine(ContainerEngine):
    """A Docker engine at ``host`` (a DOCKER_HOST value; None: the local default socket).
    ``tools`` provides skopeo (with acci_ops's own policy file) to copy images into it."""

    tools: ContainerTools
    host: str | None = None
    name: str = "docker"
    endpoint: str = field(init=False)

    def __post_init__(self) -> None:
        self.endpoint = self.host or DEFAULT_DOCKER_HOST

    def cli(self, *args: str, log: LineSink | None = None, timeout: float | None = 600,
            env: Mapping[str, str] | None = None, check: bool = True) -> CommandResult:
        docker = find_tool("docker", hint="install it with `apt-get install -y docker.io` (./run test does this)")
        return run_command([docker, *args], env={**(env or {}), "DOCKER_HOST": self.endpoint}, allow_env=DOCKER_ENV,
                           on_line=log, timeout=timeout, check=check)

    def check(self) -> None:
        """One line when the engine does not answer: where, why, and what to do."""
        problem = _connect_problem(self.endpoint)
        if not problem:
            try:
                result = self.cli("version", "--format", "{{.Server.Version}}", timeout=30, check=False)
            except AcciOpsError as exc:
                problem = str(exc)
            else:
                if result.returncode == 0 and result.last_line.strip():
                    return
                problem = result.last_line or f"docker version exited with code {result.returncode}"
        raise EngineUnreachable(f"docker engine at {self.endpoint} is not reachable: {' '.join(problem.split())}; "
                                "start dockerd or set ACCI_DOCKER_HOST")

    def run(self, name: str, image: str, options: list[str], command: list[str], *,
            env: Mapping[str, str], log: LineSink) -> CommandResult:
        # The docker CLI adds the "proxies" of its config.json to a container's environment: this one
        # call gets an empty client configuration, so no proxy setting reaches the image under test.
        with tempfile.TemporaryDirectory(prefix="acci-docker-config-") as empty:
            return super().run(name, image, options, command, env={**env, "DOCKER_CONFIG": empty}, log=log)

    def load(self, oci_dir: Path, platform: str, config_digest: str, say: LineSink) -> LoadedImage:
        # The engine names an image by its config digest: one it already holds is run as it is.
        held = self.cli("image", "inspect", "--format", "{{.Id}}", config_digest, timeout=30, check=False)
        if held.returncode == 0 and held.last_line.strip() == config_digest:
            say(f"docker engine already holds {config_digest[:19]}; running it as it is")
            return LoadedImage(config_digest, config_digest, owned=False)
        os_name, arch, variant = split_platform(platform)
        name = f"acci-smoke:{uuid.uuid4().hex[:12]}"
        self.tools.skopeo("copy", "-q", "--override-os", os_name, "--override-arch", arch,
                          *(["--override-variant", variant] if variant else []),
                          "--dest-daemon-host", self.endpoint, f"oci:{Path(oci_dir).resolve()}",
                          f"docker-daemon:{name}", log=say, timeout=300)
        return LoadedImage(name, config_digest, owned=True)

    def unload(self, image: LoadedImage) -> str:
        if not image.owned:
            return ""
        try:
            # By name, not forced: the image goes with its last name, unless a container still uses it.
            result = self.cli("rmi", image.ref, timeout=60, check=False)
        except AcciOpsError as exc:
            return f"image {image.ref} not removed: {exc}"
        if result.returncode != 0 and "no such image" not in result.last_line.lower():
            return f"image {image.ref} not removed: {result.last_line}"
        return ""


def container_engine(kind: str, tools: ContainerTools, docker_host: str | None = None) -> ContainerEngine:
    """The engine named by ACCI_CONTAINER_ENGINE (``podman`` or ``docker``)."""
    if kind == "podman":
        return PodmanEngine(tools)
    if kind == "docker":
        return DockerEngine(tools, docker_host)
    raise AcciOpsError(f"ACCI_CONTAINER_ENGINE must be podman or docker, not {kind!r}")
