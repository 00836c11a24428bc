"""Backups: the nightly backup and offsite assets, their job and schedule, retention."""

from __future__ import annotations

import dagster as dg

from acci_ops.defs._shared import resource_key
from acci_ops.defs.backups.assets import build_backup_asset, build_offsite_asset
from acci_ops.defs.backups.jobs import build_nightly_backup_job, build_nightly_backup_schedule, build_retention_schedule
from acci_ops.defs.backups.resources import backup_resource
from acci_ops.defs.backups.retention import build_retention_job
from acci_ops.settings import Settings


def build_defs(settings: Settings) -> dg.Definitions:
    assets = [build_backup_asset(spec, settings) for spec in settings.environments]
    assets += [build_offsite_asset(spec, settings) for spec in settings.environments if spec.backup.offsite]
    nightly = build_nightly_backup_job(settings)
    retention = build_retention_job(settings)
    return dg.Definitions(
        assets=assets,
        jobs=[nightly, retention],
        schedules=[build_nightly_backup_schedule(nightly, settings), build_retention_schedule(retention, settings)],
        resources={resource_key("backup", spec.name): backup_resource(spec) for spec in settings.environments},
    )
