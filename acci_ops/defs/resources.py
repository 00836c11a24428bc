"""Resources wrapping the lib engines for Dagster; secrets arrive through ``dg.EnvVar``."""


import os

import dagster as dg
from pydantic import Field

from acci_ops.lib.alerts import post_webhook
from acci_ops.lib.dburl import DatabaseTarget, parse_database_url
from acci_ops.lib.errors import ConfigError
from acci_ops.lib.objectstore import Encryption, ObjectStore, S3Store, open_store
from acci_ops.lib.pgdump import BackupSettings
from acci_ops.lib.validation import ValidationSettings
from acci_ops.settings import EnvironmentSpec


class AcciEnvironment(dg.ConfigurableResource):
    """One ACCI environment: the database to protect and the object stores its backups go to."""

    name: str = Field(description="Environment name (production, staging, ...).")
    database_url: str = Field(description="postgresql://user:password@host:port/db, from an environment variable.")
    backup_url: str = Field(description="s3://bucket/prefix or file:///absolute/path for backups.")
    sse: str = Field(default="none", description="Server-side encryption for S3: none, sse-s3 or sse-kms.")
    kms_key_id: str | None = Field(default=None, description="KMS key id for sse-kms.")
    offsite_url: str | None = Field(default=None, description="Second object store for offsite copies.")
    offsite_endpoint_url: str | None = Field(default=None, description="S3 endpoint of the offsite store.")
    offsite_access_key_id: str | None = Field(default=None, description="Access key for the offsite store.")
    offsite_secret_access_key: str | None = Field(default=None, description="Secret key for the offsite store.")
    offsite_sse: str = Field(default="none", description="Server-side encryption for the offsite store.")
    offsite_kms_key_id: str | None = Field(default=None, description="KMS key id for the offsite store.")
    pg_bin_dir: str | None = Field(default=None, description="Directory holding pg_dump/pg_restore (default: PATH).")
    max_runtime_seconds: int = Field(default=4 * 3600, description="pg_dump is stopped after this long.")
    scratch_database_url: str | None = Field(
        default=None, description="PostgreSQL maintenance database (role with CREATEDB) for validation restores.")
    validation_mode: str = Field(default="auto", description="auto, parallel (local file, -j) or stream.")
    validation_jobs: int = Field(default=2, description="pg_restore --jobs for parallel validation restores.")
    validation_work_dir: str | None = Field(default=None, description="Where the local restore file goes.")
    validation_amcheck: str = Field(default="auto", description="pg_amcheck --heapallindexed: auto, off, required.")
    validation_assertions_file: str | None = Field(default=None, description="YAML of SQL assertions to run.")

    def target(self) -> DatabaseTarget:
        return parse_database_url(self.database_url, name=f"database URL of environment {self.name}")

    def store(self) -> ObjectStore:
        return open_store(self.backup_url, encryption=Encryption.parse(self.sse, self.kms_key_id))

    def offsite_store(self) -> ObjectStore | None:
        if not self.offsite_url:
            return None
        encryption = Encryption.parse(self.offsite_sse, self.offsite_kms_key_id)
        if self.offsite_url.startswith("s3://") and (self.offsite_access_key_id or self.offsite_endpoint_url):
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", endpoint_url=self.offsite_endpoint_url or None,
                aws_access_key_id=self.offsite_access_key_id or None,
                aws_secret_access_key=self.offsite_secret_access_key or None,
                config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required"),
            )
            return S3Store(self.offsite_url, encryption=encryption, client=client)
        return open_store(self.offsite_url, encryption=encryption)

    def scratch(self) -> DatabaseTarget:
        if not self.scratch_database_url:
            raise ConfigError(f"no scratch database configured for environment {self.name}; "
                              "set ACCI_SCRATCH_DATABASE_URL to validate backups")
        return parse_database_url(self.scratch_database_url, name=f"scratch database URL of environment {self.name}")

    def validation_settings(self) -> ValidationSettings:
        return ValidationSettings(
            mode=self.validation_mode, jobs=self.validation_jobs, work_dir=self.validation_work_dir or None,
            amcheck=self.validation_amcheck, assertions_file=self.validation_assertions_file or None,
            pg_bin_dir=self.pg_bin_dir or None,
        )

    def backup_settings(self) -> BackupSettings:
        return BackupSettings(max_runtime_seconds=self.max_runtime_seconds, pg_bin_dir=self.pg_bin_dir or None)


def environment_resource(spec: EnvironmentSpec) -> AcciEnvironment:
    """Build the resource from the settings; every secret stays an ``EnvVar`` reference."""
    offsite = spec.offsite
    optional_env = lambda name: dg.EnvVar(name) if name else None  # noqa: E731
    return AcciEnvironment(
        name=spec.name,
        database_url=dg.EnvVar(spec.database_url_env),
        backup_url=dg.EnvVar(spec.backup_url_env) if spec.backup_url_env else spec.backup_url,
        sse=spec.sse,
        kms_key_id=spec.kms_key_id,
        offsite_url=offsite.url if offsite else None,
        offsite_endpoint_url=offsite.endpoint_url if offsite else None,
        offsite_access_key_id=optional_env(offsite.access_key_id_env) if offsite else None,
        offsite_secret_access_key=optional_env(offsite.secret_access_key_env) if offsite else None,
        offsite_sse=offsite.sse if offsite else "none",
        offsite_kms_key_id=offsite.kms_key_id if offsite else None,
        pg_bin_dir=os.environ.get("ACCI_PG_BIN") or None,
        max_runtime_seconds=int(os.environ.get("ACCI_BACKUP_MAX_RUNTIME_SECONDS") or 4 * 3600),
        scratch_database_url=dg.EnvVar(spec.scratch_database_url_env) if spec.validates else None,
        validation_mode=os.environ.get("ACCI_VALIDATION_MODE") or "auto",
        validation_jobs=int(os.environ.get("ACCI_VALIDATION_JOBS") or 2),
        validation_work_dir=os.environ.get("ACCI_VALIDATION_WORK_DIR") or None,
        validation_amcheck=os.environ.get("ACCI_VALIDATION_AMCHECK") or "auto",
        validation_assertions_file=os.environ.get("ACCI_VALIDATION_ASSERTIONS_FILE") or None,
    )


def resource_key(environment: str) -> str:
    return f"acci_env_{environment}"


class AlertWebhook(dg.ConfigurableResource):
    """Slack-compatible incoming webhook for failure alerts; unset means alerts only in the logs."""

    url: str | None = Field(default=None, description="Incoming webhook URL (keep it in ACCI_ALERT_WEBHOOK_URL).")
    timeout_seconds: float = Field(default=10.0, description="HTTP timeout for one post.")

    def post(self, text: str) -> bool:
        if not self.url:
            return False
        post_webhook(self.url, text, timeout=self.timeout_seconds)
        return True
