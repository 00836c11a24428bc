"""The dr_drill asset in the graph: produced by the dr_drill job its monthly schedule launches,
downstream of the validated backup it restores, with metadata that is neither duplicated nor
plotted when it does not trend."""

from __future__ import annotations

import dagster as dg
import yaml

from acci_ops.defs.dr.jobs import report_metadata
from acci_ops.lib.core.steps import StepResult
from acci_ops.lib.dr.procedures import ProcedureReport
from acci_ops_tests.fixtures.defs import defs_from_env

DR_ENV = {
    "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:5432/postgres",
    "ACCI_PLATFORM": "local",
    "ACCI_LOCAL_APP_COMMAND": "acci-framework --port {port}",
    "ACCI_REDIS_URL": "redis://127.0.0.1:6379/0",
    "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:6379/1",
}


def assert_drill_is_wired(defs: dg.Definitions, drill: dg.AssetKey, validated: dg.AssetKey) -> None:
    repo = defs.get_repository_def()
    node = repo.asset_graph.get(drill)
    assert node.is_materializable, "dr_drill must be a real asset, not an external spec"
    assert validated in node.parent_keys
    schedule = repo.get_schedule_def("dr_drill_schedule")
    assert schedule.job_name == "dr_drill"
    job = repo.get_job("dr_drill")
    assert job.is_asset_job and drill in job.asset_layer.selected_asset_keys
    assert "dr_drill_schedule" in (node.description or "") or "monthly" in (node.description or "").lower()


def test_the_schedule_materializes_the_drill_asset_downstream_of_the_validated_backup(monkeypatch):
    for name, value in DR_ENV.items():
        monkeypatch.setenv(name, value)
    defs = defs_from_env()
    assert_drill_is_wired(defs, dg.AssetKey("dr_drill"), dg.AssetKey("db_backup_validated"))


def test_each_environment_has_its_own_drill_asset_on_the_one_job(monkeypatch, tmp_path):
    dr = {"platform": "local", "local_command": "app --port {port}", "redis_url_env": "R",
          "drill_redis_url_env": "DR"}
    doc = {"environments": {name: {"database_url_env": "DB", "backup_url": f"s3://b/{name}", "dr": dr}
                            for name in ("production", "staging")}}
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("ACCI_ENVIRONMENTS_FILE", str(path))
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", DR_ENV["ACCI_SCRATCH_DATABASE_URL"])
    defs = defs_from_env()
    for name in ("production", "staging"):
        assert_drill_is_wired(defs, dg.AssetKey([name, "dr_drill"]), dg.AssetKey([name, "db_backup_validated"]))
    job = defs.get_repository_def().get_job("dr_drill")
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey(["production", "dr_drill"]),
                                                   dg.AssetKey(["staging", "dr_drill"])}


def test_drill_metadata_has_one_rto_and_no_plotted_status():
    report = ProcedureReport(kind="drill", environment="production", backup_key="production/x.dump.zst",
                             platform="local", ok=True, rto_seconds=3.2, rpo_seconds=5400.0,
                             rto_target_seconds=1800, rpo_target_seconds=93600, health_status=200,
                             steps=[StepResult("restore", "passed", 1.25)])
    metadata = report_metadata(report, "s3://b/acci/drills/production/r.json")
    assert "rto_minutes" not in metadata
    assert isinstance(metadata["rto_seconds"], float) and metadata["rto_seconds"] == 3.2
    assert metadata["rpo_hours"] == 1.5
    # A status code is not a trend: text (or absent), never a number the UI plots.
    assert "health_status" not in metadata or isinstance(metadata["health_status"], (str, dg.MetadataValue))
    assert not isinstance(metadata.get("health_status"), (int, float, dg.IntMetadataValue, dg.FloatMetadataValue))
