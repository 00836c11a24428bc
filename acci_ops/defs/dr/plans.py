"""What a drill or a recovery will do, decided before anything is touched.

The guards and choices of the DR jobs live here, apart from the ops: the typed confirmation, the
backup (named or the newest validated, never another environment's), the platform and the
parameter object the lib procedure takes. Every refusal is a ``dg.Failure`` with one line, raised
before the procedure starts, so "nothing was done" is always true when one of these fails.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from acci_ops.defs._contracts import BackupEnvironment, ScratchServer
from acci_ops.defs._shared import engine_errors
from acci_ops.defs.dr.resources import AcciDisasterRecovery
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.dr.procedures import DrillRequest, RecoveryRequest, Targets, choose_backup, refuse_foreign_backup
from acci_ops.lib.platform.backends import Platform
from acci_ops.lib.storage.objectstore import ObjectStore
from acci_ops.settings import EnvironmentSpec, Settings


@dataclass(frozen=True)
class Plan:
    """A procedure ready to run: its request, and the live store and platform it runs against."""

    request: DrillRequest | RecoveryRequest
    store: ObjectStore
    platform: Platform | None  # None: the infrastructure step is skipped (recovery only)


def redis_setting(settings: Settings, environment: str) -> str:
    """Where the environment's Redis URL is configured, for messages."""
    if settings.from_file:
        return f"dr.redis_url_env of environment {environment} in {settings.from_file}"
    return "ACCI_REDIS_URL"


def environment_spec(settings: Settings, name: str, *, needs_dr: bool = False) -> EnvironmentSpec:
    """The named environment (from run config), or a failure naming the declared ones."""
    with engine_errors():
        spec = settings.environment(name)
    if needs_dr and not spec.dr:
        raise dg.Failure(description=f"environment {name!r} has no DR platform configured (ACCI_PLATFORM)")
    return spec


def check_confirmation(environment: str, confirm: str, operator: str) -> None:
    """Nothing runs against a real environment unless its name was typed twice and someone signed."""
    if not environment or confirm != environment:
        raise dg.Failure(description=(
            f"confirmation does not match: type the environment name {environment!r} exactly in "
            "'confirm' to proceed; nothing was done"))
    if not operator.strip():
        raise dg.Failure(description="say who you are in 'operator'; nothing was done")


def plan_drill(settings: Settings, spec: EnvironmentSpec, env: BackupEnvironment, validation: ScratchServer,
               dr: AcciDisasterRecovery, *, backup_key: str, allow_unvalidated: bool,
               keyring: Keyring | None) -> Plan:
    """The backup to rehearse with (named, or the newest validated one) on an isolated platform."""
    with engine_errors():
        store = env.store()
        key = choose_backup(store, spec.name, backup_key or None, allow_unvalidated=allow_unvalidated,
                            keyring=keyring)
        request = DrillRequest(
            environment=spec.name, backup_key=key, database=env.target().dbname, scratch=validation.scratch(),
            drill_redis_url=dr.drill_redis_url, production_redis_url=dr.redis_url,
            required_metrics=dr.required_metrics, health_deadline=dr.health_deadline_seconds,
            targets=Targets(dr.rto_target_minutes * 60, dr.rpo_target_hours * 3600),
            production_redis_variable=spec.dr.redis_url_env or redis_setting(settings, spec.name),
            scratch_allow_superuser=validation.scratch_allow_superuser,
        )
        platform = dr.platform_for(drill=True, stamp=datetime.now(UTC).strftime("%Y%m%d%H%M%S"))
    return Plan(request, store, platform)


def plan_recovery(settings: Settings, spec: EnvironmentSpec, env: BackupEnvironment, dr: AcciDisasterRecovery, *,
                  backup_key: str, allow_unvalidated: bool, skip_infrastructure: bool,
                  keyring: Keyring | None) -> Plan:
    """The backup to restore: only one of this environment's own, validated unless overridden."""
    with engine_errors():
        store = env.store()
        database = env.target()
        if backup_key:  # another environment's backup is refused before anything else
            refuse_foreign_backup(store, backup_key, environment=spec.name, database=database.dbname)
        key = choose_backup(store, spec.name, backup_key or None, allow_unvalidated=allow_unvalidated,
                            keyring=keyring)
        refuse_foreign_backup(store, key, environment=spec.name, database=database.dbname)
        platform = None if skip_infrastructure else dr.platform_for(drill=False)
        if not dr.redis_url:
            raise AcciOpsError(f"no Redis URL for {spec.name}; set {redis_setting(settings, spec.name)}")
        request = RecoveryRequest(environment=spec.name, backup_key=key, database=database, redis_url=dr.redis_url,
                                  app_url=dr.app_url, required_metrics=dr.required_metrics,
                                  health_deadline=dr.health_deadline_seconds)
    return Plan(request, store, platform)
