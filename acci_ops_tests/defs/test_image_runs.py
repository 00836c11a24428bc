"""How build_image runs are bounded and kept honest in Dagster: the commit a sensor saw is the one
built, runs are one at a time and have a max runtime, a no-op that completes a missing tag still
materializes, and image_cleanup removes what killed builds left. Real fixture repo, buildah, podman
and docker-registry on loopback (see test_images.py)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import yaml

from acci_ops.defs.images.assets import POOL, REVISION_TAG
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.image_defs import build, failure_of, use_registry

ROOT = Path(__file__).resolve().parents[2]


def test_a_tag_moved_after_the_sensor_saw_it_is_not_built(image_env, registry, instance):
    """The run carries the sensor's commit; when the tag now names another one, nothing is built or pushed."""
    reg = use_registry(image_env, registry, "runs/moved")
    instance.add_dynamic_partitions("acci_versions", ["1.0.0"])
    job = defs_from_env().resolve_job_def("build_image")
    result = job.execute_in_process(instance=instance, partition_key="1.0.0", raise_on_error=False,
                                    tags={REVISION_TAG: "0123456789ab" + "0" * 28})
    assert not result.success
    message = failure_of(result)
    assert "the sensor saw 0123456789ab" in message and "not built" in message, message
    assert reg.tag_digest("1.0.0") is None


def test_build_runs_are_one_at_a_time_and_have_a_max_runtime(image_env, registry):
    """The asset is in a pool the instance limits to one, and the job carries dagster/max_runtime."""
    use_registry(image_env, registry, "runs/bounded")
    image_env.setenv("ACCI_IMAGE_BUILD_TIMEOUT_SECONDS", "600")
    image_env.setenv("ACCI_IMAGE_SMOKE_TIMEOUT_SECONDS", "30")
    defs = defs_from_env()
    [node] = [n for n in defs.resolve_job_def("build_image").graph.node_defs if n.name == "build_acci_image"]
    assert node.pool == POOL
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert defs.resolve_job_def("build_image").tags["dagster/max_runtime"] == str(600 + 30 + 1800)


def test_a_noop_that_completes_a_missing_tag_materializes(image_env, registry, instance):
    """A version already pushed without `latest` (the setting was off): the next run adds `latest`
    without building and reports it as a materialization with `completed`."""
    reg = use_registry(image_env, registry, "runs/latest")
    first = build(instance, "1.0.0")
    assert first.success
    assert reg.tag_digest("latest") is None
    image_env.setenv("ACCI_IMAGE_LATEST_TAG", "true")
    second = build(instance, "1.0.0")
    assert second.success
    [mat] = second.asset_materializations_for_node("build_acci_image")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["completed"] == "latest"
    assert reg.tag_digest("latest") == reg.tag_digest("1.0.0") == meta["image_digest"]


def test_image_cleanup_removes_what_a_killed_build_left(image_env, registry, instance,
                                                        container_tools: ContainerTools):
    """image_cleanup (scheduled daily, on by default) removes a stale build directory and keeps a
    recent one; its metadata counts what it removed."""
    use_registry(image_env, registry, "runs/cleanup")
    defs = defs_from_env()
    schedule = defs.resolve_schedule_def("image_cleanup_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    stale = container_tools.base / "build-00000000deadbeef"
    (stale / "src").mkdir(parents=True)
    then = time.time() - 3 * 86400
    os.utime(stale, (then, then))
    recent = container_tools.base / "build-00000000feedf00d"
    recent.mkdir()
    try:
        result = defs.resolve_job_def("image_cleanup").execute_in_process(instance=instance)
        assert result.success
        assert not stale.exists() and recent.exists()
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {k: v.value for k, v in output.event_specific_data.metadata.items()}
        assert metadata["removed"] >= 1 and str(stale) in metadata["what"]
    finally:
        for path in (stale, recent):
            shutil.rmtree(path, ignore_errors=True)
