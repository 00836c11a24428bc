"""The release and rollback_release Launchpads refuse blank answers, undeclared environments and
resource edits by config validation, i.e. before a run exists: nothing here deploys anything."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from acci_ops.defs._shared import resource_key
from acci_ops.defs.dr.resources import dr_resource
from acci_ops.defs.releases.plans import deployer
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.releases.analysis import Target
from acci_ops.lib.releases.blue_green import BlueGreenRelease
from acci_ops.lib.releases.canary import CanaryRelease
from acci_ops.lib.releases.compose_release import ComposeRelease
from acci_ops.settings import load_settings
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


@pytest.mark.parametrize("strategy, platform, needs",
                         [("blue_green", "helm", "compose"), ("canary", "compose", "helm")])
def test_a_strategy_on_a_platform_it_cannot_run_on_is_refused_when_the_code_location_loads(
        monkeypatch, tmp_path, strategy, platform, needs):
    """blue_green needs Compose and canary Helm: the code location refuses to load, naming the environment,
    the strategy and its platform, instead of failing at 3 a.m. at the first release."""
    closed_ports_env(monkeypatch, tmp_path)
    monkeypatch.setenv("ACCI_PLATFORM", platform)
    monkeypatch.setenv("ACCI_RELEASE_STRATEGY", strategy)
    with pytest.raises(ConfigError) as raised:
        defs_from_env()
    assert str(raised.value) == (
        f"environment 'production': release strategy {strategy} needs the {needs} platform, and its releases "
        f"deploy with {platform}; use rolling, or {'canary' if platform == 'helm' else 'blue_green'} on {platform}")


def _deployer_for(monkeypatch, tmp_path, **env: str):  # noqa: ANN202
    """The release job's deployer for production as the settings in ``env`` make it, and what the
    analysis it was given was asked to measure."""
    closed_ports_env(monkeypatch, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    spec = next(s for s in load_settings().environments if s.name == "production")
    context = SimpleNamespace(resources=SimpleNamespace(**{resource_key("dr", spec.name): dr_resource(spec)}))
    asked: list[Target] = []
    target = deployer(context, spec, 120, analyse=lambda t: asked.append(t) or "passed")
    return target, asked


def test_releases_go_to_their_own_compose_files_when_dr_drives_another_platform(monkeypatch, tmp_path):
    """With releases.compose_files (DR being a local process here), releases deploy with that Compose project
    on the releases section's app URL, and the environment releases at all; DR's local platform is untouched."""
    stack = tmp_path / "app.yml"
    stack.write_text("services:\n  app:\n    image: acci/app:latest\n")
    target, _ = _deployer_for(monkeypatch, tmp_path, ACCI_PLATFORM="local", ACCI_LOCAL_APP_COMMAND="true",
                              ACCI_RELEASE_COMPOSE_FILES=str(stack), ACCI_RELEASE_COMPOSE_PROJECT="dev-production",
                              ACCI_RELEASE_APP_URL="http://127.0.0.1:18180")
    assert isinstance(target, ComposeRelease) and not isinstance(target, BlueGreenRelease)
    assert (target.project, tuple(target.files), target.app_url) == ("dev-production", (str(stack),),
                                                                      "http://127.0.0.1:18180")
    defs = defs_from_env()
    assert defs.resolve_job_def("release") is not None
    assert defs.resolve_assets_def(dg.AssetKey("acci_release")) is not None


@pytest.mark.parametrize("env, message", [
    ({"ACCI_RELEASE_APP_URL": ""}, "environment 'production': releases.compose_files needs releases.app_url (where "
                                   "that project serves the app, judged by the analysis)"),
    ({"ACCI_RELEASE_APP_URL": "http://127.0.0.1:18180", "ACCI_RELEASE_COMPOSE_FILES": "/nonexistent/app.yml"},
     "Compose file /nonexistent/app.yml not found")])
def test_release_compose_files_without_an_app_url_or_that_do_not_exist_stop_the_load(monkeypatch, tmp_path, env,
                                                                                        message):
    """Refused when the code location loads, in one line, not at the first release."""
    closed_ports_env(monkeypatch, tmp_path)
    stack = tmp_path / "app.yml"
    stack.write_text("services:\n  app:\n    image: acci/app:latest\n")
    for name, value in {"ACCI_PLATFORM": "local", "ACCI_LOCAL_APP_COMMAND": "true", "ACCI_APP_URL": "",
                        "ACCI_RELEASE_COMPOSE_FILES": str(stack), **env}.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as raised:
        defs_from_env()
    assert str(raised.value) == message


def test_blue_green_is_built_from_the_environment_settings(monkeypatch, tmp_path):
    """Each color is the environment's Compose project with -blue/-green, running the shipped app-only file
    (both colors share the one database), on the configured 127.0.0.1 ports; haproxy takes the app URL's
    port; its state lives under DAGSTER_HOME; the idle color is judged on its own port."""
    home = Path(tempfile.mkdtemp(prefix="dh-"))  # short: haproxy's socket path is at most 107 characters
    home.rmdir()  # only its name is used: nothing is created before a deploy
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    target, asked = _deployer_for(monkeypatch, tmp_path, ACCI_RELEASE_STRATEGY="blue_green",
                                  ACCI_APP_URL="http://127.0.0.1:18080", ACCI_COMPOSE_PROJECT="acci",
                                  ACCI_RELEASE_BLUE_GREEN_PORTS="18081,18082",
                                  ACCI_RELEASE_PROMETHEUS_URL="http://127.0.0.1:9")
    assert isinstance(target, BlueGreenRelease)
    assert (target.project, target.proxy_port, dict(target.ports)) == ("acci", 18080, {"blue": 18081, "green": 18082})
    assert target.run_dir == str(home / "acci_ops" / "blue_green" / "production")
    assert [Path(f).name for f in target.files] == ["docker-compose.blue-green.yml"] and Path(target.files[0]).is_file()
    assert {c: t.project for c, t in target.colors.items()} == {"blue": "acci-blue", "green": "acci-green"}
    assert target.rollback_window_minutes == 30 and target.timeout_seconds == 120
    target.analyse(Target("http://127.0.0.1:18082"))
    assert [(t.app_url, t.metrics_url, t.prometheus_url) for t in asked] == [
        ("http://127.0.0.1:18082", "http://127.0.0.1:18082/metrics", "http://127.0.0.1:9")]


def test_blue_green_without_a_state_directory_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(dg.Failure) as raised:
        _deployer_for(monkeypatch, tmp_path, ACCI_RELEASE_STRATEGY="blue_green")
    assert raised.value.description == (
        "production: environment 'production' releases blue_green but neither ACCI_RELEASE_BLUE_GREEN_DIR nor "
        "DAGSTER_HOME is set: name a persistent directory for haproxy and the switch record")


def test_canary_is_built_with_the_environment_steps_and_judges_each_where_users_reach_the_app(monkeypatch, tmp_path):
    target, asked = _deployer_for(monkeypatch, tmp_path, ACCI_PLATFORM="helm", ACCI_RELEASE_STRATEGY="canary",
                                  ACCI_APP_URL="http://acci.example.test", ACCI_RELEASE_CANARY_STEPS="5,25,100",
                                  ACCI_RELEASE_METRICS_URL="http://acci.example.test:9100/metrics")
    assert isinstance(target, CanaryRelease) and target.steps == (5, 25, 100) and target.timeout_seconds == 120
    target.analyse(25)
    assert [(t.app_url, t.metrics_url) for t in asked] == [
        ("http://acci.example.test", "http://acci.example.test:9100/metrics")]
