"""Validation runs launched by the sensor, and cleanup of scratch leftovers."""

from datetime import timedelta

import dagster as dg

from acci_ops.defs.resources import AcciEnvironment, resource_key
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.postgres.scratch import drop_stale_scratch_databases
from acci_ops.settings import Settings


def build_validate_job(selection: dg.AssetSelection):  # noqa: ANN201
    return dg.define_asset_job(
        name="validate_backup",
        selection=selection,
        description=(
            "Restores one backup into a scratch database and checks it (the restores_cleanly check), then records "
            "the newest validated backup. Launched by backup_validation_sensor for every backup that lands."
        ),
        tags={"acci/operation": "validation"},
    )


def build_scratch_cleanup_job(settings: Settings) -> dg.JobDefinition:
    keys = {resource_key(spec.name) for spec in settings.environments if spec.validates}

    @dg.op(required_resource_keys=keys, description="Drop acci_scratch_* databases older than a day.")
    def drop_stale_scratch(context: dg.OpExecutionContext) -> dg.Output:
        dropped: list[str] = []
        for spec in settings.environments:
            if not spec.validates:
                continue
            env: AcciEnvironment = getattr(context.resources, resource_key(spec.name))
            try:
                names = drop_stale_scratch_databases(env.scratch(), timedelta(days=1))
            except AcciOpsError as exc:
                raise dg.Failure(description=f"scratch cleanup of {spec.name}: {exc}") from None
            for name in names:
                context.log.info(f"dropped leftover scratch database {name}")
            dropped += names
        return dg.Output(None, metadata={"dropped": len(dropped), "names": ", ".join(dropped) or "none"})

    @dg.job(
        name="scratch_cleanup",
        description="Drops scratch databases (acci_scratch_*) left behind by validations killed mid-way, "
                    "once they are a day old. Never touches a database whose name acci_ops did not generate.",
        tags={"acci/operation": "validation"},
    )
    def scratch_cleanup() -> None:
        drop_stale_scratch()

    return scratch_cleanup


def build_scratch_cleanup_schedule(job, settings: Settings) -> dg.ScheduleDefinition:  # noqa: ANN001
    return dg.ScheduleDefinition(
        name="scratch_cleanup_schedule", job=job, cron_schedule="0 5 * * *", execution_timezone=settings.timezone,
        description="Every day at 05:00, drop leftover scratch databases older than a day.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
