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

from acci_ops.dev.localpg import load_sample_data
from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.backup.inventory import read_manifest
from acci_ops.lib.backup.layout import manifest_key_for
from acci_ops.lib.backup.records import ValidationReport, store_report
from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.core.errors import BackupError
from acci_ops.lib.dr.procedures import (
    DrillRequest,
    RecoveryRequest,
    Targets,
    choose_backup,
    refuse_foreign_backup,
    run_drill,
    run_recovery,
    store_procedure_report,
)
from acci_ops.lib.platform.backends import LocalPlatform
from acci_ops.lib.postgres.scratch import list_scratch_databases
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.validate import validate_backup
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY

ROOT = Path(__file__).resolve().parents[2]
KEYRING = Keyring.from_secret(TEST_SIGNING_KEY)  # backups and records signed as acci_ops signs them
APP = [sys.executable, "-m", "acci_ops.dev.fakeapp"]


def make_backup(url: str, store, day: date = date(2026, 11, 26), environment: str = "production") -> str:
    return run_backup(environment=environment, target=parse_database_url(url), store=store, partition=day,
                      log=lambda line: None, keyring=KEYRING).manifest.object_key


@pytest.fixture
def store(bucket):
    return open_store(f"s3://{bucket}/acci")


@pytest.fixture
def validated_backup(store, db_url, scratch_url):
    key = make_backup(db_url, store)
    report = validate_backup(store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                             environment="production", log=lambda line: None)
    assert report.ok, report.failure
    store_report(store, report, KEYRING)
    return key


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def drill(store, key, scratch_url, redis_server, **kwargs):
    lines: list[str] = []
    platform = LocalPlatform(APP, cwd=str(ROOT))
    request = DrillRequest(environment="production", backup_key=key, scratch=parse_database_url(scratch_url),
                           database=kwargs.pop("database", "acci"), drill_redis_url=redis_server.url(1),
                           production_redis_url=redis_server.url(0),
                           required_metrics=kwargs.pop("required_metrics", ["acci_up", "acci_users"]), **kwargs)
    report = run_drill(request, store=store, platform=platform, log=lines.append)
    return report, lines


def test_passing_drill_measures_rto_rpo_and_tears_down(store, validated_backup, scratch_url, redis_server):
    prod_cache, drill_cache = redis.Redis.from_url(redis_server.url(0)), redis.Redis.from_url(redis_server.url(1))
    prod_cache.set("production-session", "keep me")
    drill_cache.set("stale", "flush me")
    report, lines = drill(store, validated_backup, scratch_url, redis_server)
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
    report, _ = drill(store, key, scratch_url, redis_server, health_deadline=3, database="acci_partial")
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
    same_db = redis_server.url(0).replace("127.0.0.1", "localhost")
    request = DrillRequest(environment="production", backup_key=validated_backup,
                           scratch=parse_database_url(scratch_url), database="acci", drill_redis_url=same_db,
                           production_redis_url=redis_server.url(0))
    report = run_drill(request, store=store, platform=LocalPlatform(APP, cwd=str(ROOT)), log=lambda line: None)
    assert not report.ok
    assert report.failure == (f"preflight: the drill's Redis redis localhost:{redis_server.port}/0 is production's "
                              "Redis (same server, database 0); give the drill its own database or server")
    assert [s.name for s in report.steps] == ["preflight", "teardown"]


def test_choose_backup_guards(store, db_url, scratch_url):
    with pytest.raises(BackupError, match="no signed, validated production backup exists"):
        choose_backup(store, "production", None, keyring=KEYRING)
    key = make_backup(db_url, store)
    with pytest.raises(BackupError, match="has not been validated"):
        choose_backup(store, "production", key, keyring=KEYRING)
    failed = ValidationReport("production", key, "", ok=False, failure="contents: row counts differ",
                              backup_sha256=read_manifest(store, key).sha256)
    store_report(store, failed, KEYRING)
    with pytest.raises(BackupError, match=r"failed validation \(contents: row counts differ\); set allow_unvalidated"):
        choose_backup(store, "production", key, keyring=KEYRING)
    assert choose_backup(store, "production", key, allow_unvalidated=True) == key
    with pytest.raises(BackupError, match="does not exist"):
        choose_backup(store, "production", "production/2026-11-26/nope.pgdump.zst")
    assert store.exists(manifest_key_for(key))


def test_recovery_restores_next_to_the_live_database_and_keeps_the_old_one(pg_server, store, live_db, own_redis):
    key = make_backup(pg_server.pg.url(live_db), store)
    pg_server.pg.psql("DROP TABLE sessions CASCADE; INSERT INTO tenants (name) VALUES ('stale')", live_db)
    cache = redis.Redis.from_url(own_redis.url(2))
    cache.set("stale", "1")
    platform = LocalPlatform(APP, cwd=str(ROOT))
    try:
        request = RecoveryRequest(environment="production", backup_key=key,
                                  database=parse_database_url(pg_server.pg.url(live_db)),
                                  redis_url=own_redis.url(2), app_url=None, required_metrics=["acci_up"])
        report = run_recovery(request, store=store, platform=platform, log=lambda line: None)
        assert report.ok, report.failure
        assert [s.name for s in report.steps] == ["infrastructure", "restore", "switch", "cache", "verify"]
    finally:
        platform.down(lambda line: None)
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", live_db) == "5000"
    assert pg_server.pg.psql("SELECT count(*) FROM tenants WHERE name = 'stale'", live_db) == "0"
    assert "verified against the manifest" in report.steps[1].detail
    # The previous database is kept, renamed, for forensics; the report names it.
    assert report.kept_database.startswith("acci_live_before_dr_")
    assert pg_server.pg.psql("SELECT count(*) FROM tenants WHERE name = 'stale'", report.kept_database) == "1"
    assert pg_server.pg.psql("SELECT to_regclass('sessions') IS NULL", report.kept_database) == "t"
    assert report.kept_database in report.steps[2].detail and report.kept_database in report.markdown()
    assert databases(pg_server, "acci_live") == sorted(["acci_live", report.kept_database])
    assert cache.dbsize() == 0
    assert report.rto_seconds > 0


def drop_databases(pg_server, prefix: str) -> None:
    for name in databases(pg_server, prefix):
        pg_server.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def databases(pg_server, prefix: str) -> list[str]:
    out = pg_server.pg.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%' ORDER BY 1")
    return out.split() if out else []


def shape(pg_server, dbname: str) -> tuple[str, str, str]:
    """Constraints, tables and rows of one table: what a half-dropped database loses first."""
    return (pg_server.pg.psql("SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
                              "WHERE n.nspname = 'public'", dbname),
            pg_server.pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", dbname),
            pg_server.pg.psql("SELECT count(*) FROM users", dbname))


BREAKS_RESTORE = (
    # pg_restore runs with an empty search_path: a CHECK whose function names a table unqualified fails
    # while the data is loaded, i.e. midway, after every --clean DROP has already happened.
    "CREATE TABLE limits (n int); INSERT INTO limits VALUES (10); "
    "CREATE FUNCTION under_limit(v int) RETURNS bool LANGUAGE sql AS 'SELECT v < (SELECT n FROM limits)'; "
    "CREATE TABLE items (v int CHECK (under_limit(v))); INSERT INTO items VALUES (1)"
)


@pytest.fixture
def live_db(pg_server):
    """A database playing production for the switch tests (sample data plus a marker row)."""
    drop_databases(pg_server, "acci_live")
    load_sample_data(pg_server.pg, "acci_live")
    yield "acci_live"
    drop_databases(pg_server, "acci_live")


def test_failed_recovery_leaves_production_as_it_was_and_can_be_repeated(pg_server, store, live_db, own_redis):
    pg_server.pg.psql(BREAKS_RESTORE, live_db)
    broken_key = make_backup(pg_server.pg.url(live_db), store, day=date(2026, 11, 25))
    pg_server.pg.psql("INSERT INTO tenants (name) VALUES ('written after the backup')", live_db)
    before = shape(pg_server, live_db)
    target = parse_database_url(pg_server.pg.url(live_db))
    request = RecoveryRequest(environment="production", backup_key=broken_key, database=target,
                              redis_url=own_redis.url(0), app_url="http://127.0.0.1:9")
    report = run_recovery(request, store=store, platform=None, log=lambda line: None)
    assert not report.ok
    # Restored into the new database beside the live one, where it stopped at the first error.
    assert report.failure.startswith(f"restore: pg_restore into postgres@127.0.0.1:{pg_server.pg.port}/acci_live_dr_")
    assert "stopped at the first error" in report.failure
    assert [(s.name, s.status) for s in report.steps] == [
        ("infrastructure", "skipped"), ("restore", "failed"), ("switch", "skipped"), ("cache", "skipped"),
        ("verify", "skipped")]
    assert shape(pg_server, live_db) == before
    assert pg_server.pg.psql("SELECT count(*) FROM tenants WHERE name = 'written after the backup'", live_db) == "1"
    assert databases(pg_server, "acci_live") == ["acci_live"]  # the half-restored copy is gone
    assert report.kept_database == ""

    # Repeating DR with a good backup works after the failure.
    pg_server.pg.psql("DROP TABLE items; DROP FUNCTION under_limit(int); DROP TABLE limits", live_db)
    good_key = make_backup(pg_server.pg.url(live_db), store, day=date(2026, 11, 26))
    pg_server.pg.psql("DELETE FROM sessions", live_db)  # the disaster
    platform = LocalPlatform(APP, cwd=str(ROOT))
    try:
        request = RecoveryRequest(environment="production", backup_key=good_key, database=target,
                                  redis_url=own_redis.url(0), app_url=None, required_metrics=["acci_up"])
        again = run_recovery(request, store=store, platform=platform, log=lambda line: None)
        assert again.ok, again.failure
    finally:
        platform.down(lambda line: None)
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", live_db) == "5000"
    [kept] = [d for d in databases(pg_server, "acci_live_before_dr_")]
    assert again.kept_database == kept
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", kept) == "0"
    assert databases(pg_server, "acci_live") == sorted(["acci_live", kept])


def test_recovery_refuses_a_role_that_cannot_switch_before_touching_anything(pg_server, store, live_db, own_redis):
    key = make_backup(pg_server.pg.url(live_db), store)
    pg_server.pg.psql("DELETE FROM sessions", live_db)
    # acci may read everything but lacks CREATEDB and does not own acci_live.
    target = parse_database_url(pg_server.url(live_db))
    request = RecoveryRequest(environment="production", backup_key=key, database=target,
                              redis_url=own_redis.url(0), app_url=None)
    report = run_recovery(request, store=store, platform=LocalPlatform(["/no/such/app"]), log=lambda line: None)
    assert not report.ok
    assert report.failure == (
        "preflight: role acci cannot restore acci_live next to the live database and switch: it lacks CREATEDB "
        "and does not own acci_live (grant CREATEDB and make it the owner, or use a superuser); nothing was touched")
    assert [s.name for s in report.steps][0] == "preflight"
    assert all(s.status == "skipped" for s in report.steps[1:])
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", live_db) == "0"
    assert databases(pg_server, "acci_live") == ["acci_live"]


@pytest.fixture
def staging_db(pg_server):
    pg_server.pg.psql("DROP DATABASE IF EXISTS acci_staging WITH (FORCE)")
    pg_server.pg.psql("CREATE DATABASE acci_staging")
    pg_server.pg.psql("CREATE TABLE tenants (id int); INSERT INTO tenants VALUES (1), (2)", "acci_staging")
    yield "acci_staging"
    pg_server.pg.psql("DROP DATABASE IF EXISTS acci_staging WITH (FORCE)")


def test_refuse_foreign_backup(pg_server, store, db_url, staging_db):
    prod_key = make_backup(db_url, store)
    staging_key = make_backup(pg_server.pg.url(staging_db), store, day=date(2026, 11, 20), environment="staging")
    assert staging_key.startswith("staging/2026-11-20/acci_staging-")
    into = "refusing to restore it into production/acci; nothing was touched"
    manifest = refuse_foreign_backup(store, prod_key, environment="production", database="acci")
    assert manifest.environment == "production" and manifest.database == "acci"
    with pytest.raises(BackupError) as caught:
        refuse_foreign_backup(store, staging_key, environment="production", database="acci")
    assert str(caught.value) == f"backup {staging_key} belongs to staging/acci_staging; {into}"
    sneaky = "production/../" + staging_key
    with pytest.raises(BackupError) as caught:
        refuse_foreign_backup(store, sneaky, environment="production", database="acci")
    assert str(caught.value) == (f"backup {sneaky} is not a production backup (production/<day>/<database>-<time>"
                                 f".pgdump.zst); {into}")
    # Staging's dump and manifest copied under a production key: the manifest still says staging.
    disguised = "production/2026-11-20/" + staging_key.split("/")[-1]
    store.put_bytes(disguised, store.get_bytes(staging_key))
    store.put_bytes(manifest_key_for(disguised), store.get_bytes(manifest_key_for(staging_key)))
    with pytest.raises(BackupError) as caught:
        refuse_foreign_backup(store, disguised, environment="production", database="acci")
    assert str(caught.value) == f"backup {disguised} belongs to staging/acci_staging; {into}"
    # Production's own backup, but of another database than the environment's.
    with pytest.raises(BackupError) as caught:
        refuse_foreign_backup(store, prod_key, environment="production", database="acci_other")
    assert str(caught.value) == (f"backup {prod_key} belongs to production/acci; refusing to restore it into "
                                 "production/acci_other; nothing was touched")


def test_drill_refuses_another_environments_backup(pg_server, store, scratch_url, redis_server, staging_db):
    staging_key = make_backup(pg_server.pg.url(staging_db), store, day=date(2026, 11, 20), environment="staging")
    report, _ = drill(store, staging_key, scratch_url, redis_server)
    assert not report.ok
    assert report.failure == (f"preflight: backup {staging_key} belongs to staging/acci_staging; refusing to "
                              "restore it into production/acci; nothing was touched")
    assert [s.name for s in report.steps] == ["preflight", "teardown"]
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_drill_refuses_when_production_redis_is_unknown(store, validated_backup, scratch_url, redis_server):
    drill_cache = redis.Redis.from_url(redis_server.url(1))
    drill_cache.set("stale", "1")
    request = DrillRequest(environment="production", backup_key=validated_backup,
                           scratch=parse_database_url(scratch_url), database="acci",
                           drill_redis_url=redis_server.url(1), production_redis_url=None)
    report = run_drill(request, store=store, platform=LocalPlatform(APP, cwd=str(ROOT)), log=lambda line: None)
    assert not report.ok
    assert report.failure.startswith("preflight: production's Redis is unknown: set ACCI_REDIS_URL")
    assert [s.name for s in report.steps] == ["preflight", "teardown"]
    assert drill_cache.get("stale") == b"1"
    drill_cache.delete("stale")


def test_requests_show_no_credentials():
    """Parameter objects may be logged or printed: their repr carries no password or Redis URL."""
    secret = "s3cr3t-Pa55"
    scratch = parse_database_url(f"postgresql://scratch:{secret}@db:5432/postgres")
    drill_request = DrillRequest(environment="production", backup_key="production/k", database="acci", scratch=scratch,
                                 drill_redis_url=f"redis://:{secret}@cache:6379/1",
                                 production_redis_url=f"redis://:{secret}@cache:6379/0",
                                 required_metrics=["acci_up"])
    recovery_request = RecoveryRequest(environment="production", backup_key="production/k",
                                       database=parse_database_url(f"postgresql://acci:{secret}@db:5432/acci"),
                                       redis_url=f"redis://:{secret}@cache:6379/0")
    for request in (drill_request, recovery_request):
        assert secret not in repr(request) and secret not in str(request)
        assert "production/k" in repr(request)
    assert drill_request.required_metrics == ("acci_up",)
