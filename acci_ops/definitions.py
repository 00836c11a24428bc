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
from acci_ops.defs.resources import AlertWebhook, environment_resource, resource_key
from acci_ops.settings import Settings, load_settings


def build_definitions(settings: Settings) -> dg.Definitions:
    """Everything for the declared environments; secrets stay EnvVar references."""
    assets, backup_keys = [], []
    resources: dict[str, object] = {}
    for spec in settings.environments:
        resources[resource_key(spec.name)] = environment_resource(spec)
        assets.append(build_backup_asset(spec, settings))
        backup_keys.append(backup_asset_key(spec, settings))
        if spec.offsite:
            assets.append(build_offsite_asset(spec, settings))
            backup_keys.append(offsite_asset_key(spec, settings))
    max_runtime = int(os.environ.get("ACCI_BACKUP_MAX_RUNTIME_SECONDS") or 4 * 3600) + 600
    nightly = build_nightly_backup_job(settings, backup_keys, max_runtime)
    retention = build_retention_job(settings)
    webhook_set = bool(os.environ.get("ACCI_ALERT_WEBHOOK_URL"))
    resources["alert_webhook"] = AlertWebhook(url=dg.EnvVar("ACCI_ALERT_WEBHOOK_URL") if webhook_set else None)
    return dg.Definitions(
        assets=assets,
        jobs=[nightly, retention],
        schedules=[build_nightly_backup_schedule(nightly, settings), build_retention_schedule(retention, settings)],
        sensors=[run_failure_alert_sensor],
        resources=resources,
    )


defs = build_definitions(load_settings())
