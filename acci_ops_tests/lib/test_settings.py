"""Environment configuration: one environment from variables, several from a YAML file."""

from __future__ import annotations

import pytest

from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import load_settings

FILE = """
timezone: Europe/Madrid
environments:
  staging:
    database_url_env: STAGING_DATABASE_URL
    backup_url: s3://acci-staging/db
    retention: {daily: 3, weekly: 2, monthly: 1}
  production:
    database_url_env: PRODUCTION_DATABASE_URL
    backup_url: s3://acci-prod/db
    sse: sse-kms
    kms_key_id: alias/acci
    offsite:
      url: s3://acci-prod-offsite/db
      endpoint_url: https://r2.example.test
      access_key_id_env: OFFSITE_KEY
      secret_access_key_env: OFFSITE_SECRET
"""


def test_single_environment_defaults():
    settings = load_settings({})
    assert [e.name for e in settings.environments] == ["production"]
    spec = settings.environments[0]
    assert spec.backup.database_url_env == "ACCI_DATABASE_URL" and spec.backup.backup_url_env == "ACCI_BACKUP_URL"
    assert settings.timezone == "UTC" and settings.from_file is None
    assert (spec.backup.retention.daily, spec.backup.retention.weekly, spec.backup.retention.monthly) == (7, 4, 12)


def test_single_environment_from_variables():
    settings = load_settings({"ACCI_ENVIRONMENT": "staging", "ACCI_TIMEZONE": "America/New_York",
                              "ACCI_RETENTION_DAILY": "3", "ACCI_OFFSITE_URL": "s3://off/x"})
    assert settings.environments[0].name == "staging"
    assert settings.environments[0].backup.retention.daily == 3
    assert settings.environments[0].backup.offsite.url == "s3://off/x"
    assert settings.timezone == "America/New_York"


def test_several_environments_from_file(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text(FILE)
    settings = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert settings.from_file == str(path) and [e.name for e in settings.environments] == ["staging", "production"]
    assert settings.timezone == "Europe/Madrid"
    prod = settings.environment("production")
    assert prod.backup.sse == "sse-kms" and prod.backup.offsite.access_key_id_env == "OFFSITE_KEY"
    assert settings.environment("staging").backup.retention.monthly == 1


def test_file_with_one_selected_environment(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text(FILE)
    settings = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_ENVIRONMENT": "staging"})
    assert [e.name for e in settings.environments] == ["staging"]


def test_unknown_environment_name(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text(FILE)
    with pytest.raises(ConfigError, match=r"^unknown environment 'prod'; declared: staging, production$"):
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_ENVIRONMENT": "prod"})


@pytest.mark.parametrize(
    "text,expected",
    [
        ("environments: [", "is not valid YAML at line 1"),
        ("envs: {}", "must have a non-empty 'environments:' mapping"),
        ("environments:\n  Prod:\n    database_url_env: X\n    backup_url: s3://b/p\n", "must be lowercase"),
        ("environments:\n  prod:\n    backup_url: s3://b/p\n", "lacks database_url_env"),
        ("environments:\n  prod:\n    database_url_env: postgresql://u:p@h/db\n    backup_url: s3://b/p\n",
         "must be the NAME of an environment variable"),
        ("environments:\n  prod:\n    database_url_env: X\n    backup_url: s3://b/p\n    bucket: y\n",
         "unknown keys ['bucket']"),
    ],
)
def test_malformed_files(tmp_path, text, expected):
    path = tmp_path / "envs.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert expected in str(failure.value)


def test_missing_file_and_bad_timezone(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(tmp_path / "nope.yaml")})
    with pytest.raises(ConfigError, match="'Mars/Olympus' is not a known IANA time zone"):
        load_settings({"ACCI_TIMEZONE": "Mars/Olympus"})


def test_dr_settings_from_variables():
    env = {"ACCI_PLATFORM": "helm", "ACCI_DRILL_REDIS_URL": "redis://r/5", "ACCI_REDIS_URL": "redis://r/0",
           "ACCI_APP_URL": "https://api.acci.test", "ACCI_REQUIRED_METRICS": "acci_up, http_requests_total",
           "ACCI_HELM_NAMESPACE": "acci-prod", "ACCI_RTO_TARGET_MINUTES": "15"}
    dr = load_settings(env).environments[0].dr
    assert dr.platform == "helm" and dr.helm_namespace == "acci-prod" and dr.rto_target_minutes == 15
    assert dr.required_metrics == ("acci_up", "http_requests_total")
    assert dr.redis_url_env == "ACCI_REDIS_URL" and dr.drill_redis_url_env == "ACCI_DRILL_REDIS_URL"
    assert load_settings({}).environments[0].dr is None


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"ACCI_PLATFORM": "k8s", "ACCI_DRILL_REDIS_URL": "redis://r/5"},
         "platform 'k8s' is not a backend; use one of local, helm, compose"),
        ({"ACCI_PLATFORM": "local", "ACCI_DRILL_REDIS_URL": "redis://r/5"},
         "the local platform needs ACCI_LOCAL_APP_COMMAND"),
        ({"ACCI_PLATFORM": "helm"}, "DR needs a Redis for drills: set ACCI_DRILL_REDIS_URL"),
        ({"ACCI_PLATFORM": "helm", "ACCI_DRILL_REDIS_URL": "redis://r/5", "ACCI_RTO_TARGET_MINUTES": "soon"},
         "ACCI_RTO_TARGET_MINUTES='soon' must be a number"),
    ],
)
def test_bad_dr_settings(env, expected):
    with pytest.raises(ConfigError) as failure:
        load_settings(env)
    assert expected in str(failure.value)


PASTED = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzEXAMPLEKEY"

ENV_FIELDS = {
    "database_url_env": "  database_url_env: {v}\n",
    "scratch_database_url_env": "  database_url_env: PROD_DB\n  scratch_database_url_env: {v}\n",
    "offsite.access_key_id_env": "  database_url_env: PROD_DB\n  offsite:\n    url: s3://off/x\n"
                                 "    access_key_id_env: {v}\n",
    "offsite.secret_access_key_env": "  database_url_env: PROD_DB\n  offsite:\n    url: s3://off/x\n"
                                     "    secret_access_key_env: {v}\n",
    "dr.redis_url_env": "  database_url_env: PROD_DB\n  dr:\n    platform: helm\n    drill_redis_url_env: DRILL\n"
                        "    redis_url_env: {v}\n",
    "dr.drill_redis_url_env": "  database_url_env: PROD_DB\n  dr:\n    platform: helm\n    drill_redis_url_env: {v}\n",
}


@pytest.mark.parametrize("field", sorted(ENV_FIELDS))
@pytest.mark.parametrize("pasted", [PASTED, "postgresql://acci:Tr0ub4dor-zq93@db/acci", "redis://:s3cr3t-r3d1s@r:6379/0",
                                    "12345678901234567890", "has space"])
def test_env_fields_must_be_variable_names_and_the_value_is_never_echoed(tmp_path, field, pasted):
    path = tmp_path / "envs.yaml"
    body = ENV_FIELDS[field].format(v=yaml_quote(pasted))
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n" + indent(body))
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    message = str(failure.value)
    assert f"environment 'prod': {field} must be the NAME of an environment variable" in message
    assert "e.g. PRODUCTION_DATABASE_URL" in message
    for piece in (pasted, "s3cr3t", "Tr0ub4dor", "EXAMPLEKEY", "1234567890"):
        assert piece not in message, message


def yaml_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.splitlines())


def test_env_field_names_that_are_fine(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n    database_url_env: prod_db_url\n"
                    "    dr:\n      platform: helm\n      drill_redis_url_env: _DRILL_1\n")
    spec = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)}).environments[0]
    assert spec.backup.database_url_env == "prod_db_url" and spec.dr.drill_redis_url_env == "_DRILL_1"


@pytest.mark.parametrize("field", ["required_metrics", "compose_files"])
@pytest.mark.parametrize("value", ["abc", "42", "{a: b}", "[acci_up, '']", "[acci_up, true]", "[[a]]"])
def test_list_fields_must_be_lists_of_strings(tmp_path, field, value):
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n    database_url_env: PROD_DB\n"
                    f"    dr:\n      platform: helm\n      drill_redis_url_env: DRILL\n      {field}: {value}\n")
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert str(failure.value) == (f"{path} environment 'prod': dr.{field} must be a list of non-empty "
                                  "strings or whole numbers, e.g. [a, b] or one '- item' per line")


def test_list_fields_accept_lists(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n    database_url_env: PROD_DB\n"
                    "    dr:\n      platform: compose\n      drill_redis_url_env: DRILL\n"
                    "      required_metrics: [acci_up, http_requests_total]\n      compose_files:\n        - a.yml\n")
    dr = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)}).environments[0].dr
    assert dr.required_metrics == ("acci_up", "http_requests_total") and dr.compose_files == ("a.yml",)


def test_scratch_allow_superuser_from_variables_and_file(tmp_path):
    def allowed(environ: dict) -> bool:
        return load_settings(environ).environments[0].validation.scratch_allow_superuser

    assert allowed({}) is False
    assert allowed({"ACCI_SCRATCH_ALLOW_SUPERUSER": "true"}) is True
    assert allowed({"ACCI_SCRATCH_ALLOW_SUPERUSER": "false"}) is False
    with pytest.raises(ConfigError, match=r"^ACCI_SCRATCH_ALLOW_SUPERUSER='yes please' must be true or false$"):
        load_settings({"ACCI_SCRATCH_ALLOW_SUPERUSER": "yes please"})
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n    database_url_env: PROD_DB\n"
                    "    scratch_allow_superuser: true\n  staging:\n    backup_url: s3://b/s\n"
                    "    database_url_env: STAGING_DB\n")
    settings = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert settings.environment("prod").validation.scratch_allow_superuser is True
    assert settings.environment("staging").validation.scratch_allow_superuser is False
    path.write_text("environments:\n  prod:\n    backup_url: s3://b/p\n    database_url_env: PROD_DB\n"
                    "    scratch_allow_superuser: 'yes'\n")
    with pytest.raises(ConfigError, match="scratch_allow_superuser must be true or false"):
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})


# --- one model: typos are one ConfigError line naming the variable or key ------------------------

@pytest.mark.parametrize(
    "env,expected",
    [
        ({"ACCI_VALIDATION_JOBS": "two"}, "ACCI_VALIDATION_JOBS='two' must be a whole number"),
        ({"ACCI_VALIDATION_JOBS": "0"}, "ACCI_VALIDATION_JOBS='0' must be at least 1"),
        ({"ACCI_VALIDATION_MODE": "fast"}, "ACCI_VALIDATION_MODE='fast' must be one of auto, parallel, stream"),
        ({"ACCI_VALIDATION_AMCHECK": "maybe"}, "ACCI_VALIDATION_AMCHECK='maybe' must be one of auto, off, required"),
        ({"ACCI_BACKUP_MAX_RUNTIME_SECONDS": "4h"}, "ACCI_BACKUP_MAX_RUNTIME_SECONDS='4h' must be a whole number"),
        ({"ACCI_RETENTION_WEEKLY": "four"}, "ACCI_RETENTION_WEEKLY='four' must be a whole number"),
        ({"ACCI_PLATFORM": "helm", "ACCI_DRILL_REDIS_URL": "redis://r/5", "ACCI_HEALTH_DEADLINE_SECONDS": "5m"},
         "ACCI_HEALTH_DEADLINE_SECONDS='5m' must be a number"),
    ],
)
def test_a_typo_in_a_variable_is_one_config_error_naming_it(env, expected):
    """Before: ACCI_VALIDATION_JOBS=two was a raw ValueError while the definitions loaded."""
    with pytest.raises(ConfigError) as failure:
        load_settings(env)
    assert str(failure.value) == expected


def test_validation_settings_per_environment_with_the_variables_as_defaults(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n"
                    "  staging:\n    database_url_env: STAGING_DB\n    backup_url: s3://b/s\n"
                    "    validation: {mode: stream, jobs: 4, amcheck: off, work_dir: /scratch}\n"
                    "  production:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n")
    environ = {"ACCI_ENVIRONMENTS_FILE": str(path), "ACCI_VALIDATION_JOBS": "3", "ACCI_VALIDATION_AMCHECK": "required",
               "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@h/postgres"}
    settings = load_settings(environ)
    staging, production = settings.environment("staging").validation, settings.environment("production").validation
    assert (staging.mode, staging.jobs, staging.amcheck, staging.work_dir) == ("stream", 4, "off", "/scratch")
    assert (production.mode, production.jobs, production.amcheck, production.work_dir) == ("auto", 3, "required", None)
    assert staging.scratch_database_url_env == production.scratch_database_url_env == "ACCI_SCRATCH_DATABASE_URL"
    single = load_settings({"ACCI_VALIDATION_MODE": "parallel", "ACCI_VALIDATION_WORK_DIR": "/w"}).environments[0]
    assert (single.validation.mode, single.validation.jobs, single.validation.work_dir) == ("parallel", 2, "/w")


@pytest.mark.parametrize(
    "section,expected",
    [
        ("{jobs: two}", "validation.jobs must be a whole number, not 'two'"),
        ("{jobs: 0}", "validation.jobs 0 must be at least 1"),
        ("{mode: fast}", "validation.mode 'fast' must be one of auto, parallel, stream"),
        ("{amcheck: true}", "validation.amcheck must be a single value, not bool"),
        ("{scratch: x}", "validation in {path} environment 'prod' must be a mapping with optional amcheck, "
                         "assertions_file, jobs, mode, work_dir"),
        ("[stream]", "validation in {path} environment 'prod' must be a mapping with optional amcheck, "
                     "assertions_file, jobs, mode, work_dir"),
    ],
)
def test_bad_validation_section(tmp_path, section, expected):
    path = tmp_path / "envs.yaml"
    path.write_text(f"environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                    f"    validation: {section}\n")
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert expected.format(path=path) in str(failure.value)
    assert "\n" not in str(failure.value)


def test_bad_dr_numbers_in_the_file(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                    "    dr: {platform: helm, drill_redis_url_env: DRILL, rto_target_minutes: soon}\n")
    with pytest.raises(ConfigError) as failure:
        load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert str(failure.value) == f"{path} environment 'prod': dr.rto_target_minutes must be a number, not 'soon'"


def test_dr_defaults_are_the_models_and_tool_paths_come_from_variables_in_the_file_too(tmp_path):
    """Every default is declared once, on the model: variables and the file arrive at the same values."""
    from acci_ops.settings import DrSpec

    path = tmp_path / "envs.yaml"
    path.write_text("environments:\n  prod:\n    database_url_env: PROD_DB\n    backup_url: s3://b/p\n"
                    "    dr: {platform: helm, drill_redis_url_env: DRILL}\n")
    environ = {"ACCI_HELM_BIN": "/opt/helm", "ACCI_PG_BIN": "/usr/lib/postgresql/15/bin",
               "ACCI_BACKUP_MAX_RUNTIME_SECONDS": "600", "ACCI_RTO_TARGET_MINUTES": "5"}
    from_file = load_settings({**environ, "ACCI_ENVIRONMENTS_FILE": str(path)}).environments[0]
    from_variables = load_settings({**environ, "ACCI_PLATFORM": "helm", "ACCI_DRILL_REDIS_URL": "x"}).environments[0]
    assert from_file.dr.helm_bin == from_variables.dr.helm_bin == "/opt/helm"
    assert from_file.backup.pg_bin_dir == from_variables.backup.pg_bin_dir == "/usr/lib/postgresql/15/bin"
    assert from_file.backup.max_runtime_seconds == from_variables.backup.max_runtime_seconds == 600
    # Targets are per environment: the file's environment keeps the model's default.
    assert from_file.dr.rto_target_minutes == DrSpec.rto_target_minutes == 30
    assert from_variables.dr.rto_target_minutes == 5


def test_every_field_of_every_section_has_help_and_is_in_the_generated_reference():
    """Every field of every section (ImagesSpec and AlertSpec included, found in the sections'
    registry and the sections nested in them) declares non-empty help, and docs/configuration.md
    shows that help: the reference is generated from the fields (scripts/gen_configuration.py), so a
    field missing from it means the file is stale."""
    import dataclasses
    import re
    import typing
    from pathlib import Path

    from acci_ops.settings import base_type, registered

    def nested(owner: type) -> typing.Iterator[type]:
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            kind, _ = base_type(hints[f.name])
            if dataclasses.is_dataclass(kind) and any("help" in g.metadata for g in dataclasses.fields(kind)):
                yield kind
                yield from nested(kind)

    def sections() -> typing.Iterator[type]:
        for section in registered():
            yield section.spec
            yield from nested(section.spec)

    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    found = list(sections())
    assert {c.__name__ for c in found} >= {"BackupSpec", "OffsiteSpec", "ValidationSpec", "DrSpec", "AlertSpec",
                                           "ImagesSpec"}
    missing = []
    for cls in found:
        for f in dataclasses.fields(cls):
            text = re.sub(r"\s+", " ", f.metadata["help"]).strip()
            assert text, f"{cls.__name__}.{f.name} has no help text"
            if text.replace("|", "\\|") not in reference:
                missing.append(f"{cls.__name__}.{f.name}")
    assert missing == [], "docs/configuration.md is stale: run `python scripts/gen_configuration.py`"
