"""SBOM (real syft over a real two-platform OCI layout) and the in-toto/SLSA provenance statement."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.oci import read_index
from acci_ops.lib.images.sbom import (
    SLSA_PROVENANCE,
    STATEMENT_TYPE,
    SbomError,
    component_count,
    provenance_statement,
    sbom_artifact,
    sbom_document,
    sbom_documents,
)
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.oci_images import CLEAN_DOCKERFILE, HEALTHY_WWW, build_oci

INDEX = "sha256:" + "a" * 64
AMD64 = "sha256:" + "b" * 64
BASE_DIGEST = "sha256:" + "c" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def two_platforms(container_tools: ContainerTools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # syft recognises busybox by its file name: the binary is installed under that name too.
    dockerfile = CLEAN_DOCKERFILE.replace("USER", "COPY httpd /bin/busybox\nUSER")
    return build_oci(container_tools, tmp_path_factory.mktemp("sbom"), dockerfile, HEALTHY_WWW,
                     platforms="linux/amd64,linux/arm64")


def test_sbom_per_platform_with_component_count(two_platforms: Path) -> None:
    documents = sbom_documents(two_platforms, name="registry.local/acci/acci-framework", version="1.0.0")
    assert sorted(documents) == ["linux/amd64", "linux/arm64"]
    document, media_type, count = documents["linux/arm64"]
    assert media_type == "application/spdx+json"
    spdx = json.loads(document)
    assert spdx["spdxVersion"] == "SPDX-2.3"
    assert spdx["name"] == "registry.local/acci/acci-framework"
    assert count == 1  # the static busybox (syft's binary classifier); the image itself is not counted
    assert [p["name"] for p in spdx["packages"] if p["name"] == "busybox"] == ["busybox"]


def test_cyclonedx_and_bad_requests(two_platforms: Path, tmp_path: Path) -> None:
    document, media_type, count = sbom_document(two_platforms, platform="linux/amd64", sbom_format="cyclonedx-json")
    assert media_type == "application/vnd.cyclonedx+json"
    assert json.loads(document)["bomFormat"] == "CycloneDX" and count == 1
    with pytest.raises(ConfigError,
                       match=r"^the image has no linux/s390x variant \(it has linux/amd64, linux/arm64\)$"):
        sbom_document(two_platforms, platform="linux/s390x")
    with pytest.raises(ConfigError, match="is not one of spdx-json, cyclonedx-json"):
        sbom_document(two_platforms, sbom_format="xml")
    with pytest.raises(AcciOpsError, match="is not an OCI layout"):
        sbom_document(tmp_path)


def test_syft_failure_is_one_line(two_platforms: Path, tmp_path: Path) -> None:
    fake = tmp_path / "syft"
    fake.write_text("#!/bin/sh\necho 'some progress' >&2\necho 'could not determine source: boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SbomError,
                       match=r"^syft failed for linux/amd64 \(exit code 1\): could not determine source: boom$"):
        sbom_document(two_platforms, syft=str(fake))


def test_the_stored_sbom_covers_every_platform(two_platforms: Path) -> None:
    """The artifact pushed as ``.sbom``: one SPDX document describing both platforms' images, each
    with its own packages (element ids kept unique), counted per platform."""
    artifact = sbom_artifact(two_platforms, name="registry.local/acci/acci-framework", version="1.0.0")
    assert (artifact.suffix, artifact.media_type) == ("sbom", "application/spdx+json")
    assert artifact.metadata == {"sbom_components": 2, "sbom_platforms": ["linux/amd64", "linux/arm64"],
                                 "sbom_components linux/amd64": 1, "sbom_components linux/arm64": 1}
    assert artifact.annotations == {"io.acci-ops.sbom.platforms": "linux/amd64,linux/arm64"}
    spdx = json.loads(artifact.payload)
    ids = [p["SPDXID"] for p in spdx["packages"]]
    assert len(ids) == len(set(ids)) == 4
    described = [r["relatedSpdxElement"] for r in spdx["relationships"] if r["relationshipType"] == "DESCRIBES"]
    images = {p["SPDXID"]: p for p in spdx["packages"] if p["SPDXID"] in described}
    assert sorted(p["comment"] for p in images.values()) == sorted(
        f"the {m.platform} image, manifest {m.digest}" for m in read_index(two_platforms).manifests)
    busybox = [p["SPDXID"] for p in spdx["packages"] if p["name"] == "busybox"]
    assert sorted(i.rsplit("-", 2)[-2:][1] for i in busybox) == ["amd64", "arm64"]
    assert component_count(spdx) == 2
    everything = {r["spdxElementId"] for r in spdx["relationships"]} | {r["relatedSpdxElement"]
                                                                          for r in spdx["relationships"]}
    assert everything <= set(ids) | {p["SPDXID"] for p in spdx["files"]} | {"SPDXRef-DOCUMENT"}


def test_the_cyclonedx_sbom_covers_every_platform(two_platforms: Path) -> None:
    artifact = sbom_artifact(two_platforms, sbom_format="cyclonedx-json")
    bom = json.loads(artifact.payload)
    index = read_index(two_platforms)
    assert bom["metadata"]["component"]["version"] == index.index_digest
    platforms = {c["properties"][0]["value"]: c for c in bom["components"]}
    assert sorted(platforms) == ["linux/amd64", "linux/arm64"]
    assert {p: c["version"] for p, c in platforms.items()} == {m.platform: m.digest for m in index.manifests}
    assert all(any(n["name"] == "busybox" for n in c["components"]) for c in platforms.values())
    assert component_count(bom) == artifact.metadata["sbom_components"] == 2


def test_oversized_syft_output_and_a_full_disk_are_refused_in_one_line(two_platforms: Path, tmp_path: Path) -> None:
    fake = tmp_path / "syft"
    fake.write_text("#!/bin/sh\nhead -c 3000000 /dev/zero\n")
    fake.chmod(0o755)
    with pytest.raises(SbomError, match=r"^syft's spdx-json document for linux/amd64 is larger than 1 MiB; refused$"):
        sbom_document(two_platforms, syft=str(fake), max_bytes=2**20)
    with pytest.raises(AcciOpsError, match=r"^not enough disk space to read the image's layers under /\S+: "
                                           r"\d+ MB free, need at least 1000000000 MB \(ACCI_IMAGE_STORAGE_DIR\)$"):
        sbom_document(two_platforms, min_free_mb=10**9)


@pytest.mark.unit
def test_component_count_shapes() -> None:
    spdx = {"spdxVersion": "SPDX-2.3", "packages": [{"SPDXID": "root"}, {"SPDXID": "a"}, {"SPDXID": "b"}],
            "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relatedSpdxElement": "root",
                               "relationshipType": "DESCRIBES"}]}
    assert component_count(spdx) == 2
    assert component_count({"bomFormat": "CycloneDX", "components": [{}, {}, {}]}) == 3
    with pytest.raises(ValueError):
        component_count({})


@pytest.mark.unit
def test_provenance_statement() -> None:
    raw = provenance_statement(
        subject_name="registry.local/acci/acci-framework", index_digest=INDEX, platform_digests={"linux/amd64": AMD64},
        source_repo="https://ci:ghp_TokenValue123@github.com/acci/acci-framework.git", revision=COMMIT,
        source_ref="v1.0.0", build_parameters={"platforms": ["linux/amd64"], "dockerfile": "Dockerfile",
                                               "build_args": {"NPM_TOKEN": "npm_secret_value"}},
        base_images={"gcr.io/distroless/cc-debian12": BASE_DIGEST, "debian:12": None},
        started=datetime(2026, 1, 1, tzinfo=UTC), finished=datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        invocation_id="run-42")
    assert b"ghp_TokenValue123" not in raw and b"npm_secret_value" not in raw
    statement = json.loads(raw)
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == SLSA_PROVENANCE == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [
        {"name": "registry.local/acci/acci-framework", "digest": {"sha256": "a" * 64}},
        {"name": "registry.local/acci/acci-framework#linux/amd64", "digest": {"sha256": "b" * 64}}]
    definition = statement["predicate"]["buildDefinition"]
    assert definition["externalParameters"] == {
        "source": "https://github.com/acci/acci-framework.git", "revision": COMMIT, "ref": "v1.0.0",
        "platforms": ["linux/amd64"], "dockerfile": "Dockerfile", "build_args": {"NPM_TOKEN": "<redacted>"}}
    assert definition["resolvedDependencies"] == [
        {"uri": "git+https://github.com/acci/acci-framework.git@v1.0.0", "digest": {"gitCommit": COMMIT}},
        {"uri": "oci://debian:12", "name": "debian:12"},
        {"uri": "oci://gcr.io/distroless/cc-debian12", "name": "gcr.io/distroless/cc-debian12",
         "digest": {"sha256": "c" * 64}}]
    run = statement["predicate"]["runDetails"]
    assert run["builder"]["id"].endswith("/image-builder")
    assert run["metadata"] == {"invocationId": "run-42", "startedOn": "2026-01-01T00:00:00Z",
                               "finishedOn": "2026-01-01T00:01:00Z"}
    with pytest.raises(ConfigError, match="is not algorithm:hex"):
        provenance_statement(subject_name="r", index_digest="abc", source_repo="/src", revision=COMMIT)
