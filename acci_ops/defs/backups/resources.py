"""The per-environment backup resource (``acci_env_<env>``): the database and its object stores."""

from __future__ import annotations

from pydantic import Field

from acci_ops.defs._contracts import StepContext
from acci_ops.defs._shared import engine_errors, resource_from_spec, spec_resource
from acci_ops.lib.backup.dump import BackupSettings
from acci_ops.lib.backup.signing import NO_KEY_WARNING, Keyring
from acci_ops.lib.postgres.urls import DatabaseTarget, parse_database_url
from acci_ops.lib.storage.objectstore import Encryption, ObjectStore, S3Store, open_store
from acci_ops.settings import BackupSpec, EnvironmentSpec

_WARNED_RUNS: set[str] = set()


class AcciEnvironment(spec_resource(BackupSpec, "AcciEnvironmentFields",
                                    name=(str, Field(description="Environment name (production, staging, ...).")))):
    """One ACCI environment: the database to protect and the object stores its backups go to."""

    # The docstring is the resource's description in the UI. Validation and DR use this class as
    # _contracts.BackupEnvironment, without importing it.

    def target(self) -> DatabaseTarget:
        return parse_database_url(self.database_url, name=f"database URL of environment {self.name}")

    def store(self) -> ObjectStore:
        return open_store(self.backup_url, encryption=Encryption.parse(self.sse, self.kms_key_id))

    def offsite_store(self) -> ObjectStore | None:
        offsite = self.offsite
        if offsite is None:
            return None
        encryption = Encryption.parse(offsite.sse, offsite.kms_key_id)
        if offsite.url.startswith("s3://") and (offsite.access_key_id or offsite.endpoint_url):
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3", endpoint_url=offsite.endpoint_url or None,
                aws_access_key_id=offsite.access_key_id or None,
                aws_secret_access_key=offsite.secret_access_key or None,
                config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                              request_checksum_calculation="when_required",
                              response_checksum_validation="when_required"),
            )
            return S3Store(offsite.url, encryption=encryption, client=client)
        return open_store(offsite.url, encryption=encryption)

    def keyring(self) -> Keyring | None:
        """The signing keys, or None when none is configured (nothing can then be authenticated)."""
        return Keyring.from_secret(self.signing_key)

    def keyring_or_warn(self, context: StepContext) -> Keyring | None:
        """The signing keys; without any, warn once per run (per process) that nothing can be
        authenticated, and let the callers take the secure default. Backups, validation and DR all
        ask through here, so a run that touches several of them warns once."""
        with engine_errors():
            keyring = self.keyring()
        run_id = context.run.run_id
        if keyring is None and run_id not in _WARNED_RUNS:
            _WARNED_RUNS.add(run_id)
            context.log.warning(NO_KEY_WARNING)
        return keyring

    def backup_settings(self) -> BackupSettings:
        return BackupSettings(max_runtime_seconds=self.max_runtime_seconds, pg_bin_dir=self.pg_bin_dir or None)


def backup_resource(spec: EnvironmentSpec) -> AcciEnvironment:
    return resource_from_spec(AcciEnvironment, spec.backup, name=spec.name)
