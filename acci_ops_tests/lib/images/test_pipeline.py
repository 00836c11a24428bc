"""build_version end to end: real git, buildah, skopeo and docker-registry; checks plugged in."""

from __future__ import annotations

import dataclasses
import json

import pytest

import acci_ops.lib.images.tools as tools_module
from acci_ops.dev.fixture_app import FixtureRepo
from acci_ops.dev.registry import LocalRegistry
from acci_ops.lib.core.errors import AcciOpsError, ConfigError
from acci_ops.lib.images.build import BuildFailed, LocalIndex
from acci_ops.lib.images.outcome import Artifact, CheckOutcome
from acci_ops.lib.images.pipeline import ImageBlocked, ImageSettings, build_version
from acci_ops.lib.images.registry import ImmutableTagError, Registry, RegistryError
from acci_ops.lib.images.source import Checkout
from acci_ops.lib.images.tools import ContainerTools
from acci_ops_tests.fixtures.images import REGISTRY_PASSWORD, REGISTRY_USERNAME


def settings_for(repo: FixtureRepo, registry: LocalRegistry, name: str, **changes) -> ImageSettings:  # noqa: ANN003
    return ImageSettings(source_repo=repo.url, repository=registry.repository(name), tls_verify=False, **changes)


def tags_of(registry: LocalRegistry, name: str) -> list[str]:
    reg = Registry(registry.repository(name), registry.username, registry.password, tls_verify=False)
    status, _, body = reg.request("GET", f"/v2/{name}/tags/list")
    return [] if status == 404 else sorted(json.loads(body).get("tags") or [])


def passing(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
    return CheckOutcome("smoke_test", True, "ERROR", f"{checkout.version} answered /health",
                        {"digest": local.index_digest})


def warning(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
    return CheckOutcome("vulnerability_scan", False, "WARN", "no vulnerability scanner configured")


def failing(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
    return CheckOutcome("smoke_test", False, "ERROR", "/health answered 404 within 10 s")


def sbom(local: LocalIndex, checkout: Checkout) -> list[Artifact]:
    return [Artifact("sbom", b'{"packages": []}', "application/spdx+json", metadata={"sbom_components": 0})]


def test_tag_build_push_then_noop(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                  container_tools: ContainerTools) -> None:
    settings = settings_for(fixture_repo, registry, "pipe/good")
    commit = fixture_repo.commits["v1.0.0"]
    lines: list[str] = []
    report = build_version(settings, "v1.0.0", tools=container_tools, checks=[passing, warning], artifacts=[sbom],
                           log=lines.append)
    assert report.pushed and not report.noop and report.release
    assert set(report.tags) == {"1.0.0", f"sha-{commit[:12]}"}
    assert set(report.tags.values()) == {report.index_digest}
    assert sorted(report.platforms) == ["linux/amd64", "linux/arm64"]
    assert [o.name for o in report.outcomes] == ["elf_architecture", "smoke_test", "vulnerability_scan"]
    meta = report.metadata()
    assert meta["image_ref"] == f"{registry.host}/pipe/good@{report.index_digest}"
    assert meta["revision"] == commit and meta["source_tag"] == "v1.0.0" and meta["sbom_components"] == 0
    assert meta["size_bytes linux/arm64"] > 0 and meta["digest linux/amd64"].startswith("sha256:")
    sbom_tag = "sha256-" + report.index_digest[7:] + ".sbom"
    assert tags_of(registry, "pipe/good") == sorted(["1.0.0", f"sha-{commit[:12]}", sbom_tag])  # never latest
    # Unchanged version: a few HTTP calls, nothing built or pushed.
    again = build_version(settings, "1.0.0", tools=container_tools, checks=[failing])
    assert again.noop and again.index_digest == report.index_digest and again.outcomes == []
    assert again.message == f"version 1.0.0 is already built from {commit}: {report.index_digest}; nothing to do"


def test_blocking_checks_keep_the_version_off_the_registry(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                           container_tools: ContainerTools) -> None:
    # v1.3.0: the ELF check finds the amd64 binary in the arm64 variant; nothing is pushed.
    settings = settings_for(fixture_repo, registry, "pipe/bad")
    report = build_version(settings, "v1.3.0", tools=container_tools, checks=[passing])
    assert not report.pushed and report.tags == {}
    assert report.message == ("not pushed: check elf_architecture failed: wrong architecture: linux/arm64: "
                              "/usr/local/bin/httpd is a x86-64 binary, expected aarch64")
    with pytest.raises(ImageBlocked, match="^not pushed: check elf_architecture failed"):
        report.raise_if_blocked()
    # A plugged-in check that fails blocks too (v1.2.0, whose /health is missing).
    blocked = build_version(settings, "v1.2.0", tools=container_tools, checks=[warning, failing])
    assert not blocked.pushed
    assert blocked.message == "not pushed: check smoke_test failed: /health answered 404 within 10 s"
    assert tags_of(registry, "pipe/bad") == []


def test_crashing_check_blocks_with_its_cause(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                              container_tools: ContainerTools) -> None:
    def crashing(local: LocalIndex, checkout: Checkout) -> CheckOutcome:
        raise ValueError("podman exploded\nwith two lines")

    report = build_version(settings_for(fixture_repo, registry, "pipe/crash"), "v1.1.0", tools=container_tools,
                           checks=[crashing])
    assert not report.pushed
    assert report.message == "not pushed: check crashing failed: ValueError: podman exploded with two lines"
    assert tags_of(registry, "pipe/crash") == []


def test_existing_tag_with_another_digest_is_refused(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                     container_tools: ContainerTools) -> None:
    name = "pipe/conflict"
    settings = settings_for(fixture_repo, registry, name)
    first = build_version(settings, "v1.0.0", tools=container_tools)
    reg = Registry(registry.repository(name), tls_verify=False)
    body, media_type, _ = reg.get_manifest(first.index_digest)
    reg.put_manifest("1.1.0", body, media_type)  # someone pushed 1.0.0's image as 1.1.0 by hand
    with pytest.raises(ImmutableTagError) as err:
        build_version(settings, "v1.1.0", tools=container_tools, checks=[passing])
    message = str(err.value)
    assert message.startswith(f"tag {registry.host}/{name}:1.1.0 already exists with digest {first.index_digest}; "
                              "refusing to overwrite it with sha256:")
    assert reg.tag_digest("1.1.0") == first.index_digest
    assert reg.tag_digest(f"sha-{fixture_repo.commits['v1.1.0'][:12]}") is None


def test_non_release_build_gets_only_the_sha_tag(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                 container_tools: ContainerTools) -> None:
    commit = fixture_repo.commits["v1.1.0"]
    settings = settings_for(fixture_repo, registry, "pipe/branch", latest_tag="latest")
    report = build_version(settings, commit[:12], tools=container_tools)
    assert not report.release and report.version is None
    assert set(report.tags) == {f"sha-{commit[:12]}"}  # latest is configured, but moves for releases only
    assert tags_of(registry, "pipe/branch") == [f"sha-{commit[:12]}"]


def test_bad_input_fails_fast_with_one_line(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                            container_tools: ContainerTools) -> None:
    settings = settings_for(fixture_repo, registry, "pipe/badinput")
    with pytest.raises(ConfigError, match=f"^unknown tag or ref 'v7.0.0' in {fixture_repo.url}$"):
        build_version(settings, "v7.0.0", tools=container_tools)
    with pytest.raises(ConfigError, match=r"^Dockerfile 'Containerfile' not found in v1.0.0 \("):
        build_version(dataclasses.replace(settings, dockerfile="Containerfile"), "v1.0.0", tools=container_tools)
    with pytest.raises(ConfigError, match="^unsupported platform 'linux/sparc64' in ACCI_IMAGE_PLATFORMS"):
        build_version(dataclasses.replace(settings, platforms=("linux/amd64", "linux/sparc64")), "v1.0.0",
                      tools=container_tools)
    with pytest.raises(BuildFailed, match=r"^build step 'COPY config/missing.toml /etc/acci/config.toml' failed: "):
        build_version(settings, "broken-copy", tools=container_tools)
    assert tags_of(registry, "pipe/badinput") == []


def test_wrong_credentials_before_any_build(fixture_repo: FixtureRepo, auth_registry: LocalRegistry,
                                            container_tools: ContainerTools, monkeypatch: pytest.MonkeyPatch) -> None:
    argvs: list[list[str]] = []
    real = tools_module.run_command
    monkeypatch.setattr(tools_module, "run_command", lambda argv, **kw: argvs.append(list(argv)) or real(argv, **kw))
    wrong = "Wr0ng-" + REGISTRY_PASSWORD
    settings = settings_for(fixture_repo, auth_registry, "pipe/auth", username=REGISTRY_USERNAME, password=wrong)
    lines: list[str] = []
    with pytest.raises(RegistryError) as err:
        build_version(settings, "v1.0.0", tools=container_tools, log=lines.append)
    assert str(err.value) == (f"registry {auth_registry.host} rejected the credentials of user "
                              f"'{REGISTRY_USERNAME}' (wrong ACCI_REGISTRY_USERNAME or ACCI_REGISTRY_PASSWORD)")
    assert argvs == []  # refused before building anything
    assert wrong not in str(err.value) + "\n".join(lines) + repr(settings)
    # The right password builds and pushes through the auth file.
    good = dataclasses.replace(settings, password=REGISTRY_PASSWORD)
    report = build_version(good, "v1.0.0", tools=container_tools, log=lines.append)
    assert report.pushed
    assert REGISTRY_PASSWORD not in json.dumps(argvs) + "\n".join(lines) + json.dumps(report.metadata())
    with pytest.raises(RegistryError, match=r"^registry 127.0.0.1:\d+ is unreachable: connection refused$"):
        build_version(dataclasses.replace(good, repository="127.0.0.1:9/acci/x"), "v1.0.0", tools=container_tools)




def test_a_build_over_its_time_limit_is_stopped(fixture_repo: FixtureRepo, registry: LocalRegistry,
                                                container_tools: ContainerTools) -> None:
    """ACCI_IMAGE_BUILD_TIMEOUT_SECONDS: a build that hangs is killed, one line, nothing pushed."""
    settings = settings_for(fixture_repo, registry, "pipe/timeout", build_timeout_seconds=0.01)
    with pytest.raises(AcciOpsError, match=r"did not finish within .* and was killed") as info:
        build_version(settings, "v1.0.0", tools=container_tools)
    assert "\n" not in str(info.value), str(info.value)
    assert tags_of(registry, "pipe/timeout") == []
