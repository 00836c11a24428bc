"""Every backup proven restorable: the blocking restore check and the validated-backup asset."""


import functools
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ParamSpec, TypeVar

import dagster as dg

from acci_ops.defs._contracts import BACKUPS_GROUP, BackupEnvironment, backup_asset_key, validated_asset_key
from acci_ops.defs._shared import daily_partitions, partition_day, resource_key, run_step, section_resource
from acci_ops.defs.validation.resources import AcciValidation
from acci_ops.lib.backup.inventory import Trust, inspect_backup, list_backups
from acci_ops.lib.backup.layout import BackupKey, parse_dump_key
from acci_ops.lib.backup.records import (
    ValidationReport,
    newest_validated,
    rpo_seconds,
    store_report,
    validated_rpo_seconds,
)
from acci_ops.lib.backup.signing import NO_KEY_WARNING
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.validation.validate import validate_backup
from acci_ops.settings import EnvironmentSpec, Settings

BACKUP_KEY_TAG = "acci/backup_key"
CHECK_NAME = "restores_cleanly"
VALIDATED_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))
P, R = ParamSpec("P"), TypeVar("R")


def check_key(spec: EnvironmentSpec, settings: Settings) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(backup_asset_key(spec, settings), CHECK_NAME)


def report_metadata(report: ValidationReport, rpo: float | None) -> dict[str, object]:
    metadata: dict[str, object] = {
        "backup_key": report.backup_key,
        "restore_seconds": report.restore_seconds,
        "validation_seconds": report.validation_seconds,
        "restore_mode": report.mode,
        "tables": report.tables,
        "total_rows": report.total_rows,
        "report": dg.MetadataValue.md(report.markdown()),
    }
    for step in report.steps:
        if step.status != "skipped":
            metadata[f"step_{step.name}_seconds"] = step.seconds
    if rpo is not None:
        metadata["rpo_hours"] = round(rpo / 3600, 3)
    if report.failure:
        metadata["failure"] = report.failure
    return metadata


def validated_metadata(backup: BackupKey, report: ValidationReport) -> dict[str, object]:
    """What db_backup_validated records, whichever run records it (its own step, or the restore
    check of a run that did not select it), so both look the same in the catalog."""
    return {
        "validated_backup_key": backup.key,
        "signed": True,
        "rpo_hours": round(rpo_seconds(report.snapshot_at, datetime.now(UTC)) / 3600, 3),
        "restore_seconds": report.restore_seconds,
        "validation_seconds": report.validation_seconds,
        "snapshot_at": report.snapshot_at,
    }


def validated_step_runs_here(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> bool:
    """Whether this run also executes db_backup_validated (nightly_backup, validate_backup) after the
    check. A run that selected only db_backup (Materialize in the UI) or re-executes only the check
    does not, and the check then records the validated asset itself."""
    op_context = context.op_execution_context
    layer = op_context.job_def.asset_layer
    if key not in layer.selected_asset_keys:
        return False
    steps = op_context.get_step_execution_context().execution_plan.step_keys_to_execute
    return layer.get(key).assets_def.node_def.name in steps


# The restore check is partitioned (it validates the backup of its day), and Dagster 1.13 still marks a
# partitions_def on an asset check as a preview feature, warning at every load (start-up and each run
# worker). The feature is needed; only that one warning is silenced, only while the check is built.
PARTITIONED_CHECK_WARNING = r"Specifying a partitions_def on an AssetCheckSpec is currently in preview"


def _without_partitioned_check_warning(build: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(build)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> R:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=PARTITIONED_CHECK_WARNING, category=dg.PreviewWarning)
            return build(*args, **kwargs)
    return quiet


@_without_partitioned_check_warning
def build_restore_check(spec: EnvironmentSpec, settings: Settings) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=backup_asset_key(spec, settings),
        name=CHECK_NAME,
        blocking=True,
        partitions_def=daily_partitions(settings),
        required_resource_keys={resource_key("backup", spec.name), resource_key("validation", spec.name)},
        description=(
            "Restores the partition's newest backup into a throwaway database on the scratch server and proves it: "
            "sha256 and size against the manifest, the archive's table of contents, pg_restore stopping at the first "
            "error, exact row counts and the set of tables/sequences/views/functions/extensions against the manifest, "
            "pg_amcheck and SQL assertions when configured. The scratch database is always dropped. Blocks the "
            "offsite copy; the result is stored beside the manifest as .validation.json. When it passes in a run "
            "that does not also run db_backup_validated (Materialize on db_backup in the UI), it records "
            "db_backup_validated for the partition itself, so every passing validation shows there."
        ),
    )
    def restores_cleanly(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        env: BackupEnvironment = section_resource(context, "backup", spec.name)
        validation: AcciValidation = section_resource(context, "validation", spec.name)
        day = partition_day(context)
        keyring = env.keyring_or_warn(context)

        def validate() -> tuple[ValidationReport, float | None, Trust | None]:
            store = env.store()
            backup_key = context.run.tags.get(BACKUP_KEY_TAG)
            if not backup_key:
                backups = list_backups(store, spec.name, day)
                if not backups:
                    raise AcciOpsError(f"no complete {spec.name} backup for {day} in {store.url} to validate")
                backup_key = backups[-1].key
            report = validate_backup(store=store, backup_key=backup_key, scratch=validation.scratch(),
                                     environment=spec.name, source=env.target(),
                                     settings=validation.settings(env.pg_bin_dir), log=context.log.info)
            store_report(store, report, keyring)
            parsed = parse_dump_key(backup_key)
            trust = inspect_backup(store, parsed, keyring) if parsed else None
            newest = (newest_validated(store, spec.name, keyring)
                      if report.ok and trust and trust.trusted and not validated_step_runs_here(context, validated)
                      else None)
            return report, validated_rpo_seconds(store, spec.name, keyring), trust, newest

        validated = validated_asset_key(spec, settings)
        report, rpo, trust, newest = run_step(context, validate)
        if newest is not None:
            context.op_execution_context.log_event(dg.AssetMaterialization(
                asset_key=validated, partition=context.partition_key, metadata=validated_metadata(*newest),
                description=f"recorded by the {CHECK_NAME} check: this run did not select the asset"))
        if not report.ok:
            context.log.error(f"backup {report.backup_key} failed validation: {report.failure}")
        metadata = report_metadata(report, rpo)
        metadata["signed"] = bool(trust and trust.trusted)
        if not metadata["signed"]:
            why = trust.describe() if trust else "not named the way acci_ops names backups"
            metadata["trust"] = why
            context.log.warning(f"backup {report.backup_key} is {why}: DR never chooses it by default and retention "
                                "keeps it without ranking it")
        return dg.AssetCheckResult(passed=report.ok, severity=dg.AssetCheckSeverity.ERROR,
                                   description=report.failure or f"restored and verified in {report.restore_seconds} s",
                                   metadata=metadata)

    return restores_cleanly


def build_validated_asset(spec: EnvironmentSpec, settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=validated_asset_key(spec, settings),
        deps=[backup_asset_key(spec, settings)],
        partitions_def=daily_partitions(settings),
        required_resource_keys={resource_key("backup", spec.name)},
        group_name=BACKUPS_GROUP,  # so nightly_backup validates what it backs up
        freshness_policy=VALIDATED_FRESHNESS,
        kinds={"postgres"},
        tags={"acci/environment": spec.name},
        description=(
            f"The newest {spec.name} backup known to restore: signed by this acci_ops (ACCI_BACKUP_SIGNING_KEY) "
            "with a signed, passing validation record. Materialized after the restore check passes, with the "
            "RPO (age of the newest validated backup) and the restore time (our data RTO estimate). Late when no "
            "backup has been validated for 26 hours."
        ),
    )
    def db_backup_validated(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        env: BackupEnvironment = section_resource(context, "backup", spec.name)
        keyring = env.keyring_or_warn(context)
        if keyring is None:
            raise dg.Failure(description=f"{NO_KEY_WARNING}; no backup can be marked validated until it is set")

        def newest():  # noqa: ANN202
            store = env.store()
            found = newest_validated(store, spec.name, keyring)
            if not found:
                raise AcciOpsError(f"no signed, validated {spec.name} backup exists yet")
            named = parse_dump_key(context.run.tags.get(BACKUP_KEY_TAG) or "")
            trust = inspect_backup(store, named, keyring) if named and named.key != found[0].key else None
            return found, trust

        (backup, report), trust = run_step(context, newest)
        if trust is not None and not trust.trusted:
            context.log.warning(f"backup {trust.backup.key} is {trust.describe()}: it is not counted as validated; "
                                f"the newest validated backup stays {backup.key}")
        return dg.MaterializeResult(metadata=validated_metadata(backup, report))

    return db_backup_validated
