"""The one entry point of the acci_ops code location."""

from __future__ import annotations

import os

import dagster as dg

from acci_ops.defs.alerts import run_failure_alert_sensor
from acci_ops.defs.backups.assets import (
    backup_asset_key,
    build_backup_asset,
    build_offsite_asset,
    offsite_asset_key,
)
from acci_ops.defs.backups.jobs import (
    build_nightly_backup_job,
    build_nightly_backup_schedule,
    build_retention_schedule,
)
from acci_ops.defs.backups.retention import build_retention_job
from acci_ops.defs.dr.jobs import build_drill_job, build_drill_schedule, build_recovery_job, drill_asset_specs
from acci_ops.defs.resources import AlertWebhook, dr_resource, dr_resource_key, environment_resource, resource_key
from acci_ops.defs.validation.checks import (
    build_restore_check,
    build_validated_asset,
    check_key,
    validated_asset_key,
)
from acci_ops.defs.validation.jobs import (
    build_scratch_cleanup_job,
    build_scratch_cleanup_schedule,
    build_validate_job,
)
from acci_ops.defs.validation.sensors import build_validation_sensor
from acci_ops.settings import Settings, load_settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything for the declared environments; secrets stay EnvVar references."""
    assets, checks, backup_keys = [], [], []
    validation = dg.AssetSelection.assets()  # empty until an environment has a scratch server
    resources: dict[str, object] = {}
    for spec in settings.environments:
        resources[resource_key(spec.name)] = environment_resource(spec)
        if spec.dr:
            resources[dr_resource_key(spec.name)] = dr_resource(spec)
        assets.append(build_backup_asset(spec, settings))
        backup_keys.append(backup_asset_key(spec, settings))
        if spec.offsite:
            assets.append(build_offsite_asset(spec, settings))
            backup_keys.append(offsite_asset_key(spec, settings))
        if spec.validates:
            checks.append(build_restore_check(spec, settings))
            assets.append(build_validated_asset(spec, settings))
            backup_keys.append(validated_asset_key(spec, settings))
            validation = validation | dg.AssetSelection.checks(check_key(spec, settings)) | dg.AssetSelection.assets(
                validated_asset_key(spec, settings))
    max_runtime = int(os.environ.get("ACCI_BACKUP_MAX_RUNTIME_SECONDS") or 4 * 3600) + 600
    nightly = build_nightly_backup_job(backup_keys, max_runtime)
    retention = build_retention_job(settings)
    jobs = [nightly, retention]
    schedules = [build_nightly_backup_schedule(nightly, settings), build_retention_schedule(retention, settings)]
    sensors = [run_failure_alert_sensor]
    if checks:
        validate = build_validate_job(validation)
        cleanup = build_scratch_cleanup_job(settings)
        jobs += [validate, cleanup]
        schedules.append(build_scratch_cleanup_schedule(cleanup, settings))
        sensors.append(build_validation_sensor(settings, validate))
    if any(spec.dr for spec in settings.environments):
        jobs.append(build_recovery_job(settings))
        if any(spec.dr and spec.validates for spec in settings.environments):
            drill = build_drill_job(settings)
            jobs.append(drill)
            schedules.append(build_drill_schedule(drill, settings))
            assets += drill_asset_specs(settings)
    webhook_set = bool(os.environ.get("ACCI_ALERT_WEBHOOK_URL"))
    resources["alert_webhook"] = AlertWebhook(url=dg.EnvVar("ACCI_ALERT_WEBHOOK_URL") if webhook_set else None)
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=schedules,
        sensors=sensors,
        resources=resources,
    )


defs = build_definitions(load_settings())
