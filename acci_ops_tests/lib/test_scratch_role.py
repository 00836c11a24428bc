"""Validation restores archives it does not trust: the scratch role must not be able to run
programs on the server, and the scratch URL must not be the backed-up database under another name.

The crafted archive is built for real: a function that runs ``COPY ... TO PROGRAM 'touch MARKER'``
and a CHECK constraint calling it, dumped by the normal backup path. Restoring it as a superuser
would execute the program; the marker file says whether it ran."""

from __future__ import annotations

import os
import uuid
from datetime import date
from pathlib import Path

import pytest

from acci_ops.dev.localpg import _let_postgres_traverse
from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.dr.procedures import DrillRequest, run_drill
from acci_ops.lib.platform.backends import LocalPlatform
from acci_ops.lib.postgres.scratch import check_scratch_role, list_scratch_databases, refuse_same_database
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.validate import ValidationSettings, validate_backup
from acci_ops_tests.fixtures.servers import DB_PASSWORD

SUPERUSER_REFUSAL = ("scratch role postgres is a superuser: a restored archive could run shell commands as it; "
                     "use a role with only LOGIN CREATEDB, or set ACCI_SCRATCH_ALLOW_SUPERUSER=true to accept the risk")


@pytest.fixture
def marker(tmp_path) -> Path:
    """A path the server's OS user can create, so a COPY TO PROGRAM 'touch' would really succeed."""
    where = tmp_path / "marker-dir"
    where.mkdir()
    _let_postgres_traverse(where)
    os.chmod(where, 0o777)
    return where / "program-ran"


@pytest.fixture
def crafted_backup(pg_server, bucket, marker):
    """An archive whose restore runs a shell command, uploaded by the normal backup path."""
    dbname = f"evil_{uuid.uuid4().hex[:8]}"
    pg = pg_server.pg
    pg.psql(f"CREATE DATABASE {dbname}")
    pg.psql(
        "CREATE FUNCTION run_program(x int) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN "
        f"EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'cat > /dev/null; touch {marker}'); RETURN true; END $f$;"
        "CREATE TABLE innocent (x int CHECK (run_program(x))); INSERT INTO innocent VALUES (1);",
        dbname,
    )
    assert marker.exists(), "building the crafted database should have run the program once"
    marker.unlink()
    store = open_store(f"s3://{bucket}/acci")
    result = run_backup(environment="production", target=parse_database_url(pg.url(dbname)), store=store,
                        partition=date(2026, 11, 26), log=lambda line: None)
    yield store, result.manifest.object_key
    pg.psql(f"DROP DATABASE IF EXISTS {dbname}")


@pytest.fixture
def plain_backup(db_url, bucket):
    store = open_store(f"s3://{bucket}/acci")
    result = run_backup(environment="production", target=parse_database_url(db_url), store=store,
                        partition=date(2026, 11, 26), log=lambda line: None)
    return store, result.manifest.object_key


def validate(store, key, scratch_url, **settings):
    return validate_backup(store=store, backup_key=key, scratch=parse_database_url(scratch_url),
                           environment="production", settings=ValidationSettings(**settings), log=lambda line: None)


def test_superuser_scratch_role_is_refused_before_the_restore(crafted_backup, pg_server, marker):
    store, key = crafted_backup
    report = validate(store, key, pg_server.admin_url)
    assert not report.ok
    assert report.failure == f"restore: {SUPERUSER_REFUSAL}"
    assert report.scratch_database == ""
    assert not marker.exists()
    assert list_scratch_databases(parse_database_url(pg_server.admin_url)) == []


def test_non_superuser_scratch_role_cannot_run_the_program(crafted_backup, scratch_url, marker):
    store, key = crafted_backup
    report = validate(store, key, scratch_url)
    assert not report.ok
    assert report.failure.startswith("restore: pg_restore stopped at the first error: ")
    assert not marker.exists()
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_opt_in_lets_a_superuser_through_and_amcheck_runs(plain_backup, pg_server):
    store, key = plain_backup
    report = validate(store, key, pg_server.admin_url, amcheck="required", scratch_allow_superuser=True)
    assert report.ok, report.failure
    assert report.step("amcheck").status == "passed"


@pytest.mark.parametrize("membership", ["pg_execute_server_program", "pg_write_server_files", "pg_read_server_files"])
def test_roles_that_can_reach_the_server_os_are_refused(pg_server, membership):
    role = f"acci_risky_{membership.split('_')[1]}"
    pg_server.pg.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN CREATEDB PASSWORD 'risky-pw';"
                      f"GRANT {membership} TO {role}")
    try:
        scratch = parse_database_url(pg_server.pg.url("postgres", role, "risky-pw"))
        with pytest.raises(ConfigError) as failure:
            check_scratch_role(scratch)
        assert str(failure.value) == (
            f"scratch role {role} is a member of {membership}: a restored archive could run shell commands or "
            "read and write server files as it; use a role with only LOGIN CREATEDB, or set "
            "ACCI_SCRATCH_ALLOW_SUPERUSER=true to accept the risk")
        check_scratch_role(scratch, allow_superuser=True)
    finally:
        pg_server.pg.psql(f"DROP ROLE IF EXISTS {role}")


def test_createrole_is_refused_because_it_can_grant_itself_those_roles(pg_server):
    pg_server.pg.psql("DROP ROLE IF EXISTS acci_risky_createrole;"
                      "CREATE ROLE acci_risky_createrole LOGIN CREATEDB CREATEROLE PASSWORD 'risky-pw'")
    try:
        scratch = parse_database_url(pg_server.pg.url("postgres", "acci_risky_createrole", "risky-pw"))
        with pytest.raises(ConfigError, match="^scratch role acci_risky_createrole has CREATEROLE: "):
            check_scratch_role(scratch)
    finally:
        pg_server.pg.psql("DROP ROLE IF EXISTS acci_risky_createrole")


def test_the_dedicated_scratch_role_passes(scratch_url):
    check_scratch_role(parse_database_url(scratch_url))


def test_drill_refuses_a_superuser_scratch_role(plain_backup, pg_server, redis_server):
    store, key = plain_backup
    request = DrillRequest(environment="production", backup_key=key, scratch=parse_database_url(pg_server.admin_url),
                           drill_redis_url=redis_server.url(9), production_redis_url=redis_server.url(0),
                           database="acci")
    report = run_drill(request, store=store, platform=LocalPlatform(["/bin/false"]), log=lambda line: None)
    assert not report.ok
    assert report.failure == f"database: {SUPERUSER_REFUSAL}"


def test_amcheck_required_but_not_usable_fails_with_one_clear_line(plain_backup, scratch_url):
    store, key = plain_backup
    report = validate(store, key, scratch_url, amcheck="required")
    assert not report.ok
    assert report.failure == (
        "amcheck: ACCI_VALIDATION_AMCHECK=required, but scratch role acci_scratch cannot install the amcheck "
        "extension (only a superuser can); set ACCI_VALIDATION_AMCHECK=auto, or use a superuser scratch role "
        "with ACCI_SCRATCH_ALLOW_SUPERUSER=true")
    assert report.step("restore").status == "passed"
    assert list_scratch_databases(parse_database_url(scratch_url)) == []


def test_amcheck_auto_skips_for_the_dedicated_role(plain_backup, scratch_url):
    store, key = plain_backup
    report = validate(store, key, scratch_url, amcheck="auto")
    assert report.ok, report.failure
    assert report.step("amcheck").status == "skipped"
    assert "cannot install the amcheck extension" in report.step("amcheck").detail


@pytest.mark.parametrize("alias", [
    "postgresql://acci:{pw}@0.0.0.0:{port}/acci",
    "postgresql://acci:{pw}@some-other-name.invalid:{port}/acci?hostaddr=127.0.0.1",
    "postgresql://acci:{pw}@localhost:{port}/acci?sslmode=disable",
])
def test_aliases_of_the_backed_up_database_are_refused(pg_server, db_url, alias):
    scratch = parse_database_url(alias.format(pw=DB_PASSWORD, port=pg_server.pg.port))
    with pytest.raises(ConfigError) as failure:
        refuse_same_database(scratch, parse_database_url(db_url))
    assert str(failure.value).startswith("scratch database URL points at the backed-up database acci@127.0.0.1:")
    assert DB_PASSWORD not in str(failure.value)


def test_alias_is_refused_even_when_the_source_cannot_be_asked(pg_server, db_url):
    """Production unreachable from here (wrong password): fall back to comparing addresses."""
    scratch = parse_database_url(f"postgresql://acci:{DB_PASSWORD}@0.0.0.0:{pg_server.pg.port}/acci")
    source = parse_database_url(pg_server.url(password="wrong-password"))
    with pytest.raises(ConfigError, match="points at the backed-up database"):
        refuse_same_database(scratch, source)


def test_same_server_other_database_is_fine(pg_server, db_url, scratch_url):
    refuse_same_database(parse_database_url(scratch_url), parse_database_url(db_url))
    alias = parse_database_url(f"postgresql://acci:{DB_PASSWORD}@0.0.0.0:{pg_server.pg.port}/postgres")
    refuse_same_database(alias, parse_database_url(db_url))


def test_dev_scratch_role_is_not_a_superuser_and_can_create_databases(pg_server, capsys):
    """What `./run dev` runs (`python -m acci_ops.dev.localpg scratch-role DIR PORT`)."""
    from acci_ops.dev.localpg import main
    from acci_ops.lib.postgres.scratch import create_scratch_database, drop_scratch_database, new_scratch_name

    assert main(["scratch-role", str(pg_server.pg.base_dir), str(pg_server.pg.port), "--name", "acci_dev_scratch"]) == 0
    url = capsys.readouterr().out.strip()
    assert url.startswith("postgresql://acci_dev_scratch:")
    assert url.endswith(f"@127.0.0.1:{pg_server.pg.port}/postgres")
    scratch = parse_database_url(url)
    check_scratch_role(scratch)
    name = new_scratch_name()
    create_scratch_database(scratch, name)
    drop_scratch_database(scratch, name)
    assert main(["scratch-role", str(pg_server.pg.base_dir), str(pg_server.pg.port), "--name", "acci_dev_scratch"]) == 0
    assert capsys.readouterr().out.strip() == url  # same password the second time: ./run dev can be rerun
    assert oct((pg_server.pg.base_dir / "acci_dev_scratch.password").stat().st_mode & 0o777) == "0o600"
