"""``smoke_test``: the built image really starts and serves ``/health`` and ``/metrics``.

A build that passes every static check can still ship an image that crashes on start (a missing
asset, a binary of the wrong architecture, a bad entrypoint). So the host-platform variant of the
staged OCI layout is run with the container engine (``ACCI_CONTAINER_ENGINE``: podman, or a Docker
engine at ``ACCI_DOCKER_HOST``; see ``engines``), exactly as built, with a throwaway database and Redis when
they are configured (the validation scratch server, the drill Redis: never production's), until
``/health`` answers 2xx; ``/metrics`` must then parse as Prometheus text and hold the required
metrics. The container, and the image when the run added it to the engine, are removed whatever
happens (pass, failure, timeout, exception).

Database and Redis URLs carry passwords: they reach the container as ``--env NAME`` (name only in
argv; the engine's CLI copies the value from its own environment, which acci_ops sets for that one call),
and any text quoted from the container's log is redacted before it reaches a message.
"""

from __future__ import annotations

import platform as host_platform
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from acci_ops.lib.core.commands import CommandFailed
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.images.engines import ContainerEngine, EngineUnreachable, LoadedImage, PodmanEngine
from acci_ops.lib.images.oci import read_index
from acci_ops.lib.images.outcome import CheckOutcome
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.lib.postgres.urls import redact_url

CHECK_NAME = "smoke_test"
_MACHINE_TO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_platform_name() -> str:
    """``linux/<arch>`` of this machine, in OCI's architecture names."""
    machine = host_platform.machine().lower()
    return f"linux/{_MACHINE_TO_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class SmokeConfig:
    """How to start the app and what it must answer.

    ``port_env``: the variables the app reads its listen port from (a free port is chosen, the
    container shares the host network); ``command``: arguments after the image (``{port}`` is
    replaced), None keeps the image's CMD; ``database_url``/``redis_url``: throwaway services,
    given to the app as ``database_env``/``redis_env``."""

    required_metrics: tuple[str, ...] = ("acci_up",)
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    timeout_seconds: float = 20.0
    port_env: tuple[str, ...] = ("PORT",)
    command: tuple[str, ...] | None = None
    database_url: str | None = None
    redis_url: str | None = None
    database_env: str = "DATABASE_URL"
    redis_env: str = "REDIS_URL"
    extra_env: dict[str, str] = field(default_factory=dict)  # non-secret settings only (they go into argv)
    platform: str | None = None  # default: this machine's


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


def _http_get(url: str, timeout: float) -> tuple[int | None, bytes, str]:
    """``(status, body, error)``: status None when nothing answered (error says why)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own loopback URL)
            body = response.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                return response.status, b"", f"answered more than {MAX_BODY_BYTES // 2**20} MiB"
            return response.status, body, ""
    except urllib.error.HTTPError as exc:
        return exc.code, b"", ""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, b"", " ".join(str(reason).split()) or type(exc).__name__


def missing_metrics(text: str, required: Sequence[str]) -> list[str]:
    """The required metric names absent from Prometheus exposition ``text`` (family or sample
    names both count: ``acci_requests_total`` matches the counter ``acci_requests``).
    Raises ValueError when the text is not Prometheus exposition format."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return [name for name in required if name not in names]


def smoke_test(engine: ContainerEngine | ContainerTools, oci_dir: str | Path, config: SmokeConfig | None = None, *,
               log: Callable[[str], None] | None = None) -> CheckOutcome:
    """Run the host-platform image of the OCI layout with ``engine`` (``ContainerTools``: podman)
    and probe it; never raises for an app fault.

    Fails (ERROR) with one line: the engine is not reachable, the container exited (its code and
    last log line), ``/health`` did not answer 2xx within the timeout, ``/metrics`` is unparseable
    or lacks a required metric, or the engine could not start it at all. The container and the
    loaded image are removed in every case; ``metadata['cleanup']`` says whether that worked."""
    cfg = config or SmokeConfig()
    if isinstance(engine, ContainerTools):
        engine = PodmanEngine(engine)
    redact = _Redactor([cfg.database_url or "", cfg.redis_url or ""])

    def say(line: str) -> None:
        if log:
            log(redact(line))

    target = cfg.platform or host_platform_name()
    port = free_port()
    name = f"acci-smoke-{uuid.uuid4().hex[:12]}"
    metadata: dict[str, Any] = {"engine": engine.name, "platform": target, "port": port, "container": name,
                                "required_metrics": list(cfg.required_metrics)}
    loaded: LoadedImage | None = None
    ran = False
    started = time.monotonic()
    try:
        manifests = read_index(Path(oci_dir)).by_platform()
        if target not in manifests:
            raise _Failed(f"the image has no {target} variant to run on this machine")
        engine.check()
        loaded = engine.load(Path(oci_dir), target, manifests[target].config_digest, say)
        image_id = loaded.image_id
        metadata["image_id"] = image_id
        env_args: list[str] = []
        secret_env: dict[str, str] = {}
        for variable in cfg.port_env:
            env_args += ["--env", f"{variable}={port}"]
        for variable, value in sorted(cfg.extra_env.items()):
            env_args += ["--env", f"{variable}={value}"]
        for variable, value in ((cfg.database_env, cfg.database_url), (cfg.redis_env, cfg.redis_url)):
            if value:
                env_args += ["--env", variable]  # the value comes from the engine CLI's own environment
                secret_env[variable] = value
        metadata["env"] = sorted({a.split("=", 1)[0] for a in env_args if a != "--env"})
        command = [part.replace("{port}", str(port)) for part in cfg.command] if cfg.command is not None else []
        ran = True
        engine.run(name, loaded.ref, env_args, command, env=secret_env, log=say)
        say(f"smoke test: {engine.name} container {name} started from {image_id[:19]} on port {port}")
        metadata["health_seconds"] = _wait_healthy(engine, name, port, cfg, say, redact)
        metadata["metrics_found"] = _check_metrics(port, cfg)
    except (_Failed, EngineUnreachable) as failed:
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


def _wait_healthy(engine: ContainerEngine, name: str, port: int, cfg: SmokeConfig,
                  say: Callable[[str], None], redact: Callable[[str], str]) -> float:
    """Seconds until ``/health`` answered 2xx; raises _Failed on exit or timeout."""
    url = f"http://127.0.0.1:{port}{cfg.health_path}"
    start = time.monotonic()
    deadline = start + cfg.timeout_seconds
    status: int | None = None
    error = "nothing answered"
    while True:
        status, _, error = _http_get(url, timeout=min(2.0, max(0.2, deadline - time.monotonic())))
        if status is not None and 200 <= status < 300:
            return round(time.monotonic() - start, 2)
        state, code = engine.state(name)
        if state in ("exited", "stopped", "dead"):
            last = _last_log_line(engine, name, redact, say)
            raise _Failed(f"container exited with code {code}: {last or '(no output)'}")
        if time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    waited = f"{cfg.timeout_seconds:g} s"
    if status is not None:
        raise _Failed(f"{cfg.health_path} answered {status} after {waited}")
    raise _Failed(f"{cfg.health_path} did not answer after {waited}: {redact(error)}")


def _check_metrics(port: int, cfg: SmokeConfig) -> list[str]:
    status, body, error = _http_get(f"http://127.0.0.1:{port}{cfg.metrics_path}", timeout=5.0)
    if status is None:
        raise _Failed(f"{cfg.metrics_path} did not answer: {error}")
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
