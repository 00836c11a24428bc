"""Session-scoped real servers; each test gets its own bucket and backup prefix."""

from __future__ import annotations

import uuid

import boto3
import pytest
from botocore.config import Config

from acci_ops_tests.servers import (
    DB_PASSWORD,
    DeniedS3,
    PgServer,
    S3Server,
    load_big_table,
    start_denying_moto,
    start_moto,
    start_postgres,
    start_redis,
)
from acci_ops_tests.trust_helpers import TEST_SIGNING_KEY


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> PgServer:
    base = tmp_path_factory.mktemp("pg")
    server = start_postgres(base)
    yield server
    server.pg.stop("immediate")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


SCRATCH_PASSWORD = "scratch-Pw-77q"


@pytest.fixture(scope="session")
def scratch_url(pg_server: PgServer) -> str:
    """A role that may create databases but is not a superuser, on its maintenance database."""
    pg_server.pg.psql(f"CREATE ROLE acci_scratch LOGIN CREATEDB PASSWORD '{SCRATCH_PASSWORD}'")
    pg_server.pg.psql("CREATE ROLE acci_nocreate LOGIN PASSWORD 'nocreate-pw'")
    return pg_server.pg.url("postgres", "acci_scratch", SCRATCH_PASSWORD)


@pytest.fixture(scope="session")
def big_db_url(pg_server: PgServer) -> str:
    return load_big_table(pg_server)


@pytest.fixture(scope="session")
def denied_s3(tmp_path_factory: pytest.TempPathFactory) -> DeniedS3:
    server = start_denying_moto(tmp_path_factory.mktemp("moto-iam") / "moto.log")
    yield server
    server.server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    """Point boto3 at moto over HTTP, through the standard variables a deployment would use."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    # Backups are signed by default, as in a configured deployment; the no-key tests delete it.
    monkeypatch.setenv("ACCI_BACKUP_SIGNING_KEY", TEST_SIGNING_KEY)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "ACCI_ENVIRONMENTS_FILE", "ACCI_ENVIRONMENT",
                "ACCI_OFFSITE_URL", "ACCI_ALERT_WEBHOOK_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def s3(s3_server: S3Server):
    return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def bucket(s3) -> str:
    name = f"acci-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def db_url(pg_server: PgServer) -> str:
    return pg_server.url()


@pytest.fixture
def secret() -> str:
    return DB_PASSWORD


def all_keys(s3, bucket: str) -> list[str]:
    """Every object key and every unfinished multipart upload in a bucket."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys + [f"(unfinished upload) {k}" for k in uploads]


