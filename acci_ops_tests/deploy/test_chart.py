"""The Helm chart deploy/helm/acci-framework and its DR value files, checked with the real helm binary and
kubernetes-validate. Neither a Kubernetes cluster nor a Docker engine is available here, so these tests check
linting, rendering and schema validation of the rendered manifests, never an actual install.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from acci_ops_tests.fixtures.deploy import CHART, DR_VALUES, DRILL_VALUES, HELM_VERSION, INSTALL_HELM

RELEASE = "acci-framework"
NAMESPACE = "acci"
DB_PASSWORD = "Pw-only-in-the-secret-4242"
DATABASE_URL = f"postgres://acci:{DB_PASSWORD}@db.internal:5432/acci"
REDIS_URL = "redis://:redis-pw-77@cache.internal:6379/0"
SECRET_ARGS = ["--set-string", f"secrets.databaseUrl={DATABASE_URL}", "--set-string", f"secrets.redisUrl={REDIS_URL}"]
# The guide's minimum, a common production version, and the client version this helm build targets.
KUBE_VERSIONS = ["1.25", "1.30", "1.35"]
VALUE_SETS = {
    "default": [],
    "dr": ["-f", str(DR_VALUES)],
    "drill": ["-f", str(DRILL_VALUES)],
    "dr+drill": ["-f", str(DR_VALUES), "-f", str(DRILL_VALUES)],
}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=60)


def render(helm: Path, *args: str, kube_version: str = "1.30") -> list[dict]:
    done = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--kube-version", f"{kube_version}.0", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds: dict[str, dict] = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects rendered"
        kinds[doc["kind"]] = doc
    return kinds


def container(kinds: dict[str, dict]) -> dict:
    (only,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def default(helm: Path) -> dict[str, dict]:
    return by_kind(render(helm, *SECRET_ARGS))


@pytest.fixture(scope="module")
def dr(helm: Path) -> dict[str, dict]:
    return by_kind(render(helm, *VALUE_SETS["dr"], *SECRET_ARGS))


@pytest.fixture(scope="module")
def drill(helm: Path) -> dict[str, dict]:
    return by_kind(render(helm, *VALUE_SETS["drill"], *SECRET_ARGS))


def test_install_helm_is_idempotent(helm: Path) -> None:
    """A second scripts/install_helm.py run finds the pinned helm, downloads nothing and says so in one line
    (local only: no cluster or Docker engine is available here, none is needed)."""
    done = subprocess.run([sys.executable, str(INSTALL_HELM), "--bin-dir", str(helm.parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"install_helm: helm {HELM_VERSION} already at {helm}"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict(helm: Path, values: list[str]) -> None:
    """`helm lint --strict` passes for the defaults and each DR value file (no cluster here: lint only)."""
    done = run_helm(helm, "lint", "--strict", str(CHART), *values, *SECRET_ARGS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_manifests_match_kubernetes_schema(helm: Path, values: list[str], kube_version: str) -> None:
    """Every rendered object validates strictly (unknown fields rejected) against the Kubernetes OpenAPI schema
    of that version, offline with kubernetes-validate; no cluster is available to dry-run against."""
    docs = render(helm, *values, *SECRET_ARGS, kube_version=kube_version)
    assert {"Deployment", "Service", "ConfigMap", "Secret", "NetworkPolicy"} <= {d["kind"] for d in docs}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {kube_version}: "
                        f"{path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{doc['apiVersion']} {doc['kind']} does not exist in Kubernetes {kube_version}")


def test_schema_validation_is_not_vacuous(default: dict[str, dict]) -> None:
    """A misspelt field in an otherwise valid rendered Deployment is rejected (schema check only, no cluster)."""
    broken = yaml.safe_load(yaml.safe_dump(default["Deployment"]))
    broken["spec"]["replica"] = 3
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, "1.30", strict=True)


def test_chart_refuses_kubernetes_older_than_guide_minimum(helm: Path) -> None:
    """Chart.yaml's kubeVersion (>=1.25, as the guide requires) is enforced at render time; no cluster here."""
    done = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.24.0", *SECRET_ARGS)
    assert done.returncode != 0
    assert "kubeVersion" in done.stderr or "incompatible" in done.stderr.lower()


def test_resources_and_image_match_guide(default: dict[str, dict]) -> None:
    """Guide values: limits 2000m/2Gi, requests 1000m/1Gi, image acci-framework (rendering only, no cluster)."""
    app = container(default)
    assert app["resources"] == {"limits": {"cpu": "2000m", "memory": "2Gi"},
                                "requests": {"cpu": "1000m", "memory": "1Gi"}}
    assert app["image"] == "acci-framework:1.0.0"  # pinned to appVersion, not the guide's moving "latest"
    assert app["imagePullPolicy"] == "IfNotPresent"
    assert app["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert default["Service"]["spec"]["ports"][0]["port"] == 8080


def test_hpa_3_to_10_on_cpu_and_memory(default: dict[str, dict]) -> None:
    """autoscaling/v2 HPA 3..10 at 80% CPU and memory; the Deployment leaves replicas to it (no cluster here)."""
    hpa = default["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    targets = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]}
    assert targets == {"cpu": {"type": "Utilization", "averageUtilization": 80},
                       "memory": {"type": "Utilization", "averageUtilization": 80}}
    assert "replicas" not in default["Deployment"]["spec"]


def test_ingress_tls_with_cert_manager(default: dict[str, dict]) -> None:
    """nginx ingress for api.acci-framework.dev with TLS secret acci-framework-tls issued by cert-manager's
    letsencrypt-prod ClusterIssuer (rendering only; no cluster or cert-manager here)."""
    ingress = default["Ingress"]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "acci-framework-tls", "hosts": ["api.acci-framework.dev"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "api.acci-framework.dev"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": RELEASE, "port": {"number": 8080}}


def test_network_policy_admits_only_ingress_nginx_and_needed_egress(default: dict[str, dict]) -> None:
    """Ingress only from ingress-nginx pods on TCP 8080; egress only to 5432, 6379 and DNS (no cluster/CNI here,
    so the policy is checked as rendered, not enforced)."""
    policy = default["NetworkPolicy"]["spec"]
    pod_labels = default["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_labels["app"] == "acci-framework"  # the guide's selector and kubectl commands use it
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "ingress-nginx"}
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    egress_ports = sorted((p["protocol"], p["port"]) for r in policy["egress"] for p in r["ports"])
    assert egress_ports == [("TCP", 53), ("TCP", 5432), ("TCP", 6379), ("UDP", 53)]


def test_database_url_only_in_the_secret(default: dict[str, dict]) -> None:
    """DATABASE_URL/REDIS_URL live in the Secret and reach the pod via secretKeyRef; the ConfigMap holds only
    non-secret settings and the password appears nowhere in clear text (rendering only, no cluster)."""
    config = default["ConfigMap"]["data"]
    assert config == {"LOG_LEVEL": "info", "PORT": "8080"}
    assert DB_PASSWORD not in yaml.safe_dump(default["ConfigMap"])
    secret = default["Secret"]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"DATABASE_URL": DATABASE_URL, "REDIS_URL": REDIS_URL}
    for kind, doc in default.items():
        if kind != "Secret":
            assert DB_PASSWORD not in yaml.safe_dump(doc), f"database password leaked into the {kind}"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(default)["env"]}
    assert env == {"DATABASE_URL": {"name": "acci-framework-secrets", "key": "DATABASE_URL"},
                   "REDIS_URL": {"name": "acci-framework-secrets", "key": "REDIS_URL"}}
    assert container(default)["envFrom"] == [{"configMapRef": {"name": "acci-framework-config"}}]


def test_secret_url_cannot_be_smuggled_into_configmap(helm: Path) -> None:
    """Putting DATABASE_URL under `config` fails the render with a pointer to secrets.* (no cluster here)."""
    done = run_helm(helm, "template", RELEASE, str(CHART), *SECRET_ARGS,
                    "--set-string", f"extraConfig.DATABASE_URL={DATABASE_URL}")
    assert done.returncode != 0
    assert "DATABASE_URL is a secret" in done.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_refuses_to_render_without_database_url(helm: Path, values: list[str]) -> None:
    """Without secrets.databaseUrl or existingSecret there is nothing to deploy: `helm template` fails and says
    what to set (rendering only; no cluster here)."""
    done = run_helm(helm, "template", RELEASE, str(CHART), *values,
                    "--set-string", f"secrets.redisUrl={REDIS_URL}")
    assert done.returncode != 0
    assert "set secrets.databaseUrl" in done.stderr and "existingSecret" in done.stderr
    assert DB_PASSWORD not in done.stdout


def test_existing_secret_replaces_chart_secret(helm: Path) -> None:
    """With existingSecret the chart creates no Secret and the pod reads the named one (no cluster here)."""
    kinds = by_kind(render(helm, "--set", "existingSecret=acci-prod-db",
                           "--set", "existingSecretKeys.databaseUrl=url"))
    assert "Secret" not in kinds
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(kinds)["env"]}
    assert refs["DATABASE_URL"] == {"name": "acci-prod-db", "key": "url"}
    assert refs["REDIS_URL"] == {"name": "acci-prod-db", "key": "REDIS_URL"}
    assert "checksum/secret" not in kinds["Deployment"]["spec"]["template"]["metadata"]["annotations"]


def test_probes_metrics_and_distroless_security(default: dict[str, dict]) -> None:
    """Startup/liveness/readiness probes GET /health on the http port, Prometheus scrapes /metrics on 8080, and
    the pod runs non-root with a read-only root filesystem (rendering only; no cluster to run the image)."""
    app = container(default)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert app[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    pod = default["Deployment"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["allowPrivilegeEscalation"] is False
    assert app["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in app["volumeMounts"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_dr_values_change_what_they_should(default: dict[str, dict], dr: dict[str, dict]) -> None:
    """dr-values.yaml: lower HPA minimum, same image and limits, dr=true on every object, ingress and network
    policy kept (rendering only; the DR install itself needs a cluster)."""
    assert dr["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 2
    assert dr["HorizontalPodAutoscaler"]["spec"]["maxReplicas"] == 10
    assert container(dr)["image"] == container(default)["image"]
    assert container(dr)["resources"] == container(default)["resources"]
    for kind, doc in dr.items():
        assert doc["metadata"]["labels"]["dr"] == "true", kind
        assert doc["metadata"]["annotations"]["acci-framework.dev/disaster-recovery"] == "true", kind
    assert dr["Deployment"]["spec"]["template"]["metadata"]["labels"]["dr"] == "true"
    assert "dr" not in default["Deployment"]["metadata"]["labels"]
    assert dr["Ingress"]["spec"]["rules"][0]["host"] == "api.acci-framework.dev"
    assert dr["NetworkPolicy"]["spec"] == default["NetworkPolicy"]["spec"]
    startup = container(dr)["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 300


def test_dr_ingress_host_is_one_parameter(helm: Path) -> None:
    """`--set ingress.host=...` moves both the rule host and the TLS host of the DR ingress (no cluster here)."""
    kinds = by_kind(render(helm, "-f", str(DR_VALUES), *SECRET_ARGS, "--set", "ingress.host=dr.acci-framework.dev"))
    spec = kinds["Ingress"]["spec"]
    assert [r["host"] for r in spec["rules"]] == ["dr.acci-framework.dev"]
    assert spec["tls"] == [{"secretName": "acci-framework-tls", "hosts": ["dr.acci-framework.dev"]}]


def test_drill_values_are_isolated(drill: dict[str, dict], helm: Path) -> None:
    """drill-values.yaml: one replica, no HPA, no Ingress, NetworkPolicy still on, marked as a drill; also when
    layered over dr-values.yaml (rendering only; no cluster here)."""
    for kinds in (drill, by_kind(render(helm, *VALUE_SETS["dr+drill"], *SECRET_ARGS))):
        assert kinds["Deployment"]["spec"]["replicas"] == 1
        assert "HorizontalPodAutoscaler" not in kinds
        assert "Ingress" not in kinds
        assert kinds["NetworkPolicy"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert kinds["Deployment"]["metadata"]["labels"]["dr-drill"] == "true"
        assert kinds["Deployment"]["metadata"]["annotations"]["acci-framework.dev/disaster-recovery"] == "drill"


def test_notes_explain_external_database_and_dr(helm: Path) -> None:
    """NOTES.txt tells the operator the chart uses an external PostgreSQL/Redis through the Secret and flags a DR
    install (client-side dry run; no cluster here)."""
    done = run_helm(helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
                    "-f", str(DR_VALUES), *SECRET_ARGS)
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "does not run PostgreSQL or Redis" in notes
    assert "DISASTER-RECOVERY" in notes
    assert "https://api.acci-framework.dev/health" in notes
