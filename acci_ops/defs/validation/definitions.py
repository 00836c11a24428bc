"""Validation: the restore check, the validated-backup asset, the sensor and job that validate every
backup that lands, and scratch cleanup. Present for the environments with a scratch server."""

from __future__ import annotations

import dagster as dg

from acci_ops.defs._shared import resource_key
from acci_ops.defs.validation.checks import build_restore_check, build_validated_asset
from acci_ops.defs.validation.jobs import build_scratch_cleanup_job, build_scratch_cleanup_schedule, build_validate_job
from acci_ops.defs.validation.resources import validation_resource
from acci_ops.defs.validation.sensors import build_validation_sensor
from acci_ops.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    specs = [spec for spec in settings.environments if spec.validates]
    if not specs:
        return dg.Definitions()
    validate = build_validate_job(specs, settings)
    cleanup = build_scratch_cleanup_job(specs)
    return dg.Definitions(
        assets=[build_validated_asset(spec, settings) for spec in specs],
        asset_checks=[build_restore_check(spec, settings) for spec in specs],
        jobs=[validate, cleanup],
        schedules=[build_scratch_cleanup_schedule(cleanup, settings)],
        sensors=[build_validation_sensor(specs, settings, validate)],
        resources={resource_key("validation", spec.name): validation_resource(spec) for spec in specs},
    )
