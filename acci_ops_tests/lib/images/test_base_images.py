"""Base image digests: what each FROM resolved to in the build, recorded in LocalIndex, the report's
metadata and the provenance statement. Real buildah, skopeo and docker-registry: a tiny two-platform
base image is built and pushed to the session registry (a build's storage is its own, so a base
comes from a registry, as in production), then an app built FROM it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from acci_ops.dev.fixture_app import amd64_busybox, arm64_busybox
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.images.build import (
    LocalIndex,
    StoredImage,
    base_image_refs,
    normalize_reference,
    resolve_base_digests,
)
from acci_ops.lib.images.dockerfile import from_images
from acci_ops.lib.images.outcome import Artifact
from acci_ops.lib.images.pipeline import BuildReport, ImageSettings, build_version
from acci_ops.lib.images.sbom import provenance_statement
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.images import PLATFORMS

# Each platform gets its own architecture's busybox: the ELF check would block an amd64 binary in arm64.
BASE_DOCKERFILE = "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\n"


@dataclass(frozen=True)
class BaseImage:
    ref: str  # host:port/i10c/acci-test-base:1
    index_digest: str  # as buildah's --digestfile and skopeo's raw manifest give it
    platform_digests: dict[str, str]


def _skopeo_stdout(tools: ContainerTools, *args: str) -> bytes:
    return subprocess.run(tools.skopeo_argv(*args), env=tools.env(), capture_output=True, check=True,
                          timeout=60).stdout


@pytest.fixture(scope="module")
def base_image(container_tools: ContainerTools, registry: LocalRegistry,
               tmp_path_factory: pytest.TempPathFactory) -> BaseImage:
    """``FROM scratch`` + a static busybox of each architecture (no RUN), built in the session storage as
    localhost/acci-test-base:1 and pushed to the session registry as one OCI index."""
    work = tmp_path_factory.mktemp("acci-test-base")
    for arch, binary in (("amd64", amd64_busybox()), ("arm64", arm64_busybox())):
        shutil.copyfile(binary, work / f"busybox-{arch}")
        (work / f"busybox-{arch}").chmod(0o755)
    (work / "Dockerfile").write_text(BASE_DOCKERFILE)
    local = "localhost/acci-test-base:1"
    container_tools.buildah("build", "--isolation", "chroot", "--timestamp", "0", "--platform", ",".join(PLATFORMS),
                            "--manifest", local, "-f", str(work / "Dockerfile"), str(work))
    ref = f"{registry.repository('i10c/acci-test-base')}:1"
    container_tools.buildah("manifest", "push", "--all", "--tls-verify=false", "--digestfile", str(work / "digest"),
                            local, f"docker://{ref}")
    container_tools.buildah("manifest", "rm", local, check=False)
    pushed = (work / "digest").read_text().strip()
    raw = _skopeo_stdout(container_tools, "inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == pushed
    index = json.loads(raw)
    platforms = {f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"] for m in index["manifests"]}
    assert sorted(platforms) == sorted(PLATFORMS) and len(set(platforms.values())) == 2
    return BaseImage(ref, pushed, platforms)


def _git_repo(path: Path, dockerfile: str) -> str:
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(dockerfile)
    (path / "hello.txt").write_text("hello\n")
    env = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(path)}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "."], ["git", "commit", "-q", "-m", "app"],
                 ["git", "tag", "v1.0.0"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return str(path)


def test_build_records_the_base_index_digest_in_metadata_and_provenance(
        base_image: BaseImage, container_tools: ContainerTools, registry: LocalRegistry, tmp_path: Path) -> None:
    # A global ARG names the base; a scratch stage and a stage alias are not base images.
    dockerfile = (f"ARG BASE={base_image.ref}\nFROM ${{BASE}} AS base\nFROM scratch AS assets\n"
                  "COPY hello.txt /hello.txt\nFROM base\nCOPY --from=assets /hello.txt /srv/hello.txt\nUSER 65532\n")
    repo = _git_repo(tmp_path / "app", dockerfile)
    settings = ImageSettings(source_repo=repo, repository=registry.repository("i10c/app"), tls_verify=False)
    seen: dict[str, object] = {}

    def provenance(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
        seen["local"] = local
        statement = provenance_statement(subject_name=settings.repository, index_digest=local.index_digest,
                                         source_repo=repo, revision=checkout.commit,
                                         base_images=dict(local.base_image_digests))
        seen["statement"] = json.loads(statement)
        return [Artifact("att", statement, "application/vnd.in-toto+json")]

    lines: list[str] = []
    report = build_version(settings, "v1.0.0", tools=container_tools, artifacts=[provenance], log=lines.append)
    assert report.pushed, report.message
    local = seen["local"]
    assert isinstance(local, LocalIndex)
    assert local.base_images == (base_image.ref,)
    assert local.base_image_digests == {base_image.ref: base_image.index_digest}
    assert local.base_platform_digests == {base_image.ref: base_image.platform_digests}
    assert report.base_image_digests == {base_image.ref: base_image.index_digest}
    ref_name = base_image.ref.rsplit(":", 1)[0]
    assert report.metadata()["base_image_digests"] == [f"{ref_name}:1@{base_image.index_digest}"]
    assert not [line for line in lines if line.startswith("base image")]  # nothing unknown, nothing per platform
    dependencies = seen["statement"]["predicate"]["buildDefinition"]["resolvedDependencies"]  # type: ignore[index]
    assert {"uri": f"oci://{base_image.ref}", "name": base_image.ref,
            "digest": {"sha256": base_image.index_digest.removeprefix("sha256:")}} in dependencies


def test_from_scratch_only_records_no_base(fixture_builds: Callable[[str], LocalIndex]) -> None:
    local = fixture_builds("v1.0.0")  # FROM scratch plus a stage alias
    assert local.base_images == ()
    assert local.base_image_digests == {} and local.base_platform_digests == {}
    assert BuildReport("v1.0.0", "c" * 40, "v1.0.0", "1.0.0", True, "r").metadata()["base_image_digests"] == []


# -- the resolution rules, on storage listings as buildah reports them -------------------------------

INDEX = "sha256:" + "1" * 64
OTHER_INDEX = "sha256:" + "2" * 64
AMD, ARM = "sha256:" + "a" * 64, "sha256:" + "b" * 64
NAME = "registry.example.com/acci/base:1"


def image(names: set[str], top: str, manifest: str, platform: str) -> StoredImage:
    return StoredImage(manifest[-12:], frozenset(names), top, manifest, platform)


def test_unknown_base_is_recorded_as_none_with_a_log_line() -> None:
    lines: list[str] = []
    digests, per_platform = resolve_base_digests([(NAME, False)], PLATFORMS, [], lines.append)
    assert digests == {NAME: None}
    assert per_platform == {NAME: {}}
    assert lines == [f"base image {NAME}: digest unknown: no image named {NAME} in the build's storage"]
    assert base_image_refs(digests) == (f"{NAME} (digest unknown)",)


def test_a_tag_that_moved_between_platform_pulls_is_recorded_per_platform() -> None:
    images = [image({NAME}, INDEX, AMD, "linux/amd64"), image({NAME}, OTHER_INDEX, ARM, "linux/arm64/v8")]
    lines: list[str] = []
    digests, per_platform = resolve_base_digests([(NAME, False)], PLATFORMS, images, lines.append)
    assert digests == {f"{NAME}#linux/amd64": AMD, f"{NAME}#linux/arm64/v8": ARM}
    assert per_platform == {NAME: {"linux/amd64": AMD, "linux/arm64/v8": ARM}}
    assert lines == [f"base image {NAME}: recorded per platform (it resolved to different digests per platform)"]
    assert base_image_refs(digests) == (f"{NAME.rsplit(':', 1)[0]}:1@{AMD} (linux/amd64)",
                                        f"{NAME.rsplit(':', 1)[0]}:1@{ARM} (linux/arm64/v8)")


def test_missing_platform_and_shared_image_are_per_platform() -> None:
    lines: list[str] = []
    digests, _ = resolve_base_digests([(NAME, False)], PLATFORMS, [image({NAME}, INDEX, AMD, "linux/amd64")],
                                      lines.append)
    assert digests == {f"{NAME}#linux/amd64": AMD, f"{NAME}#linux/arm64": None}
    assert lines == [f"base image {NAME}: recorded per platform (no image for linux/arm64 in the build's storage)"]
    # Another name shares the image (same content): its top-level digest may be the other name's index.
    shared = [image({NAME, "docker.io/library/other:2"}, INDEX, AMD, "linux/amd64"),
              image({NAME}, INDEX, ARM, "linux/arm64")]
    digests, _ = resolve_base_digests([(NAME, False)], PLATFORMS, shared, lines.append)
    assert digests == {f"{NAME}#linux/amd64": AMD, f"{NAME}#linux/arm64": ARM}
    assert lines[-1].endswith("(its image is shared with docker.io/library/other:2)")


def test_pinned_build_platform_and_stage_names() -> None:
    pinned = f"{NAME.rsplit(':', 1)[0]}@{INDEX}"
    # --platform=$BUILDPLATFORM: one pull serves every target; a by-digest name and a stage's
    # temporary name on the same image do not make it ambiguous.
    images = [image({NAME, f"{NAME.rsplit(':', 1)[0]}@{INDEX}", "docker.io/library/abc-tmp:latest"}, INDEX, AMD,
                    "linux/amd64")]
    lines: list[str] = []
    digests, _ = resolve_base_digests([(pinned, False), (NAME, True)], PLATFORMS, images, lines.append)
    assert digests == {pinned: INDEX, NAME: INDEX}
    assert base_image_refs(digests) == (pinned, f"{NAME}@{INDEX}")
    assert lines == [f"base image {pinned}: pinned digest recorded; no image for linux/arm64 found in the build's "
                     "storage"]


def test_from_lines_and_reference_names() -> None:
    text = ("ARG RUST=1.80\nARG DISTROLESS\nFROM --platform=$BUILDPLATFORM rust:${RUST} AS build\n"
            "FROM scratch AS assets\nFROM build AS again\nfrom ${DISTROLESS} as final\n")
    assert from_images(text, {"DISTROLESS": "gcr.io/distroless/cc@sha256:abc"}) == [
        ("rust:1.80", True), ("gcr.io/distroless/cc@sha256:abc", False)]
    assert normalize_reference("debian:12") == "docker.io/library/debian:12"
    assert normalize_reference("acci/base") == "docker.io/acci/base:latest"
    assert normalize_reference("127.0.0.1:5000/x/y") == "127.0.0.1:5000/x/y:latest"
    assert normalize_reference("localhost/acci-test-base:1") == "localhost/acci-test-base:1"
    assert normalize_reference("gcr.io/d/cc@sha256:abc") == "gcr.io/d/cc@sha256:abc"
