"""The ``release``, ``rollback_release`` and ``expire_blue_green`` jobs with ``strategy: blue_green``, end to end
through Dagster on real parts: the code location built from an environments file, Debian's haproxy as the
switch, docker-compose 1.29 driving a private podman API service, and the release app's versions as the image
pipeline pushed them to the session registry (``release_images``). Which version serves is read from the app
through haproxy (``/version``), never from what acci_ops believes it deployed; a bounded request loop runs
through haproxy across the release and the rollback.

The one shortcut: a version's ``acci_image`` materialization (the digest its build pushed) is reported to the
instance instead of running ``build_image`` again (that job is tested in test_images.py).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml

from acci_ops.dev.podman_service import PodmanService
from acci_ops.dev.registry import LocalRegistry
from acci_ops.dev.release_app import IMAGE_NAME, ReleaseRepo
from acci_ops.dev.release_stack import COLOR_PORT, compose_file, project_containers, remove_project
from acci_ops.dev.request_loop import RequestLoop
from acci_ops.lib.core.net import free_port
from acci_ops.lib.releases.proxy import HaproxySwitch
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.image_defs import failure_of
from acci_ops_tests.fixtures.release_images import ReleaseImages, pushed, release_metadata, served_version
from acci_ops_tests.fixtures.release_servers import need

# /health on every probe, three probes 0.3 s apart: the release app publishes its live metrics on a
# second port, which a color's own URL does not carry (the compose tests judge those metrics).
ANALYSIS = {"interval_seconds": 0.3, "count": 3, "metrics": [{"name": "health", "kind": "health"}]}


@dataclass(frozen=True)
class Stack:
    proxy_url: str
    project: str
    run_dir: Path


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, podman_service: PodmanService,
          registry: LocalRegistry, release_repo: ReleaseRepo) -> Iterator[Stack]:
    """A staging environment released blue/green on the podman service; its colors, haproxy and state
    directory are removed afterwards."""
    need("haproxy", "haproxy")
    need("docker-compose", "docker-compose")
    proxy, blue, green = free_port(), free_port(), free_port()
    project = f"bgjob-{tmp_path.name[-8:].lower().replace('_', '-')}".rstrip("-")
    run_dir = Path(tempfile.mkdtemp(prefix="bgj-"))  # short: haproxy's socket path is at most 107 characters
    color = tmp_path / "color.yml"  # one color: the release app alone on the port acci_ops gives it
    color.write_text(compose_file(COLOR_PORT, None))
    docker_config = tmp_path / "docker-config"
    docker_config.mkdir(mode=0o700)
    environments = {"environments": {"staging": {
        "database_url_env": "STAGING_DATABASE_URL", "backup_url": f"file://{tmp_path}/backups",
        "dr": {"platform": "compose", "app_url": f"http://127.0.0.1:{proxy}", "compose_project": project,
               "drill_redis_url_env": "STAGING_DRILL_REDIS_URL"},
        "releases": {"strategy": "blue_green", "blue_green_ports": [blue, green],
                     "blue_green_files": [str(color)], "blue_green_dir": str(run_dir),
                     "rollback_window_minutes": 0, "load": False, "analysis": ANALYSIS,
                     "timeout_seconds": 30}}}}
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump(environments))
    for name, value in {"ACCI_ENVIRONMENTS_FILE": str(tmp_path / "environments.yaml"),
                        "STAGING_DATABASE_URL": "postgresql://acci@127.0.0.1:9/acci",  # closed: never used here
                        "STAGING_DRILL_REDIS_URL": "redis://127.0.0.1:9/1",
                        "ACCI_BACKUP_SIGNING_KEY": TEST_SIGNING_KEY, "ACCI_SOURCE_REPO": release_repo.url,
                        "ACCI_IMAGE_REPOSITORY": registry.repository(IMAGE_NAME), "ACCI_REGISTRY_TLS_VERIFY": "false",
                        "DOCKER_HOST": podman_service.docker_host, "DOCKER_CONFIG": str(docker_config)}.items():
        monkeypatch.setenv(name, value)
    try:
        yield Stack(f"http://127.0.0.1:{proxy}", project, run_dir)
    finally:
        HaproxySwitch(run_dir / "haproxy", proxy, {"blue": ("127.0.0.1", blue), "green": ("127.0.0.1", green)}).stop()
        for color in ("blue", "green"):
            remove_project(podman_service, f"{project}-{color}")
        shutil.rmtree(run_dir, ignore_errors=True)


def run(instance: dg.DagsterInstance, job: str, **config: object) -> dg.ExecuteInProcessResult:
    op = {"release": "release_version", "rollback_release": "roll_back", "expire_blue_green": None}[job]
    run_config = {"ops": {op: {"config": {"environment": "staging", "operator": "alice", **config}}}} if op else {}
    return defs_from_env().resolve_job_def(job).execute_in_process(run_config=run_config, instance=instance,
                                                                   raise_on_error=False)


def test_blue_green_releases_switch_without_a_failed_request_roll_back_by_switching_and_expire(
        stack: Stack, release_images: ReleaseImages, podman_service: PodmanService) -> None:
    """2.0.0 goes live through haproxy; 2.1.0 is deployed to the idle color, judged there and switched to under a
    request loop with no failed request; rollback_release is a switch back to 2.0.0 under load, again without a
    failed request; expire_blue_green then removes the old color (window 0). (A version failing on the idle color
    is removed before it gets a request: test_blue_green_proxy.py on the engine, test_flow.py for the record.)"""
    v200, v210 = release_images["2.0.0"], release_images["2.1.0"]
    with dg.instance_for_test() as instance:
        pushed(instance, v200, v210)
        first = run(instance, "release", version="2.0.0")
        assert first.success, failure_of(first)
        assert served_version(stack.proxy_url) == "2.0.0"
        meta = release_metadata(instance, "staging", "2.0.0")
        assert (meta["status"], meta["strategy"], meta["image_ref"]) == ("verified", "blue_green", v200.image_ref)

        loop = RequestLoop(stack.proxy_url, total=100_000, rate=100, path="/version").start()
        second = run(instance, "release", version="2.1.0")
        switched = time.monotonic()
        time.sleep(0.5)
        loop.stop()
        assert second.success, failure_of(second)
        assert loop.failures == [], loop.failures[:5]
        assert set(loop.labels()) == {"2.0.0", "2.1.0"} and loop.labels_after(switched) == {"2.1.0"}
        meta = release_metadata(instance, "staging", "2.1.0")
        assert meta["previous_version"] == "2.0.0" and "step_analysis_seconds" not in meta  # judged once, on the color
        assert meta["verdict"] == "passed" and "health" in meta["analysis"]  # the color's measurements, shown

        back_loop = RequestLoop(stack.proxy_url, total=100_000, rate=100, path="/version").start()
        back = run(instance, "rollback_release")
        rolled = time.monotonic()
        time.sleep(0.5)
        back_loop.stop()
        assert back.success, failure_of(back)
        assert back_loop.failures == [], back_loop.failures[:5]
        assert back_loop.labels_after(rolled) == {"2.0.0"} and served_version(stack.proxy_url) == "2.0.0"
        logs = [e.user_message for e in instance.all_logs(back.run_id)]
        assert any("rolled back by switching" in m for m in logs), "the rollback was not a switch back"

        kept = f"{stack.project}-green"  # 2.1.0's color, kept for the rollback window
        assert project_containers(podman_service, kept)
        expired = run(instance, "expire_blue_green")
        assert expired.success, failure_of(expired)
        assert project_containers(podman_service, kept) == []
        assert served_version(stack.proxy_url) == "2.0.0"
