"""The images section: where ACCI Framework's source and images live, and how images are built and
checked. One for the whole code location, from variables only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import check_build_network, parse_platforms
from acci_ops.settings._fields import load_section, setting
from acci_ops.settings._registry import Section, register

SCAN_SEVERITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
BUILD_BACKENDS = ("buildah", "docker")
CONTAINER_ENGINES = ("podman", "docker")


@dataclass(frozen=True)
class ImagesSpec:
    """Where ACCI Framework's source and images live, and how images are built and checked. One for
    the whole code location: an image is built once and released to every environment by digest."""

    source_repo: str | None = setting(None, var="ACCI_SOURCE_REPO",
                                      help="ACCI Framework's source: a git URL or a local path.")
    source_tag_pattern: str = setting("v*", var="ACCI_SOURCE_TAG_PATTERN",
                                      help="Release tags (glob); the version is the tag without its leading v.")
    image_repository: str | None = setting(None, var="ACCI_IMAGE_REPOSITORY",
                                           help="Where images go, e.g. registry.example.com/acci/acci-framework.")
    registry_username: str | None = setting(None, var="ACCI_REGISTRY_USERNAME", help="Registry user name.")
    registry_password_env: str | None = setting(None, var="ACCI_REGISTRY_PASSWORD",
                                                help="Registry password or token (kept in ACCI_REGISTRY_PASSWORD).")
    registry_tls_verify: bool = setting(True, var="ACCI_REGISTRY_TLS_VERIFY",
                                        help="Verify the registry's TLS certificate (false only for a local registry).")
    platforms: tuple[str, ...] = setting(("linux/amd64", "linux/arm64"), var="ACCI_IMAGE_PLATFORMS",
                                         help="Platforms of the multi-platform image.")
    build_network: str = setting(
        "none", var="ACCI_IMAGE_BUILD_NETWORK",
        help=("What the Dockerfile's RUN steps may reach: none (the default), host (everything this host reaches, "
              "127.0.0.1 included) or a podman network's name for builds that must fetch."))
    dockerfile: str = setting("Dockerfile", var="ACCI_DOCKERFILE",
                              help="Dockerfile/Containerfile path inside the source repository.")
    build_context: str = setting(".", var="ACCI_BUILD_CONTEXT",
                                 help="Build context inside the source repository (default: its root).")
    build_backend: str = setting("buildah", var="ACCI_BUILD_BACKEND", choices=BUILD_BACKENDS,
                                 help="buildah (daemonless, the default) or docker.")
    container_engine: str = setting("podman", var="ACCI_CONTAINER_ENGINE", choices=CONTAINER_ENGINES,
                                    help="Engine that runs images for the smoke test: podman or docker.")
    docker_host: str | None = setting(
        None, var="ACCI_DOCKER_HOST",
        help=("The Docker engine the smoke test uses when ACCI_CONTAINER_ENGINE is docker, as a DOCKER_HOST "
              "value (unix:///path/docker.sock or tcp://host:port); unset: unix:///var/run/docker.sock."))
    max_mb: float = setting(512, var="ACCI_IMAGE_MAX_MB", minimum=1,
                            help="Largest allowed image per platform, in MiB (image_policy).")
    scan_command: str | None = setting(None, var="ACCI_IMAGE_SCAN_COMMAND",
                                       help="Vulnerability scanner command ({oci_dir} / {image_ref} replaced).")
    scan_fail_on: str = setting("CRITICAL", var="ACCI_IMAGE_SCAN_FAIL_ON", choices=SCAN_SEVERITIES,
                                help="Lowest finding severity that fails the scan.")
    storage_dir: str | None = setting(None, var="ACCI_IMAGE_STORAGE_DIR",
                                      help="Build storage (layers, caches); default under the system temp dir.")
    latest_tag: bool = setting(False, var="ACCI_IMAGE_LATEST_TAG",
                               help="Also move a 'latest' tag to each new release (off: tags never move).")
    required_metrics: tuple[str, ...] = setting((), var="ACCI_REQUIRED_METRICS",
                                                help="Metric names the smoke test requires on /metrics.")
    smoke_command: str | None = setting(
        None, var="ACCI_IMAGE_SMOKE_COMMAND",
        help=("Arguments after the image in the smoke test ({port} is replaced by the container port probed); "
              "unset: the image's own command."))
    smoke_port: int | None = setting(
        None, var="ACCI_IMAGE_SMOKE_PORT", minimum=1,
        help=("The container port the smoke test probes (inside the container's own network namespace); unset: "
              "the image's EXPOSE, 8080 when it declares none."))
    smoke_database_url_env: str | None = setting(
        None, var="ACCI_IMAGE_SMOKE_DATABASE_URL",
        help=("A database the smoke-tested image gets as DATABASE_URL instead of its own private PostgreSQL "
              "server (unset: one started for each smoke test, reached over a unix socket, deleted after). The "
              "container has no network, so a TCP address here is handed over but cannot be reached."))
    smoke_redis_url_env: str | None = setting(
        None, var="ACCI_IMAGE_SMOKE_REDIS_URL",
        help=("A Redis the smoke-tested image gets as REDIS_URL instead of its own private redis-server (unset: one "
              "started for each smoke test, reached over a unix socket, deleted after); as above, not reachable "
              "over TCP from the container."))
    smoke_timeout_seconds: float = setting(
        60, var="ACCI_IMAGE_SMOKE_TIMEOUT_SECONDS", minimum=1,
        help=("One deadline for the whole probe: /health must answer 2xx and /metrics be read within it, counted "
              "from the container's start."))
    build_timeout_seconds: int = setting(3600, var="ACCI_IMAGE_BUILD_TIMEOUT_SECONDS", minimum=1,
                                         help="A build is stopped after this long.")
    initial_builds: int = setting(3, var="ACCI_SOURCE_INITIAL_BUILDS", minimum=1,
                                  help=("On source_tag_sensor's first tick (a fresh install), how many of the newest "
                                        "release tags are built, so the first release has a previous good version "
                                        "to roll back to."))
    tags_per_tick: int = setting(5, var="ACCI_SOURCE_TAGS_PER_TICK", minimum=1,
                                 help="Most new release tags source_tag_sensor turns into builds per tick.")

    @property
    def enabled(self) -> bool:
        """Image builds are on when both the source and the image repository are named."""
        return bool(self.source_repo and self.image_repository)


def _from_variables(environ: Mapping[str, str]) -> ImagesSpec:
    """Image settings come from variables only (one image for every environment)."""
    spec = load_section(ImagesSpec, environ, None, where="variables")
    # What the build accepts, checked here: a platform buildah cannot build fails at load, not after a build.
    parse_platforms(list(spec.platforms))
    check_build_network(spec.build_network)
    if bool(spec.source_repo) != bool(spec.image_repository):
        missing = "ACCI_IMAGE_REPOSITORY" if spec.source_repo else "ACCI_SOURCE_REPO"
        raise ConfigError(f"image builds need both ACCI_SOURCE_REPO and ACCI_IMAGE_REPOSITORY; {missing} is unset")
    if spec.docker_host and not re.match(r"^(unix|tcp)://\S+$", spec.docker_host):
        raise ConfigError(f"ACCI_DOCKER_HOST {spec.docker_host!r} is not a Docker endpoint; use "
                          "unix:///path/docker.sock or tcp://host:port")
    if spec.registry_password_env and not spec.registry_username:
        raise ConfigError("ACCI_REGISTRY_PASSWORD is set but ACCI_REGISTRY_USERNAME is not")
    return spec


register(Section(name="images", spec=ImagesSpec, per_environment=False, from_variables=_from_variables))
