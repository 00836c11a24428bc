"""What an operator sees of the backup assets: the storage badge follows the
configured backup URL, asset-page backups get the same runtime limit as the nightly job, and
building the definitions emits no preview warning."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from acci_ops.settings import load_settings
from acci_ops_tests.fixtures.defs import defs_from_env


def kinds_of(defs: dg.Definitions, key: str) -> set[str]:
    asset_key = dg.AssetKey.from_user_string(key)
    return set(defs.resolve_assets_def(asset_key).specs_by_key[asset_key].kinds)


@pytest.mark.parametrize(("url", "kind", "other"), [
    ("file:///var/backups/acci", "file", "s3"),
    ("s3://bucket/acci", "s3", "file"),
    ("S3://Bucket/acci", "s3", "file"),
])
def test_backup_badge_follows_the_backup_url_variable(monkeypatch, url, kind, other):
    monkeypatch.setenv("ACCI_BACKUP_URL", url)
    kinds = kinds_of(defs_from_env(), "db_backup")
    assert kind in kinds and other not in kinds
    assert "postgres" in kinds


def test_backup_badge_from_the_environments_file(monkeypatch, tmp_path):
    env_file = tmp_path / "environments.yaml"
    env_file.write_text(
        "environments:\n"
        "  production:\n    database_url_env: PROD_DB\n    backup_url: file:///srv/backups\n"
        "    offsite: {url: s3://offsite/acci}\n"
        "  staging:\n    database_url_env: STAGING_DB\n    backup_url: s3://bucket/staging\n")
    monkeypatch.setenv("ACCI_ENVIRONMENTS_FILE", str(env_file))
    defs = defs_from_env()
    assert "s3" not in kinds_of(defs, "production/db_backup")
    assert "file" in kinds_of(defs, "production/db_backup")
    assert kinds_of(defs, "production/db_backup_offsite") == {"s3"}
    assert "s3" in kinds_of(defs, "staging/db_backup")


def test_only_the_scheme_of_the_backup_url_is_kept(monkeypatch):
    """The variable may hold credentials (s3://key:secret@...); settings keep its scheme only."""
    settings = load_settings({"ACCI_BACKUP_URL": "s3://AKIAEXAMPLE:sup3rsecret@bucket/acci"})
    assert settings.environments[0].backup.store_kind == "s3"
    assert "sup3rsecret" not in repr(settings)


def test_unknown_location_shows_no_storage_badge(monkeypatch):
    monkeypatch.delenv("ACCI_BACKUP_URL", raising=False)
    assert kinds_of(defs_from_env(), "db_backup") == {"postgres"}


def materialize_from_asset_page(instance, partition: str = "2026-11-26"):
    """What the UI's Materialize button runs: the implicit asset job, without the nightly job's tags."""
    job = defs_from_env().resolve_implicit_global_asset_job_def()
    return job.execute_in_process(asset_selection=[dg.AssetKey("db_backup")], partition_key=partition,
                                  instance=instance)


def test_asset_page_backup_gets_the_nightly_max_runtime_and_readable_sizes(single_env, instance):
    result = materialize_from_asset_page(instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    assert run.tags["dagster/max_runtime"] == str(14400 + 600)  # as nightly_backup: default limit + margin
    lines = [r.user_message for r in instance.all_logs(result.run_id)]
    (complete,) = [line for line in lines if line.startswith("backup complete:")]
    assert re.search(r"\(\d+\.\d KiB stored from \d+\.\d KiB dumped, \d+\.\d s\)$", complete), complete
    meta = result.asset_materializations_for_node("db_backup")[0].metadata
    assert isinstance(meta["stored_bytes"].value, int)  # plotted metadata stays a plain integer


def test_nightly_job_keeps_its_own_max_runtime(single_env, instance, monkeypatch):
    monkeypatch.setenv("ACCI_BACKUP_MAX_RUNTIME_SECONDS", "1200")
    job = defs_from_env().resolve_job_def("nightly_backup")
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance)
    assert result.success
    assert instance.get_run_by_id(result.run_id).tags["dagster/max_runtime"] == "1800"


def test_building_the_definitions_emits_no_preview_warning(monkeypatch, recwarn):
    """The partitioned restore check (a Dagster preview feature) must not warn at every load."""
    monkeypatch.setenv("ACCI_BACKUP_URL", "s3://bucket/acci")
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", "postgresql://scratch@127.0.0.1:5432/postgres")
    defs = defs_from_env()
    dg.Definitions.validate_loadable(defs)
    (check,) = defs.resolve_asset_graph().asset_check_keys
    assert defs.resolve_asset_graph().get(check).partitions_def is not None  # the feature is still used
    assert [str(w.message) for w in recwarn if issubclass(w.category, dg.PreviewWarning)] == []
