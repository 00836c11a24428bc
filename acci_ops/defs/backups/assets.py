"""The nightly backup asset (one per environment) and its offsite copy."""


from datetime import timedelta

import dagster as dg

from acci_ops.defs._contracts import BACKUPS_GROUP, backup_asset_key
from acci_ops.defs._shared import asset_key, daily_partitions, partition_day, resource_key, run_step, section_resource
from acci_ops.defs.backups.resources import AcciEnvironment
from acci_ops.lib.backup.dump import BackupResult, run_backup
from acci_ops.lib.backup.inventory import copy_backup, list_backups
from acci_ops.lib.core.errors import AcciOpsError
from acci_ops.lib.core.steps import human_duration
from acci_ops.settings import EnvironmentSpec, Settings, url_scheme

BACKUP_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))
GROUP = BACKUPS_GROUP  # nightly_backup materializes this group: backup, validated and offsite assets
MAX_RUNTIME_TAG = "dagster/max_runtime"  # run tag the run monitor stops a run by (run tags only, not asset tags)
RUNTIME_MARGIN_SECONDS = 600  # the run outlives pg_dump's own limit by this much


def nightly_max_runtime_seconds(settings: Settings) -> int:
    """How long a backup run may live (its ``dagster/max_runtime``): the longest
    ACCI_BACKUP_MAX_RUNTIME_SECONDS plus the margin the offsite copy runs in. Retention and upload
    cleanup count on no backup run living longer."""
    return max(spec.backup.max_runtime_seconds for spec in settings.environments) + RUNTIME_MARGIN_SECONDS


def ensure_max_runtime(context: dg.AssetExecutionContext, seconds: int) -> None:
    """Give a run launched without the nightly job (asset page, launchpad) the nightly job's
    ``dagster/max_runtime``. Dagster's run monitor reads only RUN tags (asset ``tags`` and
    ``op_tags`` never become run tags), and it re-reads them while the run lives, so the tag is
    added to the run here, at the start of the backup. A run that already has one keeps it."""
    if MAX_RUNTIME_TAG in context.run.tags:
        return
    context.instance.add_run_tags(context.run_id, {MAX_RUNTIME_TAG: str(seconds)})
    context.log.info(f"run given {MAX_RUNTIME_TAG}={seconds} (as the nightly backup job has): it is stopped "
                     f"after {human_duration(seconds)}")


def store_kinds(scheme: str | None) -> set[str]:
    """The badge the UI shows for where an asset's objects go: ``s3`` or ``file`` (a local or mounted
    directory), from the configured URL's scheme; none while the location is not configured."""
    return {scheme} if scheme in ("s3", "file") else set()


def backup_metadata(result: BackupResult) -> dict[str, object]:
    """Plain numbers so the UI plots them; URIs so ops can fetch the dump by hand."""
    m = result.manifest
    return {
        "backup_uri": dg.MetadataValue.url(result.uri) if result.uri.startswith("s3://") else result.uri,
        "sha256": m.sha256,
        "manifest_uri": result.manifest_uri,
        "object_key": m.object_key,
        "dump_bytes": m.dump_bytes,
        "stored_bytes": m.stored_bytes,
        "compression_ratio": round(result.compression_ratio, 3),
        "duration_seconds": round(result.duration_seconds, 3),
        "throughput_mb_per_s": round(result.throughput_mb_s, 3),
        "tables": len(m.row_counts),
        "total_rows": m.total_rows,
        "server_version": m.server_version,
        "pg_dump_version": m.pg_dump_version,
        "snapshot_at": m.snapshot_at,
    }


def build_backup_asset(spec: EnvironmentSpec, settings: Settings) -> dg.AssetsDefinition:
    max_runtime = nightly_max_runtime_seconds(settings)

    @dg.asset(
        key=backup_asset_key(spec, settings),
        partitions_def=daily_partitions(settings),
        required_resource_keys={resource_key("backup", spec.name)},
        group_name=GROUP,
        pool=f"acci_backup_{spec.name}",
        freshness_policy=BACKUP_FRESHNESS,
        kinds={"postgres", *store_kinds(spec.backup.store_kind)},
        tags={"acci/environment": spec.name},
        description=(
            f"Nightly pg_dump of the {spec.name} ACCI database, streamed (custom format, zstd) to object "
            "storage with a JSON manifest (sha256, exact row counts) written last as the commit marker. "
            "The partition is the day the backup closes; the dump is the database as it is when the run "
            "starts. A failed run leaves nothing under a final key. Late after 26 h without a backup."
        ),
    )
    def db_backup(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ensure_max_runtime(context, max_runtime)
        env: AcciEnvironment = section_resource(context, "backup", spec.name)
        keyring = env.keyring_or_warn(context)
        result = run_step(context, lambda: run_backup(
            environment=spec.name, target=env.target(), store=env.store(), partition=partition_day(context),
            settings=env.backup_settings(), log=context.log.info, keyring=keyring,
        ))
        return dg.MaterializeResult(metadata={**backup_metadata(result), "signed": keyring is not None})

    return db_backup


def build_offsite_asset(spec: EnvironmentSpec, settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(settings, spec.name, "db_backup_offsite"),
        deps=[backup_asset_key(spec, settings)],
        partitions_def=daily_partitions(settings),
        required_resource_keys={resource_key("backup", spec.name)},
        group_name=GROUP,
        kinds=store_kinds(url_scheme(spec.backup.offsite.url) if spec.backup.offsite else None),
        tags={"acci/environment": spec.name},
        description=(
            f"Offsite copy of the newest {spec.name} backup of the partition to a second object store "
            "(another bucket, region or provider). The copy is re-read and its sha256 compared with the "
            "manifest before the manifest is copied byte for byte (with its signature); a copy that does not "
            "verify is removed."
        ),
    )
    def db_backup_offsite(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        env: AcciEnvironment = section_resource(context, "backup", spec.name)
        day = partition_day(context)

        def copy():  # noqa: ANN202
            source, destination = env.store(), env.offsite_store()
            backups = list_backups(source, spec.name, day)
            if not backups:
                raise AcciOpsError(f"no complete {spec.name} backup for {day} in {source.url} to copy offsite")
            return copy_backup(source, destination, backups[-1], log=context.log.info)

        result = run_step(context, copy)
        return dg.MaterializeResult(metadata={
            "offsite_uri": result.destination_uri, "source_uri": result.source_uri, "sha256": result.sha256,
            "stored_bytes": result.bytes, "duration_seconds": round(result.seconds, 3),
        })

    return db_backup_offsite
