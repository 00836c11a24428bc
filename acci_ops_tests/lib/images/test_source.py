"""Release tags and clean checkouts of the fixture repository (real git, no server)."""

from __future__ import annotations

import pytest

from acci_ops.dev.fixture_app import TAGS, FixtureRepo
from acci_ops.lib.core.errors import ConfigError
from acci_ops.lib.images.source import checkout, list_release_tags, resolve_ref


def test_release_tags_are_peeled_and_sorted(fixture_repo: FixtureRepo) -> None:
    tags = list_release_tags(fixture_repo.url, "v*")
    assert [t.tag for t in tags] == list(TAGS)
    assert [t.version for t in tags] == [t[1:] for t in TAGS]
    # Annotated tags: the commit, not the tag object.
    assert all(t.commit == fixture_repo.commits[t.tag] for t in tags)
    assert list_release_tags(fixture_repo.url, "v1.1*")[0].version == "1.1.0"
    assert list_release_tags(fixture_repo.url, "release-*") == []


def test_checkout_is_clean_and_ignores_local_changes(fixture_repo: FixtureRepo, tmp_path) -> None:  # noqa: ANN001
    # A change in the source's working tree (tracked and untracked) must never reach a build.
    dockerfile = fixture_repo.path / "Dockerfile"
    original = dockerfile.read_text()
    dockerfile.write_text(original + "LABEL local.change=1\n")
    (fixture_repo.path / "untracked.txt").write_text("local only\n")
    try:
        co = checkout(fixture_repo.url, "v1.1.0", tmp_path / "src")
    finally:
        dockerfile.write_text(original)
        (fixture_repo.path / "untracked.txt").unlink()
    assert co.commit == fixture_repo.commits["v1.1.0"]
    assert (co.is_release, co.version, co.ref) == (True, "1.1.0", "v1.1.0")
    assert "local.change" not in (co.path / "Dockerfile").read_text()
    assert not (co.path / "untracked.txt").exists()
    assert (co.path / "web" / "version").read_text().strip() == "1.1.0"
    assert co.commit_epoch > 1_700_000_000


def test_version_branch_and_commit_refs(fixture_repo: FixtureRepo, tmp_path) -> None:  # noqa: ANN001
    assert resolve_ref(fixture_repo.url, "1.2.0") == (fixture_repo.commits["v1.2.0"], "v1.2.0")
    branch = checkout(fixture_repo.url, "broken-copy", tmp_path / "b")
    assert (branch.is_release, branch.version, branch.commit) == (False, None, fixture_repo.commits["broken-copy"])
    short = fixture_repo.commits["v1.0.0"][:10]
    by_commit = checkout(fixture_repo.url, short, tmp_path / "c")
    assert by_commit.commit == fixture_repo.commits["v1.0.0"] and not by_commit.is_release


@pytest.mark.parametrize("ref", ["v9.9.9", "no-such-branch", "deadbeefdeadbeef"])
def test_unknown_ref_is_one_clear_line(fixture_repo: FixtureRepo, tmp_path, ref: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as err:
        checkout(fixture_repo.url, ref, tmp_path / "src")
    assert str(err.value) == f"unknown tag or ref '{ref}' in {fixture_repo.url}"


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "", "a b"])
def test_malformed_ref_refused_before_git_runs(fixture_repo: FixtureRepo, tmp_path, ref: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="is not a valid git ref"):
        checkout(fixture_repo.url, ref, tmp_path / "src")


def test_unreachable_source_repo(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(Exception, match=r"^cannot list the refs of .*missing-repo: "):
        list_release_tags(str(tmp_path / "missing-repo"))
