"""DR drills and on-call recovery: the guide's three-step procedure, measured.

The guide's runbook: (1) infrastructure (``helm install -f dr-values.yaml``), (2) data
(restore the database, ``redis-cli FLUSHALL``), (3) verification (``curl -f /health`` and
``/metrics``). A drill runs it against an isolated copy with its own scratch database and Redis,
measures RTO and RPO, and always tears down. Recovery runs it against the real environment and
never tears down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from acci_ops.lib.backup.inventory import inspect_backup, read_manifest
from acci_ops.lib.backup.layout import manifest_key_for, parse_dump_key
from acci_ops.lib.backup.manifest import BackupManifest
from acci_ops.lib.backup.records import newest_validated, read_record, record_problem, rpo_seconds, validation_key_for
from acci_ops.lib.backup.restore import restore_backup
from acci_ops.lib.backup.signing import NO_KEY_WARNING, Keyring
from acci_ops.lib.core.errors import AcciOpsError, BackupError, ConfigError
from acci_ops.lib.core.steps import StepFailed, StepRecorder, StepResult, human_duration, steps_markdown
from acci_ops.lib.dr import redis_cache as cache
from acci_ops.lib.dr import switch as dbswitch
from acci_ops.lib.dr.probes import check_metrics, wait_for_health
from acci_ops.lib.platform.backends import AppRuntime, Platform
from acci_ops.lib.postgres.scratch import create_scratch_database, drop_scratch_database, new_scratch_name
from acci_ops.lib.postgres.urls import DatabaseTarget
from acci_ops.lib.storage.objectstore import ObjectStore

Log = Callable[[str], None]
DRILL_STEPS = ("database", "infrastructure", "restore", "cache", "verify")
RECOVERY_STEPS = ("infrastructure", "restore", "switch", "cache", "verify")


@dataclass(frozen=True)
class Targets:
    """The RTO and RPO a drill must meet (a drill that misses one fails, naming it)."""

    rto_seconds: float = 30 * 60
    rpo_seconds: float = 26 * 3600


@dataclass(frozen=True)
class DrillRequest:
    """What a drill rehearses and how it is judged. ``store`` and ``platform`` are passed beside it:
    they are live clients (the platform holds the app it started), this is only data. It carries
    credentials (the scratch target's password, the Redis URLs): its repr shows none of them."""

    environment: str
    backup_key: str
    database: str  # the environment's production database name: the backup must be one of its backups
    scratch: DatabaseTarget  # the server the drill's own database is created on (and dropped from)
    drill_redis_url: str = field(repr=False)  # flushed before and after: never production's
    production_redis_url: str | None = field(repr=False)  # to prove the drill's is another one
    required_metrics: Sequence[str] = ()
    targets: Targets = Targets()
    health_deadline: float = 300
    production_redis_variable: str = "ACCI_REDIS_URL"  # where production's Redis is set, for messages
    scratch_allow_superuser: bool = False  # a superuser scratch role lets a crafted archive run commands

    def __post_init__(self) -> None:
        object.__setattr__(self, "required_metrics", tuple(self.required_metrics))


@dataclass(frozen=True)
class RecoveryRequest:
    """What an on-call recovery restores and where; the platform (None: skip the infrastructure
    step) and the store are passed beside it. Its repr shows no credential."""

    environment: str
    backup_key: str
    database: DatabaseTarget  # the environment's live database: restored beside it, then switched in
    redis_url: str = field(repr=False)  # the environment's Redis, flushed after the switch
    app_url: str | None = None  # where to verify when the platform does not say (skip_infrastructure)
    required_metrics: Sequence[str] = ()
    health_deadline: float = 600

    def __post_init__(self) -> None:
        object.__setattr__(self, "required_metrics", tuple(self.required_metrics))


@dataclass
class ProcedureReport:
    kind: str  # drill | recovery
    environment: str
    backup_key: str
    platform: str
    snapshot_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    ok: bool = False
    failure: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    rto_target_seconds: float | None = None
    rpo_target_seconds: float | None = None
    health_status: int | None = None
    health_body: str = ""
    metrics_sample: str = ""
    metrics_families: int = 0
    # Recovery only: the live database as it was before the switch, renamed and kept for forensics.
    kept_database: str = ""
    steps: list[StepResult] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def markdown(self) -> str:
        """The report for the UI and the stored record; RTO/RPO and their targets range from seconds
        to a day, so each is shown in the unit a person reads (``3.2 s``, ``4.5 min``, ``26 h``)."""
        lines = [
            f"## {self.kind.title()} of `{self.environment}`: {'PASSED' if self.ok else 'FAILED'}",
            "",
            f"- backup: `{self.backup_key}` (snapshot {self.snapshot_at or 'n/a'})",
            f"- platform: {self.platform}",
            f"- RTO: {human_duration(self.rto_seconds)} (target {human_duration(self.rto_target_seconds)})",
            f"- RPO: {human_duration(self.rpo_seconds)} (target {human_duration(self.rpo_target_seconds)})",
            f"- /health: HTTP {'n/a' if self.health_status is None else self.health_status} {self.health_body[:120]}",
            f"- /metrics: {self.metrics_families} families",
        ]
        if self.kept_database:
            lines.append(f"- previous database kept as `{self.kept_database}` (drop it once no longer needed)")
        if self.failure:
            lines += ["", f"**Cause:** {self.failure}"]
        lines += ["", steps_markdown(self.steps)]
        if self.metrics_sample:
            lines += ["", "```", self.metrics_sample[:600], "```"]
        return "\n".join(lines)


def choose_backup(
    store: ObjectStore, environment: str, backup_key: str | None, *, allow_unvalidated: bool = False,
    keyring: Keyring | None = None, now: datetime | None = None,
) -> str:
    """The named backup, or by default the newest one that is signed by acci_ops AND has a signed,
    passing validation record about it (never ranked by a key's date alone). A named backup that is
    unsigned, untrusted, unvalidated or failed validation is refused unless explicitly overridden:
    whoever can write to the bucket must not choose what DR restores."""
    if not backup_key:
        if keyring is None:
            raise BackupError(f"{NO_KEY_WARNING}; name the backup explicitly (backup_key) and set "
                              "allow_unvalidated_backup")
        found = newest_validated(store, environment, keyring, now=now)
        if not found:
            raise BackupError(f"no signed, validated {environment} backup exists; name one explicitly "
                              "(backup_key) and set allow_unvalidated_backup to use it anyway")
        return found[0].key
    if not store.exists(backup_key):
        raise BackupError(f"backup {store.uri_for(backup_key)} does not exist")
    if allow_unvalidated:
        return backup_key
    if keyring is None:
        raise BackupError(f"{NO_KEY_WARNING}; set allow_unvalidated_backup to restore {backup_key} anyway")
    parsed = parse_dump_key(backup_key)
    if parsed is None or not store.exists(manifest_key_for(backup_key)):
        raise BackupError(f"{backup_key} is not a complete acci_ops backup (dump and manifest); "
                          "set allow_unvalidated_backup to restore it anyway")
    trust = inspect_backup(store, parsed, keyring, now=now)
    if not trust.trusted:
        raise BackupError(f"backup {backup_key} is {trust.describe()}; set allow_unvalidated_backup to "
                          "restore it anyway")
    if not store.exists(validation_key_for(backup_key)):
        raise BackupError(
            f"backup {backup_key} has not been validated; validate it first or set allow_unvalidated_backup"
        )
    try:
        report = read_record(store, backup_key)
        problem = record_problem(report, trust, keyring)
    except BackupError as exc:
        report, problem = None, str(exc)
    if problem:
        raise BackupError(f"validation record {store.uri_for(validation_key_for(backup_key))} is not trusted "
                          f"({problem}); validate the backup again or set allow_unvalidated_backup")
    if not report.ok:
        raise BackupError(
            f"backup {backup_key} failed validation ({report.failure}); set "
            "allow_unvalidated_backup to restore it anyway"
        )
    return backup_key


def refuse_foreign_backup(store: ObjectStore, backup_key: str, *, environment: str, database: str) -> BackupManifest:
    """A backup is restorable into ``environment``/``database`` only if its key lies under
    ``<environment>/`` and its manifest names that environment and database: otherwise another
    environment's data (staging's tenants in production) would be restored. Checked before
    anything is touched; returns the manifest."""
    into = f"refusing to restore it into {environment}/{database}; nothing was touched"
    parsed = parse_dump_key(backup_key)
    if parsed is None:
        raise BackupError(f"backup {backup_key} is not a {environment} backup "
                          f"({environment}/<day>/<database>-<time>.pgdump.zst); {into}")
    if parsed.environment != environment:
        raise BackupError(f"backup {backup_key} belongs to {parsed.environment}/{parsed.database}; {into}")
    manifest = read_manifest(store, backup_key)
    if (manifest.environment, manifest.database) != (environment, database) or manifest.object_key != backup_key:
        raise BackupError(f"backup {backup_key} belongs to {manifest.environment}/{manifest.database}; {into}")
    return manifest


def _verify(
    report: ProcedureReport, base_url: str, required_metrics: Sequence[str], deadline: float, step: StepResult, log: Log
) -> None:
    health = wait_for_health(base_url, deadline_seconds=deadline, log=log)
    report.health_status, report.health_body = health.status, health.body.strip()
    metrics = check_metrics(base_url, required_metrics)
    report.metrics_families, report.metrics_sample = metrics.families, metrics.sample_text
    step.detail = f"/health HTTP {health.status} after {health.attempts} attempts; /metrics {metrics.families} families"


def _restore(report: ProcedureReport, store: ObjectStore, target: DatabaseTarget, start: datetime,
             step: StepResult, *, log: Log) -> None:
    """The data step into a new, empty database, proven against the manifest (row counts and
    objects); the RPO is the procedure's start minus the backup's snapshot."""
    restored = restore_backup(store, report.backup_key, target, log=log)
    report.snapshot_at = restored.manifest.snapshot_at
    report.rpo_seconds = round(rpo_seconds(restored.manifest.snapshot_at, start), 1)
    verified = dbswitch.verify_against_manifest(target, restored.manifest)
    step.detail = (f"{restored.manifest.total_rows} rows into {target.describe()} ({restored.mode}) "
                   f"in {restored.seconds:.1f} s; {verified}")


def _finish(report: ProcedureReport, recorder: StepRecorder, targets: Targets | None, t0: float) -> None:
    report.failure = recorder.first_failure()
    if report.failure is None and targets is not None:
        missed = []
        if report.rto_seconds is not None and report.rto_seconds > targets.rto_seconds:
            missed.append(
                f"RTO {report.rto_seconds / 60:.1f} min exceeds the {targets.rto_seconds / 60:.0f} min target"
            )
        if report.rpo_seconds is not None and report.rpo_seconds > targets.rpo_seconds:
            missed.append(
                f"RPO {report.rpo_seconds / 3600:.1f} h exceeds the {targets.rpo_seconds / 3600:.0f} h target"
            )
        if missed:
            report.failure = "targets: " + "; ".join(missed)
    report.ok = report.failure is None
    report.finished_at = datetime.now(UTC).isoformat()


def run_drill(request: DrillRequest, *, store: ObjectStore, platform: Platform, log: Log = print) -> ProcedureReport:
    """An isolated rehearsal; everything it created is removed at the end, pass or fail.

    ``request.database`` is the drilled environment's production database name: the backup must be
    one of its backups. The drill's Redis must provably not be production's (``production_redis_url``
    is required, and both servers are asked who they are)."""
    start = datetime.now(UTC)
    t0 = time.monotonic()
    report = ProcedureReport(
        "drill",
        request.environment,
        request.backup_key,
        platform.describe(),
        started_at=start.isoformat(),
        rto_target_seconds=request.targets.rto_seconds,
        rpo_target_seconds=request.targets.rpo_seconds,
    )
    recorder = StepRecorder(report.steps, log, "drill step")
    scratch, drill_redis, production_redis = request.scratch, request.drill_redis_url, request.production_redis_url
    scratch_name: str | None = None
    platform_up = False
    try:
        refuse_foreign_backup(store, request.backup_key, environment=request.environment, database=request.database)
        cache.drill_flush_mode(drill_redis, production_redis, variable=request.production_redis_variable)
        with recorder.step("database") as step:
            name = new_scratch_name()
            create_scratch_database(scratch, name, allow_superuser=request.scratch_allow_superuser)
            scratch_name = name
            step.detail = f"created {name} on {scratch.host}:{scratch.port}"
        target = scratch.with_dbname(scratch_name)
        with recorder.step("infrastructure") as step:
            platform_up = True
            base_url = platform.up(AppRuntime(target, drill_redis), log)
            step.detail = f"{platform.describe()} at {base_url}"
        with recorder.step("restore") as step:
            _restore(report, store, target, start, step, log=log)
        with recorder.step("cache") as step:
            step.detail = (
                cache.flush(drill_redis, everything=True, protect=production_redis)
                + f" on {cache.describe(drill_redis)}"
            )
        with recorder.step("verify") as step:
            _verify(report, base_url, request.required_metrics, request.health_deadline, step, log)
            report.rto_seconds = round(time.monotonic() - t0, 1)
    except StepFailed:
        recorder.skip_rest(DRILL_STEPS, "an earlier step failed")
    except AcciOpsError as exc:  # preflight refusals, before anything was created
        report.steps.append(StepResult("preflight", "failed", 0.0, str(exc)))
    finally:

        def teardown(step: StepResult) -> None:
            notes = []
            if platform_up:
                platform.down(log)
                notes.append(f"{platform.describe()} removed")
            if scratch_name:
                drop_scratch_database(scratch, scratch_name)
                notes.append(f"dropped {scratch_name}")
                cache.flush(drill_redis, everything=True, protect=production_redis)
                notes.append("drill cache flushed")
            step.detail = ", ".join(notes) or "nothing to remove"

        recorder.cleanup("teardown", teardown)
        _finish(report, recorder, request.targets, t0)
    return report


def run_recovery(request: RecoveryRequest, *, store: ObjectStore, platform: Platform | None,
                 log: Log = print) -> ProcedureReport:
    """The real thing, against the environment. Never tears anything down; ``platform`` None skips
    the infrastructure step (it is still up, only the data is restored).

    Production is not touched until the last moment: the backup is restored into a new database
    beside the live one and verified against its manifest, then switched in with two renames in
    one transaction (lib/dr/switch.py); the previous database is kept as ``<db>_before_dr_<time>``.
    A failure before the switch drops only the new database, so repeating DR is always safe."""
    database = request.database
    start = datetime.now(UTC)
    t0 = time.monotonic()
    report = ProcedureReport(
        "recovery",
        request.environment,
        request.backup_key,
        platform.describe() if platform else "existing infrastructure",
        started_at=start.isoformat(),
    )
    recorder = StepRecorder(report.steps, log, "recovery step")
    try:
        try:
            refuse_foreign_backup(store, request.backup_key, environment=request.environment, database=database.dbname)
            plan = dbswitch.SwitchPlan.for_database(database.dbname, start)
            try:
                dbswitch.preflight(database, plan, log)
            except dbswitch.ServerUnreachable:
                if platform is None:
                    raise
                log("the database server does not answer yet; its privileges are checked after the infrastructure step")
        except AcciOpsError as exc:
            report.steps.append(StepResult("preflight", "failed", 0.0, str(exc)))
            recorder.skip_rest(RECOVERY_STEPS, "refused before anything was touched")
            return report
        base_url = request.app_url
        with recorder.step("infrastructure") as step:
            if platform is None:
                step.status, step.detail = "skipped", "skip_infrastructure was set"
            else:
                base_url = platform.up(AppRuntime(database, request.redis_url), log)
                step.detail = f"{platform.describe()} at {base_url}"
        with recorder.step("restore") as step:
            # Into <db>_dr_<time> beside the live database; on any failure only that copy is dropped.
            dbswitch.preflight(database, plan, log)
            dbswitch.create_beside(database, plan)
            with _dropping_on_failure(database, plan, log):
                _restore(report, store, database.with_dbname(plan.new), start, step, log=log)
        with recorder.step("switch") as step:
            with _dropping_on_failure(database, plan, log):
                report.kept_database = dbswitch.switch(database, plan, log=log)
            step.detail = (f"{plan.live} is now the restored database; the previous one is kept as "
                           f"{report.kept_database} (drop it once no longer needed)" if report.kept_database
                           else f"{plan.new} renamed to {plan.live} (there was no live database to keep)")
        with recorder.step("cache") as step:
            step.detail = cache.flush(request.redis_url, everything=True) + f" on {cache.describe(request.redis_url)}"
        with recorder.step("verify") as step:
            if not base_url:
                raise ConfigError("no app URL to verify; set ACCI_APP_URL")
            _verify(report, base_url, request.required_metrics, request.health_deadline, step, log)
            report.rto_seconds = round(time.monotonic() - t0, 1)
    except StepFailed:
        recorder.skip_rest(RECOVERY_STEPS, "an earlier step failed")
    finally:
        _finish(report, recorder, None, t0)
    return report


@contextmanager
def _dropping_on_failure(database: DatabaseTarget, plan: dbswitch.SwitchPlan, log: Log) -> Iterator[None]:
    """Whatever fails before the switch, the half-restored copy goes and production stays as it was."""
    try:
        yield
    except BaseException:
        try:
            dbswitch.drop_new(database, plan)
            log(f"dropped {plan.new}; {plan.live} was not touched")
        except AcciOpsError as exc:
            log(f"could not drop {plan.new} ({exc}); drop it by hand, {plan.live} was not touched")
        raise


def store_procedure_report(store: ObjectStore, report: ProcedureReport) -> str:
    """Reports live under drills/ or recoveries/ (outside the environment's day folders, so the
    validation sensor's cursor and retention never see them)."""
    folder = "drills" if report.kind == "drill" else "recoveries"
    stamp = report.started_at.replace(":", "").replace("-", "")[:15]
    key = f"{folder}/{report.environment}/{stamp}Z-{report.kind}.json"
    store.put_bytes(key, report.to_json())
    return store.uri_for(key)
