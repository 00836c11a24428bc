"""The sensors that release by themselves, evaluated as the daemon evaluates them: against a real instance
(the first environment's sensor reads acci_image materializations from its event log) and the signed
release ledger in a real ``file://`` backup store (the promotion sensor reads what was verified, and when).
The daemon launching such a run on containers is ``./run dev``'s (test_run_dev.py); here, every decision:
what is released, with which Launchpad answers, and what holds a promotion back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from acci_ops.lib.backup.signing import Keyring
from acci_ops.lib.releases.ledger import ReleaseLedger, ReleaseRecord
from acci_ops.lib.storage.objectstore import FileStore
from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.defs import defs_from_env

REF = "registry.example.test/acci/framework@sha256:" + "ab" * 32


def environments_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, production: dict | None = None) -> None:
    """staging then production, compose platforms on closed ports: nothing can be deployed or reached."""
    stack = tmp_path / "stack.yml"
    stack.write_text("services:\n  app:\n    image: acci/app:latest\n")
    body = {}
    for name, port in (("staging", 9), ("production", 10)):
        body[name] = {"database_url_env": "ACCI_TEST_DATABASE_URL", "backup_url": f"file://{tmp_path}/backups",
                      "dr": {"platform": "compose", "app_url": f"http://127.0.0.1:{port}", "compose_project": name,
                             "compose_files": [str(stack)], "drill_redis_url_env": "ACCI_TEST_DRILL_REDIS"}}
    body["production"]["releases"] = production or {}
    (tmp_path / "environments.yaml").write_text(yaml.safe_dump({"environments": body,
                                                                "promotion_order": ["staging", "production"]}))
    for name, value in {"ACCI_ENVIRONMENTS_FILE": str(tmp_path / "environments.yaml"),
                        "ACCI_TEST_DATABASE_URL": "postgresql://acci@127.0.0.1:9/acci",
                        "ACCI_TEST_DRILL_REDIS": "redis://127.0.0.1:9/1", "ACCI_BACKUP_SIGNING_KEY": TEST_SIGNING_KEY,
                        "ACCI_SOURCE_REPO": "https://git.example.test/acci.git",
                        "ACCI_IMAGE_REPOSITORY": "registry.example.test/acci/framework"}.items():
        monkeypatch.setenv(name, value)


def built(instance: dg.DagsterInstance, version: str, partition: bool = True) -> None:
    """An acci_image materialization, as build_image records a version whose checks passed."""
    instance.add_dynamic_partitions("acci_versions", [version])
    instance.report_runless_asset_event(dg.AssetMaterialization(
        dg.AssetKey("acci_image"), partition=version if partition else None, metadata={"image_ref": REF}))


def tick(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, cursor: str | None = None):  # noqa: ANN201
    sensor = defs.resolve_sensor_def(name)
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs, resources=defs.resources)
    return sensor.evaluate_tick(context)


def verified(tmp_path: Path, environment: str, version: str, minutes_ago: float, verdict: str = "passed") -> None:
    """A signed ledger record: ``version``'s analysis on ``environment`` finished ``minutes_ago``."""
    finished = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    ledger = ReleaseLedger(FileStore(str(tmp_path / "backups")), Keyring.from_secret(TEST_SIGNING_KEY))
    ledger.record(ReleaseRecord(environment=environment, version=version, image_ref=REF, kind="release",
                                strategy="rolling", verdict=verdict, reason=f"{verdict} analysis",
                                started_at=finished - timedelta(minutes=1), finished_at=finished, operator="ana",
                                rolled_back=False))


def test_each_new_image_becomes_one_release_run_to_staging_with_valid_launchpad_answers(monkeypatch, tmp_path):
    """A built version becomes a run request of the release job for staging, confirmed with the
    environment's name, its answers valid for the job; the same materialization is never requested twice,
    a rebuild (another materialization) is; a materialization without a version releases nothing. The
    sensor is on by default for staging, the first environment."""
    environments_file(monkeypatch, tmp_path)
    defs = defs_from_env()
    sensor = defs.resolve_sensor_def("release_staging_on_new_image")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    with dg.instance_for_test() as instance:
        built(instance, "2.6.0")
        first = tick(defs, "release_staging_on_new_image", instance)
        [request] = first.run_requests
        assert request.run_config == {"ops": {"release_version": {"config": {
            "environment": "staging", "version": "2.6.0", "operator": "sensor release_staging_on_new_image",
            "confirm": "staging"}}}}
        assert request.tags["acci/release-environment"] == "staging"
        assert dg.validate_run_config(defs.resolve_job_def("release"), request.run_config)

        assert tick(defs, "release_staging_on_new_image", instance, first.cursor).run_requests == []
        built(instance, "2.6.0")
        [again] = tick(defs, "release_staging_on_new_image", instance, first.cursor).run_requests
        assert again.run_key != request.run_key

        later = tick(defs, "release_staging_on_new_image", instance, first.cursor)
        built(instance, "2.7.0", partition=False)
        unversioned = tick(defs, "release_staging_on_new_image", instance, later.cursor)
        assert unversioned.run_requests == []
        assert unversioned.cursor != later.cursor  # the materialization was read, and refused


def test_production_promotion_is_off_by_default_and_waits_for_the_soak(monkeypatch, tmp_path):
    """Production, protected, promotes nothing by itself unless turned on; turned on, a version verified on
    staging 10 minutes ago waits (one line saying until when), and the same version verified 61 minutes ago
    becomes a release run confirmed with production's name."""
    environments_file(monkeypatch, tmp_path, {"automatic": True})
    defs = defs_from_env()
    assert defs.resolve_sensor_def("promote_to_production").default_status == dg.DefaultSensorStatus.RUNNING
    monkeypatch.setenv("ACCI_ENVIRONMENTS_FILE", str(tmp_path / "off.yaml"))
    off = yaml.safe_load((tmp_path / "environments.yaml").read_text())
    off["environments"]["production"]["releases"] = {}
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(off))
    assert defs_from_env().resolve_sensor_def("promote_to_production").default_status == \
        dg.DefaultSensorStatus.STOPPED

    with dg.instance_for_test() as instance:
        verified(tmp_path, "staging", "2.6.0", minutes_ago=10)
        waiting = tick(defs, "promote_to_production", instance)
        assert waiting.run_requests == [] and waiting.skip_message.startswith(
            "version 2.6.0 has soaked on staging for 10 of the 60 minutes required")
        assert "it may be promoted from" in waiting.skip_message

    (tmp_path / "backups").rename(tmp_path / "backups-young")
    with dg.instance_for_test() as instance:
        verified(tmp_path, "staging", "2.6.0", minutes_ago=61)
        [request] = tick(defs, "promote_to_production", instance).run_requests
        assert request.run_config["ops"]["release_version"]["config"] == {
            "environment": "production", "version": "2.6.0", "operator": "sensor promote_to_production",
            "confirm": "production"}
        assert dg.validate_run_config(defs.resolve_job_def("release"), request.run_config)


def test_a_deny_window_holds_a_promotion_and_a_failed_reanalysis_removes_the_verification(monkeypatch, tmp_path):
    """A soaked, verified version is held by production's deny window (the skip says which window); and once
    a later analysis of it on staging failed, it is no longer verified there and nothing is promoted."""
    environments_file(monkeypatch, tmp_path, {"automatic": True, "soak_minutes": 0,
                                              "windows": {"deny": ["mon-sun 00:00-24:00"]}})
    defs = defs_from_env()
    with dg.instance_for_test() as instance:
        verified(tmp_path, "staging", "2.6.0", minutes_ago=120)
        held = tick(defs, "promote_to_production", instance)
        assert held.run_requests == [] and "inside deny window 'mon-sun 00:00-24:00'" in held.skip_message

        verified(tmp_path, "staging", "2.6.0", minutes_ago=1, verdict="failed")
        refused = tick(defs, "promote_to_production", instance)
        assert refused.run_requests == [] and refused.skip_message == "no version is verified on staging"
