"""Releases by themselves: the first environment takes each version whose image checks passed; a later
one takes a version after it soaked, verified, on the environment before it, inside its windows."""

import dagster as dg

from acci_ops.defs._contracts import IMAGE_ASSET
from acci_ops.defs._shared import resource_keys
from acci_ops.defs.releases.jobs import AUTOMATIC, TRIGGER_TAG
from acci_ops.defs.releases.plans import ledger_of, utc_now
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.releases.policy import WAIT, check_window, soak_satisfied
from acci_ops.settings import EnvironmentSpec, Settings

PROMOTION_INTERVAL_SECONDS = 300
# A new image is released to the first environment within this many seconds (the check reads only the
# event log: cheap enough to run often).
FIRST_RELEASE_INTERVAL_SECONDS = 10


def _run_config(environment: str, version: str, operator: str) -> dict:
    # An automation confirms with the environment's name itself: turning it on was the decision.
    return {"ops": {"release_version": {"config": {"environment": environment, "version": version,
                                                    "operator": operator, "confirm": environment}}}}


def _status(spec: EnvironmentSpec) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if spec.releases.is_automatic(spec.name) else dg.DefaultSensorStatus.STOPPED


def build_first_release_sensor(spec: EnvironmentSpec, job: dg.JobDefinition) -> dg.SensorDefinition:
    """``release_<env>_on_new_image``: each new acci_image materialization (its checks passed, it was
    pushed) becomes a release run to the first environment of the promotion order."""

    @dg.asset_sensor(
        asset_key=IMAGE_ASSET, job=job, name=f"release_{spec.name}_on_new_image", default_status=_status(spec),
        minimum_interval_seconds=FIRST_RELEASE_INTERVAL_SECONDS,
        description=(f"Releases each version whose image was built, checked and pushed (a new acci_image "
                     f"materialization) to {spec.name}, the first environment of the promotion order. "
                     + ("On by default: it acts on no protected environment." if not
                        spec.releases.is_protected(spec.name) else "Off by default: the environment is protected.")),
    )
    def first_release(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> dg.RunRequest | None:
        materialization = asset_event.asset_materialization
        version = materialization.partition if materialization else None
        if not version:
            context.log.info("an acci_image materialization without a version partition; nothing to release")
            return None
        # One release per materialization: a forced rebuild of a version (a new build run) releases again.
        built_by = asset_event.run_id or f"{asset_event.timestamp:.6f}"
        return dg.RunRequest(run_key=f"release:{spec.name}:{version}:{built_by}",
                             run_config=_run_config(spec.name, version, f"sensor release_{spec.name}_on_new_image"),
                             tags={TRIGGER_TAG: AUTOMATIC, "acci/release-environment": spec.name})

    return first_release


def plan_promotion(context: dg.SensorEvaluationContext, spec: EnvironmentSpec, previous: str,
                   settings: Settings) -> tuple[str | None, str]:
    """(version to promote now, or None; why, in one line)."""
    source = ledger_of(context, previous)
    record = source.last_verified(previous)
    if record is None:
        return None, f"no version is verified on {previous}"
    version = record.version
    here = ledger_of(context, spec.name)
    judged = here.judgement(spec.name, version)
    if judged is not None:
        return None, f"{version} was already released to {spec.name} ({judged.summary})"
    soaked, why = soak_satisfied(source, previous, version, spec.releases.soak_minutes, utc_now())
    if not soaked:
        return None, why
    gate = check_window(spec.releases.promotion_windows(settings.timezone, spec.name), utc_now(), True, False,
                        is_rollback=False)
    if gate.action == WAIT:
        return None, gate.reason + (f" until {gate.next_open.isoformat()}" if gate.next_open else "")
    return version, f"{version} {why}; {gate.reason}"


def build_promotion_sensor(spec: EnvironmentSpec, previous: EnvironmentSpec, job: dg.JobDefinition,
                           settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"promote_to_{spec.name}", job=job, minimum_interval_seconds=PROMOTION_INTERVAL_SECONDS,
        default_status=_status(spec), required_resource_keys=resource_keys([spec, previous], "backup"),
        description=(
            f"Every {PROMOTION_INTERVAL_SECONDS // 60} min: promotes the newest version verified on {previous.name} "
            f"to {spec.name} once it has stayed verified there for {spec.releases.soak_minutes} min (soak_minutes) "
            f"and {spec.name}'s promotion window is open (a closed window holds it, never a rollback). "
            + ("Off by default: turn it on to promote without a person." if spec.releases.is_protected(spec.name)
               else "")),
    )
    def promote(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        try:
            version, why = plan_promotion(context, spec, previous.name, settings)
        except AcciOpsError as exc:
            context.log.error(f"cannot decide a promotion to {spec.name}: {exc}")
            return dg.SkipReason(f"cannot decide a promotion to {spec.name}: {exc}")
        context.log.info(why)
        if version is None:
            return dg.SkipReason(why)
        return dg.RunRequest(run_key=f"promote:{spec.name}:{version}",
                             run_config=_run_config(spec.name, version, f"sensor promote_to_{spec.name}"),
                             tags={TRIGGER_TAG: AUTOMATIC, "acci/release-environment": spec.name})

    return promote
