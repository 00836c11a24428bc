"""Multi-platform builds of the fixture app with real buildah (vfs storage under a temp dir)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from acci_ops.dev.fixture_app import BROKEN_BRANCH, NONROOT_USER, FixtureRepo
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.build import BuildFailed, LocalIndex, build_index, parse_platforms
from acci_ops.lib.images.source import checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.images import PLATFORMS


def test_index_holds_both_platforms_with_labels(fixture_builds: Callable[[str], LocalIndex],
                                                fixture_repo: FixtureRepo) -> None:
    local = fixture_builds("v1.0.0")
    info = local.info()
    assert info.index_digest == local.index_digest
    assert [m.platform for m in info.manifests] == list(PLATFORMS)  # a fixed order: the digest depends on content
    assert {p: i.architecture for p, i in local.platforms.items()} == {"linux/amd64": "amd64", "linux/arm64": "arm64"}
    assert len({i.digest for i in local.platforms.values()}) == 2
    assert all(i.size_bytes > 500_000 for i in local.platforms.values())
    for manifest in info.manifests:
        labels = manifest.labels
        assert labels["org.opencontainers.image.revision"] == fixture_repo.commits["v1.0.0"]
        assert labels["org.opencontainers.image.version"] == "1.0.0"
        assert labels["org.opencontainers.image.created"] == "2026-01-01T00:00:00Z"  # the commit's time
        assert labels["org.opencontainers.image.source"] == fixture_repo.url
        assert labels["org.opencontainers.image.title"] == "acci-framework"
        assert manifest.config["created"] == "2026-01-01T00:00:00Z"
        assert manifest.config["config"]["User"] == NONROOT_USER
    assert local.base_images == ()  # FROM scratch and a stage


def test_same_commit_gives_the_same_digest(fixture_builds: Callable[[str], LocalIndex], fixture_repo: FixtureRepo,
                                           container_tools: ContainerTools, tmp_path: Path) -> None:
    first = fixture_builds("v1.0.0")
    # Another checkout of the same commit (by version), another storage, another day: same bytes.
    again = build_index(container_tools, checkout(fixture_repo.url, "1.0.0", tmp_path / "src"), PLATFORMS,
                        workdir=tmp_path)
    assert again.index_digest == first.index_digest
    assert again.platforms == first.platforms
    other = fixture_builds("v1.1.0")
    assert other.index_digest != first.index_digest


def test_failing_build_step_is_named(fixture_repo: FixtureRepo, container_tools: ContainerTools,
                                     tmp_path: Path) -> None:
    source = checkout(fixture_repo.url, BROKEN_BRANCH, tmp_path / "src")
    lines: list[str] = []
    with pytest.raises(BuildFailed) as err:
        build_index(container_tools, source, PLATFORMS, workdir=tmp_path, log=lines.append)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("build step 'COPY config/missing.toml /etc/acci/config.toml' failed: ")
    assert "no such file or directory" in message
    assert not (tmp_path / "oci").exists() and not (tmp_path / "buildah").exists()  # nothing left behind
    assert lines  # the build's output went to the log


def test_missing_dockerfile_and_context_fail_before_building(fixture_repo: FixtureRepo,
                                                             container_tools: ContainerTools, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = checkout(fixture_repo.url, "v1.0.0", tmp_path / "src")
    built: list[tuple] = []
    monkeypatch.setattr(ContainerTools, "buildah", lambda self, *argv, **kwargs: built.append(argv))
    with pytest.raises(ConfigError) as err:
        build_index(container_tools, source, PLATFORMS, workdir=tmp_path, dockerfile="docker/Containerfile")
    assert str(err.value) == (f"Dockerfile 'docker/Containerfile' not found in v1.0.0 ({source.short}) "
                              "(ACCI_DOCKERFILE)")
    with pytest.raises(ConfigError, match=r"^build context 'app' is not a directory in v1.0.0"):
        build_index(container_tools, source, PLATFORMS, workdir=tmp_path, context="app")
    with pytest.raises(ConfigError, match="points outside the source checkout"):
        build_index(container_tools, source, PLATFORMS, workdir=tmp_path, dockerfile="../../etc/passwd")
    assert built == []  # refused before buildah was ever asked to build


@pytest.mark.parametrize("value", ["linux/amd64,windows/amd64", "linux/mips", "amd64", ""])
def test_unsupported_platform_is_one_line(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_platforms(value)
    message = str(err.value)
    assert "ACCI_IMAGE_PLATFORMS" in message and "\n" not in message
    if value:
        assert "unsupported platform '" in message


def test_not_enough_disk_space_fails_fast(fixture_repo: FixtureRepo, container_tools: ContainerTools,
                                          tmp_path: Path) -> None:
    source = checkout(fixture_repo.url, "v1.0.0", tmp_path / "src")
    with pytest.raises(Exception, match=r"^not enough disk space for an image build under .*: \d+ MB free, need at "
                                        r"least 100000000 MB"):
        build_index(container_tools, source, PLATFORMS, workdir=tmp_path, min_free_mb=100_000_000)
