"""The disaster_recovery Launchpad refuses empty answers and resource edits by config validation,
i.e. before a run exists: nothing here reaches an op, a database or a store."""

from __future__ import annotations

import dagster as dg
import pytest

from acci_ops_tests.fixtures.defs import defs_from_env

ANSWERS = {"environment": "production", "confirm": "production", "operator": "alice"}


@pytest.fixture
def dr_job(monkeypatch, tmp_path) -> dg.JobDefinition:
    """disaster_recovery as the code location builds it; the URLs are never connected to."""
    for name, value in {"ACCI_DATABASE_URL": "postgresql://acci@127.0.0.1:9/acci",
                        "ACCI_BACKUP_URL": f"file://{tmp_path}/backups",
                        "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:9/postgres",
                        "ACCI_PLATFORM": "local", "ACCI_LOCAL_APP_COMMAND": "true",
                        "ACCI_REDIS_URL": "redis://127.0.0.1:9/0",
                        "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:9/1"}.items():
        monkeypatch.setenv(name, value)
    return defs_from_env().resolve_job_def("disaster_recovery")


def run_config(**answers: object) -> dict:
    return {"ops": {"recover_environment": {"config": {**ANSWERS, **answers}}}}


def config_error(job: dg.JobDefinition, config: dict) -> str:
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(job, config)
    return str(refused.value)


@pytest.mark.parametrize("field", ["environment", "confirm", "operator"])
@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_answers_are_refused_by_config_validation(dr_job, field, blank):
    message = config_error(dr_job, run_config(**{field: blank}))
    assert f"root:ops:recover_environment:config:{field}" in message


def test_blank_answer_creates_no_run(dr_job):
    """execute_in_process refuses it while checking the config: no run is recorded, no op started."""
    with dg.instance_for_test() as instance:
        with pytest.raises(dg.DagsterInvalidConfigError, match="config:operator"):
            dr_job.execute_in_process(run_config=run_config(operator=" "), instance=instance)
        assert instance.get_runs_count() == 0


def test_blank_answers_say_what_to_type(dr_job):
    assert "'operator' must name who is launching this" in config_error(dr_job, run_config(operator=" "))
    assert "'confirm' must be the environment's name" in config_error(dr_job, run_config(confirm=""))
    assert "not in enum type" in config_error(dr_job, run_config(environment="  "))


def test_an_undeclared_environment_is_refused(dr_job):
    assert "root:ops:recover_environment:config:environment" in config_error(
        dr_job, run_config(environment="prod", confirm="prod"))


def test_valid_answers_validate(dr_job):
    assert dg.validate_run_config(dr_job, run_config()).get("ops")
    assert dg.validate_run_config(dr_job, run_config(backup_key="production/x.dump.zst", skip_infrastructure=True))


@pytest.mark.parametrize(("resource", "field", "value"), [
    ("acci_dr_production", "platform", "helm"), ("acci_dr_production", "app_url", "http://elsewhere"),
    ("acci_env_production", "backup_url", "file:///tmp/elsewhere"), ("alert_webhook", "url", "http://elsewhere")])
def test_resources_cannot_be_changed_from_the_launchpad(dr_job, resource, field, value):
    config = {**run_config(), "resources": {resource: {"config": {field: value}}}}
    message = config_error(dr_job, config)
    assert f'unexpected config entry "{field}" at path root:resources:{resource}:config' in message


MISSING = object()


def scaffold(job: dg.JobDefinition, key: str) -> object:
    """What the Launchpad's "Scaffold missing config" writes (dagster-webserver 1.13's scaffoldType):
    a composite's required fields; an Enum's values joined by '|'; a scalar union as its scalar; a
    builtin scalar as '', 0 or true; any other scalar (ours) nothing, so the field stays missing."""
    snap = job.get_config_schema_snapshot().all_config_snaps_by_key[key]
    if snap.kind.value == "SCALAR_UNION":
        return scaffold(job, snap.scalar_type_key)
    if snap.fields is not None:
        values = {f.name: scaffold(job, f.type_key) for f in snap.fields if f.is_required}
        return {name: value for name, value in values.items() if value is not MISSING}
    if snap.enum_values:
        return "|".join(v.value for v in snap.enum_values)
    return {"String": "", "Int": 0, "Float": 0, "Bool": True}.get(key, MISSING)


def test_scaffolded_config_has_no_resources_and_is_refused(dr_job):
    scaffolded = scaffold(dr_job, dr_job.run_config_schema.config_type.key)
    assert scaffolded == {"ops": {"recover_environment": {"config": {"environment": "production"}}}}
    assert "Missing required config entries ['confirm', 'operator']" in config_error(dr_job, scaffolded)
    for answer in ("confirm", "operator"):  # and what a person then types without thinking
        scaffolded["ops"]["recover_environment"]["config"][answer] = ""
    message = config_error(dr_job, scaffolded)
    assert "config:confirm" in message and "config:operator" in message


def test_no_resource_of_the_job_takes_config(dr_job):
    """Every resource's config shape is empty: platform, URLs and the webhook come from settings."""
    snaps = dr_job.get_config_schema_snapshot().all_config_snaps_by_key
    root = snaps[dr_job.run_config_schema.config_type.key]
    [resources] = [f for f in root.fields if f.name == "resources"]
    entries = [e for e in snaps[resources.type_key].fields if e.name != "io_manager"]  # Dagster's own
    assert {e.name for e in entries} == {"acci_env_production", "acci_validation_production", "acci_dr_production",
                                         "alert_webhook"}
    for entry in entries:
        [config] = [f for f in snaps[entry.type_key].fields if f.name == "config"]
        assert snaps[config.type_key].fields == [], entry.name

