"""Validation as Dagster runs it: in the nightly flow, from the sensor, and what it protects."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from acci_ops.lib.backup.layout import dump_key, manifest_key_for
from acci_ops.lib.backup.records import ValidationReport, validation_key_for
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.scan import scan_new_backups
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY, put_backup, put_record
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.s3 import all_keys
from acci_ops_tests.fixtures.servers import DB_PASSWORD


@pytest.fixture
def validating_env(single_env, monkeypatch, scratch_url, s3):
    offsite = single_env + "-off"
    s3.create_bucket(Bucket=offsite)
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    monkeypatch.setenv("ACCI_OFFSITE_URL", f"s3://{offsite}/copy")
    return single_env, offsite


def check_evaluation(result):
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation, {k: v.value for k, v in evaluation.metadata.items()}


def test_nightly_flow_backs_up_validates_and_then_copies(validating_env, s3, instance):
    bucket, offsite = validating_env
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance)
    assert result.success
    evaluation, meta = check_evaluation(result)
    assert evaluation.passed and evaluation.check_name == "restores_cleanly"
    assert evaluation.partition == "2026-11-26"
    assert meta["restore_seconds"] > 0 and meta["validation_seconds"] >= meta["restore_seconds"]
    assert 0 <= meta["rpo_hours"] < 1
    assert "| restore | passed |" in meta["report"]
    key = meta["backup_key"]
    stored = s3.get_object(Bucket=bucket, Key=f"acci/{validation_key_for(key)}")["Body"].read()
    record = ValidationReport.from_json(stored)
    assert record.ok and record.total_rows == 7020
    validated = result.asset_materializations_for_node("db_backup_validated")[0].metadata
    assert validated["validated_backup_key"].value == key
    assert isinstance(validated["rpo_hours"].value, float)
    assert len(result.asset_materializations_for_node("db_backup_offsite")) == 1
    assert meta["signed"] is True and validated["signed"].value is True
    assert json.loads(stored)["signature"].startswith("hmac-sha256:")
    recorded = "\n".join(dg.serialize_value(r) for r in instance.all_logs(result.run_id))
    run = instance.get_run_by_id(result.run_id)
    recorded += json.dumps(run.run_config, default=str) + json.dumps(run.tags)
    assert DB_PASSWORD not in recorded and "scratch-Pw-77q" not in recorded and TEST_SIGNING_KEY not in recorded


def test_failed_validation_blocks_offsite_and_is_not_marked_validated(validating_env, s3, instance, tmp_path,
                                                                       monkeypatch):
    bucket, offsite = validating_env
    assertions = tmp_path / "assertions.yaml"
    assertions.write_text("- name: at least a million users\n  sql: SELECT count(*) >= 1000000 FROM users\n")
    monkeypatch.setenv("ACCI_VALIDATION_ASSERTIONS_FILE", str(assertions))
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, raise_on_error=False)
    assert not result.success
    evaluation, meta = check_evaluation(result)
    assert not evaluation.passed
    assert evaluation.description == ("assertions: assertions failed: 'at least a million users' returned "
                                      "[(False,)]")
    assert result.asset_materializations_for_node("db_backup_offsite") == []
    assert result.asset_materializations_for_node("db_backup_validated") == []
    assert all_keys(s3, offsite) == []
    record = ValidationReport.from_json(
        s3.get_object(Bucket=bucket, Key=f"acci/{validation_key_for(meta['backup_key'])}")["Body"].read())
    assert not record.ok


def seed_foreign_backups(s3, bucket: str, days: list[date], env: str = "production") -> list[str]:
    """Backups in our format written by another tool: just objects and manifests."""
    keys = [dump_key(env, day, "acci", datetime(day.year, day.month, day.day, 23, tzinfo=UTC)) for day in days]
    objects = [(f"acci/{key}", b"x") for key in keys] + [(f"acci/{manifest_key_for(key)}", b"{}") for key in keys]
    with ThreadPoolExecutor(8) as pool:  # thousands of small PUTs: in parallel, as a real writer would
        list(pool.map(lambda item: s3.put_object(Bucket=bucket, Key=item[0], Body=item[1]), objects))
    return keys


def seed_signed_backups(s3, bucket: str, days: list[date]) -> list[str]:
    """Backups as this acci_ops writes them (signed manifests), without running pg_dump."""
    return [put_backup((s3, bucket, "acci"), "production", day) for day in days]


def sensor_tick(instance, cursor=None):
    defs = defs_from_env()
    sensor = defs.resolve_sensor_def("backup_validation_sensor")
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    return sensor.evaluate_tick(context), context


def test_sensor_reads_only_new_keys_among_thousands(validating_env, s3, instance):
    bucket, _ = validating_env
    old_days = [date(2023, 1, 1) + timedelta(days=i) for i in range(1000)]  # up to 2025-09-27
    seed_foreign_backups(s3, bucket, old_days)  # 2000 objects before the cursor
    # A cursor that has seen all of them: the next tick must not read them again.
    cursor = json.dumps({"production": f"production/{old_days[-1].isoformat()}/~"})
    # Recent days (relative to today): the re-examined window below is the last 7 days.
    today = datetime.now(UTC).date()
    new_days = [today - timedelta(days=3), today - timedelta(days=2)]
    new = seed_foreign_backups(s3, bucket, new_days)
    result, _ = sensor_tick(instance, cursor)
    requests = result.run_requests
    assert [r.tags["acci/backup_key"] for r in requests] == new
    assert [r.partition_key for r in requests] == [d.isoformat() for d in new_days]
    assert requests[0].asset_check_keys == [dg.AssetCheckKey(dg.AssetKey("db_backup"), "restores_cleanly")]
    assert json.loads(result.cursor)["production"] == manifest_key_for(new[-1])
    # The work done: only the four keys after the cursor were read, not the 2000 before it.
    scan = scan_new_backups(open_store(f"s3://{bucket}/acci"), "production", json.loads(cursor)["production"])
    assert scan.examined == 4 and [b.key for b in scan.new_backups] == new
    # Next tick: nothing new; the last 7 days are re-examined (late arrivals), so the two backups
    # still without a record are requested again under the same run keys, which Dagster dedupes.
    again, _ = sensor_tick(instance, result.cursor)
    assert again.cursor == result.cursor
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in requests]


def test_sensor_first_tick_looks_back_two_days_only(validating_env, s3, instance):
    bucket, _ = validating_env
    seed_foreign_backups(s3, bucket, [date(2025, 6, 1) + timedelta(days=i) for i in range(300)])
    today = datetime.now(UTC).date()
    recent = seed_foreign_backups(s3, bucket, [today - timedelta(days=1)])
    result, _ = sensor_tick(instance)
    assert [r.tags["acci/backup_key"] for r in result.run_requests] == recent


def test_stray_keys_do_not_stall_the_cursor(validating_env, s3, instance):
    bucket, _ = validating_env
    first = seed_foreign_backups(s3, bucket, [date(2026, 11, 20)])
    s3.put_object(Bucket=bucket, Key="acci/production/notes.txt", Body=b"hand-written")
    result, _ = sensor_tick(instance, json.dumps({"production": "production/2026-11-01/"}))
    assert [r.tags["acci/backup_key"] for r in result.run_requests] == first
    later = seed_foreign_backups(s3, bucket, [date(2026, 11, 21)])
    again, _ = sensor_tick(instance, result.cursor)
    assert [r.tags["acci/backup_key"] for r in again.run_requests] == later


def test_sensor_skips_backups_already_validated(validating_env, s3, instance):
    bucket, _ = validating_env
    keys = seed_signed_backups(s3, bucket, [date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)])
    store = open_store(f"s3://{bucket}/acci")
    read = lambda key: json.loads(store.get_bytes(manifest_key_for(key)))  # noqa: E731
    put_record(store, keys[0], read_manifest=read)
    # A record planted by someone else (unsigned, or not even a record) does not hide a backup.
    put_record(store, keys[1], signed=False, read_manifest=read)
    s3.put_object(Bucket=bucket, Key=f"acci/{validation_key_for(keys[2])}", Body=b"{}")
    result, _ = sensor_tick(instance, json.dumps({"production": "production/2026-11-01/"}))
    assert [r.tags["acci/backup_key"] for r in result.run_requests] == keys[1:]


def test_sensor_run_validates_the_named_backup(validating_env, s3, instance):
    bucket, _ = validating_env
    defs = defs_from_env()
    backup = defs.resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, asset_selection=[dg.AssetKey("db_backup")])
    key = backup.asset_materializations_for_node("db_backup")[0].metadata["object_key"].value
    result = defs.resolve_job_def("validate_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, tags={"acci/backup_key": key})
    evaluation, meta = check_evaluation(result)
    assert evaluation.passed and meta["backup_key"] == key
    assert s3.head_object(Bucket=bucket, Key=f"acci/{validation_key_for(key)}")


def test_retention_keeps_the_newest_validated_backup(validating_env, s3, instance, monkeypatch):
    bucket, _ = validating_env
    for tier in ("DAILY", "WEEKLY", "MONTHLY"):
        monkeypatch.setenv(f"ACCI_RETENTION_{tier}", "0")
    keys = seed_signed_backups(s3, bucket, [date(2026, 11, d) for d in range(1, 8)])
    store = open_store(f"s3://{bucket}/acci")
    read = lambda key: json.loads(store.get_bytes(manifest_key_for(key)))  # noqa: E731
    put_record(store, keys[2], read_manifest=read)
    put_record(store, keys[4], ok=False, read_manifest=read)
    job = defs_from_env().resolve_job_def("backup_retention")
    assert job.execute_in_process(instance=instance).success
    remaining = {k.removeprefix("acci/") for k in all_keys(s3, bucket)}
    assert {k for k in keys if k in remaining} == {keys[2], keys[-1]}
    assert validation_key_for(keys[2]) in remaining and validation_key_for(keys[4]) not in remaining


def test_scratch_cleanup_job_drops_only_old_scratch_databases(validating_env, pg_server, instance):
    pg_server.pg.psql("CREATE DATABASE acci_scratch_20200101t000000_0badc0de OWNER acci_scratch")
    result = defs_from_env().resolve_job_def("scratch_cleanup").execute_in_process(instance=instance)
    assert result.success
    assert pg_server.pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'acci_scratch%'") == "0"


def test_validation_shows_in_definitions(validating_env):
    defs = defs_from_env()
    dg.Definitions.validate_loadable(defs)
    sensor = defs.resolve_sensor_def("backup_validation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.description
    spec = defs.resolve_assets_def("db_backup_validated").specs_by_key[dg.AssetKey("db_backup_validated")]
    assert spec.freshness_policy.fail_window.to_timedelta() == timedelta(hours=26)
    checks = list(defs.resolve_asset_graph().asset_check_keys)
    assert checks == [dg.AssetCheckKey(dg.AssetKey("db_backup"), "restores_cleanly")]


def test_an_unsigned_backup_is_validated_but_flagged_and_never_counted(validating_env, s3, instance, monkeypatch,
                                                                     caplog):
    """A backup written without the key (another tool, or acci_ops before the key was set)."""
    bucket, _ = validating_env
    defs = defs_from_env()
    signed = defs.resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-25", instance=instance)
    signed_key = signed.asset_materializations_for_node("db_backup")[0].metadata["object_key"].value
    monkeypatch.delenv("ACCI_BACKUP_SIGNING_KEY")
    unsigned = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, asset_selection=[dg.AssetKey("db_backup")])
    meta = unsigned.asset_materializations_for_node("db_backup")[0].metadata
    key = meta["object_key"].value
    assert meta["signed"].value is False
    assert "signature" not in json.loads(s3.get_object(Bucket=bucket, Key=f"acci/{manifest_key_for(key)}")["Body"]
                                         .read())
    monkeypatch.setenv("ACCI_BACKUP_SIGNING_KEY", TEST_SIGNING_KEY)
    result = defs_from_env().resolve_job_def("validate_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, tags={"acci/backup_key": key})
    assert result.success
    evaluation, check_meta = check_evaluation(result)
    assert evaluation.passed and check_meta["signed"] is False
    assert check_meta["trust"] == "unsigned (not written by this acci_ops)"
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert f"backup {key} is unsigned (not written by this acci_ops): DR never chooses it by default and " \
           "retention keeps it without ranking it" in warnings
    validated = result.asset_materializations_for_node("db_backup_validated")[0].metadata
    assert validated["validated_backup_key"].value == signed_key  # the unsigned one is not counted


def test_without_a_signing_key_the_validated_asset_says_why(validating_env, instance, monkeypatch):
    monkeypatch.delenv("ACCI_BACKUP_SIGNING_KEY")
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, raise_on_error=False)
    evaluation, _ = check_evaluation(result)
    assert evaluation.passed  # the backup restores; it just cannot be authenticated
    failure = result.failure_data_for_node("db_backup_validated").user_failure_data.description
    assert failure == ("ACCI_BACKUP_SIGNING_KEY is not set: backups cannot be authenticated; retention deletes "
                       "nothing and DR needs an explicit backup; no backup can be marked validated until it is set")
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert warnings.count("ACCI_BACKUP_SIGNING_KEY is not set: backups cannot be authenticated; retention deletes "
                          "nothing and DR needs an explicit backup") == 1
