"""DR drills (scheduled, isolated, measured) and the guarded on-call disaster_recovery job."""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from pydantic import Field

from acci_ops.defs._contracts import BackupEnvironment, Notifier, validated_asset_key
from acci_ops.defs._launchpad import NonBlankString, environment_enum
from acci_ops.defs._shared import asset_key, k8s_run_tags, resource_keys, section_resource
from acci_ops.defs.dr.plans import Plan, check_confirmation, environment_spec, plan_drill, plan_recovery
from acci_ops.lib.core.steps import human_duration
from acci_ops.lib.dr.procedures import ProcedureReport, run_drill, run_recovery, store_procedure_report
from acci_ops.settings import EnvironmentSpec, Settings

DRILL_ASSET = "dr_drill"


def report_metadata(report: ProcedureReport, uri: str) -> dict[str, object]:
    """The asset/output metadata of a drill or recovery: one plottable number per trend (RTO in
    seconds, RPO in hours, each step's seconds); everything else is text, so the UI plots only what
    trends."""
    metadata: dict[str, object] = {
        "passed": report.ok,
        "backup_key": report.backup_key,
        "report_uri": uri,
        "report": dg.MetadataValue.md(report.markdown()),
    }
    if report.rto_seconds is not None:
        metadata["rto_seconds"] = float(report.rto_seconds)
    if report.rpo_seconds is not None:
        metadata["rpo_hours"] = round(report.rpo_seconds / 3600, 3)
    for step in report.steps:
        if step.status != "skipped":
            metadata[f"step_{step.name}_seconds"] = step.seconds
    if report.health_status is not None:
        metadata["health_status"] = dg.MetadataValue.text(f"HTTP {report.health_status}")
    if report.kept_database:
        metadata["kept_database"] = report.kept_database
    if report.failure:
        metadata["failure"] = report.failure
    return metadata


def drill_schedule_text(settings: Settings) -> str:
    return f"the dr_drill job, launched monthly by dr_drill_schedule (1st of the month, 03:00 {settings.timezone})"


def build_drill_asset(specs: list[EnvironmentSpec], settings: Settings) -> dg.AssetsDefinition:
    """One ``dr_drill`` asset per environment with DR and validation (a drill restores into the
    scratch server), all produced by one op: ``environment`` in its config picks the one drilled.
    Each is downstream of the environment's validated backup, which is what a drill restores."""
    default_env = specs[0].name
    keys = {spec.name: asset_key(settings, spec.name, DRILL_ASSET) for spec in specs}

    class DrillConfig(dg.Config):
        environment: str = Field(default=default_env, description="Environment whose backups are drilled.")
        backup_key: str = Field(default="", description="Backup to restore (default: the newest one signed by "
                                "acci_ops with a signed, passing validation record).")
        allow_unvalidated_backup: bool = Field(default=False, description="Allow a named backup that is unsigned, "
                                               "failed or never passed validation. Same override as "
                                               "disaster_recovery; a drill never restores one silently.")

    @dg.multi_asset(
        name="run_dr_drill",
        specs=[
            dg.AssetSpec(
                keys[spec.name],
                deps=[validated_asset_key(spec, settings)],
                skippable=True,  # a run drills the one environment its config names
                group_name="disaster_recovery",
                kinds={"postgres", "redis"},
                tags={"acci/environment": spec.name},
                description=(
                    f"Results of DR drills for {spec.name}, produced by {drill_schedule_text(settings)}: each "
                    "drill restores the newest validated backup (db_backup_validated) into an isolated copy and "
                    "records its RTO, RPO and step report here, also when it fails, so the plots show how "
                    "recovery time evolves. A failed drill is materialized, then fails its run with the cause."
                ),
            )
            for spec in specs
        ],
        required_resource_keys=resource_keys(specs, "backup", "validation", "dr"),
        description="Bring up an isolated stack, restore, flush, verify, tear down; record the report.",
        op_tags={"acci/operation": "drill"},
    )
    def run_dr_drill(context: dg.AssetExecutionContext, config: DrillConfig) -> Iterator[dg.MaterializeResult]:
        spec = environment_spec(settings, config.environment, needs_dr=True)
        if spec.name not in keys:
            raise dg.Failure(description=(
                f"environment {spec.name!r} cannot be drilled: a drill restores into validation's scratch "
                f"server, which {spec.name} does not configure; drillable: {', '.join(keys)}"))
        env: BackupEnvironment = section_resource(context, "backup", spec.name)
        plan = plan_drill(settings, spec, env, section_resource(context, "validation", spec.name),
                          section_resource(context, "dr", spec.name), backup_key=config.backup_key,
                          allow_unvalidated=config.allow_unvalidated_backup, keyring=env.keyring_or_warn(context))
        context.log.info(f"drilling {spec.name} with backup {plan.request.backup_key} on {plan.platform.describe()}")
        report = run_drill(plan.request, store=plan.store, platform=plan.platform, log=context.log.info)
        uri = store_procedure_report(plan.store, report)
        # Recorded whether it passed or not, so the RTO/RPO plots include failed drills; then a failed
        # drill fails the run with its one-line cause.
        yield dg.MaterializeResult(asset_key=keys[spec.name], metadata=report_metadata(report, uri))
        if not report.ok:
            raise dg.Failure(description=report.failure,
                             metadata={"report": dg.MetadataValue.md(report.markdown())})

    return run_dr_drill


def build_drill_job(drill: dg.AssetsDefinition, settings: Settings) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name="dr_drill",
        selection=dg.AssetSelection.assets(drill),
        description=(
            "Rehearses the guide's disaster-recovery procedure on an isolated copy (its own scratch database and "
            "Redis, a drill namespace/project/process): infrastructure, restore of the newest validated backup, "
            "cache flush, /health and /metrics, then tears everything down. Measures RTO and RPO against the "
            "targets, stores the report beside the backups and materializes the environment's dr_drill asset. "
            "Never touches production."
        ),
        tags={"acci/operation": "drill", **k8s_run_tags(settings, "dr")},
        executor_def=dg.in_process_executor,  # one asset step: no step process of its own
    )


def build_drill_schedule(job: UnresolvedAssetJobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="dr_drill_schedule", job=job, cron_schedule="0 3 1 * *", execution_timezone=settings.timezone,
        description=("Monthly DR drill (1st of the month, 03:00) of the default environment; materializes its "
                     "dr_drill asset. Isolated and torn down, so it runs unattended."),
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def _recovery_finished(context: dg.OpExecutionContext, webhook: Notifier, plan: Plan,
                       report: ProcedureReport) -> None:
    """Store the report beside the backups, tag and annotate the run, tell the channel, and fail the
    run with the procedure's one-line cause when it failed."""
    uri = store_procedure_report(plan.store, report)
    outcome = "succeeded" if report.ok else "failed"
    context.instance.add_run_tags(context.run_id, {"acci/dr-outcome": outcome})
    context.add_output_metadata(report_metadata(report, uri))
    if report.kept_database:
        context.log.info(f"the database as it was before DR is kept as {report.kept_database}; drop it once "
                         "no longer needed (docs/runbooks/disaster-recovery.md)")
    webhook.notify(context, f"DR of `{report.environment}` {outcome}"
                            + (f" (RTO {human_duration(report.rto_seconds)})" if report.rto_seconds else "")
                            + (f": {report.failure}" if report.failure else ""))
    if not report.ok:
        raise dg.Failure(description=report.failure)


@dataclass(frozen=True)
class RecoveryAnswers:
    """The disaster_recovery Launchpad's answers, already checked by the job's config schema."""

    environment: str
    confirm: str
    operator: str
    backup_key: str
    skip_infrastructure: bool
    allow_unvalidated_backup: bool


def build_recovery_job(specs: list[EnvironmentSpec], settings: Settings,
                       resources: Mapping[str, dg.ResourceDefinition]) -> dg.JobDefinition:
    """``specs``: the environments with DR configured. ``resources``: every resource of the code
    location as ``fixed_resources`` binds it, so the job's Launchpad offers no resource config."""
    names = ", ".join(s.name for s in specs)

    config_schema = {
        "environment": dg.Field(environment_enum("DrEnvironment", [s.name for s in specs], "Recover"),
                                description=f"Environment to recover ({names})."),
        "confirm": dg.Field(NonBlankString("DrConfirmation", "'confirm' must be the environment's name, typed "
                                           "again by hand"),
                            description="Type the environment's name again, by hand. Nothing runs unless it matches."),
        "operator": dg.Field(NonBlankString("DrOperator", "'operator' must name who is launching this"),
                             description="Who is launching this (name or handle); recorded on the run."),
        "backup_key": dg.Field(str, default_value="", description=(
            "Backup to restore (default: the newest one signed by acci_ops with a signed, passing "
            "validation record).")),
        "skip_infrastructure": dg.Field(bool, default_value=False, description=(
            "Skip step 1 (Helm/Compose) when the infrastructure is still up and only data must be restored.")),
        "allow_unvalidated_backup": dg.Field(bool, default_value=False, description=(
            "Allow a backup that failed or never passed validation. Only when nothing better exists.")),
    }

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "dr") | {"alert_webhook"},
           config_schema=config_schema, description="Guarded: restores production from a backup.")
    def recover_environment(context: dg.OpExecutionContext) -> None:
        # A plain config schema, not a dg.Config: its types refuse blank answers before the run
        # exists (acci_ops/defs/_launchpad.py); a pydantic validator would only run in here.
        config = RecoveryAnswers(**context.op_config)
        check_confirmation(config.environment, config.confirm, config.operator)
        spec = environment_spec(settings, config.environment, needs_dr=True)
        env: BackupEnvironment = section_resource(context, "backup", spec.name)
        webhook: Notifier = context.resources.alert_webhook
        context.instance.add_run_tags(context.run_id, {"acci/dr-operator": config.operator.strip(),
                                                       "acci/dr-environment": spec.name})
        plan = plan_recovery(settings, spec, env, section_resource(context, "dr", spec.name),
                             backup_key=config.backup_key, allow_unvalidated=config.allow_unvalidated_backup,
                             skip_infrastructure=config.skip_infrastructure, keyring=env.keyring_or_warn(context))
        context.instance.add_run_tags(context.run_id, {"acci/dr-backup": plan.request.backup_key})
        webhook.notify(context, f":rotating_light: DR of `{spec.name}` started by {config.operator} "
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
            "another environment's backups, and unvalidated ones unless overridden. "
            "See docs/runbooks/disaster-recovery.md."
        ),
        tags={"acci/operation": "dr", **k8s_run_tags(settings, "dr")},
        executor_def=dg.in_process_executor,  # one op: no step process of its own
        resource_defs=dict(resources),
    )
    def disaster_recovery() -> None:
        recover_environment()

    return disaster_recovery
