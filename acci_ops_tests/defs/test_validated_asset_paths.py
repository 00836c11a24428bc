"""db_backup_validated reflects every passing validation, whichever run performed it."""

from __future__ import annotations

import dagster as dg
import pytest

from acci_ops_tests.fixtures.defs import defs_from_env

VALIDATED = dg.AssetKey("db_backup_validated")


@pytest.fixture
def validating_env(single_env, monkeypatch, scratch_url):
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    return single_env


def test_materialize_db_backup_from_the_ui_marks_the_backup_validated(validating_env, instance):
    # The README's first use: Catalog -> db_backup -> Materialize runs the implicit asset job with
    # db_backup and its blocking check selected, not the validated asset.
    job = defs_from_env().resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance,
                                    asset_selection=[dg.AssetKey("db_backup")])
    assert result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed
    key = evaluation.metadata["backup_key"].value
    event = instance.get_latest_materialization_event(VALIDATED)
    assert event is not None, "db_backup_validated was not materialized after the check passed"
    materialization = event.asset_materialization
    assert materialization.partition == "2026-11-26"
    assert materialization.metadata["validated_backup_key"].value == key
    assert materialization.metadata["signed"].value is True
    assert isinstance(materialization.metadata["rpo_hours"].value, float)


def test_failed_check_does_not_mark_the_backup_validated(validating_env, instance, tmp_path, monkeypatch):
    assertions = tmp_path / "assertions.yaml"
    assertions.write_text("- name: impossible\n  sql: SELECT false\n")
    monkeypatch.setenv("ACCI_VALIDATION_ASSERTIONS_FILE", str(assertions))
    job = defs_from_env().resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(partition_key="2026-11-26", instance=instance, raise_on_error=False,
                                    asset_selection=[dg.AssetKey("db_backup")])
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed
    assert instance.get_latest_materialization_event(VALIDATED) is None


def test_nightly_run_records_the_validated_asset_once(validating_env, instance):
    # When the run also executes db_backup_validated, the check leaves the recording to it.
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, asset_selection=[dg.AssetKey("db_backup"), VALIDATED])
    assert result.success
    records = instance.fetch_materializations(VALIDATED, limit=10).records
    assert len(records) == 1
    assert records[0].event_log_entry.step_key == "db_backup_validated"
