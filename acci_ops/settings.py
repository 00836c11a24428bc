"""Which environments this code location serves, from environment variables or a YAML file.

Only names and locations live here; secrets (database URLs with passwords, storage keys) are
referred to by the *name* of the environment variable that holds them and are resolved by
Dagster's ``EnvVar`` at run time, so they never enter the definitions, the UI or run config.

Single environment (the default): ``ACCI_ENVIRONMENT`` (default ``production``) with
``ACCI_DATABASE_URL`` and ``ACCI_BACKUP_URL``. Several: ``ACCI_ENVIRONMENTS_FILE`` names a YAML
file, see README "Several environments".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from acci_ops.lib.backup.retention import RetentionPolicy
from acci_ops.lib.core.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME_HINT = ("letters, digits and _, not starting with a digit, e.g. PRODUCTION_DATABASE_URL; "
                  "the value given is not shown, as it may be a secret")


def _env_name(value: object, field: str, where: str) -> str | None:
    """A ``*_env`` field holds the NAME of a variable. A secret pasted there by mistake must not be
    accepted (Dagster would later quote it in a config error), nor echoed by this refusal."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ENV_VAR.match(value):
        raise ConfigError(f"{where}: {field} must be the NAME of an environment variable holding the value, "
                          f"not the value itself ({_ENV_NAME_HINT})")
    return value


def _check_env_fields(raw: object, where: str, prefix: str = "") -> None:
    """Every key ending in ``_env`` of a YAML mapping, present and future, is a variable name."""
    if isinstance(raw, dict):
        for key, value in raw.items():
            if isinstance(key, str) and key.endswith("_env"):
                _env_name(value, prefix + key, where)


@dataclass(frozen=True)
class OffsiteSpec:
    url: str
    endpoint_url: str | None = None
    access_key_id_env: str | None = None
    secret_access_key_env: str | None = None
    sse: str = "none"
    kms_key_id: str | None = None


PLATFORMS = ("local", "helm", "compose")
DEFAULT_COMPOSE_FILES = ("deploy/compose/docker-compose.yml", "deploy/compose/docker-compose.prod.yml")


@dataclass(frozen=True)
class DrSpec:
    """How an environment is deployed and verified, for DR drills and on-call recovery."""

    platform: str = "local"
    app_url: str | None = None
    redis_url_env: str | None = None
    drill_redis_url_env: str | None = None
    local_command: str | None = None
    helm_release: str = "acci-framework"
    helm_namespace: str = "acci"
    helm_chart: str = "deploy/helm/acci-framework"
    helm_dr_values: str = "deploy/helm/dr-values.yaml"
    helm_drill_values: str = "deploy/helm/drill-values.yaml"
    helm_drill_app_url: str = "http://acci-framework.{namespace}.svc.cluster.local:8080"
    compose_files: tuple[str, ...] = DEFAULT_COMPOSE_FILES
    compose_project: str = "acci"
    compose_drill_app_url: str = "http://127.0.0.1:8080"
    required_metrics: tuple[str, ...] = ()
    rto_target_minutes: float = 30
    rpo_target_hours: float = 26
    health_deadline_seconds: float = 300

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
    database_url_env: str
    backup_url: str | None
    backup_url_env: str | None = None
    sse: str = "none"
    kms_key_id: str | None = None
    offsite: OffsiteSpec | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    scratch_database_url_env: str | None = None  # validation is on when this variable is set
    dr: DrSpec | None = None  # DR drills and recovery are on when a platform is configured
    # Restore (validation, drills) as a role that could run shell commands on the scratch server:
    # only when an operator accepts that risk (ACCI_SCRATCH_ALLOW_SUPERUSER / scratch_allow_superuser).
    scratch_allow_superuser: bool = False
    # NAME of the variable holding the backup signing key (ACCI_BACKUP_SIGNING_KEY); None: not configured
    signing_key_env: str | None = None

    @property
    def validates(self) -> bool:
        return self.scratch_database_url_env is not None


@dataclass(frozen=True)
class Settings:
    environments: tuple[EnvironmentSpec, ...]
    timezone: str = "UTC"
    start_date: date = date(2026, 1, 1)
    from_file: str | None = None

    @property
    def several(self) -> bool:
        return self.from_file is not None and len(self.environments) > 1

    def environment(self, name: str) -> EnvironmentSpec:
        for spec in self.environments:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.environments)
        raise ConfigError(f"unknown environment {name!r}; declared: {known}")


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"environment name {name!r} in {where} must be lowercase letters, digits and _ "
                          "starting with a letter (it becomes part of asset keys)")
    return name


def _check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"ACCI_TIMEZONE {tz!r} is not a known IANA time zone (e.g. UTC, Europe/Madrid)") from None
    return tz


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} must be a whole number") from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name, "").strip()
    if raw.lower() in _TRUE + _FALSE:
        return raw.lower() in _TRUE
    raise ConfigError(f"{name}={raw!r} must be true or false")


def _yaml_bool(value: object, field: str, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {field} must be true or false")
    return value


def _if_set(environ: Mapping[str, str], name: str) -> str | None:
    """The variable's name when it is set: the value itself is resolved later, by EnvVar."""
    return name if environ.get(name) else None


def _retention(raw: object, where: str) -> RetentionPolicy:
    if raw is None:
        return RetentionPolicy()
    if not isinstance(raw, dict) or set(raw) - {"daily", "weekly", "monthly"}:
        raise ConfigError(f"retention in {where} must be a mapping with daily/weekly/monthly counts")
    return RetentionPolicy(**raw)


def _offsite(raw: object, where: str) -> OffsiteSpec | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return OffsiteSpec(url=raw)
    allowed = {"url", "endpoint_url", "access_key_id_env", "secret_access_key_env", "sse", "kms_key_id"}
    if not isinstance(raw, dict) or "url" not in raw or set(raw) - allowed:
        raise ConfigError(f"offsite in {where} must be a URL or a mapping with url and optional "
                          f"{', '.join(sorted(allowed - {'url'}))}")
    return OffsiteSpec(**raw)


def _scratch_env(name: object, where: str, environ: Mapping[str, str]) -> str | None:
    """Validation needs a scratch server; it is enabled for an environment when the variable
    holding that server's URL exists (the URL itself is read by EnvVar at run time)."""
    if name is None:
        return _if_set(environ, "ACCI_SCRATCH_DATABASE_URL")
    return _env_name(name, "scratch_database_url_env", where)


SIGNING_KEY_VARIABLE = "ACCI_BACKUP_SIGNING_KEY"


def _signing_key_env(name: object, where: str, environ: Mapping[str, str]) -> str | None:
    """The variable holding this environment's backup signing key (its NAME, never the key);
    default ACCI_BACKUP_SIGNING_KEY when that is set. Unset: backups cannot be authenticated."""
    if name is None:
        return _if_set(environ, SIGNING_KEY_VARIABLE)
    if not isinstance(name, str) or not _ENV_VAR.match(name):
        raise ConfigError(f"{where}: signing_key_env must be the NAME of an environment variable holding the "
                          "signing key, not the key itself")
    return name


def _dr_from_environ(environ: Mapping[str, str]) -> DrSpec | None:
    platform = environ.get("ACCI_PLATFORM", "").strip()
    if not platform:
        return None
    try:
        metrics = tuple(m.strip() for m in environ.get("ACCI_REQUIRED_METRICS", "").split(",") if m.strip())
        files = tuple(f.strip() for f in environ.get("ACCI_COMPOSE_FILES", "").split(",") if f.strip())
        optional = {
            "helm_release": environ.get("ACCI_HELM_RELEASE"), "helm_namespace": environ.get("ACCI_HELM_NAMESPACE"),
            "helm_chart": environ.get("ACCI_HELM_CHART"), "helm_dr_values": environ.get("ACCI_HELM_DR_VALUES"),
            "helm_drill_values": environ.get("ACCI_HELM_DRILL_VALUES"),
            "helm_drill_app_url": environ.get("ACCI_HELM_DRILL_APP_URL"),
            "compose_project": environ.get("ACCI_COMPOSE_PROJECT"),
            "compose_drill_app_url": environ.get("ACCI_COMPOSE_DRILL_APP_URL"),
        }
        return DrSpec(
            platform=platform, app_url=environ.get("ACCI_APP_URL") or None,
            redis_url_env=_if_set(environ, "ACCI_REDIS_URL"),
            drill_redis_url_env=_if_set(environ, "ACCI_DRILL_REDIS_URL"),
            local_command=environ.get("ACCI_LOCAL_APP_COMMAND") or None,
            compose_files=files or DEFAULT_COMPOSE_FILES, required_metrics=metrics,
            rto_target_minutes=float(environ.get("ACCI_RTO_TARGET_MINUTES") or 30),
            rpo_target_hours=float(environ.get("ACCI_RPO_TARGET_HOURS") or 26),
            health_deadline_seconds=float(environ.get("ACCI_HEALTH_DEADLINE_SECONDS") or 300),
            **{k: v for k, v in optional.items() if v},
        )
    except ValueError as exc:
        raise ConfigError(f"DR settings: {exc}") from None


def _dr_from_yaml(raw: object, where: str) -> DrSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"dr in {where} must be a mapping")
    known = set(DrSpec.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"dr in {where} has unknown keys {sorted(unknown)}")
    values = dict(raw)
    for listed in ("compose_files", "required_metrics"):
        if listed in values:
            # `required_metrics: abc` would otherwise become ('a', 'b', 'c').
            items = values[listed]
            if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
                raise ConfigError(f"{where}: dr.{listed} must be a list of non-empty strings, e.g. [a, b] "
                                  "or one '- item' per line")
            values[listed] = tuple(items)
    try:
        return DrSpec(**values)
    except TypeError as exc:
        raise ConfigError(f"dr in {where}: {exc}") from None


def _from_file(path: str, environ: Mapping[str, str]) -> tuple[list[EnvironmentSpec], str | None]:
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
    specs = []
    for name, body in doc["environments"].items():
        where = f"{path} environment {name!r}"
        _check_name(name, path)
        if not isinstance(body, dict):
            raise ConfigError(f"{where} must be a mapping")
        allowed = {"database_url_env", "backup_url", "sse", "kms_key_id", "offsite", "retention",
                   "scratch_database_url_env", "dr", "signing_key_env", "scratch_allow_superuser"}
        unknown = set(body) - allowed
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        for required in ("database_url_env", "backup_url"):
            if not body.get(required):
                raise ConfigError(f"{where} lacks {required}")
        _check_env_fields(body, where)
        _check_env_fields(body.get("offsite"), where, "offsite.")
        _check_env_fields(body.get("dr"), where, "dr.")
        specs.append(EnvironmentSpec(
            name=name, database_url_env=body["database_url_env"], backup_url=body["backup_url"],
            sse=body.get("sse") or "none", kms_key_id=body.get("kms_key_id"),
            offsite=_offsite(body.get("offsite"), where), retention=_retention(body.get("retention"), where),
            scratch_database_url_env=_scratch_env(body.get("scratch_database_url_env"), where, environ),
            dr=_dr_from_yaml(body.get("dr"), where),
            signing_key_env=_signing_key_env(body.get("signing_key_env"), where, environ),
            scratch_allow_superuser=_yaml_bool(body.get("scratch_allow_superuser"), "scratch_allow_superuser", where,
                                               _bool(environ, "ACCI_SCRATCH_ALLOW_SUPERUSER")),
        ))
    tz = doc.get("timezone")
    return specs, str(tz) if tz else None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the deployment's shape; a malformed file or unknown name fails with one clear line."""
    environ = os.environ if environ is None else environ
    path = environ.get("ACCI_ENVIRONMENTS_FILE", "").strip()
    start_raw = environ.get("ACCI_BACKUP_START_DATE", "2026-01-01").strip()
    try:
        start = date.fromisoformat(start_raw)
    except ValueError:
        raise ConfigError(f"ACCI_BACKUP_START_DATE {start_raw!r} must be a date like 2026-01-01") from None
    if path:
        specs, file_tz = _from_file(path, environ)
        tz = _check_timezone(environ.get("ACCI_TIMEZONE") or file_tz or "UTC")
        chosen = environ.get("ACCI_ENVIRONMENT", "").strip()
        settings = Settings(tuple(specs), tz, start, path)
        if chosen:
            # One code location per environment: serve only the named one.
            settings = Settings((settings.environment(chosen),), tz, start, path)
        return settings
    name = _check_name(environ.get("ACCI_ENVIRONMENT", "").strip() or "production", "ACCI_ENVIRONMENT")
    offsite_url = environ.get("ACCI_OFFSITE_URL", "").strip()
    offsite = OffsiteSpec(
        url=offsite_url,
        endpoint_url=environ.get("ACCI_OFFSITE_ENDPOINT_URL") or None,
        access_key_id_env=_if_set(environ, "ACCI_OFFSITE_AWS_ACCESS_KEY_ID"),
        secret_access_key_env=_if_set(environ, "ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY"),
        sse=environ.get("ACCI_OFFSITE_SSE") or "none",
        kms_key_id=environ.get("ACCI_OFFSITE_KMS_KEY_ID") or None,
    ) if offsite_url else None
    spec = EnvironmentSpec(
        name=name, database_url_env="ACCI_DATABASE_URL", backup_url=None, backup_url_env="ACCI_BACKUP_URL",
        sse=environ.get("ACCI_BACKUP_SSE") or "none", kms_key_id=environ.get("ACCI_BACKUP_KMS_KEY_ID") or None,
        offsite=offsite,
        retention=RetentionPolicy(_int(environ, "ACCI_RETENTION_DAILY", 7), _int(environ, "ACCI_RETENTION_WEEKLY", 4),
                                  _int(environ, "ACCI_RETENTION_MONTHLY", 12)),
        scratch_database_url_env=_if_set(environ, "ACCI_SCRATCH_DATABASE_URL"),
        dr=_dr_from_environ(environ),
        signing_key_env=_if_set(environ, SIGNING_KEY_VARIABLE),
        scratch_allow_superuser=_bool(environ, "ACCI_SCRATCH_ALLOW_SUPERUSER"),
    )
    return Settings((spec,), _check_timezone(environ.get("ACCI_TIMEZONE", "").strip() or "UTC"), start)
