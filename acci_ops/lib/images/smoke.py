"""``smoke_test``: the built image really starts and serves ``/health`` and ``/metrics``.

A build that passes every static check can still ship an image that crashes on start (a missing
asset, a binary of the wrong architecture, a bad entrypoint). So the host-platform variant of the
staged OCI layout is run with the container engine (``ACCI_CONTAINER_ENGINE``: podman, or a Docker
engine at ``ACCI_DOCKER_HOST``; see ``engines``), exactly as built, until ``/health`` answers 2xx;
``/metrics`` must then parse as Prometheus text and hold the required metrics. The container, and
the image when the run added it to the engine, are removed whatever happens (pass, failure,
timeout, exception).

The image is not trusted (whoever can push a tag to the source repository wrote its entrypoint),
so it runs confined:

- ``--network none``: a network namespace of its own with only loopback. It reaches nothing: not
  this machine's 127.0.0.1 (the Dagster webserver, PostgreSQL, Redis), not its other addresses,
  not the outside (a cloud metadata endpoint), not even DNS. The probes are opened inside that
  namespace (``engines.NetworkNamespace``) and go to ``127.0.0.1:<port>`` there, where ``<port>``
  is the image's one exposed TCP port (``EXPOSE``), 8080 when it declares none, or
  ``SmokeConfig.port`` (``ACCI_IMAGE_SMOKE_PORT``). No port is published on the host.
- ``--cap-drop ALL``, ``--security-opt no-new-privileges``, ``--read-only`` with a tmpfs ``/tmp``,
  ``--pids-limit``, ``--memory``; no proxy variables (podman ``--http-proxy=false``; docker gets
  an empty client configuration, whose ``proxies`` it would otherwise add); the label
  ``io.acci-ops.smoke=1`` and a name ``acci-smoke-<id>``.
- A database and Redis of its own (``sandbox.private_services``, when the caller passes them): a
  private PostgreSQL server and redis-server started for this one smoke test and deleted after,
  reachable only through their unix sockets, bind-mounted read-only into the container. The app
  gets ``DATABASE_URL=postgresql://acci:<password>@/acci?host=/run/acci-smoke/pg`` (libpq's socket
  form; the password is new each time) and ``REDIS_URL=unix:///run/acci-smoke/redis/redis.sock``.
  An operator may name others instead (``ACCI_IMAGE_SMOKE_DATABASE_URL`` /
  ``ACCI_IMAGE_SMOKE_REDIS_URL``): the container still has no network, so a TCP URL there is
  handed over but cannot be reached; only a socket the caller mounts is.

One deadline (``timeout_seconds``, from the moment the container started) bounds the whole probe:
every connect and every read of ``/health`` and ``/metrics`` gets only the time left, so an image
that answers one byte a second is cut off at the deadline like one that never answers.

Database and Redis URLs carry passwords: they reach the container as ``--env NAME`` (name only in
argv; the engine's CLI copies the value from its own environment, which acci_ops sets for that one
call), and any text quoted from the container's log is redacted before it reaches a message.
"""

from __future__ import annotations

import http.client
import math
import platform as host_platform
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from acci_ops.lib.core.commands import CommandFailed
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.images.engines import (
    ContainerEngine,
    EngineUnreachable,
    LoadedImage,
    NamespaceUnavailable,
    NetworkNamespace,
    PodmanEngine,
)
from acci_ops.lib.images.oci import read_index
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.lib.postgres.urls import redact_url

CHECK_NAME = "smoke_test"
DEFAULT_PORT = 8080
LABEL = "io.acci-ops.smoke=1"
NAME_PREFIX = "acci-smoke-"
_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform_name() -> str:
    """``linux/<arch>`` of this machine, in OCI's architecture names."""
    machine = host_platform.machine().lower()
    return f"linux/{_MACHINE_TO_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class SmokeConfig:
    """How to start the app and what it must answer.

    ``port``: the container port the app serves on (None: the image's EXPOSE, 8080 when none);
    ``command``: arguments after the image (``{port}`` is replaced by that port), None keeps the
    image's CMD; ``database_url``/``redis_url``: what the app gets as ``database_env``/``redis_env``;
    ``mounts``: ``(host directory, container directory)`` pairs mounted read-only (the sockets of
    the private services)."""

    required_metrics: tuple[str, ...] = ("acci_up",)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    timeout_seconds: float = 20.0
    port: int | None = None
    command: tuple[str, ...] | None = None
    database_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    database_env: str = "DATABASE_URL"
    redis_env: str = "REDIS_URL"
    mounts: tuple[tuple[str, str], ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)  # non-secret settings only (they go into argv)
    platform: str | None = None  # default: this machine's
    memory_mb: int = 512
    pids_limit: int = 256


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Failed(Exception):
    """Internal: ends the smoke test with this one-line cause."""


class _Redactor:
    def __init__(self, secrets: Sequence[str]) -> None:
        values = set()
        for secret in secrets:
            if not secret:
                continue
            try:
                password = urllib.parse.urlsplit(secret).password
            except ValueError:
                password = None
            if password:
                values.add(password)
                values.add(urllib.parse.unquote(password))
        # Passwords (plain and percent-encoded) anywhere else in the text; longest first.
        self.values = sorted(values, key=len, reverse=True)
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, redact_url(secret))
        for value in self.values:
            text = text.replace(value, "***")
        return text


MAX_BODY_BYTES = 8 * 2**20  # /health and /metrics are small; the image under test is not trusted


class DeadlineSocket(socket.socket):
    """A socket whose every blocking call gets only the time left before ``deadline`` (monotonic):
    a peer that sends one byte a second cannot stretch a read past it."""

    deadline: float = math.inf

    def _bound(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer was still incomplete when the time ran out")
        self.settimeout(left)

    def connect(self, address: Any) -> None:  # noqa: ANN401 (socket's own signature)
        self._bound()
        super().connect(address)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._bound()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # noqa: ANN401
        self._bound()
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:  # noqa: ANN401
        self._bound()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:  # noqa: ANN401
        self._bound()
        super().sendall(data, flags)


# Opens a connected DeadlineSocket to the app, bounded by the deadline it is given.
Opener = Callable[[float], socket.socket]


def namespace_opener(namespace: NetworkNamespace, port: int) -> Opener:
    """Connections to ``127.0.0.1:port`` inside the container's own network namespace."""
    def open_socket(deadline: float) -> socket.socket:
        sock = namespace.socket(DeadlineSocket)
        assert isinstance(sock, DeadlineSocket)
        sock.deadline = deadline
        try:
            sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock
    return open_socket


def tcp_opener(host: str, port: int) -> Opener:
    """Connections to ``host:port`` in this process's own network (a server the probe is pointed at)."""
    def open_socket(deadline: float) -> socket.socket:
        sock = DeadlineSocket(socket.AF_INET, socket.SOCK_STREAM)
        sock.deadline = deadline
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return open_socket


class _Connection(http.client.HTTPConnection):
    def __init__(self, opener: Opener, deadline: float) -> None:
        super().__init__("127.0.0.1")
        self._opener = opener
        self._deadline = deadline

    def connect(self) -> None:
        self.sock = self._opener(self._deadline)


def http_get(opener: Opener, path: str, deadline: float) -> tuple[int | None, bytes, str]:
    """``(status, body, error)`` of one GET, all of it done by ``deadline``: status None when
    nothing (complete) answered, ``error`` says why. The body is read only for 2xx answers."""
    connection = _Connection(opener, deadline)
    try:
        connection.request("GET", path, headers={"Connection": "close", "Accept": "*/*"})
        response = connection.getresponse()
        if not 200 <= response.status < 300:
            return response.status, b"", ""
        body = response.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return response.status, b"", f"answered more than {MAX_BODY_BYTES // 2**20} MiB"
        return response.status, body, ""
    except NamespaceUnavailable:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
            return None, b"", "the answer was still incomplete when the time ran out"
        return None, b"", _one_line(str(exc)) or type(exc).__name__
    finally:
        connection.close()


def missing_metrics(text: str, required: Sequence[str]) -> list[str]:
    """The required metric names absent from Prometheus exposition ``text`` (family or sample
    names both count: ``acci_requests_total`` matches the counter ``acci_requests``).
    Raises ValueError when the text is not Prometheus exposition format."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return [name for name in required if name not in names]


def container_port(image_config: Mapping[str, Any], override: int | None = None) -> int:
    """The port the app serves on: ``override``, else the image's one exposed TCP port, else 8080.
    An image exposing several (none of them 8080) must be told which: _Failed names them."""
    if override:
        return int(override)
    exposed = sorted((image_config.get("config") or {}).get("ExposedPorts") or {})
    tcp: list[int] = []
    for entry in exposed:
        number, _, protocol = str(entry).partition("/")
        if (protocol or "tcp").lower() == "tcp" and number.isascii() and number.isdigit():
            tcp.append(int(number))
    tcp = sorted(set(tcp))
    if not tcp:
        return DEFAULT_PORT
    if len(tcp) == 1:
        return tcp[0]
    if DEFAULT_PORT in tcp:
        return DEFAULT_PORT
    raise _Failed(f"the image exposes {', '.join(f'{p}/tcp' for p in tcp)}: set ACCI_IMAGE_SMOKE_PORT to the one "
                  "serving /health")


def isolation_options(cfg: SmokeConfig) -> list[str]:
    """``run`` options both engines take: no capabilities, no privilege gain, a read-only root with
    a small tmpfs /tmp, process and memory limits, the smoke label, the read-only mounts."""
    options = ["--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
               "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777", "--pids-limit", str(cfg.pids_limit),
               "--memory", f"{cfg.memory_mb}m", "--label", LABEL]
    for host_dir, container_dir in cfg.mounts:
        options += ["--volume", f"{host_dir}:{container_dir}:ro"]
    return options


def smoke_test(engine: ContainerEngine | ContainerTools, oci_dir: str | Path, config: SmokeConfig | None = None, *,
               log: Callable[[str], None] | None = None) -> CheckOutcome:
    """Run the host-platform image of the OCI layout with ``engine`` (``ContainerTools``: podman)
    and probe it; never raises for an app fault.

    Fails (ERROR) with one line: the engine is not reachable, the container exited (its code and
    last log line), ``/health`` did not answer 2xx within the timeout, ``/metrics`` is unparseable
    or lacks a required metric, the container's network cannot be entered, or the engine could not
    start it at all. The container and the loaded image are removed in every case;
    ``metadata['cleanup']`` says whether that worked."""
    cfg = config or SmokeConfig()
    if isinstance(engine, ContainerTools):
        engine = PodmanEngine(engine)
    redact = _Redactor([cfg.database_url or "", cfg.redis_url or ""])

    def say(line: str) -> None:
        if log:
            log(redact(line))

    target = cfg.platform or host_platform_name()
    name = f"{NAME_PREFIX}{uuid.uuid4().hex[:12]}"
    metadata: dict[str, Any] = {"engine": engine.name, "platform": target, "container": name,
                                "network": "none (a namespace of its own, loopback only; probed inside it)",
                                "required_metrics": list(cfg.required_metrics)}
    loaded: LoadedImage | None = None
    namespace: NetworkNamespace | None = None
    ran = False
    started = time.monotonic()
    try:
        manifests = read_index(Path(oci_dir)).by_platform()
        if target not in manifests:
            raise _Failed(f"the image has no {target} variant to run on this machine")
        port = container_port(manifests[target].config, cfg.port)
        metadata["port"] = port
        engine.check()
        loaded = engine.load(Path(oci_dir), target, manifests[target].config_digest, say)
        metadata["image_id"] = loaded.image_id
        env_args: list[str] = []
        secret_env: dict[str, str] = {}
        for variable, value in sorted(cfg.extra_env.items()):
            env_args += ["--env", f"{variable}={value}"]
        for variable, value in ((cfg.database_env, cfg.database_url), (cfg.redis_env, cfg.redis_url)):
            if value:
                env_args += ["--env", variable]  # the value comes from the engine CLI's own environment
                secret_env[variable] = value
        metadata["env"] = sorted({a.split("=", 1)[0] for a in env_args if a != "--env"})
        command = [part.replace("{port}", str(port)) for part in cfg.command] if cfg.command is not None else []
        ran = True
        engine.run(name, loaded.ref, [*isolation_options(cfg), *env_args], command, env=secret_env, log=say)
        deadline = time.monotonic() + cfg.timeout_seconds
        say(f"smoke test: {engine.name} container {name} started from {loaded.image_id[:19]}; probing port {port} "
            "inside its own network namespace")
        try:
            namespace = engine.network_namespace(name)
        except NamespaceUnavailable:
            _raise_if_exited(engine, name, redact, say)  # exited at once: that is the cause to show
            raise
        opener = namespace_opener(namespace, port)
        metadata["health_seconds"] = _wait_healthy(engine, name, opener, cfg, deadline, say, redact)
        metadata["metrics_found"] = _check_metrics(opener, cfg, deadline)
    except (_Failed, EngineUnreachable, NamespaceUnavailable) as failed:
        description = _one_line(redact(str(failed)))
        outcome = CheckOutcome(CHECK_NAME, False, "ERROR", description, metadata)
    except (CommandFailed, AcciOpsError, OSError) as exc:
        outcome = CheckOutcome(CHECK_NAME, False, "ERROR", _one_line(f"could not run the image: {redact(str(exc))}"),
                               metadata)
    else:
        outcome = CheckOutcome(CHECK_NAME, True, "ERROR",
                               f"{target} image answered {cfg.health_path} in {metadata['health_seconds']:.1f} s "
                               f"and {cfg.metrics_path} has {', '.join(cfg.required_metrics) or 'valid metrics'}",
                               metadata)
    finally:
        if namespace:
            namespace.close()
        cleanup = _remove(engine, name if ran else "", loaded, say)
        metadata["cleanup"] = cleanup
        metadata["seconds"] = round(time.monotonic() - started, 2)
    if not outcome.passed:
        say(f"smoke test failed: {outcome.description}")
    return outcome


def _last_log_line(engine: ContainerEngine, name: str, redact: Callable[[str], str],
                   say: Callable[[str], None]) -> str:
    """The container's last output line (redacted); its last 20 lines go to the log."""
    result = engine.logs(name, 20)
    if result.returncode != 0:
        return ""
    for line in result.tail:
        say(f"container output: {line}")
    return redact(result.last_line.strip())[:300]


def _raise_if_exited(engine: ContainerEngine, name: str, redact: Callable[[str], str],
                     say: Callable[[str], None]) -> None:
    """_Failed with the exit code and last output line when the container is no longer running."""
    state, code = engine.state(name)
    if state in ("exited", "stopped", "dead"):
        last = _last_log_line(engine, name, redact, say)
        raise _Failed(f"container exited with code {code}: {last or '(no output)'}")


def _wait_healthy(engine: ContainerEngine, name: str, opener: Opener, cfg: SmokeConfig, deadline: float,
                  say: Callable[[str], None], redact: Callable[[str], str]) -> float:
    """Seconds until ``/health`` answered 2xx; raises _Failed on exit or at the deadline."""
    start = time.monotonic()
    status: int | None = None
    error = "nothing answered"
    while True:
        status, _, error = http_get(opener, cfg.health_path, deadline)
        if status is not None and 200 <= status < 300:
            return round(time.monotonic() - start, 2)
        _raise_if_exited(engine, name, redact, say)
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(min(0.25, left))
        if time.monotonic() >= deadline:  # no attempt that could only say "no time left"
            break
    waited = f"{cfg.timeout_seconds:g} s"
    if status is not None:
        raise _Failed(f"{cfg.health_path} answered {status} after {waited}")
    raise _Failed(f"{cfg.health_path} did not answer after {waited}: {redact(error)}")


def _check_metrics(opener: Opener, cfg: SmokeConfig, deadline: float) -> list[str]:
    status, body, error = http_get(opener, cfg.metrics_path, deadline)
    if status is None:
        raise _Failed(f"{cfg.metrics_path} did not answer within the smoke test's {cfg.timeout_seconds:g} s: {error}")
    if not 200 <= status < 300:
        raise _Failed(f"{cfg.metrics_path} answered {status}")
    if error:
        raise _Failed(f"{cfg.metrics_path} {error}")
    try:
        missing = missing_metrics(body.decode(errors="replace"), cfg.required_metrics)
    except ValueError as exc:
        raise _Failed(f"{cfg.metrics_path} is not Prometheus text: {' '.join(str(exc).split())[:200]}") from None
    if missing:
        raise _Failed(f"{cfg.metrics_path} lacks {', '.join(missing)}")
    return list(cfg.required_metrics)


def _remove(engine: ContainerEngine, name: str, loaded: LoadedImage | None, say: Callable[[str], None]) -> str:
    """Remove the container (forced, no grace period) when one was started, then what the load
    added to the engine (the image, or only the names it gave an image that was already there);
    report, never raise."""
    problems = [engine.remove_container(name) if name else "", engine.unload(loaded) if loaded else ""]
    problems = [p for p in problems if p]
    for problem in problems:
        say(f"smoke test cleanup: {problem}")
    if problems:
        return "; ".join(problems)
    return "container removed" if name else "nothing was started"
