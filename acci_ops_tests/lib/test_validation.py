"""Backup validation against real servers: a restore into a scratch database, and every way a
backup can be bad failing with one line, leaving no scratch database behind."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.backup.layout import manifest_key_for
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.postgres.scratch import (
    check_scratch_name,
    drop_scratch_database,
    drop_stale_scratch_databases,
    list_scratch_databases,
)
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.validate import ValidationSettings, validate_backup


@pytest.fixture
def backup(db_url, bucket):
    store = open_store(f"s3://{bucket}/acci")
    result = run_backup(environment="production", target=parse_database_url(db_url), store=store,
                        partition=date(2026, 11, 26), log=lambda line: None)
    return store, result.manifest.object_key


def validate(store, key, scratch_url, source_url=None, **settings):
    lines: list[str] = []
    report = validate_backup(store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                             source=parse_database_url(source_url) if source_url else None,
                             environment="production", settings=ValidationSettings(**settings), log=lines.append)
    return report, lines


def assert_failed_cleanly(report, scratch_url, step: str, tmp_path: Path | None = None) -> str:
    assert not report.ok
    assert report.failure.startswith(f"{step}: ")
    assert "\n" not in report.failure
    assert list_scratch_databases(parse_database_url(scratch_url)) == []
    assert report.step("cleanup").status == "passed"
    if tmp_path is not None:
        assert list(tmp_path.iterdir()) == []
    return report.failure.removeprefix(f"{step}: ")


def test_parallel_validation_restores_and_matches(backup, scratch_url, tmp_path):
    store, key = backup
    work = tmp_path / "work"
    report, lines = validate(store, key, scratch_url, mode="parallel", work_dir=str(work))
    assert report.ok, report.failure
    assert report.mode == "parallel"
    assert [(s.name, s.status) for s in report.steps] == [
        ("manifest", "passed"), ("toc", "passed"), ("restore", "passed"), ("contents", "passed"),
        ("amcheck", "skipped"), ("assertions", "skipped"), ("cleanup", "passed")]
    assert report.tables == 3 and report.total_rows == 7020
    assert report.restore_seconds > 0 and report.validation_seconds >= report.restore_seconds
    assert report.scratch_database.startswith("acci_scratch_")
    assert list_scratch_databases(parse_database_url(scratch_url)) == []
    assert list(work.iterdir()) == []
    assert "-j 2" in report.step("restore").detail


def test_streaming_validation(backup, scratch_url):
    store, key = backup
    report, _ = validate(store, key, scratch_url, mode="stream")
    assert report.ok, report.failure
    assert report.mode == "stream" and "stdin" in report.step("restore").detail


def test_auto_mode_streams_when_the_file_would_not_fit(backup, scratch_url):
    store, key = backup
    report, _ = validate(store, key, scratch_url, mode="auto", reserve_bytes=10**18)
    assert report.ok and report.mode == "stream"


def test_amcheck_runs_when_the_scratch_role_can_install_it(backup, pg_server):
    store, key = backup
    report, _ = validate(store, key, pg_server.admin_url, amcheck="required", scratch_allow_superuser=True)
    assert report.ok, report.failure
    assert report.step("amcheck").status == "passed"


def test_sql_assertions(backup, scratch_url, tmp_path):
    store, key = backup
    good = tmp_path / "good.yaml"
    good.write_text(
        "- name: every tenant has users\n"
        "  sql: SELECT bool_and(tenant_user_count(id) > 0) FROM tenants\n"
        "- name: sessions were written before the backup\n"
        "  sql: SELECT count(*) > 0 FROM sessions WHERE expires_at < %(snapshot_at)s + interval '1 day'\n"
    )
    report, _ = validate(store, key, scratch_url, assertions_file=str(good))
    assert report.ok, report.failure
    assert report.step("assertions").detail == "2 assertions true"

    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a million users\n  sql: SELECT count(*) >= 1000000 FROM users\n"
                   "- name: broken\n  sql: SELECT nope FROM users\n")
    report, _ = validate(store, key, scratch_url, assertions_file=str(bad))
    cause = assert_failed_cleanly(report, scratch_url, "assertions")
    assert cause.startswith("assertions failed: 'a million users' returned [(False,)]; 'broken' raised column")


def test_truncated_object(backup, scratch_url, s3, bucket, tmp_path):
    store, key = backup
    body = s3.get_object(Bucket=bucket, Key=f"acci/{key}")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"acci/{key}", Body=body[: len(body) // 2])
    report, _ = validate(store, key, scratch_url, work_dir=str(tmp_path))
    cause = assert_failed_cleanly(report, scratch_url, "manifest", tmp_path)
    assert cause == f"object is {len(body) // 2} bytes but the manifest says {len(body)} (truncated or replaced)"
    assert [s.status for s in report.steps][1:6] == ["skipped"] * 5


def test_flipped_byte(backup, scratch_url, s3, bucket, tmp_path):
    store, key = backup
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"acci/{key}")["Body"].read())
    body[len(body) // 3] ^= 0x01
    s3.put_object(Bucket=bucket, Key=f"acci/{key}", Body=bytes(body))
    report, _ = validate(store, key, scratch_url, work_dir=str(tmp_path))
    cause = assert_failed_cleanly(report, scratch_url, "manifest", tmp_path)
    assert "does not match the manifest's" in cause and "(corrupted or replaced)" in cause


def test_manifest_that_does_not_describe_the_object(backup, scratch_url, s3, bucket):
    store, key = backup
    mkey = f"acci/{manifest_key_for(key)}"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest["row_counts"]["public.users"] = 2001
    manifest["objects"]["views"].append("public.gone_view")
    s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
    report, _ = validate(store, key, scratch_url)
    cause = assert_failed_cleanly(report, scratch_url, "contents")
    assert cause == "missing views: public.gone_view; row counts differ: public.users has 2000 rows, manifest 2001"


def test_missing_manifest(backup, scratch_url, s3, bucket):
    store, key = backup
    s3.delete_object(Bucket=bucket, Key=f"acci/{manifest_key_for(key)}")
    report, _ = validate(store, key, scratch_url)
    cause = assert_failed_cleanly(report, scratch_url, "manifest")
    assert cause == f"manifest s3://{bucket}/acci/{key}.manifest.json is missing; the backup never completed"


def test_archive_from_another_database(backup, pg_server, scratch_url, s3, bucket):
    """Another database's archive with a manifest rewritten to match its bytes: the TOC tells."""
    store, key = backup
    pg_server.pg.psql("CREATE DATABASE acci_other")
    pg_server.pg.psql("CREATE TABLE t AS SELECT 1 AS x", "acci_other")
    other = run_backup(environment="production", target=parse_database_url(pg_server.pg.url("acci_other")),
                       store=store, partition=date(2026, 11, 25), log=lambda line: None)
    body = s3.get_object(Bucket=bucket, Key=f"acci/{other.manifest.object_key}")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"acci/{key}", Body=body)
    mkey = f"acci/{manifest_key_for(key)}"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest.update(sha256=other.manifest.sha256, stored_bytes=other.manifest.stored_bytes)
    s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())
    report, _ = validate(store, key, scratch_url)
    cause = assert_failed_cleanly(report, scratch_url, "toc")
    assert cause == "the archive is a dump of database 'acci_other', but the manifest is for 'acci'"


def test_scratch_server_down(backup, scratch_url):
    store, key = backup
    down = f"postgresql://acci_scratch:x@127.0.0.1:{free_port()}/postgres"
    report, _ = validate(store, key, down)
    assert not report.ok
    assert report.failure.startswith("restore: scratch server is unreachable: acci_scratch@127.0.0.1:")
    assert "Connection refused" in report.failure
    assert report.scratch_database == ""


def test_scratch_role_without_createdb(backup, pg_server, scratch_url):
    store, key = backup
    report, _ = validate(store, key, pg_server.pg.url("postgres", "acci_nocreate", "nocreate-pw"))
    cause = assert_failed_cleanly(report, scratch_url, "restore")
    port = pg_server.pg.port
    assert cause == (f"role acci_nocreate on scratch server 127.0.0.1:{port} lacks CREATEDB; "
                     "grant it (ALTER ROLE ... CREATEDB)")


def test_disk_too_small_for_a_parallel_restore(backup, scratch_url, tmp_path):
    store, key = backup
    report, _ = validate(store, key, scratch_url, mode="parallel", work_dir=str(tmp_path), reserve_bytes=10**18)
    cause = assert_failed_cleanly(report, scratch_url, "manifest", tmp_path)
    assert cause.startswith(f"not enough free disk in {tmp_path} for a parallel restore: need ")
    assert cause.endswith("MB free (or set the mode to stream)")


def test_refuses_to_use_the_backed_up_database_as_scratch(backup, db_url, scratch_url):
    store, key = backup
    same = db_url.replace("127.0.0.1", "localhost")
    report, _ = validate(store, key, same, source_url=db_url)
    cause = assert_failed_cleanly(report, scratch_url, "manifest")
    assert cause.startswith("scratch database URL points at the backed-up database acci@127.0.0.1:")


def test_scratch_names_that_are_not_ours_are_refused(scratch_url):
    with pytest.raises(ConfigError, match="refusing to touch database 'acci'"):
        drop_scratch_database(parse_database_url(scratch_url), "acci")
    with pytest.raises(ConfigError):
        check_scratch_name("acci_scratch_manual_copy")


def test_stale_scratch_databases_are_dropped(pg_server, scratch_url):
    scratch = parse_database_url(scratch_url)
    old, fresh = "acci_scratch_20200101t000000_deadbeef", "acci_scratch_20991231t000000_cafef00d"
    for name in (old, fresh, "acci_scratch_keepme"):
        pg_server.pg.psql(f"CREATE DATABASE {name} OWNER acci_scratch")
    try:
        dropped = drop_stale_scratch_databases(scratch, timedelta(days=1), now=datetime(2026, 11, 27, tzinfo=UTC))
        assert dropped == [old]
        assert list_scratch_databases(scratch) == [fresh]
        assert pg_server.pg.psql("SELECT 1 FROM pg_database WHERE datname = 'acci_scratch_keepme'") == "1"
    finally:
        for name in (fresh, "acci_scratch_keepme"):
            pg_server.pg.psql(f"DROP DATABASE IF EXISTS {name}")


def _rewrite_manifest(s3, bucket, key, **changes):
    mkey = f"acci/{manifest_key_for(key)}"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=mkey)["Body"].read())
    manifest.update(changes)
    manifest.pop("signature", None)
    s3.put_object(Bucket=bucket, Key=mkey, Body=json.dumps(manifest).encode())


def test_negative_dump_bytes_is_refused_before_anything_is_read(backup, scratch_url, s3, bucket, tmp_path):
    store, key = backup
    _rewrite_manifest(s3, bucket, key, dump_bytes=-1)
    report, _ = validate(store, key, scratch_url, mode="parallel", work_dir=str(tmp_path))
    cause = assert_failed_cleanly(report, scratch_url, "manifest", tmp_path)
    assert cause.startswith(f"s3://{bucket}/acci/{key}.manifest.json: dump_bytes must be a whole number from 0 to")


@pytest.mark.parametrize("mode", ["parallel", "stream"])
def test_decompression_stops_at_the_manifests_dump_bytes(backup, scratch_url, s3, bucket, tmp_path, mode):
    """A manifest understating dump_bytes: the decompressed output is capped, not written to disk unbounded."""
    store, key = backup
    _rewrite_manifest(s3, bucket, key, dump_bytes=1000)
    report, _ = validate(store, key, scratch_url, mode=mode, work_dir=str(tmp_path))
    step = "manifest" if mode == "parallel" else "toc"
    cause = assert_failed_cleanly(report, scratch_url, step, tmp_path)
    assert cause == "decompressed more than the manifest's 1000 bytes; stopped (the manifest does not describe it)"


def test_fetch_archive_caps_output_and_removes_the_file(backup, tmp_path):
    from acci_ops.lib.backup.restore import fetch_archive
    from acci_ops.lib.core.errors import BackupError

    store, key = backup
    with pytest.raises(BackupError, match=r"^decompressed more than the manifest's 4096 bytes; stopped"):
        fetch_archive(store, key, to_dir=str(tmp_path), max_output=4096)
    assert list(tmp_path.iterdir()) == []
