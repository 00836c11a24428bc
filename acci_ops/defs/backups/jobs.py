"""Jobs and schedules that run the backups unattended."""

from __future__ import annotations

import dagster as dg

from acci_ops.defs._shared import k8s_run_tags
from acci_ops.defs.backups.assets import GROUP, MAX_RUNTIME_TAG, RUNTIME_MARGIN_SECONDS, nightly_max_runtime_seconds
from acci_ops.settings import Settings

__all__ = ["RUNTIME_MARGIN_SECONDS", "nightly_max_runtime_seconds"]  # defined with the assets, which use them too


def build_nightly_backup_job(settings: Settings):  # noqa: ANN201 - an unresolved asset job (not a public type)
    max_runtime = nightly_max_runtime_seconds(settings)
    # One environment: its steps run one after another anyway (validation and offsite follow the
    # backup), so the in-process executor saves the ~3 s a subprocess per step costs (measured by
    # benchmarks/run_overhead.py). Several: the multiprocess executor, so one environment's
    # validation restore never holds up another environment's backup.
    single = len(settings.environments) == 1
    return dg.define_asset_job(
        name="nightly_backup",
        selection=dg.AssetSelection.groups(GROUP),
        description=(
            "Backs up every environment's ACCI database to object storage and copies it offsite where "
            "configured. One backup per environment at a time (pools); stopped after the maximum runtime."
        ),
        tags={MAX_RUNTIME_TAG: str(max_runtime), "acci/operation": "backup",
              **k8s_run_tags(settings, "backup", max_runtime)},
        executor_def=dg.in_process_executor if single else None,
    )


def build_nightly_backup_schedule(job, settings: Settings) -> dg.ScheduleDefinition:  # noqa: ANN001 - an unresolved asset job
    return dg.build_schedule_from_partitioned_job(
        job,
        name="nightly_backup_schedule",
        description=(
            f"Every night at 02:00 {settings.timezone}, back up the day that just ended. On by default so a "
            "fresh deployment is protected. In zones with daylight saving, the night the clocks skip 02:00 "
            "runs at the first valid time after it (UTC, the default, has no such hole)."
        ),
        hour_of_day=2,
        minute_of_hour=0,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def build_retention_schedule(job: dg.JobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="backup_retention_schedule",
        job=job,
        cron_schedule="0 4 * * *",
        execution_timezone=settings.timezone,
        description="Every day at 04:00, after the nightly backup, apply the retention policy.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
