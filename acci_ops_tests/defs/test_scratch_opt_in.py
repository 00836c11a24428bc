"""The scratch-role opt-in as Dagster runs it: ACCI_SCRATCH_ALLOW_SUPERUSER reaches the validation
check through settings and the environment resource, and without it a superuser scratch role fails
the check with its one-line cause."""

from __future__ import annotations

import pytest

from acci_ops_tests.fixtures.defs import defs_from_env


@pytest.fixture
def superuser_scratch(single_env, monkeypatch, pg_server):
    monkeypatch.setenv("ACCI_SCRATCH_DATABASE_URL", pg_server.admin_url)
    monkeypatch.delenv("ACCI_SCRATCH_ALLOW_SUPERUSER", raising=False)
    return single_env


def run_nightly(instance):
    result = defs_from_env().resolve_job_def("nightly_backup").execute_in_process(
        partition_key="2026-11-26", instance=instance, raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


def test_superuser_scratch_fails_the_check_without_the_opt_in(superuser_scratch, instance):
    evaluation = run_nightly(instance)
    assert not evaluation.passed
    assert evaluation.description == (
        "restore: scratch role postgres is a superuser: a restored archive could run shell commands as it; use a "
        "role with only LOGIN CREATEDB, or set ACCI_SCRATCH_ALLOW_SUPERUSER=true to accept the risk")


def test_the_opt_in_reaches_validation(superuser_scratch, monkeypatch, instance):
    monkeypatch.setenv("ACCI_SCRATCH_ALLOW_SUPERUSER", "true")
    monkeypatch.setenv("ACCI_VALIDATION_AMCHECK", "required")
    evaluation = run_nightly(instance)
    assert evaluation.passed, evaluation.description
    assert "| amcheck | passed |" in evaluation.metadata["report"].value
