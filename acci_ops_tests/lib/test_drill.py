"""DR drills and recovery on this machine with the local backend: real PostgreSQL, real Redis,
and a stand-in app whose /health depends on the restored tables and on Redis."""

from __future__ import annotations

import json
import socket
import sys
from datetime import date
from pathlib import Path

import pytest
import redis

from acci_ops.lib.dburl import parse_database_url
from acci_ops.lib.drill import Targets, choose_backup, run_drill, run_recovery, store_procedure_report
from acci_ops.lib.errors import BackupError
from acci_ops.lib.layout import manifest_key_for
from acci_ops.lib.objectstore import open_store
from acci_ops.lib.pgdump import run_backup
from acci_ops.lib.platform import LocalPlatform
from acci_ops.lib.scratch import list_scratch_databases
from acci_ops.lib.validation import ValidationReport, store_report, validate_backup, validation_key_for

ROOT = Path(__file__).resolve().parents[2]
APP = [sys.executable, "-m", "acci_ops_tests.fakeapp"]


def make_backup(url: str, store, day: date = date(2026, 11, 26)) -> str:
    return run_backup(environment="production", target=parse_database_url(url), store=store, partition=day,
                      log=lambda line: None).manifest.object_key


@pytest.fixture
def store(bucket):
    return open_store(f"s3://{bucket}/acci")


@pytest.fixture
def validated_backup(store, db_url, scratch_url):
    key = make_backup(db_url, store)
    report = validate_backup(store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                             environment="production", log=lambda line: None)
    assert report.ok, report.failure
    store_report(store, report)
    return key


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def drill(store, key, scratch_url, redis_server, **kwargs):
    lines: list[str] = []
    platform = LocalPlatform(APP, cwd=str(ROOT))
    report = run_drill(environment="production", store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                       platform=platform, drill_redis_url=redis_server.url(1), production_redis_url=redis_server.url(0),
                       required_metrics=kwargs.pop("required_metrics", ["acci_up", "acci_users"]),
                       log=lines.append, **kwargs)
    return report, lines


def test_passing_drill_measures_rto_rpo_and_tears_down(store, validated_backup, scratch_url, redis_server):
    prod_cache, drill_cache = redis.Redis.from_url(redis_server.url(0)), redis.Redis.from_url(redis_server.url(1))
    prod_cache.set("production-session", "keep me")
    drill_cache.set("stale", "flush me")
    key = choose_backup(store, "production", None)
    assert key == validated_backup
    report, lines = drill(store, key, scratch_url, redis_server)
    assert report.ok, report.failure
    assert [(s.name, s.status) for s in report.steps] == [
        ("database", "passed"), ("infrastructure", "passed"), ("restore", "passed"), ("cache", "passed"),
        ("verify", "passed"), ("teardown", "passed")]
    assert 0 < report.rto_seconds < 120 and 0 <= report.rpo_seconds < 3600
    assert report.health_status == 200 and '"ok"' in report.health_body
    assert "acci_users 2000.0" in report.metrics_sample
    # Same server as production: the drill flushed only its own database.
    assert report.steps[3].detail.startswith("FLUSHDB")
    assert prod_cache.get("production-session") == b"keep me" and drill_cache.get("stale") is None
    assert list_scratch_databases(parse_database_url(scratch_url)) == []
    base_url = report.steps[1].detail.split(" at ")[-1]
    assert port_is_closed(base_url)
    assert "## Drill of `production`: PASSED" in report.markdown()
    uri = store_procedure_report(store, report)
    assert uri.startswith(f"{store.url}/drills/production/") and json.loads(store.get_bytes(
        uri.removeprefix(store.url + "/")))["ok"] is True


def test_drill_of_a_backup_missing_a_table_fails_and_still_tears_down(pg_server, store, scratch_url, redis_server):
    pg_server.pg.psql("CREATE DATABASE acci_partial")
    pg_server.pg.psql("CREATE TABLE tenants (id int); CREATE TABLE users (id int)", "acci_partial")
    key = make_backup(pg_server.pg.url("acci_partial"), store)
    report, _ = drill(store, key, scratch_url, redis_server, health_deadline=3)
    assert not report.ok
    assert report.failure.startswith("verify: http://127.0.0.1:")
    assert "did not answer 2xx within 3 s" in report.failure and "missing tables: sessions" in report.failure
    assert report.health_status is None and report.rto_seconds is None
    assert report.steps[-1].name == "teardown" and report.steps[-1].status == "passed"
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_drill_of_a_corrupt_backup_fails_at_restore(store, validated_backup, scratch_url, redis_server, s3, bucket):
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"acci/{validated_backup}")["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=f"acci/{validated_backup}", Body=bytes(body))
    report, _ = drill(store, validated_backup, scratch_url, redis_server)
    assert not report.ok
    assert report.failure.startswith(f"restore: {store.uri_for(validated_backup)}: object sha256 ")
    assert report.failure.endswith("(corrupted or replaced); not restoring")
    assert [s.status for s in report.steps] == ["passed", "passed", "failed", "skipped", "skipped", "passed"]
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_missed_targets_fail_the_drill(store, validated_backup, scratch_url, redis_server):
    report, _ = drill(store, validated_backup, scratch_url, redis_server, targets=Targets(rto_seconds=0.001))
    assert not report.ok and report.failure.startswith("targets: RTO ")
    assert "exceeds the 0 min target" in report.failure


def test_drill_refuses_production_redis(store, validated_backup, scratch_url, redis_server):
    report = run_drill(environment="production", store=store, backup_key=validated_backup,
                       scratch=parse_database_url(scratch_url), platform=LocalPlatform(APP, cwd=str(ROOT)),
                       drill_redis_url=redis_server.url(0), production_redis_url=redis_server.url(0),
                       log=lambda line: None)
    assert not report.ok
    assert report.failure == "preflight: the drill's Redis URL is production's Redis; give the drill its own database"
    assert [s.name for s in report.steps] == ["preflight", "teardown"]


def test_choose_backup_guards(store, db_url, scratch_url):
    with pytest.raises(BackupError, match="no validated production backup exists"):
        choose_backup(store, "production", None)
    key = make_backup(db_url, store)
    with pytest.raises(BackupError, match="has not been validated"):
        choose_backup(store, "production", key)
    failed = ValidationReport("production", key, "", ok=False, failure="contents: row counts differ")
    store.put_bytes(validation_key_for(key), failed.to_json())
    with pytest.raises(BackupError, match=r"failed validation \(contents: row counts differ\); set allow_unvalidated"):
        choose_backup(store, "production", key)
    assert choose_backup(store, "production", key, allow_unvalidated=True) == key
    with pytest.raises(BackupError, match="does not exist"):
        choose_backup(store, "production", "production/2026-11-26/nope.pgdump.zst")
    assert store.exists(manifest_key_for(key))


def test_recovery_restores_into_the_environment_database(pg_server, store, validated_backup, redis_server):
    pg_server.pg.psql("CREATE DATABASE acci_recovered")
    pg_server.pg.psql("CREATE TABLE users (id int); INSERT INTO users VALUES (1)", "acci_recovered")  # stale data
    cache = redis.Redis.from_url(redis_server.url(2))
    cache.set("stale", "1")
    platform = LocalPlatform(APP, cwd=str(ROOT))
    try:
        report = run_recovery(environment="production", store=store, backup_key=validated_backup,
                              database=parse_database_url(pg_server.pg.url("acci_recovered")), platform=platform,
                              redis_url=redis_server.url(2), app_url=None, required_metrics=["acci_up"],
                              log=lambda line: None)
        assert report.ok, report.failure
        assert [s.name for s in report.steps] == ["infrastructure", "restore", "cache", "verify"]
        assert pg_server.pg.psql("SELECT count(*) FROM users", "acci_recovered") == "2000"
        assert cache.dbsize() == 0
        assert report.rto_seconds > 0
    finally:
        platform.down(lambda line: None)
