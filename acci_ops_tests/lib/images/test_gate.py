"""The standard gate without Dagster: ``standard_gate`` handed to ``build_version`` checks, stores
and pushes a version exactly as the ``acci_image`` asset does. Real git, buildah, podman (the smoke
test, with its private PostgreSQL and Redis), hadolint, syft and docker-registry."""

from __future__ import annotations

import json

from acci_ops.dev.fixture_app import FixtureRepo
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.images.gate import GateConfig, standard_gate
from acci_ops.lib.images.pipeline import ImageSettings, artifact_tag, build_version
from acci_ops.lib.images.policy import CHECK_NAME as POLICY_CHECK
from acci_ops.lib.images.registry import Registry
from acci_ops.lib.images.scan import CHECK_NAME as SCAN_CHECK
from acci_ops.lib.images.smoke import CHECK_NAME as SMOKE_CHECK
from acci_ops.lib.images.tools import ContainerTools


def test_each_check_is_named_after_its_check_and_both_artifacts_are_declared() -> None:
    """A check that crashes is reported under its function's name (``build_version``): the gate's
    functions carry the names the checks report, and the artifacts are declared by suffix, so a
    no-op run notices a missing SBOM or provenance."""
    gate = standard_gate(ImageSettings(source_repo="/nowhere", repository="127.0.0.1:1/acci/app"))
    assert [check.__name__ for check in gate.checks] == [SMOKE_CHECK, POLICY_CHECK, SCAN_CHECK]
    assert list(gate.artifacts) == ["sbom", "att"]


def test_a_release_passes_the_standard_gate_without_dagster(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                            container_tools: ContainerTools) -> None:
    """v1.0.0 (a good version): every check runs, in order, with the outcomes the asset reports (no
    scanner configured: WARN, never a pass); the smoke test got a private database and Redis; the
    SBOM and the provenance are attached, the provenance naming the caller's run id."""
    name = "gate/good"
    settings = ImageSettings(source_repo=fixture_repo.url, repository=registry.repository(name), tls_verify=False,
                             storage_dir=container_tools.base)
    gate = standard_gate(settings, GateConfig(), tools=container_tools, run_id="run-without-dagster")
    report = build_version(settings, "v1.0.0", tools=container_tools, checks=gate.checks, artifacts=gate.artifacts)
    assert report.pushed, report.message
    assert [(o.name, o.passed, o.severity) for o in report.outcomes] == [
        ("elf_architecture", True, "ERROR"), (SMOKE_CHECK, True, "ERROR"), (POLICY_CHECK, True, "ERROR"),
        (SCAN_CHECK, False, "WARN")]
    smoke = report.outcomes[1].metadata
    assert smoke["throwaway_database"].startswith("a private PostgreSQL")
    assert smoke["throwaway_redis"].startswith("a private redis-server")
    digest = report.index_digest
    assert sorted(report.artifacts) == [artifact_tag(digest, "att"), artifact_tag(digest, "sbom")]
    assert report.artifact_metadata["provenance"] == "in-toto v1, SLSA provenance v1"
    reg = Registry(registry.repository(name), tls_verify=False)
    body, _, _ = reg.get_manifest(artifact_tag(digest, "att"))
    [layer] = json.loads(body)["layers"]
    _, _, payload = reg.request("GET", f"/v2/{name}/blobs/{layer['digest']}")
    statement = json.loads(payload)
    assert statement["predicate"]["runDetails"]["metadata"] == {"invocationId": "run-without-dagster"}
    assert statement["subject"][0] == {"name": settings.repository, "digest": {"sha256": digest[7:]}}
