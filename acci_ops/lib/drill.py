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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from acci_ops.lib import cache
from acci_ops.lib.dburl import DatabaseTarget
from acci_ops.lib.errors import BackupError, ConfigError
from acci_ops.lib.objectstore import ObjectStore
from acci_ops.lib.platform import AppRuntime, Platform
from acci_ops.lib.probes import check_metrics, wait_for_health
from acci_ops.lib.restore import restore_backup
from acci_ops.lib.scratch import create_scratch_database, drop_scratch_database, new_scratch_name
from acci_ops.lib.steps import StepFailed, StepRecorder, StepResult, steps_markdown
from acci_ops.lib.validation import ValidationReport, newest_validated, validation_key_for

Log = Callable[[str], None]
DRILL_STEPS = ("database", "infrastructure", "restore", "cache", "verify")
RECOVERY_STEPS = ("infrastructure", "restore", "cache", "verify")


@dataclass(frozen=True)
class Targets:
    rto_seconds: float = 30 * 60
    rpo_seconds: float = 26 * 3600


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
    steps: list[StepResult] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def markdown(self) -> str:
        def minutes(seconds: float | None) -> str:
            return "n/a" if seconds is None else f"{seconds / 60:.1f} min"

        lines = [
            f"## {self.kind.title()} of `{self.environment}`: {'PASSED' if self.ok else 'FAILED'}",
            "",
            f"- backup: `{self.backup_key}` (snapshot {self.snapshot_at or 'n/a'})",
            f"- platform: {self.platform}",
            f"- RTO: {minutes(self.rto_seconds)} (target {minutes(self.rto_target_seconds)})",
            f"- RPO: {minutes(self.rpo_seconds)} (target {minutes(self.rpo_target_seconds)})",
            f"- /health: HTTP {'n/a' if self.health_status is None else self.health_status} {self.health_body[:120]}",
            f"- /metrics: {self.metrics_families} families",
        ]
        if self.failure:
            lines += ["", f"**Cause:** {self.failure}"]
        lines += ["", steps_markdown(self.steps)]
        if self.metrics_sample:
            lines += ["", "```", self.metrics_sample[:600], "```"]
        return "\n".join(lines)


def choose_backup(
    store: ObjectStore, environment: str, backup_key: str | None, *, allow_unvalidated: bool = False
) -> str:
    """The named backup, or the newest validated one; refuse a backup that failed validation
    (or was never validated) unless explicitly overridden."""
    if not backup_key:
        found = newest_validated(store, environment)
        if not found:
            raise BackupError(f"no validated {environment} backup exists; name one explicitly to use it anyway")
        return found[0].key
    if not store.exists(backup_key):
        raise BackupError(f"backup {store.uri_for(backup_key)} does not exist")
    if allow_unvalidated:
        return backup_key
    if not store.exists(validation_key_for(backup_key)):
        raise BackupError(
            f"backup {backup_key} has not been validated; validate it first or set allow_unvalidated_backup"
        )
    report = ValidationReport.from_json(store.get_bytes(validation_key_for(backup_key)))
    if not report.ok:
        raise BackupError(
            f"backup {backup_key} failed validation ({report.failure}); set "
            "allow_unvalidated_backup to restore it anyway"
        )
    return backup_key


def _verify(
    report: ProcedureReport, base_url: str, required_metrics: Sequence[str], deadline: float, step: StepResult, log: Log
) -> None:
    health = wait_for_health(base_url, deadline_seconds=deadline, log=log)
    report.health_status, report.health_body = health.status, health.body.strip()
    metrics = check_metrics(base_url, required_metrics)
    report.metrics_families, report.metrics_sample = metrics.families, metrics.sample_text
    step.detail = f"/health HTTP {health.status} after {health.attempts} attempts; /metrics {metrics.families} families"


def _restore(report: ProcedureReport, store: ObjectStore, target: DatabaseTarget, start: datetime,
             step: StepResult, *, clean: bool, log: Log) -> None:
    """The data step; the RPO is the procedure's start minus the backup's snapshot."""
    restored = restore_backup(store, report.backup_key, target, clean=clean, log=log)
    report.snapshot_at = restored.manifest.snapshot_at
    report.rpo_seconds = round((start - datetime.fromisoformat(restored.manifest.snapshot_at)).total_seconds(), 1)
    step.detail = (f"{restored.manifest.total_rows} rows into {target.describe()} ({restored.mode}) "
                   f"in {restored.seconds:.1f} s")


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


def run_drill(
    *,
    environment: str,
    store: ObjectStore,
    backup_key: str,
    scratch: DatabaseTarget,
    platform: Platform,
    drill_redis_url: str,
    production_redis_url: str | None,
    required_metrics: Sequence[str] = (),
    targets: Targets = Targets(),
    health_deadline: float = 300,
    log: Log = print,
) -> ProcedureReport:
    """An isolated rehearsal; everything it created is removed at the end, pass or fail."""
    start = datetime.now(UTC)
    t0 = time.monotonic()
    report = ProcedureReport(
        "drill",
        environment,
        backup_key,
        platform.describe(),
        started_at=start.isoformat(),
        rto_target_seconds=targets.rto_seconds,
        rpo_target_seconds=targets.rpo_seconds,
    )
    recorder = StepRecorder(report.steps, log, "drill step")
    scratch_name: str | None = None
    platform_up = False
    try:
        if production_redis_url and cache.redis_identity(drill_redis_url) == cache.redis_identity(production_redis_url):
            raise ConfigError("the drill's Redis URL is production's Redis; give the drill its own database")
        with recorder.step("database") as step:
            name = new_scratch_name()
            create_scratch_database(scratch, name)
            scratch_name = name
            step.detail = f"created {name} on {scratch.host}:{scratch.port}"
        target = scratch.with_dbname(scratch_name)
        with recorder.step("infrastructure") as step:
            platform_up = True
            base_url = platform.up(AppRuntime(target, drill_redis_url), log)
            step.detail = f"{platform.describe()} at {base_url}"
        with recorder.step("restore") as step:
            _restore(report, store, target, start, step, clean=False, log=log)
        with recorder.step("cache") as step:
            step.detail = (
                cache.flush(drill_redis_url, everything=True, protect=production_redis_url)
                + f" on {cache.describe(drill_redis_url)}"
            )
        with recorder.step("verify") as step:
            _verify(report, base_url, required_metrics, health_deadline, step, log)
            report.rto_seconds = round(time.monotonic() - t0, 1)
    except StepFailed:
        recorder.skip_rest(DRILL_STEPS, "an earlier step failed")
    except ConfigError as exc:
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
                cache.flush(drill_redis_url, everything=True, protect=production_redis_url)
                notes.append("drill cache flushed")
            step.detail = ", ".join(notes) or "nothing to remove"

        recorder.cleanup("teardown", teardown)
        _finish(report, recorder, targets, t0)
    return report


def run_recovery(
    *,
    environment: str,
    store: ObjectStore,
    backup_key: str,
    database: DatabaseTarget,
    platform: Platform | None,
    redis_url: str,
    app_url: str | None,
    required_metrics: Sequence[str] = (),
    health_deadline: float = 600,
    log: Log = print,
) -> ProcedureReport:
    """The real thing, against the environment. Never tears anything down."""
    start = datetime.now(UTC)
    t0 = time.monotonic()
    report = ProcedureReport(
        "recovery",
        environment,
        backup_key,
        platform.describe() if platform else "existing infrastructure",
        started_at=start.isoformat(),
    )
    recorder = StepRecorder(report.steps, log, "recovery step")
    try:
        base_url = app_url
        with recorder.step("infrastructure") as step:
            if platform is None:
                step.status, step.detail = "skipped", "skip_infrastructure was set"
            else:
                base_url = platform.up(AppRuntime(database, redis_url), log)
                step.detail = f"{platform.describe()} at {base_url}"
        with recorder.step("restore") as step:
            _restore(report, store, database, start, step, clean=True, log=log)
        with recorder.step("cache") as step:
            step.detail = cache.flush(redis_url, everything=True) + f" on {cache.describe(redis_url)}"
        with recorder.step("verify") as step:
            if not base_url:
                raise ConfigError("no app URL to verify; set ACCI_APP_URL")
            _verify(report, base_url, required_metrics, health_deadline, step, log)
            report.rto_seconds = round(time.monotonic() - t0, 1)
    except StepFailed:
        recorder.skip_rest(RECOVERY_STEPS, "an earlier step failed")
    finally:
        _finish(report, recorder, None, t0)
    return report


def store_procedure_report(store: ObjectStore, report: ProcedureReport) -> str:
    """Reports live under drills/ or recoveries/ (outside the environment's day folders, so the
    validation sensor's cursor and retention never see them)."""
    folder = "drills" if report.kind == "drill" else "recoveries"
    stamp = report.started_at.replace(":", "").replace("-", "")[:15]
    key = f"{folder}/{report.environment}/{stamp}Z-{report.kind}.json"
    store.put_bytes(key, report.to_json())
    return store.uri_for(key)
