"""The nightly backup asset (one per environment) and its offsite copy."""


from datetime import date, timedelta

import dagster as dg

from acci_ops.defs.resources import AcciEnvironment, resource_key
from acci_ops.lib.backup.dump import BackupResult, run_backup
from acci_ops.lib.backup.inventory import copy_backup, list_backups
from acci_ops.lib.backup.signing import NO_KEY_WARNING, Keyring
from acci_ops.lib.core.errors import AcciOpsError, TransientError
from acci_ops.settings import EnvironmentSpec, Settings

BACKUP_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26))
MAX_TRANSIENT_RETRIES = 3


def backup_asset_key(spec: EnvironmentSpec, settings: Settings) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "db_backup"]) if settings.several else dg.AssetKey("db_backup")


def offsite_asset_key(spec: EnvironmentSpec, settings: Settings) -> dg.AssetKey:
    return dg.AssetKey([spec.name, "db_backup_offsite"]) if settings.several else dg.AssetKey("db_backup_offsite")


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=settings.start_date.isoformat(), timezone=settings.timezone)


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


def run_step(context: dg.AssetExecutionContext, action):  # noqa: ANN001, ANN201
    """Turn lib errors into Dagster outcomes: transient ones retry with backoff, the rest fail
    with their one-line cause (and no chained traceback that could carry connection details)."""
    try:
        return action()
    except TransientError as exc:
        if context.retry_number < MAX_TRANSIENT_RETRIES:
            wait = 30 * 2**context.retry_number
            context.log.warning(f"transient failure, retrying in {wait} s: {exc}")
            raise dg.RetryRequested(max_retries=MAX_TRANSIENT_RETRIES, seconds_to_wait=wait) from None
        raise dg.Failure(description=str(exc)) from None
    except AcciOpsError as exc:
        raise dg.Failure(description=str(exc)) from None


_WARNED_RUNS: set[str] = set()


def keyring_or_warn(context: dg.OpExecutionContext, env: AcciEnvironment) -> Keyring | None:
    """The environment's signing keys; without any, warn once per run (per process) that nothing
    can be authenticated, and let the callers take the secure default."""
    try:
        keyring = env.keyring()
    except AcciOpsError as exc:
        raise dg.Failure(description=str(exc)) from None
    run_id = context.run.run_id
    if keyring is None and run_id not in _WARNED_RUNS:
        _WARNED_RUNS.add(run_id)
        context.log.warning(NO_KEY_WARNING)
    return keyring


def build_backup_asset(spec: EnvironmentSpec, settings: Settings) -> dg.AssetsDefinition:
    key = resource_key(spec.name)

    @dg.asset(
        key=backup_asset_key(spec, settings),
        partitions_def=daily_partitions(settings),
        required_resource_keys={key},
        group_name="backups",
        pool=f"acci_backup_{spec.name}",
        freshness_policy=BACKUP_FRESHNESS,
        kinds={"postgres", "s3"},
        tags={"acci/environment": spec.name},
        description=(
            f"Nightly pg_dump of the {spec.name} ACCI database, streamed (custom format, zstd) to object "
            "storage with a JSON manifest (sha256, exact row counts) written last as the commit marker. "
            "The partition is the day the backup closes; the dump is the database as it is when the run "
            "starts. A failed run leaves nothing under a final key. Late after 26 h without a backup."
        ),
    )
    def db_backup(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        env: AcciEnvironment = getattr(context.resources, key)
        partition = date.fromisoformat(context.partition_key)
        keyring = keyring_or_warn(context, env)
        result = run_step(context, lambda: run_backup(
            environment=spec.name, target=env.target(), store=env.store(), partition=partition,
            settings=env.backup_settings(), log=context.log.info, keyring=keyring,
        ))
        return dg.MaterializeResult(metadata={**backup_metadata(result), "signed": keyring is not None})

    return db_backup


def build_offsite_asset(spec: EnvironmentSpec, settings: Settings) -> dg.AssetsDefinition:
    key = resource_key(spec.name)

    @dg.asset(
        key=offsite_asset_key(spec, settings),
        deps=[backup_asset_key(spec, settings)],
        partitions_def=daily_partitions(settings),
        required_resource_keys={key},
        group_name="backups",
        kinds={"s3"},
        tags={"acci/environment": spec.name},
        description=(
            f"Offsite copy of the newest {spec.name} backup of the partition to a second object store "
            "(another bucket, region or provider). The copy is re-read and its sha256 compared with the "
            "manifest before the manifest is copied byte for byte (with its signature); a copy that does not "
            "verify is removed."
        ),
    )
    def db_backup_offsite(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        env: AcciEnvironment = getattr(context.resources, key)
        day = date.fromisoformat(context.partition_key)

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
