"""DR drills and on-call recovery as Dagster runs them, end to end with the local backend:
real PostgreSQL, real Redis, S3 over HTTP, and the stand-in app (acci_ops/dev/fakeapp.py).

Recovery FLUSHALLs production's Redis, so these tests give it a redis-server of their own; the apps
a recovery starts (and never tears down) are stopped by the pid they wrote, never by name."""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import quote

import dagster as dg
import pytest
import redis
import yaml

from acci_ops.dev.servers import start_redis
from acci_ops.lib.backup.records import store_report
from acci_ops.lib.postgres.scratch import list_scratch_databases
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.validate import validate_backup
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.dr import (
    DR_PASSWORD,
    SIGNING_KEY,
    app_command,
    databases,
    dr_url,
    drill_events,
    drop_databases,
    nightly,
    own_database,
    shape,
)
from acci_ops_tests.fixtures.s3 import all_keys
from acci_ops_tests.fixtures.webhook import Webhook


def test_drill_job_reports_rto_and_rpo(dr_env, instance, s3, scratch_url):
    key = nightly(instance)
    result = defs_from_env().resolve_job_def("dr_drill").execute_in_process(instance=instance)
    assert result.success
    [materialization] = drill_events(result)
    assert materialization.asset_key == dg.AssetKey("dr_drill")
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert meta["passed"] is True and meta["backup_key"] == key
    assert meta["rto_seconds"] > 0 and 0 <= meta["rpo_hours"] < 1
    assert "## Drill of `production`: PASSED" in meta["report"] and "| teardown | passed |" in meta["report"]
    assert meta["health_status"] == "HTTP 200"  # text: a status code is not a trend to plot
    assert "rto_minutes" not in meta and isinstance(meta["rto_seconds"], float)
    reports = [k for k in all_keys(s3, dr_env) if k.startswith("acci/drills/production/")]
    assert len(reports) == 1
    stored = json.loads(s3.get_object(Bucket=dr_env, Key=reports[0])["Body"].read())
    assert stored["ok"] and stored["rto_seconds"] == meta["rto_seconds"]
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_drill_of_a_corrupt_backup_fails_but_records_and_tears_down(dr_env, instance, s3, scratch_url):
    key = nightly(instance)
    body = bytearray(s3.get_object(Bucket=dr_env, Key=f"acci/{key}")["Body"].read())
    body[-10] ^= 0xFF
    s3.put_object(Bucket=dr_env, Key=f"acci/{key}", Body=bytes(body))
    config = {"ops": {"run_dr_drill": {"config": {"backup_key": key}}}}
    result = defs_from_env().resolve_job_def("dr_drill").execute_in_process(
        instance=instance, run_config=config, raise_on_error=False)
    assert not result.success
    [materialization] = drill_events(result)
    assert materialization.metadata["passed"].value is False
    assert "does not match the manifest's" in materialization.metadata["failure"].value
    assert "| teardown | passed |" in materialization.metadata["report"].value
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def recover(instance, **config):
    run_config = {"ops": {"recover_environment": {"config": config}}}
    return defs_from_env().resolve_job_def("disaster_recovery").execute_in_process(
        instance=instance, run_config=run_config, raise_on_error=False)


def test_recovery_refuses_without_typed_confirmation(dr_env, instance, pg_server, prod_db, monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("ACCI_ALERT_WEBHOOK_URL", hook.url)
    try:
        nightly(instance)
        pg_server.pg.psql("DELETE FROM sessions", prod_db)
        for confirm in ("prod", "Production", "production "):  # '' never gets here: test_dr_launchpad
            result = recover(instance, environment="production", confirm=confirm, operator="alice")
            assert not result.success
            description = result.failure_data_for_node("recover_environment").user_failure_data.description
            assert description == ("confirmation does not match: type the environment name 'production' exactly "
                                   "in 'confirm' to proceed; nothing was done")
        assert hook.received == []
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "0"
    finally:
        hook.close()


def logs(instance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.user_message]


def test_recovery_restores_beside_switches_flushes_verifies_and_records(dr_env, instance, pg_server, prod_db,
                                                                         dr_redis, s3, monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("ACCI_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("ACCI_APP_URL", "http://127.0.0.1:9")  # the local platform reports its own URL
    try:
        key = nightly(instance)
        # The disaster: a table dropped, and a cache full of stale entries.
        pg_server.pg.psql("DROP TABLE sessions CASCADE", prod_db)  # takes the active_sessions view with it
        redis.Redis.from_url(dr_redis.url(3)).set("stale", "1")
        result = recover(instance, environment="production", confirm="production", operator="alice")
        assert result.success, logs(instance, result)[-3:]
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "5000"
        assert pg_server.pg.psql("SELECT to_regclass('active_sessions') IS NOT NULL", prod_db) == "t"
        assert redis.Redis.from_url(dr_redis.url(3)).dbsize() == 0
        # The database as it was is kept for forensics, named in the metadata and the report.
        [kept] = databases(pg_server, f"{prod_db}_before_dr_")
        assert pg_server.pg.psql("SELECT to_regclass('sessions') IS NULL", kept) == "t"
        assert databases(pg_server, f"{prod_db}_dr_") == []
        [output] = [e.event_specific_data for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {k: v.value for k, v in output.metadata.items()}
        assert metadata["kept_database"] == kept and kept in metadata["report"]
        assert "| switch | passed |" in metadata["report"]
        tags = instance.get_run_by_id(result.run_id).tags
        assert tags["acci/dr-operator"] == "alice" and tags["acci/dr-outcome"] == "succeeded"
        assert tags["acci/dr-backup"] == key and tags["acci/operation"] == "dr"
        texts = [m["text"] for m in hook.received]
        assert texts[0].startswith(":rotating_light: DR of `production` started by alice with backup ")
        assert texts[1].startswith("DR of `production` succeeded (RTO ")
        # The recoveries/<env>/ report is stored and reads back.
        reports = [k for k in all_keys(s3, dr_env) if k.startswith("acci/recoveries/production/")]
        assert len(reports) == 1 and reports[0].endswith("-recovery.json")
        stored = json.loads(s3.get_object(Bucket=dr_env, Key=reports[0])["Body"].read())
        assert stored["ok"] is True and stored["backup_key"] == key and stored["kept_database"] == kept
        assert [s["name"] for s in stored["steps"]] == ["infrastructure", "restore", "switch", "cache", "verify"]
        recorded = "\n".join(dg.serialize_value(r) for r in instance.all_logs(result.run_id))
        assert DR_PASSWORD not in recorded and quote(DR_PASSWORD, safe="") not in recorded
    finally:
        hook.close()
        drop_databases(pg_server, f"{prod_db}_before_dr_")


@pytest.fixture
def staging_backup(pg_server, bucket, scratch_url):
    """A validated staging backup (database acci_staging) in production's store."""
    pg_server.pg.psql("DROP DATABASE IF EXISTS acci_staging WITH (FORCE)")
    pg_server.pg.psql("CREATE DATABASE acci_staging")
    pg_server.pg.psql("CREATE TABLE tenants (id int, name text); INSERT INTO tenants VALUES (1, 'staging-tenant')",
                      "acci_staging")
    from datetime import date

    from acci_ops.lib.backup.dump import run_backup

    store = open_store(f"s3://{bucket}/acci")
    key = run_backup(environment="staging", target=parse_database_url(pg_server.pg.url("acci_staging")), store=store,
                     partition=date(2026, 11, 20), log=lambda line: None).manifest.object_key
    report = validate_backup(store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                             environment="staging", log=lambda line: None)
    assert report.ok, report.failure
    store_report(store, report)
    yield key
    pg_server.pg.psql("DROP DATABASE IF EXISTS acci_staging WITH (FORCE)")


def test_recovery_refuses_another_environments_backup(dr_env, instance, pg_server, prod_db, staging_backup,
                                                      monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("ACCI_ALERT_WEBHOOK_URL", hook.url)
    try:
        nightly(instance)
        before = shape(pg_server, prod_db)
        into = "refusing to restore it into production/acci_prod_dr; nothing was touched"
        for named, owner in ((staging_backup, "belongs to staging/acci_staging"),
                             ("production/../" + staging_backup, "is not a production backup")):
            result = recover(instance, environment="production", confirm="production", operator="mallory",
                             backup_key=named, allow_unvalidated_backup=True)
            assert not result.success
            description = result.failure_data_for_node("recover_environment").user_failure_data.description
            assert description.startswith(f"backup {named} {owner}") and description.endswith(into)
            assert "\n" not in description
        assert shape(pg_server, prod_db) == before
        assert pg_server.pg.psql("SELECT count(*) FROM tenants WHERE name = 'staging-tenant'", prod_db) == "0"
        assert databases(pg_server, prod_db) == [prod_db]
        assert hook.received == []  # refused before "DR started" was even announced
    finally:
        hook.close()


def test_recovery_refuses_an_unvalidated_backup_unless_overridden(dr_env, instance, pg_server, prod_db, monkeypatch):
    monkeypatch.delenv("ACCI_SCRATCH_DATABASE_URL")  # backups are taken but never validated
    key = nightly(instance)
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", "postgresql://unused@127.0.0.1:1/postgres")
    pg_server.pg.psql("DELETE FROM sessions", prod_db)
    result = recover(instance, environment="production", confirm="production", operator="bob", backup_key=key)
    assert not result.success
    description = result.failure_data_for_node("recover_environment").user_failure_data.description
    assert "has not been validated" in description and "allow_unvalidated_backup" in description
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "0"
    # With the override set, the same backup is restored.
    result = recover(instance, environment="production", confirm="production", operator="bob", backup_key=key,
                     allow_unvalidated_backup=True)
    assert result.success, logs(instance, result)[-3:]
    assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "5000"
    drop_databases(pg_server, f"{prod_db}_before_dr_")


class GarbageWebhook:
    """Answers every request with bytes that are not HTTP: http.client raises BadStatusLine."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        # accept() wakes up regularly, so close() can stop the thread before the socket is closed:
        # a thread still blocked in accept() on a closed fd would serve whatever socket a later
        # test opens under the same fd number.
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/services/T000/B000/hook-SECRETPATH-42"
        self.hits = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(b"garbage\r\n\r\n")
                self.hits += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_broken_webhook_does_not_stop_recovery(dr_env, instance, pg_server, prod_db, monkeypatch):
    hook = GarbageWebhook()
    monkeypatch.setenv("ACCI_ALERT_WEBHOOK_URL", hook.url)
    try:
        nightly(instance)
        pg_server.pg.psql("DELETE FROM sessions", prod_db)
        result = recover(instance, environment="production", confirm="production", operator="carol")
        assert result.success, logs(instance, result)[-3:]
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "5000"
        assert hook.hits >= 2  # "started" and the outcome were both attempted
        failures = [m for m in logs(instance, result) if m.startswith("alert not delivered")]
        assert len(failures) == 2 and all("\n" not in m for m in failures)
        assert all("SECRETPATH" not in m for m in logs(instance, result))
    finally:
        hook.close()
        drop_databases(pg_server, f"{prod_db}_before_dr_")


@pytest.fixture
def staging_db(pg_server):
    name = "acci_staging_dr"
    drop_databases(pg_server, name)
    own_database(pg_server, name)
    yield name
    drop_databases(pg_server, name)


def test_several_environments_drill_and_recover_only_their_own(monkeypatch, tmp_path, instance, pg_server, prod_db,
                                                                 staging_db, bucket, scratch_url, dr_redis,
                                                                 app_pids, s3):
    (tmp_path / "staging-redis").mkdir()
    staging_redis = start_redis(tmp_path / "staging-redis")
    try:
        def dr(redis_env: str, drill_env: str) -> dict:
            return {"platform": "local", "local_command": app_command(app_pids), "redis_url_env": redis_env,
                    "drill_redis_url_env": drill_env, "required_metrics": ["acci_up", "acci_users"],
                    "health_deadline_seconds": 20}

        doc = {"environments": {
            "production": {"database_url_env": "PROD_DB_URL", "backup_url": f"s3://{bucket}/prod",
                           "dr": dr("PROD_REDIS_URL", "PROD_DRILL_REDIS_URL")},
            "staging": {"database_url_env": "STAGING_DB_URL", "backup_url": f"s3://{bucket}/staging",
                        "dr": dr("STAGING_REDIS_URL", "STAGING_DRILL_REDIS_URL")},
        }}
        path = tmp_path / "environments.yaml"
        path.write_text(yaml.safe_dump(doc))
        for name, value in {"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_SCRATCH_DATABASE_URL": scratch_url,
                            "ACCI_BACKUP_SIGNING_KEY": SIGNING_KEY,
                            "PROD_DB_URL": dr_url(pg_server, prod_db), "STAGING_DB_URL": dr_url(pg_server, staging_db),
                            "PROD_REDIS_URL": dr_redis.url(3), "PROD_DRILL_REDIS_URL": dr_redis.url(4),
                            "STAGING_REDIS_URL": staging_redis.url(0),
                            "STAGING_DRILL_REDIS_URL": staging_redis.url(1)}.items():
            monkeypatch.setenv(name, value)
        backup = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
            partition_key="2026-11-26", instance=instance)
        assert backup.success
        staging_keys = [k for k in all_keys(s3, bucket) if k.startswith("staging/staging/") and k.endswith(".zst")]
        assert len(staging_keys) == 1
        staging_key = staging_keys[0].removeprefix("staging/")

        # A drill of staging rehearses staging only.
        drill = defs_from_env().resolve_job_def("dr_drill").execute_in_process(
            instance=instance, run_config={"ops": {"run_dr_drill": {"config": {"environment": "staging"}}}})
        assert drill.success
        [materialization] = drill_events(drill)
        assert materialization.asset_key == dg.AssetKey(["staging", "dr_drill"])

        # DR of production: staging's database and Redis are untouched; staging's backup is refused.
        staging_cache = redis.Redis.from_url(staging_redis.url(0))
        staging_cache.set("staging-session", "keep")
        pg_server.pg.psql("INSERT INTO tenants (name) VALUES ('staging-only')", staging_db)
        staging_before = shape(pg_server, staging_db)
        pg_server.pg.psql("DELETE FROM sessions", prod_db)
        refused = recover(instance, environment="production", confirm="production", operator="dave",
                          backup_key=staging_key, allow_unvalidated_backup=True)
        assert not refused.success
        assert "belongs to staging/acci_staging_dr" in \
            refused.failure_data_for_node("recover_environment").user_failure_data.description
        result = recover(instance, environment="production", confirm="production", operator="dave")
        assert result.success, logs(instance, result)[-3:]
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "5000"
        assert shape(pg_server, staging_db) == staging_before
        assert databases(pg_server, staging_db) == [staging_db]
        assert staging_cache.get("staging-session") == b"keep"
    finally:
        staging_redis.stop()
        drop_databases(pg_server, f"{prod_db}_before_dr_")


def test_launchpad_config_is_described(dr_env):
    job = defs_from_env().resolve_job_def("disaster_recovery")
    config_fields = {}
    for snap in job.get_config_schema_snapshot().all_config_snaps_by_key.values():
        for field in snap.fields or []:
            config_fields[field.name] = field
    for name in ("environment", "confirm", "operator", "backup_key", "skip_infrastructure",
                 "allow_unvalidated_backup"):
        assert config_fields[name].description, name
    assert config_fields["confirm"].is_required and config_fields["environment"].is_required
    assert not config_fields["skip_infrastructure"].is_required
