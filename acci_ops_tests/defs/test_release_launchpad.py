"""The release and rollback_release Launchpads refuse blank answers, undeclared environments and
resource edits by config validation, i.e. before a run exists: nothing here deploys anything."""

from __future__ import annotations

import dagster as dg
import pytest

from acci_ops_tests.fixtures.defs import defs_from_env

ANSWERS = {"environment": "production", "version": "1.4.0", "operator": "alice", "confirm": "production"}


def closed_ports_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A compose production with image builds on, every URL a closed port: nothing can be reached."""
    for name, value in {"ACCI_DATABASE_URL": "postgresql://acci@127.0.0.1:9/acci",
                        "ACCI_BACKUP_URL": f"file://{tmp_path}/backups",
                        "ACCI_PLATFORM": "compose", "ACCI_APP_URL": "http://127.0.0.1:9",
                        "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:9/1",
                        "ACCI_SOURCE_REPO": "https://git.example.test/acci.git",
                        "ACCI_IMAGE_REPOSITORY": "registry.example.test/acci/framework"}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def jobs(monkeypatch, tmp_path) -> dict[str, dg.JobDefinition]:
    """release and rollback_release as the code location builds them; no URL is ever connected to."""
    closed_ports_env(monkeypatch, tmp_path)
    defs = defs_from_env()
    return {name: defs.resolve_job_def(name) for name in ("release", "rollback_release")}


def release_config(**answers: object) -> dict:
    return {"ops": {"release_version": {"config": {**ANSWERS, **answers}}}}


def rollback_config(**answers: object) -> dict:
    base = {k: v for k, v in ANSWERS.items() if k != "version"}
    return {"ops": {"roll_back": {"config": {**base, **answers}}}}


def config_error(job: dg.JobDefinition, config: dict) -> str:
    with pytest.raises(dg.DagsterInvalidConfigError) as refused:
        dg.validate_run_config(job, config)
    return str(refused.value)


@pytest.mark.parametrize("field", ["version", "operator"])
@pytest.mark.parametrize("blank", ["", "  "])
def test_blank_release_answers_are_refused_before_a_run_exists(jobs, field, blank):
    message = config_error(jobs["release"], release_config(**{field: blank}))
    assert f"root:ops:release_version:config:{field}" in message


def test_blank_answers_say_what_to_type(jobs):
    assert "'version' must name a version" in config_error(jobs["release"], release_config(version=" "))
    assert "'operator' must name who is releasing" in config_error(jobs["release"], release_config(operator=""))
    assert "'operator' must name who is rolling back" in config_error(jobs["rollback_release"],
                                                                      rollback_config(operator=" "))


def test_an_undeclared_environment_is_refused(jobs):
    assert "root:ops:release_version:config:environment" in config_error(
        jobs["release"], release_config(environment="prod", confirm="prod"))
    assert "root:ops:roll_back:config:environment" in config_error(
        jobs["rollback_release"], rollback_config(environment="staging"))


def test_a_blank_release_creates_no_run(jobs):
    with dg.instance_for_test() as instance:
        with pytest.raises(dg.DagsterInvalidConfigError, match="config:operator"):
            jobs["release"].execute_in_process(run_config=release_config(operator=" "), instance=instance)
        assert instance.get_runs_count() == 0


@pytest.mark.parametrize(("resource", "field", "value"), [
    ("acci_dr_production", "platform", "helm"), ("acci_dr_production", "app_url", "http://elsewhere"),
    ("acci_env_production", "backup_url", "file:///tmp/elsewhere"), ("acci_images", "image_repository", "evil/x")])
def test_resources_cannot_be_changed_from_the_release_launchpads(jobs, resource, field, value):
    for name, config in (("release", release_config()), ("rollback_release", rollback_config())):
        message = config_error(jobs[name], {**config, "resources": {resource: {"config": {field: value}}}})
        assert f'unexpected config entry "{field}" at path root:resources:{resource}:config' in message


def test_valid_answers_validate(jobs):
    assert dg.validate_run_config(jobs["release"], release_config(allow_unverified=True, override_window=True))
    assert dg.validate_run_config(jobs["rollback_release"], rollback_config(to_version="1.3.0"))


def test_releases_and_rollbacks_share_one_pool(jobs):
    """Both jobs' op is in the acci_release pool (limit 1 in dagster.yaml): two never run at once."""
    for job in jobs.values():
        [node] = job.graph.node_defs
        assert node.pool == "acci_release"


@pytest.mark.parametrize("strategy", ["blue_green", "canary"])
def test_a_strategy_the_job_does_not_run_is_refused_before_anything_is_touched(monkeypatch, tmp_path, strategy):
    """An environment set to blue_green or canary is refused in one line naming the strategy, instead of
    being released with rolling behind the operator's back; it fails before the registry, the backup or
    the platform is reached (every URL here is a closed port)."""
    monkeypatch.setenv("ACCI_RELEASE_STRATEGY", strategy)
    closed_ports_env(monkeypatch, tmp_path)
    job = defs_from_env().resolve_job_def("release")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=release_config(), instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_failure_data.user_failure_data.description == (
        f"production asks for strategy {strategy}, which the release job does not run yet (its engine exists, "
        "tested on its own); set the strategy to rolling; nothing was deployed")
    assert not (tmp_path / "backups").exists()
