"""The per-environment validation resource (``acci_validation_<env>``): the scratch server and
how restores into it are run."""

from __future__ import annotations

from pydantic import Field

from acci_ops.defs._shared import resource_from_spec, spec_resource
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.postgres.urls import DatabaseTarget, parse_database_url
from acci_ops.lib.validation.validate import ValidationSettings
from acci_ops.settings import EnvironmentSpec, ValidationSpec


class AcciValidation(spec_resource(ValidationSpec, "AcciValidationFields",
                                   name=(str, Field(description="Environment name (production, staging, ...).")))):
    """Where an environment's backups are restored to be proven, and how."""

    # The docstring is the resource's description in the UI. DR's drill restores into the same
    # scratch server, through _contracts.ScratchServer, without importing this class.

    def scratch(self) -> DatabaseTarget:
        if not self.scratch_database_url:
            raise ConfigError(f"no scratch database configured for environment {self.name}; "
                              "set ACCI_SCRATCH_DATABASE_URL to validate backups")
        return parse_database_url(self.scratch_database_url, name=f"scratch database URL of environment {self.name}")

    def settings(self, pg_bin_dir: str | None) -> ValidationSettings:
        return ValidationSettings(
            mode=self.mode, jobs=self.jobs, work_dir=self.work_dir or None, amcheck=self.amcheck,
            assertions_file=self.assertions_file or None, pg_bin_dir=pg_bin_dir or None,
            scratch_allow_superuser=self.scratch_allow_superuser,
        )


def validation_resource(spec: EnvironmentSpec) -> AcciValidation:
    return resource_from_spec(AcciValidation, spec.validation, name=spec.name)
