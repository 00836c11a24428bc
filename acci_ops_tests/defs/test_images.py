"""The Dagster side of image builds, for real: the fixture ACCI Framework repo, buildah, podman, syft,
hadolint and a docker-registry on loopback, driven through the code location's own definitions
(``build_image`` job, ``acci_image`` checks, ``source_tag_sensor``)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from acci_ops.defs.images.assets import CHECKS
from acci_ops.defs.images.sensors import plan_tick
from acci_ops.dev.fixture_app import add_tag, create_fixture_repo
from acci_ops.lib.images.gate import standard_gate
from acci_ops.lib.images.pipeline import ImageSettings
from acci_ops.lib.images.source import SourceTag
from acci_ops.lib.images.tools import ContainerTools
from acci_ops.lib.postgres.scratch import list_scratch_databases
from acci_ops.lib.postgres.urls import parse_database_url
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.image_defs import build, checks_of, failure_of, use_registry
from acci_ops_tests.fixtures.images import REGISTRY_PASSWORD, REGISTRY_USERNAME

IMAGE = dg.AssetKey("acci_image")


def test_release_is_built_checked_pushed_then_a_noop(image_env, registry, instance):
    reg = use_registry(image_env, registry, "defs/good")
    result = build(instance, "1.0.0")
    assert result.success
    checks = checks_of(result)
    assert {k: v[:2] for k, v in checks.items()} == {
        "elf_architecture": (True, "ERROR"), "smoke_test": (True, "ERROR"), "image_policy": (True, "ERROR"),
        "vulnerability_scan": (False, "WARN")}  # no scanner configured: said so, never a pass
    assert "no vulnerability scanner configured" in checks["vulnerability_scan"][2]
    [mat] = result.asset_materializations_for_node("build_acci_image")
    meta = {k: v.value for k, v in mat.metadata.items()}
    digest = meta["image_digest"]
    assert digest.startswith("sha256:") and meta["image_ref"] == f"{reg.repository}@{digest}"
    assert reg.tag_digest("1.0.0") == digest
    assert meta["source_tag"] == "v1.0.0" and len(meta["revision"]) == 40
    assert meta["platforms"] == "linux/amd64, linux/arm64"
    assert meta["size_bytes linux/arm64"] > 0 and meta["digest linux/amd64"].startswith("sha256:")
    assert meta["sbom_components"] >= 0 and f"artifact sha256-{digest[7:]}.sbom" in meta
    # The same version again: nothing built, nothing new recorded, and the run says why.
    again = build(instance, "1.0.0")
    assert again.success and again.asset_materializations_for_node("build_acci_image") == []
    logs = [entry.user_message for entry in instance.all_logs(again.run_id)]
    assert any("is already built from" in m and "nothing to do" in m for m in logs)
    # force: rebuilt from scratch, checked again, and reproducible: the same digest, no tag moved.
    forced = build(instance, "1.0.0", force=True)
    assert forced.success, failure_of(forced)
    [again_mat] = forced.asset_materializations_for_node("build_acci_image")
    assert again_mat.metadata["image_digest"].value == digest and reg.tag_digest("1.0.0") == digest


def test_a_commit_partition_is_a_non_release_build(image_env, registry, instance, fixture_repo):
    """A partition added by hand for a commit (or branch) is built from it and pushed as sha-<12 hex>
    only: never under a version tag, and marked as no release."""
    reg = use_registry(image_env, registry, "defs/non-release")
    commit = fixture_repo.commits["v1.1.0"]
    result = build(instance, commit)
    assert result.success, failure_of(result)
    [mat] = result.asset_materializations_for_node("build_acci_image")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["release"] is False and meta["source_tag"] == "(non-release build)"
    assert meta["tags"] == f"sha-{commit[:12]}" and meta["revision"] == commit
    assert reg.tag_digest(f"sha-{commit[:12]}") == meta["image_digest"] and reg.tag_digest("1.1.0") is None


def test_smoke_test_gets_private_services_never_the_validation_scratch_server(image_env, registry, instance,
                                                                            scratch_url):
    """With validation on (a scratch server holding restored backups), the smoke test still never
    uses it: the build needs only the image resource, the image got a private PostgreSQL server and
    redis-server deleted after (the check's metadata says so), and no scratch database was made."""
    use_registry(image_env, registry, "defs/throwaway")
    image_env.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    scratch = parse_database_url(scratch_url)
    before = set(list_scratch_databases(scratch))
    defs = defs_from_env()
    assert defs.resolve_assets_def(IMAGE).required_resource_keys - {"io_manager"} == {"acci_images"}
    result = build(instance, "1.0.0")
    assert result.success, failure_of(result)
    [evaluation] = [e.event_specific_data for e in result.all_events
                    if e.event_type_value == "ASSET_CHECK_EVALUATION"
                    and e.event_specific_data.check_name == "smoke_test"]
    database = evaluation.metadata["throwaway_database"].value
    assert database.startswith("a private PostgreSQL 15 server for this smoke test alone") and database.endswith(
        "deleted after")
    assert evaluation.metadata["throwaway_redis"].value.startswith("a private redis-server for this smoke test")
    assert evaluation.metadata["network"].value.startswith("none")
    assert set(list_scratch_databases(scratch)) == before


def test_a_build_under_a_storage_path_with_a_dot_component_capitals_and_spaces(image_env, registry, instance):
    """ACCI_IMAGE_STORAGE_DIR like ./run dev's default ($ROOT/.acci_dev/images) under a directory
    with capitals and a space: the smoke-tested image is run by its id, the version is pushed."""
    root = Path(tempfile.mkdtemp(prefix="acci-defs-", dir="/tmp"))  # outside pytest's root (see the smoke tests)
    storage = root / "My Dir" / ".acci_dev" / "images"
    image_env.setenv("ACCI_IMAGE_STORAGE_DIR", str(storage))
    reg = use_registry(image_env, registry, "defs/dot-dir")
    try:
        result = build(instance, "1.1.0")
        assert result.success, failure_of(result)
        assert checks_of(result)["smoke_test"][0] is True and reg.tag_digest("1.1.0")
    finally:
        ContainerTools(storage).remove_storage()
        shutil.rmtree(root, ignore_errors=True)


def test_a_hostile_partition_key_is_refused_before_git(image_env, registry, instance):
    use_registry(image_env, registry, "defs/hostile")
    result = build(instance, "--upload-pack=touch")
    assert not result.success
    assert "is not a version, branch or commit" in failure_of(result)


@pytest.mark.parametrize("version, check, cause", [
    ("1.2.0", "smoke_test", "/health"),
    ("1.3.0", "elf_architecture", "wrong architecture"),
    ("1.4.0", "image_policy", "root"),
])
def test_a_bad_version_is_blocked_and_never_tagged(image_env, registry, instance, version, check, cause):
    reg = use_registry(image_env, registry, f"defs/bad-{check}")
    result = build(instance, version)
    assert not result.success
    passed, severity, description = checks_of(result)[check]
    assert (passed, severity) == (False, "ERROR") and cause in description
    message = failure_of(result)
    assert message.startswith(f"{version}: not pushed: check {check} failed: ") and cause in message
    assert "\n" not in message
    assert result.asset_materializations_for_node("build_acci_image") == []
    assert reg.tag_digest(version) is None  # nothing pushed under the version's tag


def test_registry_password_stays_out_of_runs(image_env, auth_registry, instance):
    use_registry(image_env, auth_registry, "defs/secret")
    image_env.setenv("ACCI_REGISTRY_USERNAME", REGISTRY_USERNAME)
    image_env.setenv("ACCI_REGISTRY_PASSWORD", REGISTRY_PASSWORD)
    result = build(instance, "1.1.0")
    assert result.success, failure_of(result)
    records = instance.get_records_for_run(result.run_id).records
    dumped = json.dumps([r.event_log_entry.to_json() for r in records])
    run = instance.get_run_by_id(result.run_id)
    assert REGISTRY_PASSWORD not in dumped + json.dumps(run.run_config) + json.dumps(dict(run.tags))
    # Wrong password: one line, no secret.
    image_env.setenv("ACCI_REGISTRY_PASSWORD", "wrong-" + REGISTRY_PASSWORD)
    bad = build(instance, "1.0.0")
    message = failure_of(bad)
    assert not bad.success and "credentials" in message.lower() and REGISTRY_PASSWORD not in message


def test_sensor_adds_tags_as_partitions_and_builds_new_ones(image_env, registry, instance, tmp_path):
    fixture_repo = create_fixture_repo(tmp_path / "acci-framework")  # its own: a tag is added below
    image_env.setenv("ACCI_SOURCE_REPO", fixture_repo.url)
    use_registry(image_env, registry, "defs/sensor")
    defs = defs_from_env()
    sensor = defs.resolve_sensor_def("source_tag_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    first = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    # A fresh install builds only the newest ACCI_SOURCE_INITIAL_BUILDS (3), oldest first: the first
    # release then has earlier versions to roll back to.
    assert [r.partition_key for r in first.run_requests] == ["1.2.0", "1.3.0", "1.4.0"]
    added = first.dynamic_partitions_requests[0].partition_keys
    assert sorted(added) == ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]
    instance.add_dynamic_partitions("acci_versions", list(added))
    quiet = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
    assert quiet.run_requests == [] and not quiet.dynamic_partitions_requests
    add_tag(fixture_repo.path, "v9.0.0")
    nxt = sensor(dg.build_sensor_context(instance=instance, cursor=quiet.cursor, definitions=defs))
    assert [r.partition_key for r in nxt.run_requests] == ["9.0.0"]
    assert nxt.run_requests[0].tags["acci/source_tag"] == "v9.0.0"
    assert nxt.dynamic_partitions_requests[0].partition_keys == ["9.0.0"]


def test_sensor_first_tick_builds_as_many_as_initial_builds_says(image_env, registry, instance, tmp_path):
    fixture_repo = create_fixture_repo(tmp_path / "acci-framework")
    image_env.setenv("ACCI_SOURCE_REPO", fixture_repo.url)
    image_env.setenv("ACCI_SOURCE_INITIAL_BUILDS", "1")
    use_registry(image_env, registry, "defs/sensor-one")
    defs = defs_from_env()
    first = defs.resolve_sensor_def("source_tag_sensor")(dg.build_sensor_context(instance=instance, definitions=defs))
    assert [r.partition_key for r in first.run_requests] == ["1.4.0"]


def test_plan_tick_is_bounded_and_never_rebuilds_a_moved_tag():
    tags = [SourceTag(f"v1.{i}.0", f"1.{i}.0", f"{i:040x}") for i in range(8)]
    seen = {t.version: t.commit for t in tags[:2]}
    build, warnings, cursor = plan_tick(tags, seen, set(seen), first_tick=False, limit=3)
    assert [t.version for t in build] == ["1.2.0", "1.3.0", "1.4.0"] and warnings == []
    assert "1.5.0" not in cursor  # left for the next tick
    moved = [SourceTag("v1.0.0", "1.0.0", "f" * 40), *tags[1:2]]
    build, warnings, _ = plan_tick(moved, seen, set(seen), first_tick=False, limit=3)
    assert build == [] and warnings == [f"tag v1.0.0 moved from {'0' * 12} to {'f' * 12}; version 1.0.0 is not "
                                        "rebuilt (tags are immutable: publish a new version)"]
    hostile = [SourceTag("v1..0", "1..0", "a" * 40)]
    build, warnings, _ = plan_tick(hostile, {}, set(), first_tick=False, limit=3)
    assert build == [] and "is not a version, branch or commit" in warnings[0]


def test_the_asset_declares_exactly_the_checks_the_standard_gate_reports():
    """The asset's blocking checks are build_version's ELF check and the standard gate's, by name and in
    order: a check the gate runs is never missing from the UI, and none is declared that never reports."""
    gate = standard_gate(ImageSettings(source_repo="/nowhere", repository="127.0.0.1:1/acci/app"))
    assert list(CHECKS) == ["elf_architecture", *(check.__name__ for check in gate.checks)]


def test_no_image_definitions_without_source_and_repository():
    defs = defs_from_env()
    assert "build_image" not in {j.name for j in defs.jobs or []}


def test_executing_one_check_alone_is_refused_and_checks_always_gate(image_env, registry, instance):
    """The UI offers "Execute" on a single check: the checks judge the staged image before its push,
    so alone they are refused with one line; and a build launched without its checks still runs them
    (v1.4.0 runs as root: blocked, nothing pushed), only does not report them."""
    reg = use_registry(image_env, registry, "defs/subset")
    instance.add_dynamic_partitions("acci_versions", ["1.4.0"])
    defs = defs_from_env()
    job = defs.resolve_job_def("build_image")
    smoke_only = job.get_subset(asset_selection=set(), asset_check_selection={dg.AssetCheckKey(IMAGE, "smoke_test")})
    alone = smoke_only.execute_in_process(instance=instance, partition_key="1.4.0", raise_on_error=False)
    assert not alone.success
    assert failure_of(alone).startswith("the checks of acci_image run only as part of its build")
    no_checks = job.get_subset(asset_selection={IMAGE}, asset_check_selection=set())
    unchecked = no_checks.execute_in_process(instance=instance, partition_key="1.4.0", raise_on_error=False)
    assert not unchecked.success and checks_of(unchecked) == {}
    assert "check image_policy failed" in failure_of(unchecked) and reg.tag_digest("1.4.0") is None
