"""acci_ops on Kubernetes: ``deploy/dagster/k8s/`` (the RBAC of its run pods, values for Dagster's Helm chart).

No Kubernetes API server exists on this machine and Dagster's chart cannot be downloaded here, so nothing is
installed or rendered by that chart: the RBAC objects are validated strictly (unknown fields rejected) by
kubernetes-validate against each supported Kubernetes version, the Role is checked against every kind the
acci-framework chart really renders (by the pinned helm, canary objects included), and the chart values are
checked field by field for what acci_ops relies on.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from acci_ops.lib.releases.deployers import parse_image_ref
from acci_ops_tests.fixtures.deploy import CHART, REPO

K8S = REPO / "deploy" / "dagster" / "k8s"
KUBE_VERSIONS = ["1.25", "1.30", "1.35"]
APP_NAMESPACE = "acci"
WRITE = {"get", "list", "watch", "create", "update", "patch", "delete"}
PLURAL = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
          "ServiceAccount": "serviceaccounts", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
          "PodDisruptionBudget": "poddisruptionbudgets", "NetworkPolicy": "networkpolicies",
          "Ingress": "ingresses", "HTTPRoute": "httproutes"}
# Chart values that render every kind: canary on (its Deployment, Service, NetworkPolicy), once through the
# Gateway API and once through ingress-nginx.
SECRETS = ["--set-string", "secrets.databaseUrl=postgres://acci:pw@db.internal:5432/acci",
           "--set-string", "secrets.redisUrl=redis://:pw@cache.internal:6379/0"]
CANARY = ["--set", "canary.enabled=true", "--set", "canary.weight=10",
          "--set-string", f"canary.image.digest=sha256:{'b' * 64}"]
GATEWAY = ["--set", "canary.gateway.parentRefs[0].name=acci-gateway"]
NGINX = ["--set", "canary.traffic=ingress-nginx"]


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def rules() -> list[dict]:
    [role] = [d for d in documents("rbac.yaml") if d["kind"] == "Role"]
    return role["rules"]


def granted(group: str, resource: str) -> set[str]:
    return {verb for rule in rules() if group in rule["apiGroups"] and resource in rule["resources"]
            for verb in rule["verbs"]}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_rbac_objects_are_valid_kubernetes_objects(kube_version):
    for doc in documents("rbac.yaml"):
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {kube_version}: "
                        f"{'.'.join(str(p) for p in exc.path)}: {exc.message}")


def test_the_run_pods_identity_is_bound_in_the_app_namespace_only():
    """A ServiceAccount, one Role and its RoleBinding in the app namespace: nothing cluster-wide, no wildcard,
    no exec or port-forward into pods, no namespaces or nodes."""
    docs = documents("rbac.yaml")
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == APP_NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                    "namespace": account["namespace"]}]
    for rule in rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"pods/exec", "pods/portforward", "pods/attach", "namespaces", "nodes"} & set(rule["resources"])
    assert granted("", "pods") == {"get", "list", "watch"}


@pytest.mark.parametrize("traffic", [GATEWAY, NGINX], ids=["gateway-api", "ingress-nginx"])
def test_the_role_covers_every_kind_the_app_chart_renders_and_helms_release_records(helm: Path, traffic):
    """helm upgrade creates, changes and deletes each rendered object, and keeps its release records as
    Secrets: every kind the acci-framework chart renders (here with the canary on) is fully granted."""
    done = subprocess.run([str(helm), "template", "acci-framework", str(CHART), "--namespace", APP_NAMESPACE,
                           *SECRETS, *CANARY, *traffic], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = {(d["apiVersion"], d["kind"]) for d in yaml.safe_load_all(done.stdout) if d}
    assert len({kind for _, kind in rendered}) >= 8, rendered  # not vacuous: the whole chart rendered
    for api_version, kind in rendered:
        group = api_version.rpartition("/")[0]
        assert kind in PLURAL, f"the chart renders {kind}, which the Role does not know"
        assert granted(group, PLURAL[kind]) >= WRITE, f"{kind} ({api_version}) is not fully granted"
    assert granted("", "secrets") >= WRITE  # helm's sh.helm.release.v1.* records
    assert granted("apps", "replicasets") >= {"get", "list", "watch"}  # --wait reads rollout state


def test_the_chart_values_pin_the_image_by_digest_and_pass_secrets_by_name_only():
    """The code location's image renders (the chart's "<repository>:<tag>") as a repo@sha256 reference; runs
    and the code server get the same Secret by name; run pods use the RBAC file's ServiceAccount; run
    monitoring is on; no password or key is written in the values."""
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    image = deployment["image"]
    rendered = f"{image['repository']}:{image['tag']}"
    ref = parse_image_ref(rendered.replace("0" * 64, "c" * 64))
    assert ref.digest == "sha256:" + "c" * 64 and "@sha256:" in rendered
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "acci_ops.definitions"]
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    config = launcher["config"]["k8sRunLauncher"]
    assert config["envSecrets"] == deployment["envSecrets"] == [{"name": "acci-ops-env"}]
    account = next(d for d in documents("rbac.yaml") if d["kind"] == "ServiceAccount")["metadata"]["name"]
    assert config["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == account
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]

    names_only = {"postgresqlSecretName", "generatePostgresqlPasswordSecret"}  # a Secret's name, a switch

    def walk(node: object, path: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if any(word in key.lower() for word in ("password", "secretkey", "token")) and key not in names_only:
                    pytest.fail(f"{path}{key} holds a value in values.yaml")
                walk(value, f"{path}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
    walk(values)


def test_the_chart_run_queue_has_the_committed_instance_limits():
    """The daemon's queued run coordinator in the chart values has the limits of the committed dagster.yaml
    (4 runs; one retention pass and one DR run at a time), so moving to Kubernetes changes no behaviour."""
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    committed = yaml.safe_load((REPO / "dagster.yaml").read_text())["concurrency"]["runs"]
    assert queued["maxConcurrentRuns"] == committed["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == committed["tag_concurrency_limits"]
