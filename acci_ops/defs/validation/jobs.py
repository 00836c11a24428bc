"""Validation runs launched by the sensor, and cleanup of scratch leftovers."""


from datetime import timedelta

import dagster as dg

from acci_ops.defs._contracts import validated_asset_key
from acci_ops.defs._shared import engine_errors, k8s_run_tags, resource_keys, section_resource
from acci_ops.defs.validation.checks import check_key
from acci_ops.defs.validation.resources import AcciValidation
from acci_ops.lib.postgres.scratch import drop_stale_scratch_databases
from acci_ops.settings import EnvironmentSpec, Settings


def build_validate_job(specs: list[EnvironmentSpec], settings: Settings):  # noqa: ANN201 - an unresolved asset job (not a public type)
    return dg.define_asset_job(
        name="validate_backup",
        selection=(dg.AssetSelection.checks(*(check_key(s, settings) for s in specs))
                   | dg.AssetSelection.assets(*(validated_asset_key(s, settings) for s in specs))),
        description=(
            "Restores one backup into a scratch database and checks it (the restores_cleanly check), then records "
            "the newest validated backup. Launched by backup_validation_sensor for every backup that lands."
        ),
        tags={"acci/operation": "validation", **k8s_run_tags(settings, "validation")},
    )


def build_scratch_cleanup_job(specs: list[EnvironmentSpec]) -> dg.JobDefinition:
    @dg.op(required_resource_keys=resource_keys(specs, "validation"),
           description="Drop acci_scratch_* databases older than a day.")
    def drop_stale_scratch(context: dg.OpExecutionContext) -> dg.Output:
        dropped: list[str] = []
        for spec in specs:
            validation: AcciValidation = section_resource(context, "validation", spec.name)
            with engine_errors(f"scratch cleanup of {spec.name}: "):
                names = drop_stale_scratch_databases(validation.scratch(), timedelta(days=1))
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


def build_scratch_cleanup_schedule(job: dg.JobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="scratch_cleanup_schedule", job=job, cron_schedule="0 5 * * *", execution_timezone=settings.timezone,
        description="Every day at 05:00, drop leftover scratch databases older than a day.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
