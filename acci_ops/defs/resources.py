"""Resources wrapping the lib engines for Dagster; secrets arrive through ``dg.EnvVar``."""


import os

import dagster as dg
from pydantic import Field

from acci_ops.lib.alerts import post_webhook
from acci_ops.lib.dburl import DatabaseTarget, parse_database_url
from acci_ops.lib.objectstore import Encryption, ObjectStore, S3Store, open_store
from acci_ops.lib.pgdump import BackupSettings
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
