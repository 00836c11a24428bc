"""The deployment's shape: the one place that reads ``os.environ``, and the one typed model of it.

``Settings`` holds the environments this code location serves, each an ``EnvironmentSpec`` with
three sections: ``backup``, ``validation`` and ``dr`` (DR is ``None`` until a platform is set).
Every field of a section is declared ONCE, with ``setting(...)``: its default, the variable that
sets it and whether the environments file may set it. Both sources map onto the same fields:

- one environment (the default): the ``ACCI_*`` variables;
- several: ``ACCI_ENVIRONMENTS_FILE`` names a YAML file (docs/environments.md "Several environments"). A field
  marked ``inherit`` (validation tuning, the signing key, the tool paths) takes its variable as the
  default there too; the others come from the file or their default.

Only names and locations live here; a secret (database URL with password, storage key, Redis URL,
signing key, webhook URL) is referred to by the NAME of the variable holding it (the ``*_env``
fields) and resolved by Dagster's ``EnvVar`` at run time, so it never enters the definitions, the UI
or run config. A bad value stops the code location from loading with one line naming the variable
or the file's key (secrets pasted by mistake are never echoed).
"""

from __future__ import annotations

import os
import re
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path
from types import NoneType, UnionType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from acci_ops.lib.backup.retention import RetentionPolicy
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import check_build_network, parse_platforms

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME_HINT = ("letters, digits and _, not starting with a digit, e.g. PRODUCTION_DATABASE_URL; "
                  "the value given is not shown, as it may be a secret")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")

DEFAULT_ENVIRONMENT = "production"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_START_DATE = date(2026, 1, 1)
PLATFORMS = ("local", "helm", "compose")


def setting(default: object = MISSING, *, help: str, var: str | None = None, in_file: bool = True,  # noqa: A002
            inherit: bool = False, resource: bool = True, choices: tuple[str, ...] = (),
            minimum: float | None = None, factory: typing.Callable[[], object] | None = None) -> Field:
    """One field of the model. ``help`` is what the UI shows for the resource field built from it;
    ``var`` the variable that sets it; ``in_file`` whether the environments file may set it;
    ``inherit`` whether ``var`` is also the default in the file; ``resource=False`` keeps a value
    that only the definitions need out of the resources. A field named ``*_env`` holds the NAME of
    the variable holding a secret: from variables it is ``var`` when that is set."""
    metadata = {"help": help, "var": var, "in_file": in_file, "inherit": inherit, "resource": resource,
                "choices": choices, "minimum": minimum}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --- the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class OffsiteSpec:
    """A second object store for verified copies of every backup."""

    url: str = setting(var="ACCI_OFFSITE_URL", help="Second object store (s3:// or file://) for offsite copies.")
    endpoint_url: str | None = setting(None, var="ACCI_OFFSITE_ENDPOINT_URL",
                                       help="S3 endpoint of the offsite store (another provider or region).")
    access_key_id_env: str | None = setting(None, var="ACCI_OFFSITE_AWS_ACCESS_KEY_ID",
                                            help="Access key id for the offsite store (default: the primary's).")
    secret_access_key_env: str | None = setting(None, var="ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY",
                                                help="Secret access key for the offsite store.")
    sse: str = setting("none", var="ACCI_OFFSITE_SSE", help="Server-side encryption for the offsite store.")
    kms_key_id: str | None = setting(None, var="ACCI_OFFSITE_KMS_KEY_ID", help="KMS key id for the offsite store.")


@dataclass(frozen=True)
class BackupSpec:
    """What is backed up, where to, and how long it is kept."""

    database_url_env: str = setting(
        help=("postgresql://user:password@host:port/db of the database to back up (kept in a variable: "
              "ACCI_DATABASE_URL or the environment's database_url_env)."))
    backup_url: str | None = setting(None, help="s3://bucket/prefix or file:///absolute/path for backups.")
    backup_url_env: str | None = setting(None, in_file=False,
                                         help="Variable holding the backup location (ACCI_BACKUP_URL).")
    backup_url_scheme: str | None = setting(
        None, in_file=False, resource=False,
        help=("Scheme (s3 or file) of the location in backup_url_env, read when the settings load so the "
              "backup asset's storage badge is right; only the scheme, never the rest of the URL."))
    sse: str = setting("none", var="ACCI_BACKUP_SSE",
                       help="Server-side encryption for S3: none, sse-s3 or sse-kms.")
    kms_key_id: str | None = setting(None, var="ACCI_BACKUP_KMS_KEY_ID", help="KMS key id for sse-kms.")
    offsite: OffsiteSpec | None = setting(None, help="Second object store for verified offsite copies.")
    retention: RetentionPolicy = setting(factory=RetentionPolicy, resource=False,
                                         help="Grandfather-father-son counts (daily, weekly, monthly).")
    signing_key_env: str | None = setting(
        None, var="ACCI_BACKUP_SIGNING_KEY", inherit=True,
        help=("Key that signs and authenticates backup manifests and validation records (HMAC-SHA256), from "
              "ACCI_BACKUP_SIGNING_KEY or the environment's signing_key_env (comma-separated: the first signs, "
              "all verify, for rotation). Unset: backups cannot be authenticated, so retention deletes nothing "
              "and DR needs a named backup."))
    max_runtime_seconds: int = setting(4 * 3600, var="ACCI_BACKUP_MAX_RUNTIME_SECONDS", in_file=False, inherit=True,
                                       minimum=1, help="pg_dump is stopped after this long (seconds).")
    pg_bin_dir: str | None = setting(None, var="ACCI_PG_BIN", in_file=False, inherit=True,
                                     help="Directory holding pg_dump, pg_restore and pg_amcheck (default: PATH).")

    @property
    def store_kind(self) -> str | None:
        """``s3`` or ``file``: the kind of store backups go to (the asset's badge in the UI), from
        ``backup_url`` or the scheme read from its variable; None when the location is not known yet."""
        return url_scheme(self.backup_url) if self.backup_url else self.backup_url_scheme


# Written at the top level of an environment in the file (as documented before the section existed).
VALIDATION_TOP_LEVEL_KEYS = ("scratch_database_url_env", "scratch_allow_superuser")


@dataclass(frozen=True)
class ValidationSpec:
    """Restoring every backup into a scratch database to prove it; on when a scratch server is named."""

    scratch_database_url_env: str | None = setting(
        None, var="ACCI_SCRATCH_DATABASE_URL", inherit=True,
        help=("PostgreSQL maintenance database (role with LOGIN CREATEDB and nothing more) where validation "
              "restores and drills go, kept in ACCI_SCRATCH_DATABASE_URL or scratch_database_url_env."))
    scratch_allow_superuser: bool = setting(
        False, var="ACCI_SCRATCH_ALLOW_SUPERUSER", inherit=True,
        help=("Accept a scratch role that is a superuser (or a member of pg_execute_server_program, "
              "pg_write_server_files or pg_read_server_files, or has CREATEROLE). Validation and drills "
              "restore archives from the bucket; as such a role, a crafted archive can run shell commands "
              "on the scratch server. Off by default: those roles are refused."))
    mode: str = setting("auto", var="ACCI_VALIDATION_MODE", inherit=True, choices=("auto", "parallel", "stream"),
                        help="auto, parallel (decompress to a local file, pg_restore -j) or stream (no disk).")
    jobs: int = setting(2, var="ACCI_VALIDATION_JOBS", inherit=True, minimum=1,
                        help="pg_restore --jobs for parallel validation restores.")
    work_dir: str | None = setting(None, var="ACCI_VALIDATION_WORK_DIR", inherit=True,
                                   help="Where the parallel-mode local file goes (default: the system temp dir).")
    amcheck: str = setting("auto", var="ACCI_VALIDATION_AMCHECK", inherit=True, choices=("auto", "off", "required"),
                           help="pg_amcheck --heapallindexed: auto, off or required.")
    assertions_file: str | None = setting(None, var="ACCI_VALIDATION_ASSERTIONS_FILE", inherit=True,
                                          help="YAML list of {name, sql} assertions each restore must pass.")

    @property
    def enabled(self) -> bool:
        return self.scratch_database_url_env is not None


DEFAULT_COMPOSE_FILES = ("deploy/compose/docker-compose.yml", "deploy/compose/docker-compose.prod.yml")


@dataclass(frozen=True)
class DrSpec:
    """How an environment is deployed and verified, for DR drills and on-call recovery."""

    platform: str = setting("local", var="ACCI_PLATFORM",
                            help="How ACCI Framework is deployed: local, helm or compose.")
    app_url: str | None = setting(None, var="ACCI_APP_URL",
                                  help="The environment's public app URL, verified after a recovery.")
    redis_url_env: str | None = setting(None, var="ACCI_REDIS_URL",
                                        help="The environment's Redis (FLUSHALL after a restore).")
    drill_redis_url_env: str | None = setting(None, var="ACCI_DRILL_REDIS_URL",
                                              help="A Redis database for drills, never production's.")
    local_command: str | None = setting(None, var="ACCI_LOCAL_APP_COMMAND",
                                        help="Command that starts the app (local backend; {port} is replaced).")
    helm_bin: str = setting("helm", var="ACCI_HELM_BIN", inherit=True, help="helm binary.")
    helm_release: str = setting("acci-framework", var="ACCI_HELM_RELEASE", help="Helm release name.")
    helm_namespace: str = setting("acci", var="ACCI_HELM_NAMESPACE", help="Namespace of the environment's release.")
    helm_chart: str = setting("deploy/helm/acci-framework", var="ACCI_HELM_CHART",
                              help="Chart directory (relative to the acci_ops checkout unless absolute).")
    helm_dr_values: str = setting("deploy/helm/dr-values.yaml", var="ACCI_HELM_DR_VALUES",
                                  help="Values file for DR installs.")
    helm_drill_values: str = setting("deploy/helm/drill-values.yaml", var="ACCI_HELM_DRILL_VALUES",
                                     help="Values file for drill installs.")
    helm_drill_app_url: str = setting("http://acci-framework.{namespace}.svc.cluster.local:8080",
                                      var="ACCI_HELM_DRILL_APP_URL",
                                      help="URL of a drill release; {namespace} is replaced.")
    compose_files: tuple[str, ...] = setting(DEFAULT_COMPOSE_FILES, var="ACCI_COMPOSE_FILES",
                                             help="Compose files (base, then the prod override).")
    compose_project: str = setting("acci", var="ACCI_COMPOSE_PROJECT", help="Compose project of the environment.")
    compose_drill_app_url: str = setting("http://127.0.0.1:8080", var="ACCI_COMPOSE_DRILL_APP_URL",
                                         help="URL of a drill project (its port is replaced by the published one).")
    required_metrics: tuple[str, ...] = setting((), var="ACCI_REQUIRED_METRICS",
                                                help="Metric names /metrics must expose.")
    rto_target_minutes: float = setting(30, var="ACCI_RTO_TARGET_MINUTES", help="A drill fails when RTO exceeds this.")
    rpo_target_hours: float = setting(26, var="ACCI_RPO_TARGET_HOURS", help="A drill fails when RPO exceeds this.")
    health_deadline_seconds: float = setting(300, var="ACCI_HEALTH_DEADLINE_SECONDS",
                                             help="How long /health may take to answer 2xx.")

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ConfigError(f"platform {self.platform!r} is not a backend; use one of {', '.join(PLATFORMS)}")
        if self.platform == "local" and not self.local_command:
            raise ConfigError("the local platform needs ACCI_LOCAL_APP_COMMAND (the command that starts the app)")
        if not self.drill_redis_url_env:
            raise ConfigError("DR needs a Redis for drills: set ACCI_DRILL_REDIS_URL (never production's Redis)")


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    backup: BackupSpec
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    dr: DrSpec | None = None  # DR drills and recovery are on when a platform is configured

    @property
    def validates(self) -> bool:
        return self.validation.enabled


@dataclass(frozen=True)
class AlertSpec:
    """Where failure and DR notices go (one for the whole code location)."""

    url_env: str | None = setting(None, var="ACCI_ALERT_WEBHOOK_URL",
                                  help="Slack-compatible incoming webhook URL (kept in ACCI_ALERT_WEBHOOK_URL).")
    dagster_url: str | None = setting(None, var="ACCI_DAGSTER_URL",
                                      help="Base URL of the Dagster UI, for links in alerts.")


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
    tags_per_tick: int = setting(5, var="ACCI_SOURCE_TAGS_PER_TICK", minimum=1,
                                 help="Most new release tags source_tag_sensor turns into builds per tick.")

    @property
    def enabled(self) -> bool:
        """Image builds are on when both the source and the image repository are named."""
        return bool(self.source_repo and self.image_repository)


@dataclass(frozen=True)
class Settings:
    environments: tuple[EnvironmentSpec, ...]
    timezone: str = DEFAULT_TIMEZONE
    start_date: date = DEFAULT_START_DATE
    from_file: str | None = None  # the environments file, when one is used
    alerts: AlertSpec = field(default_factory=AlertSpec)
    images: ImagesSpec = field(default_factory=ImagesSpec)

    def environment(self, name: str) -> EnvironmentSpec:
        for spec in self.environments:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.environments)
        raise ConfigError(f"unknown environment {name!r}; declared: {known}")


def url_scheme(url: str | None) -> str | None:
    """The scheme of a URL, lowercased (``s3``, ``file``), or None when there is none. Only the scheme:
    the rest of a URL held in a variable may carry credentials and is not looked at."""
    head, sep, _ = (url or "").strip().partition("://")
    return head.lower() if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head) else None


# --- one field from a variable or from the file ------------------------------------------------

def _types(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls)


def base_type(hint: object) -> tuple[object, bool]:
    """``str | None`` -> (str, True); ``tuple[str, ...]`` -> (tuple, False)."""
    optional = False
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not NoneType]
        optional, hint = True, args[0]
    return (typing.get_origin(hint) or hint), optional


def _env_name(value: object, label: str, where: str) -> str:
    """A ``*_env`` field holds the NAME of a variable. A secret pasted there by mistake must not be
    accepted (Dagster would later quote it in a config error), nor echoed by this refusal."""
    if not isinstance(value, str) or not _ENV_VAR.match(value):
        raise ConfigError(f"{where}: {label} must be the NAME of an environment variable holding the value, "
                          f"not the value itself ({_ENV_NAME_HINT})")
    return value


def _check_env_fields(raw: object, where: str, prefix: str = "") -> None:
    """Every key ending in ``_env`` of a YAML mapping, present and future, is a variable name."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(key, str) and key.endswith("_env") and value is not None:
                _env_name(value, prefix + key, where)


def _from_variable(environ: Mapping[str, str], f: Field, kind: object) -> object:
    """The field's value from its variable, or MISSING when the variable is unset or empty."""
    name = f.metadata["var"]
    if f.name.endswith("_env"):
        return name if environ.get(name) else MISSING
    raw = environ.get(name, "").strip()
    if kind is bool:
        if raw.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{name}={raw!r} must be true or false")
        return raw.lower() in _TRUE if raw else MISSING
    if not raw:
        return MISSING
    if kind is tuple:
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        return items or MISSING
    if kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} must be a {'whole number' if kind is int else 'number'}") from None
        return _checked(value, f, f"{name}={raw!r}")
    return _checked(raw, f, f"{name}={raw!r}")


def _from_file(value: object, f: Field, kind: object, label: str, where: str) -> object:
    """The field's value from the environments file; the file's YAML types are checked, not coerced."""
    if f.name.endswith("_env"):
        return _env_name(value, label, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {label} must be true or false")
        return value
    if kind is tuple:
        # `required_metrics: abc` would otherwise become ('a', 'b', 'c').
        if not isinstance(value, list) or not all(isinstance(i, str) and i.strip() for i in value):
            raise ConfigError(f"{where}: {label} must be a list of non-empty strings, e.g. [a, b] "
                              "or one '- item' per line")
        return tuple(value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            raise ConfigError(f"{where}: {label} must be a {'whole number' if kind is int else 'number'}, "
                              f"not {value!r}")
        return _checked(kind(value), f, f"{where}: {label} {value!r}")
    if isinstance(value, bool) and ("off" if value is False else "on") in f.metadata["choices"]:
        return "off" if value is False else "on"  # YAML reads a bare `off` as false: `amcheck: off`
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: {label} must be a single value, not {type(value).__name__}")
    return _checked(str(value), f, f"{where}: {label} {value!r}")


def _checked(value: object, f: Field, what: str) -> object:
    choices, minimum = f.metadata["choices"], f.metadata["minimum"]
    if choices and value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{what} must be at least {minimum:g}")
    return value


def _section(cls: type, environ: Mapping[str, str], raw: Mapping[str, object] | None, *, where: str,
             label: typing.Callable[[str], str] = str, given: Mapping[str, object] | None = None) -> object:
    """Build one section: a value the caller already has (``given``), else the file's (``raw``, when
    an environments file is used), else the variable (always without a file; with one only when the
    field is ``inherit``), else the field's default."""
    values: dict[str, object] = dict(given or {})
    hints = _types(cls)
    for f in fields(cls):
        if f.name in values:
            continue
        kind, _ = base_type(hints[f.name])
        value = MISSING
        if raw is not None and f.metadata["in_file"] and raw.get(f.name) is not None:
            value = _from_file(raw[f.name], f, kind, label(f.name), where)
        elif f.metadata["var"] and (raw is None or f.metadata["inherit"]):
            value = _from_variable(environ, f, kind)
        if value is not MISSING:
            values[f.name] = value
    return cls(**values)


def file_keys(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    """The keys the environments file may set in a section."""
    return {f.name for f in fields(cls) if f.metadata["in_file"] and f.name not in exclude}


# --- sections that are more than flat fields ---------------------------------------------------

RETENTION_VARIABLES = {"daily": "ACCI_RETENTION_DAILY", "weekly": "ACCI_RETENTION_WEEKLY",
                       "monthly": "ACCI_RETENTION_MONTHLY"}


def _retention_from_environ(environ: Mapping[str, str]) -> RetentionPolicy:
    counts = {}
    for tier, name in RETENTION_VARIABLES.items():
        raw = environ.get(name, "").strip()
        if raw:
            try:
                counts[tier] = int(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} must be a whole number") from None
    return RetentionPolicy(**counts)


def _retention_from_file(raw: object, where: str) -> RetentionPolicy:
    if raw is None:
        return RetentionPolicy()
    if not isinstance(raw, dict) or set(raw) - set(RETENTION_VARIABLES):
        raise ConfigError(f"retention in {where} must be a mapping with daily/weekly/monthly counts")
    return RetentionPolicy(**raw)


def _offsite_from_file(raw: object, where: str, environ: Mapping[str, str]) -> OffsiteSpec | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"url": raw}
    allowed = file_keys(OffsiteSpec)
    if not isinstance(raw, dict) or not raw.get("url") or set(raw) - allowed:
        raise ConfigError(f"offsite in {where} must be a URL or a mapping with url and optional "
                          f"{', '.join(sorted(allowed - {'url'}))}")
    return _section(OffsiteSpec, environ, raw, where=where, label=lambda k: f"offsite.{k}")


def _dr_from_file(raw: object, where: str, environ: Mapping[str, str]) -> DrSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"dr in {where} must be a mapping")
    unknown = set(raw) - file_keys(DrSpec)
    if unknown:
        raise ConfigError(f"dr in {where} has unknown keys {sorted(unknown)}")
    return _section(DrSpec, environ, raw, where=where, label=lambda k: f"dr.{k}")


def _validation_from_file(body: Mapping[str, object], where: str, environ: Mapping[str, str]) -> ValidationSpec:
    section = body.get("validation")
    if section is None:
        section = {}
    allowed = file_keys(ValidationSpec, exclude=VALIDATION_TOP_LEVEL_KEYS)
    if not isinstance(section, dict) or set(section) - allowed:
        raise ConfigError(f"validation in {where} must be a mapping with optional {', '.join(sorted(allowed))}")
    raw = {**section, **{k: body[k] for k in VALIDATION_TOP_LEVEL_KEYS if k in body}}

    def label(key: str) -> str:
        return key if key in VALIDATION_TOP_LEVEL_KEYS else f"validation.{key}"

    return _section(ValidationSpec, environ, raw, where=where, label=label)


# --- whole environments --------------------------------------------------------------------------

def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"environment name {name!r} in {where} must be lowercase letters, digits and _ "
                          "starting with a letter (it becomes part of asset keys)")
    return name


ENVIRONMENT_KEYS = (file_keys(BackupSpec) | set(VALIDATION_TOP_LEVEL_KEYS) | {"validation", "dr"})


def _environment_from_file(name: object, body: object, path: str, environ: Mapping[str, str]) -> EnvironmentSpec:
    where = f"{path} environment {name!r}"
    _check_name(name, path)
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = set(body) - ENVIRONMENT_KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(ENVIRONMENT_KEYS)}")
    for required in ("database_url_env", "backup_url"):
        if not body.get(required):
            raise ConfigError(f"{where} lacks {required}")
    _check_env_fields(body, where)
    for nested in ("offsite", "dr", "validation"):
        _check_env_fields(body.get(nested), where, f"{nested}.")
    backup = _section(BackupSpec, environ, body, where=where, given={
        "offsite": _offsite_from_file(body.get("offsite"), where, environ),
        "retention": _retention_from_file(body.get("retention"), where),
    })
    return EnvironmentSpec(name=name, backup=backup, validation=_validation_from_file(body, where, environ),
                           dr=_dr_from_file(body.get("dr"), where, environ))


def _environment_from_variables(environ: Mapping[str, str]) -> EnvironmentSpec:
    name = _check_name(environ.get("ACCI_ENVIRONMENT", "").strip() or DEFAULT_ENVIRONMENT, "ACCI_ENVIRONMENT")
    offsite = None
    if environ.get("ACCI_OFFSITE_URL", "").strip():
        offsite = _section(OffsiteSpec, environ, None, where="variables")
    backup = _section(BackupSpec, environ, None, where="variables", given={
        "database_url_env": "ACCI_DATABASE_URL", "backup_url_env": "ACCI_BACKUP_URL",
        "backup_url_scheme": url_scheme(environ.get("ACCI_BACKUP_URL")),
        "offsite": offsite, "retention": _retention_from_environ(environ),
    })
    dr = None
    if environ.get("ACCI_PLATFORM", "").strip():
        dr = _section(DrSpec, environ, None, where="variables")
    return EnvironmentSpec(name=name, backup=backup, validation=_section(ValidationSpec, environ, None,
                                                                         where="variables"), dr=dr)


def _read_file(path: str) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} is not valid YAML{where}: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("environments"), dict) or not doc["environments"]:
        raise ConfigError(f"ACCI_ENVIRONMENTS_FILE {path} must have a non-empty 'environments:' mapping")
    return doc


def _check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"ACCI_TIMEZONE {tz!r} is not a known IANA time zone (e.g. UTC, Europe/Madrid)") from None
    return tz


def _parse_start_date(raw: str, what: str) -> date:
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{what} {raw!r} must be a date like 2026-01-01") from None


def start_date_from(environ: Mapping[str, str]) -> date:
    """The first daily partition: ACCI_BACKUP_START_DATE, else DEFAULT_START_DATE.

    Never computed from "today" here: the definitions are built in every process (webserver,
    daemon, each run worker, after every restart) and must be identical in all of them, or a run
    is launched for a partition its worker does not know. A deployment sets the variable once, to
    its first day, in the environment all its processes share; ``./run dev`` records that day once
    in its DAGSTER_HOME (record_start_date) and exports it. The default stays put so an upgraded
    deployment that never set the variable keeps its partitions and their history."""
    raw = environ.get("ACCI_BACKUP_START_DATE", "").strip()
    return _parse_start_date(raw, "ACCI_BACKUP_START_DATE") if raw else DEFAULT_START_DATE


def record_start_date(path: Path, today: date) -> date:
    """The date recorded in ``path``; the first call records the day before ``today`` (a daily
    partition exists once its day has ended, so the first partition is ready to materialize at
    once, instead of a year of "missing" ones). Later calls return the recorded date unchanged, so
    restarts and every process agree. Written atomically: a crash leaves the file whole or absent."""
    try:
        return _parse_start_date(path.read_text().strip(), f"{path} holds")
    except FileNotFoundError:
        pass
    start = today - timedelta(days=1)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(start.isoformat() + "\n")
    os.replace(partial, path)
    return start


def _images(environ: Mapping[str, str]) -> ImagesSpec:
    """Image settings come from variables only (one image for every environment)."""
    spec = _section(ImagesSpec, environ, None, where="variables")
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


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the deployment's shape; a malformed file or unknown name fails with one clear line."""
    environ = os.environ if environ is None else environ
    start = start_date_from(environ)
    alerts = _section(AlertSpec, environ, None, where="variables")
    images = _images(environ)
    path = environ.get("ACCI_ENVIRONMENTS_FILE", "").strip()
    if not path:
        tz = _check_timezone(environ.get("ACCI_TIMEZONE", "").strip() or DEFAULT_TIMEZONE)
        return Settings((_environment_from_variables(environ),), tz, start, None, alerts, images)
    doc = _read_file(path)
    specs = tuple(_environment_from_file(name, body, path, environ) for name, body in doc["environments"].items())
    tz = _check_timezone(environ.get("ACCI_TIMEZONE", "").strip() or str(doc.get("timezone") or DEFAULT_TIMEZONE))
    settings = Settings(specs, tz, start, path, alerts, images)
    chosen = environ.get("ACCI_ENVIRONMENT", "").strip()
    if chosen:
        # One code location per environment: serve only the named one.
        settings = Settings((settings.environment(chosen),), tz, start, path, alerts, images)
    return settings
