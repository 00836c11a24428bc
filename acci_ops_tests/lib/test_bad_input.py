"""Bad input fails fast with one readable line, leaves nothing in the bucket, and never shows
the password."""

from __future__ import annotations

from datetime import date

import pytest

from acci_ops.lib.backup.dump import run_backup
from acci_ops.lib.core.errors import AcciOpsError, BackupError, ConfigError
from acci_ops.lib.core.net import free_port
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import S3Store, open_store
from acci_ops_tests.fixtures.s3 import all_keys
from acci_ops_tests.fixtures.servers import DB_PASSWORD


def attempt(url: str, store) -> AcciOpsError:
    with pytest.raises(AcciOpsError) as failure:
        run_backup(environment="production", target=parse_database_url(url), store=store,
                   partition=date(2026, 11, 26), log=lambda line: None)
    message = str(failure.value)
    assert "\n" not in message
    assert DB_PASSWORD not in message
    assert DB_PASSWORD not in repr(failure.value.args)
    assert failure.value.__cause__ is None or DB_PASSWORD not in str(failure.value.__cause__)
    return failure.value


def test_unreachable_host(bucket, s3):
    port = free_port()
    error = attempt(f"postgresql://acci:{DB_PASSWORD}@127.0.0.1:{port}/acci", open_store(f"s3://{bucket}/x"))
    assert isinstance(error, BackupError)
    assert str(error).startswith(f"cannot connect to PostgreSQL acci@127.0.0.1:{port}/acci to back up:")
    assert "refused" in str(error).lower()
    assert all_keys(s3, bucket) == []


def test_wrong_password(pg_server, bucket, s3):
    url = pg_server.url(password="not-the-password")
    error = attempt(url, open_store(f"s3://{bucket}/x"))
    assert 'password authentication failed for user "acci"' in str(error)
    assert "not-the-password" not in str(error)
    assert all_keys(s3, bucket) == []


def test_missing_database(pg_server, bucket, s3):
    error = attempt(pg_server.url("no_such_db"), open_store(f"s3://{bucket}/x"))
    assert 'database "no_such_db" does not exist' in str(error)
    assert all_keys(s3, bucket) == []


def test_missing_bucket(db_url, s3):
    error = attempt(db_url, open_store("s3://acci-no-such-bucket/x"))
    assert str(error) == ("bucket acci-no-such-bucket does not exist (s3://acci-no-such-bucket/x); "
                          "create it or fix the backup URL")


def test_unreachable_object_store(db_url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    error = attempt(db_url, open_store("s3://acci-anything/x"))
    assert "cannot reach object store for s3://acci-anything/x" in str(error)


def test_denied_access_aborts_and_names_the_denial(db_url, denied_s3):
    import boto3

    client = boto3.client("s3", endpoint_url=denied_s3.endpoint, region_name="us-east-1",
                          aws_access_key_id=denied_s3.access_key, aws_secret_access_key=denied_s3.secret_key)
    store = S3Store(f"s3://{denied_s3.bucket}/acci", client=client)
    error = attempt(db_url, store)
    assert str(error).startswith(f"access denied to s3://{denied_s3.bucket}/acci/production/2026-11-26/")
    assert "check the credentials and the bucket policy" in str(error)
    assert client.list_objects_v2(Bucket=denied_s3.bucket).get("KeyCount") == 0


@pytest.mark.parametrize(
    "url,expected",
    [
        ("", "database URL is empty"),
        ("mysql://u:p@h/db", "must start with postgresql:// (got scheme 'mysql')"),
        ("postgresql://u:p@h:notaport/db", "is malformed: the port is not a number"),
        ("postgresql://u:p@/db", "names no host"),
        ("postgresql://u:p@host:5432", "names no database"),
    ],
)
def test_malformed_database_urls(url, expected):
    with pytest.raises(ConfigError) as failure:
        parse_database_url(url)
    assert expected in str(failure.value)
    assert ":p@" not in str(failure.value)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("", "backup URL is empty"),
        ("ftp://host/x", "unsupported scheme 'ftp'"),
        ("s3:///nobucket", "must look like s3://bucket/prefix"),
        ("file://relative/path", "must be file:///absolute/path"),
    ],
)
def test_malformed_backup_urls(url, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        open_store(url)


@pytest.mark.parametrize("password", ["p#ss", "p?ss", "p/ss", "a@b", "zq#93Secret", "zq?93Secret", "zq/93Secret",
                                      "zq@93Secret", "1234/93Secret", "1234?93Secret", "1234#93Secret"])
@pytest.mark.parametrize("rest", ["@db.internal:5432/acci", "@db.internal/acci?sslmode=require",
                                  "@db.internal:notaport/acci", "@db.internal:5432/acci?password=q93Secret"])
def test_urls_with_special_character_passwords_never_show_them(password, rest):
    """Unencoded #, ? and / split the URL in the wrong place; whatever the parser makes of it,
    no part of the password reaches the error, the target's repr or its description."""
    url = f"postgresql://acci:{password}{rest}"
    try:
        target = parse_database_url(url)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
    else:
        expected = "q93Secret" if "?password=" in rest else password  # as for libpq, the parameter wins
        assert target.password == expected and target.host == "db.internal"
        message = repr(target) + " " + target.describe() + " " + str(target)
    for piece in (password, "93Secret", "q93Secret"):
        assert piece not in message, message
    if "?password=" in rest:
        assert "q93Secret" not in message


@pytest.mark.parametrize("password", ["p#ss", "p?ss", "p/ss", "1234/93Secret"])
def test_unencoded_special_characters_get_a_hint(password):
    with pytest.raises(ConfigError) as failure:
        parse_database_url(f"postgresql://acci:{password}@db.internal:5432/acci")
    assert "percent-encode" in str(failure.value)
    assert password not in str(failure.value) and "93Secret" not in str(failure.value)
