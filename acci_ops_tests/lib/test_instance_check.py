"""A production dagster.yaml acci_ops must not run with is refused with one line naming the key; a good one
passes ours and Dagster's own instance schema."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config

from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.instance.check import check_file, check_instance

pytestmark = pytest.mark.unit

DOCKER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "dagster" / "docker"
DIGEST = "registry.example.test/acci/acci-ops@sha256:" + "c" * 64
GOOD = {
    "storage": {"postgres": {"postgres_db": {"username": "dagster", "password": {"env": "DAGSTER_PG_PASSWORD"},
                                             "hostname": "dagster-postgres", "db_name": "dagster", "port": 5432}}},
    "run_launcher": {"module": "dagster_docker", "class": "DockerRunLauncher",
                     "config": {"image": DIGEST, "network": "acci-ops",
                                "env_vars": ["ACCI_ENVIRONMENTS_FILE", "ACCI_BACKUP_SIGNING_KEY"]}},
    "run_monitoring": {"enabled": True, "start_timeout_seconds": 180, "max_resume_run_attempts": 0,
                       "free_slots_after_run_end_seconds": 60},
}


def changed(path: str, value: object) -> dict:
    """GOOD with the dotted ``path`` set to ``value`` (``None``: removed)."""
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return doc


def test_a_good_production_config_passes_ours_and_dagsters_schema(tmp_path, monkeypatch):
    check_instance(GOOD)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(GOOD))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "not-used-here")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "DockerRunLauncher"


BAD = [
    (changed("storage", None), "storage is missing: production needs storage.postgres (without it Dagster keeps runs "
                               "in SQLite under DAGSTER_HOME, which only one machine can use)"),
    (changed("storage", {"sqlite": {"base_dir": "/x"}}), "storage.postgres is missing (storage has sqlite): production "
                                                         "storage is PostgreSQL"),
    (changed("storage.postgres.postgres_db.password", None), "storage.postgres.postgres_db.password is missing"),
    (changed("storage.postgres.postgres_db.hostname", None), "storage.postgres.postgres_db.hostname is missing"),
    (changed("storage.postgres.postgres_db.password", "hunter2"),
     "storage.postgres.postgres_db.password is written in the file: give it as {env: NAME} (the variable that holds "
     "it)"),
    (changed("run_launcher", "docker"), "run_launcher must be a mapping, not str"),
    (changed("run_launcher.class", "DefaultRunLauncher"),
     "run_launcher.class 'DefaultRunLauncher' is not one of DockerRunLauncher, K8sRunLauncher (the default launcher "
     "cannot detect a crashed run worker)"),
    (changed("run_launcher.module", "dagster_k8s"), "run_launcher.module 'dagster_k8s' must be 'dagster_docker' for "
                                                    "DockerRunLauncher"),
    (changed("run_launcher.config.image", "registry.example.test/acci/acci-ops:1.4.0"),
     "run_launcher.config.image 'registry.example.test/acci/acci-ops:1.4.0' is not an image by digest "
     "(repo@sha256:<64 hex>): a tag can move, and a run would start another version than its code server"),
    (changed("run_launcher.config.env_vars", ["ACCI_ENVIRONMENTS_FILE", "ACCI_BACKUP_SIGNING_KEY=0123abcd"]),
     "run_launcher.config.env_vars entry 'ACCI_BACKUP_SIGNING_KEY'... must be a variable's name only: NAME=value "
     "writes the value into the file and every run's spec"),
    (changed("run_monitoring.enabled", False), "run_monitoring.enabled must be true: without it a run worker that "
                                               "dies leaves its run STARTING forever and no alert fires"),
    (changed("run_monitoring.free_slots_after_run_end_seconds", None),
     "run_monitoring.free_slots_after_run_end_seconds must be a number of seconds (60): a run worker that dies keeps "
     "its pool slot, and every later backup of that environment stays QUEUED"),
    (changed("run_monitoring.free_slots_after_run_end_seconds", 0),
     "run_monitoring.free_slots_after_run_end_seconds must be a number of seconds (60): a run worker that dies keeps "
     "its pool slot, and every later backup of that environment stays QUEUED"),
    (changed("run_launcher", {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": {"job_image": DIGEST}}),
     "run_launcher.config.service_account_name is missing: run pods need the acci-ops-runs account "
     "(deploy/dagster/k8s/rbac.yaml)"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m.split(" ")[0] + f"-{i}" for i, (_, m) in enumerate(BAD)])
def test_a_config_acci_ops_must_not_run_with_is_one_line_naming_the_key(doc, message):
    with pytest.raises(ConfigError) as raised:
        check_instance(doc)
    assert str(raised.value) == message
    assert "0123abcd" not in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_command_names_the_file_and_exits_non_zero(tmp_path):
    bad = tmp_path / "dagster.yaml"
    bad.write_text(yaml.safe_dump(changed("run_monitoring", None)))
    done = subprocess.run([sys.executable, "-m", "acci_ops.lib.instance.check", str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (f"{bad}: run_monitoring.enabled must be true: without it a run worker that dies "
                                   "leaves its run STARTING forever and no alert fires")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(GOOD))
    done = subprocess.run([sys.executable, "-m", "acci_ops.lib.instance.check", str(good)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"{good}: ok"


def test_an_unreadable_or_broken_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot be read \(No such file or directory\)$"):
        check_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("storage: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML \(") as raised:
        check_file(broken)
    assert "\n" not in str(raised.value)


def test_every_shipped_instance_frees_a_dead_runs_pool_slots():
    """The dev instance, the Docker instance and the Kubernetes chart values all use pools of one (a backup
    per environment, a release at a time); each frees the slot a dead run worker held, or that pool would
    stay blocked forever."""
    root = Path(__file__).resolve().parents[2]
    dev = yaml.safe_load((root / "dagster.yaml").read_text())
    docker = yaml.safe_load((DOCKER_DIR / "dagster.yaml").read_text())
    k8s = yaml.safe_load((root / "deploy" / "dagster" / "k8s" / "values.yaml").read_text())
    assert dev["concurrency"]["pools"]["default_limit"] == docker["concurrency"]["pools"]["default_limit"] == 1
    assert dev["run_monitoring"]["free_slots_after_run_end_seconds"] == 60
    assert docker["run_monitoring"]["free_slots_after_run_end_seconds"] == 60
    assert k8s["dagsterDaemon"]["runMonitoring"]["freeSlotsAfterRunEndSeconds"] == 60


def test_the_committed_dev_instance_is_refused_for_production():
    """The repository's dagster.yaml is the embedded dev default (SQLite, default launcher): the check says so."""
    with pytest.raises(ConfigError, match=r"dagster\.yaml: storage is missing: production needs storage\.postgres"):
        check_file(Path(__file__).resolve().parents[2] / "dagster.yaml")


def test_the_shipped_docker_instance_passes_ours_and_dagsters_schema(tmp_path, monkeypatch):
    """deploy/dagster/docker/dagster.yaml with its example env file: PostgreSQL storage from variables,
    DockerRunLauncher passing every name of the env file, run monitoring on."""
    check_file(DOCKER_DIR / "dagster.yaml", DOCKER_DIR / "acci-ops.env.example")
    (tmp_path / "dagster.yaml").write_text((DOCKER_DIR / "dagster.yaml").read_text())
    for name in ("DAGSTER_POSTGRES_USER", "DAGSTER_POSTGRES_PASSWORD", "DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_DB",
                 "ACCI_OPS_RUN_NETWORK"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("DAGSTER_POSTGRES_PORT", "5432")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["run_launcher"]["class"] == "DockerRunLauncher"
    assert config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"


def test_a_variable_of_the_env_file_the_launcher_does_not_pass_is_one_line(tmp_path):
    """A name the code server gets from acci-ops.env but runs would not (dagster#8312's STARTING forever)."""
    env_file = tmp_path / "acci-ops.env"
    env_file.write_text((DOCKER_DIR / "acci-ops.env.example").read_text() + "ACCI_OFFSITE_URL=s3://offsite/acci\n")
    with pytest.raises(ConfigError) as failure:
        check_file(DOCKER_DIR / "dagster.yaml", env_file)
    assert str(failure.value) == (f"{DOCKER_DIR / 'dagster.yaml'}: ACCI_OFFSITE_URL is set in {env_file} but not in "
                                  "run_launcher.config.env_vars: run containers would not get it")
    env_file.write_text("# settings\nACCI_DATABASE_URL=postgresql://x\nnot a variable\n")
    with pytest.raises(ConfigError, match=r"acci-ops.env: line 3 is not NAME=value$"):
        check_file(DOCKER_DIR / "dagster.yaml", env_file)
    done = subprocess.run([sys.executable, "-m", "acci_ops.lib.instance.check", str(DOCKER_DIR / "dagster.yaml"),
                           "--env-file", str(tmp_path / "missing.env")], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().endswith("missing.env cannot be read (No such file or directory)")
