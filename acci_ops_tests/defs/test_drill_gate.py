"""A drill given a backup_key does not skip the validation gate: it needs the same
explicit allow_unvalidated_backup as disaster_recovery. And DR's default choice with no signing key."""

from __future__ import annotations

import logging

from acci_ops_tests.fixtures.backups import TEST_SIGNING_KEY
from acci_ops_tests.fixtures.defs import defs_from_env
from acci_ops_tests.fixtures.dr import nightly  # the DR environment (dr_env) is a shared fixture


def drill(instance, **config):
    return defs_from_env().resolve_job_def("dr_drill").execute_in_process(
        instance=instance, run_config={"ops": {"run_dr_drill": {"config": config}}}, raise_on_error=False)


def failure(result) -> str:
    return result.failure_data_for_node("run_dr_drill").user_failure_data.description


def test_a_named_unvalidated_backup_needs_the_explicit_override(dr_env, instance, monkeypatch, scratch_url):
    monkeypatch.delenv("ACCI_SCRATCH_DATABASE_URL")  # taken, never validated
    key = nightly(instance)
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", scratch_url)
    refused = drill(instance, backup_key=key)
    assert not refused.success
    assert failure(refused) == f"backup {key} has not been validated; validate it first or set allow_unvalidated_backup"
    allowed = drill(instance, backup_key=key, allow_unvalidated_backup=True)
    assert allowed.success
    [materialization] = [e.event_specific_data.materialization for e in allowed.all_events
                         if e.event_type_value == "ASSET_MATERIALIZATION"]
    assert materialization.metadata["backup_key"].value == key


def test_without_a_signing_key_dr_needs_a_named_backup(dr_env, instance, monkeypatch):
    nightly(instance)  # signed and validated
    monkeypatch.delenv("ACCI_BACKUP_SIGNING_KEY")
    result = drill(instance)
    assert not result.success
    assert failure(result) == ("ACCI_BACKUP_SIGNING_KEY is not set: backups cannot be authenticated; retention deletes "
                               "nothing and DR needs an explicit backup; name the backup explicitly (backup_key) and "
                               "set allow_unvalidated_backup")
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any(w.startswith("ACCI_BACKUP_SIGNING_KEY is not set") for w in warnings)
    run = instance.get_run_by_id(result.run_id)
    assert TEST_SIGNING_KEY not in str(run.run_config) + str(run.tags)
