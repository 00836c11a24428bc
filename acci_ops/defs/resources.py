"""Resources wrapping the lib engines for Dagster; secrets arrive through ``dg.EnvVar``."""


import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from acci_ops.lib.backup.dump import BackupSettings
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.webhook import post_webhook
from acci_ops.lib.platform.backends import ComposePlatform, HelmPlatform, LocalPlatform, Platform
from acci_ops.lib.postgres.urls import DatabaseTarget, parse_database_url
from acci_ops.lib.storage.objectstore import Encryption, ObjectStore, S3Store, open_store
from acci_ops.lib.validation.validate import ValidationSettings
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
    scratch_allow_superuser: bool = Field(
        default=False,
        description=("Accept a scratch role that is a superuser (or a member of pg_execute_server_program, "
                     "pg_write_server_files or pg_read_server_files, or has CREATEROLE). Validation and drills "
                     "restore archives from the bucket; as such a role, a crafted archive can run shell commands "
                     "on the scratch server. Off by default: those roles are refused. From "
                     "ACCI_SCRATCH_ALLOW_SUPERUSER or the environment's scratch_allow_superuser."))
    signing_key: str | None = Field(
        default=None,
        description=("Key that signs and authenticates backup manifests and validation records (HMAC-SHA256), from "
                     "ACCI_BACKUP_SIGNING_KEY (comma-separated: the first signs, all verify, for rotation). Unset: "
                     "backups cannot be authenticated, so retention deletes nothing and DR needs a named backup."))

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
            pg_bin_dir=self.pg_bin_dir or None, scratch_allow_superuser=self.scratch_allow_superuser,
        )

    def keyring(self) -> Keyring | None:
        """The signing keys, or None when none is configured (nothing can then be authenticated)."""
        return Keyring.from_secret(self.signing_key)

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
        scratch_allow_superuser=spec.scratch_allow_superuser,
        signing_key=dg.EnvVar(spec.signing_key_env) if spec.signing_key_env else None,
    )


def resource_key(environment: str) -> str:
    return f"acci_env_{environment}"


class AlertWebhook(dg.ConfigurableResource):
    """Slack-compatible incoming webhook for failure alerts; unset means alerts only in the logs."""

    url: str | None = Field(default=None, description="Incoming webhook URL (keep it in ACCI_ALERT_WEBHOOK_URL).")
    timeout_seconds: float = Field(
        default=10.0, description=("Total deadline for one post, from connecting to the last byte of the answer; "
                                   "a webhook that is slower or broken is logged and never stops DR or a backup."))

    def post(self, text: str) -> bool:
        """True when posted, False when no webhook is configured; a failed post raises one
        secret-free AcciOpsError line within ``timeout_seconds`` (callers log it and carry on)."""
        if not self.url:
            return False
        post_webhook(self.url, text, timeout=self.timeout_seconds)
        return True


PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _path(value: str) -> str:
    """Chart and Compose paths are relative to the acci_ops checkout unless absolute."""
    return value if os.path.isabs(value) else str(PROJECT_ROOT / value)


class AcciDisasterRecovery(dg.ConfigurableResource):
    """How one environment is deployed and verified, for drills and on-call recovery."""

    environment: str = Field(description="Environment name.")
    platform: str = Field(description="local, helm or compose.")
    app_url: str | None = Field(default=None, description="The environment's public app URL (verified after DR).")
    redis_url: str | None = Field(default=None, description="The environment's Redis (FLUSHALL after a restore).")
    drill_redis_url: str = Field(description="A Redis database for drills, never production's.")
    local_command: str | None = Field(default=None, description="Command that starts the app (local backend).")
    helm: str = Field(default="helm", description="helm binary.")
    helm_release: str = Field(default="acci-framework", description="Helm release name.")
    helm_namespace: str = Field(default="acci", description="Namespace of the environment's release.")
    helm_chart: str = Field(default="deploy/helm/acci-framework", description="Chart directory.")
    helm_dr_values: str = Field(default="deploy/helm/dr-values.yaml", description="Values for DR installs.")
    helm_drill_values: str = Field(default="deploy/helm/drill-values.yaml", description="Values for drills.")
    helm_drill_app_url: str = Field(default="", description="URL of a drill release; {namespace} is replaced.")
    compose_files: list[str] = Field(default_factory=list, description="Compose files (base, then prod override).")
    compose_project: str = Field(default="acci", description="Compose project of the environment.")
    compose_drill_app_url: str = Field(default="http://127.0.0.1:8080", description="URL of a drill project.")
    required_metrics: list[str] = Field(default_factory=list, description="Metric names /metrics must expose.")
    rto_target_minutes: float = Field(default=30, description="Drill fails when RTO exceeds this.")
    rpo_target_hours: float = Field(default=26, description="Drill fails when RPO exceeds this.")
    health_deadline_seconds: float = Field(default=300, description="How long /health may take to answer 2xx.")

    def platform_for(self, *, drill: bool, stamp: str = "") -> Platform:
        if self.platform == "local":
            return LocalPlatform(self.local_command or "", cwd=str(PROJECT_ROOT))
        if self.platform == "helm":
            namespace = f"{self.helm_namespace}-drill-{stamp}" if drill else self.helm_namespace
            values = _path(self.helm_drill_values if drill else self.helm_dr_values)
            url = self.helm_drill_app_url if drill else (self.app_url or "")
            return HelmPlatform(release=self.helm_release, namespace=namespace, chart=_path(self.helm_chart),
                                values_files=[values], app_url=url, helm=self.helm)
        if self.platform == "compose":
            project = f"{self.compose_project}-drill-{stamp}" if drill else self.compose_project
            url = self.compose_drill_app_url if drill else (self.app_url or "http://127.0.0.1:8080")
            return ComposePlatform(project=project, files=[_path(f) for f in self.compose_files], app_url=url,
                                   drill=drill)
        raise ConfigError(f"platform {self.platform!r} is not a backend; use local, helm or compose")


def dr_resource(spec: EnvironmentSpec) -> AcciDisasterRecovery:
    dr = spec.dr
    return AcciDisasterRecovery(
        environment=spec.name, platform=dr.platform, app_url=dr.app_url,
        redis_url=dg.EnvVar(dr.redis_url_env) if dr.redis_url_env else None,
        drill_redis_url=dg.EnvVar(dr.drill_redis_url_env), local_command=dr.local_command,
        helm=os.environ.get("ACCI_HELM_BIN") or "helm", helm_release=dr.helm_release,
        helm_namespace=dr.helm_namespace, helm_chart=dr.helm_chart, helm_dr_values=dr.helm_dr_values,
        helm_drill_values=dr.helm_drill_values, helm_drill_app_url=dr.helm_drill_app_url,
        compose_files=list(dr.compose_files), compose_project=dr.compose_project,
        compose_drill_app_url=dr.compose_drill_app_url, required_metrics=list(dr.required_metrics),
        rto_target_minutes=dr.rto_target_minutes, rpo_target_hours=dr.rpo_target_hours,
        health_deadline_seconds=dr.health_deadline_seconds,
    )


def dr_resource_key(environment: str) -> str:
    return f"acci_dr_{environment}"
