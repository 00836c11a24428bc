"""Environment configuration: one environment from variables, several from a YAML file."""

from __future__ import annotations

import pytest

from acci_ops.lib.errors import ConfigError
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
    assert spec.database_url_env == "ACCI_DATABASE_URL" and spec.backup_url_env == "ACCI_BACKUP_URL"
    assert settings.timezone == "UTC" and not settings.several
    assert (spec.retention.daily, spec.retention.weekly, spec.retention.monthly) == (7, 4, 12)


def test_single_environment_from_variables():
    settings = load_settings({"ACCI_ENVIRONMENT": "staging", "ACCI_TIMEZONE": "America/New_York",
                              "ACCI_RETENTION_DAILY": "3", "ACCI_OFFSITE_URL": "s3://off/x"})
    assert settings.environments[0].name == "staging"
    assert settings.environments[0].retention.daily == 3
    assert settings.environments[0].offsite.url == "s3://off/x"
    assert settings.timezone == "America/New_York"


def test_several_environments_from_file(tmp_path):
    path = tmp_path / "envs.yaml"
    path.write_text(FILE)
    settings = load_settings({"ACCI_ENVIRONMENTS_FILE": str(path)})
    assert settings.several and [e.name for e in settings.environments] == ["staging", "production"]
    assert settings.timezone == "Europe/Madrid"
    prod = settings.environment("production")
    assert prod.sse == "sse-kms" and prod.offsite.access_key_id_env == "OFFSITE_KEY"
    assert settings.environment("staging").retention.monthly == 1


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
         "DR settings: could not convert string to float: 'soon'"),
    ],
)
def test_bad_dr_settings(env, expected):
    with pytest.raises(ConfigError) as failure:
        load_settings(env)
    assert expected in str(failure.value)
