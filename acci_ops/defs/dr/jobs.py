"""DR drills (scheduled, isolated, measured) and the guarded on-call disaster_recovery job."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from acci_ops.defs.backups.assets import keyring_or_warn
from acci_ops.defs.resources import AcciDisasterRecovery, AcciEnvironment, AlertWebhook, dr_resource_key, resource_key
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.dr.procedures import (
    ProcedureReport,
    Targets,
    choose_backup,
    refuse_foreign_backup,
    run_drill,
    run_recovery,
    store_procedure_report,
)
from acci_ops.settings import Settings


def drill_asset_key(environment: str, settings: Settings) -> dg.AssetKey:
    return dg.AssetKey([environment, "dr_drill"]) if settings.several else dg.AssetKey("dr_drill")


def drill_asset_specs(settings: Settings) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            drill_asset_key(spec.name, settings),
            group_name="disaster_recovery",
            kinds={"postgres", "redis"},
            description=(
                f"Results of DR drills for {spec.name}: every dr_drill run records its RTO, RPO and step report "
                "here (also when it fails), so the plots show how recovery time evolves."
            ),
        )
        for spec in settings.environments
        if spec.dr and spec.validates
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


def _environment(settings: Settings, name: str):  # noqa: ANN202
    try:
        spec = settings.environment(name)
    except AcciOpsError as exc:
        raise dg.Failure(description=str(exc)) from None
    if not spec.dr:
        raise dg.Failure(description=f"environment {name!r} has no DR platform configured (ACCI_PLATFORM)")
    return spec


def build_drill_job(settings: Settings) -> dg.JobDefinition:
    specs = [s for s in settings.environments if s.dr and s.validates]
    keys = {resource_key(s.name) for s in specs} | {dr_resource_key(s.name) for s in specs}
    default_env = specs[0].name

    class DrillConfig(dg.Config):
        environment: str = Field(default=default_env, description="Environment whose backups are drilled.")
        backup_key: str = Field(default="", description="Backup to restore (default: the newest one signed by "
                                "acci_ops with a signed, passing validation record).")
        allow_unvalidated_backup: bool = Field(default=False, description="Allow a named backup that is unsigned, "
                                               "failed or never passed validation. Same override as "
                                               "disaster_recovery; a drill never restores one silently.")

    @dg.op(required_resource_keys=keys, description="Bring up an isolated stack, restore, flush, verify, tear down.",
           out=dg.Out(dict, description="The drill report (passed or not); the next step fails the run on failure."))
    def run_dr_drill(context: dg.OpExecutionContext, config: DrillConfig) -> dict:
        spec = _environment(settings, config.environment)
        env: AcciEnvironment = getattr(context.resources, resource_key(spec.name))
        dr: AcciDisasterRecovery = getattr(context.resources, dr_resource_key(spec.name))
        try:
            store = env.store()
            key = choose_backup(store, spec.name, config.backup_key or None,
                                allow_unvalidated=config.allow_unvalidated_backup,
                                keyring=keyring_or_warn(context, env))
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            platform = dr.platform_for(drill=True, stamp=stamp)
            scratch = env.scratch()
            database = env.target().dbname
        except AcciOpsError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.log.info(f"drilling {spec.name} with backup {key} on {platform.describe()}")
        report = run_drill(
            environment=spec.name, store=store, backup_key=key, scratch=scratch, platform=platform, database=database,
            drill_redis_url=dr.drill_redis_url, production_redis_url=dr.redis_url,
            production_redis_variable=spec.dr.redis_url_env or _redis_setting(settings, spec.name),
            required_metrics=dr.required_metrics, health_deadline=dr.health_deadline_seconds,
            targets=Targets(dr.rto_target_minutes * 60, dr.rpo_target_hours * 3600), log=context.log.info,
            scratch_allow_superuser=env.scratch_allow_superuser,
        )
        uri = store_procedure_report(store, report)
        # Recorded whether it passed or not, so the RTO/RPO plots include failed drills.
        context.log_event(dg.AssetMaterialization(asset_key=drill_asset_key(spec.name, settings),
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


def build_drill_schedule(job, settings: Settings) -> dg.ScheduleDefinition:  # noqa: ANN001
    return dg.ScheduleDefinition(
        name="dr_drill_schedule", job=job, cron_schedule="0 3 1 * *", execution_timezone=settings.timezone,
        description="Monthly DR drill (1st of the month, 03:00). Isolated and torn down, so it runs unattended.",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


def build_recovery_job(settings: Settings) -> dg.JobDefinition:
    specs = [s for s in settings.environments if s.dr]
    keys = {resource_key(s.name) for s in specs} | {dr_resource_key(s.name) for s in specs} | {"alert_webhook"}
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

    @dg.op(required_resource_keys=keys, description="Guarded: restores production from a backup.")
    def recover_environment(context: dg.OpExecutionContext, config: DisasterRecoveryConfig) -> None:
        if not config.environment or config.confirm != config.environment:
            raise dg.Failure(description=(
                f"confirmation does not match: type the environment name {config.environment!r} exactly in "
                "'confirm' to proceed; nothing was done"))
        if not config.operator.strip():
            raise dg.Failure(description="say who you are in 'operator'; nothing was done")
        spec = _environment(settings, config.environment)
        env: AcciEnvironment = getattr(context.resources, resource_key(spec.name))
        dr: AcciDisasterRecovery = getattr(context.resources, dr_resource_key(spec.name))
        webhook: AlertWebhook = context.resources.alert_webhook
        context.instance.add_run_tags(context.run_id, {"acci/dr-operator": config.operator.strip(),
                                                       "acci/dr-environment": spec.name})
        try:
            store = env.store()
            database = env.target()
            if config.backup_key:  # another environment's backup is refused before anything else
                refuse_foreign_backup(store, config.backup_key, environment=spec.name, database=database.dbname)
            key = choose_backup(store, spec.name, config.backup_key or None,
                                allow_unvalidated=config.allow_unvalidated_backup,
                                keyring=keyring_or_warn(context, env))
            refuse_foreign_backup(store, key, environment=spec.name, database=database.dbname)
            platform = None if config.skip_infrastructure else dr.platform_for(drill=False)
            if not dr.redis_url:
                raise AcciOpsError(f"no Redis URL for {spec.name}; set {_redis_setting(settings, spec.name)}")
        except AcciOpsError as exc:
            raise dg.Failure(description=str(exc)) from None
        context.instance.add_run_tags(context.run_id, {"acci/dr-backup": key})
        _notify(webhook, context, f":rotating_light: DR of `{spec.name}` started by {config.operator} "
                                  f"with backup `{key}`")
        report = run_recovery(environment=spec.name, store=store, backup_key=key, database=database,
                              platform=platform, redis_url=dr.redis_url, app_url=dr.app_url,
                              required_metrics=dr.required_metrics, health_deadline=dr.health_deadline_seconds,
                              log=context.log.info)
        uri = store_procedure_report(store, report)
        outcome = "succeeded" if report.ok else "failed"
        context.instance.add_run_tags(context.run_id, {"acci/dr-outcome": outcome})
        context.add_output_metadata(report_metadata(report, uri))
        if report.kept_database:
            context.log.info(f"the database as it was before DR is kept as {report.kept_database}; drop it once "
                             "no longer needed (README, 'Disaster recovery')")
        _notify(webhook, context, f"DR of `{spec.name}` {outcome}"
                                  + (f" (RTO {report.rto_seconds / 60:.1f} min)" if report.rto_seconds else "")
                                  + (f": {report.failure}" if report.failure else ""))
        if not report.ok:
            raise dg.Failure(description=report.failure)

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


def _redis_setting(settings: Settings, environment: str) -> str:
    """Where production's Redis URL is configured, for messages."""
    if settings.from_file:
        return f"dr.redis_url_env of environment {environment} in {settings.from_file}"
    return "ACCI_REDIS_URL"


def _notify(webhook: AlertWebhook, context: dg.OpExecutionContext, text: str) -> None:
    """Alerts never stop DR: any failure to post is one log line without the URL's secret path."""
    try:
        if not webhook.post(text):
            context.log.warning(f"no alert webhook configured: {text}")
    except AcciOpsError as exc:
        context.log.error(f"alert not delivered ({exc}): {text}")
    except Exception as exc:  # noqa: BLE001 - a broken webhook must never fail a recovery
        context.log.error(f"alert not delivered (the alert webhook failed: {type(exc).__name__}): {text}")
