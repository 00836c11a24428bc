"""Which commit a partition key builds: a version only its release tag, a commit prefix never a
branch of the same name, a tag that moved after the sensor saw it refused; and release tags whose
version is unusable (Unicode digits, ``+``, ``/``) skipped with a warning instead of stopping the
sensor. Real git repositories, the real sensor."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from acci_ops.defs.images.partitions import check_partition_key
from acci_ops.defs.images.sensors import plan_tick
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.source import checkout, list_release_tags, resolve_ref
from acci_ops_tests.fixtures.defs import defs_from_env

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}


def git(repo: Path, *args: str) -> str:
    env = {**GIT_ENV, "HOME": str(repo), "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, content: str) -> str:
    (repo / "which").write_text(content + "\n")
    git(repo, "add", "which")
    git(repo, "commit", "-q", "-m", content)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def two_tags(tmp_path: Path) -> tuple[Path, str, str]:
    """``v1.2.0 -> A`` (annotated) and a bare ``1.2.0 -> B``, plus a branch named after A's prefix
    that points at B: every way the old resolution could build B for partition 1.2.0 or A's prefix."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    a = commit(repo, "A")
    git(repo, "tag", "-a", "v1.2.0", "-m", "release 1.2.0")
    b = commit(repo, "B")
    git(repo, "tag", "1.2.0")
    git(repo, "branch", a[:10], b)
    git(repo, "branch", "feature/x", b)
    git(repo, "tag", "nightly", b)
    git(repo, "tag", "1.3.0", b)  # a bare version tag without its release tag v1.3.0
    return repo, a, b


def test_a_version_builds_only_its_release_tag(two_tags: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, a, b = two_tags
    assert resolve_ref(str(repo), "1.2.0") == (a, "v1.2.0")
    built = checkout(str(repo), "1.2.0", tmp_path / "src")
    assert (built.commit, built.version, built.is_release) == (a, "1.2.0", True)
    assert (built.path / "which").read_text() == "A\n"
    assert resolve_ref(str(repo), "v1.2.0") == (a, "v1.2.0")
    with pytest.raises(ConfigError) as err:
        resolve_ref(str(repo), "1.3.0")
    assert str(err.value) == (f"unknown tag or ref '1.3.0' in {repo}: a version builds only its release tag "
                              "(pattern v*); tag 1.3.0 is not one")


def test_a_commit_prefix_is_never_shadowed_by_a_branch(two_tags: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, a, b = two_tags
    assert resolve_ref(str(repo), a[:10]) == (a[:10], None)
    by_prefix = checkout(str(repo), a[:10], tmp_path / "src")
    assert by_prefix.commit == a and not by_prefix.is_release


def test_non_release_keys_still_resolve(two_tags: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, a, b = two_tags
    assert resolve_ref(str(repo), "feature/x") == (b, None)
    assert resolve_ref(str(repo), "nightly") == (b, "nightly")
    built = checkout(str(repo), "main", tmp_path / "src")
    assert (built.commit, built.is_release, built.version) == (b, False, None)


def test_two_release_tags_for_one_version_are_refused(two_tags: tuple[Path, str, str]) -> None:
    repo, _, _ = two_tags
    with pytest.raises(ConfigError) as err:
        resolve_ref(str(repo), "1.2.0", "*")
    assert str(err.value) == (f"version 1.2.0 is named by 2 release tags (1.2.0, v1.2.0) in {repo}; not built: "
                              "delete all but one")


def test_a_tag_moved_after_the_sensor_saw_it_is_not_built(two_tags: tuple[Path, str, str], tmp_path: Path) -> None:
    repo, a, b = two_tags
    assert checkout(str(repo), "1.2.0", tmp_path / "ok", expected_commit=a).commit == a
    git(repo, "tag", "-f", "-a", "v1.2.0", "-m", "moved", b)  # the tag moves between the tick and the run
    expected = (f"partition 1.2.0: tag v1.2.0 now names {b[:12]}, the sensor saw {a[:12]}; not built (tags are "
                "immutable: publish a new version)")
    with pytest.raises(AcciOpsError) as err:
        resolve_ref(str(repo), "1.2.0", expected_commit=a)
    assert str(err.value) == expected
    with pytest.raises(AcciOpsError) as err:
        checkout(str(repo), "1.2.0", tmp_path / "src", expected_commit=a)
    assert str(err.value) == expected
    assert not (tmp_path / "src").exists() or not any((tmp_path / "src").iterdir())
    with pytest.raises(ConfigError, match=r"^partition 1.2.0: the expected commit 'not-a-commit' is not a commit id"):
        resolve_ref(str(repo), "1.2.0", expected_commit="not-a-commit")


UNUSABLE = {"v1.²": "1.²", "v1.٣.0": "1.٣.0", "v１.0.0": "１.0.0", "v2.0.0+build.5": "2.0.0+build.5"}


@pytest.fixture
def odd_tags(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose release tags include versions no registry tag can carry."""
    repo = tmp_path / "odd"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    good = commit(repo, "good")
    git(repo, "tag", "v1.0.0")
    for tag in UNUSABLE:
        git(repo, "tag", tag)
    return repo, good


def test_unicode_digits_never_break_the_listing(odd_tags: tuple[Path, str]) -> None:
    repo, good = odd_tags
    tags = list_release_tags(str(repo))
    assert {t.tag: t.version for t in tags} == {"v1.0.0": "1.0.0", **UNUSABLE}
    build, warnings, cursor = plan_tick(tags, {}, set(), first_tick=False, limit=10)
    assert [t.tag for t in build] == ["v1.0.0"]
    assert sorted(warnings) == sorted(
        ["tag v1.² skipped: partition '1.²' is not a version, branch or commit: use letters, digits and "
         ". _ - + / (e.g. 1.2.0, main or a commit id)",
         "tag v1.٣.0 skipped: partition '1.٣.0' is not a version, branch or commit: use letters, digits and "
         ". _ - + / (e.g. 1.2.0, main or a commit id)",
         "tag v１.0.0 skipped: partition '１.0.0' is not a version, branch or commit: use letters, digits and "
         ". _ - + / (e.g. 1.2.0, main or a commit id)",
         "tag v2.0.0+build.5 skipped: partition '2.0.0+build.5': version '2.0.0+build.5' cannot be an image "
         "tag: '+' (build metadata) is not allowed in tags; publish the release without it"])
    assert set(cursor) == {"1.0.0", *UNUSABLE.values()}  # each reported once, not on every tick


def test_the_sensor_tick_skips_unusable_tags_and_builds_the_rest(odd_tags: tuple[Path, str], monkeypatch,
                                                                 instance, tmp_path: Path) -> None:
    repo, good = odd_tags
    monkeypatch.setenv("ACCI_SOURCE_REPO", str(repo))
    monkeypatch.setenv("ACCI_IMAGE_REPOSITORY", "registry.invalid/acci/acci-framework")
    defs = defs_from_env()
    sensor = defs.resolve_sensor_def("source_tag_sensor")
    first = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    assert [(r.partition_key, r.tags["acci/revision"]) for r in first.run_requests] == [("1.0.0", good)]
    assert first.dynamic_partitions_requests[0].partition_keys == ["1.0.0"]
    assert set(json.loads(first.cursor)) == {"1.0.0", *UNUSABLE.values()}
    git(repo, "tag", "v3.0.0")
    nxt = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
    assert [r.partition_key for r in nxt.run_requests] == ["3.0.0"]


@pytest.mark.parametrize(("key", "problem"), [
    ("1.2.0+build.5", "partition '1.2.0+build.5': version '1.2.0+build.5' cannot be an image tag: '+' (build "
                      "metadata) is not allowed in tags; publish the release without it"),
    ("v1.2/3", "partition 'v1.2/3': version '1.2/3' cannot be an image tag: use ASCII letters, digits, _ . - (at "
               "most 128, not starting with . or -)"),
])
def test_a_version_key_that_is_no_image_tag_is_refused_before_a_build(key: str, problem: str) -> None:
    assert check_partition_key(key) == problem
    assert check_partition_key("feature/x") is None and check_partition_key("1.2.0-rc.1") is None


def test_a_release_tag_whose_version_is_no_image_tag_is_refused(odd_tags: tuple[Path, str]) -> None:
    repo, _ = odd_tags
    with pytest.raises(ConfigError) as err:
        resolve_ref(str(repo), "2.0.0+build.5")
    assert str(err.value) == ("release tag v2.0.0+build.5: version '2.0.0+build.5' cannot be an image tag: '+' "
                              "(build metadata) is not allowed in tags; publish the release without it")
