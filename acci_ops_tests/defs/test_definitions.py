"""The code location's shape: names, descriptions, schedules, sensors, instance config."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from acci_ops.definitions import build_definitions
from acci_ops.settings import load_settings
from acci_ops_tests.fixtures.defs import defs_from_env

ROOT = Path(__file__).resolve().parents[2]


def test_loads_without_any_configuration():
    """A fresh checkout must load in the UI; missing secrets fail runs, not the code location."""
    defs = build_definitions(load_settings({}))
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_all_asset_keys() == [dg.AssetKey("db_backup")]


def test_module_entry_point_loads():
    from acci_ops import definitions

    dg.Definitions.validate_loadable(definitions.defs)


# Every capability on: offsite copies, validation, DR (drills and recovery), image builds, alerts.
EVERY_CAPABILITY = {
    "ACCI_OFFSITE_URL": "s3://offsite/acci",
    "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:5432/postgres",
    "ACCI_PLATFORM": "compose",  # a release platform: every domain, releases included, is built
    "ACCI_APP_URL": "http://127.0.0.1:8080",
    "ACCI_REDIS_URL": "redis://127.0.0.1:6379/0",
    "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:6379/1",
    "ACCI_SOURCE_REPO": "https://git.example.test/acci/framework.git",
    "ACCI_IMAGE_REPOSITORY": "registry.example.test/acci/framework",
    "ACCI_OPS_SOURCE_REPO": "https://git.example.test/acci/acci-ops.git",
    "ACCI_OPS_IMAGE_REPOSITORY": "registry.example.test/acci/acci-ops",
    "ACCI_ALERT_WEBHOOK_URL": "https://hooks.example.test/services/T/B/hook",
}


def everything_configured(monkeypatch) -> dg.Definitions:
    """Every capability on, so every asset, check, job, schedule and sensor exists."""
    for name, value in EVERY_CAPABILITY.items():
        monkeypatch.setenv(name, value)
    return defs_from_env()


def test_names_and_descriptions(monkeypatch):
    defs = everything_configured(monkeypatch)
    repo = defs.get_repository_def()
    jobs = {j.name: j for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert set(jobs) == {"nightly_backup", "backup_retention", "validate_backup", "scratch_cleanup",
                         "dr_drill", "disaster_recovery", "build_image", "build_ops_image", "image_cleanup",
                         "release", "rollback_release"}
    assert {s.name for s in repo.schedule_defs} == {
        "nightly_backup_schedule", "backup_retention_schedule", "scratch_cleanup_schedule",
        "dr_drill_schedule", "image_cleanup_schedule"}
    assert {s.name for s in repo.sensor_defs} == {"run_failure_alert_sensor", "backup_validation_sensor",
                                                  "source_tag_sensor", "release_production_on_new_image"}
    assert {k.to_user_string() for k in defs.resolve_all_asset_keys()} == {
        "db_backup", "db_backup_offsite", "db_backup_validated", "dr_drill", "acci_image",
        "acci_ops_image", "acci_release"}
    for job in jobs.values():
        assert job.description, job.name
    for schedule in repo.schedule_defs:
        assert schedule.description, schedule.name
    for sensor in repo.sensor_defs:
        assert sensor.description, sensor.name
    for key in defs.resolve_all_asset_keys():
        assert defs.resolve_assets_def(key).descriptions_by_key[key], key
    checks = sorted(defs.resolve_asset_graph().asset_check_keys, key=lambda c: c.to_user_string())
    assert [c.to_user_string() for c in checks] == [
        "acci_image:elf_architecture", "acci_image:image_policy", "acci_image:smoke_test",
        "acci_image:vulnerability_scan", "acci_ops_image:elf_architecture", "acci_ops_image:image_policy",
        "acci_ops_image:ops_image_smoke", "acci_ops_image:vulnerability_scan", "db_backup:restores_cleanly"]
    for check in checks:
        assert defs.resolve_asset_graph().get_check_spec(check).description, check


def test_nightly_schedule_runs_at_two_in_the_configured_zone(monkeypatch):
    monkeypatch.setenv("ACCI_TIMEZONE", "Europe/Madrid")
    defs = defs_from_env()
    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Europe/Madrid"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "nightly_backup"
    sensor = defs.resolve_sensor_def("run_failure_alert_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_schedule_tick_backs_up_the_day_that_ended(instance):
    defs = defs_from_env()
    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    tick = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick)
    result = schedule.evaluate_tick(context)
    assert [r.partition_key for r in result.run_requests] == ["2026-11-26"]


def test_backup_asset_is_late_after_26_hours(instance):
    """Dagster's own freshness evaluator (what the daemon runs) says PASS 25 h after a backup, FAIL at 26 h."""
    import asyncio

    from dagster._core.definitions.freshness import FreshnessState
    from dagster._core.definitions.freshness_evaluator import TimeWindowFreshnessPolicyEvaluator
    from dagster._core.loader import LoadingContextForTest
    from dagster._core.test_utils import freeze_time

    defs = defs_from_env()
    node = defs.resolve_asset_graph().get(dg.AssetKey("db_backup"))
    backed_up = datetime(2026, 11, 27, 2, 5, tzinfo=UTC)

    def state_at(now: datetime) -> FreshnessState:
        with freeze_time(now):
            return asyncio.run(TimeWindowFreshnessPolicyEvaluator().evaluate_freshness(
                LoadingContextForTest(instance), node))

    assert state_at(backed_up) == FreshnessState.UNKNOWN  # never backed up: nothing to judge yet
    with freeze_time(backed_up):
        instance.report_runless_asset_event(dg.AssetMaterialization("db_backup", partition="2026-11-26"))
    assert state_at(backed_up + timedelta(hours=25)) == FreshnessState.PASS
    assert state_at(backed_up + timedelta(hours=26, seconds=1)) == FreshnessState.FAIL


def test_several_environments_get_prefixed_keys(tmp_path, monkeypatch):
    path = tmp_path / "envs.yaml"
    path.write_text(
        "environments:\n"
        "  staging: {database_url_env: STAGING_DB_URL, backup_url: 's3://stage/db'}\n"
        "  production: {database_url_env: PROD_DB_URL, backup_url: 's3://prod/db', offsite: 's3://off/db'}\n"
    )
    monkeypatch.setenv("ACCI_ENVIRONMENTS_FILE", str(path))
    defs = defs_from_env()
    dg.Definitions.validate_loadable(defs)
    assert sorted(k.to_user_string() for k in defs.resolve_all_asset_keys()) == [
        "production/db_backup", "production/db_backup_offsite", "staging/db_backup"]
    job = defs.resolve_job_def("nightly_backup")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "production/db_backup", "production/db_backup_offsite", "staging/db_backup"}
    # Several environments: steps in their own processes, so one environment never waits on another.
    assert job.executor_def.name == "multi_or_in_process_executor"


def test_one_environment_nightly_job_runs_in_process(monkeypatch):
    """A subprocess per step costs ~3 s of a ~5 s nightly run (benchmarks/run_overhead.py); with one
    environment the steps run one after another anyway."""
    defs = defs_from_env()
    assert defs.resolve_job_def("nightly_backup").executor_def.name == "in_process"


def keys_of(environ: dict) -> list[str]:
    return sorted(k.to_user_string() for k in build_definitions(load_settings(environ)).resolve_all_asset_keys())


def test_asset_keys_are_prefixed_exactly_when_an_environments_file_is_used(tmp_path):
    """One rule: adding a second environment to the file renames nothing (before, a file with one
    environment, or a file plus ACCI_ENVIRONMENT, gave unprefixed keys and a second one renamed them)."""
    one = tmp_path / "one.yaml"
    one.write_text("environments:\n  production: {database_url_env: PROD_DB_URL, backup_url: 's3://prod/db'}\n")
    two = tmp_path / "two.yaml"
    two.write_text(one.read_text() + "  staging: {database_url_env: STAGING_DB_URL, backup_url: 's3://stage/db'}\n")
    assert keys_of({}) == ["db_backup"]
    assert keys_of({"ACCI_ENVIRONMENT": "staging"}) == ["db_backup"]
    assert keys_of({"ACCI_ENVIRONMENTS_FILE": str(one)}) == ["production/db_backup"]
    assert keys_of({"ACCI_ENVIRONMENTS_FILE": str(two)}) == ["production/db_backup", "staging/db_backup"]
    assert keys_of({"ACCI_ENVIRONMENTS_FILE": str(two), "ACCI_ENVIRONMENT": "production"}) == ["production/db_backup"]


SECRETS = {
    "ACCI_DATABASE_URL": "postgresql://acci:db-s3cr3t-1@db/acci",
    "ACCI_BACKUP_URL": "s3://bucket/acci",
    "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch:scratch-s3cr3t-2@db/postgres",
    "ACCI_OFFSITE_URL": "s3://offsite/acci",
    "ACCI_OFFSITE_AWS_ACCESS_KEY_ID": "offsite-key-s3cr3t-3",
    "ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY": "offsite-s3cr3t-4",
    "ACCI_BACKUP_SIGNING_KEY": "signing-s3cr3t-5-0123456789abcdef0123456789",
    "ACCI_PLATFORM": "helm",
    "ACCI_REDIS_URL": "redis://:redis-s3cr3t-6@r:6379/0",
    "ACCI_DRILL_REDIS_URL": "redis://:drill-s3cr3t-7@r:6379/1",
    "ACCI_ALERT_WEBHOOK_URL": "https://hooks.example.test/services/T/B/hook-s3cr3t-8",
}


def test_resources_hold_secrets_only_as_env_var_references():
    defs = build_definitions(load_settings(SECRETS))
    resources = defs.resources
    assert set(resources) == {"acci_env_production", "acci_validation_production", "acci_dr_production",
                              "alert_webhook"}
    env, validation = resources["acci_env_production"], resources["acci_validation_production"]
    dr, webhook = resources["acci_dr_production"], resources["alert_webhook"]
    references = {
        "ACCI_DATABASE_URL": env.database_url, "ACCI_BACKUP_URL": env.backup_url, "ACCI_BACKUP_SIGNING_KEY":
        env.signing_key, "ACCI_OFFSITE_AWS_ACCESS_KEY_ID": env.offsite.access_key_id,
        "ACCI_OFFSITE_AWS_SECRET_ACCESS_KEY": env.offsite.secret_access_key,
        "ACCI_SCRATCH_DATABASE_URL": validation.scratch_database_url, "ACCI_REDIS_URL": dr.redis_url,
        "ACCI_DRILL_REDIS_URL": dr.drill_redis_url, "ACCI_ALERT_WEBHOOK_URL": webhook.url,
    }
    for variable, value in references.items():
        assert isinstance(value, dg.EnvVar) and value.env_var_name == variable, variable
    shown = repr(resources) + str([r.model_dump() for r in resources.values()])
    assert "s3cr3t" not in shown


def test_resource_fields_come_from_the_settings_model():
    """No second declaration: each resource field has the model's default and help text."""
    from dataclasses import MISSING, fields

    from acci_ops.defs.backups.resources import AcciEnvironment
    from acci_ops.defs.dr.resources import AcciDisasterRecovery
    from acci_ops.defs.validation.resources import AcciValidation
    from acci_ops.settings import BackupSpec, DrSpec, ValidationSpec

    for resource, section in ((AcciEnvironment, BackupSpec), (AcciValidation, ValidationSpec),
                              (AcciDisasterRecovery, DrSpec)):
        for f in fields(section):
            if not f.metadata["resource"]:
                continue
            name = f.name.removesuffix("_env")
            if name != f.name and name in {g.name for g in fields(section)}:
                continue  # backup_url_env: the variable that may replace the literal backup_url
            declared = resource.model_fields[name]
            assert declared.description == f.metadata["help"], name
            if f.default is not MISSING:
                expected = list(f.default) if isinstance(f.default, tuple) else f.default
                assert declared.default == expected, name
    assert AcciDisasterRecovery.model_fields["rto_target_minutes"].default == 30
    assert AcciValidation.model_fields["jobs"].default == 2


def test_disaster_recovery_launchpad_config_keeps_its_shape(monkeypatch):
    monkeypatch.setenv("ACCI_DATABASE_URL", "postgresql://acci@127.0.0.1:5432/acci")
    monkeypatch.setenv("ACCI_BACKUP_URL", "s3://bucket/acci")
    defs = everything_configured(monkeypatch)
    job = defs.resolve_job_def("disaster_recovery")
    config = {"environment": "production", "confirm": "production", "operator": "alice", "backup_key": "",
              "skip_infrastructure": False, "allow_unvalidated_backup": False}
    assert dg.validate_run_config(job, {"ops": {"recover_environment": {"config": config}}})
    minimal = {k: config[k] for k in ("environment", "confirm", "operator")}
    assert dg.validate_run_config(job, {"ops": {"recover_environment": {"config": minimal}}})


def test_disaster_recovery_binds_the_resources_it_is_handed_as_fixed_copies():
    """DR knows no other domain: a new domain's resource, handed over as definitions.py hands the
    others', is bound fixed in disaster_recovery (its Launchpad refuses an edit) with no change to
    DR; a resource DR cannot fix is refused at load in one line naming its key."""
    from acci_ops import definitions
    from acci_ops.defs.dr import definitions as dr
    from acci_ops.lib.core.errors import ConfigError

    class ReleaseChannel(dg.ConfigurableResource):
        url: str = "https://releases.example.test"

    settings = load_settings(EVERY_CAPABILITY)
    others = {key: resource for name, part in definitions.build_domains(settings).items() if name != "dr"
              for key, resource in part.resources.items()}
    [job] = [j for j in dr.build_defs(settings, {**others, "acci_releases": ReleaseChannel()}).jobs
             if j.name == "disaster_recovery"]
    assert set(job.resource_defs) >= {*others, "acci_dr_production", "acci_releases"}
    answers = {"environment": "production", "confirm": "production", "operator": "alice"}
    with pytest.raises(dg.DagsterInvalidConfigError, match='unexpected config entry "url" at path '
                       "root:resources:acci_releases:config"):
        dg.validate_run_config(job, {"ops": {"recover_environment": {"config": answers}},
                                     "resources": {"acci_releases": {"config": {"url": "http://elsewhere"}}}})
    with pytest.raises(ConfigError) as refused:
        dr.build_defs(settings, {**others, "acci_plain": dg.ResourceDefinition.hardcoded_resource("x")})
    assert str(refused.value) == ("resource 'acci_plain' is a ResourceDefinition, not a ConfigurableResource: a "
                                  "guarded job (disaster_recovery, release) cannot bind it as the code location "
                                  "configured it")


def test_each_domain_builds_its_own_definitions(monkeypatch):
    """definitions.py only merges; every job, sensor and asset comes from one domain's build_defs."""
    from acci_ops import definitions
    from acci_ops.settings import load_settings as load

    everything_configured(monkeypatch)
    settings = load()
    owners = {}
    for name, part in definitions.build_domains(settings).items():
        for job in part.jobs or []:
            owners[job.name] = name
        for sensor in part.sensors or []:
            owners[sensor.name] = name
    assert owners == {
        "nightly_backup": "backups", "backup_retention": "backups", "validate_backup": "validation",
        "scratch_cleanup": "validation", "backup_validation_sensor": "validation", "dr_drill": "dr",
        "disaster_recovery": "dr", "run_failure_alert_sensor": "alerts", "build_image": "images",
        "build_ops_image": "images",
        "image_cleanup": "images", "source_tag_sensor": "images", "release": "releases",
        "rollback_release": "releases", "release_production_on_new_image": "releases"}


def test_only_settings_reads_the_environment():
    """Configuration is read in one place (children's environments are built from it in one other)."""
    package = ROOT / "acci_ops"
    allowed = {*(package / "settings").rglob("*.py"), package / "lib" / "core" / "commands.py"}
    readers = [str(p.relative_to(ROOT)) for p in sorted(package.rglob("*.py"))
               if p not in allowed and "dev" not in p.relative_to(package).parts[:1]
               and ("os.environ" in p.read_text() or "getenv" in p.read_text())]
    assert readers == []


def test_alert_links_use_acci_dagster_url_from_the_settings():
    webhook = build_definitions(load_settings({"ACCI_DAGSTER_URL": "https://dagster.acci.test/"})).resources[
        "alert_webhook"]
    assert webhook.url is None and webhook.run_link("r1") == "https://dagster.acci.test/runs/r1"
    assert build_definitions(load_settings({})).resources["alert_webhook"].run_link("r1") is None


def test_dagster_yaml_configures_the_local_instance(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        assert instance.run_retries_enabled
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert str(home) in instance.run_storage._conn_string  # noqa: SLF001
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_workspace_loads_with_the_dagster_cli(tmp_path):
    """What `dagster dev` loads: workspace.yaml -> acci_ops.definitions, validated by Dagster's CLI."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCI_")}
    env["DAGSTER_HOME"] = str(tmp_path)
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    cli = Path(sys.executable).parent / "dagster"
    result = subprocess.run([str(cli), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Validation successful for code location acci_ops" in result.stderr + result.stdout


# --- the snapshot of what the UI shows --------------------------------------------------------------

SNAPSHOT = Path(__file__).resolve().parent / "snapshots" / "definitions.json"
UPDATE_VARIABLE = "ACCI_OPS_UPDATE_SNAPSHOT"
_SHAPES = {"STRICT_SHAPE": "Shape", "PERMISSIVE_SHAPE": "Permissive", "SELECTOR": "Selector"}


def _config_type(snaps: dict, key: str) -> str:
    """A config type as the Launchpad offers it: ``Noneable[Union[String,Selector]]`` is a string that
    may also be ``{env: NAME}``."""
    snap = snaps[key]
    kind = snap.kind.name
    params = [_config_type(snaps, k) for k in snap.type_param_keys or ()]
    if kind == "SCALAR":
        return snap.given_name or snap.key
    if kind == "ENUM":
        return f"Enum {snap.given_name}[{'|'.join(v.value for v in snap.enum_values)}]"
    if kind in {"ARRAY", "NONEABLE", "MAP", "SCALAR_UNION"}:
        return f"{kind.title().replace('_', '')}[{','.join(params)}]"
    return _SHAPES.get(kind, kind)


def _config_fields(snaps: dict, key: str, path: str = "", *, defaults: bool = True) -> list[str]:
    """Every field under ``key``, one line each: ``path: type`` plus `` = default`` (leaves only) or
    `` (optional)``; nested shapes are flattened into dotted paths, list items into ``[]``."""
    snap = snaps[key]
    if snap.kind.name in {"ARRAY", "NONEABLE"}:
        return _config_fields(snaps, snap.type_param_keys[0], path + ("[]" if snap.kind.name == "ARRAY" else ""),
                              defaults=defaults)
    lines = []
    for field in sorted(snap.fields or (), key=lambda f: f.name):
        name = f"{path}.{field.name}" if path else field.name
        kind = _config_type(snaps, field.type_key)
        leaf = not snaps[field.type_key].fields
        if field.is_required:
            suffix = ""
        elif field.default_provided and defaults and leaf:
            suffix = f" = {field.default_value_as_json_str}"
        else:
            suffix = " (optional)"
        lines.append(f"{name}: {kind}{suffix}")
        lines += _config_fields(snaps, field.type_key, name, defaults=defaults)
    return lines


def _launchpad(job: dg.JobDefinition) -> tuple[dict[str, object], dict[str, list[str]]]:
    """The job's Launchpad shape (executor, op config lines, each resource editable, fixed or
    taking any config), and the config lines of its editable resources. Dagster's own execution and
    logger config are named by the executor only, so a Dagster upgrade does not rewrite the file."""
    snaps = job.get_config_schema_snapshot().all_config_snaps_by_key
    root = {f.name: f for f in snaps[job.run_config_schema.config_type.key].fields}
    shape: dict[str, object] = {"executor": job.executor_def.name,
                                "ops": _config_fields(snaps, root["ops"].type_key) if "ops" in root else []}
    resources: dict[str, str] = {}
    editable: dict[str, list[str]] = {}
    for field in snaps[root["resources"].type_key].fields if "resources" in root else ():
        config = {f.name: f for f in snaps[field.type_key].fields or ()}.get("config")
        lines = _config_fields(snaps, config.type_key, defaults=False) if config else []
        if lines:
            editable[field.name] = lines
            resources[field.name] = "editable"
        elif config and snaps[config.type_key].kind.name == "STRICT_SHAPE":
            resources[field.name] = "fixed"  # config: {} and nothing else
        else:
            resources[field.name] = _config_type(snaps, config.type_key) if config else "no config"
    shape["resources"] = dict(sorted(resources.items()))
    return shape, editable


def definitions_snapshot(defs: dg.Definitions) -> dict[str, object]:
    """What a reviewer should see change: asset keys (with group), checks, jobs (with their Launchpad
    shape), schedules, sensors and resource keys, each sorted."""
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    jobs, resource_config = {}, {}
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        jobs[job.name], editable = _launchpad(job)
        for key, lines in editable.items():
            resource_config.setdefault(key, lines)
    return {
        "assets": {k.to_user_string(): graph.get(k).group_name
                   for k in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string())},
        "asset_checks": sorted(c.to_user_string() for c in graph.asset_check_keys),
        "jobs": jobs,
        "schedules": {s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                               "default_status": s.default_status.name}
                      for s in sorted(repo.schedule_defs, key=lambda s: s.name)},
        "sensors": {s.name: {"type": s.sensor_type.name, "jobs": sorted(t.job_name for t in s.targets),
                             "default_status": s.default_status.name}
                    for s in sorted(repo.sensor_defs, key=lambda s: s.name)},
        "resources": sorted(defs.resources or {}),
        "resource_config": dict(sorted(resource_config.items())),
    }


def test_the_ui_names_and_launchpad_shapes_match_the_snapshot():
    """With every capability on, the asset keys, checks, jobs and their Launchpad config, schedules
    (cron, default status), sensors (default status) and resource keys are exactly those in
    snapshots/definitions.json, so any rename or new Launchpad field shows up in review as a diff of
    that file. After an intended change, rewrite it and commit it with the change:

        ACCI_OPS_UPDATE_SNAPSHOT=1 pytest acci_ops_tests/defs/test_definitions.py -k snapshot
    """
    import json
    import os

    current = definitions_snapshot(build_definitions(load_settings(EVERY_CAPABILITY)))
    text = json.dumps(current, indent=1, sort_keys=False) + "\n"
    if os.environ.get(UPDATE_VARIABLE):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.is_file(), f"no snapshot yet: run with {UPDATE_VARIABLE}=1 to write {SNAPSHOT.name}"
    assert json.loads(SNAPSHOT.read_text()) == current, (
        f"the definitions differ from {SNAPSHOT.relative_to(ROOT)}; if intended, rerun with {UPDATE_VARIABLE}=1 "
        "and commit the file")
