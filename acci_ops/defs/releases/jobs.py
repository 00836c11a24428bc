"""The ``release`` and ``rollback_release`` jobs, and the ``acci_release`` assets they materialize."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import dagster as dg

from acci_ops.defs._contracts import IMAGE_ASSET, IMAGES_RESOURCE, BackupEnvironment, Notifier
from acci_ops.defs._launchpad import NonBlankString, environment_enum
from acci_ops.defs._shared import asset_key, engine_errors, k8s_run_tags, resource_keys, section_resource
from acci_ops.defs.releases.plans import (
    VERSIONS,
    built_image,
    deployer,
    ledger_of,
    previous_in_order,
    promotion_order,
    registry_image,
    release_platform,
    runtime,
    utc_now,
)
from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.releases.analysis import AnalysisResult, AnalysisSpec, Target, run_analysis
from acci_ops.lib.releases.deployers import ReleaseTarget
from acci_ops.lib.releases.flow import (
    BREAKING_LABEL,
    DR_RUNBOOK,
    Outcome,
    ReleasePlan,
    RollbackPlan,
    run_release,
    run_rollback,
)
from acci_ops.lib.releases.ledger import check_version
from acci_ops.lib.releases.policy import WAIT, ReleaseRefused, check_promotion, check_release_request, check_window
from acci_ops.settings import EnvironmentSpec, Settings

RELEASE_ASSET = "acci_release"
POOL = "acci_release"  # one release or rollback at a time (pools default to a limit of 1, dagster.yaml)
TRIGGER_TAG = "acci/release-trigger"  # "automatic" on runs a sensor requested: windows hold them instead
AUTOMATIC = "automatic"
EXPIRE_JOB = "expire_blue_green"
EXPIRE_CRON = "*/5 * * * *"
VERSIONS_PARTITIONS = dg.DynamicPartitionsDefinition(name=VERSIONS)  # the same partitions as acci_image


def release_asset_key(settings: Settings, spec: EnvironmentSpec) -> dg.AssetKey:
    return asset_key(settings, spec.name, RELEASE_ASSET)


def release_assets(specs: list[EnvironmentSpec], settings: Settings) -> list[dg.AssetSpec]:
    order = promotion_order(settings, [s.name for s in specs])
    out = []
    for spec in specs:
        before = previous_in_order(order, spec.name)
        gate = (f"It takes only versions verified on {before} (promotion_order)." if before else
                "It is first in the promotion order: a version whose image checks passed may go here.")
        out.append(dg.AssetSpec(
            release_asset_key(settings, spec), deps=[IMAGE_ASSET], partitions_def=VERSIONS_PARTITIONS,
            group_name="releases", kinds={release_platform(spec)}, tags={"acci/environment": spec.name},
            description=(
                f"Each release of a version (partition) to {spec.name}, by digest, with {spec.releases.strategy} and "
                "the analysis verdict (/health, 5xx ratio, p95 latency from /metrics, PromQL): one materialization "
                "per release or rollback, also when it failed and was rolled back, with every measurement. "
                f"{gate} The same records are kept, signed, under releases/{spec.name}/ in its backup store.")))
    return out


@dataclass(frozen=True)
class ReleaseAnswers:
    environment: str
    version: str
    operator: str
    confirm: str
    allow_unverified: bool
    override_window: bool
    confirm_breaking: bool


def outcome_metadata(outcome: Outcome) -> dict[str, object]:
    """What the UI shows for a release: the plottable numbers as numbers, the rest as text."""
    meta: dict[str, object] = {
        "environment": outcome.environment, "version": outcome.version, "image_ref": outcome.image_ref,
        "status": outcome.status, "verdict": outcome.record.verdict or "none", "reason": outcome.reason,
        "rolled_back": outcome.record.rolled_back or outcome.record.kind == "rollback",
        "previous_version": outcome.previous_version or "none",
        "previous_image_ref": outcome.previous_image_ref or "none",
        "strategy": outcome.record.strategy, "operator": outcome.record.operator,
        "duration_seconds": dg.MetadataValue.float(float(outcome.seconds)),
        "ledger_key": outcome.record_key,
    }
    if outcome.record.helm_revision is not None:
        meta["helm_revision"] = dg.MetadataValue.int(outcome.record.helm_revision)
    if outcome.record.backup_key:
        meta["backup_key"] = outcome.record.backup_key
    if outcome.record.allow_unverified:
        meta["allow_unverified"] = True
    if outcome.record.override_window:
        meta["override_window"] = True
    if outcome.recovered:
        meta["recovered"] = outcome.recovered
    for step, seconds in outcome.steps.items():
        meta[f"step_{step}_seconds"] = dg.MetadataValue.float(float(seconds))
    if outcome.analysis is not None:
        for name, value in outcome.analysis.metadata().items():
            meta[f"analysis_{name}"] = value
        meta["analysis"] = dg.MetadataValue.md(outcome.analysis.markdown())
    if outcome.rollback_analysis is not None:
        meta["rollback_analysis"] = dg.MetadataValue.md(outcome.rollback_analysis.markdown())
        meta["rollback_verdict"] = outcome.rollback_analysis.verdict
    return meta


def _analyse(context: dg.OpExecutionContext) -> Callable[[AnalysisSpec, Target], AnalysisResult]:
    def analyse(spec: AnalysisSpec, target: Target) -> AnalysisResult:
        result = run_analysis(spec, target, log=context.log.info)
        context.log.info(f"analysis of {target.app_url}:\n{result.markdown()}")
        return result
    return analyse


def _target(context: dg.OpExecutionContext, spec: EnvironmentSpec) -> ReleaseTarget:
    """The environment's deployer with its strategy; blue/green's colors and canary steps are judged
    by the environment's own analysis."""
    analysis, run = spec.releases.analysis_for(spec.name), _analyse(context)
    return deployer(context, spec, spec.releases.timeout_seconds, analyse=lambda target: run(analysis, target))


def _report(context: dg.OpExecutionContext, settings: Settings, spec: EnvironmentSpec, outcome: Outcome,
            webhook: Notifier) -> None:
    """Materialize the release, tag the run, alert, and fail the run unless the version is verified."""
    context.log_event(dg.AssetMaterialization(asset_key=release_asset_key(settings, spec), partition=outcome.version,
                                              metadata=outcome_metadata(outcome)))
    if outcome.rollback_record_key and outcome.previous_version:
        # The version rolled back to is released again: its own partition shows that too.
        context.log_event(dg.AssetMaterialization(
            asset_key=release_asset_key(settings, spec), partition=outcome.previous_version,
            metadata={"status": "rolled_back_to", "environment": spec.name, "version": outcome.previous_version,
                      "image_ref": outcome.previous_image_ref or "", "after": outcome.version,
                      "ledger_key": outcome.rollback_record_key}))
    context.instance.add_run_tags(context.run_id, {"acci/release-status": outcome.status})
    if outcome.alert:
        webhook.notify(context, (":rotating_light: " if outcome.critical else ":warning: ") + outcome.alert)
    if not outcome.ok:
        raise dg.Failure(description=outcome.alert or outcome.reason,
                         metadata={"status": outcome.status, "reason": outcome.reason})


def _backup_now(context: dg.OpExecutionContext, settings: Settings, spec: EnvironmentSpec, version: str) -> str:
    env: BackupEnvironment = section_resource(context, "backup", spec.name)
    context.log.info(f"backing up {spec.name} before releasing {version}")
    day = utc_now().astimezone(ZoneInfo(settings.timezone)).date()
    with engine_errors(f"backup of {spec.name} before the release (nothing was deployed): "):
        result = run_backup(environment=spec.name, target=env.target(), store=env.store(), partition=day,
                            settings=env.backup_settings(), log=context.log.info, keyring=env.keyring())
    key = result.uri
    context.log.info(f"backup before the release: {key}")
    return key


def build_release_job(specs: list[EnvironmentSpec], settings: Settings,
                      resources: Mapping[str, dg.ResourceDefinition]) -> dg.JobDefinition:
    names = [s.name for s in specs]
    order = promotion_order(settings, names)
    protected = [s.name for s in specs if s.releases.is_protected(s.name)]
    by_name = {s.name: s for s in specs}

    config_schema = {
        "environment": dg.Field(environment_enum("ReleaseEnvironment", names, "Release to"),
                                description=f"Environment to release to ({', '.join(names)})."),
        "version": dg.Field(NonBlankString("ReleaseVersion", "'version' must name a version (a partition of "
                                           "acci_versions, e.g. 1.4.0)"),
                            description="Version to release (its image, by the digest its build pushed)."),
        "operator": dg.Field(NonBlankString("ReleaseOperator", "'operator' must name who is releasing"),
                             description="Who is releasing (name or handle); recorded on the release."),
        "confirm": dg.Field(str, default_value="", description=(
            f"The environment's name typed again; required for {', '.join(protected) or 'protected environments'}.")),
        "allow_unverified": dg.Field(bool, default_value=False, description=(
            "Release although the version is not verified on the environment before this one (recorded, "
            "alerted).")),
        "override_window": dg.Field(bool, default_value=False, description=(
            "Release although the environment's promotion window is closed (recorded).")),
        "confirm_breaking": dg.Field(bool, default_value=False, description=(
            f"The image says its migrations are breaking ({BREAKING_LABEL}=breaking): it cannot be rolled back "
            "by image, only by restoring the backup taken before it. Set true to release it anyway.")),
    }

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "dr") | {"alert_webhook", IMAGES_RESOURCE},
           config_schema=config_schema, pool=POOL,
           description="Checks, deploys by digest, analyses, rolls back by itself; records the release.")
    def release_version(context: dg.OpExecutionContext) -> None:
        answers = ReleaseAnswers(**context.op_config)
        automatic = context.run.tags.get(TRIGGER_TAG) == AUTOMATIC
        with engine_errors():
            request = check_release_request(answers.environment, answers.version.strip(), answers.operator,
                                            answers.confirm or None, names, protected)
        spec = by_name[request.environment]
        releases = spec.releases
        webhook: Notifier = context.resources.alert_webhook
        version = request.version or ""
        context.instance.add_run_tags(context.run_id, {"acci/release-environment": spec.name,
                                                       "acci/release-version": version,
                                                       "acci/release-operator": request.operator})
        image_ref = built_image(context, version)
        image = registry_image(getattr(context.resources, IMAGES_RESOURCE), version, image_ref)
        if image.breaking and not answers.confirm_breaking:
            raise dg.Failure(description=(
                f"{version} is labelled {BREAKING_LABEL}=breaking: its migrations cannot be undone by rolling the "
                f"image back (only by restoring the backup taken before it, {DR_RUNBOOK}); set confirm_breaking: "
                "true to release it; nothing was deployed"))
        with engine_errors():
            previous = previous_in_order(order, spec.name)
            decision = None
            if previous:
                decision = check_promotion(ledger_of(context, previous), order, spec.name, version,
                                           answers.allow_unverified, image_ref=image_ref)
            gate = check_window(releases.promotion_windows(settings.timezone, spec.name), utc_now(), automatic,
                                answers.override_window and not automatic, is_rollback=False)
        if gate.action == WAIT:
            raise dg.Failure(description=f"{gate.reason}; opens at {gate.next_open}; nothing was deployed")
        unverified = bool(decision and decision.unverified)
        context.log.info(decision.reason if decision else f"{spec.name} takes any version whose image checks passed")
        context.log.info(gate.reason)
        if unverified:
            webhook.notify(context, f":warning: {request.operator} releases {version} to {spec.name} UNVERIFIED "
                                    f"(allow_unverified): {decision.reason}")
        backup_key = _backup_now(context, settings, spec, version) if releases.takes_backup(spec.name) else None
        plan = ReleasePlan(
            environment=spec.name, version=version, image_ref=image_ref,
            operator=AUTOMATIC + ": " + request.operator if automatic else request.operator,
            strategy=releases.strategy, analysis=releases.analysis_for(spec.name), metrics_url=releases.metrics_url,
            prometheus_url=releases.prometheus_url, on_inconclusive=releases.inconclusive_action(spec.name),
            breaking=image.breaking, backup_key=backup_key, allow_unverified=unverified,
            override_window=gate.overridden)
        target = _target(context, spec)
        ledger = ledger_of(context, spec.name)
        with engine_errors(f"release of {version} to {spec.name}: "):
            outcome = run_release(plan, target, ledger, _analyse(context), runtime=runtime(context, spec),
                                  log=context.log.info)
        _report(context, settings, spec, outcome, webhook)

    @dg.job(
        name="release",
        description=(
            "Releases one version of ACCI Framework to one environment, by the digest its build pushed: checks "
            "the version's image (checks passed, digest still in the registry, breaking-migration label), the "
            "promotion order (verified on the environment before), the promotion window and the confirmation; "
            "backs up a protected environment first; deploys (helm upgrade --rollback-on-failure, or compose with "
            "the digest pinned); runs the analysis (/health, 5xx ratio, p95 latency, PromQL); on a failed or "
            "inconclusive verdict rolls back to the previous verified version by itself and analyses it again; "
            "records the release, signed, and materializes <environment>/acci_release. See docs/releases.md."),
        tags={"acci/operation": "release", **k8s_run_tags(settings, "release")},
        # One op: a step process of its own would only add a Python start (~4 s) to every release.
        executor_def=dg.in_process_executor,
        resource_defs=dict(resources),
    )
    def release() -> None:
        release_version()

    return release


@dataclass(frozen=True)
class RollbackAnswers:
    environment: str
    to_version: str
    operator: str
    confirm: str


def build_rollback_job(specs: list[EnvironmentSpec], settings: Settings,
                       resources: Mapping[str, dg.ResourceDefinition]) -> dg.JobDefinition:
    names = [s.name for s in specs]
    protected = [s.name for s in specs if s.releases.is_protected(s.name)]
    by_name = {s.name: s for s in specs}
    config_schema = {
        "environment": dg.Field(environment_enum("RollbackEnvironment", names, "Roll back"),
                                description=f"Environment to roll back ({', '.join(names)})."),
        "to_version": dg.Field(str, default_value="", description=(
            "Version to go back to (default: the newest version other than the current one that passed "
            "analysis there).")),
        "operator": dg.Field(NonBlankString("RollbackOperator", "'operator' must name who is rolling back"),
                             description="Who is rolling back; recorded."),
        "confirm": dg.Field(str, default_value="", description=(
            f"The environment's name typed again; required for {', '.join(protected) or 'protected environments'}.")),
    }

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "dr") | {"alert_webhook", IMAGES_RESOURCE},
           config_schema=config_schema, pool=POOL,
           description="Puts an earlier verified version back, analyses it, records the rollback.")
    def roll_back(context: dg.OpExecutionContext) -> None:
        answers = RollbackAnswers(**context.op_config)
        wanted = answers.to_version.strip() or None
        with engine_errors():
            request = check_release_request(answers.environment, wanted, answers.operator, answers.confirm or None,
                                            names, protected, action="rolling back")
        spec = by_name[request.environment]
        releases = spec.releases
        webhook: Notifier = context.resources.alert_webhook
        ledger = ledger_of(context, spec.name)
        current = ledger.current(spec.name)
        images = getattr(context.resources, IMAGES_RESOURCE)
        if current is not None and current.image_ref:
            running = registry_image(images, current.version, current.image_ref)
            if running.breaking:
                key = current.record.backup_key or "(no backup was recorded)"
                raise dg.Failure(description=(
                    f"{spec.name} runs {current.version}, whose migrations are breaking ({BREAKING_LABEL}=breaking): "
                    f"rolling the image back would start the old version on the new schema. Restore the backup "
                    f"taken before it ({key}) beside the database and switch, as {DR_RUNBOOK} says; nothing was "
                    "rolled back"))
        if request.version:
            with engine_errors():
                check_version(request.version)
            found = ledger.verified(spec.name, request.version)
            image_ref = found.image_ref if found else built_image(context, request.version)
            version = request.version
            if not found:
                context.log.warning(f"{version} is not verified on {spec.name}; rolling back to it as asked")
        else:
            exclude = current.version if current else None
            record = ledger.last_verified(spec.name, exclude_version=exclude)
            if record is None:
                raise dg.Failure(description=(
                    f"{spec.name} has no earlier version that passed analysis there to roll back to; name one in "
                    "to_version; nothing was rolled back"))
            version, image_ref = record.version, record.image_ref
        registry_image(images, version, image_ref)  # the digest must still be there
        context.instance.add_run_tags(context.run_id, {"acci/release-environment": spec.name,
                                                       "acci/release-version": version,
                                                       "acci/release-operator": request.operator})
        # Never held by a promotion window (policy.check_window with is_rollback): said in the log.
        context.log.info(check_window(releases.promotion_windows(settings.timezone, spec.name), utc_now(), False,
                                      False, is_rollback=True).reason)
        plan = RollbackPlan(environment=spec.name, version=version, image_ref=image_ref, operator=request.operator,
                            strategy=releases.strategy, analysis=releases.analysis_for(spec.name),
                            metrics_url=releases.metrics_url, prometheus_url=releases.prometheus_url,
                            from_version=current.version if current else None,
                            from_image_ref=current.image_ref if current else None)
        target = _target(context, spec)
        try:
            outcome = run_rollback(plan, target, ledger, _analyse(context), runtime=runtime(context, spec),
                                   log=context.log.info)
        except (AcciOpsError, ReleaseRefused) as exc:
            webhook.notify(context, f":rotating_light: CRITICAL: rollback of {spec.name} to {version} failed: {exc}")
            raise dg.Failure(description=f"rollback of {spec.name} to {version} failed: {exc}") from None
        _report(context, settings, spec, outcome, webhook)

    @dg.job(
        name="rollback_release",
        description=(
            "Rolls one environment back to an earlier version: by default the newest other version that passed "
            "analysis there (or to_version). Refused when the running version's migrations are breaking (restore "
            "the backup instead). Never held by a promotion window. Analyses the version put back and records "
            "the rollback, which withdraws the verification of the version rolled away from."),
        tags={"acci/operation": "release", **k8s_run_tags(settings, "release")},
        # One op: a step process of its own would only add a Python start (~4 s) to every release.
        executor_def=dg.in_process_executor,
        resource_defs=dict(resources),
    )
    def rollback_release() -> None:
        roll_back()

    return rollback_release


def build_expire_job(specs: list[EnvironmentSpec], resources: Mapping[str, dg.ResourceDefinition]) -> dg.JobDefinition:
    """``expire_blue_green``: the previous color of each blue/green environment is removed once its
    rollback window is over (until then a rollback is a switch back)."""
    names = [s.name for s in specs]

    @dg.op(required_resource_keys=resource_keys(specs, "backup", "dr"), pool=POOL,
           description="Removes each blue/green environment's previous color once its rollback window ended.")
    def expire_previous_colors(context: dg.OpExecutionContext) -> None:
        removed = 0
        for spec in specs:
            target = _target(context, spec)
            with engine_errors(f"blue/green {spec.name}: "):
                line = target.expire(log=context.log.info, runtime=runtime(context, spec))
            if line:
                removed += 1
                context.log.info(f"{spec.name}: {line}")
            else:
                context.log.info(f"{spec.name}: nothing to remove (no previous color, or its window is still open)")
        context.log.info(f"{removed} previous color(s) removed")

    @dg.job(name=EXPIRE_JOB, resource_defs=dict(resources), tags={"acci/operation": "release"},
            executor_def=dg.in_process_executor,
            description=(
                f"Removes the previous color of each blue/green environment ({', '.join(names)}) once "
                "rollback_window_minutes have passed since the switch. Until then the old color keeps running and "
                "rollback_release is a switch back in seconds; afterwards a rollback deploys the earlier digest "
                "again, with its analysis. Runs in the release pool, never beside a release."))
    def expire_blue_green() -> None:
        expire_previous_colors()

    return expire_blue_green


def build_expire_schedule(job: dg.JobDefinition, settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{EXPIRE_JOB}_every_5_minutes", job=job, cron_schedule=EXPIRE_CRON,
        execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=("Every 5 minutes: removes a blue/green environment's previous color whose rollback window "
                     "ended. On by default: it never touches the live color."))
