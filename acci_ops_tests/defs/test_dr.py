"""DR drills and on-call recovery as Dagster runs them, end to end with the local backend:
real PostgreSQL, real Redis, S3 over HTTP, and the stand-in app (acci_ops_tests/fakeapp.py)."""

from __future__ import annotations

import json
import sys

import dagster as dg
import pytest
import redis

from acci_ops.lib.dburl import parse_database_url
from acci_ops.lib.localpg import load_sample_data
from acci_ops.lib.scratch import list_scratch_databases
from acci_ops_tests.conftest import all_keys
from acci_ops_tests.defs.conftest import defs_from_env
from acci_ops_tests.defs.test_alerts import Webhook
from acci_ops_tests.servers import DB_PASSWORD


@pytest.fixture
def prod_db(pg_server):
    """A database playing production for DR (recovery restores into it with --clean)."""
    name = "acci_prod_dr"
    pg_server.pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    load_sample_data(pg_server.pg, name)
    pg_server.pg.psql(f"GRANT ALL ON SCHEMA public TO acci; GRANT ALL ON ALL TABLES IN SCHEMA public TO acci; "
                      f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO acci; ALTER DATABASE {name} OWNER TO acci",
                      name)
    for table in ("tenants", "users", "sessions"):
        pg_server.pg.psql(f"ALTER TABLE {table} OWNER TO acci", name)
    pg_server.pg.psql("ALTER VIEW active_sessions OWNER TO acci; ALTER FUNCTION tenant_user_count(int) OWNER TO acci",
                      name)
    yield name
    pg_server.pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def dr_env(monkeypatch, pg_server, prod_db, bucket, scratch_url, redis_server):
    monkeypatch.setenv("ACCI_DATABASE_URL", pg_server.url(prod_db))
    monkeypatch.setenv("ACCI_BACKUP_URL", f"s3://{bucket}/acci")
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    monkeypatch.setenv("ACCI_PLATFORM", "local")
    monkeypatch.setenv("ACCI_LOCAL_APP_COMMAND", f"{sys.executable} -m acci_ops_tests.fakeapp")
    monkeypatch.setenv("ACCI_REDIS_URL", redis_server.url(3))
    monkeypatch.setenv("ACCI_DRILL_REDIS_URL", redis_server.url(4))
    monkeypatch.setenv("ACCI_REQUIRED_METRICS", "acci_up,acci_users")
    monkeypatch.setenv("ACCI_HEALTH_DEADLINE_SECONDS", "20")
    return bucket


def nightly(instance):
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance)
    assert result.success
    return result.asset_materializations_for_node("db_backup")[0].metadata["object_key"].value


def drill_events(result):
    return [e.event_specific_data.materialization for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"]


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
    assert meta["health_status"] == 200
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
        for confirm in ("", "prod", "Production", "production "):
            result = recover(instance, environment="production", confirm=confirm, operator="alice")
            assert not result.success
            description = result.failure_data_for_node("recover_environment").user_failure_data.description
            assert description == ("confirmation does not match: type the environment name 'production' exactly "
                                   "in 'confirm' to proceed; nothing was done")
        assert hook.received == []
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "0"
    finally:
        hook.close()


def test_recovery_restores_flushes_verifies_and_records(dr_env, instance, pg_server, prod_db, redis_server,
                                                        monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("ACCI_ALERT_WEBHOOK_URL", hook.url)
    monkeypatch.setenv("ACCI_APP_URL", "http://127.0.0.1:9")  # the local platform reports its own URL
    try:
        key = nightly(instance)
        # The disaster: a table dropped, and a cache full of stale entries.
        pg_server.pg.psql("DROP TABLE sessions CASCADE", prod_db)  # takes the active_sessions view with it
        redis.Redis.from_url(redis_server.url(3)).set("stale", "1")
        result = recover(instance, environment="production", confirm="production", operator="alice")
        assert result.success
        assert pg_server.pg.psql("SELECT count(*) FROM sessions", prod_db) == "5000"
        assert pg_server.pg.psql("SELECT to_regclass('active_sessions') IS NOT NULL", prod_db) == "t"
        assert redis.Redis.from_url(redis_server.url(3)).dbsize() == 0
        tags = instance.get_run_by_id(result.run_id).tags
        assert tags["acci/dr-operator"] == "alice" and tags["acci/dr-outcome"] == "succeeded"
        assert tags["acci/dr-backup"] == key and tags["acci/operation"] == "dr"
        texts = [m["text"] for m in hook.received]
        assert texts[0].startswith(":rotating_light: DR of `production` started by alice with backup ")
        assert texts[1].startswith("DR of `production` succeeded (RTO ")
        recorded = "\n".join(dg.serialize_value(r) for r in instance.all_logs(result.run_id))
        assert DB_PASSWORD not in recorded
    finally:
        hook.close()
        # The local platform is never torn down by recovery: stop the app it started.
        import subprocess

        subprocess.run(["pkill", "-f", "acci_ops_tests.fakeapp"], check=False)


def test_recovery_refuses_an_unvalidated_backup_unless_overridden(dr_env, instance, monkeypatch):
    monkeypatch.delenv("ACCI_SCRATCH_DATABASE_URL")  # backups are taken but never validated
    key = nightly(instance)
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", "postgresql://unused@127.0.0.1:1/postgres")
    result = recover(instance, environment="production", confirm="production", operator="bob", backup_key=key,
                     skip_infrastructure=True)
    assert not result.success
    description = result.failure_data_for_node("recover_environment").user_failure_data.description
    assert description == (f"backup {key} has not been validated; validate it first or set allow_unvalidated_backup")


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
