"""Staging to production through the ``release`` job, end to end on real parts: an environments file with
two compose environments (rolling) on a private podman API service, the release app's versions as the image
pipeline pushed them, the real analysis (health, 5xx ratio and p95 latency from caddy's live metrics, with the
load step), the signed ledger, and a real backup of the session PostgreSQL before each production release.
Which version serves is read from the app itself (``/version``).

As in test_release_blue_green_job.py, a version's ``acci_image`` materialization is reported to the instance
instead of running ``build_image`` again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from acci_ops.dev.podman_service import PodmanService
from acci_ops.dev.registry import LocalRegistry
from acci_ops.dev.release_app import IMAGE_NAME, ReleaseRepo
from acci_ops.dev.release_stack import compose_file, project_containers, remove_project
from acci_ops.lib.core.net import free_port
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.image_defs import failure_of
from acci_ops_tests.fixtures.release_images import ReleaseImages, pushed, release_metadata, served_version
from acci_ops_tests.fixtures.release_servers import need

HISTOGRAM = "caddy_http_request_duration_seconds"
ANALYSIS = {"interval_seconds": 0.3, "count": 3,
            "default_metrics": {"error_metric": f"{HISTOGRAM}_count", "latency_metric": HISTOGRAM},
            "load": {"requests": 30, "rate": 100, "paths": ["/", "/health"]}}


@dataclass(frozen=True)
class Env:
    name: str
    project: str
    url: str


@pytest.fixture
def envs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, podman_service: PodmanService, registry: LocalRegistry,
         release_repo: ReleaseRepo, pg_server) -> Iterator[dict[str, Env]]:  # noqa: ANN001 (a PgServer)
    """staging then production, each its own compose project of the release app on the podman service."""
    need("docker-compose", "docker-compose")
    suffix = tmp_path.name[-8:].lower().replace("_", "-").strip("-")
    out, body = {}, {}
    for name in ("staging", "production"):
        app, metrics = free_port(), free_port()
        (tmp_path / f"{name}.yml").write_text(compose_file(app, metrics))
        out[name] = Env(name, f"promo-{name}-{suffix}", f"http://127.0.0.1:{app}")
        body[name] = {
            "database_url_env": "ACCI_TEST_DATABASE_URL", "backup_url": f"file://{tmp_path}/backups/{name}",
            "dr": {"platform": "compose", "app_url": out[name].url, "compose_project": out[name].project,
                   "compose_files": [str(tmp_path / f"{name}.yml")], "drill_redis_url_env": "ACCI_TEST_DRILL_REDIS"},
            # production sends the load step too: caddy's counters only move with traffic, and no traffic
            # would be an inconclusive (never passed) analysis.
            "releases": {"analysis": ANALYSIS, "timeout_seconds": 30, "load": True,
                         "metrics_url": f"http://127.0.0.1:{metrics}/metrics"}}
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump({"environments": body,
                                                                "promotion_order": ["staging", "production"]}))
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir(mode=0o700)
    for variable, value in {"ACCI_ENVIRONMENTS_FILE": str(tmp_path / "environments.yaml"),
                            "ACCI_TEST_DATABASE_URL": pg_server.url(), "ACCI_TEST_DRILL_REDIS": "redis://127.0.0.1:9/1",
                            "ACCI_BACKUP_SIGNING_KEY": TEST_SIGNING_KEY, "ACCI_SOURCE_REPO": release_repo.url,
                            "ACCI_IMAGE_REPOSITORY": registry.repository(IMAGE_NAME),
                            "ACCI_REGISTRY_TLS_VERIFY": "false", "DOCKER_HOST": podman_service.docker_host,
                            "DOCKER_CONFIG": str(docker_config)}.items():
        monkeypatch.setenv(variable, value)
    try:
        yield out
    finally:
        for env in out.values():
            remove_project(podman_service, env.project)


def release(instance: dg.DagsterInstance, environment: str, version: str, **answers: object):  # noqa: ANN201
    config = {"environment": environment, "version": version, "operator": "alice", **answers}
    return defs_from_env().resolve_job_def("release").execute_in_process(
        run_config={"ops": {"release_version": {"config": config}}}, instance=instance, raise_on_error=False)


def test_a_version_goes_to_production_only_verified_on_staging_confirmed_and_backed_up_first(
        envs: dict[str, Env], release_images: ReleaseImages, podman_service: PodmanService, tmp_path: Path) -> None:
    """2.0.0 is verified on staging, refused on production without the typed confirmation (nothing deployed),
    then released there with it after a backup whose key is on the release; 2.3.0 (every page a 500) fails
    its analysis on staging and is rolled back by itself, 2.0.0 serving again; production then refuses
    2.3.0 in one line saying which analysis failed, still serving 2.0.0, and takes no backup for it."""
    staging, production = envs["staging"], envs["production"]
    good, bad = release_images["2.0.0"], release_images["2.3.0"]
    with dg.instance_for_test() as instance:
        pushed(instance, good, bad)
        first = release(instance, "staging", "2.0.0")
        assert first.success, failure_of(first)
        assert served_version(staging.url) == "2.0.0"
        assert release_metadata(instance, "staging", "2.0.0")["status"] == "verified"

        unconfirmed = release(instance, "production", "2.0.0")
        assert not unconfirmed.success
        assert failure_of(unconfirmed) == ("releasing to production needs confirmation: set confirm: production (type "
                                           "the environment's name)")
        assert project_containers(podman_service, production.project) == []

        promoted = release(instance, "production", "2.0.0", confirm="production")
        assert promoted.success, failure_of(promoted)
        assert served_version(production.url) == "2.0.0"
        meta = release_metadata(instance, "production", "2.0.0")
        assert meta["status"] == "verified" and str(meta["backup_key"]).startswith(f"file://{tmp_path}/backups/")
        backups = sorted((tmp_path / "backups" / "production").rglob("*.pgdump*"))
        assert Path(str(meta["backup_key"]).removeprefix("file://")) in backups, backups

        sick = release(instance, "staging", "2.3.0")
        assert not sick.success
        assert "rolled back by itself to 2.0.0" in failure_of(sick)
        assert served_version(staging.url) == "2.0.0"
        assert release_metadata(instance, "staging", "2.3.0")["status"] == "rolled_back"

        refused = release(instance, "production", "2.3.0", confirm="production")
        assert not refused.success
        message = failure_of(refused)
        assert message.startswith("version 2.3.0 is not verified on staging: ") and "\n" not in message, message
        assert "release it there first, or set allow_unverified: true" in message
        assert served_version(production.url) == "2.0.0"
        assert sorted((tmp_path / "backups" / "production").rglob("*.pgdump*")) == backups  # none for it
