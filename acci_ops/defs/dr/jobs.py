"""DR drills (scheduled, isolated, measured) and the guarded on-call disaster_recovery job."""

import dagster as dg
from pydantic import Field

from acci_ops.defs._shared import asset_key, environment_spec, keyring_or_warn, resource_keys, section_resource
from acci_ops.defs.alerts.resources import AlertWebhook, notify
from acci_ops.defs.dr.plans import Plan, check_confirmation, plan_drill, plan_recovery
from acci_ops.lib.dr.procedures import ProcedureReport, run_drill, run_recovery, store_procedure_report
from acci_ops.settings import EnvironmentSpec, Settings

DRILL_ASSET = "dr_drill"


def drill_asset_specs(specs: list[EnvironmentSpec], settings: Settings) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            asset_key(settings, spec.name, DRILL_ASSET),
            group_name="disaster_recovery",
            kinds={"postgres", "redis"},
            description=(
                f"Results of DR drills for {spec.name}: every dr_drill run records its RTO, RPO and step report "
                "here (also when it fails), so the plots show how recovery time evolves."
            ),
        )
        for spec in specs
    ]


def report_metadata(report: ProcedureReport, uri: str) -> dict[str, object]:
    metadata: dict[str, object] = {
        "passed": report.ok,
        "backup_key": report.backup_key,
        "report_uri": uri,
        "report": dg.MetadataValue.md(report.markdown()),
    }
    if report.rto_seconds is not None:
        metadata["rto_seconds"] = report.rto_seconds
        metadata["rto_minutes"] = round(report.rto_seconds / 60, 3)
    if report.rpo_seconds is not None:
        metadata["rpo_hours"] = round(report.rpo_seconds / 3600, 3)
    for step in report.steps:
        if step.status != "skipped":
            metadata[f"step_{step.name}_seconds"] = step.seconds
    if report.health_status is not None:
        metadata["health_status"] = report.health_status
    if report.kept_database:
        metadata["kept_database"] = report.kept_database
    if report.failure:
        metadata["failure"] = report.failure
    return metadata


def build_drill_job(specs: list[EnvironmentSpec], settings: Settings) -> dg.JobDefinition:
    """``specs``: the environments with DR and validation (a drill restores into the scratch server)."""
    default_env = specs[0].name

    class DrillConfig(dg.Config):
        environment: str = Field(default=default_env, description="Environment whose backups are drilled.")
        backup_key: str = Field(default="", description="Backup to restore (default: the newest one signed by "
                                "acci_ops with a signed, passing validation record).")
        allow_unvalidated_backup: bool = Field(default=False, description="Allow a named backup that is unsigned, "
                                               "failed or never passed validation. Same override as "
                                               "disaster_recovery; a drill never restores one silently.")

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "validation", "dr"),
           description="Bring up an isolated stack, restore, flush, verify, tear down.",
           out=dg.Out(dict, description="The drill report (passed or not); the next step fails the run on failure."))
    def run_dr_drill(context: dg.OpExecutionContext, config: DrillConfig) -> dict:
        spec = environment_spec(settings, config.environment, needs_dr=True)
        env = section_resource(context, "backup", spec.name)
        plan = plan_drill(settings, spec, env, section_resource(context, "validation", spec.name),
                          section_resource(context, "dr", spec.name), backup_key=config.backup_key,
                          allow_unvalidated=config.allow_unvalidated_backup, keyring=keyring_or_warn(context, env))
        context.log.info(f"drilling {spec.name} with backup {plan.request.backup_key} on {plan.platform.describe()}")
        report = run_drill(plan.request, store=plan.store, platform=plan.platform, log=context.log.info)
        uri = store_procedure_report(plan.store, report)
        # Recorded whether it passed or not, so the RTO/RPO plots include failed drills.
        context.log_event(dg.AssetMaterialization(asset_key=asset_key(settings, spec.name, DRILL_ASSET),
                                                  metadata=report_metadata(report, uri)))
        return {"ok": report.ok, "failure": report.failure, "markdown": report.markdown()}

    @dg.op(description="Fails the run when the drill failed, with the drill's one-line cause.")
    def drill_passed(report: dict) -> None:
        if not report["ok"]:
            raise dg.Failure(description=report["failure"],
                             metadata={"report": dg.MetadataValue.md(report["markdown"])})

    @dg.job(
        name="dr_drill",
        description=(
            "Rehearses the guide's disaster-recovery procedure on an isolated copy (its own scratch database and "
            "Redis, a drill namespace/project/process): infrastructure, restore of the newest validated backup, "
            "cache flush, /health and /metrics, then tears everything down. Measures RTO and RPO against the "
            "targets and stores the report beside the backups. Never touches production."
        ),
        tags={"acci/operation": "drill"},
    )
    def dr_drill() -> None:
        drill_passed(run_dr_drill())

    return dr_drill


def build_drill_schedule(job: dg.JobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="dr_drill_schedule", job=job, cron_schedule="0 3 1 * *", execution_timezone=settings.timezone,
        description="Monthly DR drill (1st of the month, 03:00). Isolated and torn down, so it runs unattended.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def _recovery_finished(context: dg.OpExecutionContext, webhook: AlertWebhook, plan: Plan,
                       report: ProcedureReport) -> None:
    """Store the report beside the backups, tag and annotate the run, tell the channel, and fail the
    run with the procedure's one-line cause when it failed."""
    uri = store_procedure_report(plan.store, report)
    outcome = "succeeded" if report.ok else "failed"
    context.instance.add_run_tags(context.run_id, {"acci/dr-outcome": outcome})
    context.add_output_metadata(report_metadata(report, uri))
    if report.kept_database:
        context.log.info(f"the database as it was before DR is kept as {report.kept_database}; drop it once "
                         "no longer needed (README, 'Disaster recovery')")
    notify(webhook, context, f"DR of `{report.environment}` {outcome}"
                             + (f" (RTO {report.rto_seconds / 60:.1f} min)" if report.rto_seconds else "")
                             + (f": {report.failure}" if report.failure else ""))
    if not report.ok:
        raise dg.Failure(description=report.failure)


def build_recovery_job(specs: list[EnvironmentSpec], settings: Settings) -> dg.JobDefinition:
    """``specs``: the environments with DR configured."""
    names = ", ".join(s.name for s in specs)

    class DisasterRecoveryConfig(dg.Config):
        environment: str = Field(description=f"Environment to recover ({names}).")
        confirm: str = Field(description="Type the environment's name again, by hand. Nothing runs unless it matches.")
        operator: str = Field(description="Who is launching this (name or handle); recorded on the run.")
        backup_key: str = Field(default="", description="Backup to restore (default: the newest one signed by "
                                "acci_ops with a signed, passing validation record).")
        skip_infrastructure: bool = Field(default=False, description="Skip step 1 (Helm/Compose) when the "
                                          "infrastructure is still up and only data must be restored.")
        allow_unvalidated_backup: bool = Field(default=False, description="Allow a backup that failed or never "
                                               "passed validation. Only when nothing better exists.")

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "dr") | {"alert_webhook"},
           description="Guarded: restores production from a backup.")
    def recover_environment(context: dg.OpExecutionContext, config: DisasterRecoveryConfig) -> None:
        check_confirmation(config.environment, config.confirm, config.operator)
        spec = environment_spec(settings, config.environment, needs_dr=True)
        env = section_resource(context, "backup", spec.name)
        webhook: AlertWebhook = context.resources.alert_webhook
        context.instance.add_run_tags(context.run_id, {"acci/dr-operator": config.operator.strip(),
                                                       "acci/dr-environment": spec.name})
        plan = plan_recovery(settings, spec, env, section_resource(context, "dr", spec.name),
                             backup_key=config.backup_key, allow_unvalidated=config.allow_unvalidated_backup,
                             skip_infrastructure=config.skip_infrastructure, keyring=keyring_or_warn(context, env))
        context.instance.add_run_tags(context.run_id, {"acci/dr-backup": plan.request.backup_key})
        notify(webhook, context, f":rotating_light: DR of `{spec.name}` started by {config.operator} "
                                 f"with backup `{plan.request.backup_key}`")
        report = run_recovery(plan.request, store=plan.store, platform=plan.platform, log=context.log.info)
        _recovery_finished(context, webhook, plan, report)

    @dg.job(
        name="disaster_recovery",
        description=(
            "ON-CALL ONLY. Runs the guide's recovery against the REAL environment: (1) infrastructure with "
            "dr-values (unless skipped), (2) restore of the chosen backup (default: newest validated) into a new "
            "database beside the environment's, verified against its manifest, then switched in by renaming (the "
            "previous database is kept as <db>_before_dr_<time>), and FLUSHALL of its Redis, (3) /health and "
            "/metrics. Never tears anything down. Requires 'confirm' to equal the environment's name; refuses "
            "another environment's backups, and unvalidated ones unless overridden. See README, 'Disaster recovery'."
        ),
        tags={"acci/operation": "dr"},
    )
    def disaster_recovery() -> None:
        recover_environment()

    return disaster_recovery
