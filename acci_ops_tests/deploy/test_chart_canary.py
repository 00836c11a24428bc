"""The chart's canary support (values ``canary.*``), rendered by the real helm and validated offline.

No Kubernetes API server exists on this machine (no kind, k3s, kwok or envtest), so nothing here is
installed: the manifests ``helm template`` renders are checked as objects. Built-in kinds (Deployment,
Service, Ingress, NetworkPolicy, ...) are validated strictly by kubernetes-validate, as the DR chart is.
The Gateway API ``HTTPRoute`` is a CRD kubernetes-validate does not know: it is validated against the
vendored OpenAPI schema of HTTPRoute ``gateway.networking.k8s.io/v1`` from Gateway API v1.6.1
(standard channel, ``schemas/gateway-api-v1.6.1-httproute-v1.yaml``), made strict (unknown fields
rejected) the way kubernetes-validate's strict schemas are; the CEL rules of that schema
(x-kubernetes-validations), which jsonschema cannot evaluate, are checked field by field for the
fields the chart renders.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from acci_ops_tests.fixtures.deploy import CHART, DR_VALUES, DRILL_VALUES

RELEASE = "acci-framework"
NAMESPACE = "acci"
SECRET_ARGS = ["--set-string", "secrets.databaseUrl=postgres://acci:pw-4242@db.internal:5432/acci",
               "--set-string", "secrets.redisUrl=redis://:pw@cache.internal:6379/0"]
DIGEST = f"sha256:{'b' * 64}"
GATEWAY = ["--set", "canary.gateway.parentRefs[0].name=acci-gateway",
           "--set", "canary.gateway.parentRefs[0].namespace=gateway-system",
           "--set", "canary.gateway.parentRefs[0].sectionName=https"]
NGINX = ["--set", "canary.traffic=ingress-nginx"]
SCHEMA_FILE = Path(__file__).parent / "schemas" / "gateway-api-v1.6.1-httproute-v1.yaml"
CANARY_FILES = ("_canary.tpl", "canary-deployment.yaml", "canary-service.yaml", "canary-networkpolicy.yaml",
                "httproute.yaml", "ingress-canary.yaml")
VALUES_MARKER = "# Canary releases ("
KUBE_VERSIONS = ["1.25", "1.30", "1.35"]


def canary(weight: int, *extra: str) -> list[str]:
    return ["--set", "canary.enabled=true", "--set", f"canary.weight={weight}",
            "--set-string", f"canary.image.digest={DIGEST}", *extra]


def helm_template(helm: Path, chart: Path, *args: str, kube_version: str = "1.30") -> subprocess.CompletedProcess:
    return subprocess.run([str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE,
                           "--kube-version", f"{kube_version}.0", *args], capture_output=True, text=True, timeout=60)


def render(helm: Path, *args: str, kube_version: str = "1.30") -> dict[tuple[str, str], dict]:
    done = helm_template(helm, CHART, *SECRET_ARGS, *args, kube_version=kube_version)
    assert done.returncode == 0, done.stderr
    objects: dict[tuple[str, str], dict] = {}
    for doc in yaml.safe_load_all(done.stdout):
        if doc:
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} rendered twice"
            objects[key] = doc
    return objects


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(objects: dict, name: str) -> dict[str, str]:
    return objects["Deployment", name]["spec"]["template"]["metadata"]["labels"]


def only_container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def chart_before_canary(tmp_path: Path) -> Path:
    """The chart without any canary addition: the new template files removed and the values cut at the
    canary block (which must hold the `canary:` key and nothing else)."""
    copy = tmp_path / "acci-framework"
    shutil.copytree(CHART, copy)
    for name in CANARY_FILES:
        (copy / "templates" / name).unlink()
    values = (copy / "values.yaml").read_text()
    kept, marker, block = values.partition(VALUES_MARKER)
    assert marker, f"values.yaml has no line starting {VALUES_MARKER!r}"
    assert set(yaml.safe_load(marker + block)) == {"canary"}
    assert "canary" not in yaml.safe_load(kept)
    (copy / "values.yaml").write_text(kept.rstrip("\n") + "\n")
    return copy


OFF_SETS = {
    "default": [],
    "dr": ["-f", str(DR_VALUES)],
    "drill": ["-f", str(DRILL_VALUES)],
    "dr+drill": ["-f", str(DR_VALUES), "-f", str(DRILL_VALUES)],
    "existing-secret+no-hpa": ["--set", "existingSecret=acci-db", "--set", "autoscaling.enabled=false"],
    "off-with-its-values": ["--set", "canary.enabled=false", "--set", "canary.weight=0",
                            "--set", "canary.traffic=ingress-nginx", "--set-string", f"canary.image.digest={DIGEST}"],
}


def test_canary_off_renders_exactly_as_before(helm, tmp_path):
    """With the canary off (the default, the DR and drill value sets, and off with its other values
    set) `helm template` prints byte for byte what the chart without the canary additions prints: no
    object, label or ordering changes for anyone not using canaries (rendering only, no cluster)."""
    before = chart_before_canary(tmp_path)
    for name, values in OFF_SETS.items():
        old = helm_template(helm, before, *SECRET_ARGS, *values)
        new = helm_template(helm, CHART, *SECRET_ARGS, *values)
        assert old.returncode == 0 and new.returncode == 0, (name, old.stderr, new.stderr)
        assert new.stdout == old.stdout, f"value set {name}: the chart renders differently with the canary off"
    assert "HTTPRoute" not in helm_template(helm, CHART, *SECRET_ARGS).stdout


@pytest.mark.parametrize("mode", [GATEWAY, NGINX], ids=["gateway", "ingress-nginx"])
def test_lint_strict_with_the_canary_on(helm, mode):
    """`helm lint --strict` passes with a canary running in either traffic mode (lint only, no cluster)."""
    done = subprocess.run([str(helm), "lint", "--strict", str(CHART), *SECRET_ARGS, *canary(10, *mode)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


@pytest.mark.parametrize("weight", [1, 10, 50, 100])
def test_gateway_route_weights_add_to_100(helm, weight):
    """Gateway mode (the default): the HTTPRoute sends `weight` percent to the canary Service and the rest
    to the stable one, the two weights adding to 100, on the Service port, attached to the configured
    Gateway listener, for the Ingress's host; no canary Ingress exists (rendering only, no cluster)."""
    objects = render(helm, *canary(weight, *GATEWAY))
    route = objects["HTTPRoute", RELEASE]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "acci-gateway", "namespace": "gateway-system",
                                            "sectionName": "https"}]
    assert route["spec"]["hostnames"] == ["api.acci-framework.dev"]
    (rule,) = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [{"name": RELEASE, "port": 8080, "weight": 100 - weight},
                                   {"name": f"{RELEASE}-canary", "port": 8080, "weight": weight}]
    assert sum(ref["weight"] for ref in rule["backendRefs"]) == 100
    assert ("Service", f"{RELEASE}-canary") in objects
    assert ("Ingress", f"{RELEASE}-canary") not in objects


def test_gateway_route_stays_on_stable_without_a_canary(helm):
    """Once a Gateway is configured it is the entry point, so the HTTPRoute exists with the canary off,
    all traffic on the stable Service; hostnames follow ingress.host, or canary.gateway.hostnames when set
    (rendering only, no cluster)."""
    objects = render(helm, *GATEWAY, "--set", "ingress.host=dr.acci-framework.dev")
    route = objects["HTTPRoute", RELEASE]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": RELEASE, "port": 8080, "weight": 100}]
    assert route["spec"]["hostnames"] == ["dr.acci-framework.dev"]
    assert not [key for key in objects if key[1].endswith("-canary") or key[1].endswith("-canary-policy")]
    named = render(helm, *canary(10, *GATEWAY), "--set", "canary.gateway.hostnames={a.example,b.example}")
    assert named["HTTPRoute", RELEASE]["spec"]["hostnames"] == ["a.example", "b.example"]


@pytest.mark.parametrize("mode", [GATEWAY, NGINX], ids=["gateway", "ingress-nginx"])
def test_canary_deployment_runs_the_digest_and_otherwise_the_stable_pod(helm, mode):
    """The canary Deployment runs repository@digest (image.repository unless canary.image.repository is
    set) with one fixed replica; its pod spec equals the stable one in everything but the image, and the
    stable Deployment keeps its own image (rendering only, no cluster to run either)."""
    objects = render(helm, *canary(50, *mode), "--set-string", "image.repository=registry.example/acci")
    stable, pilot = objects["Deployment", RELEASE], objects["Deployment", f"{RELEASE}-canary"]
    assert only_container(pilot)["image"] == f"registry.example/acci@{DIGEST}"
    assert only_container(stable)["image"] == "registry.example/acci:1.0.0"
    assert pilot["spec"]["replicas"] == 1 and "replicas" not in stable["spec"]  # the HPA owns stable's size
    same_pod = yaml.safe_load(yaml.safe_dump(pilot["spec"]["template"]["spec"]))
    same_pod["containers"][0]["image"] = only_container(stable)["image"]
    assert same_pod == stable["spec"]["template"]["spec"]
    assert pilot["spec"]["template"]["metadata"]["annotations"] == stable["spec"]["template"]["metadata"]["annotations"]
    assert pilot["spec"]["strategy"] == stable["spec"]["strategy"]
    other = render(helm, *canary(50, *mode), "--set-string", "canary.image.repository=registry.example/next",
                   "--set", "canary.replicaCount=2")
    assert only_container(other["Deployment", f"{RELEASE}-canary"])["image"] == f"registry.example/next@{DIGEST}"
    assert other["Deployment", f"{RELEASE}-canary"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("mode", [GATEWAY, NGINX], ids=["gateway", "ingress-nginx"])
def test_stable_and_canary_selectors_do_not_overlap(helm, mode):
    """Each Service, the PDB, the HPA and each NetworkPolicy select exactly one of the two Deployments'
    pods: the stable share of the traffic never reaches a canary pod (and the reverse), and the canary
    pods get the same NetworkPolicy rules as the stable ones (rendering only, no cluster or CNI)."""
    objects = render(helm, *canary(10, *mode))
    stable_pods, canary_pods = pod_labels(objects, RELEASE), pod_labels(objects, f"{RELEASE}-canary")
    stable_svc = objects["Service", RELEASE]["spec"]["selector"]
    canary_svc = objects["Service", f"{RELEASE}-canary"]["spec"]["selector"]
    assert matches(stable_svc, stable_pods) and not matches(stable_svc, canary_pods)
    assert matches(canary_svc, canary_pods) and not matches(canary_svc, stable_pods)
    for key, selector in ((("Deployment", RELEASE), objects["Deployment", RELEASE]["spec"]["selector"]),
                          (("Deployment", f"{RELEASE}-canary"),
                           objects["Deployment", f"{RELEASE}-canary"]["spec"]["selector"])):
        assert matches(selector["matchLabels"], pod_labels(objects, key[1]))
    pdb = objects["PodDisruptionBudget", RELEASE]["spec"]["selector"]["matchLabels"]
    assert matches(pdb, stable_pods) and not matches(pdb, canary_pods)
    assert objects["HorizontalPodAutoscaler", RELEASE]["spec"]["scaleTargetRef"]["name"] == RELEASE
    stable_np = objects["NetworkPolicy", f"{RELEASE}-policy"]["spec"]
    canary_np = objects["NetworkPolicy", f"{RELEASE}-canary-policy"]["spec"]
    assert matches(stable_np["podSelector"]["matchLabels"], stable_pods)
    assert not matches(stable_np["podSelector"]["matchLabels"], canary_pods)
    assert matches(canary_np["podSelector"]["matchLabels"], canary_pods)
    assert not matches(canary_np["podSelector"]["matchLabels"], stable_pods)
    assert {k: v for k, v in canary_np.items() if k != "podSelector"} == \
        {k: v for k, v in stable_np.items() if k != "podSelector"}
    assert canary_pods["app"] == f"{RELEASE}-canary" and canary_pods["app.kubernetes.io/component"] == "canary"


@pytest.mark.parametrize("weight", [10, 50, 100])
def test_ingress_nginx_canary_annotations(helm, weight):
    """ingress-nginx mode: a second Ingress for the same class, hosts and paths as the main one, annotated
    nginx.ingress.kubernetes.io/canary "true" and canary-weight, pointing at the canary Service, without
    TLS or the cert-manager annotation (one Certificate per Secret); no HTTPRoute even with a Gateway
    configured (rendering only; no controller runs here)."""
    objects = render(helm, *canary(weight, *NGINX, *GATEWAY), "-f", str(DR_VALUES))
    main, shadow = objects["Ingress", RELEASE], objects["Ingress", f"{RELEASE}-canary"]
    assert shadow["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/canary": "true",
                                                 "nginx.ingress.kubernetes.io/canary-weight": str(weight),
                                                 "acci-framework.dev/disaster-recovery": "true"}
    assert "cert-manager.io/cluster-issuer" in main["metadata"]["annotations"]
    assert "nginx.ingress.kubernetes.io/canary" not in main["metadata"]["annotations"]
    assert "tls" not in shadow["spec"] and main["spec"]["tls"]
    assert shadow["spec"]["ingressClassName"] == main["spec"]["ingressClassName"] == "nginx"
    routes = [(r["host"], p["path"], p["pathType"]) for r in shadow["spec"]["rules"] for p in r["http"]["paths"]]
    assert routes == [(r["host"], p["path"], p["pathType"]) for r in main["spec"]["rules"] for p in r["http"]["paths"]]
    backends = {p["backend"]["service"]["name"] for r in shadow["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends == {f"{RELEASE}-canary"}
    assert not [key for key in objects if key[0] == "HTTPRoute"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("mode", [GATEWAY, NGINX], ids=["gateway", "ingress-nginx"])
def test_built_in_kinds_match_kubernetes_schema(helm, mode, kube_version):
    """Every built-in object rendered with a canary running validates strictly (unknown fields rejected)
    against that Kubernetes version's OpenAPI schema, offline (kubernetes-validate; no cluster to dry-run
    against). The HTTPRoute is a CRD: see the vendored-schema test."""
    objects = render(helm, *canary(10, *mode), kube_version=kube_version)
    assert {("Deployment", f"{RELEASE}-canary"), ("Service", f"{RELEASE}-canary"),
            ("NetworkPolicy", f"{RELEASE}-canary-policy")} <= set(objects)
    for (kind, name), doc in objects.items():
        if kind == "HTTPRoute":
            continue
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}/{name} invalid for Kubernetes {kube_version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{doc['apiVersion']} {kind} does not exist in Kubernetes {kube_version}")


def strict(node: object) -> object:
    """The schema with unknown fields rejected wherever it lists properties (what kubernetes-validate's
    -strict schemas do, and what `kubectl apply --validate=strict` does for a CRD)."""
    if isinstance(node, dict):
        out = {k: strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(v) for v in node]
    return node


@pytest.fixture(scope="module")
def route_schema() -> jsonschema.Draft202012Validator:
    header = SCHEMA_FILE.read_text().split("\nproperties:", 1)[0]
    assert "tag v1.6.1" in header and "bundle-version: v1.6.1" in header
    schema = strict(yaml.safe_load(SCHEMA_FILE.read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator: jsonschema.Draft202012Validator, route: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(route)]


def cel_checks(route: dict) -> list[str]:
    """The HTTPRoute v1 CEL rules (x-kubernetes-validations) that apply to the fields the chart renders."""
    spec, broken = route["spec"], []
    parents = [(p.get("group", "gateway.networking.k8s.io"), p.get("kind", "Gateway"), p["name"],
                p.get("namespace", ""), p.get("sectionName")) for p in spec["parentRefs"]]
    if len(set(parents)) != len(parents):
        broken.append("sectionName must be unique when parentRefs includes 2 or more references to the same parent")
    same = {p[:4] for p in parents}
    if any(sum(1 for p in parents if p[:4] == key) > 1 and any(p[4] is None for p in parents if p[:4] == key)
           for key in same):
        broken.append("sectionName must be specified when parentRefs includes 2 or more references to the same parent")
    if sum(len(rule.get("matches", [])) for rule in spec["rules"]) >= 128:
        broken.append("the total number of matches across all rules in a route must be less than 128")
    for rule in spec["rules"]:
        for ref in rule.get("backendRefs", []):
            if ref.get("group", "") == "" and ref.get("kind", "Service") == "Service" and "port" not in ref:
                broken.append("Must have port for Service reference")
        for match in rule.get("matches", []):
            path = match.get("path", {})
            if path.get("type") in ("Exact", "PathPrefix"):
                value = path["value"]
                if not value.startswith("/") or any(bad in value for bad in ("//", "/./", "/../", "%2f", "%2F", "#")) \
                        or value.endswith(("/..", "/.")) \
                        or not re.fullmatch(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+", value):
                    broken.append(f"path {value!r} is not a valid absolute path")
    return broken


@pytest.mark.parametrize("args", [canary(10, *GATEWAY), canary(100, *GATEWAY), GATEWAY],
                         ids=["canary-10", "canary-100", "canary-off"])
def test_httproute_matches_the_gateway_api_v1_6_1_schema(helm, route_schema, args):
    """The rendered HTTPRoute is valid against the vendored, strict HTTPRoute v1 schema of Gateway API
    v1.6.1, its metadata against Kubernetes' ObjectMeta, and the CEL rules that apply to it hold (schema
    only: no API server or Gateway controller exists here)."""
    route = render(helm, *args)["HTTPRoute", RELEASE]
    assert schema_errors(route_schema, route) == []
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": route["metadata"]}
    kubernetes_validate.validate(carrier, "1.30", strict=True)
    assert cel_checks(route) == []


def test_route_schema_validation_is_not_vacuous(helm, route_schema):
    """A misspelt field, a weight above the schema's maximum, a hostname that is an IP-like wildcard and a
    Service backendRef without a port are each caught (schema or CEL check; no cluster here)."""
    route = render(helm, *canary(10, *GATEWAY))["HTTPRoute", RELEASE]

    def broken(change) -> dict:
        copy = yaml.safe_load(yaml.safe_dump(route))
        change(copy)
        return copy

    misspelt = broken(lambda r: r["spec"]["rules"][0]["backendRefs"][0].update(wieght=5))
    assert any("wieght" in e for e in schema_errors(route_schema, misspelt))
    heavy = broken(lambda r: r["spec"]["rules"][0]["backendRefs"][1].update(weight=1000001))
    assert any("1000001" in e for e in schema_errors(route_schema, heavy))
    bad_host = broken(lambda r: r["spec"].update(hostnames=["API.Example"]))
    assert any("hostnames.0" in e for e in schema_errors(route_schema, bad_host))
    portless = broken(lambda r: r["spec"]["rules"][0]["backendRefs"][1].pop("port"))
    assert cel_checks(portless) == ["Must have port for Service reference"]
    twice = broken(lambda r: r["spec"]["parentRefs"].append(dict(r["spec"]["parentRefs"][0])))
    assert "sectionName must be unique" in cel_checks(twice)[0]


BAD_VALUES = [
    (["--set", "canary.enabled=true", *NGINX], r"canary.enabled needs canary.image.digest \(sha256:<64 hex>\)"),
    (["--set", "canary.enabled=true", "--set-string", "canary.image.digest=sha256:abc", *NGINX],
     r"canary.image.digest \"sha256:abc\" is not sha256:<64 lowercase hex digits>"),
    (canary(101, *NGINX), r"canary.weight 101 is above 100"),
    (canary(10, *NGINX, "--set", "canary.weight=10.5"), r"canary.weight \"10.5\" is not a whole percentage 0-100"),
    (canary(10, *NGINX) + ["--set-string", "canary.weight=ten"], r"canary.weight \"ten\" is not a whole percentage"),
    (["--set", "canary.traffic=istio"], r"canary.traffic \"istio\" is neither gateway .* nor ingress-nginx"),
    (canary(10), r"canary.traffic gateway needs canary.gateway.parentRefs"),
    (canary(10, *NGINX, "--set", "ingress.enabled=false"), r"canary.traffic ingress-nginx needs ingress.enabled"),
    (canary(10, *NGINX, "--set", "canary.replicaCount=0"), r"canary.replicaCount \"0\" must be a whole number"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[m[:40] for _, m in BAD_VALUES])
def test_bad_canary_values_fail_the_render_saying_why(helm, args, message):
    """A canary value the chart cannot honour stops `helm template` with one line naming the value
    (rendering only; nothing is installed)."""
    done = helm_template(helm, CHART, *SECRET_ARGS, *args)
    assert done.returncode != 0
    assert re.search(f"acci-framework: {message}", done.stderr), done.stderr
