"""Real servers for the tests: PostgreSQL 15 and moto's S3 server over HTTP.

No stand-ins here: a missing binary fails the session with the package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from acci_ops.dev.localpg import LocalPostgres, load_sample_data
from acci_ops.lib.core.net import free_port

# A password distinctive enough that a grep over logs, argv, metadata and errors is meaningful.
DB_PASSWORD = "Tr0ub4dor-zq93-SECRET"
DB_USER = "acci"
DB_NAME = "acci"


def require(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"{binary} is missing: install it with `{package}` (./run test does this)")
    return found


@dataclass
class PgServer:
    pg: LocalPostgres

    def url(self, dbname: str = DB_NAME, user: str = DB_USER, password: str | None = DB_PASSWORD) -> str:
        return self.pg.url(dbname, user, password)

    @property
    def admin_url(self) -> str:
        return self.pg.url("postgres")


def start_postgres(base: Path) -> PgServer:
    require("psql", "apt-get install -y postgresql-15")
    pg = LocalPostgres(base, free_port()).start()
    pg.psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
    pg.psql(f"GRANT pg_read_all_data TO {DB_USER}")
    load_sample_data(pg, DB_NAME)
    return PgServer(pg)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_moto(log_path: Path) -> S3Server:
    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(moto):
        raise RuntimeError("moto_server is missing: pip install 'moto[server]' (./run test does this)")
    log = open(log_path, "wb")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            return S3Server(endpoint, proc)
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_path}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto_server did not answer on {endpoint} within 30 s; see {log_path}")


def load_big_table(server: PgServer, dbname: str = "acci_big", megabytes: int = 32) -> str:
    """A database whose dump is larger than several multipart parts and barely compresses, so a
    kill mid-stream really happens after parts have been uploaded."""
    pg = server.pg
    pg.psql(f"CREATE DATABASE {dbname}")
    rows = megabytes * 1024 * 1024 // 64
    pg.psql(
        "CREATE TABLE noise AS SELECT g AS id, decode(md5(random()::text) || md5(random()::text) || "
        "md5(random()::text) || md5(random()::text), 'hex') AS payload "
        f"FROM generate_series(1, {rows}) g",
        dbname,
    )
    return server.url(dbname)


@dataclass
class DeniedS3:
    """A second moto server that enforces IAM, with a bucket a read-only user may not write."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    server: S3Server


def start_denying_moto(log_path: Path) -> DeniedS3:
    import json

    import boto3

    port = free_port()
    moto = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")  # the set-up calls below, then IAM applies
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            import socket

            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"denying moto_server did not start; see {log_path}") from None
            time.sleep(0.2)
    admin = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="AKIAADMINEXAMPLE0000",
                 aws_secret_access_key="admin")
    boto3.client("s3", **admin).create_bucket(Bucket="acci-denied")
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    policy = {"Version": "2012-10-17",
              "Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"}]}
    iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps(policy))
    return DeniedS3(endpoint, "acci-denied", key["AccessKeyId"], key["SecretAccessKey"], S3Server(endpoint, proc))


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_redis(workdir: Path) -> RedisServer:
    binary = require("redis-server", "apt-get install -y redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=open(workdir / "redis.log", "wb"), stderr=subprocess.STDOUT)
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis(port=port, socket_connect_timeout=1).ping()
            return RedisServer(port, proc)
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}") from None
            time.sleep(0.1)
