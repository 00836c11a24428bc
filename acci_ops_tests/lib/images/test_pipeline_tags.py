"""Which tags build_version points where: a release's sha- tag follows the release, latest only moves
forward and only for releases, and two builds of one version race for its tag with one winner.
Real git, buildah, skopeo and docker-registry."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from acci_ops.dev.fixture_app import FixtureRepo
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.images.pipeline import BuildReport, ImageSettings, build_version, version_order
from acci_ops.lib.images.registry import ImmutableTagError, Registry
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.fake_registry import settings_for, tags_of


@pytest.mark.parametrize("newer, older", [
    ("1.10.0", "1.9.0"), ("2.0.0", "1.99.99"), ("1.0.0", "1.0.0-rc.1"), ("1.0.0-rc.10", "1.0.0-rc.2"),
    ("1.0.0-alpha.1", "1.0.0-alpha"), ("1.0.0-beta", "1.0.0-alpha.9"), ("1.0.0-alpha.beta", "1.0.0-alpha.1"),
    ("1.2.1", "1.2"),
])
def test_version_order_is_semver_precedence(newer: str, older: str) -> None:
    assert version_order(newer) > version_order(older)


@pytest.mark.parametrize("value", ["sha-0123456789ab", "", None, "v1.2.0", "1.²", "1.٣.0", "latest", "1..2"])
def test_what_is_not_a_release_version_has_no_order(value: str | None) -> None:
    assert version_order(value) is None


def test_equal_versions_ignore_build_metadata_and_trailing_zeros() -> None:
    assert version_order("1.2.0+build.7") == version_order("1.2.0") == version_order("1.2")


def test_a_release_takes_the_sha_tag_of_a_branch_build_of_its_commit(fixture_repo: FixtureRepo,
                                                                     registry: LocalRegistry,
                                                                     container_tools: ContainerTools) -> None:
    """A branch build of commit C pushed sha-C first (its version label is sha-C, so its digest always
    differs from the release's): the release of C is not blocked by that tag, it moves sha-C to the
    release; a later branch build of C is a no-op and leaves sha-C with the release."""
    name = "tags/sha-follows"
    commit = fixture_repo.commits["v1.1.0"]
    sha = f"sha-{commit[:12]}"
    settings = settings_for(fixture_repo, registry, name)
    reg = Registry(registry.repository(name), tls_verify=False)
    branch = build_version(settings, commit, tools=container_tools)
    assert not branch.release and branch.tags == {sha: branch.index_digest}
    lines: list[str] = []
    release = build_version(settings, "v1.1.0", tools=container_tools, log=lines.append)
    assert release.pushed and release.release and release.index_digest != branch.index_digest
    assert release.tags == {"1.1.0": release.index_digest, sha: release.index_digest}
    assert reg.tag_digest("1.1.0") == reg.tag_digest(sha) == release.index_digest
    assert f"{sha} moved to {release.index_digest} (1.1.0)" in lines
    again = build_version(settings, commit, tools=container_tools)
    assert again.noop and again.completed == [] and reg.tag_digest(sha) == release.index_digest
    assert tags_of(registry, name) == ["1.1.0", sha]


def test_latest_moves_forward_and_only_for_releases(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                    container_tools: ContainerTools) -> None:
    """ACCI_IMAGE_LATEST_TAG: a non-release build never sets it; a release sets it only when its
    version is greater than the one latest names now (its version label): an older release built
    later leaves it alone; a latest that names a branch build is taken by a release, even by a
    no-op run of one (which reports that it completed latest)."""
    name = "tags/latest"
    settings = settings_for(fixture_repo, registry, name, latest_tag="latest")
    reg = Registry(registry.repository(name), tls_verify=False)
    branch = build_version(settings, fixture_repo.commits["v1.2.0"], tools=container_tools)
    assert "latest" not in branch.tags and reg.tag_digest("latest") is None
    newer = build_version(settings, "v1.1.0", tools=container_tools)
    assert newer.tags["latest"] == newer.index_digest == reg.tag_digest("latest")
    lines: list[str] = []
    older = build_version(settings, "v1.0.0", tools=container_tools, log=lines.append)
    assert older.pushed and "latest" not in older.tags and reg.tag_digest("latest") == newer.index_digest
    assert "latest left where it is: it names a release at least as new as 1.0.0" in lines
    main = build_version(settings, "main", tools=container_tools)  # a branch build, newest commit
    assert not main.release and "latest" not in main.tags and reg.tag_digest("latest") == newer.index_digest
    # latest put on the branch image by hand: the no-op run of 1.1.0 moves it back to a release.
    body, media_type, _ = reg.get_manifest(branch.index_digest)
    reg.put_manifest("latest", body, media_type)
    noop = build_version(settings, "v1.1.0", tools=container_tools)
    assert noop.noop and noop.completed == ["latest"] and reg.tag_digest("latest") == newer.index_digest
    assert noop.message.endswith(f"{newer.index_digest}; completed latest")


def test_two_concurrent_builds_of_one_version_one_is_refused(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                             container_tools: ContainerTools) -> None:
    """Two runs of partition 1.0.0 at once that build different images (here: another title label):
    both pass the early "tag is free" check, exactly one gets the tag at the push; the other is
    refused naming the digest the tag holds; only the winner's tags exist afterwards."""
    name = "tags/race"
    base = settings_for(fixture_repo, registry, name)
    variants = [base, dataclasses.replace(base, title="acci-framework-other")]
    start = threading.Barrier(2)
    results: dict[str, BuildReport | Exception] = {}

    def run(settings: ImageSettings) -> None:
        start.wait()
        try:
            results[settings.title] = build_version(settings, "v1.0.0", tools=container_tools)
        except Exception as exc:  # noqa: BLE001 - recorded, asserted below
            results[settings.title] = exc

    threads = [threading.Thread(target=run, args=(s,)) for s in variants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    reports = [r for r in results.values() if isinstance(r, BuildReport)]
    refusals = [r for r in results.values() if not isinstance(r, BuildReport)]
    assert len(reports) == 1 and len(refusals) == 1, results
    winner = reports[0].index_digest
    assert isinstance(refusals[0], ImmutableTagError), refusals[0]
    assert str(refusals[0]).startswith(f"tag {registry.host}/{name}:1.0.0 already exists with digest {winner}; "
                                       "refusing to overwrite it with sha256:")
    reg = Registry(registry.repository(name), tls_verify=False)
    sha = f"sha-{fixture_repo.commits['v1.0.0'][:12]}"
    assert reg.tag_digest("1.0.0") == reg.tag_digest(sha) == winner
    assert tags_of(registry, name) == ["1.0.0", sha]
