"""acci_ops on Docker, for real: its image built by build_ops_image (the tree under test FROM a Debian
base made with debootstrap, no network in RUN), checked and pushed by digest; then the shipped Compose
file and dagster.yaml brought up on a private podman API service, runs launched through the UI's
GraphQL API. One file: the image is built once per worker session, and both halves need it.

The stack runs with host networking and Dagster's storage on the test's PostgreSQL
(``acci_ops.dev.ops_stack.host_network_stack`` says why); everything else is as shipped: the code server, the
webserver and the daemon from the acci_ops image by digest, PostgreSQL storage, DockerRunLauncher
starting one run-worker container per run with the variables it names, run monitoring.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import psycopg
import pytest

from acci_ops.dev.dagster_api import launch_run, run_messages, wait_for_run
from acci_ops.dev.localpg import LocalPostgres
from acci_ops.dev.ops_stack import (
    PROJECT,
    RUN_WORKER_LABEL,
    SERVICES,
    Stack,
    host_network_stack,
    start_stack,
    stop_stack,
)
from acci_ops.dev.registry import LocalRegistry
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.ops_image import OpsImageBuild, run_build
from acci_ops_tests.fixtures.servers import PgServer
from acci_ops_tests.fixtures.webhook import Webhook

DAGSTER_DB_PASSWORD = "dagster-e2e-pw"


@dataclass
class E2E:
    stack: Stack
    webhook: Webhook
    bucket: str
    s3: object
    pg: LocalPostgres  # the test's PostgreSQL server, which holds Dagster's storage (database dagster_e2e)

    def slot_holders(self, pool: str) -> list[str]:
        """The run ids holding a slot of ``pool`` in Dagster's storage."""
        rows = self.pg.psql(f"SELECT run_id FROM concurrency_slots WHERE concurrency_key = '{pool}' "
                            "AND run_id IS NOT NULL AND deleted = false", dbname="dagster_e2e")
        return rows.split()

    def __getattr__(self, name: str) -> object:
        return getattr(self.stack, name)


@pytest.fixture(scope="module")
def stack(ops_image: OpsImageBuild, registry: LocalRegistry, pg_server: PgServer, s3_server, scratch_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    base = tmp_path_factory.mktemp("docker-stack")
    pg = pg_server.pg
    pg.psql(f"CREATE ROLE dagster_e2e LOGIN PASSWORD '{DAGSTER_DB_PASSWORD}'")
    pg.psql("CREATE DATABASE dagster_e2e OWNER dagster_e2e")
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    bucket = "acci-ops-on-docker"
    s3.create_bucket(Bucket=bucket)
    webhook = Webhook()
    env_file = base / "acci-ops.env"
    env_file.write_text("\n".join([
        f"ACCI_DATABASE_URL={pg_server.url()}", f"ACCI_BACKUP_URL=s3://{bucket}/acci",
        f"AWS_ENDPOINT_URL={s3_server.endpoint}", f"ACCI_BACKUP_SIGNING_KEY={TEST_SIGNING_KEY}",
        f"ACCI_SCRATCH_DATABASE_URL={scratch_url}", f"ACCI_ALERT_WEBHOOK_URL={webhook.url}",
        "AWS_ACCESS_KEY_ID=testing", "AWS_SECRET_ACCESS_KEY=testing", "AWS_DEFAULT_REGION=us-east-1", ""]))
    running = start_stack(base, ops_image.image_ref, registry.host,
                          dagster_pg=("127.0.0.1", pg.port, "dagster_e2e", DAGSTER_DB_PASSWORD, "dagster_e2e"),
                          env_file=env_file)
    try:
        yield E2E(running, webhook, bucket, s3, pg)
    finally:
        stop_stack(running)
        webhook.close()


def _inspect(registry: LocalRegistry, ref: str, *args: str) -> dict:
    done = subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args, f"docker://{ref}"], check=True,
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


def test_the_ops_image_is_built_checked_and_pushed_by_digest(ops_image: OpsImageBuild, registry: LocalRegistry):
    """Every blocking check passed (the selfcheck in the image found pg_dump 15, zstd, helm, a non-root
    user and a loading code location; the policy allowed the shell but found no setuid file); the
    registry serves the digest with the OCI labels, the non-root user and the code server command."""
    assert {name: check.passed for name, check in ops_image.checks.items()} == {
        "elf_architecture": True, "ops_image_smoke": True, "image_policy": True, "vulnerability_scan": False}
    assert ops_image.checks["vulnerability_scan"].severity.value == "WARN"  # no scanner here: said, not hidden
    assert "pg_dump (PostgreSQL) 15" in ops_image.checks["ops_image_smoke"].description
    assert "shell and package manager allowed" in ops_image.checks["image_policy"].description
    ref = ops_image.image_ref
    assert ref.startswith(registry.repository("acci/acci-ops") + "@sha256:")
    config = _inspect(registry, ref, "--config")["config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"][:3] == ["dagster", "api", "grpc"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "acci-ops"
    assert len(labels["org.opencontainers.image.revision"]) == 40
    tags = _inspect(registry, ref)["RepoTags"]
    assert f"sha-{labels['org.opencontainers.image.revision'][:12]}" in tags
    digest = ref.split("@", 1)[1]
    assert {f"{digest.replace(':', '-')}.sbom", f"{digest.replace(':', '-')}.att"} <= set(tags)
    assert ops_image.metadata["base_image_digests"].startswith(registry.repository("acci-test/debian-base") + "@")


def test_a_second_build_of_the_same_commit_is_a_noop(ops_image: OpsImageBuild):
    """The registry already holds this commit's image with its artifacts: nothing is built or pushed."""
    again = run_build(ops_image.environ)
    assert again.result.success
    assert again.metadata == {} and again.checks == {}


def _keys(stack: Stack) -> list[str]:
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_every_service_runs_the_image_by_digest_and_the_ui_loads_acci_ops_from_its_code_server(stack):
    """up: the webserver answers and has loaded the acci_ops location over gRPC from the code server;
    the three services run the image build_ops_image pushed, by digest."""
    with urllib.request.urlopen(f"{stack.url}/server_info", timeout=10) as answer:
        assert json.loads(answer.read())["dagster_version"] == "1.13.27"
    for name in SERVICES:
        image = stack.docker("inspect", "--format", "{{.Config.Image}}", f"{PROJECT}_{name}_1").stdout.strip()
        assert image == stack.image_ref, name


def test_nightly_backup_and_validation_run_in_run_worker_containers_against_postgres_and_s3(stack):
    """nightly_backup launched through GraphQL runs in a container of its own started by
    DockerRunLauncher from the code server's image, writes the dump and its manifest to S3 and is
    validated; validate_backup does the same again."""
    run_id = launch_run(stack.url, "nightly_backup", tags={"dagster/partition": "2026-12-03"})
    status, tags = wait_for_run(stack.url, run_id)
    assert status == "SUCCESS", run_messages(stack.url, run_id)[-8:]
    assert tags["dagster/image"] == stack.image_ref
    container = tags["docker/container_id"]
    inspected = json.loads(stack.docker("inspect", container).stdout)[0]
    assert inspected["Config"]["Labels"]["dagster/run_id"] == run_id
    assert inspected["State"]["ExitCode"] == 0
    keys = _keys(stack)
    assert any(k.startswith("acci/production/2026-12-03/") and k.endswith(".pgdump.zst") for k in keys), keys
    assert any(k.endswith(".manifest.json") for k in keys), keys
    run_id = launch_run(stack.url, "validate_backup", tags={"dagster/partition": "2026-12-03"})
    status, tags = wait_for_run(stack.url, run_id)
    assert status == "SUCCESS", run_messages(stack.url, run_id)[-8:]
    assert tags["docker/container_id"] != container


def test_a_run_worker_killed_mid_run_is_marked_failed_by_run_monitoring_and_the_alert_is_posted(stack, pg_server):
    """The backup is held mid-step (a session of the test holds an exclusive lock on a table the dump
    must read) while it holds production's pool slot; its container is killed: run monitoring finds
    the dead container, marks the run failed with the container's state, the failure alert fires,
    and the slot the dead worker never gave back is freed (or every later backup of production
    would stay QUEUED)."""
    with psycopg.connect(pg_server.url(user="postgres", password=None), autocommit=True) as blocker:
        blocker.execute("CREATE TABLE acci_ops_e2e_blocker (id int)")
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE acci_ops_e2e_blocker IN ACCESS EXCLUSIVE MODE")
        run_id = launch_run(stack.url, "nightly_backup", tags={"dagster/partition": "2026-12-02"})
        status, tags = wait_for_run(stack.url, run_id, statuses=("STARTED", "SUCCESS", "FAILURE"))
        assert status == "STARTED"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and run_id not in stack.slot_holders("acci_backup_production"):
            time.sleep(0.5)
        assert stack.slot_holders("acci_backup_production") == [run_id]
        stack.docker("kill", tags["docker/container_id"])
        blocker.execute("ROLLBACK")
        blocker.execute("DROP TABLE acci_ops_e2e_blocker")
    status, _ = wait_for_run(stack.url, run_id, timeout=120)
    assert status == "FAILURE"
    messages = run_messages(stack.url, run_id)
    assert any("Detected run worker status FAILED" in m and '"ExitCode": 137' in m for m in messages), messages[-4:]
    deadline = time.monotonic() + 90  # the alert sensor ticks every 30 s
    while time.monotonic() < deadline and not any(run_id[:8] in m.get("text", "") for m in stack.webhook.received):
        time.sleep(1)
    alerts = [m["text"] for m in stack.webhook.received if run_id[:8] in m.get("text", "")]
    assert alerts and "job `nightly_backup` failed" in alerts[0], stack.webhook.received
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run_id in stack.slot_holders("acci_backup_production"):
        time.sleep(1)
    assert stack.slot_holders("acci_backup_production") == []


def test_a_variable_the_launcher_passes_but_the_daemon_lacks_fails_the_run_naming_it(stack):
    """A name added to the launcher's env_vars but not to acci-ops.env: the run fails at launch with
    the variable's name (never STARTING forever), and the alert says so."""
    host_network_stack(stack.base, extra_env_vars=("ACCI_OPS_FORGOTTEN_VARIABLE",))
    try:
        stack.up("dagster-daemon")
        stack.wait_for_daemon()
        run_id = launch_run(stack.url, "nightly_backup", tags={"dagster/partition": "2026-12-01"})
        status, _ = wait_for_run(stack.url, run_id, timeout=180)
        assert status == "FAILURE", stack.daemon_log()
        messages = run_messages(stack.url, run_id)
        assert any("ACCI_OPS_FORGOTTEN_VARIABLE" in m for m in messages), messages[-4:]
    finally:
        host_network_stack(stack.base)
        stack.up("dagster-daemon")


def test_down_leaves_no_container_network_or_volume_of_its_own(stack):
    """down -v removes the services; the exited run-worker containers (kept so run monitoring can read
    how they ended) go with the documented prune by their label; nothing of the project is left."""
    subprocess.run([*stack.compose, "down", "-v", "--timeout", "5"], env=stack.env, check=True, capture_output=True,
                   timeout=300)
    workers = stack.docker("ps", "-aq", "--filter", f"label={RUN_WORKER_LABEL}").stdout.split()
    assert workers  # every run above left its container
    stack.docker("container", "prune", "--force", "--filter", f"label={RUN_WORKER_LABEL}")
    assert stack.docker("ps", "-aq").stdout.split() == []
    assert stack.docker("volume", "ls", "-q").stdout.split() == []
    networks = stack.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert [n for n in networks if n not in ("podman", "bridge", "host", "none")] == []
