"""Notices backups landing in the object store (ours or other tools' in our format) and validates them."""


import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg

from acci_ops.defs._contracts import BackupEnvironment, validated_asset_key
from acci_ops.defs._shared import resource_keys, section_resource
from acci_ops.defs.validation.checks import BACKUP_KEY_TAG, check_key
from acci_ops.lib.backup.records import VALIDATION_SUFFIX
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.validation.scan import scan_new_backups
from acci_ops.settings import EnvironmentSpec, Settings

MAX_OBJECTS_PER_TICK = 2000
MAX_RUNS_PER_TICK = 20
WINDOW_DAYS = 7  # each tick re-examines this many recent day folders, so late arrivals are validated
FIRST_LOOK_BACK = timedelta(days=2)


def initial_cursor(environment: str, today: date) -> str:
    """On first start, start two days back instead of walking the whole bucket (the re-examined
    window covers the last WINDOW_DAYS days anyway)."""
    return f"{environment}/{(today - FIRST_LOOK_BACK).isoformat()}/"


def build_validation_sensor(specs: list[EnvironmentSpec], settings: Settings,
                            job) -> dg.SensorDefinition:  # noqa: ANN001 - an unresolved asset job

    @dg.sensor(
        name="backup_validation_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys=resource_keys(specs, "backup"),
        description=(
            "Watches the backup stores for new manifests (a backup is complete when its manifest lands, whoever "
            "wrote it) and launches validate_backup for each one without a signed validation record. Keeps a "
            "per-environment cursor (S3 StartAfter) that never moves past today's day folder (stray or "
            f"future-dated keys cannot blind it) and re-examines the last {WINDOW_DAYS} days each tick, so backups "
            "that land late are validated too; backups dated today or later are skipped with a warning. Bounded "
            f"to {MAX_RUNS_PER_TICK} runs and {MAX_OBJECTS_PER_TICK} keys per environment per tick."
        ),
    )
    def backup_validation_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        try:
            cursor = json.loads(context.cursor) if context.cursor else {}
        except ValueError:
            cursor = {}
        if not isinstance(cursor, dict):
            cursor = {}
        # Partitions are days in ACCI_TIMEZONE: today's (and later) have no partition yet.
        today = datetime.now(ZoneInfo(settings.timezone)).date()
        requests, notes = [], []
        for spec in specs:
            env: BackupEnvironment = section_resource(context, "backup", spec.name)
            start = cursor.get(spec.name)
            if not isinstance(start, str) or not start.startswith(f"{spec.name}/"):
                start = initial_cursor(spec.name, today)
            try:
                scan = scan_new_backups(env.store(), spec.name, start, today=today, first_day=settings.start_date,
                                        window_days=WINDOW_DAYS, max_objects=MAX_OBJECTS_PER_TICK,
                                        max_backups=MAX_RUNS_PER_TICK, skip_if_suffix=VALIDATION_SUFFIX,
                                        keyring=env.keyring())
            except AcciOpsError as exc:
                context.log.error(f"{spec.name}: cannot scan backups: {exc}")
                notes.append(f"{spec.name}: {exc}")
                continue
            for warning in scan.skipped:
                context.log.warning(f"{spec.name}: {warning}")
            if scan.cursor:
                cursor[spec.name] = scan.cursor
            notes.append(f"{spec.name}: {scan.examined} keys read, {len(scan.new_backups)} backups to validate")
            for backup in scan.new_backups:
                requests.append(dg.RunRequest(
                    run_key=f"validate:{backup.key}",
                    partition_key=backup.day.isoformat(),
                    asset_selection=[validated_asset_key(spec, settings)],
                    asset_check_keys=[check_key(spec, settings)],
                    tags={BACKUP_KEY_TAG: backup.key, "acci/environment": spec.name},
                ))
        context.log.info("; ".join(notes))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True),
                               skip_reason=None if requests else "; ".join(notes) or "nothing to validate")

    return backup_validation_sensor
