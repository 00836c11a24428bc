"""The backup section: what is backed up, where to (and a second, offsite store), and how long it
is kept. In the environments file this section is the environment's body itself (``backup_url:``
at the top of an environment), as it was before the other sections existed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from acci_ops.lib.backup.retention import RetentionPolicy
from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings._fields import check_env_fields, file_keys, load_section, setting, url_scheme
from acci_ops.settings._registry import Section, register


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
    return load_section(OffsiteSpec, environ, raw, where=where, label=lambda k: f"offsite.{k}")


def _from_variables(environ: Mapping[str, str]) -> BackupSpec:
    """Without a file the locations are variables too: the fields hold the variables' names."""
    offsite = None
    if environ.get("ACCI_OFFSITE_URL", "").strip():
        offsite = load_section(OffsiteSpec, environ, None, where="variables")
    return load_section(BackupSpec, environ, None, where="variables", given={
        "database_url_env": "ACCI_DATABASE_URL", "backup_url_env": "ACCI_BACKUP_URL",
        "backup_url_scheme": url_scheme(environ.get("ACCI_BACKUP_URL")),
        "offsite": offsite, "retention": _retention_from_environ(environ),
    })


def _from_file(body: Mapping[str, object], where: str, environ: Mapping[str, str]) -> BackupSpec:
    for required in ("database_url_env", "backup_url"):
        if not body.get(required):
            raise ConfigError(f"{where} lacks {required}")
    check_env_fields(body, where)  # every *_env at the top of the environment, other sections' included
    check_env_fields(body.get("offsite"), where, "offsite.")
    return load_section(BackupSpec, environ, body, where=where, given={
        "offsite": _offsite_from_file(body.get("offsite"), where, environ),
        "retention": _retention_from_file(body.get("retention"), where),
    })


register(Section(name="backup", spec=BackupSpec, per_environment=True, required=True,
                 file_keys=frozenset(file_keys(BackupSpec)), from_variables=_from_variables, from_file=_from_file))
