"""What Dagster's own ``K8sRunLauncher`` asks Kubernetes for when it launches acci_ops's heavy jobs.

No Kubernetes API server can be had on this machine, so the launcher gets an injected ``BatchV1Api``
that records the Job it is asked to create (as Dagster's own launcher tests do); everything else is the
real launcher, the real run, and the jobs' real tags as the code location builds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.launcher import LaunchRunContext
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.test_utils import create_run_for_test
from dagster_k8s import K8sRunLauncher

from acci_ops.defs._shared import K8S_CONFIG_TAG
from acci_ops.defs.backups.assets import nightly_max_runtime_seconds
from acci_ops.lib.core.errors import ConfigError
from acci_ops.settings import load_settings
from acci_ops_tests.fixtures.defs import defs_from_env

IMAGE = "registry.example.test/acci/acci-ops@sha256:" + "c" * 64
SECRET = "s3cr3t-database-password"
HEAVY = {"nightly_backup": "backup", "validate_backup": "validation", "build_image": "image_build",
         "dr_drill": "dr", "disaster_recovery": "dr", "release": "release", "rollback_release": "release"}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: not-a-real-token}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


class RecordingBatchApi:
    """Stands in for kubernetes.client.BatchV1Api: records each Job it is asked to create."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, object]] = []

    def create_namespaced_job(self, body: object, namespace: str, **_: object) -> object:
        self.jobs.append((namespace, body))
        return body


@pytest.fixture
def all_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Backups, validation, DR on compose, image builds: every heavy job present; nothing reachable."""
    for name, value in {"ACCI_DATABASE_URL": f"postgresql://acci:{SECRET}@127.0.0.1:9/acci",
                        "ACCI_BACKUP_URL": f"file://{tmp_path}/backups",
                        "ACCI_SCRATCH_DATABASE_URL": "postgresql://scratch@127.0.0.1:9/postgres",
                        "ACCI_PLATFORM": "compose", "ACCI_APP_URL": "http://127.0.0.1:9",
                        "ACCI_DRILL_REDIS_URL": "redis://127.0.0.1:9/1",
                        "ACCI_SOURCE_REPO": "https://git.example.test/acci.git",
                        "ACCI_IMAGE_REPOSITORY": "registry.example.test/acci/framework",
                        "ACCI_K8S_VALIDATION_RESOURCES": "cpu=3,memory=6Gi,ephemeral-storage=80Gi"}.items():
        monkeypatch.setenv(name, value)


def launched_job(tmp_path: Path, job: dg.JobDefinition):  # noqa: ANN201 (a kubernetes V1Job)
    """The Job K8sRunLauncher creates for a run of ``job`` from a code location whose image is IMAGE."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    batch = RecordingBatchApi()
    launcher = K8sRunLauncher(
        service_account_name="acci-ops-runs", instance_config_map="dagster-instance",
        dagster_home="/opt/dagster/dagster_home", job_namespace="acci-ops", load_incluster_config=False,
        kubeconfig_file=str(kubeconfig), k8s_client_batch_api=batch, env_secrets=["acci-ops-env"],
        labels={"app.kubernetes.io/part-of": "acci-ops"})
    origin = JobPythonOrigin(job.name, RepositoryPythonOrigin(
        executable_path=sys.executable, code_pointer=ModuleCodePointer("acci_ops.definitions", "defs", None),
        container_image=IMAGE))
    with dg.instance_for_test() as instance:
        launcher.register_instance(instance)
        run = create_run_for_test(instance, job_name=job.name, tags=dict(job.tags), job_code_origin=origin)
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    [(namespace, body)] = batch.jobs
    assert namespace == "acci-ops"
    return body


@pytest.mark.parametrize("name", sorted(HEAVY))
def test_each_heavy_job_gets_its_image_by_digest_its_size_a_deadline_and_secrets_by_name(all_on, tmp_path, name):
    """The run pod runs the code location's image by digest as the acci-ops-runs service account, gets its
    environment from the acci-ops-env Secret by name (no value of it in the Job), the kind's requests and
    limits (memory and ephemeral storage capped, CPU only requested), an activeDeadlineSeconds equal to the
    job's own maximum runtime where it has one (24 h otherwise) and a TTL after it finishes."""
    settings = load_settings()
    job = defs_from_env().resolve_job_def(name)
    body = launched_job(tmp_path, job)
    pod = body.spec.template.spec
    [container] = pod.containers
    assert container.image == IMAGE
    assert pod.service_account_name == "acci-ops-runs"
    assert [source.secret_ref.name for source in container.env_from if source.secret_ref] == ["acci-ops-env"]
    assert SECRET not in json.dumps(body.to_dict(), default=str)
    expected = settings.kubernetes.resources(HEAVY[name])
    assert container.resources.requests == expected
    assert container.resources.limits == {k: v for k, v in expected.items() if k != "cpu"}
    deadline = (nightly_max_runtime_seconds(settings) if name == "nightly_backup"
                else int(job.tags["dagster/max_runtime"]) if name == "build_image" else 86400)
    assert body.spec.active_deadline_seconds == deadline
    assert body.spec.ttl_seconds_after_finished == 86400
    labels = body.metadata.labels
    assert labels["dagster/job"] == name and labels["app.kubernetes.io/part-of"] == "acci-ops"
    assert body.spec.template.metadata.labels["acci/operation-kind"] == HEAVY[name].replace("_", "-")


def test_the_validation_pod_is_sized_by_its_setting(all_on, tmp_path):
    """ACCI_K8S_VALIDATION_RESOURCES (here 80Gi of ephemeral storage, for a large restore file) reaches the
    validation pod and no other."""
    validation = launched_job(tmp_path, defs_from_env().resolve_job_def("validate_backup"))
    assert validation.spec.template.spec.containers[0].resources.limits == {"memory": "6Gi",
                                                                           "ephemeral-storage": "80Gi"}
    backup = json.loads(defs_from_env().resolve_job_def("nightly_backup").tags[K8S_CONFIG_TAG])
    assert backup["container_config"]["resources"]["limits"]["ephemeral-storage"] == "2Gi"


@pytest.mark.parametrize("value, message", [
    ("cpu=2", "ACCI_K8S_BACKUP_RESOURCES: memory is required (a pod without a memory limit can take the node's)"),
    ("cpu=2,memory=lots", "ACCI_K8S_BACKUP_RESOURCES: memory='lots' is not a positive Kubernetes quantity "
                          "(e.g. 500m, 2Gi)"),
    ("memory=1Gi,gpu=1", "ACCI_K8S_BACKUP_RESOURCES: 'gpu=1' is not NAME=QUANTITY with NAME one of cpu, memory, "
                         "ephemeral-storage (e.g. cpu=1,memory=2Gi,ephemeral-storage=20Gi)"),
    ("memory=1Gi,memory=2Gi", "ACCI_K8S_BACKUP_RESOURCES: memory is given twice"),
    ("memory=0", "ACCI_K8S_BACKUP_RESOURCES: memory='0' is not a positive Kubernetes quantity (e.g. 500m, 2Gi)")])
def test_a_bad_pod_size_stops_the_code_location_in_one_line(all_on, monkeypatch, value, message):
    monkeypatch.setenv("ACCI_K8S_BACKUP_RESOURCES", value)
    with pytest.raises(ConfigError) as raised:
        defs_from_env()
    assert str(raised.value) == message
